"""Kink detection by tracking winners: the interpreter, and check_grads at kinks.

The planted-kink networks: a ReLU MLP with a multiclass SVM loss whose
pre-activations sit within 1e-7 of zero, the same network with zero biases and
all-zero input rows (ReLU at exactly zero), ``abs`` at exactly zero, and max
pooling with exact ties. Correct gradients pass and the report names the kinks
crossed; each has a twin with a planted backward bug that still fails.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jaxcheck
from jaxcheck import compare, kinks
from jaxcheck.examples import classification_batch, mlp_init, mlp_loss

# --------------------------------------------------------------------------- #
# Networks with planted kinks.


def relu_ok(x):
    return jax.nn.relu(x)  # a custom_jvp: its max sits in call_jaxpr


@jax.custom_vjp
def relu_leaky_bug(x):
    return jnp.maximum(x, 0.0)


# Planted bug: the backward lets the gradient through for x in (-1, 0].
relu_leaky_bug.defvjp(
    lambda x: (jnp.maximum(x, 0.0), x), lambda x, g: (g * (x > -1.0),)
)


@jax.custom_vjp
def relu_double_bug(x):
    return jnp.maximum(x, 0.0)


# Planted bug: twice the gradient where the unit is active.
relu_double_bug.defvjp(
    lambda x: (jnp.maximum(x, 0.0), x), lambda x, g: (2.0 * g * (x > 0),)
)


def svm_loss(scores, y):
    """Multiclass SVM (Weston-Watkins) loss, margin 1."""
    correct = jnp.take_along_axis(scores, y[:, None], axis=1)
    margins = jnp.maximum(0.0, scores - correct + 1.0)
    mask = 1.0 - jax.nn.one_hot(y, scores.shape[1], dtype=scores.dtype)
    return jnp.sum(margins * mask) / scores.shape[0]


def relu_svm(relu):
    def loss(p, x, y):
        h = relu(x @ p["W1"] + p["b1"])
        return svm_loss(h @ p["W2"] + p["b2"], y)

    loss.__name__ = f"relu_svm_{relu.__name__}"
    return loss


def _x64(tree):
    with jax.enable_x64(True):
        return jax.tree_util.tree_map(jnp.asarray, tree)


@functools.cache
def near_kink_problem(gap=5e-8, seed=0):
    """First-layer pre-activations of example 0 are within ``gap`` of zero."""
    rng = np.random.default_rng(seed)
    d, hdim, c, n = 6, 8, 4, 5
    x = rng.normal(size=(n, d))
    w1 = rng.normal(size=(d, hdim)) / np.sqrt(d)
    b1 = -(x[0] @ w1) + gap * rng.choice([-1.0, 1.0], size=hdim)
    params = {
        "W1": w1,
        "b1": b1,
        "W2": rng.normal(size=(hdim, c)) / np.sqrt(hdim),
        "b2": 0.1 * rng.normal(size=c),
    }
    y = rng.integers(0, c, size=n).astype(np.int32)
    return _x64(params), _x64(x), jnp.asarray(y)


@functools.cache
def zero_bias_problem(seed=1):
    """Zero biases and two all-zero input rows: ReLUs at exactly zero."""
    rng = np.random.default_rng(seed)
    d, hdim, c, n = 5, 6, 3, 6
    x = rng.normal(size=(n, d))
    x[[1, 4]] = 0.0
    params = {
        "W1": rng.normal(size=(d, hdim)) / np.sqrt(d),
        "b1": np.zeros(hdim),
        "W2": rng.normal(size=(hdim, c)) / np.sqrt(hdim),
        "b2": np.zeros(c),
    }
    y = rng.integers(0, c, size=n).astype(np.int32)
    return _x64(params), _x64(x), jnp.asarray(y)


def test_near_kink_relu_svm_passes_and_names_the_kinks():
    params, x, y = near_kink_problem()
    with jax.enable_x64(True):
        z0 = np.asarray(x[0] @ params["W1"] + params["b1"])
    assert np.abs(z0).max() < 1e-7
    report = jaxcheck.check_grads(relu_svm(relu_ok), params, x, y)
    assert report.passed, str(report)
    assert report.num_wrong == 0
    # Perturbing any W1 entry of row 0's inputs or any b1 entry by h = 1e-5
    # moves a pre-activation across zero.
    w1 = report.leaf("['W1']")
    assert w1.num_kink == w1.num_kink_crossed == 48
    assert report.leaf("['b1']").num_kink == 8
    assert w1.tracked and w1.num_kink_confirmed == 48
    assert any(k.startswith("max in relu") for k in w1.kink_sites)
    assert any("test_kinks.py" in k for k in w1.kink_sites)
    # The kinks' re-checks (smaller steps) agree with the gradient.
    assert all(c.verdict == "kink" and c.rel_error < 1e-4 for c in w1.kinks)
    assert all("smaller step" in c.resolution for c in w1.kinks)
    # Both kink-capable primitives are named: the ReLU and the SVM hinge.
    assert any("relu" in s for s in report.kink_sites)
    assert any("svm_loss" in s for s in report.kink_sites)
    # The smooth bar applies wherever no winner changes; a crossed coordinate
    # is judged at the notes' bar for kinks, and the reason says so.
    assert report.rtol == compare.SMOOTH_RTOL
    assert "crosses a kink" in report.bar_reason and "0.0001" in report.bar_reason
    text = str(report)
    assert "kinks of ['W1']: 48 coordinate(s) crossed max in relu" in text
    # W2 and b2 cross nothing and are judged like a smooth function.
    assert report.leaf("['W2']").num_kink == 0
    assert report.leaf("['W2']").max_rel_error < 1e-7


@pytest.mark.parametrize("relu", [relu_leaky_bug, relu_double_bug])
def test_near_kink_relu_svm_with_backward_bug_fails(relu):
    params, x, y = near_kink_problem()
    report = jaxcheck.check_grads(relu_svm(relu), params, x, y)
    assert not report.passed
    assert {leaf.path for leaf in report.failures} == {"['W1']", "['b1']"}
    # A bug is a bug at a kink too: coordinates whose finite difference crossed
    # a kink are re-checked with smaller steps and found wrong.
    w1 = report.leaf("['W1']")
    assert w1.num_wrong > 0
    assert any(c.kink and "still disagrees" in c.resolution for c in w1.worst)


def test_without_tracking_kinks_are_not_named_and_smaller_steps_decide():
    params, x, y = near_kink_problem()
    report = jaxcheck.check_grads(relu_svm(relu_ok), params, x, y, track_kinks=False)
    assert report.num_kink == 0  # nothing is recognised as a kink
    assert any("track_kinks=False" in n for n in report.notes)
    # A step across a kink makes f look rough at the main step: the deep
    # ladder's smaller steps stay on one side and agree with the analytic value.
    assert sum(leaf.num_wrong for leaf in report.leaves) == 0
    agreed = [c.resolution for leaf in report.leaves for c in leaf.worst]
    assert any(r.startswith("agrees at h=") for r in agreed)
    # ... and a wrong backward pass still fails without tracking.
    bad = jaxcheck.check_grads(
        relu_svm(relu_double_bug), params, x, y, track_kinks=False
    )
    assert not bad.passed
    assert "['W1']" in {leaf.path for leaf in bad.failures}


def test_relu_at_exactly_zero_with_zero_biases():
    params, x, y = zero_bias_problem()
    report = jaxcheck.check_grads(relu_svm(relu_ok), params, x, y)
    assert report.passed, str(report)
    b1 = report.leaf("['b1']")
    # Two all-zero rows put every hidden unit exactly at its kink for b1; W1
    # entries multiply the zero inputs, so W1 crosses nothing there.
    assert b1.num_kink == 6 and b1.num_kink_confirmed == 6
    assert all("subgradient" in c.resolution for c in b1.kinks)
    assert report.leaf("['W1']").num_kink == 0
    assert report.leaf("['W1']").max_rel_error < 1e-7


def test_relu_at_exactly_zero_with_backward_bug_fails():
    params, x, y = zero_bias_problem()
    report = jaxcheck.check_grads(relu_svm(relu_double_bug), params, x, y)
    assert not report.passed
    assert "['W1']" in {leaf.path for leaf in report.failures}


def test_all_preactivations_at_zero_are_kinks_not_failures():
    # W1 = 0, b1 = 0: every ReLU sits exactly at its kink and every W1 entry
    # crosses several kinks at once, in both directions.
    params, x, y = zero_bias_problem()
    params = dict(params)
    with jax.enable_x64(True):
        params["W1"] = jnp.zeros_like(params["W1"])
    report = jaxcheck.check_grads(relu_svm(relu_ok), params, x, y)
    assert report.passed, str(report)
    w1 = report.leaf("['W1']")
    # Where the analytic value lies between the one-sided derivatives, a kink;
    # where several decisions changed at once and it does not, the valid values
    # are a sum of intervals jaxcheck cannot measure: inconclusive, not wrong.
    assert w1.num_kink + w1.num_inconclusive == 30 and w1.num_wrong == 0
    assert w1.num_kink >= 10
    unresolved = [c for c in w1.worst if c.verdict == "inconclusive"]
    assert all("decisions changed at once" in c.resolution for c in unresolved)


# --------------------------------------------------------------------------- #
# abs at exactly zero, max pooling with exact ties.


@jax.custom_vjp
def abs_bug(x):
    return jnp.abs(x)


# Planted bug: the sign of the derivative is flipped.
abs_bug.defvjp(lambda x: (jnp.abs(x), x), lambda x, g: (-g * jnp.sign(x),))


def l1_loss(abs_fn):
    def loss(w, t):
        return jnp.sum(abs_fn(w)) + 0.5 * jnp.sum((w - t) ** 2)

    return loss


W_L1 = np.array([0.0, 0.7, -1.2, 0.0, 2.0, 0.0])
T_L1 = np.array([0.3, -0.5, 1.0, -2.0, 0.1, 0.0])


def test_abs_at_exactly_zero_passes():
    w, t = _x64(W_L1), _x64(T_L1)
    report = jaxcheck.check_grads(l1_loss(jnp.abs), w, t)
    assert report.passed, str(report)
    leaf = report.leaves[0]
    assert leaf.num_kink == 3 and leaf.num_kink_confirmed == 3
    assert sorted(c.index for c in leaf.kinks) == [(0,), (3,), (5,)]
    assert all(c.kink.startswith("abs at test_kinks.py") for c in leaf.kinks)
    # The one-sided derivatives there are -1 - t_i + ... and +1 ...: the
    # analytic value lies between them.
    assert all("bracket it" in c.resolution for c in leaf.kinks)
    assert leaf.max_rel_error < 1e-7


def test_abs_with_backward_bug_fails():
    w, t = _x64(W_L1), _x64(T_L1)
    report = jaxcheck.check_grads(l1_loss(abs_bug), w, t)
    assert not report.passed
    assert report.num_wrong == 3  # the nonzero entries


def maxpool(img):
    """2x2 max pooling of an (H, W) image with reduce_window."""
    return lax.reduce_window(img, -jnp.inf, lax.max, (2, 2), (2, 2), "VALID")


def maxpool_reshape(img):
    """2x2 max pooling written as reshape + max (reduce_max)."""
    h, w = img.shape
    return jnp.max(img.reshape(h // 2, 2, w // 2, 2), axis=(1, 3))


@jax.custom_vjp
def maxpool_avg_bug(img):
    return maxpool(img)


def _avg_bwd(img, g):
    # Planted bug: spreads the gradient over the window (average-pool backward).
    return (jnp.repeat(jnp.repeat(g, 2, axis=0), 2, axis=1) / 4.0,)


maxpool_avg_bug.defvjp(lambda img: (maxpool(img), img), _avg_bwd)


def pool_loss(pool):
    def loss(img, v):
        return jnp.sum(jnp.tanh(pool(img)) * v)

    return loss


# Exact ties: windows (0,0) and (1,1) hold their maximum twice.
IMG = np.array(
    [
        [0.5, 0.5, 0.1, -0.3],
        [0.2, -0.1, 0.9, 0.4],
        [0.3, 0.6, 0.7, 0.2],
        [-0.2, 0.1, 0.2, 0.7],
    ]
)
V_POOL = np.array([[1.0, -2.0], [0.5, 1.5]])


@pytest.mark.parametrize(
    "pool, primitive", [(maxpool, "reduce_window_max"), (maxpool_reshape, "reduce_max")]
)
def test_max_pooling_with_exact_ties_passes(pool, primitive):
    report = jaxcheck.check_grads(pool_loss(pool), _x64(IMG), _x64(V_POOL))
    assert report.passed, str(report)
    leaf = report.leaves[0]
    # The tied entries (0,0), (0,1), (2,2), (3,3) cross a kink: one wins at
    # x + h, the other at x - h.
    assert sorted(c.index for c in leaf.kinks) == [(0, 0), (0, 1), (2, 2), (3, 3)]
    assert leaf.num_kink_confirmed == 4
    assert all(k.startswith(primitive) for k in leaf.kink_sites)
    assert leaf.max_rel_error < 1e-7


def test_max_pooling_with_backward_bug_fails():
    report = jaxcheck.check_grads(pool_loss(maxpool_avg_bug), _x64(IMG), _x64(V_POOL))
    assert not report.passed
    assert report.num_wrong >= 12  # every non-tied entry


# --------------------------------------------------------------------------- #
# The interpreter: which decisions it sees.


def _where(w):
    return jnp.sum(jnp.where(w > 0.5, w**2, 0.25 * w))


def _cond(w):
    return lax.cond(w[0] > 0.5, lambda v: jnp.sum(v**2), lambda v: jnp.sum(v), w)


def _scan(w):
    def body(c, v):
        return jnp.maximum(c, v), c

    c, ys = lax.scan(body, 0.0, w)
    return c + jnp.sum(ys)


def _while(w):
    def body(s):
        i, acc = s
        return i + 1, acc * 1.5

    i, acc = lax.while_loop(lambda s: s[1] < 2.0, body, (0, w[0]))
    return acc + jnp.sum(w)


@jax.jit
def _jitted_min(w):
    return jnp.minimum(w, 0.5)


CASES = [
    # (name, f, point, coordinate at a kink, primitive expected to change)
    ("max", lambda w: jnp.sum(jnp.maximum(w, 0.5)), [0.5, 0.2, 0.9], 0, "max"),
    ("relu", lambda w: jnp.sum(jax.nn.relu(w)), [0.0, 0.2, -0.9], 0, "max"),
    ("jit", lambda w: jnp.sum(_jitted_min(w)), [0.5, 0.2, 0.9], 0, "min"),
    ("abs", lambda w: jnp.sum(jnp.abs(w)), [0.0, 0.2, -0.9], 0, "abs"),
    ("sign", lambda w: jnp.sum(jnp.sign(w) * w**2), [0.0, 0.2, -0.9], 0, "sign"),
    ("clip", lambda w: jnp.sum(jnp.clip(w, -1.0, 1.0)), [1.0, 0.2, -0.9], 0, "min"),
    ("where", _where, [0.5, 0.2, 0.9], 0, "gt"),
    ("floor", lambda w: jnp.sum(jnp.floor(w) + w), [1.0, 0.2, 0.9], 0, "floor"),
    ("sort", lambda w: jnp.sort(w)[0] * 2.0, [0.5, 0.9, 0.5], 0, "sort"),
    ("argmax", lambda w: w[jnp.argmax(w)], [0.9, 0.2, 0.9], 0, "argmax"),
    ("reduce_max", lambda w: jnp.max(w), [0.9, 0.2, 0.9], 0, "reduce_max"),
    ("top_k", lambda w: jnp.sum(lax.top_k(w, 1)[0]), [0.9, 0.2, 0.9], 0, "top_k"),
    ("cummax", lambda w: jnp.sum(lax.cummax(w)), [0.9, 0.2, 0.9], 2, "cummax"),
    ("cond", _cond, [0.5, 0.2, 0.9], 0, "cond"),
    ("scan", _scan, [0.5, 0.2, 0.5], 0, "max"),
    ("while", _while, [4.0 / 3.0, 0.2, 0.9], 0, "while"),
]


@pytest.mark.parametrize(
    "name, f, point, i, primitive", CASES, ids=[c[0] for c in CASES]
)
def test_interpreter_sees_the_decision(name, f, point, i, primitive):
    with jax.enable_x64(True):
        x = jnp.asarray(point)
        g, sites = kinks.track_winners(f, x)
        assert primitive in {s.primitive for s in sites}
        value, _ = g(x)
        assert float(value) == pytest.approx(float(f(x)), rel=1e-15)
        h = 1e-6
        e = jnp.zeros(3).at[i].set(h)
        # Batched and compiled: the engine's way of calling it.
        vals, words = jax.jit(jax.vmap(g))(jnp.stack([x + e, x - e]))
        pairs = zip(sites, words[0], words[1], strict=True)
        changed = {s.primitive for s, a, b in pairs if a != b}
        assert primitive in changed
        np.testing.assert_allclose(vals, [f(x + e), f(x - e)], rtol=1e-14)
        # The coordinate away from the kink changes nothing.
        e1 = jnp.zeros(3).at[1].set(h)
        _, w_plus = g(x + e1)
        _, w_minus = g(x - e1)
        assert bool(jnp.all(w_plus == w_minus))


def test_decisions_that_do_not_matter_are_not_sites():
    # log_softmax subtracts a stop_gradient'ed max; softplus/logsumexp are smooth
    # although built from max/abs; NaN guards and label comparisons are not
    # decisions about the parameters.
    def loss(w, x, labels):
        logits = x @ w
        return (
            mlp_like(logits, labels)
            + jnp.sum(jax.nn.softplus(logits))
            + jnp.sum(jax.nn.logsumexp(logits, axis=-1))
            + jnp.sum(jnp.where(jnp.isnan(logits), 0.0, logits))
        )

    def mlp_like(logits, labels):
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1))

    x, y = classification_batch(4, 3, 2)
    analysis = kinks.inspect_kinks(loss, jnp.ones((3, 2)), x, y)
    assert not analysis.has_kinks, str(analysis)
    params = mlp_init((3, 2, 2))
    xb, yb = classification_batch(4, 3, 2)
    assert not kinks.inspect_kinks(mlp_loss, params, xb, yb).has_kinks
    report = jaxcheck.check_grads(mlp_loss, params, xb, yb)
    assert report.rtol == compare.SMOOTH_RTOL and "smooth" in report.bar_reason
    assert report.kink_sites == () and not any(leaf.tracked for leaf in report.leaves)


def test_sites_only_depend_on_the_checked_parameters():
    # A max over the fixed inputs is no decision about the parameters.
    def loss(w, x):
        return jnp.sum(w * jnp.maximum(x, 0.0))

    assert not kinks.inspect_kinks(
        loss, jnp.ones(3), jnp.array([-1.0, 0.0, 2.0])
    ).has_kinks


def test_opaque_callbacks_are_listed():
    @jax.custom_jvp
    def opaque_tanh(w):
        out = jax.ShapeDtypeStruct(w.shape, w.dtype)
        return jax.pure_callback(np.tanh, out, w, vmap_method="sequential")

    @opaque_tanh.defjvp
    def _(primals, tangents):
        (w,), (t,) = primals, tangents
        y = opaque_tanh(w)
        return y, t * (1 - y**2)

    def loss(w):
        return jnp.sum(opaque_tanh(w) ** 2)

    analysis = kinks.inspect_kinks(loss, jnp.linspace(-1, 1, 4))
    assert [s.primitive for s in analysis.opaque] == ["pure_callback"]
    report = jaxcheck.check_grads(loss, jnp.linspace(-1, 1, 4))
    assert report.passed
    assert report.opaque and "pure_callback" in report.opaque[0]
    assert any("cannot see into (pure_callback)" in n for n in report.notes)
    assert "not seen into" in str(report)
    assert report.rtol == compare.KINK_RTOL  # might hide a kink: the lenient bar


def test_explicit_bar_overrides_and_says_why():
    report = jaxcheck.check_grads(
        lambda w: jnp.sum(jax.nn.relu(w) ** 3), jnp.array([0.0, 1.0]), rtol=1e-6
    )
    assert report.rtol == 1e-6
    assert report.bar_reason.startswith("rtol=1e-06 given by the caller")
    assert "f has kinks: max in relu" in report.bar_reason
    assert report.passed and report.num_kink == 1


def test_analysis_reports_depth_and_summary():
    def deep(w, x):
        h = x
        for _ in range(4):
            h = jax.nn.relu(h @ w)
        return jnp.sum(h)

    a = kinks.inspect_kinks(deep, jnp.eye(3) * 0.5, jnp.ones((2, 3)))
    assert a.depth == 4
    assert a.summary() == "max in relu x4"
    assert len(a.sites) == 4 and a.leaf_sites == {0: 4}
    d = a.to_dict()
    assert d["has_kinks"] is True and d["depth"] == 4
    assert "tracked: max in relu" in str(a)


def test_instrumented_value_matches_plain_evaluation_on_a_network():
    params, x, y = near_kink_problem()
    f = relu_svm(relu_ok)
    with jax.enable_x64(True):
        g, sites = kinks.track_winners(f, params, x, y)
        value, words = jax.jit(g)(params, x, y)
        assert float(value) == pytest.approx(float(f(params, x, y)), rel=1e-15)
        assert words.shape == (len(sites),) and words.dtype == jnp.uint32


def test_fold_detects_any_single_change():
    rng = np.random.default_rng(0)
    base = rng.random((7, 9)) > 0.5
    w0 = int(kinks.fold(jnp.asarray(base)))
    for i in range(7):
        for j in range(9):
            flipped = base.copy()
            flipped[i, j] = ~flipped[i, j]
            assert int(kinks.fold(jnp.asarray(flipped))) != w0


def test_round_off_at_a_kink_is_not_called_wrong():
    # Large terms that cancel give f a round-off noise of ~2e-9; w[0] sits 5e-8
    # from a ReLU kink, so only a step of 1e-8 avoids it, where that noise is
    # 0.2 of the slope. The re-checks measure the noise instead of refuting.
    rng = np.random.default_rng(0)
    big = _x64(rng.normal(size=2000) * 1e6)
    w = _x64(np.array([5e-8, 1.0, -0.5, 0.0, 0.3]))

    def f(w, big):
        core = 2.0 * jnp.sum(jax.nn.relu(w)) + jnp.sum(jnp.sin(w))
        return (jnp.sum(big) + core) - jnp.sum(big)

    report = jaxcheck.check_grads(f, w, big)
    assert report.passed and report.num_wrong == 0, str(report)
    leaf = report.leaves[0]
    assert sorted(c.index for c in leaf.kinks) == [(0,), (3,)]
    assert report.noise_floor > 1e-10


def _scanned_relu(w, x):
    def body(c, xi):
        c = jnp.maximum(c * 0.9 + xi @ w, 0.0)
        return c, jnp.abs(c).sum()

    c, ys = lax.scan(body, jnp.zeros(w.shape[1]), x)
    return ys.sum() + jnp.sort(c)[0] + jnp.max(w)


@pytest.mark.parametrize("moved_entry", [0, 5, 11])
def test_evaluate_pair_decides_as_two_separate_evaluations(moved_entry):
    # evaluate_pair evaluates the two points as one batch: each point's words
    # must be those of its own evaluation, and a site counts changes exactly
    # where the words differ (sites inside the scan fold their decisions).
    rng = np.random.default_rng(moved_entry)
    with jax.enable_x64(True):
        w, x = (
            jnp.asarray(rng.standard_normal((3, 4))),
            jnp.asarray(rng.standard_normal((5, 3))),
        )
        wb = w.reshape(-1).at[moved_entry].add(-3.0).reshape(3, 4)
        closed = jax.make_jaxpr(_scanned_relu)(w, x)
        values, words, changed = jax.jit(
            lambda a, b: kinks.evaluate_pair(closed.jaxpr, closed.consts, [a, x],
                                             [b, x], [0])[:3]
        )(w, wb)  # fmt: skip
        (out_a,), words_a, _ = kinks.eval_with_winners(closed, [w, x], [0])
        (out_b,), words_b, _ = kinks.eval_with_winners(closed, [wb, x], [0])
    np.testing.assert_array_equal(words[0], words_a)
    np.testing.assert_array_equal(words[1], words_b)
    np.testing.assert_allclose(values, [out_a, out_b], rtol=1e-14)
    np.testing.assert_array_equal(changed > 0, words_a != words_b)
    assert (words_a != words_b).any()  # the move changed some decision
