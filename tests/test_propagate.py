"""Perturbation propagation gives the dense engine's ``f(x ± h e_i)`` up to
round-off, on every leaf of MLPs, CNNs, an embedding model and attention blocks,
and leaves ``check_grads``' verdicts unchanged."""

import inspect

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax import lax

import jaxcheck
from jaxcheck import engine, examples, propagate
from jaxcheck.engine.memory import compile_options

EPS = float(np.finfo(np.float64).eps)


# --------------------------------------------------------------------------------
# Helpers


def _leaf_fns(f, params, args):
    leaves, td = jtu.tree_flatten(params)
    a_leaves, atd = jtu.tree_flatten(args)
    paths = [jtu.keystr(p) for p, _ in jtu.tree_flatten_with_path(params)[0]]
    for pos, leaf in enumerate(leaves):
        fn = engine.LeafFunction(
            f, td, len(leaves), {}, atd, len(a_leaves), {}, pos, leaf.shape
        )
        yield paths[pos], fn, leaf.reshape(-1), leaves, a_leaves


def _dense_block(fn, x_flat, idx_block, step, dyn_params, dyn_args):
    """The plain engine's evaluation: a perturbed copy of the leaf per coordinate."""

    def one(i):
        xi = x_flat[i]
        plus = fn(x_flat.at[i].set(xi + step), dyn_params, dyn_args)
        minus = fn(x_flat.at[i].set(xi - step), dyn_params, dyn_args)
        return plus, minus

    return jax.lax.map(jax.vmap(one), idx_block)


# Both sides compiled with the XLA options jaxcheck gives a check program this
# small on a CPU (quick to compile; the programs run once).
QUICK = dict(compile_options(jax.default_backend(), 0.0)) or None
_dense_jit = jax.jit(_dense_block, static_argnums=0, compiler_options=QUICK)
_propagated_jit = jax.jit(
    propagate.propagated_block, static_argnums=0, compiler_options=QUICK
)


def _blocks(n, chunk=16, max_coords=None, seed=0):
    idx = np.arange(n)
    if max_coords is not None and n > max_coords:
        idx = np.sort(np.random.default_rng(seed).choice(n, max_coords, replace=False))
    pad = (-len(idx)) % chunk
    padded = np.concatenate([idx, np.full(pad, idx[0])]).astype(np.int32)
    return idx, jnp.asarray(padded.reshape(-1, chunk))


def _compare(f, params, *args, step=1e-4, max_coords=None, min_leaves=1, only=None):
    """Propagated vs dense f(x ± h e_i) on every leaf (or those in ``only``)."""
    plans = {}
    for path, fn, x, dp, da in _leaf_fns(f, params, args):
        if only is not None and path not in only:
            continue
        idx, block = _blocks(x.size, max_coords=max_coords)
        h = jnp.asarray(step, x.dtype)
        fpd, fmd = (
            np.asarray(v).reshape(-1)[: len(idx)]
            for v in _dense_jit(fn, x, block, h, dp, da)
        )
        fpp, fmp = (
            np.asarray(v).reshape(-1)[: len(idx)]
            for v in _propagated_jit(fn, x, block, h, dp, da)
        )
        scale = max(np.abs(fpd).max(), np.abs(fmd).max(), 1e-300)
        # Round-off only: a few eps of |f| (elementwise steps are bit-identical,
        # linear ones sum in another order).
        err = max(np.abs(fpp - fpd).max(), np.abs(fmp - fmd).max())
        assert err <= 64 * EPS * scale, (path, err / (EPS * scale))
        # The finite differences then agree within the noise eps |f| / h.
        xs = np.asarray(x)[idx]
        h_real = (xs + step) - (xs - step)
        nd, np_ = (fpd - fmd) / h_real, (fpp - fmp) / h_real
        assert np.abs(nd - np_).max() <= 128 * EPS * scale / step, path
        plans[path] = propagate.propagation_plan(fn, x, dp, da)
    assert len(plans) >= min_leaves
    return plans


# --------------------------------------------------------------------------------
# Models


def _mlp():
    params = examples.mlp_init((20, 8, 5), dtype=jnp.float64)
    x, y = examples.classification_batch(6, 20, 5, dtype=jnp.float64)
    return examples.mlp_loss, params, (x, y)


def _relu_tied_l2():
    """ReLU MLP with a tied decoder (W1 used twice) and an L2 penalty."""
    rng = np.random.default_rng(3)
    params = {
        "W1": jnp.asarray(rng.normal(size=(10, 7)) / 3),
        "b1": jnp.asarray(rng.normal(size=(7,)) * 0.1),
        "W2": jnp.asarray(rng.normal(size=(7, 4)) / 3),
    }
    x = jnp.asarray(rng.normal(size=(5, 10)))
    y = jnp.asarray(rng.integers(0, 4, size=(5,)), jnp.int32)

    def loss(p, x, y):
        h = jax.nn.relu(x @ p["W1"] + p["b1"])
        recon = h @ p["W1"].T
        ce = examples.softmax_loss(h @ p["W2"], y)
        l2 = 1e-2 * (jnp.sum(p["W1"] ** 2) + jnp.sum(jnp.square(p["W2"])))
        return ce + 0.1 * jnp.mean((recon - x) ** 2) + l2

    return loss, params, (x, y)


def _cnn():
    """NCHW/OIHW: conv SAME + bias + relu, conv stride 2 + tanh, max pool, dense."""
    rng = np.random.default_rng(4)
    params = {
        "k1": jnp.asarray(rng.normal(size=(4, 2, 3, 3)) / 3),
        "c1": jnp.asarray(rng.normal(size=(4,)) * 0.1),
        "k2": jnp.asarray(rng.normal(size=(3, 4, 3, 3)) / 5),
        "W": jnp.asarray(rng.normal(size=(12, 3)) / 3),
    }
    x = jnp.asarray(rng.normal(size=(2, 2, 8, 8)))
    y = jnp.asarray([0, 2], jnp.int32)

    def loss(p, x, y):
        h = lax.conv_general_dilated(x, p["k1"], (1, 1), "SAME")
        h = jax.nn.relu(h + p["c1"][None, :, None, None])
        h = jnp.tanh(lax.conv_general_dilated(h, p["k2"], (2, 2), "VALID"))
        h = lax.reduce_window(h, -jnp.inf, lax.max, (1, 1, 2, 2), (1, 1, 1, 1), "VALID")
        return examples.softmax_loss(h.reshape(h.shape[0], -1) @ p["W"], y)

    return loss, params, (x, y)


def _cnn_nhwc():
    """NHWC/HWIO with kernel dilation and padding, average pooling, a bias."""
    rng = np.random.default_rng(5)
    params = {
        "k": jnp.asarray(rng.normal(size=(2, 2, 3, 4)) / 3),
        "b": jnp.asarray(rng.normal(size=(4,)) * 0.1),
    }
    x = jnp.asarray(rng.normal(size=(2, 7, 7, 3)))

    def loss(p, x):
        h = lax.conv_general_dilated(
            x, p["k"], (1, 1), ((1, 1), (0, 1)), rhs_dilation=(2, 1),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )  # fmt: skip
        h = jax.nn.softplus(h + p["b"])
        pooled = lax.reduce_window(h, 0.0, lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
        return jnp.sum(jnp.sin(pooled) ** 2)

    return loss, params, (x,)


def _embedding():
    rng = np.random.default_rng(6)
    params = {
        "table": jnp.asarray(rng.normal(size=(11, 4))),
        "W": jnp.asarray(rng.normal(size=(4, 3)) / 2),
        "b": jnp.asarray(rng.normal(size=(3,)) * 0.1),
    }
    tokens = jnp.asarray(rng.integers(0, 11, size=(3, 5)), jnp.int32)
    tokens = tokens.at[0, 0].set(tokens[1, 1])  # a row gathered twice
    y = jnp.asarray([0, 1, 2], jnp.int32)

    def loss(p, tokens, y):
        e = p["table"][tokens]  # (3, 5, 4)
        clipped = jnp.take(p["table"], tokens + 3, axis=0, mode="clip")  # out of range
        h = jnp.tanh(jnp.mean(e, axis=1) + 0.5 * jnp.mean(clipped, axis=1))
        return examples.softmax_loss(h @ p["W"] + p["b"], y)

    return loss, params, (tokens, y)


def _attention():
    """Two-head self-attention with a residual and layer norm."""
    rng = np.random.default_rng(7)
    d, t, heads = 4, 5, 2
    params = {
        name: jnp.asarray(rng.normal(size=(d, d)) / 2) for name in ("q", "k", "v", "o")
    }
    params["gain"] = jnp.asarray(1 + 0.1 * rng.normal(size=(d,)))
    x = jnp.asarray(rng.normal(size=(t, d)))
    target = jnp.asarray(rng.normal(size=(t, d)))

    def split(z):
        return z.reshape(t, heads, d // heads).transpose(1, 0, 2)

    def loss(p, x, target):
        q, k, v = (split(x @ p[n]) for n in ("q", "k", "v"))
        s = jnp.einsum("htd,hsd->hts", q, k) / jnp.sqrt(d / heads)
        a = jax.nn.softmax(s, axis=-1)
        o = jnp.einsum("hts,hsd->htd", a, v).transpose(1, 0, 2).reshape(t, d)
        z = x + o @ p["o"]
        z = (z - z.mean(-1, keepdims=True)) / jnp.sqrt(z.var(-1, keepdims=True) + 1e-5)
        return jnp.mean((z * p["gain"] - target) ** 2)

    return loss, params, (x, target)


def _attention_input():
    """The input itself is a parameter: q and k both depend on it (bilinear)."""
    loss, params, (x, target) = _attention()

    def loss_x(p, target):
        return loss(p["w"], p["x"], target)

    return loss_x, {"w": params, "x": x}, (target,)


#: Leaves compared for each model (default: all).
ONLY = {
    "attention_input": ["['x']"],
    "attention": ["['q']", "['v']", "['gain']"],  # ['k'] and ['o'] are alike
}

MODELS = {
    "mlp": _mlp,
    "relu_tied_l2": _relu_tied_l2,
    "cnn": _cnn,
    "cnn_nhwc": _cnn_nhwc,
    "embedding": _embedding,
    "attention": _attention,
    "attention_input": _attention_input,
}


@pytest.mark.parametrize("model", sorted(MODELS))
def test_matches_dense_evaluation(model):
    with jax.enable_x64(True):
        f, params, args = MODELS[model]()
        _compare(f, params, *args, max_coords=48, only=ONLY.get(model))


# --------------------------------------------------------------------------------
# The structured consumers are really used


def _plan(model, path):
    with jax.enable_x64(True):
        f, params, args = MODELS[model]()
        for p, fn, x, dp, da in _leaf_fns(f, params, args):
            if p == path:
                return (
                    propagate.propagation_plan(fn, x, dp, da),
                    propagate.make_propagated_block(fn, x, dp, da),
                )
    raise KeyError(path)


@pytest.mark.parametrize(
    "model, path, expected",
    [
        # W1[j, k] -> the column k of X[:, j]; tanh on that column only
        ("mlp", "[0]['W']", ["dot_general -> float64[6,8]  window [6,1]", "tanh"]),
        ("mlp", "[0]['b']", ["broadcast_in_dim -> float64[1,8]  window [1,1]"]),
        # a kernel entry: one output channel of one input channel's shifted plane
        (
            "cnn",
            "['k1']",
            ["conv_general_dilated -> float64[2,4,8,8]  window [2,1,8,8]"],
        ),
        # ... and the next convolution sees one input channel
        ("cnn", "['k1']", ["conv_general_dilated -> float64[2,3,3,3]  window [whole]"]),
        ("cnn", "['k2']", ["reduce_window_max -> float64[2,3,2,2]  window [2,1,2,2]"]),
        (
            "cnn_nhwc",
            "['k']",
            ["conv_general_dilated -> float64[2,7,7,4]  window [2,7,7,1]"],
        ),
        # a table entry: only the rows that gathered it, in one column
        ("embedding", "['table']", ["gather -> float64[3,5,4]  window [3,5,1]"]),
        ("attention", "['q']", ["dot_general -> float64[5,4]  window [5,1]"]),
        ("relu_tied_l2", "['W1']", ["integer_pow -> float64[10,7]  window [1,1]"]),
    ],
)
def test_plan_uses_structure(model, path, expected):
    plan, block = _plan(model, path)
    assert block is not None, plan
    assert plan.startswith("propagated:"), plan
    flat = " ".join(plan.split())
    for line in expected:
        assert " ".join(line.split()) in flat, plan


def test_plan_says_why_not():
    plan, block = _plan("mlp", "[1]['b']")  # the last bias: nothing to save
    assert block is None
    assert plan.startswith("not propagated: leaf float64[5]: no benefit"), plan


def test_small_leaves_declined_when_the_caller_counts_coordinates():
    with jax.enable_x64(True):
        f, params, args = _mlp()
        (_, fn, x, dp, da), *_ = _leaf_fns(f, params, args)
        assert propagate.make_propagated_block(fn, x, dp, da) is not None
        assert propagate.make_propagated_block(fn, x, dp, da, num_coords=3) is None
        assert propagate.make_propagated_evaluator(fn, x, dp, da, num_coords=3) is None
        plan = propagate.propagation_plan(fn, x, dp, da, num_coords=3)
        assert plan.startswith("not propagated: leaf float64[20,8]: too small: 3 "), (
            plan
        )


def test_mlp_work_estimate_is_small():
    with jax.enable_x64(True):
        params = examples.mlp_init((784, 100, 10), dtype=jnp.float64)
        x, y = examples.classification_batch(16, 784, 10, dtype=jnp.float64)
        (_, fn, xf, dp, da), *_ = _leaf_fns(examples.mlp_loss, params, (x, y))
        plan = propagate._plan(fn, xf, dp, da)
        assert plan.applicable
        assert plan.work < 0.001 * plan.dense_work
        dense_bytes = engine.bytes_per_coordinate(fn, xf, dp, da)
        assert propagate.bytes_per_coordinate(fn, xf, dp, da) < dense_bytes / 100


# --------------------------------------------------------------------------------
# Single operations: every rule, including the fallbacks


def _ops_model(op):
    rng = np.random.default_rng(8)
    w = jnp.asarray(rng.normal(size=(4, 6)))
    c = jnp.asarray(rng.normal(size=(4, 6)))
    return op, {"w": w}, (c,)


OPS = {
    "slice": lambda p, c: jnp.sum(jnp.tanh(p["w"][1:4:2, ::3] * c[1:4:2, ::3])),
    "concatenate": lambda p, c: jnp.sum(jnp.sin(jnp.concatenate([c, p["w"], c], 1))),
    "concatenate_twice": lambda p, c: jnp.sum(
        jnp.cos(jnp.concatenate([p["w"], c, 2 * p["w"]], 0)) * 1.5
    ),
    "pad": lambda p, c: jnp.sum(
        jnp.exp(jnp.pad(p["w"], ((1, 2), (0, 3)), constant_values=0.5))
    ),
    "pad_interior": lambda p, c: jnp.sum(
        jnp.tanh(lax.pad(p["w"], 0.3, ((1, -1, 1), (0, 0, 0))))
    ),
    "rev": lambda p, c: jnp.sum(jnp.tanh(p["w"][::-1, ::-1] + c) ** 2),
    "transpose_reshape": lambda p, c: jnp.sum(
        jnp.tanh(p["w"].T.reshape(3, 8) @ c.reshape(8, 3))
    ),
    "reshape_merge": lambda p, c: jnp.sum(jnp.tanh(p["w"].reshape(24) * c.reshape(24))),
    "reshape_split": lambda p, c: jnp.sum(jnp.sin(p["w"].reshape(2, 2, 3, 2) * 2.0)),
    "squeeze_expand": lambda p, c: jnp.sum(
        jnp.squeeze(jnp.tanh(p["w"][None, :, :, None]), (0, 3)) * c
    ),
    "cumsum": lambda p, c: jnp.sum(jnp.tanh(jnp.cumsum(p["w"], axis=1))),
    "reduce_max": lambda p, c: jnp.sum(jnp.max(p["w"] * c, axis=0) ** 2),
    "argmax": lambda p, c: jnp.sum(
        jnp.take_along_axis(c, jnp.argmax(p["w"], 1)[:, None], 1) * p["w"][:, :1]
    ),
    "where_clip": lambda p, c: jnp.sum(
        jnp.where(c > 0, jnp.clip(p["w"], -0.5, 0.7), p["w"] ** 3)
    ),
    "div": lambda p, c: jnp.sum(jnp.tanh((p["w"] @ c.T) / (1.0 + c[:, :4] ** 2))),
    "div_by_leaf": lambda p, c: jnp.sum(c / (2.0 + p["w"] ** 2)),
    "bilinear": lambda p, c: jnp.sum(jnp.tanh(p["w"] @ p["w"].T)),
    "sub_neg": lambda p, c: jnp.sum(jnp.tanh(-(c @ p["w"].T) - (p["w"] @ c.T))),
    "float32_inside": lambda p, c: jnp.sum(
        jnp.tanh(p["w"].astype(jnp.float32) * 2).astype(jnp.float64) * c
    ),
    "sort": lambda p, c: jnp.sum(jnp.sort(p["w"] @ c.T, axis=1) * jnp.arange(4.0)),
    "scan": lambda p, c: lax.scan(
        lambda s, r: (jnp.tanh(s + r), None), c[0, :4], p["w"] @ c.T
    )[0].sum(),
    "checkpoint": lambda p, c: jnp.sum(
        jax.checkpoint(lambda w: jnp.sin(w @ c.T))(p["w"])
    ),
    "custom_jvp_relu": lambda p, c: jnp.sum(jax.nn.relu(c @ p["w"].T - 0.1) ** 2),
    "logsumexp": lambda p, c: jax.nn.logsumexp(p["w"] * c),
    "dot_batch_dims": lambda p, c: jnp.sum(
        jnp.tanh(
            jnp.einsum("ij,ij->i", p["w"], c) + jnp.einsum("ij,kj->ik", c, p["w"]).sum()
        )
    ),
    "scalar_leaf_use": lambda p, c: jnp.sum(jnp.tanh(p["w"][2, 3] * c)),
    "stack": lambda p, c: jnp.sum(
        jnp.sin(jnp.stack([p["w"], c, p["w"] * c], axis=1))
        + jnp.stack([c[0], p["w"][1]])[:, None, None]
    ),
}


#: Operations checked together (one compilation per group; each term is its own
#: path from the leaf, so the terms do not hide each other).
OP_GROUPS = {
    "slicing": [
        "slice", "concatenate", "concatenate_twice", "pad", "pad_interior", "rev",
        "stack",
    ],
    "reshaping": [
        "transpose_reshape", "reshape_merge", "reshape_split", "squeeze_expand",
        "scalar_leaf_use",
    ],
    "reductions": ["cumsum", "reduce_max", "argmax", "logsumexp"],
    "elementwise": ["where_clip", "div", "div_by_leaf", "sub_neg", "float32_inside"],
    "dots": ["dot_batch_dims", "bilinear", "custom_jvp_relu", "checkpoint"],
    "fallbacks": ["sort", "scan"],
}  # fmt: skip


def test_op_groups_cover_every_op():
    assert sorted(k for g in OP_GROUPS.values() for k in g) == sorted(OPS)


@pytest.mark.parametrize("group", sorted(OP_GROUPS))
def test_operations_match_dense(group):
    ops = [OPS[k] for k in OP_GROUPS[group]]

    def f(p, c):
        return sum((1.0 + 0.25 * k) * op(p, c) for k, op in enumerate(ops))

    with jax.enable_x64(True):
        f, params, args = _ops_model(f)
        _compare(f, params, *args, step=1e-3)


def test_scalar_and_vector_leaves():
    with jax.enable_x64(True):
        params = {"s": jnp.asarray(0.3), "v": jnp.linspace(-1.0, 1.0, 5)}
        c = jnp.arange(5.0)

        def f(p, c):
            return jnp.sum(jnp.tanh(p["s"] * c + p["v"]) * p["v"][::-1])

        _compare(f, params, c, min_leaves=2)


# --------------------------------------------------------------------------------
# The contract with the engine


def test_block_is_cached_and_hashable():
    with jax.enable_x64(True):
        f, params, args = _mlp()
        (_, fn, x, dp, da), *_ = _leaf_fns(f, params, args)
        b1 = propagate.make_propagated_block(fn, x, dp, da)
        b2 = propagate.make_propagated_block(fn, x, dp, da)
        assert b1 == b2 and hash(b1) == hash(b2)
        idx = jnp.arange(32, dtype=jnp.int32).reshape(2, 16)
        fp, fm = b1(x, idx, jnp.asarray(1e-3), dp, da)
        assert fp.shape == fm.shape == (2, 16)
        # jitting it again (as the engine may) gives the same numbers
        fp2, fm2 = jax.jit(b2)(x, idx, jnp.asarray(1e-3), dp, da)
        np.testing.assert_array_equal(fp, fp2)
        np.testing.assert_array_equal(fm, fm2)


def test_eval_block_matches_block():
    with jax.enable_x64(True):
        f, params, args = _mlp()
        (_, fn, x, dp, da), *_ = _leaf_fns(f, params, args)
        ev = propagate.make_propagated_evaluator(fn, x, dp, da)
        idx = jnp.arange(16, dtype=jnp.int32).reshape(2, 8)
        h = 1e-3
        deltas = jnp.broadcast_to(jnp.asarray([h, -h, 0.0]), (2, 8, 3))
        vals = ev(x, idx, deltas, dp, da)
        fp, fm = propagate.make_propagated_block(fn, x, dp, da)(x, idx, h, dp, da)
        np.testing.assert_array_equal(vals[..., 0], fp)
        np.testing.assert_array_equal(vals[..., 1], fm)
        np.testing.assert_allclose(vals[..., 2], f(params, *args), rtol=1e-15)


def test_not_applicable_cases():
    with jax.enable_x64(True):
        f, params, args = _ops_model(
            lambda p, c: jnp.sum(jnp.sort(p["w"].ravel()) * c.ravel())
        )
        (_, fn, x, dp, da), *_ = _leaf_fns(f, params, args)
        assert propagate.make_propagated_block(fn, x, dp, da) is None
        plan = propagate.propagation_plan(fn, x, dp, da)
        assert "not propagated" in plan and "sort" in plan, plan
        # integer leaves are never perturbed
        fn_int = engine.LeafFunction(
            lambda p: jnp.sum(p), jtu.tree_structure(0), 1, {}, jtu.tree_structure(()),
            0, {}, 0, (3,),
        )  # fmt: skip
        xi = jnp.arange(3)
        assert propagate.make_propagated_block(fn_int, xi, [xi], []) is None


# --------------------------------------------------------------------------------
# Winner trackers (kink detection): same values, bit-identical decision words


@pytest.mark.parametrize("model, path", [("relu_tied_l2", "['W1']"), ("cnn", "['k1']")])
def test_winner_tracker_words_identical(model, path):
    from jaxcheck import kinks

    with jax.enable_x64(True):
        f, params, args = MODELS[model]()
        crossed = 0
        for p, fn, x, dp, da in _leaf_fns(f, params, args):
            if p != path:
                continue
            tracker = kinks.winner_tracker(fn, x, dp, da)
            assert tracker.num_sites > 0
            ev = propagate.make_propagated_evaluator(tracker, x, dp, da)
            assert ev is not None, propagate.propagation_plan(tracker, x, dp, da)
            assert propagate.make_propagated_block(tracker, x, dp, da) is None
            n = min(x.size, 48)
            idx = jnp.asarray(np.linspace(0, x.size - 1, n).astype(np.int32)[None])
            # Rows of K offsets (fn itself), and pairs (fn.pair, with the count
            # of decisions that differ): steps large enough to cross kinks.
            for offsets in ([1e-3, -1e-3, 0.0, 1e-9], [0.5, -0.5]):
                d = jnp.broadcast_to(jnp.asarray(offsets), (1, n, len(offsets)))
                dense = engine.leaf._eval_block_jit(tracker, x, idx, d, dp, da)
                prop = ev(x, idx, d, dp, da)
                assert len(prop) == len(dense)
                for a, b in zip(dense[1:], prop[1:], strict=True):  # words, counts
                    assert a.dtype == b.dtype
                    np.testing.assert_array_equal(a, b, err_msg=path)
                scale = float(jnp.abs(dense[0]).max())
                assert float(jnp.abs(prop[0] - dense[0]).max()) <= 64 * EPS * scale
                crossed += int(jnp.sum(dense[-1])) if len(offsets) == 2 else 0
        assert crossed > 0


# --------------------------------------------------------------------------------
# Verdicts of check_grads are the same with and without propagation


def _check_both(monkeypatch, f, params, *args, **kwargs):
    used = []
    if "propagate" in inspect.signature(jaxcheck.check_grads).parameters:
        dense = jaxcheck.check_grads(f, params, *args, propagate=False, **kwargs)
        # These models are small: propagate whatever the plan covers, however
        # cheap the dense path would be.
        monkeypatch.setattr(propagate, "MIN_DENSE_WORK", 0)
        prop = jaxcheck.check_grads(f, params, *args, propagate=True, **kwargs)
        for leaf in prop.leaves:
            if leaf.propagated:
                used.append(("tracked", leaf.shape) if leaf.tracked else leaf.shape)
        return dense, prop, used
    dense = jaxcheck.check_grads(f, params, *args, **kwargs)
    original = engine.leaf._block_jit

    def routed(fn, x_flat, idx, step, dyn_params, dyn_args):
        block = propagate.make_propagated_block(fn, x_flat, dyn_params, dyn_args)
        if block is None:
            return original(fn, x_flat, idx, step, dyn_params, dyn_args)
        used.append(fn.leaf_shape)
        return block(x_flat, idx, step, dyn_params, dyn_args)

    original_eval = engine.leaf._eval_block_jit

    def routed_eval(fn, x_flat, idx, deltas, dyn_params, dyn_args):
        ev = propagate.make_propagated_evaluator(fn, x_flat, dyn_params, dyn_args)
        if ev is None:
            return original_eval(fn, x_flat, idx, deltas, dyn_params, dyn_args)
        used.append(("tracked", fn.fn.leaf_shape))
        return ev(x_flat, idx, deltas, dyn_params, dyn_args)

    monkeypatch.setattr(engine, "_block_jit", routed)
    monkeypatch.setattr(engine, "_eval_block_jit", routed_eval)
    prop = jaxcheck.check_grads(f, params, *args, **kwargs)
    return dense, prop, used


def _same_verdicts(dense, prop):
    assert dense.passed == prop.passed
    for a, b in zip(dense.leaves, prop.leaves, strict=True):
        assert a.path == b.path
        assert (a.num_ok, a.num_wrong, a.num_untestable) == (
            b.num_ok, b.num_wrong, b.num_untestable,
        ), a.path  # fmt: skip
        assert [w.index for w in a.worst if w.verdict == "wrong"] == [
            w.index for w in b.worst if w.verdict == "wrong"
        ]


def _only(f, params, args, keep):
    """``f`` checked on the leaves ``keep`` of ``params`` only (the rest fixed)."""
    rest = {k: v for k, v in params.items() if k not in keep}

    def g(p, *a):
        return f({**p, **a[-1]}, *a[:-1])

    return g, {k: params[k] for k in keep}, (*args, rest)


#: Leaves whose verdicts are compared (fewer compilations; the others are alike).
VERDICT_LEAVES = {
    "cnn_nhwc": ["k"],
    "embedding": ["table", "W"],
    "attention": ["q", "o"],
    "relu_tied_l2": ["W1", "b1"],
}


@pytest.mark.parametrize("model", sorted(VERDICT_LEAVES))
def test_check_grads_verdicts_identical(monkeypatch, model):
    with jax.enable_x64(True):
        f, params, args = _only(*MODELS[model](), VERDICT_LEAVES[model])
    dense, prop, used = _check_both(monkeypatch, f, params, *args)
    assert dense.passed
    _same_verdicts(dense, prop)
    if used is not None:
        assert used, "propagation was never used"
        if model == "relu_tied_l2":  # ReLU: kinks tracked
            assert any(u[0] == "tracked" for u in used), used


def test_check_grads_verdicts_identical_on_an_mlp_with_a_planted_bug(monkeypatch):
    with jax.enable_x64(True):
        params = examples.mlp_init((12, 6, 3), dtype=jnp.float64)
        x, y = examples.classification_batch(5, 12, 3, dtype=jnp.float64)

    @jax.custom_vjp
    def matmul(a, w):
        return a @ w

    def fwd(a, w):
        return a @ w, (a, w)

    def bwd(res, g):
        a, w = res
        dw = a.T @ g
        return g @ w.T, dw.at[2, 1].multiply(1.01)  # one entry 1% off

    matmul.defvjp(fwd, bwd)

    def loss(p, x, y):
        h = jnp.tanh(matmul(x, p[0]["W"]) + p[0]["b"])
        return examples.softmax_loss(h @ p[1]["W"] + p[1]["b"], y)

    dense, prop, used = _check_both(monkeypatch, loss, params, x, y)
    assert not dense.passed
    assert dense.leaves[0].num_wrong == 1
    _same_verdicts(dense, prop)
    if used is not None:
        assert (12, 6) in used


# --------------------------------------------------------------------------------
# Random chains of operations (windows through every structural rule)


def _random_chain(names, seed, shape):
    """``f(p, c)``: the ops ``names`` applied in turn to ``p["w"]`` (of ``shape``);
    ops that do not fit the current shape are left out."""
    rng = np.random.default_rng(seed)

    def pick(n):
        return int(rng.integers(0, n))

    steps = []
    shape = tuple(shape)
    for name in names:
        nd = len(shape)
        ax = pick(nd)
        if name == "transpose" and nd > 1:
            perm = tuple(rng.permutation(nd).tolist())
            steps.append(lambda a, perm=perm: jnp.transpose(a, perm))
            shape = tuple(shape[p] for p in perm)
        elif name == "merge" and nd > 1:
            ax = pick(nd - 1)
            new = shape[:ax] + (shape[ax] * shape[ax + 1],) + shape[ax + 2 :]
            steps.append(lambda a, new=new: a.reshape(new))
            shape = new
        elif name == "split" and shape[ax] % 2 == 0 and shape[ax] > 2:
            new = shape[:ax] + (2, shape[ax] // 2) + shape[ax + 1 :]
            steps.append(lambda a, new=new: a.reshape(new))
            shape = new
        elif name == "slice" and shape[ax] > 1:
            lo, step = pick(2), 1 + pick(2)
            idx = (slice(None),) * ax + (slice(lo, None, step),)
            steps.append(lambda a, idx=idx: a[idx])
            shape = np.zeros(shape)[idx].shape
        elif name == "pad":
            cfg = [(0, 0, 0)] * nd
            cfg[ax] = (pick(3), pick(3) - (shape[ax] > 1), pick(2))
            steps.append(lambda a, cfg=tuple(cfg): lax.pad(a, 0.25, cfg))
            shape = tuple(
                max(0, lo + hi + n + max(0, n - 1) * it) if a == ax else n
                for a, (n, (lo, hi, it)) in enumerate(zip(shape, cfg, strict=True))
            )
        elif name == "rev":
            steps.append(lambda a, ax=ax: jnp.flip(a, ax))
        elif name == "broadcast":
            steps.append(lambda a, ax=ax: jnp.broadcast_to(
                jnp.expand_dims(a, ax), a.shape[:ax] + (3,) + a.shape[ax:]))  # fmt: skip
            shape = shape[:ax] + (3,) + shape[ax:]
        elif name == "mul_const":
            cshape = tuple(1 if rng.random() < 0.3 else n for n in shape)
            c = rng.normal(size=cshape)
            steps.append(lambda a, c=c: a * c + c)
        elif name == "tanh":
            steps.append(jnp.tanh)
        elif name == "sum" and nd > 1:
            steps.append(lambda a, ax=ax: jnp.sum(a, axis=ax))
            shape = shape[:ax] + shape[ax + 1 :]
        elif name == "max" and nd > 1:
            steps.append(lambda a, ax=ax: jnp.max(a, axis=ax))
            shape = shape[:ax] + shape[ax + 1 :]
        elif name == "cumsum":
            steps.append(lambda a, ax=ax: jnp.cumsum(a, axis=ax))
        elif name == "dot":
            m = rng.normal(size=(shape[-1], 3))
            steps.append(lambda a, m=m: a @ m)
            shape = shape[:-1] + (3,)
        elif name == "dot_left":
            m = rng.normal(size=(2, shape[0]))
            steps.append(lambda a, m=m: jnp.tensordot(m, a, axes=1))
            shape = (2,) + shape[1:]
        elif name == "concat":
            c = rng.normal(size=shape)
            steps.append(lambda a, c=c, ax=ax: jnp.concatenate([c, a, a * 2], ax))
            shape = np.concatenate([np.zeros(shape)] * 3, ax).shape
        elif name == "square":
            steps.append(lambda a: a * jnp.tanh(a) - jnp.sin(a))
        elif name == "where":
            c = rng.normal(size=shape)
            steps.append(lambda a, c=c: jnp.where(c > 0, a, jnp.sin(a) * a))
        elif name == "take":
            ids = rng.integers(0, shape[0], size=(4,)).astype(np.int32)
            steps.append(lambda a, ids=ids: a[ids])
            shape = (4,) + shape[1:]

    def f(p, c):
        a = p["w"]
        for s in steps:
            a = s(a)
        return jnp.sum(jnp.sin(a) ** 2) + c  # no cancellation: |f| is the scale

    return f


OP_NAMES = ("transpose merge split slice pad rev broadcast mul_const tanh sum max "
            "cumsum dot dot_left concat square where take").split()  # fmt: skip


@settings(max_examples=8, deadline=None, derandomize=True, database=None)
@given(
    shape=st.lists(st.integers(2, 4), min_size=1, max_size=3),
    names=st.lists(st.sampled_from(OP_NAMES), min_size=2, max_size=5),
    seed=st.integers(0, 2**16),
)
def test_random_chains_match_dense(shape, names, seed):
    with jax.enable_x64(True):
        rng = np.random.default_rng(seed)
        params = {"w": jnp.asarray(rng.normal(size=shape))}
        f = _random_chain(names, seed, shape)
        _compare(f, params, jnp.asarray(0.5), step=1e-3)


# --------------------------------------------------------------------------------
# Transcendental elementwise work weighs in the decision to plan


def test_a_large_leaf_of_transcendental_elementwise_work_is_propagated():
    # sin of 8,000 coordinates costs ~100x a multiply-add per element in dense
    # rows: it is planned and propagated, where the same size of polynomial
    # work is still too small to pay for a second program.
    w = np.linspace(-1.0, 1.0, 8000)

    def trig(w):
        return jnp.sum(jnp.sin(w) * w)

    def poly(w):
        return jnp.sum(w**3 - w)

    report = jaxcheck.check_grads(trig, w)
    assert report.passed and report.leaves[0].propagated
    assert report.leaves[0].propagation.startswith("propagated: leaf float64[8000]")
    assert "sin " in report.leaves[0].propagation
    plain = jaxcheck.check_grads(poly, w)
    assert plain.passed and not plain.leaves[0].propagated
    assert plain.leaves[0].propagation == (
        "not propagated: too small: 8,000 coordinates x at most 16,001 work < 1e+09 "
        "in all"
    )

    def planted(w):  # 1e-5 relative too large on every coordinate
        return jax.grad(trig)(w) * (1 + 1e-5)

    bad = jaxcheck.check_grads(trig, w, grad_fn=planted)
    assert not bad.passed and bad.leaves[0].propagated
    assert bad.leaves[0].num_wrong >= 200
