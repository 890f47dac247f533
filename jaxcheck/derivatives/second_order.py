"""Second derivatives: differences of the gradient against Hessian products."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp

from .. import compare, tree
from ..options import callable_name, validate_callables
from ._blocks import BlockCheckReport, _blocks_report, _check_blocks
from ._common import (
    DEFAULT_MAX_ENTRIES,
    PyTree,
    _GradOf,
    _label,
    _prepare,
    _scalar_output,
    _UserGradOf,
    _validate_common,
    _value_jit,
    _ValueOf,
)
from .forward import ForwardModeUnsupportedError, jvp_columns_problem

SecondOrderMethod = Literal["auto", "fwd_over_rev", "rev_over_rev"]
_METHODS = ("auto", "fwd_over_rev", "rev_over_rev")
#: The report's ``grad_source`` per analytic method, of the gradient's name.
_HOW = {
    "jvp": "forward-over-reverse HVP (jax.jvp of %s)",
    "vjp_rows": "reverse-over-reverse (jax.vjp of %s)",
}


def _validate_method(method: Any) -> None:
    if method not in _METHODS:
        raise ValueError(
            f'`method` must be "auto", "fwd_over_rev" or "rev_over_rev", got '
            f"{method!r}."
        )


def _gradient_function(
    f: Callable[..., Any], point: Any, grad_fn: Callable[..., PyTree] | None
) -> tuple[float, float, Callable[..., list], str]:
    """``f`` at the point and its eps, the gradient whose derivative is checked,
    and the gradient's name."""
    full = point.fn(f)
    out = jax.eval_shape(full, None, point.dyn_params, point.dyn_args)
    _scalar_output(out)
    f0 = float(_value_jit(_ValueOf(full), point.dyn_params, point.dyn_args))
    eps = float(jnp.finfo(out.dtype).eps)
    if grad_fn is None:
        return f0, eps, _GradOf(full, point.checked_dyn), "jax.grad"
    paths = tuple(i.path for i in point.checked)
    return f0, eps, _UserGradOf(grad_fn, full, paths), callable_name(grad_fn)


def _choose_method(
    method: str, out_fn: Callable[..., list], point: Any
) -> tuple[str, str | None]:
    """``(analytic, note)``: ``"jvp"`` (forward-over-reverse) or ``"vjp_rows"``
    (reverse-over-reverse), and a note when ``"auto"`` had to fall back."""
    if method == "rev_over_rev":
        return "vjp_rows", None
    problem = jvp_columns_problem(out_fn, point)
    if problem is None:
        return "jvp", None
    if method == "fwd_over_rev":
        raise ForwardModeUnsupportedError(
            f'`method="fwd_over_rev"` is impossible here: the gradient of {problem}. '
            'Use `method="rev_over_rev"` (or the default `method="auto"`, which '
            "falls back to it)."
        )
    return "vjp_rows", (
        "forward-over-reverse is impossible here (the gradient of "
        f"{problem}), so the analytic second derivatives are reverse-over-reverse: "
        "rows of the Hessian (jax.vjp of the gradient), compared with measured "
        "columns, which they equal wherever the gradient itself is right (check it "
        "with check_grads)"
    )


def check_second_order(
    f: Callable[..., Any],
    params: PyTree,
    *args: Any,
    grad_fn: Callable[..., PyTree] | None = None,
    coords: tree.CoordSpec = "all",
    step: float = 1e-5,
    seed: int = 0,
    rtol: float | None = None,
    noise_factor: float | None = None,
    method: SecondOrderMethod = "auto",
    chunk_size: int | None = None,
    max_worst: int = 5,
    max_entries: int = DEFAULT_MAX_ENTRIES,
) -> BlockCheckReport:
    """Checks second derivatives: differences of the gradient against Hessian products.

    For every checked coordinate ``i`` of every leaf, the centered difference of
    the gradient function ``(g(x + h e_i) - g(x - h e_i)) / 2h`` (a column of the
    Hessian, measured) is compared entry by entry with the analytic column
    ``H e_i``: a forward-over-reverse Hessian-vector product (``jax.jvp`` of
    ``jax.grad``, exactly the columns of ``jax.hessian``), or the
    reverse-over-reverse row ``jax.grad(lambda x: jax.grad(f)(x)[i])``, which
    equals the column where the gradient is right (a symmetric Hessian).

    ``method="auto"`` falls back to reverse-over-reverse (with a note) where the
    gradient has no forward mode, e.g. a ``jax.custom_vjp`` whose ``fwd`` calls
    the custom function itself (as ``jax.test_util.check_grads(order=2,
    modes=["rev"])`` does). It catches backward rules that are right at first
    order but not differentiable (a ``stop_gradient`` inside a ``custom_vjp``
    bwd: the derivative of the gradient is silently zero). It never raises on a
    mismatch; :func:`jaxcheck.check_grads` is first order only.

    Args:
      f: the scalar function, called as ``f(params, *args)``.
      params: any pytree; floating-point array leaves are checked in float64.
      *args: held fixed (batches, labels, PRNG keys).
      grad_fn: a hand-written gradient ``grad_fn(params, *args)`` whose derivative
        is checked instead of ``jax.grad(f)``'s (it must be JAX-differentiable).
      coords: which input coordinates ``i`` (as in :func:`jaxcheck.check_grads`);
        each yields a whole Hessian column over every checked leaf.
      step: the step ``h`` of the differences of the gradient.
      seed: seed of the coordinate sampling.
      rtol: the relative-error bar per Hessian entry (default ``1e-7``).
      noise_factor: the round-off allowance in units of ``eps * |g| / h``.
      method: ``"auto"`` (default: forward-over-reverse where possible, else
        reverse-over-reverse), ``"fwd_over_rev"`` or ``"rev_over_rev"``.
      chunk_size: coordinates per vmapped batch (default: from a memory budget).
      max_worst: worst entries kept per block.
      max_entries: refuse checks of more Hessian entries than this.

    Returns:
      a :class:`BlockCheckReport` with one block ``d2f/d{B}d{A}`` per pair of
      checked leaves; an entry's index is ``B``'s index followed by ``A``'s.

    Raises:
      TypeError: if ``f`` does not return a real floating-point scalar.
      ForwardModeUnsupportedError: (a ``TypeError``) with
        ``method="fwd_over_rev"`` where the gradient has no forward mode.
      ValueError: for invalid options, or a check larger than ``max_entries``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jaxcheck.derivatives import check_second_order
      >>> @jax.custom_vjp
      ... def cube(x):
      ...     return x ** 3
      >>> cube.defvjp(
      ...     lambda x: (x ** 3, x),
      ...     lambda x, g: (g * 3 * jax.lax.stop_gradient(x) ** 2,),
      ... )
      >>> loss = lambda p: jnp.sum(cube(p))
      >>> check_second_order(loss, jnp.array([1.0, 2.0])).passed
      False
    """
    validate_callables(f, grad_fn)
    _validate_method(method)
    _validate_common(step, max_worst, chunk_size)
    bar = compare.default_bar(rtol, noise_factor)
    t_start = time.perf_counter()
    with jax.enable_x64(True):
        point = _prepare(params, args)
        f0, eps, out_fn, source = _gradient_function(f, point, grad_fn)
        analytic, fallback = _choose_method(method, out_fn, point)
        checked = point.checked
        selections = {i.pos: tree.select_coords(i, coords, seed) for i in checked}
        reports = _check_blocks(
            out_fn, point, selections, step=float(step), bar=bar, analytic=analytic,
            max_worst=max_worst, chunk_size=chunk_size, max_entries=max_entries,
            block_name=lambda k, info: (
                f"d2f/d{_label(checked[k].path, 'params')} d{_label(info.path, 'params')}"
            ), eps=eps,
        )  # fmt: skip
    return _blocks_report(
        reports, point, bar, step, t_start, kind="second-order",
        method="central (of the gradient)", grad_source=_HOW[analytic] % source,
        f_value=f0,
        notes=() if fallback is None else (fallback,),
    )  # fmt: skip
