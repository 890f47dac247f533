"""One rendering base for every jaxcheck report: text, HTML and strict JSON.

A report declares *what* it shows once, as a :class:`Doc`: a summary (the
first line, a complete verdict), then blocks: lines of text (notes, remarks)
and :class:`Table` objects (a header and rows of already formatted cells).
:class:`Rendered` derives from it

* ``__str__``: the text, wrapped to the terminal's width (80 columns when it is
  unknown); the summary breaks only between its clauses, long lines wrap with
  a hanging indent, tables are as wide as their widest cells;
* ``_repr_html_``: the same content as escaped HTML for Jupyter;
* ``to_dict()``: the report's fields as plain Python values made valid for
  strict JSON by :func:`strict_json` (NaN becomes ``None``, and a top-level
  ``"non_finite"`` says what each such ``None`` means).

This module imports nothing from jaxcheck, so both the checker and the training
half (:mod:`jaxcheck.training`) use it without depending on each other.
"""

from __future__ import annotations

import dataclasses
import html
import math
import shutil
import textwrap
from collections.abc import Sequence
from typing import Any, ClassVar

#: Columns of text when the terminal's width is unknown (a pipe, a notebook).
DEFAULT_WIDTH = 80
#: Extra indentation of the continuation lines of a wrapped line.
HANG = 4


@dataclasses.dataclass(frozen=True)
class Table:
    """A table of a report: a header and rows of formatted cells.

    Attributes:
      header: the column titles.
      rows: the rows, each a sequence of cells (strings, as they are shown).
      align: ``"left"`` or ``"right"`` (numbers in columns).
      marked: rows to highlight in HTML (e.g. failing leaves), by position;
        empty for none.
      indent: spaces before each text row.

    Examples:
      >>> print("\\n".join(Table(["leaf", "wrong"], [["['W']", "3"]]).lines()))
        leaf   wrong
        ['W']  3
    """

    header: Sequence[str]
    rows: Sequence[Sequence[str]]
    align: str = "left"
    marked: Sequence[bool] = ()
    indent: int = 2

    def lines(self, width: int | None = None) -> list[str]:
        """The table as text lines, each column as wide as its widest cell.

        With ``width``, a last column that would run past it wraps inside its
        column (the other columns are never cut).
        """
        every = [list(self.header), *[list(r) for r in self.rows]]
        widths = [max(len(r[i]) for r in every) for i in range(len(every[0]))]
        pad = str.rjust if self.align == "right" else str.ljust
        start = self.indent + sum(w + 2 for w in widths[:-1])
        room = (width or 0) - start
        out = []
        for r in every:
            cells = [pad(c, w) for c, w in zip(r[:-1], widths, strict=False)]
            last = [r[-1]]
            if width and start + len(r[-1]) > width and room >= 20:
                last = textwrap.wrap(r[-1], room, break_long_words=False) or [""]
            line = " " * self.indent + "  ".join([*cells, pad(last[0], widths[-1])])
            out.append(line.rstrip())
            out += [" " * start + more for more in last[1:]]
        return out

    def html(self) -> str:
        """The table as escaped HTML."""
        esc = html.escape
        head = "".join(f"<th>{esc(c)}</th>" for c in self.header)
        body = []
        for k, row in enumerate(self.rows):
            mark = k < len(self.marked) and self.marked[k]
            style = ' style="background:#ffebee"' if mark else ""
            cells = "".join(f"<td>{esc(c)}</td>" for c in row)
            body.append(f"<tr{style}>{cells}</tr>")
        return (
            f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}"
            "</tbody></table>"
        )


@dataclasses.dataclass(frozen=True)
class Doc:
    """What a report shows: its summary, then lines and tables in order.

    Attributes:
      summary: the first line, a complete verdict; clauses separated by ``", "``
        or ``"; "`` (only there does it wrap).
      blocks: text lines (their leading spaces are their indentation) and
        :class:`Table` objects.
      ok: colours the HTML summary green (True) or red (False); None: no
        colour (a report without a verdict).

    Examples:
      >>> doc = Doc("check PASSED: 2 leaves", ["  note: all fine"], ok=True)
      >>> print(render_text(doc))
      check PASSED: 2 leaves
        note: all fine
    """

    summary: str
    blocks: Sequence[str | Table] = ()
    ok: bool | None = None


def embed(title: str, doc: Doc) -> list[str | Table]:
    """The blocks that show ``doc`` inside another report, under ``title``
    (its tables stay tables, its lines wrap with the outer report's).

    Examples:
      >>> embed("--- term a ---", Doc("a FAILED", ["  note: x"]))
      ['--- term a ---', 'a FAILED', '  note: x']
    """
    return [title, doc.summary, *doc.blocks]


def terminal_width() -> int:
    """The terminal's width in columns (``$COLUMNS`` first), 80 when unknown.

    Examples:
      >>> terminal_width() >= 20
      True
    """
    return max(20, shutil.get_terminal_size((DEFAULT_WIDTH, 24)).columns)


def _clauses(text: str) -> list[str]:
    """``text`` cut after each ``", "`` / ``"; "`` outside brackets and quotes
    (the separator stays with the clause before it)."""
    out, start, depth, quote = [], 0, 0, ""
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth = max(0, depth - 1)
        elif ch in ",;" and not depth and text[i + 1 : i + 2] == " ":
            out.append(text[start : i + 1])
            start = i + 2
    out.append(text[start:])
    return out


def wrap_summary(text: str, width: int | None = None) -> list[str]:
    """The summary line wrapped between clauses, never inside one.

    The first line holds as many whole clauses as fit, so it stays a complete
    statement; the others are indented by 4. Only a clause longer than a line
    is itself cut between words.

    Examples:
      >>> wrap_summary("check FAILED: 2 leaves, 3 wrong; worst [0, 1]", 30)
      ['check FAILED: 2 leaves,', '    3 wrong; worst [0, 1]']
    """
    width = width or terminal_width()
    lines: list[str] = []
    line = ""
    pieces: list[str] = []
    for clause in _clauses(text):
        # A clause longer than a whole line is the one place words may part.
        pieces += clause.split(" ") if len(clause) + HANG > width else [clause]
    for clause in pieces:
        if not line:
            line = clause
        elif len(line) + 1 + len(clause) > width:
            lines.append(line)
            line = " " * HANG + clause
        else:
            line += " " + clause
    lines.append(line)
    return lines


def wrap_line(line: str, width: int | None = None) -> list[str]:
    """One text line wrapped at spaces; continuation lines hang 4 spaces
    deeper than the line's own indentation. Words longer than a line stay
    whole.

    Examples:
      >>> wrap_line("  note: " + "word " * 12, 40)
      ['  note: word word word word word word', '      word word word word word word']
    """
    width = width or terminal_width()
    if len(line) <= width:
        return [line]
    indent = len(line) - len(line.lstrip(" "))
    return textwrap.wrap(
        line.strip(),
        width=width,
        initial_indent=" " * indent,
        subsequent_indent=" " * (indent + HANG),
        break_long_words=False,
        break_on_hyphens=False,
    ) or [line]


def render_text(doc: Doc, width: int | None = None) -> str:
    """``doc`` as text, wrapped to ``width`` (the terminal's by default).

    Examples:
      >>> print(render_text(Doc("a, b", [Table(["x"], [["1"]])]), width=40))
      a, b
        x
        1
    """
    width = width or terminal_width()
    lines = wrap_summary(doc.summary, width)
    for block in doc.blocks:
        if isinstance(block, Table):
            lines.extend(block.lines(width))
        else:
            for part in block.split("\n"):
                lines.extend(wrap_line(part, width))
    return "\n".join(lines)


def html_headline(text: str, passed: bool | None) -> str:
    """A report's headline as a bold HTML paragraph, green, red or plain.

    Examples:
      >>> html_headline("a < b", True)
      '<p style="color:#2e7d32;font-weight:bold">a &lt; b</p>'
    """
    if passed is None:
        return f'<p style="font-weight:bold">{html.escape(text)}</p>'
    color = "#2e7d32" if passed else "#c62828"
    return f'<p style="color:{color};font-weight:bold">{html.escape(text)}</p>'


def render_html(doc: Doc) -> str:
    """``doc`` as escaped HTML: the summary bold (coloured by ``doc.ok``), each
    text line a paragraph (indented lines as list items), tables as tables.

    Examples:
      >>> render_html(Doc("x < 1", ["  note: y & z"]))
      '<div><p style="font-weight:bold">x &lt; 1</p><p>note: y &amp; z</p></div>'
    """
    parts = ["<div>", html_headline(doc.summary, doc.ok)]
    items: list[str] = []
    for block in doc.blocks:
        deep = isinstance(block, str) and block.startswith("    ")
        if items and not deep:
            parts.append("<ul>" + "".join(items) + "</ul>")
            items = []
        if isinstance(block, Table):
            parts.append(block.html())
        elif deep:
            items.append(f"<li>{html.escape(block.strip())}</li>")
        else:
            parts.append(f"<p>{html.escape(block.strip())}</p>")
    if items:
        parts.append("<ul>" + "".join(items) + "</ul>")
    parts.append("</div>")
    return "".join(parts)


# --------------------------------------------------------------------- JSON
#: What a field set to null (from NaN) means in a report's dict.
NULL_MEANS = {
    "step": "the leaf's step applies (no follow-up with another step)",
    "lo": "no one-sided derivatives were measured (only done at a kink)",
    "hi": "no one-sided derivatives were measured (only done at a kink)",
    "f_plus": "not recorded for this coordinate",
    "f_minus": "not recorded for this coordinate",
    "noise": "the round-off noise of f was not measured along this coordinate/leaf",
    "noise_floor": "the round-off noise of f was not measured",
    "main_rel_error": "no coordinate of the main pass was free of kinks",
    "rtol": "no bar was recorded",
    "rel_error": "no finite relative error (e.g. the estimate was not finite)",
    "f_value": "f was not evaluated (or is not finite)",
}


def strict_json(report: dict[str, Any]) -> dict[str, Any]:
    """``report`` (a dict of plain Python values) made valid for strict JSON.

    JSON has no NaN or infinity (``json.dumps`` writes bare ``NaN``, which
    strict parsers reject): NaN becomes ``None`` and an infinity the string
    ``"inf"`` or ``"-inf"``. When any was replaced, a top-level
    ``"non_finite"`` maps each such field name to what it means there (merged
    with one already present, so applying it twice changes nothing).

    Examples:
      >>> d = strict_json({"worst": [{"step": float("nan"), "numeric": float("inf")}]})
      >>> d["worst"]
      [{'step': None, 'numeric': 'inf'}]
      >>> d["non_finite"]["numeric"]
      '"inf"/"-inf": an infinite value (JSON has no infinity)'
    """
    seen: dict[str, set[str]] = {}

    def clean(value: Any, field: str) -> Any:
        if isinstance(value, dict):
            return {k: clean(v, str(k)) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [clean(v, field) for v in value]
        if isinstance(value, float) and not math.isfinite(value):
            if math.isnan(value):
                seen.setdefault(field, set()).add("nan")
                return None
            seen.setdefault(field, set()).add("inf")
            return "inf" if value > 0 else "-inf"
        return value

    out = clean(report, "")
    if seen:
        legend = dict(out.get("non_finite") or {})
        for field, kinds in sorted(seen.items()):
            parts = []
            if "nan" in kinds:
                parts.append("null: " + NULL_MEANS.get(field, "NaN, no value there"))
            if "inf" in kinds:
                parts.append('"inf"/"-inf": an infinite value (JSON has no infinity)')
            legend[field] = "; ".join(parts)
        out["non_finite"] = legend
    return out


def plain(value: Any) -> Any:
    """``value`` as plain Python data: reports by their fields, tuples as
    lists, arrays as nested lists, NumPy/JAX scalars as Python numbers, dict
    keys as strings. NaN stays NaN (see :func:`strict_json`).

    Examples:
      >>> import numpy as np
      >>> plain({1: (np.float32(0.5), np.arange(2))})
      {'1': [0.5, [0, 1]]}
    """
    if isinstance(value, Rendered):
        return plain(value._data())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)
        }
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    if hasattr(value, "tolist"):  # NumPy / JAX arrays and scalars
        return plain(value.tolist())
    return str(value)


class Rendered:
    """Base of jaxcheck's reports: declare :meth:`_doc` once, get ``__str__``,
    ``_repr_html_`` and ``to_dict()``.

    A dataclass report subclasses it and defines ``_doc()`` (summary, lines,
    tables). ``to_dict()`` holds every dataclass field plus the properties named
    in ``_dict_extra``; a report overrides ``_data()`` to choose otherwise.

    Examples:
      >>> @dataclasses.dataclass(frozen=True)
      ... class Loss(Rendered):
      ...     value: float
      ...     def _doc(self) -> Doc:
      ...         return Doc(f"loss {self.value:g}", ok=self.value < 1)
      >>> str(Loss(0.5)), Loss(float("nan")).to_dict()["value"]
      ('loss 0.5', None)
    """

    #: Properties added to ``to_dict()`` after the fields.
    _dict_extra: ClassVar[tuple[str, ...]] = ()

    def _doc(self) -> Doc:
        raise NotImplementedError(
            f"{type(self).__name__} must define _doc() to be rendered."
        )

    def _data(self) -> dict[str, Any]:
        """The report's content as a dict (NaN allowed; see ``to_dict``)."""
        fields = dataclasses.fields(self)  # type: ignore[arg-type]
        d = {f.name: plain(getattr(self, f.name)) for f in fields}
        d.update({name: plain(getattr(self, name)) for name in self._dict_extra})
        return d

    def render(self, width: int | None = None) -> str:
        """The report as text wrapped to ``width`` (the terminal's by default)."""
        return render_text(self._doc(), width)

    def __str__(self) -> str:
        return self.render()

    def _repr_html_(self) -> str:
        return render_html(self._doc())

    def to_dict(self) -> dict[str, Any]:
        """The report as plain Python values, valid for strict JSON: NaN becomes
        ``None`` and ``"non_finite"`` says what each such ``None`` means."""
        return strict_json(plain(self._data()))
