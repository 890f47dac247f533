"""The block engine: matrices of derivatives (Jacobians, Hessians), column by
column, and their report.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import compare, tree
from ..engine import memory
from ..report import GradCheckReport, LeafReport
from ._common import (
    _BATCH_BUDGET,
    _device,
    _entry_report,
    _plural,
    _Point,
    _pow2_floor,
    _replace,
    _untestable_note,
    _value_jit,
)


def _ravel_all(outs: Sequence[Any]) -> list[jax.Array]:
    return [jnp.ravel(o) for o in outs]


def _fd_columns(
    out_fn: Callable[..., list],
    a: int,
    shape: tuple[int, ...],
    x_flat: jax.Array,
    idx: jax.Array,
    h: jax.Array,
    dyn_params: list,
    dyn_args: list,
) -> tuple[list, list]:
    def at(xf: jax.Array) -> list:
        return _ravel_all(
            out_fn(_replace(dyn_params, [a], [xf.reshape(shape)]), dyn_args)
        )

    def one(i: jax.Array) -> tuple[list, list]:
        xi = x_flat[i]
        return at(x_flat.at[i].set(xi + h)), at(x_flat.at[i].set(xi - h))

    return jax.vmap(one)(idx)


_fd_columns_jit = memory.tiered_jit(_fd_columns, static_argnums=(0, 1, 2))


def _jvp_columns(
    out_fn: Callable[..., list],
    a: int,
    shape: tuple[int, ...],
    idx: jax.Array,
    dyn_params: list,
    dyn_args: list,
) -> list:
    size = math.prod(shape)
    xa = dyn_params[a]

    def g(v: jax.Array) -> list:
        return _ravel_all(out_fn(_replace(dyn_params, [a], [v]), dyn_args))

    def one(i: jax.Array) -> list:
        t = jnp.zeros(size, xa.dtype).at[i].set(1).reshape(shape)
        return jax.jvp(g, (xa,), (t,))[1]

    return jax.vmap(one)(idx)


_jvp_columns_jit = memory.tiered_jit(_jvp_columns, static_argnums=(0, 1, 2))


def _vjp_rows(
    out_fn: Callable[..., list],
    out_k: int,
    in_idx: tuple[int, ...],
    idx: jax.Array,
    dyn_params: list,
    dyn_args: list,
) -> list:
    def g(xs: list) -> list:
        return _ravel_all(out_fn(_replace(dyn_params, in_idx, xs), dyn_args))

    outs, pullback = jax.vjp(g, [dyn_params[k] for k in in_idx])

    def one(i: jax.Array) -> list:
        ct = [jnp.zeros_like(o) for o in outs]
        ct[out_k] = ct[out_k].at[i].set(1)
        (res,) = pullback(ct)
        return _ravel_all(res)

    return jax.vmap(one)(idx)


_vjp_rows_jit = memory.tiered_jit(_vjp_rows, static_argnums=(0, 1, 2))


def _jacrev_full(
    out_fn: Callable[..., list],
    in_idx: tuple[int, ...],
    dyn_params: list,
    dyn_args: list,
) -> list:
    def g(xs: list) -> list:
        return _ravel_all(out_fn(_replace(dyn_params, in_idx, xs), dyn_args))

    return jax.jacrev(g)([dyn_params[k] for k in in_idx])


_jacrev_full_jit = memory.tiered_jit(_jacrev_full, static_argnums=(0, 1))


@dataclasses.dataclass(frozen=True)
class BlockCheckReport(GradCheckReport):
    """A check of a matrix of derivatives (a Jacobian or a Hessian), block by block.

    It is a :class:`jaxcheck.GradCheckReport` whose "leaves" are blocks: the block
    ``d{out}/d{in}`` holds the derivatives of one output leaf with respect to one
    input leaf, with shape ``out.shape + in.shape``, and each
    :class:`jaxcheck.report.CoordResult` index is an output index followed by an input
    index. Everything else (``passed``, ``failures``, text, HTML,
    ``to_dict()``, :class:`jaxcheck.GradientCheckError`) works as for a gradient.

    Attributes:
      kind: what was checked, e.g. ``"second-order"`` or ``"Jacobian"``.
    """

    kind: str = "Jacobian"

    def headline(self) -> str:
        """One line: the verdict, what was checked, and the worst entry."""
        status = "PASSED" if self.passed else "FAILED"
        text = (
            f"jaxcheck: {self.kind} check {status}: "
            f"{_plural(len(self.leaves), 'block')}, "
            f"{_plural(self.num_checked, 'entry', 'entries')}"
        )
        if not self.passed:
            text += (
                f", {self.num_wrong:,} wrong in {_plural(len(self.failures), 'block')}"
            )
        if self.num_untestable:
            text += f", {self.num_untestable:,} untestable"
        return text + self._worst_clause("entry") + "."

    def _data(self) -> dict[str, Any]:
        return super()._data() | {"kind": self.kind}


def _block_chunk(
    out_sizes: list[int],
    selections: dict,
    checked: list,
    chunk_size: int | None,
    max_entries: int,
) -> int:
    """Input coordinates per batch; refuses a check of more than ``max_entries``."""
    out_total = max(sum(out_sizes), 1)
    n_in = sum(len(selections[i.pos]) for i in checked)
    if n_in * out_total > max_entries:
        raise ValueError(
            f"This check compares {n_in * out_total:,} derivative entries "
            f"({out_total:,} outputs x {n_in:,} input coordinates), more than "
            f"`max_entries`={max_entries:,}. Sample input coordinates with "
            "`coords=k` (e.g. coords=16), or raise `max_entries`."
        )
    if chunk_size is not None:
        return int(chunk_size)
    return _pow2_floor(min(256, _BATCH_BUDGET // (8 * 4 * out_total)))


def _leaf_columns(
    out_fn: Callable[..., list],
    point: _Point,
    n_in: int,
    indices: np.ndarray,
    analytic: str | list,
    chunk: int,
    step: float,
    n_out: int,
    options: tuple = (),
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """``f(x + h e_i)``, ``f(x - h e_i)`` and the analytic column for every
    selected coordinate ``i`` of checked leaf ``n_in``: one ``(len(indices),
    output size)`` array per output leaf each. ``analytic`` is ``"jvp"``,
    ``"vjp_rows"``, or the host Jacobian blocks of ``jax.jacrev``."""
    dp, da = point.dyn_params, point.dyn_args
    info = point.checked[n_in]
    a = point.dyn_pos[info.pos]
    x_flat = dp[a].reshape(-1)
    h = jnp.asarray(step, jnp.float64)
    parts: list[list[list[np.ndarray]]] = [[[] for _ in range(n_out)] for _ in "pma"]
    for lo in range(0, len(indices), chunk):
        part = indices[lo : lo + chunk]
        block = np.full(chunk, part[0], dtype=np.int32)
        block[: len(part)] = part
        idx = jnp.asarray(block)
        plus, minus = _fd_columns_jit(options)(
            out_fn, a, info.shape, x_flat, idx, h, dp, da
        )
        if analytic == "jvp":
            an = _jvp_columns_jit(options)(out_fn, a, info.shape, idx, dp, da)
        elif analytic == "vjp_rows":
            an = _vjp_rows_jit(options)(out_fn, n_in, point.checked_dyn, idx, dp, da)
        else:
            an = [analytic[k][n_in][:, block].T for k in range(n_out)]
        for dst, src in zip(parts, (plus, minus, an), strict=True):
            for k in range(n_out):
                dst[k].append(np.asarray(src[k], np.float64)[: len(part)])
    fps, fms, ans = ([np.concatenate(c) for c in cols] for cols in parts)
    return fps, fms, ans


def _block_index(
    out_shape: tuple[int, ...],
    indices: np.ndarray,
    in_shape: tuple[int, ...],
    e: int,
) -> tuple[int, ...]:
    """The index in a block of its flat entry ``e``: output index, then input."""
    r, j = divmod(e, max(math.prod(out_shape), 1))
    return tree.unravel(j, out_shape) + tree.unravel(int(indices[r]), in_shape)


def _check_blocks(
    out_fn: Callable[..., list],
    point: _Point,
    selections: dict[int, np.ndarray],
    *,
    step: float,
    bar: compare.Bar,
    analytic: str,
    max_worst: int,
    chunk_size: int | None,
    max_entries: int,
    block_name: Callable[[int, tree.LeafInfo], str],
    eps: float,
) -> list[LeafReport]:
    """Numeric vs analytic columns of ``d out_fn / d (checked leaves)``: one
    report per block (output leaf, checked input leaf)."""
    dp, da = point.dyn_params, point.dyn_args
    outs0 = _value_jit(out_fn, dp, da)
    # XLA options by the work of every evaluation, as a check program's.
    evaluations = 4 * sum(len(selections[info.pos]) for info in point.checked) + 1
    # The trace of the call above, from jit's cache: nothing is traced again.
    traced = _value_jit.trace(out_fn, dp, da).jaxpr.jaxpr
    work = memory.work_estimate(*memory.jaxpr_work(traced))
    options = memory.compile_options(jax.default_backend(), work * evaluations)
    out_shapes = [tuple(np.shape(o)) for o in outs0]
    out_sizes = [int(np.size(o)) for o in outs0]
    maxabs = [float(np.max(np.abs(o))) if np.size(o) else 0.0 for o in outs0]
    chunk = _block_chunk(out_sizes, selections, point.checked, chunk_size, max_entries)
    how: str | list = analytic
    if analytic == "jacrev":
        how = [
            [np.asarray(blk, np.float64).reshape(out_sizes[k], -1) for blk in row]
            for k, row in enumerate(
                _jacrev_full_jit(options)(out_fn, point.checked_dyn, dp, da)
            )
        ]
    reports: list[LeafReport] = []
    for n_in, info in enumerate(point.checked):
        t0 = time.perf_counter()
        indices = selections[info.pos]
        c = max(1, min(chunk, _pow2_floor(len(indices))))
        fps, fms, ans = _leaf_columns(
            out_fn, point, n_in, indices, how, c, step, len(outs0), options
        )
        x_host = np.asarray(dp[point.dyn_pos[info.pos]]).reshape(-1)[indices]
        h_real = ((x_host + step) - (x_host - step))[:, None]
        seconds = (time.perf_counter() - t0) / max(len(outs0), 1)
        for k in range(len(outs0)):
            where = functools.partial(_block_index, out_shapes[k], indices, info.shape)
            reports.append(
                _entry_report(
                    block_name(k, info), out_shapes[k] + info.shape, info.dtype, where,
                    ans[k], fps[k], fms[k], h_real, maxabs[k], eps=eps, bar=bar,
                    step=step, max_worst=max_worst, chunk=c, seconds=seconds,
                )
            )  # fmt: skip
    return reports


def _blocks_report(
    reports: list[LeafReport],
    point: _Point,
    bar: compare.Bar,
    step: float,
    t_start: float,
    *,
    kind: str,
    method: str,
    grad_source: str,
    f_value: float,
    notes: tuple[str, ...] = (),
) -> BlockCheckReport:
    """The :class:`BlockCheckReport` of :func:`_check_blocks`' reports, with a
    note when entries were untestable."""
    n_untestable = sum(r.num_untestable for r in reports)
    if n_untestable:
        total = sum(r.num_checked for r in reports)
        notes = (*notes, _untestable_note(n_untestable, total, bar))
    return BlockCheckReport(
        leaves=tuple(reports),
        skipped=point.skipped,
        rtol=bar.rtol,
        bar_reason=bar.reason,
        step=float(step),
        method=method,
        dtype="float64",
        grad_source=grad_source,
        f_value=f_value,
        device=_device(),
        seconds=time.perf_counter() - t_start,
        notes=notes,
        kind=kind,
    )
