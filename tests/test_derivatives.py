"""Tests of jaxcheck.derivatives: second order, forward mode, VJPs, Jacobians,
random directions with localisation, and multi-point checks."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcheck import GradCheckReport, check_grads
from jaxcheck.derivatives import (
    BlockCheckReport,
    DirectionsReport,
    ForwardModeUnsupportedError,
    MultiPointReport,
    _blocks,
    check_directions,
    check_forward_mode,
    check_jacobian,
    check_points,
    check_second_order,
    check_vjp,
    directions_for_risk,
    miss_probability,
    stack_points,
)
from jaxcheck.engine import memory

# --------------------------------------------------------------------------- #
# Second order.
# --------------------------------------------------------------------------- #


def make_cube(detach_in_backward: bool, fwd_calls_cube: bool = False):
    """``x ** 3`` as a ``custom_vjp``; the planted bug detaches ``x`` in the
    backward pass (right at first order, a zero second derivative). With
    ``fwd_calls_cube`` the rule's ``fwd`` calls the custom function itself, which
    makes ``jax.jvp`` of its gradient impossible (issue 13.2)."""

    @jax.custom_vjp
    def cube(x):
        return x**3

    def bwd(x, g):
        x2 = jax.lax.stop_gradient(x) ** 2 if detach_in_backward else x**2
        return (g * 3 * x2,)

    def fwd(x):
        return (cube(x) if fwd_calls_cube else x**3), x

    cube.defvjp(fwd, bwd)
    return cube


def _cube_loss(cube):
    def loss(params, x):
        return jnp.sum(cube(params["w"] * x)) + jnp.sum(jnp.sin(params["b"]))

    params = {"w": jnp.array([0.5, -1.0, 1.5]), "b": jnp.array([0.3, 0.7])}
    return loss, params, jnp.array([1.0, 2.0, -0.5])


@pytest.mark.parametrize("method", ["fwd_over_rev", "rev_over_rev"])
def test_stop_gradient_in_bwd_passes_order_one_fails_order_two(method):
    loss, params, x = _cube_loss(make_cube(detach_in_backward=True))
    assert check_grads(loss, params, x).passed
    report = check_second_order(loss, params, x, method=method)
    assert isinstance(report, BlockCheckReport) and isinstance(report, GradCheckReport)
    assert not report.passed
    block = report.leaf("d2f/d['w'] d['w']")
    assert block.shape == (3, 3)
    assert block.num_wrong == 3  # the diagonal of the Hessian reads zero
    assert {c.index for c in block.worst[:3]} == {(0, 0), (1, 1), (2, 2)}
    assert all(c.analytic == 0.0 for c in block.worst[:3])
    assert report.leaf("d2f/d['b'] d['b']").passed
    assert report.headline().startswith("jaxcheck: second-order check FAILED: 4 blocks")
    assert report.to_dict()["kind"] == "second-order"


def test_correct_backward_passes_order_two():
    loss, params, x = _cube_loss(make_cube(detach_in_backward=False))
    report = check_second_order(loss, params, x)
    assert report.passed
    assert report.num_checked == 25  # (3 + 2) ** 2 Hessian entries
    sampled = check_second_order(loss, params, x, coords=1, seed=1)
    assert sampled.num_checked == 2 * 5  # one column per leaf


@pytest.mark.parametrize("detach, passes", [(False, True), (True, False)])
def test_second_order_falls_back_to_rev_over_rev_without_forward_mode(detach, passes):
    # Issue 13.2: a custom_vjp whose fwd calls the custom function itself has a
    # gradient that jax.jvp cannot differentiate; order 2 is checked
    # reverse-over-reverse instead, and a planted second-order bug still fails.
    loss, params, x = _cube_loss(make_cube(detach, fwd_calls_cube=True))
    assert check_grads(loss, params, x).passed  # right at first order either way
    report = check_second_order(loss, params, x)
    assert report.passed is passes
    assert report.grad_source == "reverse-over-reverse (jax.vjp of jax.grad)"
    assert "forward-over-reverse is impossible" in report.notes[0]
    assert "custom_vjp" in report.notes[0]
    block = report.leaf("d2f/d['w'] d['w']")
    assert block.num_wrong == (0 if passes else 3)  # the Hessian's diagonal
    assert report.leaf("d2f/d['b'] d['b']").passed
    with pytest.raises(ForwardModeUnsupportedError, match='method="rev_over_rev"'):
        check_second_order(loss, params, x, method="fwd_over_rev")
    with pytest.raises(ForwardModeUnsupportedError, match="custom_vjp"):
        check_forward_mode(loss, params, x)


def test_second_order_takes_forward_over_reverse_where_it_can():
    loss, params, x = _cube_loss(make_cube(detach_in_backward=False))
    report = check_second_order(loss, params, x)
    assert report.grad_source == "forward-over-reverse HVP (jax.jvp of jax.grad)"
    # Nothing to warn about (a first call may say what compiling cost: that
    # depends on which test compiled this structure first).
    assert [n for n in report.notes if not n.startswith("first call")] == []


def test_second_order_of_a_hand_written_gradient():
    def loss(w):
        return jnp.sum(w**4)

    def grad_detached(w):
        return 4 * jax.lax.stop_gradient(w) ** 3

    w = jnp.array([1.0, -2.0])
    assert check_grads(loss, w, grad_fn=grad_detached).passed
    assert not check_second_order(loss, w, grad_fn=grad_detached).passed
    assert check_second_order(loss, w, grad_fn=lambda w: 4 * w**3).passed


def test_second_order_refuses_huge_checks():
    with pytest.raises(ValueError, match="max_entries"):
        check_second_order(lambda w: jnp.sum(w**2), jnp.ones(50), max_entries=100)
    with pytest.raises(ValueError, match='`method` must be "auto"'):
        check_second_order(lambda w: jnp.sum(w**2), jnp.ones(2), method="fwd")


# --------------------------------------------------------------------------- #
# Forward mode (reverse mode is check_grads).
# --------------------------------------------------------------------------- #


def make_softplus(correct: bool):
    @jax.custom_jvp
    def softplus(x):
        return jnp.logaddexp(x, 0.0)

    @softplus.defjvp
    def _jvp(primals, tangents):
        (x,), (t,) = primals, tangents
        slope = jax.nn.sigmoid(x) if correct else jnp.exp(x)  # the bug: exp
        return softplus(x), t * slope

    return softplus


@pytest.mark.parametrize("correct", [True, False])
def test_custom_jvp_rule_checked_in_both_modes(correct):
    softplus = make_softplus(correct)

    def loss(w, x):
        return jnp.sum(softplus(x @ w))

    w, x = jnp.array([0.3, -0.2]), jnp.array([[1.0, 2.0], [-1.0, 0.5], [0.2, 0.1]])
    rev = check_grads(loss, w, x)
    fwd = check_forward_mode(loss, w, x)
    assert isinstance(fwd, GradCheckReport)
    assert rev.passed is correct  # reverse mode transposes the wrong rule
    assert fwd.passed is correct
    assert fwd.grad_source == "jax.jvp (forward mode)"
    json.dumps(fwd.to_dict())


def test_custom_vjp_is_reverse_only():
    cube = make_cube(detach_in_backward=False)

    def loss(w):
        return jnp.sum(cube(w))

    assert check_grads(loss, jnp.array([1.0, 2.0])).passed  # reverse mode
    with pytest.raises(ForwardModeUnsupportedError, match="custom_vjp") as err:
        check_forward_mode(loss, jnp.array([1.0, 2.0]))
    assert "reverse-only" in str(err.value) and "check_grads" in str(err.value)
    assert isinstance(err.value, TypeError)


def test_forward_mode_with_sampled_coordinates_matches_reverse():
    params = {"W": jnp.linspace(-1, 1, 60).reshape(10, 6), "n": jnp.int32(2)}

    def loss(p):
        return jnp.sum(jnp.tanh(p["W"]) ** 2) * p["n"]

    fwd = check_forward_mode(loss, params, coords=7, seed=3)
    rev = check_grads(loss, params, coords=7, seed=3)
    assert fwd.passed and fwd.num_checked == 7
    assert {c.index for c in fwd.leaf("['W']").worst} <= {
        c.index for c in check_grads(loss, params, coords=7, seed=3, max_worst=7)
        .leaf("['W']").worst
    }  # fmt: skip
    assert rev.num_checked == fwd.num_checked
    with pytest.raises(TypeError, match="grad_fn"):
        check_forward_mode(loss, params, grad_fn=lambda p: p)


# --------------------------------------------------------------------------- #
# VJPs and Jacobians.
# --------------------------------------------------------------------------- #


def layer(inputs):
    x, w = inputs
    return jnp.tanh(x @ w)


def layer_backward(inputs, g):
    x, w = inputs
    dz = g * (1 - jnp.tanh(x @ w) ** 2)
    return (dz @ w.T, x.T @ dz)


def layer_backward_bug(inputs, g):  # forgets the derivative of tanh
    x, w = inputs
    return (g @ w.T, x.T @ g)


def _layer_inputs():
    rng = np.random.default_rng(0)
    return (jnp.asarray(rng.normal(size=(4, 3))), jnp.asarray(rng.normal(size=(3, 2))))


def test_check_vjp_with_an_upstream_gradient():
    inputs = _layer_inputs()
    upstream = jnp.asarray(np.random.default_rng(1).normal(size=(4, 2)))
    assert check_vjp(layer, inputs, upstream).passed
    good = check_vjp(layer, inputs, upstream, vjp_fn=layer_backward)
    assert good.passed and good.num_checked == 12 + 6
    bad = check_vjp(layer, inputs, upstream, vjp_fn=layer_backward_bug)
    assert not bad.passed
    assert {leaf.path for leaf in bad.failures} == {"[0]", "[1]"}
    assert bad.grad_source == "layer_backward_bug"
    assert "cotangent" in bad.notes[-1]
    assert check_vjp(layer, inputs, None, seed=4).passed  # a random cotangent


def test_check_vjp_rejects_a_mismatched_cotangent():
    with pytest.raises(ValueError, match=r"shape \(2, 2\).*\(4, 2\)"):
        check_vjp(layer, _layer_inputs(), jnp.ones((2, 2)))
    with pytest.raises(ValueError, match="structure"):
        check_vjp(layer, _layer_inputs(), (jnp.ones((4, 2)), jnp.ones(2)))
    with pytest.raises(TypeError, match="vjp_fn"):
        check_vjp(layer, _layer_inputs(), jnp.ones((4, 2)), grad_fn=layer_backward)


@pytest.mark.parametrize("mode", ["rev", "fwd"])
def test_check_jacobian_blocks_and_layout(mode):
    def f(x, scale):
        return {"a": jnp.sin(x["u"]) * x["v"][0] * scale, "b": x["v"] ** 2}

    x = {"u": jnp.arange(3.0), "v": jnp.array([0.5, 2.0])}
    report = check_jacobian(f, x, 2.0, mode=mode)
    assert report.passed
    assert [b.path for b in report.leaves] == [
        "df['a']/dx['u']", "df['b']/dx['u']", "df['a']/dx['v']", "df['b']/dx['v']",
    ]  # fmt: skip
    assert report.leaf("df['a']/dx['v']").shape == (3, 2)  # out shape + in shape
    assert report.num_checked == 9 + 6 + 6 + 4
    assert math.isnan(report.f_value)


def test_check_jacobian_finds_a_wrong_custom_vjp_entry():
    @jax.custom_vjp
    def scaled(x):
        return x * jnp.arange(1.0, 5.0)

    def bwd(_, g):
        return (g * jnp.array([1.0, 2.0, 3.0, 4.5]),)  # entry 3 is wrong

    scaled.defvjp(lambda x: (scaled(x), None), bwd)
    report = check_jacobian(scaled, jnp.ones(4))
    assert report.num_wrong == 1
    assert report.leaves[0].worst[0].index == (3, 3)
    assert report.headline().startswith("jaxcheck: Jacobian check FAILED")
    # A check this small is compiled with the quick CPU options, as a
    # gradient check's program is (see memory.compile_options).
    quick = memory.compile_options(jax.default_backend(), 0.0)
    assert quick in _blocks._fd_columns_jit.variants
    assert quick in _blocks._jacrev_full_jit.variants


# --------------------------------------------------------------------------- #
# Random directions.
# --------------------------------------------------------------------------- #

N_DIR = 4000


def _dir_loss(w):
    return jnp.sum(jnp.sin(w) * jnp.linspace(0.5, 1.5, w.shape[0]))


def _dir_grad(w):
    return jnp.cos(w) * jnp.linspace(0.5, 1.5, w.shape[0])


def test_directions_localise_a_single_wrong_entry():
    w = jnp.linspace(-2.0, 2.0, N_DIR)

    def grad_one_bug(w):
        return _dir_grad(w).at[2345].multiply(1.01)

    report = check_directions(_dir_loss, w, grad_fn=grad_one_bug, num=3)
    assert isinstance(report, DirectionsReport)
    assert not report.passed
    leaf = report.leaves[0]
    assert leaf.num_wrong_directions == 3
    assert [c.index for c in leaf.localized] == [(2345,)]
    assert leaf.localized[0].rel_error == pytest.approx(0.01 / 1.01, rel=1e-4)
    assert leaf.localization == "complete"
    bound = 2 * 3 + 4 * math.ceil(math.log2(N_DIR))
    assert report.num_evaluations <= bound
    assert report.full_check_evaluations == 2 * N_DIR
    assert "localised" in report.headline()
    json.dumps(report.to_dict())
    assert "(root)" in str(report) and "<table>" in report._repr_html_()


def test_directions_pass_a_correct_gradient_with_2k_evaluations():
    params = {"w": jnp.linspace(-2.0, 2.0, N_DIR), "b": jnp.array([0.1, 0.2])}

    def loss(p):
        return _dir_loss(p["w"]) + jnp.sum(p["b"] ** 3)

    report = check_directions(loss, params, num=5)
    assert report.passed
    assert report.num_evaluations == 2 * 5 * 2
    assert all(leaf.localization == "not needed" for leaf in report.leaves)


def test_directions_two_bugs_and_a_spread_error():
    w = jnp.linspace(-2.0, 2.0, 1000)

    def two_bugs(w):
        return _dir_grad(w).at[5].multiply(1.01).at[900].add(0.1)

    found = check_directions(_dir_loss, w, grad_fn=two_bugs).leaves[0]
    assert sorted(c.index for c in found.localized) == [(5,), (900,)]

    spread = check_directions(_dir_loss, w, grad_fn=lambda w: 2 * _dir_grad(w))
    leaf = spread.leaves[0]
    assert not leaf.passed
    assert leaf.localization.startswith("incomplete")
    assert "check_grads" in leaf.localization
    off = check_directions(_dir_loss, w, grad_fn=two_bugs, localize=False).leaves[0]
    assert off.localization == "off" and off.num_evaluations == 8


def test_miss_probability_and_risk():
    # The orthogonal case is the worst: (2/pi) atan(t/r).
    t = 1e-4 / (1 - 1e-4)
    assert miss_probability(1e-2, 1, rtol=1e-4) == pytest.approx(
        2 / math.pi * math.atan(t / 1e-2), rel=1e-6
    )
    p1 = miss_probability(1e-3, 1, rtol=1e-4)
    assert miss_probability(1e-3, 3, rtol=1e-4) == pytest.approx(p1**3)
    assert miss_probability(1e-1, 1) < miss_probability(1e-3, 1)
    assert miss_probability(1e-9, 1, rtol=1e-4) > 0.99
    assert miss_probability(0.0, 2) == 1.0
    k = directions_for_risk(1e-6, 1e-3, rtol=1e-4)
    assert miss_probability(1e-3, k, rtol=1e-4) <= 1e-6
    assert miss_probability(1e-3, k - 1, rtol=1e-4) > 1e-6
    report = check_directions(
        _dir_loss, jnp.ones(10), risk=1e-6, error_size=1e-3, rtol=1e-4
    )
    assert report.num_directions == k
    assert report.miss_probability <= 1e-6


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num": 2, "risk": 0.1}, "either `num`"),
        ({"num": 0}, "`num` must be an int >= 1"),
        ({"risk": 2.0}, "`risk` must lie in"),
        ({"max_groups": 0}, "`max_groups`"),
    ],
)
def test_directions_reject_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        check_directions(_dir_loss, jnp.ones(3), **kwargs)


# --------------------------------------------------------------------------- #
# Several points.
# --------------------------------------------------------------------------- #


def test_check_points_finds_the_point_where_a_gradient_is_wrong():
    def loss(p, x):
        return jnp.sum(jnp.tanh(p["w"] * x) ** 2)

    def grad_wrong_when_large(p, x):
        t = jnp.tanh(p["w"] * x)
        g = 2 * t * (1 - t**2) * x
        return {"w": jnp.where(jnp.abs(p["w"]) > 1.0, 1.1 * g, g)}

    x = jnp.array([1.0, -0.5, 2.0])
    points = stack_points([{"w": jnp.full(3, s)} for s in (0.1, 0.5, 2.0)])
    good = check_points(loss, points, x)
    assert isinstance(good, MultiPointReport)
    assert good.passed and len(good.reports) == 3
    assert [r.f_value for r in good.reports] == pytest.approx(
        [float(loss({"w": jnp.full(3, s)}, x)) for s in (0.1, 0.5, 2.0)]
    )
    bad = check_points(loss, points, x, grad_fn=grad_wrong_when_large)
    assert bad.failed_points == (2,)
    assert "--- point 2 ---" in str(bad)
    json.dumps(bad.to_dict())


def test_stack_points_and_check_points_errors():
    with pytest.raises(ValueError, match="at least one"):
        stack_points([])
    with pytest.raises(ValueError, match=r"points\[1\]"):
        stack_points([{"w": jnp.ones(2)}, {"v": jnp.ones(2)}])
    with pytest.raises(ValueError, match="same leading axis"):
        check_points(
            lambda p: jnp.sum(p["a"]), {"a": jnp.ones((3, 2)), "b": jnp.ones(2)}
        )
