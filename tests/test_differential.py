"""The differential check: an implementation at its native dtype against a float64
reference, leaf by leaf (jaxcheck/differential.py, jaxcheck/rounding.py)."""

import collections
import functools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcheck.differential import (
    WIDE_BAR,
    assert_against_reference,
    check_against_reference,
)
from jaxcheck.report import GradientCheckError
from jaxcheck.rounding import rounding_counts, tolerance, unit_roundoff

DTYPES = {"bfloat16": jnp.bfloat16, "float16": jnp.float16, "float32": jnp.float32}
LEAVES = ["['W1']", "['W2']", "['b1']", "['b2']"]


def net_fused(p, x, labels):
    """The implementation: an MLP layer, then cross-entropy through a hand-written
    ("fused") logsumexp with the maximum subtracted and the label's logit picked."""
    h = jnp.tanh(x @ p["W1"] + p["b1"])
    z = h @ p["W2"] + p["b2"]
    m = jax.lax.stop_gradient(z.max(-1, keepdims=True))
    lse = m[:, 0] + jnp.log(jnp.sum(jnp.exp(z - m), -1))
    picked = jnp.take_along_axis(z, labels[:, None], -1)[:, 0]
    return jnp.mean(lse - picked)


def net_ref(p, x, labels):
    """The reference: the same network written plainly (log_softmax, one-hot)."""
    h = jnp.tanh(x @ p["W1"] + p["b1"])
    logp = jax.nn.log_softmax(h @ p["W2"] + p["b2"])
    onehot = jax.nn.one_hot(labels, logp.shape[-1], dtype=logp.dtype)
    return -jnp.mean(jnp.sum(onehot * logp, -1))


def scaled_grad(leaf, factor, fn=net_fused):
    """``fn`` with the gradient of one leaf multiplied by ``factor`` (a planted bug:
    the value is unchanged)."""

    def buggy(p, x, labels):
        v = p[leaf]
        q = {**p, leaf: factor * v - (factor - 1) * jax.lax.stop_gradient(v)}
        return fn(q, x, labels)

    buggy.__name__ = f"{fn.__name__}_{leaf}_x{factor}"
    return buggy


@functools.cache
def data(dtype_name):
    """Parameters, inputs (at ``dtype_name``) and integer labels."""
    rng = np.random.default_rng(0)  # drawn on the host: nothing to compile
    params = {
        "W1": rng.standard_normal((32, 16)) / math.sqrt(32),
        "b1": 0.1 * rng.standard_normal(16),
        "W2": rng.standard_normal((16, 10)) / 4,
        "b2": 0.1 * rng.standard_normal(10),
    }
    dtype = DTYPES[dtype_name]

    def cast(v):
        return jnp.asarray(v.astype(np.float32).astype(dtype))

    params = {name: cast(v) for name, v in params.items()}
    x = cast(rng.standard_normal((8, 32)))
    labels = jnp.asarray(rng.integers(0, 10, 8).astype(np.int32))
    return params, x, labels


@functools.cache
def correct_report(dtype_name):
    return check_against_reference(net_fused, net_ref, *data(dtype_name))


@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_correct_implementation_passes(dtype_name):
    report = correct_report(dtype_name)
    assert report.status == "passed", report.format()
    assert [leaf.path for leaf in report.leaves] == LEAVES
    assert report.method == "reference"
    assert report.dtype == dtype_name
    for leaf in report.leaves:
        assert leaf.num_wrong == 0 and leaf.num_ok == leaf.size == leaf.num_checked
        assert leaf.dtype == dtype_name
        # the worst entry uses well under the bar (measured: under 0.3 of it)
        assert leaf.max_rel_error < 0.6 * leaf.rtol
    assert report.rtol == max(leaf.rtol for leaf in report.leaves)
    u = unit_roundoff(DTYPES[dtype_name])
    for leaf in report.leaves:
        # the bar is 8 * sqrt(N) * u with N between 1 and a few hundred roundings
        assert 8 * u <= leaf.rtol <= 8 * math.sqrt(400) * u, (leaf.path, leaf.rtol)


def test_bars_follow_the_unit_roundoff():
    """Same program, other dtype: the bar scales with u (bf16 / f16 = 2**-8 / 2**-11 = 8), and a
    bf16 bar stays below WIDE_BAR so a gradient x1.5 or x0.5 can be caught."""
    bf16, f16, f32 = (correct_report(d) for d in DTYPES)
    for a, b, c in zip(bf16.leaves, f16.leaves, f32.leaves, strict=True):
        assert a.rtol / b.rtol == pytest.approx(8.0, rel=0.05)
        assert a.rtol < WIDE_BAR
        assert c.rtol < 1e-4
    notes = "\n".join(bf16.notes)
    assert "bar of ['W1']: " in notes and "u(bfloat16)" in notes
    assert not any("cannot be told from rounding" in n for n in bf16.notes)


def test_bar_of_a_hand_counted_gradient():
    """f(w) = sum(w * x): the gradient of w is ``ct * x``. In bfloat16 that is two
    roundings (the float32 cotangent 1.0 narrowed to bfloat16, counted although
    exact, and the product), in the float64 reference one, so
    bar = 8 * sqrt(2 u_bf16^2 + u_f64^2)."""
    w = jnp.linspace(-1, 1, 7, dtype=jnp.bfloat16)
    x = jnp.linspace(0.5, 2, 7, dtype=jnp.bfloat16)

    def f(w, x):
        return jnp.sum(w * x)

    report = check_against_reference(f, f, w, x)
    expected = 8 * math.sqrt(2 * 2.0**-16 + 2.0**-106)
    assert report.leaves[0].rtol == pytest.approx(expected, rel=1e-12)
    assert report.passed and report.max_rel_error == 0.0  # g = x exactly on both


def test_rounding_counts_grow_with_the_reduction_size():
    """A dot over K terms charges K roundings in its accumulation dtype."""

    def counts(k, accumulation):
        x, w = jnp.ones((3, k), jnp.bfloat16), jnp.ones((k, 2), jnp.bfloat16)
        cj = jax.make_jaxpr(lambda x, w: jnp.sum(x @ w))(x, w)
        return rounding_counts(cj, accumulation)[0][0]

    small, large = counts(16, "float32"), counts(64, "float32")
    assert large["float32"] - small["float32"] == 48
    assert large["bfloat16"] == small["bfloat16"]
    literal = counts(64, None)
    assert literal["bfloat16"] - counts(16, None)["bfloat16"] == 48
    # jnp.sum of bfloat16 sums in float32 whatever `accumulation` says
    assert literal["float32"] == small["float32"] - 16 == 6
    # a scatter-add sums the duplicates of an index: 8 updates into 2 slots are
    # charged 4 roundings on average, and its combiner is no opaque body
    cj = jax.make_jaxpr(lambda v: jnp.zeros(2).at[jnp.zeros(8, int)].add(v))(
        jnp.ones(8)
    )
    assert rounding_counts(cj) == ([collections.Counter({"float32": 4})], [])
    # random rounding: sqrt(K) u; worst case: K u
    c = collections.Counter({"bfloat16": 64})
    assert tolerance(c, "random") == pytest.approx(8 * 2**-8)
    assert tolerance(c, "worst") == pytest.approx(64 * 2**-8)


@pytest.mark.parametrize(
    "dtype_name, leaf, factor",
    [
        ("float32", "W2", -1.0),  # sign flip
        ("float32", "b1", 1.5),
        ("float32", "W1", 0.5),
        ("bfloat16", "b2", 1.5),
        ("float16", "W1", -1.0),
    ],
)
def test_planted_bug_fails_at_its_leaf(dtype_name, leaf, factor):
    report = check_against_reference(
        scaled_grad(leaf, factor), net_ref, *data(dtype_name)
    )
    assert report.status == "failed"
    assert [bad.path for bad in report.failures] == [f"['{leaf}']"]
    bad = report.leaf(f"['{leaf}']")
    assert bad.num_wrong > 0 and bad.max_rel_error > bad.rtol
    # the other leaves pass, with about the bars of the correct implementation
    # (the planted operations add a few roundings on the way)
    good = correct_report(dtype_name)
    for other in LEAVES:
        if other != f"['{leaf}']":
            assert report.leaf(other).num_wrong == 0
            assert report.leaf(other).rtol == pytest.approx(
                good.leaf(other).rtol, rel=0.1
            )
    # the worst wrong coordinate shows the planted factor
    worst = bad.worst[0]
    assert worst.verdict == "wrong"
    tol = 1e-3 if dtype_name == "float32" else 0.1
    assert worst.analytic / worst.numeric == pytest.approx(factor, rel=tol)


def _weight_decay(fn, lam, *, drop):
    def loss(p, x, labels):
        w2 = jax.lax.stop_gradient(p["W2"]) if drop else p["W2"]
        return fn(p, x, labels) + 0.5 * lam * jnp.sum(w2.astype(jnp.float32) ** 2)

    loss.__name__ = f"{fn.__name__}_{'dropped' if drop else 'with'}_decay"
    return loss


def _decay_of_relative_size(params, x, labels, size):
    """The weight decay whose gradient has ``size`` times the RMS of the data
    gradient of W2 (measured in float64)."""
    with jax.enable_x64(True):
        p64 = {k: jnp.asarray(np.asarray(v, np.float64)) for k, v in params.items()}
        x64 = jnp.asarray(np.asarray(x, np.float64))
        g = jax.grad(net_ref)(p64, x64, labels)["W2"]
        rms = lambda a: float(jnp.sqrt(jnp.mean(a**2)))  # noqa: E731
        return size * rms(g) / rms(p64["W2"])


def test_dropped_term_of_relative_size_1e_2():
    """float32 catches a gradient term of relative size 1e-2 left out (W2 only);
    bfloat16's bar is wider than that, and the same bug passes there."""
    params, x, labels = data("float32")
    lam = _decay_of_relative_size(params, x, labels, 1e-2)
    ref = _weight_decay(net_ref, lam, drop=False)
    report = check_against_reference(
        _weight_decay(net_fused, lam, drop=True), ref, params, x, labels
    )
    assert [bad.path for bad in report.failures] == ["['W2']"]
    w2 = report.leaf("['W2']")
    assert 2e-3 < w2.max_rel_error < 3e-2 and w2.rtol < 1e-4
    assert w2.num_wrong > w2.size // 2
    assert report.f_value == pytest.approx(float(ref(params, x, labels)), rel=1e-5)

    params16, x16, _ = data("bfloat16")
    report16 = check_against_reference(
        _weight_decay(net_fused, lam, drop=True), ref, params16, x16, labels
    )
    assert report16.passed and report16.leaf("['W2']").rtol > 1e-2


def test_mismatched_pytree_raises_naming_both():
    params, x, labels = data("float32")

    def ref_other_keys(p, x, labels):  # written for lower-case names
        return net_ref({**p, "W1": p["w1"]}, x, labels)

    with pytest.raises(
        ValueError, match=r"`f_ref` \(.*ref_other_keys\).*`f` \(net_fused\)"
    ):
        check_against_reference(net_fused, ref_other_keys, params, x, labels)

    def ref_transposed(p, x, labels):  # expects W1 stored as (out, in)
        return net_ref({**p, "W1": p["W1"].T}, x, labels)

    with pytest.raises(ValueError, match=r"`f_ref` \(.*ref_transposed\).*shapes"):
        check_against_reference(net_fused, ref_transposed, params, x, labels)

    def ref_grads_missing_b2(p, x, labels):
        return {k: v for k, v in jax.grad(net_ref)(p, x, labels).items() if k != "b2"}

    with pytest.raises(ValueError) as err:
        check_against_reference(
            net_fused, net_ref, params, x, labels, ref_grad_fn=ref_grads_missing_b2
        )
    msg = str(err.value)
    assert (
        "ref_grads_missing_b2)" in msg
        and "`ref_grad_fn` (" in msg
        and "`f` (net_fused)" in msg
    )
    assert "missing: [\"['b2']\"]" in msg

    def grads_transposed(p, x, labels):
        g = jax.grad(net_fused)(p, x, labels)
        return {**g, "W1": g["W1"].T}

    with pytest.raises(ValueError, match=r"`grad_fn` \(.*grads_transposed\) returned "):
        check_against_reference(
            net_fused, net_ref, params, x, labels, grad_fn=grads_transposed
        )


def test_non_float_leaves_are_skipped_and_reported():
    params, x, labels = data("float16")
    params = {**params, "step": jnp.int32(3), "mask": jnp.ones(10, bool), "tag": None}

    def f(p, x, labels):
        return net_fused({k: p[k] for k in ("W1", "b1", "W2", "b2")}, x, labels)

    def f_ref(p, x, labels):
        return net_ref({k: p[k] for k in ("W1", "b1", "W2", "b2")}, x, labels)

    report = check_against_reference(f, f_ref, params, x, labels)
    assert report.passed
    assert [leaf.path for leaf in report.leaves] == LEAVES
    skipped = {s.path: s.reason for s in report.skipped}
    assert skipped == {
        "['mask']": "bool leaf: not differentiable",
        "['step']": "integer leaf: not differentiable",
        "['tag']": "None: nothing to check",
    }
    text = report.format()
    assert "skipped ['step'] (int32): integer leaf: not differentiable" in text
    assert json.loads(json.dumps(report.to_dict()))["method"] == "reference"

    with pytest.raises(ValueError, match="no floating-point array leaf"):
        check_against_reference(f, f_ref, {"step": jnp.int32(3)}, x, labels)


def test_usage_errors_name_the_argument():
    params, x, labels = data("float32")
    with pytest.raises(TypeError, match="`f_ref` must be callable"):
        check_against_reference(net_fused, 3, params, x, labels)
    with pytest.raises(TypeError, match="`ref_grad_fn` must be callable"):
        check_against_reference(net_fused, net_ref, params, x, labels, ref_grad_fn=1)
    with pytest.raises(ValueError, match="`rounding` must be one of"):
        check_against_reference(net_fused, net_ref, params, x, labels, rounding="x")
    with pytest.raises(ValueError, match="`safety` must be a positive"):
        check_against_reference(net_fused, net_ref, params, x, labels, safety=0)

    def per_example(p, x, labels):
        return jnp.sum(x @ p["W1"], axis=1)

    with pytest.raises(
        TypeError, match=r"`f_ref` \(.*per_example\) returned shape \(8,\)"
    ):
        check_against_reference(net_fused, per_example, params, x, labels)


def test_assert_against_reference_raises_with_the_report():
    params, x, labels = data("float32")
    assert assert_against_reference(net_fused, net_ref, params, x, labels).passed
    with pytest.raises(GradientCheckError) as err:
        assert_against_reference(
            scaled_grad("b2", 0.5), net_ref, params, x, labels, sensitivity=0
        )
    assert err.value.report.failures[0].path == "['b2']"
    assert "FAILED" in str(err.value).splitlines()[0]


def test_sensitivity_drawn_in_the_program_agrees(monkeypatch):
    """Above MAX_HOST_NOISE numbers the noise is drawn inside the program: the
    check still passes and the sensitivity term is of the same size."""
    import jaxcheck.differential as differential

    def sigma_notes(report):
        return [n for n in report.notes if n.startswith("bar of ")]

    host = correct_report("float16")
    monkeypatch.setattr(differential, "MAX_HOST_NOISE", 0)
    inside = check_against_reference(net_fused, net_ref, *data("float16"))
    assert inside.passed
    for a, b in zip(host.leaves, inside.leaves, strict=True):
        assert a.rtol == b.rtol
        assert b.max_rel_error == pytest.approx(a.max_rel_error, rel=0.5)
    assert len(sigma_notes(inside)) == len(LEAVES)
    assert all("sigma / bar (median" in n for n in sigma_notes(inside))


def test_options_rtol_worst_and_a_low_precision_reference():
    params, x, labels = data("float32")
    fixed = check_against_reference(net_fused, net_ref, params, x, labels, rtol=1e-3)
    assert [leaf.rtol for leaf in fixed.leaves] == [1e-3] * 4
    assert any(
        n.startswith("bar of ['W1']: 0.001 (given as `rtol`)") for n in fixed.notes
    )

    worst = check_against_reference(
        net_fused, net_ref, params, x, labels, rounding="worst", sensitivity=0
    )
    random = correct_report("float32")
    for w, r in zip(worst.leaves, random.leaves, strict=True):
        assert w.rtol > 3 * r.rtol  # N u against sqrt(N) u, N in the hundreds

    def ref_in_float32(p, x, labels):  # a reference that is not float64 inside
        return net_ref({k: v.astype(jnp.float32) for k, v in p.items()}, x, labels)

    low = check_against_reference(net_fused, ref_in_float32, params, x, labels)
    assert any(n.startswith("f_ref computes in float32 inside") for n in low.notes)
    assert low.leaf("['W1']").rtol > random.leaf("['W1']").rtol
