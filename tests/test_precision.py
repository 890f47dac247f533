"""Precision: float32 inside a float64 check, and float32 beside float64."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcheck
from jaxcheck import compare, examples


def _x64(a):
    with jax.enable_x64(True):
        return jnp.asarray(a)


W = _x64(np.linspace(-1.0, 1.0, 5))


def f32_inside(w):
    """Computes in float32 although it is called with float64 parameters."""
    h = jnp.tanh(w.astype(jnp.float32)) ** 2
    return jnp.sum(h).astype(w.dtype)


def test_float32_inside_is_detected_and_the_bar_says_so():
    report = jaxcheck.check_grads(f32_inside, W)
    assert report.passed, str(report)
    assert report.precision == "float32 inside"
    eps32 = float(jnp.finfo(jnp.float32).eps)
    assert report.rtol == pytest.approx(10 * np.sqrt(eps32))
    assert "low precision" in report.bar_reason and "float32" in report.bar_reason
    assert report.step == pytest.approx(eps32 ** (1 / 3))
    (note,) = [n for n in report.notes if "float32 inside" in n]
    assert "convert_element_type at test_precision.py" in note
    assert "errors near 3e-03 are expected" in note
    # Errors near 1e-3 are what float32 round-off leaves in a correct gradient.
    assert 1e-7 < report.max_rel_error < report.rtol


def test_float32_inside_still_catches_a_real_bug():
    def wrong(w):
        return 1.05 * jax.grad(f32_inside)(w)

    report = jaxcheck.check_grads(f32_inside, W, grad_fn=wrong)
    # Every coordinate but w = 0, where the gradient is exactly 0 either way.
    assert not report.passed and report.num_wrong == 4


def test_float32_output_is_low_precision_too():
    def loss(w):
        return jnp.sum(jnp.sin(w)).astype(jnp.float32)

    report = jaxcheck.check_grads(loss, W)
    assert report.precision == "float32 inside" and report.passed


def test_float32_beside_float64():
    # The notes: relative errors "plummet from 1e-2 to 1e-8 by switching to
    # double precision".
    params = examples.mlp_init((4, 3, 2), seed=4)
    x, y = examples.classification_batch(6, 4, 2)
    r64 = jaxcheck.check_grads(examples.mlp_loss, params, x, y, step=1e-5)
    r32 = jaxcheck.check_grads(examples.mlp_loss, params, x, y, dtype="float32")
    assert r64.dtype == "float64" and r32.dtype == "float32"
    assert r64.max_rel_error < 1e-7
    assert r32.max_rel_error > 1e-5 and r32.max_rel_error > 1e3 * r64.max_rel_error
    # A float32 check gets the float32 bar, and passes a correct gradient.
    assert r32.rtol == compare.low_precision_rtol(float(jnp.finfo(jnp.float32).eps))
    assert r32.passed and r32.precision == "check in float32"


def test_float32_computation_hidden_in_a_callback_shows_in_the_noise():
    @jax.custom_jvp
    def hidden(w):
        def host(v):
            v32 = np.asarray(v, np.float32)
            return np.asarray(np.sum(np.cos(v32) * v32), np.float64)

        out = jax.ShapeDtypeStruct((), w.dtype)
        return jax.pure_callback(host, out, w, vmap_method="sequential")

    @hidden.defjvp
    def _(primals, tangents):
        (w,), (t,) = primals, tangents
        return hidden(w), jnp.sum((jnp.cos(w) - w * jnp.sin(w)) * t)

    w = _x64(np.linspace(0.3, 2.0, 4))
    report = jaxcheck.check_grads(hidden, w)
    # Never wrong: the float32 round-off is measured and the coordinates are
    # resolved with larger steps or reported untestable.
    assert report.num_wrong == 0 and report.passed, str(report)
    assert report.opaque
    assert report.noise_floor > 1e-9
    assert report.precision == "noise like a lower precision (measured)"
    assert any("float32 somewhere" in n for n in report.notes)
