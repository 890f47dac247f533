"""Second derivatives: differences of the gradient against Hessian products."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp

from .. import compare, tree
from ..options import callable_name, validate_callables
from ._blocks import (
    BlockCheckReport,
    _check_blocks,
)
from ._common import (
    DEFAULT_MAX_ENTRIES,
    PyTree,
    _device,
    _GradOf,
    _label,
    _prepare,
    _scalar_output,
    _untestable_note,
    _UserGradOf,
    _validate_common,
    _value_jit,
    _ValueOf,
)

SecondOrderMethod = Literal["fwd_over_rev", "rev_over_rev"]


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
    method: SecondOrderMethod = "fwd_over_rev",
    chunk_size: int | None = None,
    max_worst: int = 5,
    max_entries: int = DEFAULT_MAX_ENTRIES,
) -> BlockCheckReport:
    """Checks second derivatives: differences of the gradient against Hessian products.

    For every checked coordinate ``i`` of every leaf, the centered difference of
    the gradient function ``(g(x + h e_i) - g(x - h e_i)) / 2h`` (a column of the
    Hessian, measured) is compared entry by entry with the analytic column
    ``H e_i``: by default a forward-over-reverse Hessian-vector product
    (``jax.jvp`` of ``jax.grad``, exactly the columns of ``jax.hessian``), or with
    ``method="rev_over_rev"`` the row ``jax.grad(lambda x: jax.grad(f)(x)[i])``.
    This is what ``check_grads(..., order=2)`` runs.

    It catches backward rules that are right at first order but not
    differentiable, e.g. a ``stop_gradient`` inside a ``custom_vjp`` bwd: the
    gradient checks out, but its derivative is silently zero.

    Like :func:`jaxcheck.check_grads` it never raises on a mismatch.

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
      method: ``"fwd_over_rev"`` (default) or ``"rev_over_rev"``.
      chunk_size: coordinates per vmapped batch (default: from a memory budget).
      max_worst: worst entries kept per block.
      max_entries: refuse checks of more Hessian entries than this.

    Returns:
      a :class:`BlockCheckReport` with one block ``d2f/d{B}d{A}`` per pair of
      checked leaves; an entry's index is ``B``'s index followed by ``A``'s.

    Raises:
      TypeError: if ``f`` does not return a real floating-point scalar.
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
    if method not in ("fwd_over_rev", "rev_over_rev"):
        raise ValueError(
            f'`method` must be "fwd_over_rev" or "rev_over_rev", got {method!r}.'
        )
    _validate_common(step, max_worst, chunk_size)
    bar = compare.default_bar(rtol, noise_factor)
    t_start = time.perf_counter()
    with jax.enable_x64(True):
        point = _prepare(params, args)
        full = point.fn(f)
        out = jax.eval_shape(full, None, point.dyn_params, point.dyn_args)
        _scalar_output(out)
        f0 = float(_value_jit(_ValueOf(full), point.dyn_params, point.dyn_args))
        eps = float(jnp.finfo(out.dtype).eps)
        checked = point.checked
        if grad_fn is None:
            out_fn: Callable[..., list] = _GradOf(full, point.checked_dyn)
            source = "jax.grad"
        else:
            out_fn = _UserGradOf(grad_fn, full, tuple(i.path for i in checked))
            source = callable_name(grad_fn)
        selections = {i.pos: tree.select_coords(i, coords, seed) for i in checked}
        reports = _check_blocks(
            out_fn, point, selections, step=float(step), bar=bar,
            analytic="jvp" if method == "fwd_over_rev" else "vjp_rows",
            max_worst=max_worst, chunk_size=chunk_size, max_entries=max_entries,
            block_name=lambda k, info: (
                f"d2f/d{_label(checked[k].path, 'params')} d{_label(info.path, 'params')}"
            ), eps=eps,
        )  # fmt: skip
    how = (
        "forward-over-reverse HVP (jax.jvp of "
        if method == "fwd_over_rev"
        else "reverse-over-reverse (jax.vjp of "
    ) + f"{source})"
    notes = []
    n_untestable = sum(r.num_untestable for r in reports)
    if n_untestable:
        total = sum(r.num_checked for r in reports)
        notes.append(_untestable_note(n_untestable, total, bar))
    return BlockCheckReport(
        leaves=tuple(reports),
        skipped=point.skipped,
        rtol=bar.rtol,
        bar_reason=bar.reason,
        step=float(step),
        method="central (of the gradient)",
        dtype="float64",
        grad_source=how,
        f_value=f0,
        device=_device(),
        seconds=time.perf_counter() - t_start,
        notes=tuple(notes),
        kind="second-order",
    )
