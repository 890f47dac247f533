"""The example models: small MLPs, classification losses and data.

One set for the whole package: the demo, the notebooks, the tests and the
benchmarks of the gradient checker use :func:`mlp_init` / :func:`mlp_loss`; the
training diagnostics in :mod:`jaxcheck.training` use :func:`mlp_init_named` with
:func:`mlp_apply`, :func:`softmax_loss`, :func:`multiclass_svm_loss`,
:func:`l2_penalty` and :func:`accuracy`. Everything here is deterministic given a
seed (or key) and runs in a fraction of a second. This module imports nothing
from jaxcheck.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "accuracy",
    "class_labels",
    "classification_batch",
    "l2_penalty",
    "mlp_apply",
    "mlp_init",
    "mlp_init_named",
    "mlp_loss",
    "mlp_sizes_for",
    "multiclass_svm_loss",
    "num_params",
    "softmax_loss",
]

PyTree = Any
#: Parameters of the MLP: a list of ``{"W", "b"}`` layers (:func:`mlp_init`) or
#: ``{"layer0": {"W", "b"}, ...}`` (:func:`mlp_init_named`).
Layers = Sequence[Mapping[str, jax.Array]] | Mapping[str, Mapping[str, jax.Array]]


def mlp_init(
    sizes: Sequence[int], *, seed: int = 0, scale: float = 1.0, dtype: Any = None
) -> list[dict[str, jax.Array]]:
    """Initialises a fully connected network as a list of ``{"W", "b"}`` dicts.

    Weights are drawn from ``N(0, scale**2 / fan_in)``; biases are small and
    non-zero so that a bias gradient bug cannot hide behind an all-zero leaf.
    Leaf paths read ``[0]['W']``; see :func:`mlp_init_named` for named layers.

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


_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "identity": lambda h: h,
}


def mlp_init_named(
    key: jax.Array,
    sizes: Sequence[int],
    *,
    scale: float | str = "he",
    bias: float = 0.0,
    dtype: Any = jnp.float32,
) -> dict[str, dict[str, jax.Array]]:
    """Initialises the same network with named layers ``{"layer0": {"W", "b"}, ...}``.

    The training diagnostics use this form: its leaf paths (``['layer0']['W']``)
    name the layer, the weight scale follows the activation (He for ReLU, Xavier
    for tanh) and the biases start at one constant. :func:`mlp_apply` runs both
    forms.

    Args:
        key: A ``jax.random`` key.
        sizes: Layer widths from input to output, e.g. ``[64, 32, 10]``.
        scale: ``"he"`` (``sqrt(2 / fan_in)``), ``"xavier"`` (``sqrt(1 / fan_in)``)
            or a float: the standard deviation of the Gaussian weights.
        bias: Initial value of every bias.
        dtype: Floating dtype of the parameters.

    Returns:
        A dict of layers, each ``{"W": (fan_in, fan_out), "b": (fan_out,)}``.

    Raises:
        ValueError: If ``sizes`` has fewer than two entries or ``scale`` is unknown.

    Examples:
        >>> p = mlp_init_named(jax.random.key(0), [64, 32, 10], scale=0.01)
        >>> p["layer0"]["W"].shape, p["layer1"]["b"].shape
        ((64, 32), (10,))
    """
    sizes = [int(s) for s in sizes]
    if len(sizes) < 2 or any(s < 1 for s in sizes):
        raise ValueError(
            f"`sizes` must list at least an input and an output width (all >= 1), "
            f"got {sizes!r}; e.g. sizes=[64, 32, 10]."
        )
    if isinstance(scale, str) and scale not in ("he", "xavier"):
        raise ValueError(f"`scale` must be 'he', 'xavier' or a float, got {scale!r}.")
    # One draw for all weights: a single compiled sampler per total size, then the
    # pieces are cut on the host (cheaper than compiling a sampler per layer).
    shapes = list(zip(sizes[:-1], sizes[1:], strict=True))
    total = sum(a * b for a, b in shapes)
    noise = np.asarray(jax.random.normal(key, (total,), dtype=jnp.float32))
    params = {}
    offset = 0
    for i, (fan_in, fan_out) in enumerate(shapes):
        if scale == "he":
            std = math.sqrt(2.0 / fan_in)
        elif scale == "xavier":
            std = math.sqrt(1.0 / fan_in)
        else:
            std = float(scale)
        w = std * noise[offset : offset + fan_in * fan_out].reshape(fan_in, fan_out)
        offset += fan_in * fan_out
        params[f"layer{i}"] = {
            "W": jnp.asarray(w, dtype=dtype),
            "b": jnp.asarray(np.full((fan_out,), bias), dtype=dtype),
        }
    return params


def _layers(params: Layers) -> list[Mapping[str, jax.Array]]:
    """The layers in order, from either form (a list, or ``{"layer<i>": ...}``)."""
    if isinstance(params, Mapping):
        return [params[f"layer{i}"] for i in range(len(params))]
    return list(params)


def mlp_apply(
    params: Layers, x: jax.typing.ArrayLike, *, activation: str = "relu"
) -> jax.Array:
    """Applies the network: affine, nonlinearity, ..., affine; returns the logits.

    Args:
        params: From :func:`mlp_init` (a list of layers) or :func:`mlp_init_named`
            (``{"layer0": ..., "layer1": ...}``).
        x: Inputs of shape ``(batch, sizes[0])``.
        activation: ``"relu"``, ``"tanh"``, ``"sigmoid"`` or ``"identity"``
            between the layers (none after the last).

    Returns:
        The class scores (logits), shape ``(batch, sizes[-1])``.

    Raises:
        ValueError: If ``activation`` is unknown.

    Examples:
        >>> mlp_apply(mlp_init((4, 3, 2)), jnp.ones((5, 4)), activation="tanh").shape
        (5, 2)
        >>> p = mlp_init_named(jax.random.key(0), [4, 8, 3])
        >>> mlp_apply(p, jnp.ones((2, 4))).shape
        (2, 3)
    """
    if activation not in _ACTIVATIONS:
        raise ValueError(
            f"`activation` must be one of {sorted(_ACTIVATIONS)}, got {activation!r}."
        )
    act = _ACTIVATIONS[activation]
    layers = _layers(params)
    h = jnp.asarray(x)
    for layer in layers[:-1]:
        h = act(h @ layer["W"] + layer["b"])
    return h @ layers[-1]["W"] + layers[-1]["b"]


def softmax_loss(
    logits: jax.typing.ArrayLike, labels: jax.typing.ArrayLike
) -> jax.Array:
    """Mean softmax cross-entropy over the batch.

    Args:
        logits: Class scores ``(batch, C)``.
        labels: Integer labels ``(batch,)`` or one-hot / soft labels ``(batch, C)``.

    Returns:
        A scalar: the mean over examples of ``-log softmax(logits)[label]``.

    Examples:
        >>> float(softmax_loss(jnp.zeros((2, 10)), jnp.array([0, 3])))  # ln 10
        2.302585...
        >>> one_hot = jax.nn.one_hot(jnp.array([0, 3]), 10)
        >>> round(float(softmax_loss(jnp.zeros((2, 10)), one_hot)), 4)
        2.3026
    """
    logits = jnp.asarray(logits)
    labels = jnp.asarray(labels)
    logp = jax.nn.log_softmax(logits, axis=-1)
    if labels.ndim == logits.ndim:
        return -jnp.mean(jnp.sum(labels * logp, axis=-1))
    picked = jnp.take_along_axis(logp, labels[..., None].astype(jnp.int32), axis=-1)
    return -jnp.mean(picked)


def mlp_loss(params: Layers, x: jax.Array, labels: jax.Array) -> jax.Array:
    """Softmax cross-entropy of the tanh MLP: the standard example loss.

    Examples:
      >>> params = mlp_init((4, 3, 2))
      >>> x, y = classification_batch(5, 4, 2)
      >>> mlp_loss(params, x, y).shape
      ()
    """
    return softmax_loss(mlp_apply(params, x, activation="tanh"), labels)


def multiclass_svm_loss(
    scores: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    margin: float = 1.0,
) -> jax.Array:
    """Mean multiclass (Weston-Watkins) hinge loss over the batch.

    ``L_i = sum_{j != y_i} max(0, s_j - s_{y_i} + margin)``.

    Args:
        scores: Class scores ``(batch, C)``.
        labels: Integer labels ``(batch,)``.
        margin: The margin (``delta``).

    Returns:
        A scalar: the mean of ``L_i`` over the batch.

    Examples:
        >>> float(multiclass_svm_loss(jnp.zeros((4, 10)), jnp.arange(4)))
        9.0
    """
    scores = jnp.asarray(scores)
    labels = jnp.asarray(labels).astype(jnp.int32)
    correct = jnp.take_along_axis(scores, labels[:, None], axis=-1)
    viol = jnp.maximum(0.0, scores - correct + margin)
    not_true = jnp.arange(scores.shape[-1])[None, :] != labels[:, None]
    return jnp.mean(jnp.sum(jnp.where(not_true, viol, 0.0), axis=-1))


def l2_penalty(params: PyTree) -> jax.Array:
    """Half the sum of squares of the weight matrices (leaves with ``ndim >= 2``).

    Biases (1-D leaves) are not penalised, as is customary.

    Args:
        params: Any pytree of arrays.

    Returns:
        A scalar ``0.5 * sum(W**2)`` over the leaves with two or more dimensions.

    Examples:
        >>> float(l2_penalty({"W": jnp.ones((2, 2)), "b": jnp.ones(2)}))
        2.0
    """
    leaves = [jnp.asarray(v) for v in jax.tree.leaves(params)]
    total = jnp.zeros(())
    for v in leaves:
        if v.ndim >= 2:
            total = total + 0.5 * jnp.sum(v.astype(jnp.result_type(float)) ** 2)
    return total


def class_labels(labels: jax.typing.ArrayLike) -> jax.Array:
    """Integer class labels from integer ``(batch,)`` or one-hot ``(batch, C)`` ones.

    Examples:
        >>> class_labels(jnp.eye(3)[jnp.array([2, 0])]).tolist()
        [2, 0]
    """
    labels = jnp.asarray(labels)
    return jnp.argmax(labels, axis=-1) if labels.ndim >= 2 else labels


def accuracy(scores: jax.typing.ArrayLike, labels: jax.typing.ArrayLike) -> float:
    """Fraction of examples whose highest score is the label.

    Args:
        scores: Class scores ``(batch, C)``.
        labels: Integer labels ``(batch,)`` or one-hot ``(batch, C)``.

    Returns:
        The accuracy in ``[0, 1]`` as a Python float.

    Examples:
        >>> accuracy(jnp.eye(3), jnp.array([0, 1, 1]))
        0.666...
    """
    pred = jnp.argmax(jnp.asarray(scores), axis=-1)
    return float(jnp.mean((pred == class_labels(labels)).astype(jnp.float32)))


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
