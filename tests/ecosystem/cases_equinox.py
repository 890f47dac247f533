"""equinox cases: LayerNorm, MultiheadAttention, GRUCell (in a scan), Conv2d.

The parameters are the equinox modules themselves (a dict of modules: their
array fields are the leaves, paths like ``['norm'].weight``), as a user would
pass a model to ``check_grads``. The buggy twins recompute one piece with a
hand-written rule, reading the same module's arrays. Relative sizes are
``||g_buggy - g_correct|| / ||g_correct||`` per bad leaf at the registry's point.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from . import _rules
from ._registry import normal, paths, randomize, register


def _abstract(cls, *args, **kwargs):
    """An equinox layer with abstract parameters (no initialisation compiled);
    ``randomize`` then draws them."""
    return eqx.filter_eval_shape(cls, *args, **kwargs, key=jax.random.key(0))


@register("equinox-layer_norm")
def _eqx_layer_norm():
    """Linear(3, 4) -> LayerNorm(4, eps=1e-2) -> tanh -> Linear(4, 2), vmapped
    over a batch of 4; mean squared error. (equinox's LayerNorm clamps the
    variance with ``jnp.maximum(0, var)``, a kink-capable primitive.)

    Bug: the LayerNorm weight's cotangent uses ``x - mean`` instead of the
    normalised ``xhat``. Bad leaf ['norm'].weight (relative size 0.51); the
    input gradient, and so the first Linear, stays correct.
    """
    eps = 1e-2
    model = {
        "lin1": _abstract(eqx.nn.Linear, 3, 4),
        "norm": eqx.nn.LayerNorm(4, eps=eps),
        "lin2": _abstract(eqx.nn.Linear, 4, 2),
    }
    model = randomize(model, 151)
    rule = _rules.layer_norm(eps, "scale_centered")
    x, y = normal(152, 4, 3), normal(153, 4, 2)

    def f_ok(m, x, y):
        def one(x):
            return m["lin2"](jnp.tanh(m["norm"](m["lin1"](x))))

        return jnp.mean((jax.vmap(one)(x) - y) ** 2)

    def f_bad(m, x, y):
        def one(x):
            h = rule(m["lin1"](x), m["norm"].weight, m["norm"].bias)
            return m["lin2"](jnp.tanh(h))

        return jnp.mean((jax.vmap(one)(x) - y) ** 2)

    return f_ok, f_bad, model, (x, y), ("['norm'].weight",)


@register("equinox-attention")
def _eqx_attention():
    """eqx.nn.MultiheadAttention (2 heads, qk and vo size 2, all four biases),
    self-attention on 2 sequences of 3 tokens (vmapped); loss ``sum(out * c)``.
    The key bias's true gradient is exactly zero (softmax ignores the shift
    ``q . b_k``).

    Bug: the hand-written backward of ``weights @ values`` returns ``weights @
    g`` for the values where ``weights^T @ g`` belongs. Bad leaves
    ['attn'].value_proj.weight and .bias (relative sizes 0.5 and 0.28); the
    query and key projections (key bias included, still zero) and the output
    stay correct.
    """
    mha = _abstract(
        eqx.nn.MultiheadAttention,
        num_heads=2,
        query_size=3,
        qk_size=2,
        vo_size=2,
        use_query_bias=True,
        use_key_bias=True,
        use_value_bias=True,
        use_output_bias=True,
    )
    model = randomize({"attn": mha}, 161)
    attend = _rules.attend("transposed")
    x, c = normal(162, 2, 3, 3), normal(163, 2, 3, 3)

    def f_ok(m, x, c):
        out = jax.vmap(lambda s: m["attn"](s, s, s))(x)
        return jnp.sum(out * c)

    def heads(proj, s):
        return jax.vmap(proj)(s).reshape(s.shape[0], 2, -1)

    def attention_bad(a, s):
        q, k, v = heads(a.query_proj, s), heads(a.key_proj, s), heads(a.value_proj, s)
        out = []
        for h in range(2):
            logits = (q[:, h] / jnp.sqrt(q.shape[-1])) @ k[:, h].T
            out.append(attend(jax.nn.softmax(logits, axis=-1), v[:, h]))
        return jax.vmap(a.output_proj)(jnp.concatenate(out, axis=-1))

    def f_bad(m, x, c):
        out = jax.vmap(lambda s: attention_bad(m["attn"], s))(x)
        return jnp.sum(out * c)

    bad_paths = ("['attn'].value_proj.bias", "['attn'].value_proj.weight")
    return f_ok, f_bad, model, (x, c), bad_paths


def _gru_mix(bug: bool):
    """``n + z (h - n)``, the GRU's interpolation, with a hand-written VJP; the
    bug gives the update gate the cotangent ``g (n - h)`` (sign flipped)."""

    @jax.custom_vjp
    def mix(z, n, h):
        return n + z * (h - n)

    def fwd(z, n, h):
        return mix(z, n, h), (z, n, h)

    def bwd(res, g):
        z, n, h = res
        dz = g * (n - h) if bug else g * (h - n)
        return dz, g * (1 - z), g * z

    mix.defvjp(fwd, bwd)
    return mix


@register("equinox-gru_cell-f32")
def _eqx_gru():
    """eqx.nn.GRUCell(3, 3) run by ``lax.scan`` over 4 steps of 2 sequences
    (vmapped), Linear readout; mean squared error. float32 parameters and
    inputs, kept on purpose.

    Bug: a hand-written GRU step whose update gate gets the wrong-sign
    derivative of ``n + z (h - n)``. Bad leaves: every GRU parameter (relative
    sizes 0.04 for bias_n to 0.44); the readout stays correct.
    """
    f32 = jnp.float32
    model = {
        "cell": _abstract(eqx.nn.GRUCell, 3, 3, dtype=f32),
        "readout": _abstract(eqx.nn.Linear, 3, 1, dtype=f32),
    }
    model = randomize(model, 171)
    mix_bad = _gru_mix(bug=True)
    xs, y = normal(172, 2, 4, 3, dtype=f32), normal(173, 2, 1, dtype=f32)

    def step_bad(cell, x, h):
        i = jnp.split(cell.weight_ih @ x + cell.bias, 3)
        g = jnp.split(cell.weight_hh @ h, 3)
        r = jax.nn.sigmoid(i[0] + g[0])
        z = jax.nn.sigmoid(i[1] + g[1])
        n = jnp.tanh(i[2] + r * (g[2] + cell.bias_n))
        return mix_bad(z, n, h)

    def make(step):
        def f(m, xs, y):
            def run(seq):
                def body(h, x):
                    return step(m["cell"], x, h), None

                h0 = jnp.zeros(3, seq.dtype)
                h, _ = jax.lax.scan(body, h0, seq)
                return m["readout"](h)

            return jnp.mean((jax.vmap(run)(xs) - y) ** 2)

        return f

    def step_ok(cell, x, h):
        return cell(x, h)

    bad_paths = tuple(p for p in paths(model) if p.startswith("['cell']"))
    return make(step_ok), make(step_bad), model, (xs, y), bad_paths


def _conv2d_rule(padding):
    """A 2-d convolution (equinox's layout: (C, H, W) input, (O, I, kh, kw)
    kernel) whose input cotangent uses the kernel unflipped: the transposed
    convolution without the 180-degree rotation, a classic hand-written slip.
    The kernel's cotangent is right."""

    def conv(x, w):
        out = jax.lax.conv_general_dilated(x[None], w, (1, 1), padding)
        return out[0]

    @jax.custom_vjp
    def op(x, w):
        return conv(x, w)

    def fwd(x, w):
        return conv(x, w), (x, w)

    def bwd(res, g):
        x, w = res
        _, dw = jax.vjp(conv, x, w)[1](g)
        (dx,) = jax.vjp(lambda x: conv(x, w[..., ::-1, ::-1]), x)[1](g)
        return dx, dw

    op.defvjp(fwd, bwd)
    return op


@register("equinox-conv2d")
def _eqx_conv():
    """Two eqx.nn.Conv2d layers (2 -> 3 -> 2 channels, 3x3, padding 1) with tanh,
    on 2 images of 2x5x5 (vmapped); loss ``mean(tanh(out) * c)``.

    Bug: the second convolution's input cotangent forgets to flip the kernel.
    Bad leaves: the first convolution's weight and bias (relative sizes 1.3
    and 0.6); the second convolution's own weight and bias stay correct.
    """
    model = {
        "conv1": _abstract(eqx.nn.Conv2d, 2, 3, 3, padding=1),
        "conv2": _abstract(eqx.nn.Conv2d, 3, 2, 3, padding=1),
    }
    model = randomize(model, 181, scale=0.3)
    rule = _conv2d_rule(((1, 1), (1, 1)))
    x, c = normal(182, 2, 2, 5, 5), normal(183, 2, 2, 5, 5)

    def f_ok(m, x, c):
        def one(x):
            return jnp.tanh(m["conv2"](jnp.tanh(m["conv1"](x))))

        return jnp.mean(jax.vmap(one)(x) * c)

    def f_bad(m, x, c):
        def one(x):
            h = jnp.tanh(m["conv1"](x))
            return jnp.tanh(rule(h, m["conv2"].weight) + m["conv2"].bias)

        return jnp.mean(jax.vmap(one)(x) * c)

    return f_ok, f_bad, model, (x, c), ("['conv1'].bias", "['conv1'].weight")
