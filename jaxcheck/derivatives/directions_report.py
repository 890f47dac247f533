"""The reports of :func:`jaxcheck.derivatives.check_directions`."""

from __future__ import annotations

import dataclasses
import math

from ..render import Doc, Rendered, Table
from ..report import CoordResult, SkippedLeaf
from ._common import _fmt_e, _plural


@dataclasses.dataclass(frozen=True)
class DirectionResult(Rendered):
    """One random direction of one leaf.

    Attributes:
      analytic: ``<a, w>``, the analytic directional derivative along the unit
        direction ``w``.
      numeric: ``(f(x + h w) - f(x - h w)) / |2 h w|``.
      rel_error: ``|analytic - numeric| / max(|analytic|, |numeric|)``.
      verdict: ``"ok"``, ``"wrong"`` or ``"untestable"``.
    """

    analytic: float
    numeric: float
    rel_error: float
    verdict: str

    def _doc(self) -> Doc:
        return Doc(
            f"direction: analytic={self.analytic:+.6e}  numeric={self.numeric:+.6e}"
            f"  rel={_fmt_e(self.rel_error)}  {self.verdict}",
            ok=self.verdict != "wrong",
        )


@dataclasses.dataclass(frozen=True)
class DirectionLeafReport(Rendered):
    """The random-direction check of one leaf, and the localisation of its bugs.

    Attributes:
      path: ``jax.tree_util.keystr`` of the leaf.
      shape: the leaf's shape.
      dtype: the caller's dtype of the leaf.
      directions: one result per random direction.
      localized: the coordinates found wrong by bisection (analytic and numeric
        are the plain coordinate derivatives), worst first.
      localization: ``"not needed"``, ``"off"``, ``"complete"`` or
        ``"incomplete: <why>"``.
      num_evaluations: evaluations of ``f`` spent on this leaf (2 per direction
        and 2 per group tested while bisecting).
      seconds: time spent on this leaf.
    """

    path: str
    shape: tuple[int, ...]
    dtype: str
    directions: tuple[DirectionResult, ...]
    localized: tuple[CoordResult, ...]
    localization: str
    num_evaluations: int
    seconds: float = 0.0

    @property
    def size(self) -> int:
        return int(math.prod(self.shape))

    @property
    def num_wrong_directions(self) -> int:
        return sum(d.verdict == "wrong" for d in self.directions)

    @property
    def max_rel_error(self) -> float:
        return max((d.rel_error for d in self.directions), default=0.0)

    @property
    def passed(self) -> bool:
        """True when no direction and no localised coordinate is wrong."""
        return self.num_wrong_directions == 0 and not self.localized

    @property
    def verdict(self) -> str:
        if not self.passed:
            return "FAIL"
        if self.directions and all(d.verdict == "untestable" for d in self.directions):
            return "UNTESTABLE"
        return "ok"

    _dict_extra = ("passed", "max_rel_error", "num_wrong_directions")

    def _doc(self) -> Doc:
        report = DirectionsReport((self,), (), len(self.directions), *_NO_BAR)
        return Doc(
            f"leaf {self.path or '(root)'}: {self.verdict}, localisation "
            f"{self.localization}",
            [report._table(), *report._localized(self)],
            self.passed,
        )


_NO_BAR = (math.nan, "", math.nan, 0, math.nan, math.nan)


@dataclasses.dataclass(frozen=True)
class DirectionsReport(Rendered):
    """The result of :func:`check_directions`.

    Attributes:
      leaves: one :class:`DirectionLeafReport` per checked leaf.
      skipped: the leaves that were not checked, with reasons.
      num_directions: ``K``, random directions per leaf.
      rtol: the relative-error bar.
      bar_reason: why that bar.
      step: the step ``h`` along each unit direction.
      seed: seed of the directions.
      error_size: the bug size (relative to a leaf's gradient) for which
        :attr:`miss_probability` is stated.
      miss_probability: upper bound on the probability that a bug of relative
        size ``error_size`` in one leaf passes all ``K`` directions.
      grad_source: ``"jax.grad"`` or the user's gradient function.
      f_value: ``f`` at the point.
      device: the device the check ran on.
      seconds: wall time of the whole check.
      notes: remarks the reader should see.
    """

    leaves: tuple[DirectionLeafReport, ...]
    skipped: tuple[SkippedLeaf, ...]
    num_directions: int
    rtol: float
    bar_reason: str
    step: float
    seed: int
    error_size: float
    miss_probability: float
    grad_source: str = "jax.grad"
    f_value: float = math.nan
    device: str = ""
    seconds: float = 0.0
    notes: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        """True when no direction of any leaf is wrong."""
        return all(leaf.passed for leaf in self.leaves)

    @property
    def failures(self) -> tuple[DirectionLeafReport, ...]:
        return tuple(leaf for leaf in self.leaves if not leaf.passed)

    @property
    def num_evaluations(self) -> int:
        """Evaluations of ``f`` the check spent (besides one at the point)."""
        return sum(leaf.num_evaluations for leaf in self.leaves)

    @property
    def full_check_evaluations(self) -> int:
        """Evaluations a full coordinate-by-coordinate check would need."""
        return 2 * sum(leaf.size for leaf in self.leaves)

    def leaf(self, path: str) -> DirectionLeafReport:
        """The report of the leaf at ``path``.

        Raises:
          KeyError: if no checked leaf has that path.
        """
        for leaf in self.leaves:
            if leaf.path == path:
                return leaf
        raise KeyError(
            f"No checked leaf at path {path!r}; checked: "
            f"{[leaf.path for leaf in self.leaves]}."
        )

    def headline(self) -> str:
        """One line: the verdict, the evaluations spent, the localised bugs."""
        status = "PASSED" if self.passed else "FAILED"
        n_loc = sum(len(leaf.localized) for leaf in self.leaves)
        text = (
            f"jaxcheck: direction check {status}: {_plural(len(self.leaves), 'leaf', 'leaves')}"
            f" x {self.num_directions} random directions, "
            f"{self.num_evaluations:,} evaluations of f (a full check: "
            f"{self.full_check_evaluations:,})"
        )
        if not self.passed:
            text += (
                f"; {_plural(len(self.failures), 'leaf', 'leaves')} wrong, "
                f"{_plural(n_loc, 'coordinate')} localised"
            )
        return text + "."

    _HEADER = (
        "leaf", "shape", "dtype", "directions", "max rel err", "wrong dirs",
        "localised", "evaluations", "verdict",
    )  # fmt: skip

    def _table(self) -> Table:
        rows = [
            [
                leaf.path or "(root)",
                str(leaf.shape),
                leaf.dtype,
                str(len(leaf.directions)),
                _fmt_e(leaf.max_rel_error),
                str(leaf.num_wrong_directions),
                str(len(leaf.localized)),
                f"{leaf.num_evaluations:,}",
                leaf.verdict,
            ]
            for leaf in self.leaves
        ]
        return Table(self._HEADER, rows, marked=[not lf.passed for lf in self.leaves])

    @staticmethod
    def _localized(leaf: DirectionLeafReport) -> list[str]:
        lines = [f"  {leaf.path or '(root)'}: localisation {leaf.localization}"]
        for c in leaf.localized:
            idx = "[" + ", ".join(str(i) for i in c.index) + "]"
            lines.append(
                f"    {leaf.path}{idx}  analytic={c.analytic:+.6e}  "
                f"numeric={c.numeric:+.6e}  rel={_fmt_e(c.rel_error)}  {c.verdict}"
            )
        return lines

    def _doc(self) -> Doc:
        lines: list[str | Table] = [
            f"  unit directions, h={self.step:g}, float64, gradient from "
            f"{self.grad_source}, f={self.f_value:.6g}, seed={self.seed}, on "
            f"{self.device}",
            f"  bar: relative error <= {self.rtol:g} ({self.bar_reason})",
            f"  a bug of relative size {self.error_size:g} in a leaf passes all "
            f"{self.num_directions} directions with probability <= "
            f"{self.miss_probability:.2g}",
            self._table(),
        ]
        lines += [f"  skipped {s.path} ({s.dtype}): {s.reason}" for s in self.skipped]
        for leaf in self.failures:
            lines += self._localized(leaf)
        lines += [f"  note: {note}" for note in self.notes]
        return Doc(self.headline(), lines, self.passed)

    def format(self, width: int | None = None) -> str:
        """The report as text wrapped to ``width`` (the terminal's by default)."""
        return self.render(width)

    _dict_extra = ("passed", "num_evaluations", "full_check_evaluations")
