"""The reports of :func:`jaxcheck.derivatives.check_directions`."""

from __future__ import annotations

import dataclasses
import html
import math
from typing import Any

from ..report import CoordResult, SkippedLeaf, html_headline, text_table
from ._common import _fmt_e, _plural


@dataclasses.dataclass(frozen=True)
class DirectionResult:
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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class DirectionLeafReport:
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

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "passed": self.passed,
            "max_rel_error": self.max_rel_error,
            "num_wrong_directions": self.num_wrong_directions,
            "directions": [d.to_dict() for d in self.directions],
            "localized": [c.to_dict() for c in self.localized],
            "localization": self.localization,
            "num_evaluations": self.num_evaluations,
            "seconds": self.seconds,
        }


@dataclasses.dataclass(frozen=True)
class DirectionsReport:
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

    def _rows(self) -> list[list[str]]:
        return [
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

    def format(self) -> str:
        """The report as text."""
        lines = [self.headline()]
        lines.append(
            f"  unit directions, h={self.step:g}, float64, gradient from "
            f"{self.grad_source}, f={self.f_value:.6g}, seed={self.seed}, on {self.device}"
        )
        lines.append(f"  bar: relative error <= {self.rtol:g} ({self.bar_reason})")
        lines.append(
            f"  a bug of relative size {self.error_size:g} in a leaf passes all "
            f"{self.num_directions} directions with probability <= "
            f"{self.miss_probability:.2g}"
        )
        lines.extend(text_table([list(self._HEADER), *self._rows()]))
        for s in self.skipped:
            lines.append(f"  skipped {s.path} ({s.dtype}): {s.reason}")
        for leaf in self.failures:
            lines.append(f"  {leaf.path or '(root)'}: localisation {leaf.localization}")
            for c in leaf.localized:
                idx = "[" + ", ".join(str(i) for i in c.index) + "]"
                lines.append(
                    f"    {leaf.path}{idx}  analytic={c.analytic:+.6e}  "
                    f"numeric={c.numeric:+.6e}  rel={_fmt_e(c.rel_error)}  {c.verdict}"
                )
        for note in self.notes:
            lines.append(f"  note: {note}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()

    def _repr_html_(self) -> str:
        esc = html.escape
        parts = [
            "<div>" + html_headline(self.headline(), self.passed),
            f"<p>h={self.step:g}; bar: relative error &le; {self.rtol:g}; a bug of "
            f"relative size {self.error_size:g} passes with probability &le; "
            f"{self.miss_probability:.2g}</p><table><thead><tr>",
            "".join(f"<th>{esc(h)}</th>" for h in self._HEADER),
            "</tr></thead><tbody>",
        ]
        for leaf, row in zip(self.leaves, self._rows(), strict=True):
            style = "" if leaf.passed else ' style="background:#ffebee"'
            parts.append(
                f"<tr{style}>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>"
            )
        parts.append("</tbody></table>")
        for leaf in self.failures:
            parts.append(
                f"<p>Localised in <code>{esc(leaf.path)}</code> "
                f"({esc(leaf.localization)}):</p><ul>"
            )
            for c in leaf.localized:
                idx = "[" + ", ".join(str(i) for i in c.index) + "]"
                parts.append(
                    f"<li><code>{esc(leaf.path + idx)}</code> analytic={c.analytic:+.6e} "
                    f"numeric={c.numeric:+.6e} rel={_fmt_e(c.rel_error)}</li>"
                )
            parts.append("</ul>")
        parts.extend(f"<p>Note: {esc(n)}</p>" for n in self.notes)
        parts.append("</div>")
        return "".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of the whole report."""
        return {
            "passed": self.passed,
            "num_directions": self.num_directions,
            "rtol": self.rtol,
            "bar_reason": self.bar_reason,
            "step": self.step,
            "seed": self.seed,
            "error_size": self.error_size,
            "miss_probability": self.miss_probability,
            "grad_source": self.grad_source,
            "f_value": self.f_value,
            "device": self.device,
            "seconds": self.seconds,
            "num_evaluations": self.num_evaluations,
            "full_check_evaluations": self.full_check_evaluations,
            "leaves": [leaf.to_dict() for leaf in self.leaves],
            "skipped": [s.to_dict() for s in self.skipped],
            "notes": list(self.notes),
        }
