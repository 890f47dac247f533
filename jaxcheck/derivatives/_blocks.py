"""The block engine: matrices of derivatives (Jacobians, Hessians), column by
column, and their report.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import compare, tree
from ..report import (
    CoordResult,
    GradCheckReport,
    LeafReport,
)
from ._common import (
    _BATCH_BUDGET,
    _fmt_e,
    _plural,
    _Point,
    _pow2_floor,
    _replace,
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


_fd_columns_jit = jax.jit(_fd_columns, static_argnums=(0, 1, 2))


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


_jvp_columns_jit = jax.jit(_jvp_columns, static_argnums=(0, 1, 2))


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


_vjp_rows_jit = jax.jit(_vjp_rows, static_argnums=(0, 1, 2))


def _jacrev_full(
    out_fn: Callable[..., list],
    in_idx: tuple[int, ...],
    dyn_params: list,
    dyn_args: list,
) -> list:
    def g(xs: list) -> list:
        return _ravel_all(out_fn(_replace(dyn_params, in_idx, xs), dyn_args))

    return jax.jacrev(g)([dyn_params[k] for k in in_idx])


_jacrev_full_jit = jax.jit(_jacrev_full, static_argnums=(0, 1))


@dataclasses.dataclass(frozen=True)
class BlockCheckReport(GradCheckReport):
    """A check of a matrix of derivatives (a Jacobian or a Hessian), block by block.

    It is a :class:`jaxcheck.GradCheckReport` whose "leaves" are blocks: the block
    ``d{out}/d{in}`` holds the derivatives of one output leaf with respect to one
    input leaf, with shape ``out.shape + in.shape``, and each
    :class:`jaxcheck.CoordResult` index is an output index followed by an input
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
        w = self.worst
        if w is not None:
            idx = "[" + ", ".join(str(i) for i in w[1].index) + "]"
            text += f"; worst relative error {_fmt_e(w[1].rel_error)} at {w[0]}{idx}"
        return text + "."

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of the whole report."""
        return super().to_dict() | {"kind": self.kind}


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
    """Numeric vs analytic columns of ``d out_fn / d (checked leaves)``."""
    dp, da = point.dyn_params, point.dyn_args
    checked = point.checked
    outs0 = _value_jit(out_fn, dp, da)
    g0 = [np.asarray(o, np.float64).reshape(-1) for o in outs0]
    out_sizes = [o.size for o in g0]
    out_shapes = [tuple(np.shape(o)) for o in outs0]
    out_total = max(sum(out_sizes), 1)
    total = sum(len(selections[i.pos]) for i in checked) * out_total
    if total > max_entries:
        raise ValueError(
            f"This check compares {total:,} derivative entries ({out_total:,} outputs "
            f"x {sum(len(selections[i.pos]) for i in checked):,} input coordinates), "
            f"more than `max_entries`={max_entries:,}. Sample input coordinates with "
            "`coords=k` (e.g. coords=16), or raise `max_entries`."
        )
    maxabs = [float(np.max(np.abs(o))) if o.size else 0.0 for o in g0]
    in_idx = point.checked_dyn
    jac = None
    if analytic == "jacrev":
        jac = [
            [np.asarray(blk, np.float64).reshape(out_sizes[k], -1) for blk in row]
            for k, row in enumerate(_jacrev_full_jit(out_fn, in_idx, dp, da))
        ]
    if chunk_size is None:
        chunk = _pow2_floor(min(256, _BATCH_BUDGET // (8 * 4 * out_total)))
    else:
        chunk = int(chunk_size)
    reports: list[LeafReport] = []
    h = jnp.asarray(step, jnp.float64)
    for n_in, info in enumerate(checked):
        t0 = time.perf_counter()
        a = point.dyn_pos[info.pos]
        x_flat = dp[a].reshape(-1)
        indices = selections[info.pos]
        c = max(1, min(chunk, _pow2_floor(len(indices))))
        fps: list[list[np.ndarray]] = [[] for _ in g0]
        fms: list[list[np.ndarray]] = [[] for _ in g0]
        ans: list[list[np.ndarray]] = [[] for _ in g0]
        for lo in range(0, len(indices), c):
            part = indices[lo : lo + c]
            block = np.full(c, part[0], dtype=np.int32)
            block[: len(part)] = part
            idx = jnp.asarray(block)
            plus, minus = _fd_columns_jit(out_fn, a, info.shape, x_flat, idx, h, dp, da)
            if analytic == "jvp":
                an = _jvp_columns_jit(out_fn, a, info.shape, idx, dp, da)
            elif analytic == "vjp_rows":
                an = _vjp_rows_jit(out_fn, n_in, in_idx, idx, dp, da)
            else:
                assert jac is not None
                an = [jac[k][n_in][:, block].T for k in range(len(g0))]
            for k in range(len(g0)):
                fps[k].append(np.asarray(plus[k], np.float64)[: len(part)])
                fms[k].append(np.asarray(minus[k], np.float64)[: len(part)])
                ans[k].append(np.asarray(an[k], np.float64)[: len(part)])
        x_host = np.asarray(x_flat)[indices]
        h_real = ((x_host + step) - (x_host - step))[:, None]
        seconds = (time.perf_counter() - t0) / max(len(g0), 1)
        for k in range(len(g0)):
            fp = np.concatenate(fps[k])
            fm = np.concatenate(fms[k])
            a_val = np.concatenate(ans[k])
            numeric = (fp - fm) / h_real
            rel = compare.relative_error(a_val, numeric)
            scale = np.maximum(np.maximum(np.abs(fp), np.abs(fm)), maxabs[k])
            noise = bar.noise_factor * eps * scale / h_real
            codes = compare.verdicts(a_val, numeric, noise, bar.rtol)
            flat_rel, flat_codes = rel.reshape(-1), codes.reshape(-1)
            order = np.lexsort(
                (-flat_rel, -(flat_codes == compare.WRONG).astype(np.int8))
            )
            worst = []
            for e in order[:max_worst]:
                r, j = divmod(int(e), out_sizes[k])
                worst.append(
                    CoordResult(
                        index=tree.unravel(j, out_shapes[k])
                        + tree.unravel(indices[r], info.shape),
                        analytic=float(a_val[r, j]),
                        numeric=float(numeric[r, j]),
                        rel_error=float(rel[r, j]),
                        verdict=compare.VERDICT_NAMES[flat_codes[e]],
                        f_plus=float(fp[r, j]),
                        f_minus=float(fm[r, j]),
                    )
                )
            reports.append(
                LeafReport(
                    path=block_name(k, info),
                    shape=out_shapes[k] + info.shape,
                    dtype=info.dtype,
                    num_checked=int(rel.size),
                    max_rel_error=float(rel.max()) if rel.size else 0.0,
                    band_counts=compare.band_counts(rel),
                    num_ok=int((codes == compare.OK).sum()),
                    num_wrong=int((codes == compare.WRONG).sum()),
                    num_untestable=int((codes == compare.UNTESTABLE).sum()),
                    worst=tuple(worst),
                    step=step,
                    chunk_size=c,
                    seconds=seconds,
                )
            )
    return reports
