"""Reports of a gradient check: frozen host-side dataclasses rendered by
:mod:`jaxcheck.render` (text wrapped to the terminal, HTML for Jupyter,
strict-JSON ``to_dict()``)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from .compare import BAND_NAMES
from .render import Doc, Rendered, Table, plain, render_text

__all__ = ["CoordResult", "GradCheckReport", "GradientCheckError", "LeafReport"]
__all__ += ["SkippedLeaf"]


class GradientCheckError(AssertionError):
    """Raised by :func:`jaxcheck.assert_grads` when a gradient check fails.

    It subclasses ``AssertionError`` so that test runners report a failure, not
    an error. The message is the report of the failing leaves; the full report
    is available as ``.report``.
    """

    def __init__(self, message: str, report: GradCheckReport | None = None):
        super().__init__(message)
        self.report = report


def _fmt(x: float) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return str(x)
    return f"{x:.2e}"


def _count(n: int, noun: str) -> str:
    plural = {"leaf": "leaves", "entry": "entries"}.get(noun, noun + "s")
    return f"{n:,} {noun if n == 1 else plural}"


def _unresolved_title(leaf: LeafReport) -> str:
    if leaf.num_untestable and leaf.num_inconclusive:
        return "untestable and inconclusive"
    return "untestable" if leaf.num_untestable else "inconclusive"


def _fmt_val(x: float) -> str:
    return f"{x:+.6e}"


def _index_str(index: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(i) for i in index) + "]" if index else ""


@dataclasses.dataclass(frozen=True)
class CoordResult(Rendered):
    """One checked coordinate.

    Attributes:
      index: the multi-index into the leaf (``()`` for a scalar leaf).
      analytic: the analytic gradient entry.
      numeric: the centered-difference estimate.
      rel_error: ``|a - n| / max(|a|, |n|)``.
      verdict: ``"ok"``, ``"wrong"``, ``"untestable"`` or ``"kink"``.
      f_plus: ``f(x + h e_i)``.
      f_minus: ``f(x - h e_i)``.
      kink: the decision sites whose winners changed between ``x - h e_i`` and
        ``x + h e_i`` (empty when no kink was crossed).
      step: the step of the estimate in ``numeric`` when it is not the leaf's
        (a re-check with a smaller or larger step), else NaN.
      resolution: how the verdict was reached when the main step did not
        settle it, e.g. ``"one-sided derivatives (left +0, right +1) bracket it:
        a subgradient"``.
      lo: at a kink, the smaller one-sided derivative measured (else NaN).
      hi: the larger one.
    """

    index: tuple[int, ...]
    analytic: float
    numeric: float
    rel_error: float
    verdict: str
    f_plus: float = math.nan
    f_minus: float = math.nan
    kink: str = ""
    step: float = math.nan
    resolution: str = ""
    lo: float = math.nan
    hi: float = math.nan

    def describe(self) -> str:
        """The coordinate's index, values, error and verdict on one line."""
        text = (
            f"{_index_str(self.index)}  analytic={_fmt_val(self.analytic)}"
            f"  numeric={_fmt_val(self.numeric)}  rel={_fmt(self.rel_error)}"
            f"  {self.verdict}"
        )
        if self.verdict == "untestable" and math.isfinite(self.f_plus):
            text += f"  f(x+h)={_fmt_val(self.f_plus)}  f(x-h)={_fmt_val(self.f_minus)}"
        if not math.isnan(self.step):
            text += f"  h={self.step:.1e}"
        if self.kink:
            text += f"  [kink: {self.kink}]"
        if self.resolution:
            text += f"  ({self.resolution})"
        return text

    def _doc(self) -> Doc:
        return Doc(f"coordinate {self.describe()}", ok=self.verdict != "wrong")


@dataclasses.dataclass(frozen=True)
class SkippedLeaf(Rendered):
    """A leaf that was not checked, and why.

    Attributes:
      path: ``jax.tree_util.keystr`` of the leaf.
      reason: why it was not checked.
      dtype: its dtype, or Python type name.
      shape: its shape (``()`` for non-arrays).
    """

    path: str
    reason: str
    dtype: str = ""
    shape: tuple[int, ...] = ()

    def _doc(self) -> Doc:
        return Doc(f"skipped {self.path} ({self.dtype}): {self.reason}")


@dataclasses.dataclass(frozen=True)
class LeafReport(Rendered):
    """The check of one leaf.

    Attributes:
      path: ``jax.tree_util.keystr`` of the leaf, e.g. ``['layer1']['W']``.
      shape: the leaf's shape.
      dtype: the caller's dtype of the leaf (the check itself ran in float64).
      num_checked: how many coordinates were checked.
      max_rel_error: the largest relative error among them.
      band_counts: how many coordinates fall in each band of the notes.
      num_ok: coordinates within the bar.
      num_wrong: coordinates outside the bar and not explained by round-off.
      num_untestable: coordinates whose difference is within round-off noise.
      worst: the worst coordinates (wrong ones first), at most ``max_worst``.
      step: the step ``h`` used for this leaf.
      chunk_size: coordinates per vmapped batch.
      seconds: time spent on this leaf's finite differences.
      num_kink: coordinates whose finite difference crossed a kink (winners
        differ between ``x - h e_i`` and ``x + h e_i``) and that were not found
        wrong by the re-check; not failures.
      num_kink_confirmed: of those, how many the re-check confirmed (a smaller
        step avoided the kink, or the analytic value lies between the one-sided
        derivatives).
      kink_sites: how many coordinates crossed each decision site (by label).
      num_kink_crossed: coordinates whose finite difference crossed a kink,
        including those the re-check found wrong.
      kinks: examples of kink coordinates, at most ``max_worst``.
      tracked: whether the winners of this leaf were tracked.
      num_retried: untestable coordinates retried with a larger step.
      propagated: whether ``f(x ± h e_i)`` was computed by perturbation
        propagation (:mod:`jaxcheck.propagate`) instead of the plain engine.
      propagation: the propagation plan, or why it was not used.
      noise: the median measured round-off noise (standard deviation) of ``f``
        along this leaf's questioned coordinates; NaN when not measured.
      num_selected: how many coordinates were selected for the check; more than
        ``num_checked`` when Ctrl-C interrupted this leaf (then only the
        coordinates finished before it were judged).
      interrupted: whether Ctrl-C stopped the check in this leaf (the check
        ends with it; the report does not pass).
      num_inconclusive: coordinates with no evidence either way (a kink that
        could not be measured, a finite difference that does not settle).
      rtol: the relative-error bar of this leaf.
      main_rel_error: the largest relative error of the main pass (the chosen
        method at the chosen step, before any follow-up), over the
        coordinates that crossed no kink: what that method and step give.
    """

    path: str
    shape: tuple[int, ...]
    dtype: str
    num_checked: int
    max_rel_error: float
    band_counts: dict[str, int]
    num_ok: int
    num_wrong: int
    num_untestable: int
    worst: tuple[CoordResult, ...]
    step: float
    chunk_size: int = 0
    seconds: float = 0.0
    num_kink: int = 0
    num_kink_confirmed: int = 0
    kink_sites: dict[str, int] = dataclasses.field(default_factory=dict)
    kinks: tuple[CoordResult, ...] = ()
    tracked: bool = False
    num_retried: int = 0
    noise: float = math.nan
    num_kink_crossed: int = 0
    propagated: bool = False
    propagation: str = ""
    num_selected: int = 0
    interrupted: bool = False
    num_inconclusive: int = 0
    rtol: float = math.nan
    main_rel_error: float = math.nan

    @property
    def size(self) -> int:
        return int(math.prod(self.shape))

    @property
    def passed(self) -> bool:
        """True when no checked coordinate of this leaf is wrong."""
        return self.num_wrong == 0

    @property
    def num_tested(self) -> int:
        """Coordinates with a verdict backed by evidence: ok, kink or wrong."""
        return self.num_checked - self.num_untestable - self.num_inconclusive

    @property
    def verdict(self) -> str:
        if self.num_wrong:
            return "FAIL"
        if self.interrupted:
            return "INTERRUPTED"
        if self.num_untestable == self.num_checked:
            return "UNTESTABLE"
        if self.num_tested == 0:
            return "INCONCLUSIVE"
        return "ok"

    _dict_extra = ("passed",)

    def _doc(self) -> Doc:
        report = GradCheckReport((self,), (), self.rtol, "", self.step)
        table = report._table((self,))
        lines = [table, *(_coord_line(self, c) for c in self.worst + self.kinks)]
        return Doc(f"leaf {self.path or '(root)'}: {self.verdict}", lines, self.passed)


@dataclasses.dataclass(frozen=True)
class GradCheckReport(Rendered):
    """The result of :func:`jaxcheck.check_grads`.

    Attributes:
      leaves: one :class:`LeafReport` per checked leaf, in tree order.
      skipped: the leaves that were not checked, with reasons.
      rtol: the relative-error bar that was applied.
      bar_reason: why that bar.
      step: the step ``h`` of the centered differences.
      method: the finite-difference formula.
      dtype: the dtype the check ran in.
      grad_source: ``"jax.grad"`` or the name of the user's gradient function.
      f_value: ``f(params, *args)`` at the point, in float64.
      device: the device the check ran on.
      seconds: wall time of the whole check.
      notes: remarks the reader should see (e.g. untestable coordinates).
      kink_sites: the kink-capable primitives of ``f`` whose winners were
        tracked (labels such as ``"max in relu at model.py:12 (loss)"``).
      untracked: kink-capable primitives on the parameters' path whose winners
        are not tracked.
      opaque: primitives jaxcheck cannot see into (callbacks, kernels): kinks
        inside them are not detected.
      precision: ``""``, or what lower precision ``f`` computes in (e.g.
        ``"float32 inside"``).
      noise_floor: the largest measured round-off noise of ``f`` (standard
        deviation) along the questioned coordinates; NaN if not measured.
      strict: whether untestable coordinates fail the check.
      depth: the longest chain of matrix products / convolutions in ``f``.
      step_rule: ``"fixed"`` or ``"auto"`` (chosen per leaf).
      interrupted: the leaves not checked, or not finished, because the check
        was interrupted (Ctrl-C); empty for a complete check. A leaf stopped
        midway is listed here and also in ``leaves``, with the coordinates it
        finished (its ``LeafReport.interrupted`` is True).
      compilation: what the check cost to prepare: ``programs`` compiled,
        ``loaded`` from jaxcheck's on-disk cache, ``reused`` from memory, and
        the seconds spent ``tracing``, ``compiling`` and ``evaluating``.
      seed: the seed of the coordinate sampling (drawn when ``seed=None``).
    """

    leaves: tuple[LeafReport, ...]
    skipped: tuple[SkippedLeaf, ...]
    rtol: float
    bar_reason: str
    step: float
    method: str = "central"
    dtype: str = "float64"
    grad_source: str = "jax.grad"
    f_value: float = math.nan
    device: str = ""
    seconds: float = 0.0
    notes: tuple[str, ...] = ()
    kink_sites: tuple[str, ...] = ()
    untracked: tuple[str, ...] = ()
    opaque: tuple[str, ...] = ()
    precision: str = ""
    noise_floor: float = math.nan
    strict: bool = False
    depth: int = 0
    step_rule: str = "fixed"
    interrupted: tuple[str, ...] = ()
    compilation: dict[str, Any] = dataclasses.field(default_factory=dict)
    seed: int | None = None

    def _leaf_fails(self, leaf: LeafReport) -> bool:
        return not leaf.passed or (
            self.strict and (leaf.num_untestable > 0 or leaf.num_inconclusive > 0)
        )

    @property
    def status(self) -> str:
        """``"passed"``, ``"failed"``, ``"inconclusive"`` or ``"interrupted"``.

        Failed: a coordinate is wrong (with ``strict=True``: or untestable or
        inconclusive). Inconclusive: nothing could be tested (every coordinate
        untestable or inconclusive), so nothing was confirmed. Interrupted:
        Ctrl-C stopped the check before the end.
        """
        if any(self._leaf_fails(leaf) for leaf in self.leaves):
            return "failed"
        if self.interrupted:
            return "interrupted"
        if not any(leaf.num_tested for leaf in self.leaves):
            return "inconclusive"
        return "passed"

    @property
    def passed(self) -> bool:
        """True when no checked coordinate is wrong and at least one was tested.

        Untestable, inconclusive and kink coordinates do not fail a check; they
        are counted and shown in the report. A check in which nothing could be
        tested is inconclusive and does not pass. With ``strict=True``
        untestable and inconclusive coordinates fail it, and a check
        interrupted with Ctrl-C never passes.
        """
        return self.status == "passed"

    @property
    def failures(self) -> tuple[LeafReport, ...]:
        """The leaves with at least one wrong coordinate (or, when strict, an
        untestable one)."""
        return tuple(leaf for leaf in self.leaves if self._leaf_fails(leaf))

    @property
    def num_kink(self) -> int:
        return sum(leaf.num_kink for leaf in self.leaves)

    @property
    def has_kinks(self) -> bool:
        """True when ``f`` has kink-capable primitives (tracked or not)."""
        return bool(self.kink_sites or self.untracked or self.opaque)

    @property
    def num_checked(self) -> int:
        return sum(leaf.num_checked for leaf in self.leaves)

    @property
    def num_wrong(self) -> int:
        return sum(leaf.num_wrong for leaf in self.leaves)

    @property
    def num_untestable(self) -> int:
        return sum(leaf.num_untestable for leaf in self.leaves)

    @property
    def num_ok(self) -> int:
        return sum(leaf.num_ok for leaf in self.leaves)

    @property
    def num_inconclusive(self) -> int:
        return sum(leaf.num_inconclusive for leaf in self.leaves)

    @property
    def max_rel_error(self) -> float:
        return max((leaf.max_rel_error for leaf in self.leaves), default=0.0)

    @property
    def main_rel_error(self) -> float:
        """The largest relative error of the main pass (see
        :attr:`LeafReport.main_rel_error`)."""
        return max((leaf.main_rel_error for leaf in self.leaves), default=math.nan)

    @property
    def worst(self) -> tuple[str, CoordResult] | None:
        """``(leaf path, coordinate)`` of the worst coordinate overall."""
        best: tuple[str, CoordResult] | None = None
        for leaf in self.leaves:
            for c in leaf.worst:
                key = (c.verdict == "wrong", c.rel_error)
                if best is None or key > (
                    best[1].verdict == "wrong",
                    best[1].rel_error,
                ):
                    best = (leaf.path, c)
        return best

    def leaf(self, path: str) -> LeafReport:
        """The report of the leaf at ``path`` (a ``keystr`` such as ``"['W']"``).

        Raises:
          KeyError: if no checked leaf has that path; the message lists them.
        """
        for leaf in self.leaves:
            if leaf.path == path:
                return leaf
        raise KeyError(
            f"No checked leaf at path {path!r}. Checked leaves: "
            f"{[leaf.path for leaf in self.leaves]}; skipped: "
            f"{[s.path for s in self.skipped]}."
        )

    # ----------------------------------------------------------------- text
    def _worst_clause(self, noun: str = "coordinate") -> str:
        """The headline's clause on the worst relative error, over the same
        coordinates as the table's ``max rel err``: those judged ok or wrong."""
        scored = [leaf for leaf in self.leaves if leaf.num_ok + leaf.num_wrong]
        if scored:
            leaf = max(scored, key=lambda lf: lf.max_rel_error)
            where = leaf.path
            coords = [c for c in leaf.worst if c.verdict in _SCORED]
            best = max(coords, key=lambda c: c.rel_error, default=None)
            if best is not None and best.rel_error == leaf.max_rel_error:
                where += _index_str(best.index)
            text = f"; worst relative error {_fmt(leaf.max_rel_error)} at {where}"
            if self._unscored():
                n = sum(lf.num_ok + lf.num_wrong for lf in self.leaves)
                text += f" among the {_count(n, noun)} judged ok or wrong"
            return text
        unscored = [
            (leaf.path, c)
            for leaf in self.leaves
            for c in leaf.worst
            if c.verdict in ("untestable", "inconclusive")
            and math.isfinite(c.rel_error)
        ]
        if not unscored:
            return ""
        path, c = max(unscored, key=lambda pc: pc[1].rel_error)
        return (
            f"; relative errors up to {_fmt(c.rel_error)} (at {path}{_index_str(c.index)})"
            " are within round-off, not evidence"
        )

    def _unscored(self) -> int:
        return self.num_untestable + self.num_inconclusive + self.num_kink

    def headline(self) -> str:
        """One line: the verdict, what was checked, and the worst coordinate."""
        status = self.status.upper()
        text = (
            f"jaxcheck: gradient check {status}: {_count(len(self.leaves), 'leaf')}, "
            f"{_count(self.num_checked, 'coordinate')}"
        )
        if status == "FAILED":
            text += (
                f", {self.num_wrong:,} wrong in {_count(len(self.failures), 'leaf')}"
            )
        strict = " (strict: they fail)" if self.strict else ""
        if self.num_untestable:
            text += f", {self.num_untestable:,} untestable{strict}"
        if self.num_inconclusive:
            text += f", {self.num_inconclusive:,} inconclusive{strict}"
        if status == "INCONCLUSIVE":
            text += ": nothing could be tested"
        if self.num_kink:
            text += f", {self.num_kink:,} at kinks"
        return text + self._worst_clause() + "."

    def _varied_steps(self) -> bool:
        return any(leaf.step != self.step for leaf in self.leaves)

    def _table(self, leaves: tuple[LeafReport, ...]) -> Table:
        """The leaf table: one row per leaf, bands and verdict counts."""
        extra = bool(self.num_inconclusive)
        steps = self._varied_steps()
        header = list(_HEADER)
        if extra:
            header.insert(-1, "inconclusive")
        if steps:
            header.insert(4, "h")
        rows = []
        for leaf in leaves:
            b = leaf.band_counts
            scored = leaf.num_ok + leaf.num_wrong
            row = [
                leaf.path or "(root)",
                str(leaf.shape),
                leaf.dtype,
                f"{leaf.num_checked}/{leaf.size}",
                _fmt(leaf.max_rel_error) if scored else "-",
                *(str(b[name]) for name in reversed(BAND_NAMES)),
                str(leaf.num_wrong),
                str(leaf.num_untestable),
                str(leaf.num_kink),
                leaf.verdict,
            ]
            if extra:
                row.insert(-1, str(leaf.num_inconclusive))
            if steps:
                row.insert(4, f"{leaf.step:.1e}")
            rows.append(row)
        return Table(header, rows, marked=[self._leaf_fails(lf) for lf in leaves])

    def _kink_lines(self, leaves: tuple[LeafReport, ...], worst: bool) -> list[str]:
        lines = []
        if self.kink_sites:
            more = len(self.kink_sites) - 6
            lines.append(
                f"  kink sites tracked: {'; '.join(self.kink_sites[:6])}"
                + (f"; {more} more" if more > 0 else "")
            )
        if self.untracked:
            lines.append(f"  kink-capable, not tracked: {'; '.join(self.untracked)}")
        if self.opaque:
            lines.append(
                "  not seen into (kinks inside are not detected): "
                + "; ".join(self.opaque)
            )
        for leaf in leaves:
            if leaf.num_kink or leaf.num_kink_crossed:
                sites = ", ".join(f"{k} ({n})" for k, n in leaf.kink_sites.items())
                crossed = max(leaf.num_kink_crossed, leaf.num_kink)
                wrong_here = crossed - leaf.num_kink
                lines.append(
                    f"  kinks of {leaf.path or '(root)'}: {crossed} coordinate(s) crossed "
                    f"{sites}; {leaf.num_kink_confirmed} confirmed by a re-check, "
                    f"{leaf.num_kink - leaf.num_kink_confirmed} undecided"
                    + (f", {wrong_here} wrong" if wrong_here else "")
                )
                if worst:
                    lines.extend(_coord_line(leaf, c) for c in leaf.kinks)
        return lines

    def _doc(
        self, leaves: tuple[LeafReport, ...] | None = None, worst: bool = True
    ) -> Doc:
        leaves = self.leaves if leaves is None else leaves
        h_text = (
            f"h={self.step:g}" if self.step_rule == "fixed" else "h chosen per leaf"
        )
        lines: list[str | Table] = [
            f"  {self.method} differences, {h_text}, {self.dtype}, gradient from "
            f"{self.grad_source}, f={self.f_value:.6g}, on {self.device}",
            f"  bar: relative error <= {self.rtol:g} ({self.bar_reason})",
            self._table(leaves),
        ]
        if self._unscored():
            lines.append(
                "  max rel err: over the coordinates judged ok or wrong; untestable "
                "(within round-off), inconclusive and kink coordinates are counted "
                "in their own columns"
            )
        fast = [leaf.path for leaf in leaves if leaf.propagated]
        if fast:
            lines.append(
                "  perturbation propagated through linear consumers for: "
                + ", ".join(fast)
            )
        lines += [f"  skipped {s.path} ({s.dtype}): {s.reason}" for s in self.skipped]
        lines += self._kink_lines(leaves, worst)
        for leaf in leaves if worst else ():
            if leaf.passed and not (leaf.num_untestable or leaf.num_inconclusive):
                continue
            shown = [
                c
                for c in leaf.worst
                if not leaf.passed or c.verdict in ("untestable", "inconclusive")
            ]
            if shown:
                title = "worst" if not leaf.passed else _unresolved_title(leaf)
                lines.append(f"  {title} coordinates of {leaf.path or '(root)'}:")
                lines += [_coord_line(leaf, c) for c in shown]
        lines += [f"  note: {note}" for note in self.notes]
        return Doc(self.headline(), lines, ok=self.passed)

    def format(
        self,
        leaves: tuple[LeafReport, ...] | None = None,
        *,
        worst: bool = True,
        width: int | None = None,
    ) -> str:
        """The report as text wrapped to ``width`` (the terminal's, 80 when
        unknown); ``leaves`` restricts it (e.g. to failures), ``worst=False``
        leaves out the coordinate lines."""
        return render_text(self._doc(leaves, worst), width)

    def failure_message(self) -> str:
        """The text :func:`jaxcheck.assert_grads` raises: failing leaves only."""
        return self.format(self.failures)

    # ----------------------------------------------------------------- dict
    def _data(self) -> dict[str, Any]:
        names = ("passed", "status", "interrupted", "rtol", "bar_reason", "step")
        names += ("method", "dtype", "grad_source", "f_value", "device", "seconds")
        names += ("num_checked", "num_wrong", "num_untestable", "num_inconclusive")
        names += ("num_kink", "max_rel_error", "kink_sites", "untracked", "opaque")
        names += ("precision", "noise_floor", "strict", "depth", "step_rule")
        names += ("leaves", "skipped", "notes", "compilation", "seed")
        d = {name: plain(getattr(self, name)) for name in names}
        return d | {"bands": list(BAND_NAMES)}


_SCORED = ("ok", "wrong")

_HEADER = (
    "leaf",
    "shape",
    "dtype",
    "checked",
    "max rel err",
    "<1e-7",
    "1e-7..1e-4",
    "1e-4..1e-2",
    ">1e-2",
    "wrong",
    "untestable",
    "kink",
    "verdict",
)


def _coord_line(leaf: LeafReport, c: CoordResult) -> str:
    return f"    {leaf.path}{c.describe()}"
