"""Hand-written custom_vjp / custom_jvp rules shared by the layer cases, each with
an optional planted bug (``bug=None`` is the correct rule).

These are the rules people write for fused kernels (LayerNorm, softmax,
attention, convolutions, gates); every bug is one realistic slip.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ._registry import unary_jvp


def layer_norm(eps: float, bug: str | None = None):
    """``layer_norm(x, scale, bias)`` over the last axis, with a hand-written VJP.

    Bugs: ``"drop_eps"`` (the backward uses ``1/sqrt(var)``, not
    ``1/sqrt(var + eps)``), ``"drop_var_term"`` (the backward forgets the
    ``- xhat * mean(dxhat * xhat)`` term: the variance treated as a constant),
    ``"scale_centered"`` (the scale's cotangent uses ``x - mean`` instead of the
    normalised ``xhat``).
    """

    def stats(x):
        mu = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean((x - mu) ** 2, axis=-1, keepdims=True)
        return mu, var

    @jax.custom_vjp
    def ln(x, scale, bias):
        mu, var = stats(x)
        return (x - mu) * jax.lax.rsqrt(var + eps) * scale + bias

    def fwd(x, scale, bias):
        mu, var = stats(x)
        rstd = jax.lax.rsqrt(var + eps)
        xhat = (x - mu) * rstd
        return xhat * scale + bias, (x, mu, var, xhat, scale)

    def bwd(res, g):
        x, mu, var, xhat, scale = res
        d = x.shape[-1]
        rstd = jax.lax.rsqrt(var if bug == "drop_eps" else var + eps)
        dxhat = g * scale
        mean_d = jnp.mean(dxhat, axis=-1, keepdims=True)
        mean_dx = jnp.mean(dxhat * xhat, axis=-1, keepdims=True)
        if bug == "drop_var_term":
            mean_dx = jnp.zeros_like(mean_dx)
        dx = rstd * (dxhat - mean_d - xhat * mean_dx)
        normed = (x - mu) if bug == "scale_centered" else xhat
        dscale = jnp.sum((g * normed).reshape(-1, d), axis=0).reshape(scale.shape)
        dbias = jnp.sum(g.reshape(-1, d), axis=0).reshape(scale.shape)
        return dx, dscale, dbias

    ln.defvjp(fwd, bwd)
    return ln


def softmax(bug: str | None = None):
    """``softmax(logits)`` over the last axis, with a hand-written VJP.

    Bug ``"no_subtract"``: the backward is ``p * g``, forgetting ``- p * sum(p *
    g)`` (the off-diagonal part of the Jacobian).
    """

    @jax.custom_vjp
    def sm(z):
        return jax.nn.softmax(z, axis=-1)

    def fwd(z):
        p = jax.nn.softmax(z, axis=-1)
        return p, p

    def bwd(p, g):
        if bug == "no_subtract":
            return (p * g,)
        return (p * (g - jnp.sum(p * g, axis=-1, keepdims=True)),)

    sm.defvjp(fwd, bwd)
    return sm


def scaled_scores(bug: str | None = None):
    """``einsum("...qhd,...khd->...hqk", q, k) / sqrt(d)`` with a hand-written VJP.

    Bug ``"drop_scale"``: the backward forgets the ``1/sqrt(d)`` factor.
    """

    def scores(q, k):
        return jnp.einsum("...qhd,...khd->...hqk", q, k) / jnp.sqrt(q.shape[-1])

    @jax.custom_vjp
    def op(q, k):
        return scores(q, k)

    def fwd(q, k):
        return scores(q, k), (q, k)

    def bwd(res, g):
        q, k = res
        scale = 1.0 if bug == "drop_scale" else 1.0 / jnp.sqrt(q.shape[-1])
        dq = jnp.einsum("...hqk,...khd->...qhd", g, k) * scale
        dk = jnp.einsum("...hqk,...qhd->...khd", g, q) * scale
        return dq, dk

    op.defvjp(fwd, bwd)
    return op


def attend(bug: str | None = None):
    """``p @ v`` for attention weights ``p`` (q, k) and values ``v`` (k, d), with
    a hand-written VJP.

    Bug ``"transposed"``: the values' cotangent is ``p @ g`` instead of
    ``p.T @ g`` (shapes agree for a square attention matrix).
    """

    @jax.custom_vjp
    def op(p, v):
        return p @ v

    def fwd(p, v):
        return p @ v, (p, v)

    def bwd(res, g):
        p, v = res
        dv = p @ g if bug == "transposed" else p.T @ g
        return g @ v.T, dv

    op.defvjp(fwd, bwd)
    return op


def sigmoid(bug: str | None = None):
    """``jax.nn.sigmoid`` with a custom_jvp; bug ``"s"``: derivative ``s`` instead
    of ``s (1 - s)`` (a gate derivative gone wrong)."""
    if bug == "s":
        return unary_jvp(jax.nn.sigmoid, lambda x, s: s)
    return unary_jvp(jax.nn.sigmoid, lambda x, s: s * (1 - s))


def tanh(bug: str | None = None):
    """``jnp.tanh`` with a custom_jvp; bug ``"1-y"``: derivative ``1 - tanh``
    instead of ``1 - tanh**2``."""
    if bug == "1-y":
        return unary_jvp(jnp.tanh, lambda x, y: 1 - y)
    return unary_jvp(jnp.tanh, lambda x, y: 1 - y * y)
