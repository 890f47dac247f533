"""The whole Jacobian of a vector-valued function, block by block."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp

from .. import compare, tree
from ._blocks import BlockCheckReport, _blocks_report, _check_blocks
from ._common import (
    DEFAULT_MAX_ENTRIES,
    PyTree,
    _OutputsOf,
    _prepare,
    _validate_common,
    _validate_vector_output,
)
from .forward import ForwardModeUnsupportedError, jvp_columns_problem


def _require_forward_mode(out_fn: Any, point: Any) -> None:
    problem = jvp_columns_problem(out_fn, point)
    if problem is not None:
        raise ForwardModeUnsupportedError(
            f'`mode="fwd"` is impossible here: {problem}. Use `mode="rev"` (the '
            "default), which runs the custom_vjp rules."
        )


JacobianMode = Literal["rev", "fwd"]


def check_jacobian(
    f: Callable[..., Any],
    x: PyTree,
    *args: Any,
    coords: tree.CoordSpec = "all",
    mode: JacobianMode = "rev",
    step: float = 1e-5,
    seed: int = 0,
    rtol: float | None = None,
    noise_factor: float | None = None,
    chunk_size: int | None = None,
    max_worst: int = 5,
    max_entries: int = DEFAULT_MAX_ENTRIES,
) -> BlockCheckReport:
    """Checks the whole Jacobian of a vector-valued function, block by block.

    For every checked input coordinate ``i``, the centered difference
    ``(f(x + h e_i) - f(x - h e_i)) / 2h`` (a column of the Jacobian, for every
    output leaf) is compared entry by entry with the analytic column: from
    ``jax.jacrev`` (``mode="rev"``, which runs ``custom_vjp`` rules and
    hand-written backward passes) or from ``jax.jvp`` (``mode="fwd"``).

    Never raises on a mismatch: it returns a report.

    Args:
      f: the function, called as ``f(x, *args)``; it returns an array or a
        pytree of floating-point arrays (e.g. a layer's activations).
      x: the input pytree; its floating-point array leaves are differentiated.
      *args: held fixed.
      coords: which input coordinates (as in :func:`jaxcheck.check_grads`).
      mode: ``"rev"`` (default) or ``"fwd"``.
      step: the step ``h`` of the centered differences.
      seed: seed of the coordinate sampling.
      rtol: the relative-error bar per entry (default ``1e-7``).
      noise_factor: the round-off allowance in units of ``eps * |f| / h``.
      chunk_size: input coordinates per vmapped batch.
      max_worst: worst entries kept per block.
      max_entries: refuse checks of more Jacobian entries than this.

    Returns:
      a :class:`BlockCheckReport` with one block ``df{out}/dx{in}`` per pair of
      output and input leaves; an entry's index is the output index followed by
      the input index (the layout of ``jax.jacrev``). ``f_value`` is ``nan``.

    Raises:
      TypeError: if ``f`` returns non-floating outputs.
      ForwardModeUnsupportedError: (a ``TypeError``) with ``mode="fwd"`` where
        ``f`` has no forward mode (a ``jax.custom_vjp`` inside).
      ValueError: for invalid options, or a check larger than ``max_entries``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxcheck.derivatives import check_jacobian
      >>> layer = lambda x, W: jnp.tanh(x @ W)
      >>> report = check_jacobian(layer, jnp.ones((2, 3)), jnp.eye(3) * 0.5)
      >>> report.passed, report.leaves[0].shape
      (True, (2, 3, 2, 3))
    """
    if not callable(f):
        raise TypeError(f"`f` must be callable as f(x, *args), got {type(f).__name__}.")
    if mode not in ("rev", "fwd"):
        raise ValueError(f'`mode` must be "rev" or "fwd", got {mode!r}.')
    _validate_common(step, max_worst, chunk_size)
    bar = compare.default_bar(rtol, noise_factor)
    t_start = time.perf_counter()
    with jax.enable_x64(True):
        point = _prepare(x, args, name="x")
        full = point.fn(f)
        out = jax.eval_shape(full, None, point.dyn_params, point.dyn_args)
        _validate_vector_output(out)
        _, out_paths, _ = tree.flatten(out)
        eps = max(float(jnp.finfo(o.dtype).eps) for o in jax.tree_util.tree_leaves(out))
        if mode == "fwd":
            _require_forward_mode(_OutputsOf(full), point)
        checked = point.checked
        selections = {i.pos: tree.select_coords(i, coords, seed) for i in checked}
        reports = _check_blocks(
            _OutputsOf(full), point, selections, step=float(step), bar=bar,
            analytic="jacrev" if mode == "rev" else "jvp", max_worst=max_worst,
            chunk_size=chunk_size, max_entries=max_entries,
            block_name=lambda k, info: f"df{out_paths[k]}/dx{info.path}", eps=eps,
        )  # fmt: skip
    return _blocks_report(
        reports, point, bar, step, t_start, kind="Jacobian", method="central",
        grad_source="jax.jacrev" if mode == "rev" else "jax.jvp", f_value=math.nan,
    )  # fmt: skip
