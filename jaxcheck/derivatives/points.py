"""Checks at several parameter points at once, vmapped over them."""

from __future__ import annotations

import dataclasses
import functools
import html
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import compare, engine, tree
from ..options import callable_name, validate_callables
from ..report import GradCheckReport, LeafReport, html_headline, text_table
from ._common import (
    _BATCH_BUDGET,
    PyTree,
    _device,
    _entry_report,
    _fmt_e,
    _GradOf,
    _is_array,
    _plural,
    _Point,
    _pow2_floor,
    _prepare,
    _scalar_output,
    _to_x64,
    _UserGradOf,
    _validate_common,
    _ValueOf,
)


def stack_points(points: Sequence[PyTree]) -> PyTree:
    """Stacks parameter pytrees of one structure into one with a leading axis.

    Args:
      points: a non-empty sequence of pytrees with identical structure and shapes.

    Returns:
      one pytree whose array leaves have a new leading axis of ``len(points)``,
      as :func:`check_points` takes.

    Raises:
      ValueError: if ``points`` is empty or the structures differ.

    Examples:
      >>> import jax.numpy as jnp
      >>> stacked = stack_points([{"w": jnp.ones(3)}, {"w": jnp.zeros(3)}])
      >>> stacked["w"].shape
      (2, 3)
    """
    points = list(points)
    if not points:
        raise ValueError("`points` must hold at least one parameter pytree, got none.")
    structs = [jax.tree_util.tree_structure(p) for p in points]
    for i, s in enumerate(structs[1:], start=1):
        if s != structs[0]:
            raise ValueError(
                f"`points[{i}]` has structure {s}, but `points[0]` has {structs[0]}. "
                "Every point must be the same pytree with the same shapes."
            )
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *points)


def _points_fd(
    fn: engine.LeafFunction,
    a: int,
    idx: jax.Array,
    h: jax.Array,
    dyn_params_b: list,
    dyn_args: list,
) -> tuple[jax.Array, jax.Array]:
    def per_point(dp: list) -> tuple[jax.Array, jax.Array]:
        x_flat = dp[a].reshape(-1)

        def one(i: jax.Array) -> tuple[jax.Array, jax.Array]:
            xi = x_flat[i]
            return (
                fn(x_flat.at[i].set(xi + h), dp, dyn_args),
                fn(x_flat.at[i].set(xi - h), dp, dyn_args),
            )

        return jax.vmap(one)(idx)

    return jax.vmap(per_point)(dyn_params_b)


_points_fd_jit = jax.jit(_points_fd, static_argnums=(0, 1))


def _points_apply(fn: Callable[..., Any], dyn_params_b: list, dyn_args: list) -> Any:
    return jax.vmap(lambda dp: fn(dp, dyn_args))(dyn_params_b)


_points_apply_jit = jax.jit(_points_apply, static_argnums=0)


@dataclasses.dataclass(frozen=True)
class MultiPointReport:
    """The result of :func:`check_points`: one gradient check per parameter point.

    Attributes:
      reports: one :class:`jaxcheck.GradCheckReport` per point, in order.
      seconds: wall time of the whole check.
    """

    reports: tuple[GradCheckReport, ...]
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        """True when every point passed."""
        return all(r.passed for r in self.reports)

    @property
    def failed_points(self) -> tuple[int, ...]:
        """Indices of the points with a wrong coordinate."""
        return tuple(i for i, r in enumerate(self.reports) if not r.passed)

    def headline(self) -> str:
        """One line: the verdict and the worst point."""
        status = "PASSED" if self.passed else "FAILED"
        n = sum(r.num_checked for r in self.reports)
        text = (
            f"jaxcheck: multi-point check {status}: {_plural(len(self.reports), 'point')}, "
            f"{_plural(n, 'coordinate')} in all"
        )
        if not self.passed:
            text += f", {len(self.failed_points)} failing"
        if self.reports:
            worst = max(
                range(len(self.reports)), key=lambda i: self.reports[i].max_rel_error
            )
            text += (
                f"; worst relative error {_fmt_e(self.reports[worst].max_rel_error)} "
                f"at point {worst}"
            )
        return text + "."

    def _rows(self) -> list[list[str]]:
        return [
            [
                str(i),
                f"{r.f_value:.6g}",
                str(r.num_checked),
                _fmt_e(r.max_rel_error),
                str(r.num_wrong),
                str(r.num_untestable),
                "ok" if r.passed else "FAIL",
            ]
            for i, r in enumerate(self.reports)
        ]

    _HEADER = ("point", "f", "checked", "max rel err", "wrong", "untestable", "verdict")

    def __str__(self) -> str:
        lines = [self.headline(), *text_table([list(self._HEADER), *self._rows()])]
        for i in self.failed_points:
            lines.append(f"--- point {i} ---")
            lines.append(self.reports[i].failure_message())
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        esc = html.escape
        parts = [
            "<div>" + html_headline(self.headline(), self.passed),
            "<table><thead><tr>",
            "".join(f"<th>{esc(h)}</th>" for h in self._HEADER),
            "</tr></thead><tbody>",
        ]
        for r, row in zip(self.reports, self._rows(), strict=True):
            style = "" if r.passed else ' style="background:#ffebee"'
            parts.append(
                f"<tr{style}>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>"
            )
        parts.append("</tbody></table></div>")
        return "".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of the whole report."""
        return {
            "passed": self.passed,
            "failed_points": list(self.failed_points),
            "seconds": self.seconds,
            "points": [r.to_dict() for r in self.reports],
        }


def _coord_index(indices: np.ndarray, shape: tuple[int, ...], e: int) -> tuple:
    """The index in the leaf of the ``e``-th checked coordinate."""
    return tree.unravel(int(indices[e]), shape)


def _num_points(params_batch: PyTree) -> int:
    """The shared leading axis of the array leaves of ``params_batch``."""
    b_leaves, b_paths, _ = tree.flatten(params_batch)
    sizes = {
        (p, int(np.shape(v)[0]) if np.ndim(v) else None)
        for v, p in zip(b_leaves, b_paths, strict=True)
        if _is_array(v)
    }
    counts = {n for _, n in sizes}
    if not counts or None in counts or len(counts) != 1:
        raise ValueError(
            "Every array leaf of `params_batch` must have the same leading axis "
            f"(one entry per point); got leading sizes "
            f"{sorted((p, n) for p, n in sizes)}. Build it with "
            "`stack_points([params_0, params_1, ...])`."
        )
    return counts.pop()


def _batched_point(params_batch: PyTree, args: tuple) -> tuple[int, _Point, list]:
    """The number of points, the first point prepared, and the traced leaves of
    every point stacked (float64 where checked)."""
    num_points = _num_points(params_batch)
    first = jax.tree_util.tree_map(
        lambda v: v[0] if _is_array(v) else v,
        params_batch,
        is_leaf=lambda x: x is None,
    )
    point = _prepare(first, args)
    dpb = [
        _to_x64(v) if info.checked else jnp.asarray(v)
        for v, info in zip(tree.flatten(params_batch)[0], point.infos, strict=True)
        if _is_array(v)
    ]
    return num_points, point, dpb


def _point_grads(
    full: engine.LeafFunction,
    point: _Point,
    dpb: list,
    grad_fn: Callable[..., PyTree] | None,
    num_points: int,
) -> tuple[list[np.ndarray], str]:
    """The analytic gradient of every checked leaf at every point, as
    ``(num_points, leaf size)`` arrays, and its source."""
    da = point.dyn_args
    if grad_fn is None:
        grads = _points_apply_jit(_GradOf(full, point.checked_dyn), dpb, da)
        flat = [np.asarray(g, np.float64).reshape(num_points, -1) for g in grads]
        return flat, "jax.vmap(jax.grad)"
    user = _UserGradOf(grad_fn, full, tuple(i.path for i in point.checked))
    per = [user([v[p] for v in dpb], da) for p in range(num_points)]
    flat = [
        np.stack([np.asarray(g[k], np.float64).reshape(-1) for g in per])
        for k in range(len(point.checked))
    ]
    return flat, callable_name(grad_fn)


def _point_differences(
    fn: engine.LeafFunction,
    a: int,
    indices: np.ndarray,
    chunk: int,
    step: float,
    dpb: list,
    da: list,
) -> tuple[np.ndarray, np.ndarray]:
    """``f(x ± h e_i)`` at every point, ``(num_points, len(indices))`` each."""
    h = jnp.asarray(step, jnp.float64)
    fps, fms = [], []
    for lo in range(0, len(indices), chunk):
        part = indices[lo : lo + chunk]
        block = np.full(chunk, part[0], dtype=np.int32)
        block[: len(part)] = part
        fp, fm = _points_fd_jit(fn, a, jnp.asarray(block), h, dpb, da)
        fps.append(np.asarray(fp, np.float64)[:, : len(part)])
        fms.append(np.asarray(fm, np.float64)[:, : len(part)])
    return np.concatenate(fps, axis=1), np.concatenate(fms, axis=1)


def _point_chunk(
    chunk_size: int | None, num_points: int, info: tree.LeafInfo, n: int
) -> int:
    if chunk_size is None:
        budget = _BATCH_BUDGET // (16 * num_points * max(info.size, 1))
        chunk_size = min(_pow2_floor(max(1, budget)), 256)
    return max(1, min(chunk_size, _pow2_floor(n)))


def check_points(
    f: Callable[..., Any],
    params_batch: PyTree,
    *args: Any,
    coords: tree.CoordSpec = 8,
    grad_fn: Callable[..., PyTree] | None = None,
    step: float = 1e-5,
    seed: int = 0,
    rtol: float | None = None,
    noise_factor: float | None = None,
    max_worst: int = 5,
    chunk_size: int | None = None,
) -> MultiPointReport:
    """Checks the gradient at several parameter points at once, vmapped over them.

    A check at one point can pass a wrong gradient; checking a batch of points
    (several initialisations, points along a training run) in one compiled,
    vmapped call fills an accelerator. Every point checks the same coordinates
    (``coords`` per leaf, sampled with ``seed``) by centered differences against
    ``jax.vmap(jax.grad(f))`` (or ``grad_fn`` at each point), with the bar and
    verdicts of :func:`jaxcheck.check_grads`. Never raises on a mismatch.

    Args:
      f: the scalar function, called as ``f(params, *args)`` for one point.
      params_batch: the points, stacked: every array leaf has a leading axis of
        the number of points (see :func:`stack_points`).
      *args: held fixed, shared by every point.
      coords: coordinates per leaf and point (as in :func:`jaxcheck.check_grads`;
        default 8).
      grad_fn: a hand-written gradient, called at each point.
      step: the step ``h``.
      seed: seed of the coordinate sampling.
      rtol: the relative-error bar (default ``1e-7``).
      noise_factor: the round-off allowance in units of ``eps * |f| / h``.
      max_worst: worst coordinates kept per leaf and point.
      chunk_size: coordinates per vmapped batch.

    Returns:
      a :class:`MultiPointReport` with one :class:`jaxcheck.GradCheckReport` per
      point.

    Raises:
      ValueError: if the array leaves of ``params_batch`` do not share a leading
        axis, or for invalid options.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxcheck.derivatives import check_points, stack_points
      >>> loss = lambda p: jnp.sum(jnp.tanh(p["w"]) ** 2)
      >>> points = stack_points([{"w": jnp.full(3, s)} for s in (0.1, 0.5, 2.0)])
      >>> report = check_points(loss, points)
      >>> report.passed, len(report.reports)
      (True, 3)
    """
    validate_callables(f)
    _validate_common(step, max_worst, chunk_size)
    bar = compare.default_bar(rtol, noise_factor)
    t_start = time.perf_counter()
    with jax.enable_x64(True):
        num_points, point, dpb = _batched_point(params_batch, args)
        da = point.dyn_args
        full = point.fn(f)
        out = jax.eval_shape(full, None, point.dyn_params, da)
        _scalar_output(out)
        eps = float(jnp.finfo(out.dtype).eps)
        f0 = np.asarray(_points_apply_jit(_ValueOf(full), dpb, da), np.float64)
        grads, source = _point_grads(full, point, dpb, grad_fn, num_points)
        leaf_parts: list[list[LeafReport]] = [[] for _ in range(num_points)]
        for k, info in enumerate(point.checked):
            t0 = time.perf_counter()
            a = point.dyn_pos[info.pos]
            indices = tree.select_coords(info, coords, seed)
            c = _point_chunk(chunk_size, num_points, info, len(indices))
            fn = point.fn(f, info.pos, info.shape)
            fp, fm = _point_differences(fn, a, indices, c, float(step), dpb, da)
            x = np.asarray(dpb[a], np.float64).reshape(num_points, -1)[:, indices]
            h_real = (x + step) - (x - step)
            where = functools.partial(_coord_index, indices, info.shape)
            seconds = (time.perf_counter() - t0) / num_points
            for p in range(num_points):
                leaf_parts[p].append(
                    _entry_report(
                        info.path, info.shape, info.dtype, where, grads[k][p][indices],
                        fp[p], fm[p], h_real[p], abs(float(f0[p])), eps=eps, bar=bar,
                        step=float(step), max_worst=max_worst, chunk=c, seconds=seconds,
                    )
                )  # fmt: skip
    reports = tuple(
        GradCheckReport(
            leaves=tuple(parts), skipped=point.skipped, rtol=bar.rtol,
            bar_reason=bar.reason, step=float(step), grad_source=source,
            f_value=float(f0[p]), device=_device(),
            seconds=sum(r.seconds for r in parts),
            notes=(f"point {p} of {num_points}, checked together (vmapped)",),
        )
        for p, parts in enumerate(leaf_parts)
    )  # fmt: skip
    return MultiPointReport(reports=reports, seconds=time.perf_counter() - t_start)
