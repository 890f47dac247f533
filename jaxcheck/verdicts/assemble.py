"""A check's verdicts assembled into its report: one :class:`LeafReport` per
checked leaf, the notes a reader needs beyond the table, and the
:class:`GradCheckReport` with the bar, precision and compilation record.

The functions read the running check (:class:`jaxcheck.check._Check`) and the
judged state (:class:`jaxcheck.verdicts.judge.State`); they compute nothing new.
"""

from __future__ import annotations

import math
import time
from typing import Any

import jax.numpy as jnp
import numpy as np

from .. import compare, tree
from ..options import callable_name
from ..report import CoordResult, GradCheckReport, LeafReport
from . import judge

#: Raw gradients below this (in absolute value) are worth a warning (the
#: CS231n notes: "roughly 1e-10 and smaller in absolute value is worrying").
TINY_GRADIENT = 1e-10


def leaf_report(
    check: Any, k: int, s: judge.State, keep: np.ndarray
) -> LeafReport | None:
    """The :class:`LeafReport` of leaf ``k`` (None when none of it was evaluated)."""
    leaf = check.point.leaves[k]
    info = leaf.info
    mine = np.flatnonzero(check.leaf_of[keep] == k)
    selected = len(check.selections[k])
    if not len(mine):
        return None
    code, rel = s.code[mine], s.rel[mine]
    scored = (
        np.isin(code, (compare.OK, compare.WRONG)) & np.isfinite(rel) & ~s.flat[mine]
    )
    valid = rel[scored]
    # Wrong coordinates first, then those neither confirmed nor refuted, each
    # by relative error: a passing leaf shows its unresolved coordinates.
    unresolved = np.isin(code, (compare.UNTESTABLE, compare.INCONCLUSIVE))
    rank = np.where(code == compare.WRONG, 0, np.where(unresolved, 1, 2))
    order = np.lexsort((-np.nan_to_num(rel, nan=-1.0), rank))
    non_kink = [j for j in order if code[j] != compare.KINK]
    crossed = [j for j in order if s.kink[mine[j]] and code[j] != compare.WRONG]
    crossed.sort(key=lambda j: code[j] != compare.KINK)
    idx = check.idx[keep][mine]

    def coord(j: int) -> CoordResult:
        g = mine[j]
        return CoordResult(
            index=tree.unravel(int(idx[j]), info.shape),
            analytic=float(s.a[g]), numeric=float(s.numeric[g]),
            rel_error=float(s.rel[g]), verdict=compare.VERDICT_NAMES[code[j]],
            f_plus=float(s.f_plus[g]), f_minus=float(s.f_minus[g]),
            kink=str(s.kink[g]), step=float(s.step[g]),
            resolution=str(s.resolution[g]), lo=float(s.lo[g]), hi=float(s.hi[g]),
        )  # fmt: skip

    sig = s.sigma[mine]
    sig = sig[np.isfinite(sig) & (sig > 0)]
    kink_sites: dict[str, int] = {}
    for label in s.kink[mine]:
        for name in label.split("; ") if label else []:
            if not name.endswith("more"):
                kink_sites[name] = kink_sites.get(name, 0) + 1
    max_worst = check.opts.max_worst
    return LeafReport(
        path=info.path, shape=info.shape, dtype=info.dtype, num_checked=len(mine),
        max_rel_error=float(valid.max()) if len(valid) else 0.0,
        band_counts=compare.band_counts(valid),
        num_ok=int((code == compare.OK).sum()),
        num_wrong=int((code == compare.WRONG).sum()),
        num_untestable=int((code == compare.UNTESTABLE).sum()),
        worst=tuple(coord(j) for j in non_kink[:max_worst]),
        step=float(check.h0[k]), chunk_size=_chunk_of(check, k), seconds=0.0,
        num_kink=int((code == compare.KINK).sum()),
        num_kink_confirmed=int((code == compare.KINK).sum()),
        kink_sites=kink_sites,
        kinks=tuple(coord(j) for j in crossed[:max_worst]),
        tracked=bool(check.program.layout.tracked and check.analysis.leaf_sites.get(k)),
        num_retried=int(np.isin(s.reason[mine], (judge.ROUNDOFF,)).sum()),
        propagated=k in check.prop_of, propagation=check.plans.get(k, ""),
        noise=float(np.median(sig)) if len(sig) else math.nan,
        num_kink_crossed=int(sum(1 for j in range(len(mine)) if s.kink[mine[j]])),
        num_selected=selected, interrupted=len(mine) < selected,
        num_inconclusive=int((code == compare.INCONCLUSIVE).sum()),
        rtol=float(check.leaf_bars[k]),
        main_rel_error=_max_finite(
            s.rel_main[mine][(s.kink[mine] == "") & np.isfinite(s.rel_main[mine])]
        ),
    )  # fmt: skip


def _chunk_of(check: Any, k: int) -> int:
    layout = check.program.layout
    if k in check.prop_of:
        return layout.prop[check.prop_of[k]].chunk
    return layout.chunk


def report(check: Any, s: judge.State, keep: np.ndarray) -> GradCheckReport:
    """The :class:`GradCheckReport` of a finished (or interrupted) check.

    ``check`` is the running check (:class:`jaxcheck.check._Check`): its point,
    options, analysis, bars, selections and timings; ``s`` the judged state of
    every evaluated coordinate, ``keep`` which of the selected were evaluated.
    Raises KeyboardInterrupt when no leaf was evaluated at all.
    """
    point, opts = check.point, check.opts
    leaves, partial, unchecked = [], [], []
    for k, leaf in enumerate(point.leaves):
        r = leaf_report(check, k, s, keep)
        if r is None:
            unchecked.append(leaf.path)
            continue
        leaves.append(r)
        if r.interrupted:
            partial.append(r)
    if not leaves:
        raise KeyboardInterrupt
    notes = notes_of(check, leaves, s)
    interrupted = [r.path for r in partial] + unchecked
    if check.stopped:
        notes.insert(0, _interrupted_note(partial, unchecked))
        if not interrupted:  # Ctrl-C after the last evaluation
            interrupted = [r.path for r in leaves]
    noise = [r.noise for r in leaves if math.isfinite(r.noise)]
    return GradCheckReport(
        leaves=tuple(leaves), skipped=point.skipped, rtol=check.bar.rtol,
        bar_reason=check.bar.reason,
        step=float(check.h0[0]) if opts.step != "auto" else float(leaves[0].step),
        method=opts.method, dtype=point.dtype.name,
        grad_source="jax.grad" if check.grad_fn is None else callable_name(check.grad_fn),
        f_value=check.f0, device=check.device,
        seconds=time.perf_counter() - check.t_start, notes=tuple(notes),
        kink_sites=tuple(x.label for x in check.analysis.sites),
        untracked=tuple(x.label for x in check.analysis.untracked),
        opaque=tuple(x.label for x in check.analysis.opaque),
        precision=check.precision_text, noise_floor=max(noise, default=math.nan),
        strict=opts.strict, depth=check.analysis.depth,
        step_rule="auto" if opts.step == "auto" else "fixed",
        interrupted=tuple(interrupted),
        compilation={**check.compile_counts, **{k: round(v, 4) for k, v in check.times.items()}},
        seed=check.seed,
    )  # fmt: skip


def _interrupted_note(partial: list[LeafReport], unchecked: list[str]) -> str:
    if not partial and not unchecked:
        return (
            "interrupted (Ctrl-C) after the last evaluation: every coordinate was "
            "evaluated and is judged above, but the check stopped there and does "
            "not pass."
        )
    cut = "".join(
        f"{r.path} was stopped after {r.num_checked:,} of its {r.num_selected:,} "
        "coordinates (those are judged above); "
        for r in partial
    )
    rest = f"the leaves {', '.join(unchecked)} were not checked; " if unchecked else ""
    return (
        f"interrupted (Ctrl-C): {cut}{rest}the report covers only what was checked "
        "and does not pass."
    )


def _max_finite(values: np.ndarray) -> float:
    return float(values.max()) if len(values) else math.nan


def notes_of(check: Any, leaves: list[LeafReport], s: judge.State) -> list[str]:
    """What the reader should know beyond the table."""
    notes = list(check.notes)
    analysis, opts, f0 = check.analysis, check.opts, check.f0
    if analysis.opaque:
        notes.append(
            "f calls primitives jaxcheck cannot see into ("
            + ", ".join(sorted({x.primitive for x in analysis.opaque}))
            + "): kinks inside them are not detected, so a coordinate that crosses "
            "one may be reported wrong; the leaves that depend on them get the "
            f"bar for objectives with kinks ({compare.KINK_RTOL:g})."
        )
    if analysis.untracked:
        notes.append(
            "f has kink-capable primitives whose winners are not tracked ("
            + ", ".join(sorted({x.primitive for x in analysis.untracked}))
            + f"): the leaves that depend on them get the bar {compare.KINK_RTOL:g}."
        )
    if analysis.sites and not opts.track_kinks:
        notes.append(
            "winner tracking is off (`track_kinks=False`): a coordinate that crosses "
            "a kink is not recognised as one; it shows up as a large error unless "
            "smaller steps avoid the kink."
        )
    eps = float(jnp.finfo(check.point.dtype).eps)
    floor = max((r.noise for r in leaves if math.isfinite(r.noise)), default=math.nan)
    if (
        not check.precision_text
        and math.isfinite(floor)
        and floor > 1e4 * eps * max(abs(f0), 1.0 if f0 == 0 else 0.0)
    ):
        check.precision_text = "noise like a lower precision (measured)"
        relative = f" ({floor / abs(f0):.0e} relative to f)" if f0 else ""
        notes.append(
            f"the measured round-off noise of f is {floor:.1e}{relative}, far above "
            f"{check.point.dtype.name} round-off: f may compute in float32 somewhere "
            "jaxcheck cannot see (a callback, a kernel), or sum many large terms that "
            "cancel. Coordinates within that noise are untestable, not wrong."
        )
    left = s.reason == judge.DEFERRED
    notes.extend(_count_notes(leaves, check.bar, f0, deferred=int(left.sum())))
    if left.any():
        n = int(left.sum())
        paths = [
            check.point.leaves[int(k)].info.path or "params"
            for k in np.unique(s.group[left])
        ]
        notes.append(
            f"{n:,} coordinate{'s' if n > 1 else ''} outside the bar or within "
            f"round-off at the main step {'were' if n > 1 else 'was'} not followed "
            f"up (inconclusive): {', '.join(paths)} had more than "
            f"{opts.max_follow_ups} such coordinates; a random sample of that many "
            "was followed up and confirmed wrong coordinates, so the leaf fails "
            "either way. Pass `max_follow_ups=None` to follow up (and count) every "
            "one."
        )
    comp = check.compile_counts
    if comp.get("programs") and check.times["compiling"] > check.times["evaluating"]:
        notes.append(
            f"first call of this function's structure: compiling took "
            f"{check.times['compiling']:.2f} s, evaluating {check.times['evaluating']:.2f} s; "
            "a later check of a function with the same structure and shapes reuses "
            "the compiled program (kept on disk too)."
        )
    return notes


def _count_notes(
    leaves: list[LeafReport], bar: compare.Bar, f0: float, deferred: int = 0
) -> list[str]:
    notes = []
    total = sum(r.num_checked for r in leaves)
    n_untestable = sum(r.num_untestable for r in leaves)
    if n_untestable:
        notes.append(
            (
                "EVERY checked coordinate"
                if n_untestable == total
                else f"{n_untestable:,} coordinate" + ("s" if n_untestable > 1 else "")
            )
            + " had a difference within round-off noise of the finite difference "
            f"(|a - n| <= {bar.noise_factor:g}·eps·|f|/h, or the measured noise of "
            "f), also when retried with larger steps: they are neither confirmed nor "
            "refuted. Round-off is relative to |f|: a gradient tiny against |f| is "
            "resolved by checking the terms it comes from separately or subtracting "
            "the part of f that does not depend on it, not by scaling the loss."
        )
    n_inc = sum(r.num_inconclusive for r in leaves) - deferred
    if n_inc:
        notes.append(
            f"{n_inc:,} coordinate{'s' if n_inc > 1 else ''} had no evidence either "
            "way (a kink that could not be measured from either side, or a finite "
            "difference that does not settle across steps): inconclusive, neither "
            "confirmed nor refuted; each says why."
        )
    n_kink = sum(r.num_kink for r in leaves)
    if n_kink:
        notes.append(
            f"{n_kink:,} coordinate{'s' if n_kink > 1 else ''} crossed a kink (the "
            "winners of a max/ReLU/where/sort... differ between x - h·e_i and "
            "x + h·e_i) and the analytic value lies between the one-sided "
            "derivatives measured there (a subgradient): not failures."
        )
    for r in leaves:
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
                "CS231n notes call 1e-10 and smaller worrying): multiply the loss by a "
                "constant to bring them near 1, where floats are dense."
            )
    return notes
