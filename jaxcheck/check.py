"""``check_grads`` and ``assert_grads``: the orchestration of a check.

Data flows one way: :mod:`jaxcheck.options` validates the keywords,
:mod:`jaxcheck.point` traces ``f`` once, :mod:`jaxcheck.engine` compiles one
program for the check (or reuses the program of a function with the same
structure) and evaluates rows with it, :mod:`jaxcheck.verdicts.judge` judges
every coordinate with evidence, and :mod:`jaxcheck.report` presents.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import compare, kinks, steps, tree
from . import propagate as _propagate
from .engine import cache as _cache
from .engine import cluster, memory, rows
from .engine.memory import TRANSCENDENTAL_COST as TC
from .engine.program import Layout, Program, PropBlock, leaf_function
from .options import (
    CheckOptions,
    callable_name,
    check_coord_paths,
    check_options,
    validate_callables,
)
from .point import Point, finite_or_raise, prepare
from .report import GradCheckReport, GradientCheckError
from .verdicts import assemble, bars, judge

PyTree = Any

#: Show a progress bar (when ``progress=None``) for checks of at least this
#: many coordinates, if standard error is a terminal and tqdm is installed.
PROGRESS_MIN_COORDS = 200_000

#: Dense rows a program call holds at least (room for follow-ups).
MIN_DENSE_ROWS = 256


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
    return tqdm(
        total=total, unit="coord", desc="jaxcheck", leave=False, mininterval=0,
        miniters=1,
    )  # fmt: skip


def _match_grads(grads: PyTree, point: Point, grad_name: str) -> list[np.ndarray]:
    """The user's gradient entries of the checked leaves, flat, in order."""
    g_leaves, g_paths, _ = tree.flatten(grads)
    by_path = dict(zip(g_paths, g_leaves, strict=True))
    known = {info.path for info in point.infos}
    extra = [p for p in by_path if p not in known and by_path[p] is not None]
    if extra:
        raise ValueError(
            f"`grad_fn` ({grad_name}) returned entries at paths {extra} that are not "
            f"leaves of `params` (leaves: {sorted(known)}). It must return a pytree "
            "with the same structure as `params`."
        )
    out = []
    for leaf in point.leaves:
        info = leaf.info
        value = by_path.get(info.path)
        if value is None:
            raise ValueError(
                f"`grad_fn` ({grad_name}) returned no gradient for leaf {info.path} "
                f"(shape {info.shape}). It must return a pytree with the same "
                "structure as `params`, one array per floating-point leaf."
            )
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
        out.append(value)
    return out


class _Progress:
    """Turns the rows each call finished into coordinates on a progress bar
    (the first row is the point itself)."""

    def __init__(self, bar: Any, total: int):
        self.bar, self.total, self.rows, self.shown = bar, total, 0, 0

    def __call__(self, rows_done: int) -> None:
        if self.bar is None:
            return
        self.rows += rows_done
        now = min(self.total, max(0, self.rows - 1))
        if now > self.shown:
            self.bar.update(now - self.shown)
            self.shown = now


class _Check:
    """One run of :func:`check_grads` (see the module docstring)."""

    def __init__(self, f, params, args, grad_fn, opts: CheckOptions):
        self.opts, self.grad_fn = opts, grad_fn
        self.t_start = time.perf_counter()
        self.times = {"tracing": 0.0, "compiling": 0.0, "evaluating": 0.0}
        self.point = prepare(f, params, args, opts.np_dtype, with_grad=grad_fn is None)
        cluster.require_same_inputs(self.point.dyn)
        self.consts_p = list(self.point.primal.consts)
        self.consts_g = [] if self.point.grad is None else list(self.point.grad.consts)
        sources = [leaf.input_pos for leaf in self.point.leaves]
        self.analysis = kinks.analyze_jaxpr(
            self.point.primal, sources, check_dtype=opts.np_dtype
        )
        paths = [leaf.path for leaf in self.point.leaves]
        check_coord_paths(opts.coords, paths, [s.path for s in self.point.skipped])
        self.seed = (
            int(np.random.SeedSequence().entropy % 2**31)
            if opts.seed is None
            else int(opts.seed)
        )
        self.notes: list[str] = []
        self.stopped = False  # Ctrl-C in the main pass

    # ------------------------------------------------------------ precision
    def precision(self, grad_dtypes: list[Any]) -> None:
        """The eps of ``f`` and of the gradient, the bars (see :mod:`.verdicts.bars`)."""
        p = bars.choose_precision(self.point, self.analysis, self.opts, grad_dtypes)
        self.eps_f, self.precision_text, self.bar = p.eps_f, p.text, p.bar
        self.leaf_bars = list(p.leaf_bars)
        self.notes.extend(p.notes)

    # --------------------------------------------------------------- layout
    def layout(self) -> Program:
        point, opts, analysis = self.point, self.opts, self.analysis
        t0 = time.perf_counter()
        tracked = opts.track_kinks and bool(analysis.sites)
        device = jax.local_devices()[0]
        self.device = f"{device.platform}:{device.id}"
        budget = opts.memory_budget or memory.default_memory_budget(device)
        mults = len(steps.multipliers(opts.method))
        prop, self.plans = [], {}
        dyn_sds = [
            jax.ShapeDtypeStruct(np.shape(v), jnp.result_type(v)) for v in point.dyn
        ]
        c_sds = [
            jax.ShapeDtypeStruct(np.shape(v), jnp.result_type(v)) for v in self.consts_p
        ]
        # A while loop's trip count is unknown until it runs: guessed.
        work, bounded = memory.jaxpr_work(point.primal.jaxpr)
        guess = memory.work_estimate(work, bounded)
        dense = memory.work_estimate(*memory.jaxpr_work(point.primal.jaxpr, TC))
        for k, leaf in enumerate(point.leaves):
            n = len(self.selections[k]) * mults
            if not opts.propagate:
                self.plans[k] = "off (propagate=False)"
                continue
            leaf_tracked = tracked and analysis.leaf_sites.get(k, 0) > 0
            if n * dense * (1 + leaf_tracked) < _propagate.MIN_DENSE_WORK:
                # Planning costs a trace; it cannot pay for a second program.
                size = "at most" if bounded else "about"
                loops = "" if bounded else f" ({memory.LOOP_TRIPS_GUESS} trips a loop)"
                self.plans[k] = (
                    f"not propagated: too small: {n:,} coordinates x {size} "
                    f"{int(dense * (1 + leaf_tracked)):,} work{loops} < "
                    f"{_propagate.MIN_DENSE_WORK:.0e} in all"
                )
                continue
            fn = leaf_function(point, k)
            x_sds = jax.ShapeDtypeStruct((leaf.size,), point.dtype)
            target = fn
            if leaf_tracked:
                target = kinks.winner_tracker(fn, x_sds, dyn_sds, c_sds)
            self.plans[k] = _propagate.propagation_plan(
                target, x_sds, dyn_sds, c_sds, num_coords=n
            )
            if not self.plans[k].startswith("propagated"):
                continue
            per = _propagate.bytes_per_coordinate(target, x_sds, dyn_sds, c_sds)
            chunk = opts.chunk_size or memory.choose_chunk_size(
                per, n + 1, budget, device.platform
            )
            chunks = min(memory.CHUNKS_PER_CALL, -(-(n + 1) // chunk))
            prop.append(PropBlock(k, chunk, chunks, leaf_tracked))
        self.prop_of = {b.leaf: j for j, b in enumerate(prop)}
        dense_rows = 1 + mults * sum(
            len(self.selections[k])
            for k in range(len(point.leaves))
            if k not in self.prop_of
        )
        per_row = 2 * (point.size * point.dtype.itemsize) + memory.jaxpr_bytes(
            point.primal.jaxpr
        ) * (3 if tracked else 2)
        chunk = opts.chunk_size or memory.choose_chunk_size(
            per_row, max(dense_rows, MIN_DENSE_ROWS), budget, device.platform
        )
        chunks = min(
            memory.CHUNKS_PER_CALL, -(-max(dense_rows, MIN_DENSE_ROWS) // chunk)
        )
        evaluations = 2 * (dense_rows + sum(b.chunk * b.chunks for b in prop)) + 3
        lay = Layout(
            grad=True, tracked=tracked, chunk=chunk, chunks=chunks, prop=tuple(prop),
            options=memory.compile_options(device.platform, guess * evaluations),
        )  # fmt: skip
        key = (point.key, lay, str(point.dtype), cluster.num_shards())
        stats0 = _cache.stats()

        def build() -> Program:
            return Program(point, lay)

        program, reused = _cache.get_program(key, build)
        if program.compiled is None:
            program.compile(self.consts_p, self.consts_g, point.dyn)
            self.times["compiling"] += program.compile_seconds
            self.times["tracing"] += program.lower_seconds
        stats1 = _cache.stats()
        self.compile_counts = {
            "programs": stats1["compiled"] - stats0["compiled"],
            "loaded": stats1["loaded"] - stats0["loaded"],
            "reused": int(reused),
        }
        self.times["tracing"] += (
            time.perf_counter() - t0 - program.compile_seconds - program.lower_seconds
            if not reused
            else time.perf_counter() - t0
        )
        self.program = program
        return program

    # ----------------------------------------------------------- coordinates
    def select(self) -> None:
        point, opts = self.point, self.opts
        self.selections = [
            tree.select_coords(leaf.info, opts.coords, self.seed)
            for leaf in point.leaves
        ]
        theta = point.theta()
        leaf_of, idx = [], []
        for k, sel in enumerate(self.selections):
            leaf_of.append(np.full(len(sel), k, dtype=np.int64))
            idx.append(sel)
        self.leaf_of = np.concatenate(leaf_of)
        self.idx = np.concatenate(idx)
        offsets = np.array([leaf.offset for leaf in point.leaves], dtype=np.int64)
        self.gidx = offsets[self.leaf_of] + self.idx
        self.x = theta[self.gidx].astype(np.float64)

    def main_steps(self, h0: np.ndarray) -> np.ndarray:
        """Per-coordinate steps ``h0[leaf] * max(1, |x_i|)``, refused where the
        step vanishes below the floating-point spacing of ``x_i``."""
        h = h0[self.leaf_of] * np.maximum(1.0, np.abs(self.x))
        xd = self.x.astype(self.point.dtype)
        moved = (xd + h.astype(self.point.dtype)) - xd
        if not np.all(moved > 0):
            bad = int(np.flatnonzero(~(moved > 0))[0])
            leaf = self.point.leaves[int(self.leaf_of[bad])]
            where = (
                f"{leaf.path}{list(tree.unravel(int(self.idx[bad]), leaf.info.shape))}"
            )
            raise ValueError(
                f"`step`={self.opts.step!r} is below the floating-point spacing of the "
                f"parameters: x + h == x at {where} (x = {self.x[bad]:.6g}, h = "
                f"{h[bad]:.3g} in {self.point.dtype.name}), so the finite difference "
                "would be 0/0. Use a larger step (jaxcheck scales it by "
                "max(1, |x_i|)), or step=None for the default."
            )
        return h

    def auto_h0(self) -> np.ndarray:
        """``step="auto"``: per leaf, the step where the estimate is most stable
        over a ladder, from 4 sampled coordinates (one call for every leaf)."""
        opts = self.opts
        mults = np.asarray(steps.multipliers(opts.method), float)
        ladder = np.asarray(steps.AUTO_STEPS)
        picks, idx_rows, deltas = [], [], []
        for k in range(len(self.point.leaves)):
            members = np.flatnonzero(self.leaf_of == k)
            rng = np.random.default_rng([self.seed, k, 7])
            pick = np.sort(
                rng.choice(members, size=min(4, len(members)), replace=False)
            )
            picks.append(pick)
            for j in pick:
                scale = max(1.0, abs(float(self.x[j])))
                d = (ladder[:, None] * mults[None, :]).reshape(-1) * scale
                idx_rows.append(np.full(len(d), self.gidx[j]))
                deltas.append(np.stack([d, -d], 1))
        idx_rows = [np.zeros(1, np.int64), *idx_rows]
        deltas = [np.zeros((1, 2)), *deltas]
        res = self.run_rows(np.concatenate(idx_rows), np.concatenate(deltas))
        f0 = float(res.dense[0, 0])
        w0 = None if res.dense_words is None else res.dense_words[0, 0]
        out, pos = np.empty(len(picks)), 1
        K, M = len(ladder), len(mults)
        for k, pick in enumerate(picks):
            n = len(pick)
            vals = res.dense[pos : pos + n * K * M].reshape(n, K, M, 2)
            est = np.full((n, K), np.nan)
            valid = np.ones((n, K), dtype=bool)
            if w0 is not None:
                w = res.dense_words[pos : pos + n * K * M].reshape(n, K, M, 2, -1)
                valid = np.all(w == w0, axis=-1).all(axis=(-1, -2))
            pos += n * K * M
            for j in range(K):
                d = (
                    ladder[j]
                    * mults[None, :]
                    * np.maximum(1.0, np.abs(self.x[pick]))[:, None]
                )
                est[:, j], _ = steps.estimate(
                    opts.method, f0, vals[:, j, :, 0], vals[:, j, :, 1],
                    steps.offsets(self.x[pick], d, self.point.dtype),
                    steps.offsets(self.x[pick], -d, self.point.dtype),
                )  # fmt: skip
            h, _ = steps.choose_step(ladder, est, valid)
            out[k] = (
                h if math.isfinite(h) else steps.default_step(opts.method, self.eps_f)
            )
        return out

    # --------------------------------------------------------------- running
    def run_rows(self, idx, deltas, prop=(), *, main=False, on_progress=None):
        t0 = time.perf_counter()
        try:
            return rows.run(
                self.program, (self.consts_p, self.consts_g, self.point.dyn),
                (np.asarray(idx, np.int64), np.asarray(deltas, np.float64)), prop,
                main=main, on_progress=on_progress,
            )  # fmt: skip
        finally:
            self.times["evaluating"] += time.perf_counter() - t0

    def main_rows(self) -> tuple:
        """The main pass's streams, and where each coordinate's rows are."""
        mults = np.asarray(steps.multipliers(self.opts.method), float)
        M = len(mults)
        d_idx, d_del = [np.zeros(1, np.int64)], [np.zeros((1, 2))]
        where = np.zeros((len(self.x), 2), dtype=np.int64)  # (stream, first row)
        dense_next = 1
        prop = [
            ([], [], 0) for _ in self.program.layout.prop
        ]  # (idx parts, step parts, rows)
        for k in range(len(self.point.leaves)):
            members = np.flatnonzero(self.leaf_of == k)
            d = (self.h[members][:, None] * mults[None, :]).reshape(-1)
            if k in self.prop_of:
                b = self.prop_of[k]
                block = self.program.layout.prop[b]
                loc = np.repeat(self.idx[members], M)
                step = np.stack([d, -d], 1) if block.tracked else d
                parts_i, parts_s, nxt = prop[b]
                where[members, 0] = b + 1
                where[members, 1] = nxt + M * np.arange(len(members))
                prop[b] = ([*parts_i, loc], [*parts_s, step], nxt + len(loc))
            else:
                d_idx.append(np.repeat(self.gidx[members], M))
                d_del.append(np.stack([d, -d], 1))
                where[members, 0] = 0
                where[members, 1] = dense_next + M * np.arange(len(members))
                dense_next += len(d)
        streams = []
        for b, (parts_i, parts_s, _) in enumerate(prop):
            block = self.program.layout.prop[b]
            idx = np.concatenate(parts_i) if parts_i else np.zeros(0, np.int64)
            if block.tracked:  # the point itself, for its decisions
                step = np.concatenate([*parts_s, np.zeros((1, 2))])
                idx = np.concatenate([idx, np.zeros(1, np.int64)])
            else:
                step = np.concatenate(parts_s) if parts_s else np.zeros(0)
            streams.append((idx, step))
        return (np.concatenate(d_idx), np.concatenate(d_del)), streams, where

    def run_main(self, on_progress) -> tuple:
        """The main pass: ``f`` and the gradient at the point, and every
        coordinate's rows. Returns ``(results, where, finished)``; on Ctrl-C
        only the coordinates whose rows all finished (``finished``)."""
        dense, prop, where = self.main_rows()
        M = len(steps.multipliers(self.opts.method))
        try:
            res = self.run_rows(*dense, prop, main=True, on_progress=on_progress)
            return res, where, np.ones(len(self.x), dtype=bool)
        except cluster.Interrupted as stop:
            res = stop.done[0]
            self.stopped = True
            if len(res.dense) == 0 or (
                self.grad_fn is None and (res.grads is None or not res.grads)
            ):
                raise KeyboardInterrupt from None
        done_rows = [len(res.dense)] + [len(v) for v, _, _ in res.prop]
        finished = where[:, 1] + M <= np.asarray(done_rows)[where[:, 0]]
        # The decisions at the point come last in a tracked block: recompute them.
        for b, block in enumerate(self.program.layout.prop):
            if block.tracked and len(res.prop[b][0]) < len(prop[b][0]):
                finished[where[:, 0] == b + 1] = False
        if not finished.any():
            raise KeyboardInterrupt
        return res, where, finished

    def judge_main(self, res, where, keep: np.ndarray) -> judge.State:
        opts, program = self.opts, self.program
        mults = np.asarray(steps.multipliers(opts.method), float)
        M = len(mults)
        s = judge.State(
            a=self.a[keep], x=self.x[keep], h=self.h[keep],
            bar=np.asarray(self.leaf_bars)[self.leaf_of[keep]], group=self.leaf_of[keep],
        )  # fmt: skip
        n = len(s.a)
        fp, fm = np.empty((n, M)), np.empty((n, M))
        crossed = np.zeros(n, dtype=bool)
        labels = np.full(n, "", dtype=object)
        changed = np.zeros(n, dtype=np.int64)
        kept_where = where[keep]
        streams = [(res.dense, res.dense_words, res.dense_changed, program.sites)]
        for b, (v, w, c) in enumerate(res.prop):
            streams.append((v, w, c, program.prop_sites[b]))
        for st, (vals, words, counts, sites) in enumerate(streams):
            mine = np.flatnonzero(kept_where[:, 0] == st)
            if not len(mine):
                continue
            rows_ = kept_where[mine, 1][:, None] + np.arange(M)[None, :]
            fp[mine], fm[mine] = vals[rows_, 0], vals[rows_, 1]
            if words is None:
                continue
            w0 = words[0, 0] if st == 0 else words[-1, 0]
            differs = (words[rows_, 0] != w0) | (words[rows_, 1] != w0)  # (m, M, S)
            per_site = differs.any(axis=1)
            crossed[mine] = per_site.any(axis=1)
            changed[mine] = counts[rows_[:, 0]].sum(axis=-1)
            for q in np.flatnonzero(per_site.any(axis=1)):
                names = [sites[j].label for j in np.flatnonzero(per_site[q])]
                labels[mine[q]] = "; ".join(names[:2]) + (
                    f"; {len(names) - 2} more" if len(names) > 2 else ""
                )
        d = s.h[:, None] * mults[None, :]
        off_p = steps.offsets(s.x, d, self.point.dtype)
        off_m = steps.offsets(s.x, -d, self.point.dtype)
        s.changed, s.kink = changed, labels
        judge.main_pass(
            s, opts.method, self.f0, fp, fm, off_p, off_m, self.eps_f,
            self.bar.noise_factor, crossed if program.layout.tracked else None,
            kink_bar=compare.KINK_RTOL if opts.rtol is None else opts.rtol,
        )  # fmt: skip
        return s

    def follow(self, s: judge.State, keep: np.ndarray, w0: Any) -> None:
        """Follow-ups (:meth:`follow_stages`), a sample of a large leaf first."""
        cap = self.opts.max_follow_ups
        first, later = judge.sample_follow_ups(s, cap, self.seed)
        self.follow_stages(s, keep, w0, first)
        left = judge.leave_failed_leaves(s, later, cap)
        if not left.all():
            self.follow_stages(s, keep, w0, later[~left])
        domain = np.flatnonzero(s.code == judge.DOMAIN)
        if len(domain):
            self.domain_error(s, keep, domain)

    def follow_stages(
        self, s: judge.State, keep: np.ndarray, w0: Any, todo: np.ndarray
    ) -> None:
        """Follow-ups of ``todo``: a quick stage (five steps) for those outside
        the bar; then the full ladder and the noise lines for what is left;
        then a deep ladder (down to ``1e-10 h``) for what is still open."""
        quick = todo[s.reason[todo] == judge.CONFIRM]
        rest = todo[s.reason[todo] != judge.CONFIRM]
        for stage in (1, 2, 3):
            sel = quick if stage == 1 else rest
            if len(sel):
                p = judge.plan(s, sel, stage=stage, eps=self.eps_f)
                values, words = self.follow_rows(keep, p)
                still = judge.follow_up(
                    s, p, values, words, w0, self.f0, self.eps_f, self.bar.noise_factor
                )
                rest = np.sort(np.concatenate([rest, still])) if stage == 1 else still

    def follow_rows(self, keep: np.ndarray, p: judge.Plan) -> tuple:
        """The values (and decision words) of a follow-up's rows. A row of a
        leaf with an untracked propagated block, ``(x + d, x - d)``, goes
        through that block (a window instead of a whole evaluation of ``f``);
        the others through the dense rows. Returns ``(values (R, 2), words)``."""
        rows_g = self.gidx[keep][p.sel][p.coord]
        layout = self.program.layout
        if layout.tracked or not layout.prop:
            res = self.run_rows(rows_g, p.deltas)
            return res.dense, res.dense_words
        block = np.full(len(self.point.leaves), -1)
        for k, b in self.prop_of.items():
            block[k] = b
        b = block[self.leaf_of[keep][p.sel][p.coord]]
        local = self.idx[keep][p.sel][p.coord]
        use = (b >= 0) & (p.deltas[:, 0] == -p.deltas[:, 1])
        dense = np.flatnonzero(~use)
        streams = [
            (local[use & (b == j)], p.deltas[use & (b == j), 0])
            for j in range(len(layout.prop))
        ]
        res = self.run_rows(rows_g[dense], p.deltas[dense], streams)
        values = np.empty((len(rows_g), 2))
        values[dense] = res.dense[: len(dense)]
        for j in range(len(layout.prop)):
            values[use & (b == j)] = res.prop[j][0]
        return values, None

    def domain_error(self, s: judge.State, keep: np.ndarray, bad: np.ndarray) -> None:
        leaf_of, idx = self.leaf_of[keep], self.idx[keep]
        where = []
        for q in bad[:10]:
            leaf = self.point.leaves[int(leaf_of[q])]
            where.append(
                f"{leaf.path}{list(tree.unravel(int(idx[q]), leaf.info.shape))}"
            )
        raise ValueError(
            f"`f` is not finite at {len(bad)} perturbed point(s) x ± h·e_i on one "
            f"side at every step tried (h from {s.h[bad[0]]:.0e} down), e.g. at "
            f"{', '.join(where)} (f = {self.f0:.6g} at the point itself). The point "
            "is on the edge of f's domain (log, sqrt, division): move it inside "
            "the domain (or pass a smaller `step` if the edge is further than it)."
        )

    # ---------------------------------------------------------------- the run
    def analytic_of_user(self) -> tuple[list[np.ndarray], list[Any]]:
        grad_name = callable_name(self.grad_fn)
        user = self.point.rebuild([jnp.asarray(v) for v in self.point.dyn])
        grads = _match_grads(self.grad_fn(user[0], *user[1]), self.point, grad_name)
        dtypes = [np.asarray(g).dtype for g in grads]
        flat = [np.asarray(g).astype(np.float64).reshape(-1) for g in grads]
        flat = cluster.from_process_zero(flat)
        return flat, dtypes

    def run(self) -> GradCheckReport:
        opts = self.opts
        grad_dtypes: list[Any] = []
        user_grads = None
        if self.grad_fn is not None:
            user_grads, grad_dtypes = self.analytic_of_user()
        self.precision(grad_dtypes)
        self.select()
        self.layout()
        if opts.step == "auto":
            h0 = self.auto_h0()
        else:
            base = (
                steps.default_step(opts.method, self.eps_f)
                if opts.step is None
                else float(opts.step)
            )
            h0 = np.full(len(self.point.leaves), base)
        self.h0 = h0
        self.h = self.main_steps(h0)
        total = int(len(self.x) * len(steps.multipliers(opts.method)))
        bar_ui = _progress_bar(total, opts.progress)
        try:
            res, where, keep = self.run_main(_Progress(bar_ui, total))
        finally:
            if bar_ui is not None:
                bar_ui.close()
        self.f0 = finite_or_raise(float(res.dense[0, 0]))
        grads = user_grads if user_grads is not None else res.grads
        self.a = np.concatenate(
            [g[sel] for g, sel in zip(grads, self.selections, strict=True)]
        )
        s = self.judge_main(res, where, keep)
        w0 = None if res.dense_words is None else res.dense_words[0, 0]
        self.follow(s, keep, w0)
        return self.report(s, keep)

    # --------------------------------------------------------------- report
    def report(self, s: judge.State, keep: np.ndarray) -> GradCheckReport:
        return assemble.report(self, s, keep)


# --------------------------------------------------------------------------- #
# The public functions.
# --------------------------------------------------------------------------- #


def check_grads(
    f: Callable[..., Any],
    params: PyTree,
    *args: Any,
    grad_fn: Callable[..., PyTree] | None = None,
    coords: tree.CoordSpec = "all",
    step: float | str | None = None,
    seed: int | None = 0,
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
    max_follow_ups: int | None = 256,
) -> GradCheckReport:
    """Checks the gradient of ``f`` with respect to ``params`` against finite
    differences, coordinate by coordinate, in float64.

    For every checked coordinate ``i`` of every floating-point leaf, the numeric
    derivative ``(f(x + h e_i) - f(x - h e_i)) / 2h`` is compared with the
    analytic gradient by the relative error ``|a - n| / max(|a|, |n|)``. ``f``
    is traced once; the whole check (the value, the analytic gradient and every
    perturbed evaluation, batched with ``jax.vmap``) runs as one compiled
    program, which a later check of a function with the same structure and
    shapes reuses (also from jaxcheck's on-disk cache in a new process).

    Every coordinate ends **ok**, **wrong**, **kink**, **untestable** or
    **inconclusive**, each with evidence (see :mod:`jaxcheck.verdicts.judge`):

    * a coordinate outside the bar is followed up with a ladder of steps; it is
      wrong only when the finite difference is stable across steps and still
      disagrees;
    * when ``f`` has kink-capable primitives (max, ReLU, ``where``, abs, sort,
      pooling, ``cond``...), their winners are tracked at ``x - h e_i``, ``x``
      and ``x + h e_i``; where they do not change, ``f`` is smooth there and the
      smooth bar applies; a coordinate whose winners change crossed a kink and
      is judged by smaller steps that avoid it, else against the one-sided
      derivatives (a subgradient passes as a kink);
    * a difference within the round-off noise of ``f`` (measured) even at the
      largest step is untestable; no evidence either way is inconclusive;
    * a non-finite analytic gradient where ``f`` is finite is wrong.

    ``report.passed`` is True when no coordinate is wrong and at least one was
    tested: a check in which nothing could be tested is ``"inconclusive"``
    (``report.status``), never passed. ``strict=True`` also fails untestable and
    inconclusive coordinates.

    The bar is ``1e-7`` (the notes' bar for smooth functions) unless ``f``
    computes in a lower precision inside (or ``grad_fn`` returns one): then
    ``10 sqrt(eps)`` of that precision; a leaf that feeds primitives whose kinks
    cannot be seen (callbacks, kernels) gets ``1e-4``. ``report.bar_reason``
    says which. Steps follow the precision too (``eps**(1/3)`` for centered
    differences), scaled by ``max(1, |x_i|)`` per coordinate.

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
        ``k`` entries is checked whole); a dict maps leaf paths (as
        ``jax.tree_util.keystr`` writes them) to ``"all"``, an int, or explicit
        indices; a path that is not a checked leaf is an error.
      step: the base step ``h`` (scaled by ``max(1, |x_i|)``): a number,
        ``"auto"`` (chosen per leaf where the estimate is most stable over a
        ladder of steps), or ``None``: 1e-5 for centered differences in float64
        (the optimum of each method otherwise, e.g. ``eps**(1/3)`` when ``f``
        computes in a lower precision).
      seed: seed of the coordinate sampling; ``None`` draws one (recorded in
        ``report.seed``).
      rtol: the relative-error bar; default chosen from ``f`` (see above).
      noise_factor: the round-off allowance in units of ``eps * |f| / h``.
      memory_budget: bytes one batch of perturbed evaluations may use; default
        from the device (:func:`jaxcheck.engine.default_memory_budget`).
      chunk_size: rows per vmapped batch; overrides the budget-derived size.
      max_worst: how many worst coordinates (and kink examples) each leaf
        report keeps.
      progress: show a progress bar (needs tqdm); ``None`` shows one for long
        checks when standard error is a terminal.
      method: ``"central"`` (default), ``"forward"`` (for comparison only: its
        error is ``O(h)``) or ``"four_point"`` (``"richardson"``).
      track_kinks: track the winners of kink-capable primitives (default).
      strict: make untestable and inconclusive coordinates fail the check.
      dtype: ``"float64"`` (default) or ``"float32"``: run the whole check in
        single precision, to see why double precision matters.
      propagate: evaluate ``f(x ± h e_i)`` of large leaves by perturbation
        propagation where it pays off (:mod:`jaxcheck.propagate`); ``False``
        uses the plain vmapped evaluation for every leaf.
      max_follow_ups: a leaf with more coordinates to follow up than this
        follows up a random sample (``seed``) of this many; if one is confirmed
        wrong, the rest are left inconclusive (said in a note), else followed up
        too. ``None`` follows up every one.

    Returns:
      a :class:`GradCheckReport`: ``report.passed``, ``report.status``, a table
      per leaf in ``str(report)``, HTML in Jupyter, ``report.to_dict()``.

    Raises:
      TypeError: if ``f`` does not return a real floating-point scalar, a leaf
        is a JAX tracer (a check inside ``jax.jit``/``jax.vmap``), or
        ``grad_fn`` returns non-floating entries.
      ValueError: if no leaf can be checked, a checked leaf or ``f`` is not
        finite at the point, ``f`` is not finite on one side of a coordinate at
        every step (the edge of its domain), ``grad_fn`` returns a differently
        shaped tree, or an option is invalid (each message names it).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import jaxcheck
      >>> def loss(params, x):
      ...     return jnp.sum(jnp.tanh(x @ params["W"] + params["b"]) ** 2)
      >>> params = {"W": jnp.ones((3, 2)) * 0.1, "b": jnp.zeros(2)}
      >>> report = jaxcheck.check_grads(loss, params, jnp.ones((4, 3)))
      >>> report.passed, report.status
      (True, 'passed')
      >>> [leaf.path for leaf in report.leaves]
      ["['W']", "['b']"]

      A ReLU at exactly zero is a kink, not a bug: the analytic 0 lies between
      the one-sided derivatives 0 and 1.

      >>> r = jaxcheck.check_grads(lambda w: jnp.sum(jax.nn.relu(w)), jnp.zeros(3))
      >>> kink = r.leaves[0].kinks[0]
      >>> r.passed, r.num_kink, round(kink.lo, 9), round(kink.hi, 9)
      (True, 3, 0.0, 1.0)
    """
    validate_callables(f, grad_fn)
    opts = check_options(
        coords=coords, step=step, seed=seed, rtol=rtol, noise_factor=noise_factor,
        memory_budget=memory_budget, chunk_size=chunk_size, max_worst=max_worst,
        progress=progress, method=method, track_kinks=track_kinks, strict=strict,
        dtype=dtype, propagate=propagate, max_follow_ups=max_follow_ups,
    )  # fmt: skip
    with jax.enable_x64(opts.dtype == "float64"):
        return _Check(f, params, args, grad_fn, opts).run()


def assert_grads(
    f: Callable[..., Any],
    params: PyTree,
    *args: Any,
    **kwargs: Any,
) -> GradCheckReport:
    """Like :func:`check_grads`, but raises when the check does not pass.

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
      GradientCheckError: (an ``AssertionError``) when a coordinate is wrong or
        nothing could be tested; its message is the report of the failing
        leaves and ``.report`` holds the full report.

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
