"""Vector-Jacobian products: a layer's backward pass for an upstream gradient."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..check import check_grads
from ..options import callable_name
from ..report import GradCheckReport
from ._common import PyTree, _to_x64, _validate_vector_output


@dataclasses.dataclass(frozen=True)
class _CotangentDot:
    """``(x, cotangent, *args) -> <cotangent, f(x, *args)>``, a scalar."""

    f: Callable[..., Any]

    def __call__(self, x: PyTree, cotangent: PyTree, *args: Any) -> jax.Array:
        out = jax.tree_util.tree_leaves(self.f(x, *args))
        cts = jax.tree_util.tree_leaves(cotangent)
        return sum(
            (jnp.vdot(c, o) for c, o in zip(cts, out, strict=True)),
            start=jnp.zeros((), jnp.result_type(*out)),
        )


class _UserVjp:
    """``vjp_fn`` seen as the ``grad_fn`` of ``<cotangent, f(x)>``."""

    def __init__(self, vjp_fn: Callable[..., PyTree]):
        self.vjp_fn = vjp_fn
        self.__qualname__ = callable_name(vjp_fn)

    def __call__(self, x: PyTree, cotangent: PyTree, *args: Any) -> PyTree:
        return self.vjp_fn(x, cotangent, *args)


def _check_cotangent(cotangent: PyTree, out: PyTree) -> None:
    c_leaves, c_def = jax.tree_util.tree_flatten(cotangent)
    o_leaves, o_def = jax.tree_util.tree_flatten(out)
    if c_def != o_def:
        raise ValueError(
            f"`cotangent` must have the structure of f's output, {o_def}, got "
            f"{c_def}. Pass one upstream-gradient array per output array."
        )
    for c, o in zip(c_leaves, o_leaves, strict=True):
        if tuple(np.shape(c)) != tuple(o.shape):
            raise ValueError(
                f"`cotangent` has a leaf of shape {tuple(np.shape(c))} where f's "
                f"output has shape {tuple(o.shape)}. The cotangent (upstream "
                "gradient) has the shape of the output it multiplies."
            )


def check_vjp(
    f: Callable[..., Any],
    x: PyTree,
    cotangent: PyTree | None = None,
    *args: Any,
    vjp_fn: Callable[..., PyTree] | None = None,
    seed: int = 0,
    **check_kwargs: Any,
) -> GradCheckReport:
    """Checks a vector-Jacobian product: a layer's backward pass for an upstream
    gradient.

    ``J(x)^T c`` for the cotangent (upstream gradient) ``c`` is exactly the
    gradient of the scalar ``<c, f(x)>``, so every coordinate of it is checked
    by :func:`jaxcheck.check_grads` against centered differences of
    ``<c, f(x ± h e_i)>``, with per-leaf reports. This is the notes'
    layer-by-layer check: each layer with the gradient that flows into it.

    Never raises on a mismatch: it returns a report.

    Args:
      f: the function, called as ``f(x, *args)``; returns an array or a pytree of
        floating-point arrays.
      x: the input pytree (e.g. a layer's inputs, or ``(inputs, weights)``).
      cotangent: the upstream gradient, shaped like ``f``'s output; ``None``
        draws a standard-normal one from ``seed``.
      *args: held fixed.
      vjp_fn: a hand-written backward pass ``vjp_fn(x, cotangent, *args)``
        returning a pytree shaped like ``x``; default ``jax.vjp`` of ``f`` (which
        runs every ``custom_vjp`` rule inside ``f``).
      seed: seed of the random cotangent and of the coordinate sampling.
      **check_kwargs: passed to :func:`jaxcheck.check_grads` (``coords``,
        ``step``, ``rtol``, ...).

    Returns:
      a :class:`jaxcheck.GradCheckReport` over the leaves of ``x``.

    Raises:
      TypeError: if ``f`` returns non-floating outputs.
      ValueError: if ``cotangent`` does not match ``f``'s output.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxcheck.derivatives import check_vjp
      >>> def layer(inputs):
      ...     x, W = inputs
      ...     return jnp.tanh(x @ W)
      >>> def bad_backward(inputs, g):  # forgot the derivative of tanh
      ...     x, W = inputs
      ...     return (g @ W.T, x.T @ g)
      >>> inputs = (jnp.ones((2, 3)) * 0.3, jnp.eye(3))
      >>> check_vjp(layer, inputs, jnp.ones((2, 3))).passed
      True
      >>> check_vjp(layer, inputs, jnp.ones((2, 3)), vjp_fn=bad_backward).passed
      False
    """
    if not callable(f):
        raise TypeError(f"`f` must be callable as f(x, *args), got {type(f).__name__}.")
    if "grad_fn" in check_kwargs:
        raise TypeError(
            "`check_vjp` takes the hand-written backward pass as `vjp_fn=`, not "
            "`grad_fn=`."
        )
    with jax.enable_x64(True):
        x64 = jax.tree_util.tree_map(_to_x64, x)
        args64 = tuple(jax.tree_util.tree_map(_to_x64, args))
        out = jax.eval_shape(f, x64, *args64)
        _validate_vector_output(out)
        if cotangent is None:
            rng = np.random.default_rng(seed)
            cotangent = jax.tree_util.tree_map(
                lambda o: jnp.asarray(rng.standard_normal(o.shape), jnp.float64), out
            )
        _check_cotangent(cotangent, out)
    report = check_grads(
        _CotangentDot(f), x, cotangent, *args,
        grad_fn=None if vjp_fn is None else _UserVjp(vjp_fn), seed=seed,
        **check_kwargs,
    )  # fmt: skip
    norm = math.sqrt(
        sum(float(np.sum(np.square(c))) for c in jax.tree_util.tree_leaves(cotangent))
    )
    return dataclasses.replace(
        report,
        grad_source="jax.vjp" if vjp_fn is None else report.grad_source,
        notes=report.notes
        + (
            f"vector-Jacobian product J^T c with a cotangent c of norm {norm:.4g}, "
            "checked as the gradient of <c, f(x)>.",
        ),
    )
