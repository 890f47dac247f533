"""The corpus of planted gradient bugs (tests/corpus.py) against the checker.

Every buggy case must fail, and fail exactly at its planted leaf while the other
leaves of the same report pass; every correct case must pass with a small
relative error. The corpus is also validated on its own, without jaxcheck:
each planted gradient really differs from ``jax.grad`` of a rule-free reference
exactly where it says, and each correct one matches it to 1e-10 in float64.
"""

from __future__ import annotations

import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcheck import GradientCheckError, assert_grads, check_grads
from jaxcheck.examples import classification_batch, mlp_init, mlp_loss

try:
    import corpus
except ImportError:  # tests/ imported as a package
    from tests import corpus

# The largest relative error measured over every coordinate of every correct
# case was 4.0e-8 (wrong_relu_derivative-*-fixed, float64, step 1e-5); the bar
# of the default verdict is 1e-7.
CORRECT_MAX_REL_ERROR = 1e-7

ids = functools.partial(pytest.mark.parametrize, ids=lambda c: c.name)
all_cases = ids("case", corpus.CASES)
buggy_cases = ids("case", corpus.BUGGY)
correct_cases = ids("case", corpus.CORRECT)
entry_cases = ids("case", [c for c in corpus.BUGGY if c.bad_index is not None])


@functools.cache
def report_of(name: str):
    """One check per case, shared by the tests below."""
    case = corpus.case_by_name(name)
    return check_grads(case.f, case.params, *case.args, **case.kwargs)


def _paths(tree) -> list[str]:
    return [
        jax.tree_util.keystr(p)
        for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]
    ]


def _max_rel_diff(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    den = np.maximum(np.abs(a), np.abs(b))
    rel = np.where(den == 0, 0.0, np.abs(a - b) / np.where(den == 0, 1.0, den))
    return float(rel.max())


# ---------------------------------------------------------------------------
# The corpus on its own.


def test_corpus_names_are_unique_and_cover_every_bug():
    names = [c.name for c in corpus.CASES]
    assert len(names) == len(set(names))
    bugs = {
        "wrong_sign",
        "missing_factor",
        "transposed_matmul",
        "missing_bias_grad",
        "single_wrong_entry",
        "wrong_tanh_derivative",
        "wrong_sigmoid_derivative",
        "wrong_relu_derivative",
        "subtle_factor",
    }
    for bug in bugs:
        for impl in ("custom_vjp", "hand"):
            assert corpus.case_by_name(f"{bug}-{impl}").buggy
            assert not corpus.case_by_name(f"{bug}-{impl}-fixed").buggy
    assert len(corpus.BUGGY) + len(corpus.CORRECT) == len(corpus.CASES)


@all_cases
def test_case_is_well_formed(case):
    paths = _paths(case.params)
    if case.buggy:
        assert case.bad_leaf in paths
    else:
        assert case.bad_leaf is None and case.bad_index is None
    if case.name.endswith("-custom_vjp") or case.name.endswith("-custom_vjp-fixed"):
        assert case.grad_fn is None and case.reference is not None
    if "-hand" in case.name:
        assert case.grad_fn is not None and case.reference is None
    with jax.enable_x64(True):
        out = case.f(case.params, *case.args)
        grads = case.analytic_grad()
    assert out.shape == () and out.dtype == jnp.float64
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(
        case.params
    )
    for g, p in zip(jax.tree.leaves(grads), jax.tree.leaves(case.params), strict=True):
        assert g.shape == p.shape and g.dtype == p.dtype


@all_cases
def test_corpus_gradients_against_reference(case):
    """Correct gradients match jax.grad of the reference to 1e-10; a planted bug
    changes its bad leaf (and only it, and only its bad entry if it has one)."""
    with jax.enable_x64(True):
        got = case.analytic_grad()
        want = case.true_grad()
    got_leaves = jax.tree_util.tree_flatten_with_path(got)[0]
    want_leaves = jax.tree.leaves(want)
    for (path, g), w in zip(got_leaves, want_leaves, strict=True):
        path = jax.tree_util.keystr(path)
        if path != case.bad_leaf:
            np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-14, err_msg=path)
            continue
        rel = _max_rel_diff(g, w)
        if case.name.startswith("subtle_factor"):
            assert rel == pytest.approx(corpus.SUBTLE, rel=1e-3)
        else:
            assert rel > 1e-3
        if case.bad_index is not None:
            differs = np.argwhere(~np.isclose(g, w, rtol=1e-10, atol=0))
            assert [tuple(int(i) for i in d) for d in differs] == [case.bad_index]
            assert float(g[case.bad_index] / w[case.bad_index]) == pytest.approx(1.01)


def test_twins_share_function_inputs():
    for bad in corpus.BUGGY:
        twin = corpus.case_by_name(f"{bad.name}-fixed")
        assert twin.params is bad.params and twin.args is bad.args
        assert twin.coords == bad.coords


# ---------------------------------------------------------------------------
# The corpus against jaxcheck.


@buggy_cases
def test_buggy_case_fails_at_its_bad_leaf_only(case):
    report = report_of(case.name)
    assert not report.passed
    assert {leaf.path for leaf in report.failures} == {case.bad_leaf}
    assert [leaf.path for leaf in report.leaves] == _paths(case.params)
    for leaf in report.leaves:
        if leaf.path == case.bad_leaf:
            assert not leaf.passed
            assert leaf.num_wrong >= 1
            assert leaf.worst[0].verdict == "wrong"
        else:
            assert leaf.passed, str(report)
            assert leaf.num_wrong == 0
            assert leaf.max_rel_error < CORRECT_MAX_REL_ERROR
    bad = report.leaf(case.bad_leaf)
    if case.name.startswith("subtle_factor"):
        # |a - n| / max(|a|, |n|) with a = (1 + 1e-4) n.
        assert bad.max_rel_error == pytest.approx(corpus.SUBTLE, rel=1e-3)
    else:
        assert bad.max_rel_error > 1e-3


@correct_cases
def test_correct_case_passes(case):
    report = report_of(case.name)
    assert report.passed, str(report)
    assert report.failures == ()
    assert [leaf.path for leaf in report.leaves] == _paths(case.params)
    for leaf, param in zip(report.leaves, jax.tree.leaves(case.params), strict=True):
        assert leaf.passed and leaf.num_wrong == 0 and leaf.num_untestable == 0
        assert leaf.shape == param.shape
        expected = param.size if case.coords == "all" else min(case.coords, param.size)
        assert leaf.num_checked == expected
        assert leaf.max_rel_error < CORRECT_MAX_REL_ERROR


@entry_cases
def test_single_wrong_entry_is_located(case):
    assert case.coords == "all"
    leaf = report_of(case.name).leaf(case.bad_leaf)
    assert leaf.num_checked == math.prod(leaf.shape) == 2000
    assert leaf.num_wrong == 1
    worst = leaf.worst[0]
    assert worst.index == case.bad_index
    assert worst.verdict == "wrong"
    assert worst.analytic / worst.numeric == pytest.approx(1.01, rel=1e-6)
    assert all(c.verdict == "ok" for c in leaf.worst[1:])


def test_sampled_small_leaf_is_fully_checked():
    # coords=24 samples the 8192-entry W1, but the 3-entry bias is checked whole.
    for name in ("missing_bias_grad-custom_vjp", "missing_bias_grad-hand"):
        case = corpus.case_by_name(name)
        report = report_of(name)
        bias = report.leaf(case.bad_leaf)
        assert bias.shape == (3,) and bias.num_checked == 3 and bias.num_wrong == 3
        big = [leaf for leaf in report.leaves if leaf.shape == (64, 128)]
        assert len(big) == 1 and big[0].num_checked == 24 and big[0].passed


@buggy_cases
def test_assert_grads_raises_naming_bad_leaf(case):
    with pytest.raises(GradientCheckError, match=re.escape(case.bad_leaf)) as info:
        assert_grads(case.f, case.params, *case.args, **case.kwargs)
    assert isinstance(info.value, AssertionError)
    assert str(info.value).startswith("jaxcheck:")
    assert {leaf.path for leaf in info.value.report.failures} == {case.bad_leaf}


@correct_cases
def test_assert_grads_passes_silently(case):
    # No exception; the report comes back for inspection.
    report = assert_grads(case.f, case.params, *case.args, **case.kwargs)
    assert report.passed


def test_report_renders_and_serialises_a_failure():
    case = corpus.case_by_name("single_wrong_entry-custom_vjp")
    report = report_of(case.name)
    text = str(report)
    assert case.bad_leaf in text
    d = report.to_dict()
    assert d["passed"] is False
    assert [leaf["path"] for leaf in d["leaves"]] == _paths(case.params)


# ---------------------------------------------------------------------------
# float32 callers, and fixed arguments.


def test_float32_model_is_checked_in_float64():
    params = mlp_init((6, 5, 4), seed=3)
    x, y = classification_batch(8, 6, 4, seed=4)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
    assert x.dtype == jnp.float32 and y.dtype == jnp.int32
    report = check_grads(mlp_loss, params, x, y)
    assert report.passed, str(report)
    # Centered differences in float32 arithmetic with step 1e-5 are off by ~1e-2;
    # an error this small is only reachable in float64.
    assert report.max_rel_error < CORRECT_MAX_REL_ERROR
    # The caller's parameters are untouched.
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))


def test_float32_hand_gradient_is_checked_in_float64():
    base = corpus.case_by_name("transposed_matmul-hand-fixed")
    params = jax.tree.map(lambda p: p.astype(jnp.float32), base.params)
    x = base.args[0].astype(jnp.float32)
    report = check_grads(base.f, params, x, base.args[1], grad_fn=base.grad_fn)
    assert report.passed, str(report)
    assert report.max_rel_error < CORRECT_MAX_REL_ERROR


def test_float32_subtle_bug_is_still_found():
    # A float32 check cannot see a 1e-4 relative error; a float64 one can.
    base = corpus.case_by_name("subtle_factor-custom_vjp")
    params = jax.tree.map(lambda p: p.astype(jnp.float32), base.params)
    args = tuple(a.astype(jnp.float32) for a in base.args)
    report = check_grads(base.f, params, *args)
    assert {leaf.path for leaf in report.failures} == {base.bad_leaf}
    assert report.leaf(base.bad_leaf).max_rel_error == pytest.approx(
        corpus.SUBTLE, rel=1e-3
    )


def _dot_loss(params, x):
    return jnp.sum(params["w"] * x) + 0.5 * jnp.sum(params["v"] ** 2)


def test_args_are_held_fixed():
    with jax.enable_x64(True):
        params = {"w": jnp.linspace(-1.0, 1.0, 5), "v": jnp.arange(1.0, 4.0)}
        x = jnp.linspace(0.5, 2.5, 5)
        x_other = x + 1e-3

    def grad_at(x_used):
        return lambda p, x: {"w": x_used, "v": p["v"]}

    report = check_grads(_dot_loss, params, x, grad_fn=grad_at(x))
    assert report.passed, str(report)
    # Only params are checked: the float arg x is neither a leaf nor skipped.
    assert [leaf.path for leaf in report.leaves] == ["['v']", "['w']"]
    assert report.skipped == ()
    # The numeric gradient of w is x itself: a gradient at another x fails.
    report = check_grads(_dot_loss, params, x, grad_fn=grad_at(x_other))
    assert {leaf.path for leaf in report.failures} == {"['w']"}


def test_int_labels_and_prng_key_args_are_held_fixed():
    case = corpus.case_by_name("missing_factor-hand-fixed")
    labels = case.args[1]
    assert labels.dtype == jnp.int32
    report = check_grads(case.f, case.params, *case.args, grad_fn=case.grad_fn)
    assert report.passed
    # Other labels give another gradient: the check used the labels passed.
    other = (labels + 1) % 4
    report = check_grads(case.f, case.params, case.args[0], other, grad_fn=case.grad_fn)
    assert report.passed
    with jax.enable_x64(True):
        g_other = case.grad_fn(case.params, case.args[0], other)

    def stale(params, x, y):
        return g_other

    report = check_grads(case.f, case.params, *case.args, grad_fn=stale)
    assert {leaf.path for leaf in report.failures} == {"['W']", "['b']"}

    # A key used for noise: the same noise must be drawn at every evaluation.
    def noisy(params, key):
        noise = jax.random.normal(key, params["w"].shape, params["w"].dtype)
        return jnp.sum(jnp.sin(params["w"]) * noise)

    with jax.enable_x64(True):
        params = {"w": jnp.linspace(-1.0, 1.0, 6)}
    report = check_grads(noisy, params, jax.random.key(0))
    assert report.passed, str(report)
    assert report.max_rel_error < CORRECT_MAX_REL_ERROR
