"""Reports of a gradient check: frozen host-side dataclasses with a readable
``__str__``, ``_repr_html_`` for Jupyter and ``to_dict()`` for JSON."""

from __future__ import annotations

import dataclasses
import html
import math
from typing import Any

from .compare import BAND_NAMES


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
    plural = {"leaf": "leaves"}.get(noun, noun + "s")
    return f"{n:,} {noun if n == 1 else plural}"


def _fmt_val(x: float) -> str:
    return f"{x:+.6e}"


def _index_str(index: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(i) for i in index) + "]" if index else ""


@dataclasses.dataclass(frozen=True)
class CoordResult:
    """One checked coordinate.

    Attributes:
      index: the multi-index into the leaf (``()`` for a scalar leaf).
      analytic: the analytic gradient entry.
      numeric: the centered-difference estimate.
      rel_error: ``|a - n| / max(|a|, |n|)``.
      verdict: ``"ok"``, ``"wrong"`` or ``"untestable"``.
      f_plus: ``f(x + h e_i)``.
      f_minus: ``f(x - h e_i)``.
    """

    index: tuple[int, ...]
    analytic: float
    numeric: float
    rel_error: float
    verdict: str
    f_plus: float = math.nan
    f_minus: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"index": list(self.index)}


@dataclasses.dataclass(frozen=True)
class SkippedLeaf:
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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"shape": list(self.shape)}


@dataclasses.dataclass(frozen=True)
class LeafReport:
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

    @property
    def size(self) -> int:
        return int(math.prod(self.shape))

    @property
    def passed(self) -> bool:
        """True when no checked coordinate of this leaf is wrong."""
        return self.num_wrong == 0

    @property
    def verdict(self) -> str:
        if self.num_wrong:
            return "FAIL"
        if self.num_untestable == self.num_checked:
            return "UNTESTABLE"
        return "ok"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["shape"] = list(self.shape)
        d["worst"] = [c.to_dict() for c in self.worst]
        d["passed"] = self.passed
        return d


@dataclasses.dataclass(frozen=True)
class GradCheckReport:
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

    @property
    def passed(self) -> bool:
        """True when no checked coordinate of any leaf is wrong.

        Untestable coordinates do not fail a check; they are counted in
        :attr:`num_untestable` and shown in the report.
        """
        return all(leaf.passed for leaf in self.leaves)

    @property
    def failures(self) -> tuple[LeafReport, ...]:
        """The leaves with at least one wrong coordinate."""
        return tuple(leaf for leaf in self.leaves if not leaf.passed)

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
    def max_rel_error(self) -> float:
        return max((leaf.max_rel_error for leaf in self.leaves), default=0.0)

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
    def headline(self) -> str:
        """One line: the verdict, what was checked, and the worst coordinate."""
        status = "PASSED" if self.passed else "FAILED"
        text = (
            f"jaxcheck: gradient check {status}: {_count(len(self.leaves), 'leaf')}, "
            f"{_count(self.num_checked, 'coordinate')}"
        )
        if not self.passed:
            text += (
                f", {self.num_wrong:,} wrong in {_count(len(self.failures), 'leaf')}"
            )
        if self.num_untestable:
            text += f", {self.num_untestable:,} untestable"
        w = self.worst
        if w is not None:
            where = w[0] + _index_str(w[1].index)
            text += f"; worst relative error {_fmt(w[1].rel_error)} at {where}"
        return text + "."

    def _table_rows(self, leaves: tuple[LeafReport, ...]) -> list[list[str]]:
        rows = []
        for leaf in leaves:
            b = leaf.band_counts
            rows.append(
                [
                    leaf.path,
                    str(leaf.shape),
                    leaf.dtype,
                    f"{leaf.num_checked}/{leaf.size}",
                    _fmt(leaf.max_rel_error),
                    str(b["good"]),
                    str(b["acceptable_with_kinks"]),
                    str(b["uncomfortable"]),
                    str(b["probably_wrong"]),
                    str(leaf.num_wrong),
                    str(leaf.num_untestable),
                    leaf.verdict,
                ]
            )
        return rows

    _HEADER = [
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
        "verdict",
    ]

    def format(
        self, leaves: tuple[LeafReport, ...] | None = None, *, worst: bool = True
    ) -> str:
        """The report as text; ``leaves`` restricts the table (e.g. to failures)."""
        leaves = self.leaves if leaves is None else leaves
        lines = [self.headline()]
        lines.append(
            f"  {self.method} differences, h={self.step:g}, {self.dtype}, gradient from "
            f"{self.grad_source}, f={self.f_value:.6g}, on {self.device}"
        )
        lines.append(f"  bar: relative error <= {self.rtol:g} ({self.bar_reason})")
        rows = [self._HEADER, *self._table_rows(leaves)]
        widths = [max(len(r[i]) for r in rows) for i in range(len(self._HEADER))]
        for r in rows:
            lines.append(
                "  "
                + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            )
        for s in self.skipped:
            lines.append(f"  skipped {s.path} ({s.dtype}): {s.reason}")
        if worst:
            for leaf in (leaf for leaf in leaves if not leaf.passed):
                lines.append(f"  worst coordinates of {leaf.path}:")
                for c in leaf.worst:
                    lines.append(
                        f"    {leaf.path}{_index_str(c.index)}  analytic={_fmt_val(c.analytic)}"
                        f"  numeric={_fmt_val(c.numeric)}  rel={_fmt(c.rel_error)}  {c.verdict}"
                    )
        for note in self.notes:
            lines.append(f"  note: {note}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()

    def failure_message(self) -> str:
        """The text :func:`jaxcheck.assert_grads` raises: failing leaves only."""
        return self.format(self.failures)

    # ----------------------------------------------------------------- html
    def _repr_html_(self) -> str:
        esc = html.escape
        color = "#2e7d32" if self.passed else "#c62828"
        parts = [
            f'<div><p style="color:{color};font-weight:bold">{esc(self.headline())}</p>',
            f"<p>{esc(self.method)} differences, h={self.step:g}, {esc(self.dtype)}; "
            f"bar: relative error &le; {self.rtol:g} ({esc(self.bar_reason)})</p>",
            "<table><thead><tr>",
            "".join(f"<th>{esc(h)}</th>" for h in self._HEADER),
            "</tr></thead><tbody>",
        ]
        for leaf, row in zip(self.leaves, self._table_rows(self.leaves), strict=True):
            style = "" if leaf.passed else ' style="background:#ffebee"'
            parts.append(
                f"<tr{style}>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>"
            )
        parts.append("</tbody></table>")
        if self.skipped:
            parts.append("<p>Skipped:</p><ul>")
            parts.extend(
                f"<li><code>{esc(s.path)}</code>: {esc(s.reason)}</li>"
                for s in self.skipped
            )
            parts.append("</ul>")
        for leaf in self.failures:
            parts.append(
                f"<p>Worst coordinates of <code>{esc(leaf.path)}</code>:</p><ul>"
            )
            for c in leaf.worst:
                parts.append(
                    f"<li><code>{esc(leaf.path + _index_str(c.index))}</code> analytic="
                    f"{c.analytic:+.6e} numeric={c.numeric:+.6e} rel={_fmt(c.rel_error)} "
                    f"{esc(c.verdict)}</li>"
                )
            parts.append("</ul>")
        parts.extend(f"<p>Note: {esc(n)}</p>" for n in self.notes)
        parts.append("</div>")
        return "".join(parts)

    # ----------------------------------------------------------------- dict
    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of the whole report."""
        return {
            "passed": self.passed,
            "rtol": self.rtol,
            "bar_reason": self.bar_reason,
            "step": self.step,
            "method": self.method,
            "dtype": self.dtype,
            "grad_source": self.grad_source,
            "f_value": self.f_value,
            "device": self.device,
            "seconds": self.seconds,
            "num_checked": self.num_checked,
            "num_wrong": self.num_wrong,
            "num_untestable": self.num_untestable,
            "max_rel_error": self.max_rel_error,
            "leaves": [leaf.to_dict() for leaf in self.leaves],
            "skipped": [s.to_dict() for s in self.skipped],
            "notes": list(self.notes),
            "bands": list(BAND_NAMES),
        }
