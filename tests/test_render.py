"""The rendering base: wrapping to the terminal, HTML escaping, strict JSON."""

import dataclasses
import json
import math

import numpy as np
import pytest

from jaxcheck import render
from jaxcheck.render import Doc, Rendered, Table


def raise_on_constant(name):
    raise ValueError(f"non-standard JSON constant {name}")


def test_summary_wraps_between_clauses_only():
    text = "check FAILED: 2 leaves, 30 coordinates, 3 wrong; worst 1e-2 at ['W'][0, 1]"
    lines = render.wrap_summary(text, 40)
    assert lines[0] == "check FAILED: 2 leaves, 30 coordinates,"
    assert all(len(line) <= 40 for line in lines)
    # The bracketed index is never cut, and nothing is lost.
    assert lines[-1].strip() == "3 wrong; worst 1e-2 at ['W'][0, 1]"
    assert " ".join(line.strip() for line in lines) == text


def test_long_line_wraps_with_a_hanging_indent():
    note = "  note: " + " ".join(f"w{i}" for i in range(60))
    lines = render.wrap_line(note, 50)
    assert len(lines) > 2 and all(len(line) <= 50 for line in lines)
    assert lines[0].startswith("  note: w0 ")
    assert all(line.startswith("      w") for line in lines[1:])
    assert " ".join(line.strip() for line in lines) == note.strip()


def test_text_follows_the_terminal_width(monkeypatch):
    doc = Doc("a, " * 30 + "z", ["  " + "word " * 30])
    monkeypatch.setenv("COLUMNS", "60")
    assert max(len(line) for line in render.render_text(doc).splitlines()) <= 60
    monkeypatch.setenv("COLUMNS", "200")
    assert len(render.render_text(doc).splitlines()) == 2


def test_tables_are_never_wider_than_needed_and_not_wrapped():
    table = Table(["h", "['a']"], [["1e-01", "2.0e-03*"], ["1e-02", "-"]], "right")
    lines = render.render_text(Doc("sweep", [table]), width=20).splitlines()
    assert lines[1:] == ["      h     ['a']", "  1e-01  2.0e-03*", "  1e-02         -"]


def test_html_is_escaped_and_marks_rows():
    doc = Doc("x < 1", ["  note: <b>", Table(["a&b"], [["<"], [">"]], marked=[0, 1])])
    out = render.render_html(doc)
    assert "<b>" not in out and "&lt;b&gt;" in out and "a&amp;b" in out
    assert out.count('style="background:#ffebee"') == 1


@dataclasses.dataclass(frozen=True)
class _Toy(Rendered):
    value: float
    arr: np.ndarray
    _dict_extra = ("double",)

    @property
    def double(self) -> float:
        return 2 * self.value

    def _doc(self) -> Doc:
        return Doc(f"toy {self.value:g}", ok=math.isfinite(self.value))


def test_to_dict_is_strict_json_with_the_reason_for_each_null():
    d = _Toy(
        math.nan,
        np.array([1.0, math.inf]),
    ).to_dict()
    assert d["value"] is None and d["double"] is None and d["arr"] == [1.0, "inf"]
    assert d["non_finite"]["value"].startswith("null:")
    assert "infinite" in d["non_finite"]["arr"]
    json.loads(json.dumps(d, allow_nan=False), parse_constant=raise_on_constant)
    assert render.strict_json(d) == d


def test_rendered_str_and_html_come_from_one_doc():
    toy = _Toy(0.5, np.zeros(1))
    assert str(toy) == "toy 0.5"
    assert toy._repr_html_().startswith('<div><p style="color:#2e7d32')


def test_a_report_without_a_doc_says_what_is_missing():
    @dataclasses.dataclass(frozen=True)
    class Bare(Rendered):
        x: int = 0

    with pytest.raises(NotImplementedError, match="must define _doc"):
        str(Bare())


def test_a_clause_longer_than_a_line_is_cut_between_words():
    text = "check PASSED: 2 leaves; worst " + "x " * 30 + "end."
    lines = render.wrap_summary(text, 30)
    assert lines[0].startswith("check PASSED: 2 leaves; worst")
    assert all(len(line) <= 30 for line in lines)
    assert " ".join(line.strip() for line in lines) == text


def test_a_long_last_column_wraps_inside_its_column():
    table = Table(["leaf", "verdict"], [["['b']", "undefined: " + "why " * 20]])
    lines = table.lines(width=40)
    assert lines[1].startswith("  ['b']  undefined: why")
    assert all(len(line) <= 40 for line in lines)
    assert all(line.startswith(" " * 9) and line[9] != " " for line in lines[2:])
    assert table.lines() == [
        lines[0],
        "  ['b']  " + ("undefined: " + "why " * 20).strip(),
    ]
