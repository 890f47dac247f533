"""Step size, stencils, round-off noise and the untestable verdict."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcheck
from jaxcheck import compare, step_sweep, steps


def _x64(a):
    with jax.enable_x64(True):
        return jnp.asarray(a)


RNG = np.random.default_rng(0)
X = _x64(RNG.normal(size=(50, 6)))
W = _x64(np.linspace(-1.0, 1.0, 6))
BIG = _x64(RNG.normal(size=2000) * 1e6)


# --------------------------------------------------------------------------- #
# Tiny gradients and round-off: untestable, never wrong.


def tiny_grad_loss(w, x):
    """|f| ~ 1, gradient ~1e-9 per coordinate."""
    return 1.0 + 1e-9 * jnp.sum(jnp.sin(x @ w)) / 5.0


def cancelling_loss(w, big):
    """Sum of 1e6-sized terms that cancel: round-off ~1e-9, gradient O(1)."""
    return (jnp.sum(big) + jnp.sum(jnp.sin(w))) - jnp.sum(big)


def test_gradient_of_1e9_is_untestable_with_reason_not_wrong():
    report = jaxcheck.check_grads(tiny_grad_loss, W, X)
    with jax.enable_x64(True):
        g = np.asarray(jax.grad(tiny_grad_loss)(W, X))
    assert 1e-11 < np.abs(g).max() < 1e-8  # about 1e-9 per coordinate
    # Nothing wrong; when no coordinate could be resolved, nothing was tested:
    # inconclusive, never passed.
    assert report.num_wrong == 0
    assert report.passed == (report.num_ok > 0)
    assert report.status == ("passed" if report.num_ok else "inconclusive")
    leaf = report.leaves[0]
    assert report.num_untestable + leaf.num_ok == 6 and report.num_untestable >= 1
    # Retried with larger steps, then reported with raw values and the fix.
    assert leaf.num_retried >= 1
    untestable = [c for c in leaf.worst if c.verdict == "untestable"]
    # At the largest step truncation shows: the report says so and keeps the
    # closest estimate of the retries.
    assert untestable
    assert all(
        "not resolved by larger steps up to h=1e-01" in c.resolution
        and "the closest estimate" in c.resolution
        and 1e-5 < c.step <= 0.3
        for c in untestable
    )
    # f = 1 + (terms of 1e-9): the fix is to look at those terms alone.
    assert all("check the terms it enters" in c.resolution for c in untestable)
    assert all(c.f_plus == pytest.approx(1.0) for c in untestable)
    text = str(report)
    assert "untestable coordinates of" in text and "f(x+h)=" in text
    assert any("round-off" in n for n in report.notes)
    assert any("tiny compared with f" in n and "params" in n for n in report.notes)
    # ... and indeed, without the constant they are resolved.
    alone = jaxcheck.check_grads(lambda w, x: tiny_grad_loss(w, x) - 1.0, W, X)
    assert alone.passed and alone.num_untestable == 0 and alone.max_rel_error < 1e-7
    # strict=True makes them fail.
    strict = jaxcheck.check_grads(tiny_grad_loss, W, X, strict=True)
    assert not strict.passed and strict.num_wrong == 0
    assert "(strict: they fail)" in strict.headline()


def test_tiny_gradient_with_a_real_bug_is_still_found():
    # At the default step a factor-2 bug on a 1e-9 gradient drowns in
    # round-off; the retry with a larger step resolves it.
    def wrong(w, x):
        return 2.0 * jax.grad(tiny_grad_loss)(w, x)

    report = jaxcheck.check_grads(tiny_grad_loss, W, X, grad_fn=wrong)
    assert not report.passed and report.num_wrong == 6


def test_cancellation_noise_is_measured_and_not_called_wrong():
    report = jaxcheck.check_grads(cancelling_loss, W, BIG)
    assert report.num_wrong == 0 and report.status == "inconclusive"
    assert report.num_untestable == 6
    # The round-off of f (about eps * 1e6 * sqrt(2000)) was measured.
    assert 1e-10 < report.noise_floor < 1e-7
    assert report.precision.startswith("noise like")
    assert any("measured round-off noise" in n for n in report.notes)
    assert "noise of f" in report.leaves[0].worst[0].resolution


def test_smooth_loss_wrong_by_1e4_fails_with_every_method():
    def loss(w, x):
        return jnp.mean(jnp.tanh(x @ w) ** 2) + 0.1 * jnp.sum(w**2)

    def subtle(w, x):
        return (1 + 1e-4) * jax.grad(loss)(w, x)

    for kwargs in ({}, {"method": "four_point"}, {"step": "auto"}):
        ok = jaxcheck.check_grads(loss, W, X, **kwargs)
        bad = jaxcheck.check_grads(loss, W, X, grad_fn=subtle, **kwargs)
        assert ok.passed and ok.max_rel_error < 1e-7, kwargs
        assert not bad.passed and bad.num_wrong == 6, kwargs
        assert bad.max_rel_error == pytest.approx(1e-4, rel=1e-2)


# --------------------------------------------------------------------------- #
# Step sweep, step="auto", methods.


def test_step_sweep_shows_the_v():
    def loss(p, x):
        return jnp.mean(jnp.exp(0.5 * (x @ p["w"]))) + jnp.sum(jnp.sin(p["v"]))

    sweep = step_sweep(loss, {"w": W, "v": W[:2]}, X, coords=3)
    assert sweep.steps == steps.SWEEP_STEPS
    assert [leaf.path for leaf in sweep.leaves] == ["['v']", "['w']"]
    for leaf in sweep.leaves:
        med = leaf.median_error
        assert leaf.rel_error.shape == (2 if leaf.path == "['v']" else 3, 10)
        best = int(np.argmin(med))
        # Truncation on the right arm (large h), round-off on the left.
        assert med[0] > 100 * med[best] and med[-1] > 100 * med[best]
        assert 1e-7 <= leaf.best_step <= 1e-3
        assert not leaf.kink.any()
        # Truncation error is O(h^2): a decade of h is two decades of error.
        assert med[1] / med[2] == pytest.approx(100, rel=0.2)
        assert np.all(np.isfinite(leaf.noise)) and np.all(leaf.noise < 1e-14)
    assert 1e-7 <= sweep.best_step <= 1e-3
    text = str(sweep)
    assert "step sweep" in text and "1e-05" in text
    d = json.loads(json.dumps(sweep.to_dict()))
    assert d["steps"][0] == 0.1 and len(d["leaves"]) == 2
    assert "<table>" in sweep._repr_html_()
    import matplotlib

    matplotlib.use("Agg")
    ax = sweep.plot()
    assert ax.get_xscale() == "log" and len(ax.get_lines()) >= 2


def test_step_sweep_marks_kinks():
    sweep = step_sweep(lambda w: jnp.sum(jnp.abs(w - 0.3)), W, coords={"": [0, 2]})
    leaf = sweep.leaves[0]
    # w[2] = -0.2 is 0.5 from the kink at 0.3: only steps above 0.5 cross it.
    assert not leaf.kink[1].any()
    assert leaf.kink[0].sum() == 0  # w[0] = -1 is 1.3 away


def test_step_sweep_rejects_bad_steps():
    with pytest.raises(ValueError, match="`steps` must be a non-empty sequence"):
        step_sweep(lambda w: jnp.sum(w**2), W, steps=[1e-3, -1.0])


def test_auto_step_is_chosen_per_leaf_and_reported():
    def loss(p):
        return jnp.sum(jnp.sin(p["a"])) + jnp.sum(jnp.exp(3.0 * p["b"]))

    params = {"a": W, "b": W[:3]}
    report = jaxcheck.check_grads(loss, params, step="auto")
    assert report.passed and report.step_rule == "auto"
    for leaf in report.leaves:
        assert 1e-7 <= leaf.step <= 1e-2
        assert leaf.max_rel_error < 1e-8
    assert "h chosen per leaf" in str(report)


def test_methods_forward_is_worse_four_point_is_better():
    def loss(w):
        return jnp.sum(jnp.exp(2.0 * w))

    central = jaxcheck.check_grads(loss, W, step=1e-3)
    forward = jaxcheck.check_grads(loss, W, step=1e-3, method="forward")
    four = jaxcheck.check_grads(loss, W, step=1e-3, method="richardson")
    assert four.method == "four_point" and forward.method == "forward"
    # Truncation of the main pass: O(h) = 1e-3, O(h^2) = 1e-6, O(h^4) ~ 1e-12.
    assert forward.main_rel_error > 1e-4
    assert 1e-7 < central.main_rel_error < 1e-5
    assert four.main_rel_error < 1e-10
    # Coordinates outside the bar are followed up (wrong needs evidence), and
    # the ladder resolves them: all three pass.
    assert forward.passed and central.passed and four.passed
    assert central.max_rel_error < 1e-7
    # With their default steps every method passes a correct gradient.
    for m in ("forward", "four_point"):
        r = jaxcheck.check_grads(loss, W, method=m)
        assert r.passed, str(r)
        assert r.step == steps.DEFAULT_STEPS[m]
    r = jaxcheck.check_grads(loss, W, method="forward")
    assert r.rtol == 1e-5 and "forward differences" in r.bar_reason


@pytest.mark.parametrize(
    "kwargs, err",
    [
        ({"step": "big"}, '`step` must be a positive finite number, "auto"'),
        ({"method": "backward"}, "`method` must be one of"),
        ({"dtype": "float16"}, "`dtype` must be one of"),
    ],
)
def test_bad_arguments(kwargs, err):
    with pytest.raises(ValueError, match=err):
        jaxcheck.check_grads(lambda w: jnp.sum(w**2), W, **kwargs)


# --------------------------------------------------------------------------- #
# The numerical helpers.


def test_ecnoise_recovers_known_noise():
    rng = np.random.default_rng(1)
    t = np.arange(13) * 1e-3
    smooth = np.exp(t)[None, :] * np.ones((200, 1))
    for sigma in (1e-12, 1e-8):
        noisy = smooth + sigma * rng.standard_normal((200, 13))
        est = steps.ecnoise(noisy)
        assert np.median(est) == pytest.approx(sigma, rel=0.3)
    # A smooth function without noise at too coarse a spacing: no order is
    # accepted (truncation dominates), so no noise is claimed.
    coarse = np.exp(np.arange(13) * 0.5)
    assert np.isnan(steps.ecnoise(coarse))


def test_one_sided_and_offsets():
    t = np.array([[1e-3, 2e-3, 3e-3]])
    d, w = steps.one_sided(np.sin(0.5 + t), t)
    assert d[0] == pytest.approx(np.cos(0.5), rel=1e-5)
    assert w[0] == pytest.approx(8 / 1e-3)
    d, _ = steps.one_sided(np.sin(0.5 - t), -t)
    assert d[0] == pytest.approx(np.cos(0.5), rel=1e-5)
    off = steps.offsets([0.1], [[1e-5]])
    assert off[0, 0] == (0.1 + 1e-5) - 0.1 != 1e-5


def test_choose_step_ignores_invalid_points():
    ladder = np.array([1e-1, 1e-2, 1e-3, 1e-4])
    d = np.array([[1.1, 1.001, 1.00001, 1.0000001]])
    valid = np.array([[True, True, False, True]])
    h, change = steps.choose_step(ladder, d, valid)
    assert h == 1e-1 and np.isnan(change[1]) and np.isnan(change[2])


def test_noise_allowance_matches_the_historical_model():
    # central: 64 eps |f| / (2 h), the allowance jaxcheck always used.
    got = steps.noise_allowance(1 / 1e-5, 2.0, 2**-52, compare.DEFAULT_NOISE_FACTOR)
    assert got == pytest.approx(64 * 2**-52 * 2.0 / 2e-5)
    measured = steps.noise_allowance(1 / 1e-5, 2.0, 2**-52, 64.0, sigma=1e-9)
    assert measured == pytest.approx(0.5 / 1e-5 * steps.NOISE_SIGMAS * 1e-9)


def test_a_gradient_below_round_off_at_every_step_says_so():
    # f = 1e9 + sum(w): linear (no truncation at any step), and its gradient of
    # 1 is below the round-off of f even at the largest retry step.
    report = jaxcheck.check_grads(lambda w: 1e9 + jnp.sum(w), jnp.ones(3))
    assert report.status == "inconclusive" and report.num_untestable == 3
    for c in report.leaves[0].worst:
        assert c.verdict == "untestable"
        assert c.resolution.startswith("below round-off even at h=1e-01")
