"""flax cases, linen and nnx: LayerNorm, multi-head attention, LSTM / GRU cells,
convolutions.

The correct twins are the library's layers with plain autodiff. The buggy twins
swap one piece (the normalisation, the attention function, a gate function, the
convolution) for the same computation with a hand-written rule from
``_rules.py`` (or a custom conv rule below), keeping the parameter tree, so the
bad leaves are named by the library's own paths. Relative sizes are
``||g_buggy - g_correct|| / ||g_correct||`` per bad leaf at the registry's point.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

from . import _rules
from ._registry import normal, paths, randomize, register

F64 = jnp.float64


def _conv_rule(dimension_numbers, padding, bug: str):
    """A convolution ``conv(x, kernel)`` with a custom_vjp built on ``jax.vjp``
    of ``lax.conv_general_dilated`` and one planted slip in the kernel's
    cotangent: ``"flip"`` (spatially flipped: convolution / cross-correlation
    mixed up) or ``"swap_io"`` (input and output channel axes swapped)."""
    nd = len(dimension_numbers[0]) - 2

    def conv(x, k):
        return jax.lax.conv_general_dilated(
            x, k, (1,) * nd, padding, dimension_numbers=dimension_numbers
        )

    @jax.custom_vjp
    def op(x, k):
        return conv(x, k)

    def fwd(x, k):
        return conv(x, k), (x, k)

    def bwd(res, g):
        x, k = res
        dx, dk = jax.vjp(conv, x, k)[1](g)
        if bug == "flip":
            dk = dk[::-1]
        elif bug == "swap_io":
            dk = jnp.swapaxes(dk, -1, -2)
        return dx, dk

    op.defvjp(fwd, bwd)
    return op


# ---------------------------------------------------------------------------
# linen


class _RuleLayerNorm(nn.Module):
    """A LayerNorm with linen's parameter names, computed by a hand-written rule."""

    rule: Callable

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), F64)
        bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],), F64)
        return self.rule(x, scale, bias)


class _LinenLNNet(nn.Module):
    eps: float
    rule: Callable | None = None

    @nn.compact
    def __call__(self, x):
        h = nn.Dense(4, param_dtype=F64)(x)
        if self.rule is None:
            h = nn.LayerNorm(epsilon=self.eps, param_dtype=F64)(h)
        else:
            h = _RuleLayerNorm(self.rule, name="LayerNorm_0")(h)
        return nn.Dense(2, param_dtype=F64)(jnp.tanh(h))


@register("flax_linen-layer_norm")
def _linen_layer_norm():
    """Dense(4) -> LayerNorm(eps=1e-2) -> tanh -> Dense(2), mean squared error.

    The first Dense has small weights (activations of variance ~0.02), where
    LayerNorm's eps matters. Bug: the backward drops eps (``1/sqrt(var)``):
    bad leaves: the first Dense's kernel and bias (relative sizes 0.19 and 0.17).
    """
    eps = 1e-2
    x, y = normal(70, 4, 3), normal(71, 4, 2)
    ok, bad = _LinenLNNet(eps), _LinenLNNet(eps, _rules.layer_norm(eps, "drop_eps"))
    variables = randomize(jax.eval_shape(ok.init, jax.random.key(0), x), 72)
    variables["params"]["Dense_0"]["kernel"] *= 0.15
    variables["params"]["Dense_0"]["bias"] *= 0.15

    def make(net):
        def f(v, x, y):
            return jnp.mean((net.apply(v, x) - y) ** 2)

        return f

    bad_paths = ("['params']['Dense_0']['bias']", "['params']['Dense_0']['kernel']")
    return make(ok), make(bad), variables, (x, y), bad_paths


def _linen_attention(softmax):
    """An ``attention_fn`` for linen's MultiHeadDotProductAttention: flax's
    dot_product_attention without mask or dropout, with ``softmax`` swapped in."""

    def attention(query, key, value, **kwargs):
        query = query / jnp.sqrt(query.shape[-1])
        logits = jnp.einsum("...qhd,...khd->...hqk", query, key)
        return jnp.einsum("...hqk,...khd->...qhd", softmax(logits), value)

    return attention


@register("flax_linen-attention-f32")
def _linen_attention_case():
    """Self-attention, 2 heads of size 2, with query/key/value/output biases,
    on 2 sequences of 3 tokens; float32 parameters and inputs kept on purpose.

    The key bias adds ``q . b_k`` to every logit of a query: softmax ignores
    that constant shift, so its true gradient is exactly zero.

    Bug: the softmax backward is ``p * g`` (the ``- p sum(p g)`` term
    forgotten). Bad leaves: the query kernel and bias (relative sizes 0.8 and
    0.48) and the key kernel and bias (0.68; the key bias gets a non-zero
    gradient: relative size 1).
    """
    f32 = jnp.float32
    x = normal(80, 2, 3, 3, dtype=f32)
    c = normal(81, 2, 3, 3, dtype=f32)

    def mha(attention_fn):
        return nn.MultiHeadDotProductAttention(
            num_heads=2, qkv_features=4, out_features=3, attention_fn=attention_fn
        )

    ok = mha(nn.dot_product_attention)
    bad = mha(_linen_attention(_rules.softmax("no_subtract")))
    variables = randomize(jax.eval_shape(ok.init, jax.random.key(1), x), 82)

    def make(layer):
        def f(v, x, c):
            return jnp.sum(layer.apply(v, x) * c)

        return f

    bad_paths = tuple(
        f"['params']['{n}']['{leaf}']"
        for n in ("query", "key")
        for leaf in ("kernel", "bias")
    )
    return make(ok), make(bad), variables, (x, c), bad_paths


class _LinenLSTMNet(nn.Module):
    gate_fn: Callable

    @nn.compact
    def __call__(self, x):
        h = nn.RNN(nn.LSTMCell(3, gate_fn=self.gate_fn, param_dtype=F64))(x)
        return nn.Dense(1, param_dtype=F64)(h[:, -1])


@register("flax_linen-lstm_cell")
def _linen_lstm():
    """nn.RNN(nn.LSTMCell(3)) over 2 sequences of 4 steps (a lax.scan), then a
    Dense readout; mean squared error.

    Bug: the gate function (sigmoid of the input/forget/output gates) has a
    custom_jvp with derivative ``s`` instead of ``s (1 - s)``. Bad leaves: every
    LSTM parameter (relative sizes 0.17 to 0.89; the error spreads through the
    recurrence); the readout Dense stays correct.
    """
    x, y = normal(90, 2, 4, 3), normal(91, 2, 1)
    ok = _LinenLSTMNet(jax.nn.sigmoid)
    bad = _LinenLSTMNet(_rules.sigmoid("s"))
    variables = randomize(jax.eval_shape(ok.init, jax.random.key(2), x), 92)

    def make(net):
        def f(v, x, y):
            return jnp.mean((net.apply(v, x) - y) ** 2)

        return f

    bad_paths = tuple(p for p in paths(variables) if "LSTMCell_0" in p)
    return make(ok), make(bad), variables, (x, y), bad_paths


class _RuleConv(nn.Module):
    """nn.Conv's parameters (kernel (W, I, O), bias), computed by ``rule``."""

    rule: Callable
    features: int
    width: int

    @nn.compact
    def __call__(self, x):
        shape = (self.width, x.shape[-1], self.features)
        kernel = self.param("kernel", nn.initializers.lecun_normal(), shape, F64)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), F64)
        return self.rule(x, kernel) + bias


class _LinenConvNet(nn.Module):
    rule: Callable | None = None

    @nn.compact
    def __call__(self, x):
        if self.rule is None:
            h = nn.Conv(3, (3,), param_dtype=F64)(x)
        else:
            h = _RuleConv(self.rule, 3, 3, name="Conv_0")(x)
        return nn.Dense(1, param_dtype=F64)(jnp.tanh(h).reshape(x.shape[0], -1))


@register("flax_linen-conv")
def _linen_conv():
    """nn.Conv(3 features, width 3, SAME padding) on 2 signals of 6 steps and 2
    channels, tanh, Dense readout; mean squared error.

    Bug: the kernel's cotangent is spatially flipped (convolution and
    cross-correlation mixed up in a hand-written backward). Bad leaf
    ['params']['Conv_0']['kernel'] (relative size 0.62); the conv bias and the
    readout stay correct.
    """
    x, y = normal(100, 2, 6, 2), normal(101, 2, 1)
    rule = _conv_rule(("NWC", "WIO", "NWC"), "SAME", "flip")
    ok, bad = _LinenConvNet(), _LinenConvNet(rule)
    variables = randomize(jax.eval_shape(ok.init, jax.random.key(3), x), 102)

    def make(net):
        def f(v, x, y):
            return jnp.mean((net.apply(v, x) - y) ** 2)

        return f

    return make(ok), make(bad), variables, (x, y), ("['params']['Conv_0']['kernel']",)


# ---------------------------------------------------------------------------
# nnx


class _NnxLNNet(nnx.Module):
    def __init__(self, eps: float, rngs: nnx.Rngs):
        self.lin1 = nnx.Linear(3, 4, param_dtype=F64, rngs=rngs)
        self.norm = nnx.LayerNorm(4, epsilon=eps, param_dtype=F64, rngs=rngs)
        self.lin2 = nnx.Linear(4, 2, param_dtype=F64, rngs=rngs)

    def __call__(self, x, rule=None):
        h = self.lin1(x)
        if rule is None:
            h = self.norm(h)
        else:
            h = rule(h, self.norm.scale[...], self.norm.bias[...])
        return self.lin2(jnp.tanh(h))


def _nnx_params(build: Callable[[], nnx.Module], seed: int, *filters):
    """``nnx.split`` of the model ``build()`` makes, initialised abstractly
    (``nnx.eval_shape``: nothing compiled), the first state's values drawn by
    ``randomize``."""
    graphdef, state, *rest = nnx.split(nnx.eval_shape(build), *filters)
    return graphdef, randomize(state, seed), *rest


@register("flax_nnx-layer_norm")
def _nnx_layer_norm():
    """nnx: Linear(3, 4) -> LayerNorm(eps=1e-2) -> tanh -> Linear(4, 2); mean
    squared error; the parameters are an nnx.State (paths end in ``.value``).

    Bug: the LayerNorm backward forgets the ``- xhat mean(dxhat xhat)`` term
    (the variance treated as a constant). Bad leaves: lin1's kernel and bias
    (relative sizes 0.99 and 0.5).
    """
    eps = 1e-2
    graphdef, state = _nnx_params(lambda: _NnxLNNet(eps, nnx.Rngs(4)), 110)
    rule = _rules.layer_norm(eps, "drop_var_term")
    x, y = normal(111, 4, 3), normal(112, 4, 2)

    def make(rule):
        def f(state, x, y):
            model = nnx.merge(graphdef, state)
            return jnp.mean((model(x, rule) - y) ** 2)

        return f

    bad_paths = ("['lin1']['bias'].value", "['lin1']['kernel'].value")
    return make(None), make(rule), state, (x, y), bad_paths


@register("flax_nnx-attention", float32_inside=True)
def _nnx_attention():
    """nnx.MultiHeadAttention (2 heads of size 2, biases on), self-attention on 2
    sequences of 3 tokens. The parameters are the whole nnx.State, including
    the layer's RNG state (a PRNG key and an integer count), as a user who
    passes ``nnx.split(model)[1]`` would. The key bias's true gradient is zero.

    Bug: the hand-written backward of the scaled scores ``q k^T / sqrt(d)``
    forgets the ``1/sqrt(d)`` (a factor sqrt(2) here). Bad leaves: the query
    kernel and bias and the key kernel (relative size 1 - 1/sqrt(2) = 0.29);
    the key bias's gradient stays zero.
    """
    scores = _rules.scaled_scores("drop_scale")

    def attention_bad(query, key, value, **kwargs):
        weights = jax.nn.softmax(scores(query, key), axis=-1)
        return jnp.einsum("...hqk,...khd->...qhd", weights, value)

    def build(attention_fn):
        return nnx.MultiHeadAttention(
            num_heads=2,
            in_features=3,
            qkv_features=4,
            out_features=3,
            decode=False,
            attention_fn=attention_fn,
            param_dtype=F64,
            rngs=nnx.Rngs(5),
        )

    graphdef_ok, state = _nnx_params(lambda: build(nnx.dot_product_attention), 120)
    graphdef_bad, _ = _nnx_params(lambda: build(attention_bad), 120)
    x, c = normal(121, 2, 3, 3), normal(122, 2, 3, 3)

    def make(graphdef):
        def f(state, x, c):
            return jnp.sum(nnx.merge(graphdef, state)(x) * c)

        return f

    bad_paths = (
        "['query']['kernel'].value",
        "['query']['bias'].value",
        "['key']['kernel'].value",
    )
    return make(graphdef_ok), make(graphdef_bad), state, (x, c), bad_paths


class _NnxGRUNet(nnx.Module):
    def __init__(self, activation_fn, rngs: nnx.Rngs):
        self.cell = nnx.GRUCell(
            3, 3, activation_fn=activation_fn, param_dtype=F64, rngs=rngs
        )
        self.readout = nnx.Linear(3, 1, param_dtype=F64, rngs=rngs)

    def __call__(self, xs):
        h = jnp.zeros((xs.shape[0], 3), xs.dtype)
        for t in range(xs.shape[1]):
            h, _ = self.cell(h, xs[:, t])
        return self.readout(h)


@register("flax_nnx-gru_cell")
def _nnx_gru():
    """nnx.GRUCell(3, 3) unrolled over 3 steps of 2 sequences, Linear readout;
    mean squared error; parameters filtered with ``nnx.split(model, nnx.Param)``.

    Bug: the candidate activation (tanh) has a custom_jvp with derivative
    ``1 - tanh`` instead of ``1 - tanh**2``. Bad leaves: every GRU parameter
    (relative sizes 0.67 to 0.76); the readout stays correct.
    """
    x, y = normal(130, 2, 3, 3), normal(131, 2, 1)

    def split(activation_fn):
        def build():
            return _NnxGRUNet(activation_fn, nnx.Rngs(6))

        return _nnx_params(build, 132, nnx.Param, ...)

    graphdef_ok, params, rest = split(jnp.tanh)
    graphdef_bad, _, _ = split(_rules.tanh("1-y"))

    def make(graphdef):
        def f(params, x, y):
            model = nnx.merge(graphdef, params, rest)
            return jnp.mean((model(x) - y) ** 2)

        return f

    bad_paths = tuple(p for p in paths(params) if p.startswith("['cell']"))
    return make(graphdef_ok), make(graphdef_bad), params, (x, y), bad_paths


@register("flax_nnx-conv", coords=24)
def _nnx_conv():
    """nnx.Conv(8, 8, kernel 3x3, SAME) on 2 images of 5x5x8, tanh; a weighted
    mean. The kernel has 576 entries: checked with ``coords=24`` per leaf.

    Bug: the kernel's cotangent has its input and output channel axes swapped
    (shapes agree with 8 in and 8 out). Bad leaf ['conv']['kernel'].value
    (relative size 1.3); the bias stays correct.
    """

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.conv = nnx.Conv(8, 8, (3, 3), param_dtype=F64, rngs=rngs)

    graphdef, params = _nnx_params(lambda: Net(nnx.Rngs(7)), 140)
    rule = _conv_rule(("NHWC", "HWIO", "NHWC"), "SAME", "swap_io")
    x, c = normal(141, 2, 5, 5, 8), normal(142, 2, 5, 5, 8)

    def f_ok(params, x, c):
        model = nnx.merge(graphdef, params)
        return jnp.mean(jnp.tanh(model.conv(x)) * c)

    def f_bad(params, x, c):
        conv = nnx.merge(graphdef, params).conv
        h = rule(x, conv.kernel[...]) + conv.bias[...]
        return jnp.mean(jnp.tanh(h) * c)

    return f_ok, f_bad, params, (x, c), ("['conv']['kernel'].value",)
