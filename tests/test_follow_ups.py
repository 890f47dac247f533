"""Follow-ups of a large leaf: a sample first, the rest only when needed.

A leaf with more coordinates to follow up than ``max_follow_ups`` follows up a
seeded sample of them; once a coordinate of the leaf is confirmed wrong, the
others are left inconclusive (said in each coordinate and in a note) instead
of costing a ladder of evaluations each. A leaf whose sample confirms nothing
wrong follows up every coordinate, so it never passes on a sample.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcheck
from jaxcheck.check import _Check

N = 700


def f(p):
    return jnp.sum(jnp.exp(p["a"]) * p["a"]) + jnp.sum(p["b"] ** 3 + p["b"])


def params():
    # Gradients of size 1 and more everywhere; step=1e-2 puts every one outside
    # the bar at the main step (truncation error about 1e-5 relative), where the
    # follow-up's smaller steps settle it.
    return {"a": np.linspace(0.5, 1.5, N), "b": np.linspace(0.2, 1.2, N)}


def planted(p):
    """The gradient, 1e-5 relative too large in leaf ``b`` only."""
    g = jax.grad(f)(p)
    return {"a": g["a"], "b": g["b"] * (1 + 1e-5)}


@pytest.fixture
def follow_calls(monkeypatch):
    """The leaves and sizes of the coordinate sets given to the follow-up
    stages, call by call."""
    calls = []
    orig = _Check.follow_stages

    def spy(self, s, keep, w0, todo):
        calls.append(sorted(set(s.group[todo].tolist())) + [len(todo)])
        return orig(self, s, keep, w0, todo)

    monkeypatch.setattr(_Check, "follow_stages", spy)
    return calls


def test_a_wrong_leaf_follows_up_a_sample_and_leaves_the_rest(follow_calls):
    # step=1e-2 puts every coordinate outside the bar at the main step: leaf a's
    # correct gradient must be followed up in full and pass, while the planted
    # leaf b stops after its sample.
    report = jaxcheck.check_grads(
        f, params(), grad_fn=planted, step=1e-2, seed=3, max_worst=N
    )
    a, b = report.leaf("['a']"), report.leaf("['b']")
    assert a.passed and not b.passed and not report.passed
    # First 256 of each leaf; then the other 444 of a (nothing wrong in its
    # sample), and nothing more of b.
    assert follow_calls == [[0, 1, 512], [0, N - 256]]
    assert (a.num_ok, a.num_wrong, a.num_inconclusive) == (N, 0, 0)
    assert (b.num_wrong, b.num_inconclusive) == (256, N - 256)
    text = " ".join(str(report).split())  # unwrapped
    assert f"{N - 256} coordinates outside the bar" in text
    assert "['b'] had more than 256 such coordinates" in text
    assert "max_follow_ups=None" in text
    # Each coordinate left says why it was not followed up.
    left = [c for c in b.worst if c.verdict == "inconclusive"]
    assert len(left) == N - 256
    assert all(
        c.resolution.startswith("not followed up: this leaf already has 256 ")
        for c in left
    )


def test_every_coordinate_is_followed_up_when_asked(follow_calls):
    report = jaxcheck.check_grads(
        f, params(), grad_fn=planted, step=1e-2, seed=3, max_follow_ups=None
    )
    b = report.leaf("['b']")
    assert follow_calls == [[0, 1, 2 * N]]
    assert (b.num_wrong, b.num_inconclusive) == (N, 0)
    assert "not followed up" not in str(report)


def test_a_correct_gradient_is_followed_up_in_full_and_passes(follow_calls):
    capped = jaxcheck.check_grads(f, params(), step=1e-2, seed=3)
    full = jaxcheck.check_grads(f, params(), step=1e-2, seed=3, max_follow_ups=None)
    assert capped.passed and full.passed
    for path in ("['a']", "['b']"):
        one, two = capped.leaf(path), full.leaf(path)
        assert (one.num_ok, one.num_untestable, one.num_inconclusive) == (
            two.num_ok, two.num_untestable, two.num_inconclusive
        )  # fmt: skip
    # Sample first (256 per leaf), then the rest of both leaves; then, without
    # a cap, every coordinate at once.
    assert follow_calls == [[0, 1, 512], [0, 1, 2 * (N - 256)], [0, 1, 2 * N]]


def test_a_small_leaf_is_never_sampled(follow_calls):
    small = {"a": np.linspace(0.5, 1.5, 40), "b": np.linspace(0.2, 1.2, 40)}
    report = jaxcheck.check_grads(f, small, grad_fn=planted, step=1e-2, seed=3)
    assert not report.passed and report.leaf("['b']").num_inconclusive == 0
    assert follow_calls == [[0, 1, 80]]


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "all"])
def test_max_follow_ups_must_be_a_positive_int_or_none(bad):
    with pytest.raises(ValueError, match="`max_follow_ups` must be an int >= 1"):
        jaxcheck.check_grads(f, params(), max_follow_ups=bad)
