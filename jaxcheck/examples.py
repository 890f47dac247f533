"""Small models and data used by the demo, the notebooks, the tests and benchmarks.

Everything here is deterministic given a seed and runs in a fraction of a second.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any


def mlp_init(
    sizes: Sequence[int], *, seed: int = 0, scale: float = 1.0, dtype: Any = None
) -> list[dict[str, jax.Array]]:
    """Initialises a fully connected network as a list of ``{"W", "b"}`` dicts.

    Weights are drawn from ``N(0, scale**2 / fan_in)``; biases are small and
    non-zero so that a bias gradient bug cannot hide behind an all-zero leaf.

    Args:
      sizes: layer widths, input first, e.g. ``(64, 32, 10)``.
      seed: seed of the NumPy generator used for the draw.
      scale: multiplies every weight.
      dtype: dtype of the leaves (default float32).

    Returns:
      ``[{"W": (sizes[0], sizes[1]), "b": (sizes[1],)}, ...]``.

    Examples:
      >>> params = mlp_init((4, 3, 2))
      >>> [p["W"].shape for p in params]
      [(4, 3), (3, 2)]
    """
    if len(sizes) < 2:
        raise ValueError(
            f"`sizes` needs at least an input and an output width, got {sizes!r}."
        )
    dtype = jnp.float32 if dtype is None else dtype
    rng = np.random.default_rng(seed)
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
        w = rng.normal(size=(fan_in, fan_out)) * scale / np.sqrt(fan_in)
        b = 0.1 * rng.normal(size=(fan_out,))
        params.append({"W": jnp.asarray(w, dtype), "b": jnp.asarray(b, dtype)})
    return params


def mlp_apply(params: Sequence[dict[str, jax.Array]], x: jax.Array) -> jax.Array:
    """Applies the tanh network built by :func:`mlp_init` and returns the logits.

    Args:
      params: the list of ``{"W", "b"}`` dicts.
      x: inputs of shape ``(batch, sizes[0])``.

    Returns:
      logits of shape ``(batch, sizes[-1])``.

    Examples:
      >>> mlp_apply(mlp_init((4, 3, 2)), jnp.ones((5, 4))).shape
      (5, 2)
    """
    h = x
    for layer in params[:-1]:
        h = jnp.tanh(h @ layer["W"] + layer["b"])
    return h @ params[-1]["W"] + params[-1]["b"]


def softmax_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy of integer ``labels`` under ``logits``.

    Examples:
      >>> float(softmax_loss(jnp.zeros((2, 10)), jnp.array([0, 3])))  # ln 10
      2.302585...
    """
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=-1))


def mlp_loss(
    params: Sequence[dict[str, jax.Array]], x: jax.Array, labels: jax.Array
) -> jax.Array:
    """Softmax cross-entropy of the tanh MLP: the standard example loss.

    Examples:
      >>> params = mlp_init((4, 3, 2))
      >>> x, y = classification_batch(5, 4, 2)
      >>> mlp_loss(params, x, y).shape
      ()
    """
    return softmax_loss(mlp_apply(params, x), labels)


def classification_batch(
    batch: int, dim: int, num_classes: int, *, seed: int = 1, dtype: Any = None
) -> tuple[jax.Array, jax.Array]:
    """A random batch ``(x, labels)`` with standard-normal inputs.

    Examples:
      >>> x, y = classification_batch(16, 64, 10)
      >>> x.shape, y.shape
      ((16, 64), (16,))
    """
    dtype = jnp.float32 if dtype is None else dtype
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(batch, dim)), dtype)
    y = jnp.asarray(rng.integers(0, num_classes, size=(batch,)), jnp.int32)
    return x, y


def mlp_sizes_for(num_params: int, *, dim: int = 64, num_classes: int = 10) -> tuple:
    """Widths ``(dim, hidden, num_classes)`` of a one-hidden-layer MLP with about
    ``num_params`` parameters.

    Examples:
      >>> mlp_sizes_for(11_000)
      (64, 147, 10)
    """
    # params = dim*h + h + h*C + C  =>  h = (N - C) / (dim + 1 + C)
    hidden = max(1, round((num_params - num_classes) / (dim + 1 + num_classes)))
    return (dim, hidden, num_classes)


def num_params(tree: PyTree) -> int:
    """Total number of array entries in a pytree.

    Examples:
      >>> num_params(mlp_init((4, 3, 2)))
      23
    """
    return int(sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(tree)))
