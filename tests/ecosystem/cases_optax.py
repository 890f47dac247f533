"""optax loss cases: softmax / sigmoid cross-entropy, Huber, CTC, cosine distance.

Each loss sits on a small linear model ``x @ W + b``. The buggy twins compute the
same loss through a hand-written ``custom_vjp`` whose backward has a classic
slip. Relative sizes are ``||g_buggy - g_correct|| / ||g_correct||`` per bad
leaf at the registry's point.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ._registry import normal, register, vjp_rule


@register("optax-softmax_cross_entropy-f32")
def _softmax_ce():
    """Mean softmax cross-entropy with per-example weighted soft labels (each
    row of ``labels`` sums to the example's weight, 0.5..1.5). float32
    parameters and inputs, kept on purpose (jaxcheck checks in float64).

    Bug: the backward of the cross-entropy in the logits is ``softmax - labels``,
    which assumes that every row of labels sums to 1; the right one is
    ``softmax * sum(labels) - labels``. Bad leaves ['W'] and ['b'] (relative
    sizes 0.53 and 0.2).
    """

    def ce(logits, labels):
        return optax.softmax_cross_entropy(logits, labels)

    def ce_bwd(xs, out, g):
        logits, labels = xs
        d = jax.nn.softmax(logits) - labels  # correct: softmax * labels.sum(-1)
        return g[:, None] * d, None

    ce_bad = vjp_rule(ce, ce_bwd)

    def make(ce):
        def f(p, x, labels):
            return jnp.mean(ce(x @ p["W"] + p["b"], labels))

        return f

    f32 = jnp.float32
    x = normal(50, 4, 5, dtype=f32)
    weights = jnp.array([0.5, 1.5, 1.0, 0.8], f32)
    logits = np.asarray(normal(51, 4, 3, scale=2.0))
    soft = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    labels = jnp.asarray(np.asarray(weights)[:, None] * soft, f32)
    params = {
        "W": normal(52, 5, 3, scale=0.5, dtype=f32),
        "b": normal(53, 3, dtype=f32),
    }
    return make(ce), make(ce_bad), params, (x, labels), ("['W']", "['b']")


@register("optax-sigmoid_binary_cross_entropy")
def _sigmoid_bce():
    """Mean sigmoid binary cross-entropy of a 3-label linear classifier.

    Bug: the backward multiplies ``sigmoid(z) - y`` by the sigmoid's derivative
    ``s (1 - s)`` once more (the chain rule applied twice). Bad leaves ['W'] and
    ['b'] (relative sizes 0.89 and 0.87).
    """

    def bce_bwd(xs, out, g):
        z, y = xs
        s = jax.nn.sigmoid(z)
        return g * (s - y) * s * (1 - s), None  # correct: g * (s - y)

    bce_bad = vjp_rule(optax.sigmoid_binary_cross_entropy, bce_bwd)

    def make(bce):
        def f(p, x, y):
            return jnp.mean(bce(x @ p["W"] + p["b"], y))

        return f

    x = normal(54, 4, 5)
    y = (normal(55, 4, 3) > 0).astype(jnp.float64)
    params = {"W": normal(56, 5, 3, scale=0.7), "b": normal(57, 3, scale=0.3)}
    bad = ("['W']", "['b']")
    return make(optax.sigmoid_binary_cross_entropy), make(bce_bad), params, (x, y), bad


@register("optax-huber_loss")
def _huber():
    """Mean Huber loss (delta = 0.5) of a linear regression whose residuals lie on
    both sides of the kink at |e| = delta (none within 1e-2 of it).

    Bug: the backward clips the residual to [-1, 1], forgetting ``delta``
    (right: clip to [-delta, delta]); the residuals beyond delta get twice their
    gradient. Bad leaves ['W'] and ['b'] (relative sizes 0.44 and 0.15).
    """
    delta = 0.5

    def huber(pred, target):
        return optax.huber_loss(pred, target, delta=delta)

    def huber_bwd(xs, out, g):
        pred, target = xs
        return g * jnp.clip(pred - target, -1.0, 1.0), None  # correct: +-delta

    huber_bad = vjp_rule(huber, huber_bwd)

    def make(loss):
        def f(p, x, t):
            return jnp.mean(loss(x @ p["W"] + p["b"], t))

        return f

    x = normal(58, 4, 3)
    t = normal(59, 4, 2)
    params = {"W": normal(60, 3, 2, scale=0.8), "b": normal(61, 2, scale=0.3)}
    return make(huber), make(huber_bad), params, (x, t), ("['W']", "['b']")


@register("optax-ctc_loss")
def _ctc():
    """Mean CTC loss of a linear emission layer ``x @ W + b`` over 2 sequences of
    6 frames, 4 classes (blank 0), labels of length 3 and 2 (padded). optax
    runs the forward recursion in ``lax.scan`` with exact 0/1 float masks.

    Bug: a hand-written dense layer whose bias cotangent averages over time
    instead of summing (``g.sum(0).mean(0)``): bad leaf ['b'] (relative size
    1 - 1/6 = 0.83); ['W'] stays correct.
    """

    def dense(x, w, b):
        return x @ w + b

    def dense_bwd(xs, out, g):
        x, w, _ = xs
        dx = g @ w.T
        dw = jnp.einsum("btf,btk->fk", x, g)
        db = g.sum(0).mean(0)  # correct: g.sum((0, 1))
        return dx, dw, db

    dense_bad = vjp_rule(dense, dense_bwd)
    x = normal(62, 2, 6, 3)
    logit_paddings = jnp.zeros((2, 6)).at[1, 5].set(1.0)
    labels = jnp.array([[1, 2, 1], [3, 1, 0]], jnp.int32)
    label_paddings = jnp.array([[0.0, 0.0, 0.0], [0.0, 0.0, 1.0]])

    def make(layer):
        def f(p, x, logit_paddings, labels, label_paddings):
            logits = layer(x, p["W"], p["b"])
            return jnp.mean(
                optax.ctc_loss(logits, logit_paddings, labels, label_paddings)
            )

        return f

    params = {"W": normal(63, 3, 4, scale=0.8), "b": normal(64, 4, scale=0.3)}
    args = (x, logit_paddings, labels, label_paddings)
    return make(dense), make(dense_bad), params, args, ("['b']",)


@register("optax-cosine_distance")
def _cosine():
    """Mean cosine distance between ``tanh(x @ W)`` and fixed targets.

    Bug: the backward of the normalisation ``a / |a|`` treats ``|a|`` as a
    constant (a detached normaliser: ``g / |a|`` without the projection
    ``- a (a . g) / |a|^3``). Bad leaf ['W'] (relative size 0.44).
    """

    def unit(a):
        return a / jnp.linalg.norm(a, axis=-1, keepdims=True)

    def unit_bwd(xs, out, g):
        (a,) = xs
        return (g / jnp.linalg.norm(a, axis=-1, keepdims=True),)

    unit_bad = vjp_rule(unit, unit_bwd)

    def f_ok(p, x, t):
        return jnp.mean(optax.cosine_distance(jnp.tanh(x @ p["W"]), t))

    def f_bad(p, x, t):
        cos = jnp.sum(unit_bad(jnp.tanh(x @ p["W"])) * unit(t), axis=-1)
        return jnp.mean(1.0 - cos)

    x = normal(65, 4, 3)
    t = normal(66, 4, 4)
    params = {"W": normal(67, 3, 4, scale=0.8)}
    return f_ok, f_bad, params, (x, t), ("['W']",)
