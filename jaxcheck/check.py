"""``check_grads``, ``assert_grads`` and ``step_sweep``: the orchestration.

Data flows one way: :mod:`jaxcheck.tree` says what to perturb,
:mod:`jaxcheck.engine` evaluates, :mod:`jaxcheck.kinks` tracks the winners of
every kink-capable primitive, :mod:`jaxcheck.steps` turns values into
estimates and measures round-off, :mod:`jaxcheck.compare` judges and
:mod:`jaxcheck.report` presents.

Each checked coordinate ends in one of four verdicts:

* **ok**: within the bar for this function;
* **wrong**: outside it, by more than round-off (and, after a re-check, by
  more than truncation);
* **kink**: the finite difference crossed a non-differentiable point (the
  winners of some max/ReLU/where/sort... differ between ``x - h e_i`` and
  ``x + h e_i``). The coordinate is re-checked with smaller steps that avoid
  the kink and, failing that, against the one-sided derivatives (the analytic
  value must be a subgradient); a re-check that refutes it makes it wrong;
* **untestable**: the expected difference is below the round-off noise of
  ``f``, even at a larger step.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import compare, engine, kinks, steps, tree
from . import propagate as _propagate
from . import steps as _steps
from .report import (
    CoordResult,
    GradCheckReport,
    GradientCheckError,
    LeafReport,
    SkippedLeaf,
)

PyTree = Any

#: Show a progress bar (when ``progress=None``) for checks of at least this
#: many coordinates, if standard error is a terminal and tqdm is installed.
PROGRESS_MIN_COORDS = 200_000

#: Chunks per compiled call of the general evaluator (the winner-tracking pass
#: and every re-check of a leaf share one compilation of this shape).
EVAL_CHUNKS_PER_CALL = 16

#: Smaller steps tried, as fractions of ``h``, to step over a kink.
KINK_STEP_FRACTIONS = (1e-1, 1e-2, 1e-3)

#: Larger steps tried, as multiples of ``h``, for untestable coordinates.
RETRY_STEP_FACTORS = (1e1, 1e2, 1e3, 1e4)

#: At most this many questioned coordinates per leaf have their noise
#: measured; the others use the median of those.
MAX_NOISE_COORDS = 64

#: The loosest default bar of forward differences (their error is ``O(h)``).
FORWARD_RTOL = 1e-5

#: Raw gradients below this (in absolute value) are worth a warning (the notes:
#: "roughly 1e-10 and smaller in absolute value is worrying").
TINY_GRADIENT = 1e-10

_DTYPES = {"float64": jnp.float64, "float32": jnp.float32}


def _is_array(x: Any) -> bool:
    return isinstance(x, jax.Array | np.ndarray | np.generic)


def _cast(x: Any, dtype: Any) -> Any:
    """Floating arrays to ``dtype``; every other leaf unchanged."""
    if _is_array(x):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            return x
        if jnp.issubdtype(x.dtype, jnp.floating):
            return jnp.asarray(x, dtype=dtype)
        return jnp.asarray(x)
    return x


def _to_x64(x: Any) -> Any:
    """Floating arrays to float64; every other leaf unchanged."""
    return _cast(x, jnp.float64)


def _value(fn: engine.LeafFunction, dyn_params: list, dyn_args: list) -> jax.Array:
    return fn(None, dyn_params, dyn_args)


_value_jit = jax.jit(_value, static_argnums=0)


def _grad(
    fn: engine.LeafFunction, idx: tuple[int, ...], dyn_params: list, dyn_args: list
) -> list[jax.Array]:
    def g(checked: list) -> jax.Array:
        dp = list(dyn_params)
        for k, v in zip(idx, checked, strict=True):
            dp[k] = v
        return fn(None, dp, dyn_args)

    return jax.grad(g)([dyn_params[k] for k in idx])


_grad_jit = jax.jit(_grad, static_argnums=(0, 1))


def _callable_name(fn: Callable[..., Any]) -> str:
    return (
        getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
    )


def _validate_output(out: Any) -> None:
    shape = getattr(out, "shape", None)
    dtype = getattr(out, "dtype", None)
    if shape is None or dtype is None:
        raise TypeError(
            f"`f(params, *args)` must return a scalar array, got a "
            f"{type(out).__name__}. Return a jnp scalar, e.g. `jnp.mean(losses)`."
        )
    if tuple(shape) != ():
        raise ValueError(
            f"`f(params, *args)` must return a scalar, got shape {tuple(shape)} "
            f"({dtype}). Reduce it to a scalar (e.g. `jnp.sum(out)` or "
            "`jnp.mean(out)`), or check a vector-valued function one output at a "
            "time."
        )
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"`f(params, *args)` must return a real floating-point scalar, got "
            f"dtype {dtype}. An integer or boolean output has no gradient; a complex "
            "one needs its real part taken (e.g. `jnp.real(out)`)."
        )


def _match_grads(
    grads: PyTree, infos: list[tree.LeafInfo], grad_name: str
) -> dict[int, jax.Array]:
    """The user's gradient entries for the checked leaves, keyed by leaf position."""
    g_leaves, g_paths, _ = tree.flatten(grads)
    by_path: dict[str, Any] = {}
    for path, value in zip(g_paths, g_leaves, strict=True):
        by_path[path] = value
    known = {info.path for info in infos}
    extra = [p for p in by_path if p not in known and by_path[p] is not None]
    if extra:
        raise ValueError(
            f"`grad_fn` ({grad_name}) returned entries at paths {extra} that are not "
            f"leaves of `params` (leaves: {sorted(known)}). It must return a pytree "
            "with the same structure as `params`."
        )
    out = {}
    for info in infos:
        if not info.checked:
            continue
        if info.path not in by_path or by_path[info.path] is None:
            raise ValueError(
                f"`grad_fn` ({grad_name}) returned no gradient for leaf {info.path} "
                f"(shape {info.shape}). It must return a pytree with the same "
                "structure as `params`, one array per floating-point leaf."
            )
        value = by_path[info.path]
        shape = tuple(np.shape(value))
        if shape != info.shape:
            raise ValueError(
                f"`grad_fn` ({grad_name}) returned shape {shape} for leaf "
                f"{info.path}, but the leaf has shape {info.shape}. A gradient has "
                "the shape of its parameter (a transposed gradient is a common cause)."
            )
        if not jnp.issubdtype(np.asarray(value).dtype, jnp.inexact):
            raise TypeError(
                f"`grad_fn` ({grad_name}) returned dtype {np.asarray(value).dtype} "
                f"for leaf {info.path}; a gradient must be floating point."
            )
        out[info.pos] = value
    return out


def _progress_bar(total: int, progress: bool | None) -> Any:
    show = progress
    if show is None:
        # In a multi-process cluster every process runs the check: one bar.
        show = (
            total >= PROGRESS_MIN_COORDS
            and sys.stderr.isatty()
            and jax.process_index() == 0
        )
    if not show:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        if progress:
            raise ImportError(
                "`progress=True` needs tqdm: install it with "
                "`pip install 'jaxcheck[progress]'`."
            ) from None
        return None
    return tqdm(total=total, unit="coord", desc="jaxcheck", leave=False)


# --------------------------------------------------------------------------- #
# The point: f seen as functions of its leaves, and what its jaxpr says.
# --------------------------------------------------------------------------- #


@dataclasses.dataclass
class _Point:
    f: Callable[..., Any]
    infos: list[tree.LeafInfo]
    checked: list[tree.LeafInfo]
    skipped: tuple[SkippedLeaf, ...]
    p_treedef: Any
    num_params: int
    static_params: dict[int, Any]
    dyn_params: list
    a_treedef: Any
    num_args: int
    static_args: dict[int, Any]
    dyn_args: list
    dyn_pos: dict[int, int]
    dtype: Any
    out_dtype: Any = None
    analysis: kinks.KinkAnalysis = dataclasses.field(default_factory=kinks.KinkAnalysis)

    def leaf_fn(
        self, pos: int | None, shape: tuple[int, ...] = ()
    ) -> engine.LeafFunction:
        return engine.LeafFunction(
            self.f, self.p_treedef, self.num_params, self.static_params,
            self.a_treedef, self.num_args, self.static_args, pos, shape,
        )  # fmt: skip

    @property
    def full(self) -> engine.LeafFunction:
        return self.leaf_fn(None)

    def x_flat(self, info: tree.LeafInfo) -> jax.Array:
        return self.dyn_params[self.dyn_pos[info.pos]].reshape(-1)


def _prepare(f: Callable[..., Any], params: PyTree, args: tuple, dtype: Any) -> _Point:
    p_leaves, infos, p_treedef = tree.leaf_infos(params)
    checked = [info for info in infos if info.checked]
    skipped = tuple(
        SkippedLeaf(i.path, i.reason, i.dtype, i.shape) for i in infos if not i.checked
    )
    if not checked:
        listing = "; ".join(f"{s.path}: {s.reason}" for s in skipped) or "none"
        raise ValueError(
            "`params` has no floating-point array leaf to check (leaves: "
            f"{listing}). Pass the parameters as float arrays, e.g. "
            "`jnp.asarray(w, jnp.float32)`."
        )
    # Dynamic (traced) leaves are arrays; everything else is closed over.
    p_leaves = [
        _cast(v, dtype) if info.checked else v
        for v, info in zip(p_leaves, infos, strict=True)
    ]
    static_params = {i: v for i, v in enumerate(p_leaves) if not _is_array(v)}
    dyn_params = [v for v in p_leaves if _is_array(v)]
    a_leaves, a_treedef = jax.tree_util.tree_flatten(args, is_leaf=lambda x: x is None)
    a_leaves = [_cast(v, dtype) for v in a_leaves]
    static_args = {i: v for i, v in enumerate(a_leaves) if not _is_array(v)}
    dyn_args = [v for v in a_leaves if _is_array(v)]
    dyn_pos = {}  # leaf position -> index among dynamic params
    for i in range(len(p_leaves)):
        if i not in static_params:
            dyn_pos[i] = len(dyn_pos)
    point = _Point(
        f, infos, checked, skipped, p_treedef, len(p_leaves), static_params,
        dyn_params, a_treedef, len(a_leaves), static_args, dyn_args, dyn_pos, dtype,
    )  # fmt: skip
    # The jaxpr's inputs are the dynamic params, then the dynamic args.
    sources = tuple(point.dyn_pos[i.pos] for i in checked)

    def trace_and_analyse() -> tuple[Any, kinks.KinkAnalysis]:
        closed = jax.make_jaxpr(point.full)(None, dyn_params, dyn_args)
        if len(closed.out_avals) != 1:
            _validate_output(jax.eval_shape(point.full, None, dyn_params, dyn_args))
        out = closed.out_avals[0]
        _validate_output(out)
        return out.dtype, kinks.analyze_jaxpr(closed, sources, check_dtype=dtype)

    key = (
        "analysis", point.full, sources, str(jnp.dtype(dtype)),
        engine.avals_of((dyn_params, dyn_args)),
    )  # fmt: skip
    point.out_dtype, point.analysis = engine.cached(key, trace_and_analyse)
    return point


def _analytic(
    point: _Point, grad_fn: Callable[..., PyTree] | None
) -> tuple[str, dict[int, np.ndarray]]:
    if grad_fn is None:
        grad_name = "jax.grad"
        idx = tuple(point.dyn_pos[i.pos] for i in point.checked)
        g_list = _grad_jit(point.full, idx, point.dyn_params, point.dyn_args)
        analytic = {info.pos: g for info, g in zip(point.checked, g_list, strict=True)}
    else:
        grad_name = _callable_name(grad_fn)
        user_params, user_args = point.full.rebuild(point.dyn_params, point.dyn_args)
        grads = grad_fn(user_params, *user_args)
        analytic = _match_grads(grads, point.infos, grad_name)
    return grad_name, {
        k: np.asarray(v).astype(np.float64).reshape(-1) for k, v in analytic.items()
    }


def _not_finite_error(
    info: tree.LeafInfo, bad: np.ndarray, indices: np.ndarray, h: float, f0: float
) -> ValueError:
    where = [
        f"{info.path}{list(tree.unravel(i, info.shape))}" for i in indices[bad][:10]
    ]
    return ValueError(
        f"`f` is not finite at {int(bad.sum())} perturbed point(s) "
        f"x ± h·e_i with h={h:g}, e.g. at {', '.join(where)} (f = "
        f"{f0:.6g} at the point itself). The point is within h of the "
        "edge of f's domain (log, sqrt, division): pass a smaller `step` "
        "or move the point away from the edge."
    )


# --------------------------------------------------------------------------- #
# One leaf.
# --------------------------------------------------------------------------- #


@dataclasses.dataclass
class _Settings:
    method: str
    step: float | str
    bar: compare.Bar
    eps: float
    max_worst: int
    track: bool
    chunk_size: int | None
    budget: int
    platform: str
    seed: int
    propagate: bool = True


class _Leaf:
    """The check of one leaf: main pass, kink re-checks, noise, retries."""

    def __init__(
        self,
        point: _Point,
        info: tree.LeafInfo,
        k: int,
        indices: np.ndarray,
        analytic: np.ndarray,
        f0: float,
        cfg: _Settings,
    ):
        self.point, self.info, self.cfg = point, info, cfg
        self.indices = indices
        self.n = self.num_selected = len(indices)
        self.stopped = False  # Ctrl-C in the main pass
        self.f0 = f0
        self.x_flat = point.x_flat(info)
        self.x_host = np.asarray(self.x_flat)[indices]
        self.a = analytic[indices]
        self.fn = point.leaf_fn(info.pos, info.shape)
        self.tracked = cfg.track and point.analysis.leaf_sites.get(k, 0) > 0
        self.tracker: kinks.WinnerTracker | None = None
        if self.tracked:
            self.tracker = kinks.winner_tracker(
                self.fn, self.x_flat, point.dyn_params, point.dyn_args
            )
            self.tracked = self.tracker.num_sites > 0
        # Perturbation propagation (jaxcheck.propagate): the same values of
        # f(x ± h e_i), computed from the structure of the leaf's linear consumers.
        self.block: Callable[..., Any] | None = None
        self.evaluator: Callable[..., Any] | None = None
        self.propagation = "off (propagate=False)"
        if cfg.propagate:
            target = self.tracker if self.tracked else self.fn
            pargs = (target, self.x_flat, point.dyn_params, point.dyn_args)
            if self.tracked:
                self.evaluator = _propagate.make_propagated_evaluator(
                    *pargs, num_coords=self.n
                )
            else:
                self.block = _propagate.make_propagated_block(*pargs, num_coords=self.n)
            self.propagation = _propagate.propagation_plan(*pargs, num_coords=self.n)
        self.propagated = self.block is not None or self.evaluator is not None
        if cfg.chunk_size is not None:
            self.chunk = cfg.chunk_size
        else:
            if self.propagated:
                target = self.tracker if self.evaluator is not None else self.fn
                per = _propagate.bytes_per_coordinate(
                    target, self.x_flat, point.dyn_params, point.dyn_args
                )
            else:
                per = engine.bytes_per_coordinate(
                    self.fn, self.x_flat, point.dyn_params, point.dyn_args
                )
            self.chunk = engine.choose_chunk_size(per, self.n, cfg.budget, cfg.platform)
        # (In a cluster each process holds its share of the rows.)
        rows = engine.rows_per_process(self.n + 1)
        self.per_call = min(EVAL_CHUNKS_PER_CALL, -(-rows // self.chunk))
        self.main_shapes: tuple[int, ...] = ()
        self.w0: np.ndarray | None = None
        self.changed = np.zeros(self.n, dtype=np.int64)
        self.f_center = f0
        self.sigma = np.zeros(self.n)
        self.noise_median = math.nan
        self.sigma_measured = False

    # -- evaluation ---------------------------------------------------------
    def rows(
        self, idx: np.ndarray, deltas: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Values (and words, when tracked) at ``x + deltas[r, k] e_{idx[r]}``;
        ``deltas[:, 1]`` must be ``-deltas[:, 0]`` unless the leaf is tracked."""
        if self.tracked:
            return engine.evaluate(
                self.tracker, self.x_flat, idx, deltas, self.point.dyn_params,
                self.point.dyn_args, chunk_size=self.chunk,
                chunks_per_call=self.per_call, evaluator=self.evaluator,
            )  # fmt: skip
        fp, fm = engine.central_differences(
            self.fn, self.x_flat, idx, deltas[:, 0], self.point.dyn_params,
            self.point.dyn_args, chunk_size=self.chunk,
            chunks_per_call=self.slow_shape(len(idx)), block=self.block,
        )  # fmt: skip
        return np.stack([fp, fm], axis=1), None, None

    def keep_finished(self, rows_done: int, num_mults: int) -> np.ndarray:
        """After Ctrl-C in the main pass: keeps the coordinates whose rows all
        finished (rows are ordered multiplier by multiplier) and returns those
        rows; re-raises when none did."""
        n = self.n
        j = min(n, max(0, rows_done - (num_mults - 1) * n))
        if j == 0:
            raise KeyboardInterrupt
        self.stopped = True
        self.indices, self.n = self.indices[:j], j
        self.x_host, self.a = self.x_host[:j], self.a[:j]
        self.changed, self.sigma = self.changed[:j], self.sigma[:j]
        return np.concatenate([np.arange(m * n, m * n + j) for m in range(num_mults)])

    def slow_shape(self, num_rows: int) -> int | None:
        """Chunks per call for a follow-up evaluation: the smallest shape the
        main pass compiled that holds ``num_rows`` (no new compilation)."""
        if not self.main_shapes:
            return None
        need = -(-engine.rows_per_process(num_rows) // self.chunk)
        fits = [s for s in self.main_shapes if s >= need]
        return min(fits) if fits else max(self.main_shapes)

    def symmetric(self, sel: np.ndarray, hs: np.ndarray) -> tuple:
        """``f(x +- hs[j, r] e_i)`` for the coordinates ``sel``: ``hs`` has shape
        ``(J, len(sel))``. Returns ``(plus, minus, w_plus, w_minus, changed)`` of
        shapes ``(len(sel), J)`` (words ``(len(sel), J, S)``; ``changed``, the
        decisions that differ between the two points, ``(len(sel), J)``)."""
        J = hs.shape[0]
        idx = np.tile(self.indices[sel], J)
        d = hs.reshape(-1)
        vals, words, counts = self.rows(idx, np.stack([d, -d], axis=1))
        m = len(sel)
        plus = vals[:, 0].reshape(J, m).T
        minus = vals[:, 1].reshape(J, m).T
        if words is None:
            return plus, minus, None, None, None
        S = words.shape[-1]
        wp = words[:, 0].reshape(J, m, S).transpose(1, 0, 2)
        wm = words[:, 1].reshape(J, m, S).transpose(1, 0, 2)
        changed = counts.sum(axis=-1).reshape(J, m).T
        return plus, minus, wp, wm, changed

    def same_region(self, w: np.ndarray | None) -> np.ndarray:
        """Whether words ``(..., S)`` equal the words at ``x``."""
        if w is None or self.w0 is None:
            return np.ones(w.shape[:-1] if w is not None else (), dtype=bool)
        return np.all(w == self.w0, axis=-1)

    def offs(self, sel: np.ndarray, d: np.ndarray) -> np.ndarray:
        return steps.offsets(self.x_host[sel], d, self.point.dtype)

    # -- the check ------------------------------------------------------------
    def run(self, on_progress: Callable[[int], None] | None) -> LeafReport:
        t0 = time.perf_counter()
        cfg = self.cfg
        method = cfg.method
        mults = steps.multipliers(method)
        n = self.n
        h = self.choose_h() if cfg.step == "auto" else float(cfg.step)
        self.h = h
        center_rows = 1 if self.tracked else 0
        f_center = self.f0
        if not self.tracked:
            idx = np.tile(self.indices, len(mults))
            d = np.repeat(np.asarray(mults, float) * h, n)
            self.main_shapes = engine.call_shapes(
                engine.rows_per_process(len(idx)), self.chunk
            )
            try:
                fp, fm = engine.central_differences(
                    self.fn, self.x_flat, idx, d if len(mults) > 1 else h,
                    self.point.dyn_params, self.point.dyn_args, chunk_size=self.chunk,
                    on_progress=None if on_progress is None or len(mults) > 1
                    else on_progress, block=self.block,
                )  # fmt: skip
            except engine.Interrupted as stop:
                rows = self.keep_finished(len(stop.done[0]), len(mults))
                fp, fm = stop.done[0][rows], stop.done[1][rows]
                n = self.n
            if on_progress is not None and len(mults) > 1:
                on_progress(n)
            f_plus = fp.reshape(len(mults), n).T
            f_minus = fm.reshape(len(mults), n).T
            w_plus = w_minus = None
        else:
            idx = np.concatenate(
                [np.tile(self.indices, len(mults)), self.indices[:center_rows]]
            )
            d = np.concatenate(
                [np.repeat(np.asarray(mults, float) * h, n), np.zeros(center_rows)]
            )
            try:
                vals, words, counts = self.rows(idx, np.stack([d, -d], axis=1))
            except engine.Interrupted as stop:
                rows = self.keep_finished(len(stop.done[0]), len(mults))
                n = self.n
                # The point itself (the last row) was not reached: one more row.
                center = self.rows(self.indices[:1], np.zeros((1, 2)))
                vals, words, counts = (
                    None if part is None else np.concatenate([part[rows], c])
                    for part, c in zip(stop.done, center, strict=True)
                )
            if on_progress is not None:
                on_progress(n)
            main = vals[: n * len(mults)]
            f_plus = main[:, 0].reshape(len(mults), n).T
            f_minus = main[:, 1].reshape(len(mults), n).T
            w_plus = w_minus = None
            if words is not None:
                S = words.shape[-1]
                self.w0 = words[-1, 0]
                f_center = float(vals[-1, 0])
                wmain = words[: n * len(mults)]
                w_plus = wmain[:, 0].reshape(len(mults), n, S).transpose(1, 0, 2)
                w_minus = wmain[:, 1].reshape(len(mults), n, S).transpose(1, 0, 2)
                self.changed = counts[:n].sum(axis=-1)
        self.f_center = f_center
        bad = ~(np.isfinite(f_plus) & np.isfinite(f_minus)).all(axis=1)
        if bad.any():
            raise _not_finite_error(self.info, bad, self.indices, h, self.f0)
        deltas = np.asarray(mults, float)[None, :] * h * np.ones((n, 1))
        off_p = self.offs(np.arange(n), deltas)
        off_m = self.offs(np.arange(n), -deltas)
        numeric, weight = steps.estimate(
            method, f_center, f_plus, f_minus, off_p, off_m
        )
        scale = np.maximum(
            np.maximum(np.abs(f_plus), np.abs(f_minus)).max(axis=1), abs(f_center)
        )
        self.weight, self.scale = weight, scale
        noise = steps.noise_allowance(weight, scale, cfg.eps, cfg.bar.noise_factor)
        codes = compare.verdicts(self.a, numeric, noise, cfg.bar.rtol)
        rel = compare.relative_error(self.a, numeric)
        self.numeric, self.rel, self.codes = numeric, rel, codes
        self.f_plus1, self.f_minus1 = f_plus[:, 0], f_minus[:, 0]
        self.coord_step = np.full(n, np.nan)
        self.resolution = np.full(n, "", dtype=object)
        self.kink_label = np.full(n, "", dtype=object)
        self.confirmed = np.zeros(n, dtype=bool)

        # Kinks: winners that differ between x - h, x and x + h.
        kink_sites: dict[str, int] = {}
        if w_plus is not None:
            differs = (w_plus != w_minus) | (w_plus != self.w0) | (w_minus != self.w0)
            per_site = differs.any(axis=1)  # (n, S)
            crossed = per_site.any(axis=1)
            labels = [s.label for s in self.tracker.sites]
            for s, label in enumerate(labels):
                count = int(per_site[:, s].sum())
                if count:
                    kink_sites[label] = count
            for j in np.flatnonzero(crossed):
                names = [labels[s] for s in np.flatnonzero(per_site[j])]
                self.kink_label[j] = "; ".join(names[:2]) + (
                    f"; {len(names) - 2} more" if len(names) > 2 else ""
                )
            if crossed.any():
                self.recheck_kinks(np.flatnonzero(crossed), f_plus, f_minus, w_plus,
                                   w_minus)  # fmt: skip
        self.kink_sites = kink_sites

        # Round-off: a wrong verdict must stand against the measured noise of f.
        wrong = np.flatnonzero((self.codes == compare.WRONG) & (self.kink_label == ""))
        if len(wrong):
            self.rejudge_with_noise(wrong)
        untestable = np.flatnonzero(
            (self.codes == compare.UNTESTABLE) & (self.kink_label == "")
        )
        num_retried = len(untestable)
        if num_retried:
            self.retry_larger(untestable)
        return self.report(time.perf_counter() - t0, num_retried)

    # -- step="auto" ----------------------------------------------------------
    def choose_h(self) -> float:
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, self.info.pos, 7])
        sample = np.sort(rng.choice(self.n, size=min(4, self.n), replace=False))
        mults = steps.multipliers(cfg.method)
        ladder = np.asarray(steps.AUTO_STEPS)
        hs = (ladder[:, None, None] * np.asarray(mults, float)[None, :, None]).reshape(
            -1, 1
        ) * np.ones((1, len(sample)))
        if not self.tracked:
            # The main pass's call shapes: the ladder compiles nothing new.
            self.main_shapes = engine.call_shapes(
                engine.rows_per_process(self.n * len(mults)), self.chunk
            )
        if self.tracked and self.w0 is None:
            _, words, _ = self.rows(self.indices[:1], np.zeros((1, 2)))
            self.w0 = words[0, 0]
        plus, minus, wp, wm, _ = self.symmetric(sample, hs)
        K, M = len(ladder), len(mults)
        plus = plus.reshape(len(sample), K, M)
        minus = minus.reshape(len(sample), K, M)
        est = np.full((len(sample), K), np.nan)
        for j in range(K):
            d = (
                ladder[j]
                * np.asarray(mults, float)[None, :]
                * np.ones((len(sample), 1))
            )
            est[:, j], _ = steps.estimate(
                cfg.method, self.f0, plus[:, j], minus[:, j],
                self.offs(sample, d), self.offs(sample, -d),
            )  # fmt: skip
        valid = np.ones_like(est, dtype=bool)
        if wp is not None:
            wp = wp.reshape(len(sample), K, M, -1)
            wm = wm.reshape(len(sample), K, M, -1)
            valid = (self.same_region(wp) & self.same_region(wm)).all(axis=-1)
        h, _ = steps.choose_step(ladder, est, valid)
        if not math.isfinite(h):
            h = steps.default_step(cfg.method, cfg.eps)
        return h

    # -- kinks ----------------------------------------------------------------
    def recheck_kinks(
        self,
        J: np.ndarray,
        f_plus: np.ndarray,
        f_minus: np.ndarray,
        w_plus: np.ndarray,
        w_minus: np.ndarray,
    ) -> None:
        cfg, h = self.cfg, self.h
        rtol, nf = cfg.bar.rtol, cfg.bar.noise_factor
        self.codes[J] = compare.KINK
        self.rel[J] = np.nan
        # Stage A: centered differences with steps small enough to stay on one
        # side of the kink (all winners as at x).
        fracs = np.asarray(KINK_STEP_FRACTIONS)
        hs = (fracs[:, None] * h) * np.ones((1, len(J)))
        plus, minus, wp, wm, _ = self.symmetric(J, hs)
        todo = np.ones(len(J), dtype=bool)
        # A disagreement at a small step must stand against the measured noise.
        suspects: list[tuple[int, float, float, float]] = []
        for j, frac in enumerate(fracs):
            ok_region = self.same_region(wp[:, j]) & self.same_region(wm[:, j]) & todo
            if not ok_region.any():
                continue
            sel = np.flatnonzero(ok_region)
            d = np.full((len(sel), 1), frac * h)
            num, weight = steps.estimate(
                "central", self.f_center, plus[sel, j : j + 1], minus[sel, j : j + 1],
                self.offs(J[sel], d), self.offs(J[sel], -d),
            )  # fmt: skip
            sc = np.maximum(np.maximum(np.abs(plus[sel, j]), np.abs(minus[sel, j])),
                            abs(self.f_center))  # fmt: skip
            noise = steps.noise_allowance(weight, sc, cfg.eps, nf)
            codes = compare.verdicts(self.a[J[sel]], num, noise, rtol)
            for k in np.flatnonzero(codes != compare.UNTESTABLE):
                q, g = sel[k], J[sel[k]]
                self.numeric[g] = num[k]
                self.rel[g] = float(compare.relative_error(self.a[g], num[k]))
                self.coord_step[g] = frac * h
                if codes[k] == compare.OK:
                    self.confirmed[g] = True
                    self.resolution[g] = (
                        f"smaller step {frac * h:.0e} avoids the kink: agrees"
                    )
                else:
                    self.codes[g] = compare.WRONG
                    self.resolution[g] = (
                        f"smaller step {frac * h:.0e} avoids the kink and still "
                        "disagrees"
                    )
                    suspects.append((q, num[k], weight[k], sc[k]))
                todo[q] = False
        if suspects:
            sigma = self.reference_noise(J)
            if sigma > 0:
                for q, num_q, w_q, sc_q in suspects:
                    g = J[q]
                    allow = steps.noise_allowance(w_q, sc_q, cfg.eps, nf, sigma)
                    if abs(self.a[g] - num_q) <= allow:  # round-off: not decided
                        self.codes[g] = compare.KINK
                        self.rel[g] = np.nan
                        self.coord_step[g] = np.nan
                        self.resolution[g] = ""
                        todo[q] = True
        rest = np.flatnonzero(todo)
        if not len(rest):
            return
        # Stage B: one-sided derivatives from three points on each side, at h and
        # at h/10, where the three points share their winners.
        R = J[rest]
        scales = [(1.0, None), (KINK_STEP_FRACTIONS[0], 0)]
        left = np.full(len(R), np.nan)
        right = np.full(len(R), np.nan)
        lweight, rweight = np.zeros(len(R)), np.zeros(len(R))
        lscale, rscale = np.zeros(len(R)), np.zeros(len(R))
        lstep = np.full(len(R), np.nan)
        rstep = np.full(len(R), np.nan)
        extra = np.concatenate([[2.0, 3.0], [2.0 * scales[1][0], 3.0 * scales[1][0]]])
        hs_b = (extra[:, None] * h) * np.ones((1, len(R)))
        pb, mb, wpb, wmb, _ = self.symmetric(R, hs_b)
        for si, (frac, col) in enumerate(scales):
            if col is None:  # at h: the main pass gave x +- h
                p1, m1 = f_plus[R, 0], f_minus[R, 0]
                wp1, wm1 = w_plus[R, 0], w_minus[R, 0]
            else:
                p1, m1 = plus[rest, col], minus[rest, col]
                wp1, wm1 = wp[rest, col], wm[rest, col]
            p2, p3 = pb[:, 2 * si], pb[:, 2 * si + 1]
            m2, m3 = mb[:, 2 * si], mb[:, 2 * si + 1]
            right_ok = np.all(wp1 == wpb[:, 2 * si], -1) & np.all(
                wp1 == wpb[:, 2 * si + 1], -1
            )
            left_ok = np.all(wm1 == wmb[:, 2 * si], -1) & np.all(
                wm1 == wmb[:, 2 * si + 1], -1
            )
            t = frac * h * np.array([1.0, 2.0, 3.0])[None, :] * np.ones((len(R), 1))
            tp, tm = self.offs(R, t), self.offs(R, -t)
            r_val, r_w = steps.one_sided(np.stack([p1, p2, p3], 1), tp)
            l_val, l_w = steps.one_sided(np.stack([m1, m2, m3], 1), tm)
            sc = np.maximum.reduce([np.abs(p1), np.abs(m1), np.abs(p3), np.abs(m3)])
            take_r = right_ok & ~np.isfinite(right)
            take_l = left_ok & ~np.isfinite(left)
            right = np.where(take_r, r_val, right)
            left = np.where(take_l, l_val, left)
            rweight = np.where(take_r, r_w, rweight)
            lweight = np.where(take_l, l_w, lweight)
            rscale = np.where(take_r, sc, rscale)
            lscale = np.where(take_l, sc, lscale)
            rstep = np.where(take_r, frac * h, rstep)
            lstep = np.where(take_l, frac * h, lstep)

        def judge(sigma: float) -> tuple[np.ndarray, np.ndarray]:
            rn = steps.noise_allowance(rweight, rscale, cfg.eps, nf, sigma)
            ln = steps.noise_allowance(lweight, lscale, cfg.eps, nf, sigma)
            return compare.subgradient_verdicts(self.a[R], left, right, ln, rn, rtol)

        sigma = self.noise_median if math.isfinite(self.noise_median) else 0.0
        codes, dist = judge(sigma)
        if (codes == compare.WRONG).any() and not math.isfinite(self.noise_median):
            # A refutation must stand against the measured noise of f.
            codes, dist = judge(self.reference_noise(J))
        # Outside [left, right] refutes the gradient only when one decision
        # changed: with several kinks crossed at once, each may take its own
        # side and the valid values are a sum of intervals, not [left, right].
        many = self.changed[R] > 1
        codes = np.where((codes == compare.WRONG) & many, compare.UNTESTABLE, codes)
        for q, g in enumerate(R):
            L, Rv = left[q], right[q]
            sides = (f"left {L:+.6e}" if np.isfinite(L) else "left unknown") + (
                f", right {Rv:+.6e}" if np.isfinite(Rv) else ", right unknown"
            )
            step_q = np.nanmax([lstep[q], rstep[q]]) if np.isfinite(
                [lstep[q], rstep[q]]).any() else np.nan  # fmt: skip
            self.coord_step[g] = step_q
            if codes[q] == compare.KINK:
                self.confirmed[g] = True
                self.rel[g] = dist[q]
                both = np.isfinite(L) and np.isfinite(Rv)
                mid = np.nanmean([L, Rv]) if both else (L if np.isfinite(L) else Rv)
                self.numeric[g] = mid if both else mid
                self.resolution[g] = (
                    f"one-sided derivatives ({sides}) bracket it: a subgradient"
                    if both
                    else f"matches the one-sided derivative ({sides})"
                )
            elif codes[q] == compare.WRONG:
                self.codes[g] = compare.WRONG
                self.rel[g] = dist[q]
                self.numeric[g] = L if abs(self.a[g] - L) < abs(self.a[g] - Rv) else Rv
                self.resolution[g] = (
                    f"outside the one-sided derivatives ({sides}): not a subgradient"
                )
            elif many[q] and np.isfinite(L) and np.isfinite(Rv):
                self.resolution[g] = (
                    f"undecided: outside the one-sided derivatives ({sides}), but "
                    f"{int(self.changed[g])} decisions changed at once"
                )
            else:
                self.resolution[g] = (
                    f"undecided: one-sided derivatives {sides} (kinks too close)"
                )

    # -- noise and larger steps -------------------------------------------------
    def reference_noise(self, crossed: np.ndarray) -> float:
        """The median noise of ``f`` along up to 8 coordinates of this leaf that
        cross no kink (or along crossed ones when there are none)."""
        if self.sigma_measured and math.isfinite(self.noise_median):
            return self.noise_median
        free = np.setdiff1d(np.arange(self.n), crossed)
        sel = (free if len(free) else crossed)[:8]
        idx, deltas = self.noise_rows(sel)
        vals, words, _ = self.rows(idx, deltas)
        sig = self.noise_from(sel, vals, words)
        sigma = float(np.nanmedian(sig)) if np.isfinite(sig).any() else 0.0
        if sigma > 0:
            self.noise_median = sigma
        return sigma

    def noise_rows(self, sel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``(idx, deltas)`` of the noise estimate along coordinates ``sel``."""
        offs = steps.noise_offsets(self.x_host[sel])  # (m, num, 2)
        return np.repeat(self.indices[sel], offs.shape[1]), offs.reshape(-1, 2)

    def noise_from(
        self, sel: np.ndarray, vals: np.ndarray, words: np.ndarray | None
    ) -> np.ndarray:
        """The noise estimates of ``sel`` from the values of :meth:`noise_rows`
        (NaN where a kink lies within the points)."""
        m = len(sel)
        plus = vals[:, 0].reshape(m, -1)
        minus = vals[:, 1].reshape(m, -1)
        sig = steps.noise_from_rows(self.f_center, plus, minus)
        if words is not None and self.w0 is not None:
            same = np.all(words == self.w0, axis=-1).reshape(m, -1).all(axis=1)
            sig = np.where(same, sig, np.nan)
        return sig

    def measure_noise(self, Q: np.ndarray) -> None:
        sel = Q[:MAX_NOISE_COORDS]
        idx, deltas = self.noise_rows(sel)
        vals, words, _ = self.rows(idx, deltas)
        self.set_noise(Q, self.noise_from(sel, vals, words))

    def set_noise(self, Q: np.ndarray, sig: np.ndarray) -> None:
        """Records measured noise for ``Q[:len(sig)]``; the rest get the median."""
        fill = float(np.nanmedian(sig)) if np.isfinite(sig).any() else 0.0
        self.sigma[Q[: len(sig)]] = np.where(np.isfinite(sig), sig, fill)
        self.sigma[Q[len(sig) :]] = fill
        self.sigma_measured = True
        self.noise_median = fill if np.isfinite(sig).any() else math.nan

    def rejudge_with_noise(self, Q: np.ndarray) -> None:
        """Measures the noise along ``Q`` and re-judges their main-pass estimates."""
        cfg = self.cfg
        self.measure_noise(Q)
        noise = steps.noise_allowance(
            self.weight[Q], self.scale[Q], cfg.eps, cfg.bar.noise_factor, self.sigma[Q]
        )
        self.codes[Q] = compare.verdicts(
            self.a[Q], self.numeric[Q], noise, cfg.bar.rtol
        )

    def retry_larger(self, U: np.ndarray) -> None:
        """Retries untestable coordinates with larger steps: the 4-point stencil
        at ``10 h``, then, for those still unresolved, at ``100 h``, ``1000 h``
        and ``10**4 h`` (at most a tenth of ``max(1, |x_i|)``). The ladder is
        dense because a small gradient whose curvature is large (a sum over a
        batch that nearly cancels) is resolved only between round-off, which
        falls with the step, and truncation, which grows with it."""
        h = self.h
        cap = 0.1 * np.maximum(1.0, np.abs(self.x_host[U]))
        done = np.zeros(len(U), dtype=bool)
        last_h = np.full(len(U), h)
        bigs = np.minimum(h * np.asarray(RETRY_STEP_FACTORS)[:, None], cap[None, :])
        rungs = bigs > np.concatenate([np.full((1, len(U)), h), bigs[:-1]])
        rung_of, pos_of = np.nonzero(rungs)
        pair_big = bigs[rung_of, pos_of]
        num_rungs = len(RETRY_STEP_FACTORS)
        # Calls are padded to the main pass's shape: when every rung fits in one
        # call, one call costs what a call per rung would; else rung by rung, for
        # the coordinates still open.
        capacity = self.chunk * max(self.main_shapes or (self.per_call,))
        fits = engine.rows_per_process(2 * len(pair_big)) <= capacity
        groups = [range(num_rungs)] if fits else [[r] for r in range(num_rungs)]
        lad = types.SimpleNamespace(
            rung_of=rung_of, pos_of=pos_of, big=pair_big, w_plus=None, w_minus=None,
            plus=np.full((len(pair_big), 2), np.nan),
            minus=np.full((len(pair_big), 2), np.nan),
            best=np.full((len(U), 3), np.nan),  # rel error, estimate, step
            truncated=np.zeros(len(U), dtype=bool),  # at the last rung tried
        )  # fmt: skip
        for group in groups:
            todo = np.flatnonzero(np.isin(rung_of, list(group)) & ~done[pos_of])
            if len(todo):
                big_t = pair_big[todo]
                p, m, wp, wm, _ = self.symmetric(
                    U[pos_of[todo]], np.stack([big_t, 2 * big_t])
                )
                lad.plus[todo], lad.minus[todo] = p, m
                if wp is not None:
                    if lad.w_plus is None:
                        lad.w_plus = np.zeros((len(pair_big), *wp.shape[1:]), wp.dtype)
                        lad.w_minus = np.zeros_like(lad.w_plus)
                    lad.w_plus[todo], lad.w_minus[todo] = wp, wm
            for r in group:
                self.judge_rung(r, lad, U, done, last_h)
        self.explain_unresolved(U, done, last_h, lad.best, lad.truncated)

    def judge_rung(
        self, r: int, lad: Any, U: np.ndarray, done: np.ndarray, last_h: np.ndarray
    ) -> None:
        """Judges the coordinates still open at rung ``r`` of the retry ladder
        (``lad``: the rung and position of every evaluated pair, its step, and
        ``f`` at ``x ± step e_i`` and ``x ± 2 step e_i``, with the words)."""
        cfg = self.cfg
        rtol, nf = cfg.bar.rtol, cfg.bar.noise_factor
        pairs = np.flatnonzero((lad.rung_of == r) & ~done[lad.pos_of])
        if not len(pairs):
            return
        sel = lad.pos_of[pairs]
        g, big = U[sel], lad.big[pairs]
        last_h[sel] = big
        p, m = lad.plus[pairs], lad.minus[pairs]
        wp = None if lad.w_plus is None else lad.w_plus[pairs]
        wm = None if lad.w_minus is None else lad.w_minus[pairs]
        d = np.stack([big, 2 * big], 1)
        op, om = self.offs(g, d), self.offs(g, -d)
        num, weight = steps.estimate("four_point", self.f_center, p, m, op, om)
        with np.errstate(divide="ignore", invalid="ignore"):
            d1 = (p[:, 0] - m[:, 0]) / (op[:, 0] - om[:, 0])
            d2 = (p[:, 1] - m[:, 1]) / (op[:, 1] - om[:, 1])
        trunc = np.abs(d1 - d2)
        sc = np.maximum(np.maximum(np.abs(p), np.abs(m)).max(1), abs(self.f_center))
        same = np.ones(len(g), dtype=bool)
        if wp is not None:
            same = (self.same_region(wp) & self.same_region(wm)).all(axis=1)
        rel = compare.relative_error(self.a[g], num)
        diff = np.abs(self.a[g] - num)

        plausible = same & (rel > rtol) & np.isfinite(num)
        noise = steps.noise_allowance(weight, sc, cfg.eps, nf, self.sigma[g])
        wrong = plausible & (diff > 2.0 * (noise + trunc))
        if wrong.any() and not self.sigma_measured:
            # A refutation must stand against the measured noise of f.
            self.measure_noise(g[wrong])
            noise = steps.noise_allowance(weight, sc, cfg.eps, nf, self.sigma[g])
            wrong = plausible & (diff > 2.0 * (noise + trunc))
        ok = same & (rel <= rtol)
        lad.truncated[sel] = trunc > noise
        # The closest estimate of the rungs that decide nothing, for the report.
        open_ = same & ~(ok | wrong) & np.isfinite(rel)
        better = open_ & ~(rel >= lad.best[sel, 0])
        lad.best[sel[better]] = np.stack([rel, num, big], 1)[better]
        for k in np.flatnonzero(ok | wrong):
            gi = g[k]
            self.numeric[gi] = num[k]
            self.rel[gi] = rel[k]
            self.coord_step[gi] = big[k]
            self.codes[gi] = compare.OK if ok[k] else compare.WRONG
            self.resolution[gi] = (
                f"retried with a larger step {big[k]:.0e} (4-point): "
                + ("resolved, agrees" if ok[k] else
                   "differs by more than round-off and truncation")
            )  # fmt: skip
            done[sel[k]] = True
        for k in np.flatnonzero(~same):
            if not self.resolution[g[k]]:
                self.resolution[g[k]] = f"a larger step {big[k]:.0e} crosses a kink"

    def explain_unresolved(
        self,
        U: np.ndarray,
        done: np.ndarray,
        last_h: np.ndarray,
        best: np.ndarray,
        truncated: np.ndarray,
    ) -> None:
        """Says why each retried coordinate that no rung decided stays untestable;
        keeps the closest estimate of the retries when it beats the main pass's."""
        for q in np.flatnonzero(~done):
            gi = U[q]
            best_note = ""
            if np.isfinite(best[q, 0]):
                best_note = (
                    f"; the closest estimate, rel {best[q, 0]:.1e}, came at "
                    f"h={best[q, 2]:.0e} (4-point)"
                )
                if not best[q, 0] >= self.rel[gi]:
                    self.rel[gi], self.numeric[gi] = best[q, 0], best[q, 1]
                    self.coord_step[gi] = best[q, 2]
            a = abs(self.a[gi])
            hint = ""
            f_abs = abs(self.f_center)
            if a > 0 and f_abs > 0 and a < 1e-6 * f_abs:
                hint = (
                    f"; |a|/|f| = {a / f_abs:.0e}: f is dominated by terms this "
                    "coordinate barely moves; check the terms it enters separately "
                    "or subtract the rest (scaling the whole loss does not help)"
                )
            elif 0 < a < TINY_GRADIENT:
                factor = 10.0 ** round(-math.log10(a))
                hint = f"; scale the loss by ~{factor:.0e} to bring it near 1"
            noise = f", noise of f {self.sigma[gi]:.1e}" if self.sigma[gi] > 0 else ""
            if self.resolution[gi]:
                continue
            if truncated[q]:
                # At the largest step truncation, not round-off, was the limit.
                self.resolution[gi] = (
                    f"not resolved by larger steps up to h={last_h[q]:.0e} (round-off "
                    f"limits small steps, truncation large ones){best_note}: "
                    f"|a|={a:.1e} against f={self.f_center:.3e}{noise}{hint}"
                )
            else:
                self.resolution[gi] = (
                    f"below round-off even at h={last_h[q]:.0e}: |a|={a:.1e} against "
                    f"f={self.f_center:.3e}{noise}{hint}"
                )

    # -- report -------------------------------------------------------------------
    def report(self, seconds: float, num_retried: int) -> LeafReport:
        cfg, info = self.cfg, self.info
        codes, rel = self.codes, self.rel
        is_kink = codes == compare.KINK
        finite = np.isfinite(rel)
        scored = ~is_kink | (is_kink & self.confirmed)
        rel_scored = np.where(scored & finite, rel, np.nan)
        order = np.lexsort(
            (-np.nan_to_num(rel, nan=-1.0), -(codes == compare.WRONG).astype(np.int8))
        )
        non_kink = [j for j in order if codes[j] != compare.KINK]
        kink_rows = [j for j in np.argsort(self.confirmed, kind="stable") if is_kink[j]]

        def coord(j: int) -> CoordResult:
            return CoordResult(
                index=tree.unravel(self.indices[j], info.shape),
                analytic=float(self.a[j]),
                numeric=float(self.numeric[j]),
                rel_error=float(rel[j]),
                verdict=compare.VERDICT_NAMES[codes[j]],
                f_plus=float(self.f_plus1[j]),
                f_minus=float(self.f_minus1[j]),
                kink=str(self.kink_label[j]),
                step=float(self.coord_step[j]),
                resolution=str(self.resolution[j]),
            )

        valid = rel_scored[np.isfinite(rel_scored)]
        return LeafReport(
            path=info.path,
            shape=info.shape,
            dtype=info.dtype,
            num_checked=self.n,
            max_rel_error=float(valid.max()) if len(valid) else 0.0,
            band_counts=compare.band_counts(valid),
            num_ok=int((codes == compare.OK).sum()),
            num_wrong=int((codes == compare.WRONG).sum()),
            num_untestable=int((codes == compare.UNTESTABLE).sum()),
            worst=tuple(coord(j) for j in non_kink[: cfg.max_worst]),
            step=self.h,
            chunk_size=int(self.chunk),
            seconds=seconds,
            num_kink=int(is_kink.sum()),
            num_kink_confirmed=int((is_kink & self.confirmed).sum()),
            kink_sites=self.kink_sites,
            kinks=tuple(coord(j) for j in kink_rows[: cfg.max_worst]),
            tracked=bool(self.tracked),
            num_retried=num_retried,
            propagated=self.propagated,
            propagation=self.propagation,
            noise=float(self.noise_median),
            num_kink_crossed=int((self.kink_label != "").sum()),
            num_selected=self.num_selected,
            interrupted=self.stopped,
        )


# --------------------------------------------------------------------------- #
# The public functions.
# --------------------------------------------------------------------------- #


def validate_callables(f: Any, grad_fn: Any = None) -> None:
    """Raises a TypeError naming ``f`` or ``grad_fn`` when it is not callable."""
    if not callable(f):
        raise TypeError(
            f"`f` must be callable as f(params, *args), got {type(f).__name__}."
        )
    if grad_fn is not None and not callable(grad_fn):
        raise TypeError(
            f"`grad_fn` must be callable as grad_fn(params, *args) or None, got "
            f"{type(grad_fn).__name__}."
        )


def _validate_common(
    f: Callable[..., Any],
    grad_fn: Callable[..., PyTree] | None,
    step: Any,
    method: str,
    dtype: str,
) -> tuple[str, Any]:
    validate_callables(f, grad_fn)
    if not (
        step is None
        or step == "auto"
        or (
            isinstance(step, int | float | np.floating)
            and not isinstance(step, bool)
            and math.isfinite(step)
            and step > 0
        )
    ):
        raise ValueError(
            f'`step` must be a positive finite number, "auto" or None, got '
            f"{step!r}. A typical value in float64 is 1e-5 (cube root of machine "
            "epsilon, times the scale of the parameters)."
        )
    method = steps.canonical_method(method)
    if dtype not in _DTYPES:
        raise ValueError(
            f"`dtype` must be one of {sorted(_DTYPES)}, got {dtype!r}. The check "
            'runs in float64 by default; "float32" shows what a single-precision '
            "check would say."
        )
    return method, _DTYPES[dtype]


def check_grads(
    f: Callable[..., Any],
    params: PyTree,
    *args: Any,
    grad_fn: Callable[..., PyTree] | None = None,
    coords: tree.CoordSpec = "all",
    step: float | str | None = None,
    seed: int = 0,
    rtol: float | None = None,
    noise_factor: float | None = None,
    memory_budget: int | None = None,
    chunk_size: int | None = None,
    max_worst: int = 5,
    progress: bool | None = None,
    method: str = "central",
    track_kinks: bool = True,
    strict: bool = False,
    dtype: str = "float64",
    propagate: bool = True,
    burn_in: int = 0,
    burn_in_options: Mapping[str, Any] | None = None,
    datapoints: int | None = None,
    datapoints_options: Mapping[str, Any] | None = None,
    check_determinism: bool = False,
    order: int = 1,
    modes: Sequence[str] = ("rev",),
) -> Any:
    """Checks the gradient of ``f`` with respect to ``params`` against finite
    differences, coordinate by coordinate, in float64.

    For every checked coordinate ``i`` of every floating-point leaf, the numeric
    derivative ``(f(x + h e_i) - f(x - h e_i)) / 2h`` is compared with the
    analytic gradient by the relative error ``|a - n| / max(|a|, |n|)``. The
    perturbed evaluations are batched with ``jax.vmap`` and compiled with
    ``jax.jit``, one leaf at a time, in chunks sized from ``memory_budget``.

    Every coordinate ends **ok**, **wrong**, **kink** or **untestable**:

    * when ``f`` has kink-capable primitives (max, ReLU, ``where``, abs, sort,
      pooling, ``cond``...), their winners are tracked at ``x - h e_i``, ``x`` and
      ``x + h e_i`` in the same batches; a coordinate whose winners change
      crossed a kink: it is re-checked with smaller steps that avoid the kink,
      else against the one-sided derivatives (a subgradient passes), and is
      counted as a kink unless the re-check finds it wrong;
    * a coordinate whose difference is within the round-off noise of ``f``
      (measured at the point) is retried with larger steps and, if it still
      cannot be resolved, reported untestable with its raw values;
    * ``report.passed`` is True when no coordinate is wrong; kinks and
      untestable coordinates are counted and shown (``strict=True`` fails on
      untestable ones).

    The bar depends on ``f``: ``1e-7`` for a smooth function, ``1e-4`` when a
    kink-capable primitive depends on the parameters, ``10 sqrt(eps)`` when
    ``f`` computes in float32 inside; ``report.bar_reason`` says which.

    Unlike ``jax.test_util.check_grads``, this function never raises on a
    mismatch: it returns a report. Use :func:`assert_grads` in tests.

    Args:
      f: the scalar function, called as ``f(params, *args)``.
      params: any pytree. Floating-point array leaves are checked (in float64,
        whatever their dtype); integer, bool, complex, PRNG-key and non-array
        leaves and ``None`` are left alone and listed in ``report.skipped``.
      *args: held fixed (batches, labels, PRNG keys). Floating-point arrays among
        them are cast to float64 too.
      grad_fn: the analytic gradient to check, called as
        ``grad_fn(params, *args)`` and returning a pytree shaped like ``params``.
        Default: ``jax.grad(f)`` over the checked leaves, which exercises every
        ``custom_vjp`` / ``custom_jvp`` rule inside ``f``.
      coords: ``"all"`` checks every coordinate; an int ``k`` checks ``k``
        coordinates sampled from every leaf (biases too; a leaf with at most
        ``k`` entries is checked whole); a dict maps leaf paths to ``"all"``, an
        int, or explicit indices.
      step: the step ``h``: a number, ``"auto"`` (chosen per leaf where the
        estimate is most stable over a ladder of steps), or ``None``: 1e-5 for
        centered differences in float64 (the optimum of each method otherwise,
        e.g. ``eps**(1/3)`` when ``f`` computes in float32).
      seed: seed of the coordinate sampling.
      rtol: the relative-error bar; default chosen from ``f`` (see above).
      noise_factor: the round-off allowance in units of ``eps * |f| / h``; a
        coordinate outside ``rtol`` but within this allowance (or within the
        measured noise) is untestable, not wrong.
      memory_budget: bytes one batch of perturbed evaluations may use; default
        from the device (see :func:`jaxcheck.engine.default_memory_budget`).
      chunk_size: coordinates per batch; overrides the budget-derived size.
      max_worst: how many worst coordinates (and kink examples) each leaf
        report keeps.
      progress: show a progress bar (needs tqdm); ``None`` shows one for long
        checks when standard error is a terminal.
      method: ``"central"`` (default), ``"forward"`` (for comparison only: its
        error is ``O(h)``) or ``"four_point"`` (``"richardson"``: the
        ``O(h**4)`` centered stencil).
      track_kinks: track the winners of kink-capable primitives (default). With
        ``False`` a crossed kink shows up as a large error.
      strict: make untestable coordinates fail the check.
      dtype: ``"float64"`` (default) or ``"float32"``: run the whole check,
        gradient and finite differences, in single precision, to see why double
        precision matters.
      propagate: evaluate ``f(x ± h e_i)`` by perturbation propagation where it
        pays off (:mod:`jaxcheck.propagate`): what does not depend on the leaf is
        computed once, and the perturbation travels through the leaf's linear
        consumers (matmuls, convolutions, sums, gathers) as a small delta. Same
        values up to round-off; ``False`` uses the plain vmapped engine for every
        leaf. ``report`` says which leaves used it.
      burn_in: run this many optimisation steps of ``f`` first and check at the
        point reached (the notes' "characteristic mode"); see
        :func:`jaxcheck.burn_in`, whose keywords go in ``burn_in_options``.
      burn_in_options: keywords of :func:`jaxcheck.burn_in` (``learning_rate``,
        ``optimizer``, ``on_failure``).
      datapoints: cut the batch arguments to this many examples first (see
        :func:`jaxcheck.take_datapoints`; its keywords go in
        ``datapoints_options``); the report records the cut.
      datapoints_options: keywords of :func:`jaxcheck.take_datapoints`.
      check_determinism: evaluate ``f`` and its gradient twice first and raise
        :class:`jaxcheck.NondeterminismError` when they differ.
      order: 2 also checks second derivatives (Hessian entries against finite
        differences of the gradient).
      modes: ``("rev",)`` (default), or with ``"fwd"`` to check forward mode too.

    ``f`` may also be a dict of loss terms (``{"data": f_data, "reg": f_reg}``)
    or a function returning one: each term and their sum are checked separately
    (see :func:`jaxcheck.check_loss_terms`).

    Returns:
      a :class:`GradCheckReport`: ``report.passed``, a table per leaf in
      ``str(report)``, HTML in Jupyter, ``report.to_dict()`` for JSON. With loss
      terms, a :class:`jaxcheck.LossTermsReport`; with ``order=2`` or extra
      ``modes``, a :class:`jaxcheck.ModesReport` (one report per mode/order).

    Raises:
      TypeError: if ``f`` does not return a real floating-point scalar, or
        ``grad_fn`` returns non-floating entries.
      ValueError: if no leaf can be checked, ``f`` is not finite at the point or
        at a perturbed point, ``grad_fn`` returns a differently shaped tree, or
        ``coords``/``step``/``rtol``/``method``/``dtype`` are invalid.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxcheck
      >>> def loss(params, x):
      ...     return jnp.sum(jnp.tanh(x @ params["W"] + params["b"]) ** 2)
      >>> params = {"W": jnp.ones((3, 2)) * 0.1, "b": jnp.zeros(2)}
      >>> report = jaxcheck.check_grads(loss, params, jnp.ones((4, 3)))
      >>> report.passed
      True
      >>> [leaf.path for leaf in report.leaves]
      ["['W']", "['b']"]

      A ReLU at exactly zero is a kink, not a bug:

      >>> r = jaxcheck.check_grads(lambda w: jnp.sum(jax.nn.relu(w)), jnp.zeros(3))
      >>> r.passed, r.num_kink, r.rtol
      (True, 3, 0.0001)
    """
    from . import protocol  # late import: protocol calls check_grads

    if (
        burn_in
        or datapoints is not None
        or check_determinism
        or order != 1
        or tuple([modes] if isinstance(modes, str) else modes) != ("rev",)
        or protocol.is_loss_terms(f, params, *args)
    ):
        return protocol.run_protocol(
            f, params, *args, burn_in=burn_in, burn_in_options=burn_in_options,
            datapoints=datapoints, datapoints_options=datapoints_options,
            check_determinism=check_determinism, order=order, modes=modes,
            grad_fn=grad_fn, coords=coords, step=step, seed=seed, rtol=rtol,
            noise_factor=noise_factor, memory_budget=memory_budget,
            chunk_size=chunk_size, max_worst=max_worst, progress=progress,
            method=method, track_kinks=track_kinks, strict=strict, dtype=dtype,
            propagate=propagate,
        )  # fmt: skip
    method, target = _validate_common(f, grad_fn, step, method, dtype)
    if not isinstance(max_worst, int) or max_worst < 0:
        raise ValueError(f"`max_worst` must be an int >= 0, got {max_worst!r}.")
    compare.default_bar(rtol, noise_factor)  # validates
    if memory_budget is not None and (
        not isinstance(memory_budget, int) or memory_budget <= 0
    ):
        raise ValueError(
            f"`memory_budget` must be a positive number of bytes, got {memory_budget!r}."
        )
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"`chunk_size` must be an int >= 1, got {chunk_size!r}.")

    t_start = time.perf_counter()
    with jax.enable_x64(target == jnp.float64):
        return _check(
            f, params, args, grad_fn, coords, step, seed, rtol, noise_factor,
            memory_budget, chunk_size, max_worst, progress, method, track_kinks,
            strict, target, t_start, propagate,
        )  # fmt: skip


def _settings(
    point: _Point,
    rtol: float | None,
    noise_factor: float | None,
    step: Any,
    method: str,
    track_kinks: bool,
    max_worst: int,
    chunk_size: int | None,
    memory_budget: int | None,
    seed: int,
) -> tuple[_Settings, list[str], str]:
    analysis = point.analysis
    eps_check = float(jnp.finfo(point.dtype).eps)
    eps = eps_check
    low: tuple[str, float] | None = None
    precision = ""
    notes: list[str] = []
    low_dtypes = list(analysis.low_precision_dtypes)
    if jnp.dtype(point.out_dtype).itemsize < jnp.dtype(point.dtype).itemsize:
        low_dtypes.append(str(point.out_dtype))
    if low_dtypes:
        eps = max(eps, *(float(jnp.finfo(jnp.dtype(d)).eps) for d in low_dtypes))
        names = "/".join(sorted(set(low_dtypes)))
        low = (names, eps)
        precision = f"{names} inside"
        where = "; ".join(s.label for s in analysis.low_precision[:3])
        notes.append(
            f"f computes in {names} inside even though the check runs in "
            f"{jnp.dtype(point.dtype).name}"
            + (f" ({where})" if where else " (it returns that dtype)")
            + f": its round-off is about {eps:.0e} relative, so errors near "
            f"{10 * math.sqrt(eps):.0e} are expected in a correct gradient and the "
            "bar and step are set for it. Remove the cast to see a float64 check."
        )
    elif point.dtype != jnp.float64:
        low = (f"{jnp.dtype(point.dtype).name} (the check's dtype)", eps)
        precision = f"check in {jnp.dtype(point.dtype).name}"
    kink_text = analysis.summary() if analysis.has_kinks else ""
    bar = compare.choose_bar(
        rtol, noise_factor, kinks=kink_text, low_precision=low, depth=analysis.depth
    )
    if method == "forward" and rtol is None and bar.rtol < FORWARD_RTOL:
        bar = compare.Bar(
            FORWARD_RTOL,
            bar.reason.split(";")[0].split(" (relative error")[0]
            + "; forward differences have an O(h) truncation error, so the bar is "
            f"{FORWARD_RTOL:g} (use the default centered differences for a tighter "
            "check)",
            bar.noise_factor,
        )
    if step is None:
        step_value: float | str = steps.default_step(method, eps)
    else:
        step_value = step if step == "auto" else float(step)
    device = jax.local_devices()[0]
    budget = (
        memory_budget
        if memory_budget is not None
        else engine.default_memory_budget(device)
    )
    cfg = _Settings(
        method=method, step=step_value, bar=bar, eps=eps, max_worst=max_worst,
        track=track_kinks, chunk_size=chunk_size, budget=budget,
        platform=device.platform, seed=seed,
    )  # fmt: skip
    if analysis.opaque:
        notes.append(
            "f calls primitives jaxcheck cannot see into ("
            + ", ".join(sorted({s.primitive for s in analysis.opaque}))
            + "): kinks inside them are not detected, so a coordinate that crosses "
            "one may be reported wrong."
        )
    if analysis.untracked:
        notes.append(
            "f has kink-capable primitives whose winners are not tracked ("
            + ", ".join(sorted({s.primitive for s in analysis.untracked}))
            + ")."
        )
    if analysis.has_kinks and not track_kinks:
        notes.append(
            "winner tracking is off (`track_kinks=False`): a coordinate that crosses "
            "a kink shows up as a large error."
        )
    return cfg, notes, precision


def _check(
    f: Callable[..., Any],
    params: PyTree,
    args: tuple,
    grad_fn: Callable[..., PyTree] | None,
    coords: tree.CoordSpec,
    step: Any,
    seed: int,
    rtol: float | None,
    noise_factor: float | None,
    memory_budget: int | None,
    chunk_size: int | None,
    max_worst: int,
    progress: bool | None,
    method: str,
    track_kinks: bool,
    strict: bool,
    target: Any,
    t_start: float,
    propagate: bool = True,
) -> GradCheckReport:
    point = _prepare(f, params, args, target)
    # A cluster shares the coordinates of one check: the same point everywhere,
    # and the values every decision depends on taken from process 0.
    engine.require_same_inputs([*point.dyn_params, *point.dyn_args])
    f0 = float(
        engine.from_process_zero(
            [np.float64(_value_jit(point.full, point.dyn_params, point.dyn_args))]
        )[0]
    )
    if not math.isfinite(f0):
        raise ValueError(
            f"`f(params, *args)` is {f0} at the given point, so nothing can be "
            "checked. Check the inputs (a log of 0, a division by 0, an overflow) "
            "or move to a point where f is finite."
        )
    cfg, notes, precision = _settings(
        point, rtol, noise_factor, step, method, track_kinks, max_worst, chunk_size,
        memory_budget, seed,
    )  # fmt: skip
    cfg.propagate = bool(propagate)
    grad_name, analytic = _analytic(point, grad_fn)
    analytic = dict(
        zip(analytic, engine.from_process_zero(list(analytic.values())), strict=True)
    )

    selections = {
        info.pos: tree.select_coords(info, coords, seed) for info in point.checked
    }
    total = int(sum(len(s) for s in selections.values()))
    device = jax.local_devices()[0]
    bar_ui = _progress_bar(total, progress)

    leaf_reports = []
    noise_floor = math.nan
    interrupted: tuple[str, ...] = ()
    try:
        for k, info in enumerate(point.checked):
            leaf = _Leaf(
                point, info, k, selections[info.pos], analytic[info.pos], f0, cfg
            )
            try:
                report = leaf.run(None if bar_ui is None else bar_ui.update)
            except KeyboardInterrupt:
                # Ctrl-C: keep what was checked, say what was not.
                if not leaf_reports:
                    raise
                interrupted = tuple(i.path for i in point.checked[k:])
                break
            leaf_reports.append(report)
            if math.isfinite(report.noise):
                noise_floor = (
                    report.noise
                    if not math.isfinite(noise_floor)
                    else max(noise_floor, report.noise)
                )
            if report.interrupted:
                # Ctrl-C inside this leaf: its finished coordinates are judged.
                interrupted = tuple(i.path for i in point.checked[k:])
                break
    finally:
        if bar_ui is not None:
            bar_ui.close()

    eps_check = float(jnp.finfo(target).eps)
    if (
        not precision
        and math.isfinite(noise_floor)
        and noise_floor > 1e4 * eps_check * max(abs(f0), 1.0 if f0 == 0 else 0.0)
    ):
        precision = "noise like a lower precision (measured)"
        relative = f" ({noise_floor / abs(f0):.0e} relative to f)" if f0 else ""
        notes.append(
            f"the measured round-off noise of f is {noise_floor:.1e}{relative}, far "
            "above "
            f"{jnp.dtype(target).name} round-off: f may compute in float32 somewhere "
            "jaxcheck cannot see (a callback, a kernel), or sum many large terms that "
            "cancel. Coordinates within that noise are untestable, not wrong."
        )
    notes.extend(_summary_notes(leaf_reports, total, cfg, f0))
    if interrupted:
        partial = [r for r in leaf_reports if r.interrupted]
        cut = (
            f"{partial[0].path} was stopped after {partial[0].num_checked:,} of its "
            f"{partial[0].num_selected:,} coordinates (those are judged above); "
            if partial
            else ""
        )
        rest = [p for p in interrupted if not partial or p != partial[0].path]
        unchecked = (
            "the leaves " + ", ".join(rest) + " were not checked; " if rest else ""
        )
        notes.insert(
            0,
            f"interrupted (Ctrl-C): {cut}{unchecked}the report covers only what was "
            "checked and does not pass.",
        )
    return GradCheckReport(
        leaves=tuple(leaf_reports),
        skipped=point.skipped,
        rtol=cfg.bar.rtol,
        bar_reason=cfg.bar.reason,
        step=leaf_reports[0].step if cfg.step == "auto" else float(cfg.step),
        method=method,
        dtype=jnp.dtype(target).name,
        grad_source=grad_name,
        f_value=f0,
        device=f"{device.platform}:{device.id}",
        seconds=time.perf_counter() - t_start,
        notes=tuple(notes),
        kink_sites=tuple(s.label for s in point.analysis.sites),
        untracked=tuple(s.label for s in point.analysis.untracked),
        opaque=tuple(s.label for s in point.analysis.opaque),
        precision=precision,
        noise_floor=noise_floor,
        strict=strict,
        depth=point.analysis.depth,
        step_rule="auto" if cfg.step == "auto" else "fixed",
        interrupted=interrupted,
    )


def _summary_notes(
    leaf_reports: list[LeafReport], total: int, cfg: _Settings, f0: float
) -> list[str]:
    notes = []
    n_untestable = sum(r.num_untestable for r in leaf_reports)
    if n_untestable:
        all_untestable = n_untestable == total
        notes.append(
            (
                "EVERY checked coordinate"
                if all_untestable
                else f"{n_untestable:,} coordinate" + ("s" if n_untestable > 1 else "")
            )
            + " had a difference within round-off noise of the finite difference "
            f"(|a - n| <= {cfg.bar.noise_factor:g}·eps·|f|/h, or the measured noise of "
            "f), also when retried with larger steps: they are neither confirmed nor "
            "refuted. Round-off is relative to |f|: a gradient tiny against |f| is "
            "resolved by checking the terms it comes from separately or subtracting "
            "the part of f that does not depend on it, not by scaling the loss."
        )
    n_kink = sum(r.num_kink for r in leaf_reports)
    if n_kink:
        confirmed = sum(r.num_kink_confirmed for r in leaf_reports)
        notes.append(
            f"{n_kink:,} coordinates crossed a kink (the winners of a max/ReLU/where/"
            "sort... differ between x - h·e_i and x + h·e_i): they are not failures. "
            f"{confirmed:,} were confirmed by a re-check with a smaller step or "
            "against the one-sided derivatives; the others are undecided."
        )
    for r in leaf_reports:
        largest = max((abs(c.analytic) for c in r.worst + r.kinks), default=0.0)
        name = r.path or "params"
        if not (0 < largest and r.num_untestable):
            continue
        if largest < 1e-6 * abs(f0):
            notes.append(
                f"the gradients of {name} are tiny compared with f (|a| <= "
                f"{largest:.1e} against f = {f0:.3g}): f is dominated by terms they "
                "barely move. Check those terms separately (e.g. "
                "`jaxcheck.check_loss_terms`) or subtract the constant part of f."
            )
        elif largest < TINY_GRADIENT:
            notes.append(
                f"the raw gradients of {name} are tiny (|a| <= {largest:.1e}; the "
                "notes: around 1e-10 and smaller is worrying): multiply the loss by a "
                "constant to bring them near 1, where floats are dense."
            )

    return notes


def step_sweep(
    f: Callable[..., Any],
    params: PyTree,
    *args: Any,
    steps: Any = None,
    coords: tree.CoordSpec = 3,
    seed: int = 0,
    grad_fn: Callable[..., PyTree] | None = None,
    method: str = "central",
    track_kinks: bool = True,
) -> _steps.StepSweep:
    """Relative error of the finite differences against the step ``h``.

    For a few sampled coordinates of every leaf, evaluates the finite
    difference at every step in ``steps`` (one batched call per leaf) and
    compares it with the analytic gradient. On log axes the error is a V:
    truncation error (``O(h**2)`` for centered differences) on the right, the
    round-off of ``f`` (``~ noise / h``) on the left. The round-off noise of
    ``f`` along each sampled coordinate is measured too, and steps where a
    kink was crossed are marked.

    Args:
      f: the scalar function, called as ``f(params, *args)``.
      params: the parameters (floating-point leaves are swept).
      *args: fixed arguments.
      steps: the steps, default one per decade from 1e-1 to 1e-10.
      coords: coordinates per leaf (as in :func:`check_grads`), default 3.
      seed: seed of the sampling.
      grad_fn: the analytic gradient, default ``jax.grad(f)``.
      method: the finite-difference formula (see :func:`check_grads`).
      track_kinks: mark steps where the winners of a kink-capable primitive
        change.

    Returns:
      a :class:`jaxcheck.steps.StepSweep`; ``str()`` is a table of median
      errors, ``.plot()`` draws the V, ``.best_step`` is where it bottoms out.

    Raises:
      ValueError: for empty or non-positive ``steps`` and the errors of
        :func:`check_grads`.

    Examples:
      >>> from jaxcheck.check import step_sweep
      >>> sweep = step_sweep(lambda w: jnp.sum(jnp.exp(w)), jnp.ones(4))
      >>> sweep.steps[0], sweep.steps[-1]
      (0.1, 1e-10)
      >>> 1e-7 <= sweep.best_step <= 1e-3
      True
    """
    ladder = _steps.SWEEP_STEPS if steps is None else steps
    ladder = tuple(float(h) for h in np.atleast_1d(np.asarray(ladder, dtype=float)))
    if not ladder or not all(math.isfinite(h) and h > 0 for h in ladder):
        raise ValueError(
            f"`steps` must be a non-empty sequence of positive numbers, got {steps!r}; "
            "e.g. `steps=[1e-1, 1e-3, 1e-5, 1e-7]`."
        )
    ladder = tuple(sorted(ladder, reverse=True))
    method, target = _validate_common(f, grad_fn, None, method, "float64")
    with jax.enable_x64(True):
        point = _prepare(f, params, args, target)
        engine.require_same_inputs([*point.dyn_params, *point.dyn_args])
        f0 = float(_value_jit(point.full, point.dyn_params, point.dyn_args))
        if not math.isfinite(f0):
            raise ValueError(f"`f(params, *args)` is {f0} at the given point.")
        cfg, _, _ = _settings(
            point, None, None, None, method, track_kinks, 0, None, None, seed
        )
        grad_name, analytic = _analytic(point, grad_fn)
        mults = np.asarray(_steps.multipliers(method), float)
        out = []
        for k, info in enumerate(point.checked):
            sel = tree.select_coords(info, coords, seed)
            leaf = _Leaf(point, info, k, sel, analytic[info.pos], f0, cfg)
            n, K, M = len(sel), len(ladder), len(mults)
            all_idx = np.arange(n)
            # One call per leaf: the ladder, the noise points, and x itself.
            hs = (np.asarray(ladder)[:, None] * mults[None, :]).reshape(-1)
            idx_l, d_l = np.tile(leaf.indices, K * M), np.repeat(hs, n)
            idx_n, d_n = leaf.noise_rows(all_idx)
            idx = np.concatenate([idx_l, idx_n, leaf.indices[:1]])
            deltas = np.concatenate([np.stack([d_l, -d_l], 1), d_n, np.zeros((1, 2))])
            vals, words, _ = leaf.rows(idx, deltas)
            nl = len(idx_l)
            if words is not None:
                leaf.w0 = words[-1, 0]
            plus = vals[:nl, 0].reshape(K, M, n).transpose(2, 0, 1)
            minus = vals[:nl, 1].reshape(K, M, n).transpose(2, 0, 1)
            est = np.full((n, K), np.nan)
            for j, h in enumerate(ladder):
                d = h * mults[None, :] * np.ones((n, 1))
                est[:, j], _ = _steps.estimate(
                    method, f0, plus[:, j], minus[:, j], leaf.offs(all_idx, d),
                    leaf.offs(all_idx, -d),
                )  # fmt: skip
            kink = np.zeros((n, K), dtype=bool)
            if words is not None:
                S = words.shape[-1]
                wl = words[:nl].reshape(K, M, n, 2, S).transpose(2, 0, 1, 3, 4)
                kink = ~leaf.same_region(wl).all(axis=(-1, -2))
            rel = compare.relative_error(leaf.a[:, None], est)
            sig = leaf.noise_from(
                all_idx, vals[nl:-1], None if words is None else words[nl:-1]
            )
            leaf.set_noise(all_idx, sig)
            sigma = np.where(leaf.sigma > 0, leaf.sigma, np.nan)
            with np.errstate(all="ignore"):
                med = np.array(
                    [
                        np.nanmedian(np.where(kink[:, j], np.nan, rel[:, j]))
                        if (~kink[:, j]).any()
                        else np.nan
                        for j in range(K)
                    ]
                )
            best = (
                float(ladder[int(np.nanargmin(med))])
                if np.isfinite(med).any()
                else (math.nan)
            )
            out.append(
                _steps.LeafSweep(
                    path=info.path,
                    indices=tuple(tree.unravel(i, info.shape) for i in sel),
                    steps=ladder,
                    analytic=leaf.a.copy(),
                    numeric=est,
                    rel_error=rel,
                    kink=kink,
                    noise=sigma,
                    best_step=best,
                )
            )
    return _steps.StepSweep(
        leaves=tuple(out), steps=ladder, method=method, f_value=f0,
        grad_source=grad_name,
    )  # fmt: skip


def assert_grads(
    f: Callable[..., Any],
    params: PyTree,
    *args: Any,
    **kwargs: Any,
) -> GradCheckReport:
    """Like :func:`check_grads`, but raises when the check fails.

    Takes exactly the arguments of :func:`check_grads` and returns its report
    when the check passes, so it can be used in pytest.

    Args:
      f: the scalar function, called as ``f(params, *args)``.
      params: the parameters (see :func:`check_grads`).
      *args: fixed arguments.
      **kwargs: the keyword arguments of :func:`check_grads`.

    Returns:
      the :class:`GradCheckReport` of a passing check.

    Raises:
      GradientCheckError: (an ``AssertionError``) when a coordinate is wrong; its
        message is the report of the failing leaves and ``.report`` holds the full
        report.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import jaxcheck
      >>> @jax.custom_vjp
      ... def square(x):
      ...     return x ** 2
      >>> square.defvjp(lambda x: (x ** 2, x), lambda x, g: (g * x,))  # forgot the 2
      >>> try:
      ...     jaxcheck.assert_grads(lambda p: jnp.sum(square(p)), jnp.arange(1.0, 4.0))
      ... except jaxcheck.GradientCheckError as e:
      ...     print(str(e).splitlines()[0][:57])
      jaxcheck: gradient check FAILED: 1 leaf, 3 coordinates, 3
    """
    report = check_grads(f, params, *args, **kwargs)
    if not report.passed:
        raise GradientCheckError(report.failure_message(), report)
    return report
