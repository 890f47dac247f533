"""The training part of ``jaxcheck demo``: it says which failures are planted and
fails on any verdict that is not the expected one."""

import math

import pytest

from jaxcheck.training import check_update_ratios
from jaxcheck.training import demo as training_demo
from jaxcheck.training.demo import DemoResult, DemoVerdict, run_demo

FIGURES = [
    "accuracy.png",
    "activations.png",
    "first_layer_weights.png",
    "loss_curve.png",
    "overfit_subset.png",
    "update_ratios.png",
]


@pytest.mark.slow
def test_a_planted_problem_that_is_missed_fails_the_demo(tmp_path, monkeypatch):
    # Defuse one planted problem: the "large" initialisation is small, so the
    # initial-loss check passes and the demo must call that unexpected. Every
    # other verdict (the second planted problem, the correct cases, at the
    # default 6 epochs) must still be the expected one.
    monkeypatch.setattr(training_demo, "LARGE_INIT_STD", 1e-3)
    result = run_demo(tmp_path / "figs", seed=0)
    text = str(result)

    assert not result.passed
    assert [v.name for v in result.unexpected] == [
        "initial_loss (large init (std 0.001))"
    ]
    assert len(result.verdicts) == 11
    assert sum(bool(v.planted) for v in result.verdicts) == 2
    assert "[PASS, UNEXPECTED] initial_loss (large init (std 0.001))" in text
    assert (
        "UNEXPECTED: the planted problem (large init (std 0.001): scores far from "
        "uniform) was not caught." in text
    )
    assert "UNEXPECTED: 1 of 11 verdicts" in text
    # The other planted problem is labelled as such; correct cases are plain.
    assert "[noisy, planted] first-layer weights (at initialisation)" in text
    assert "[smooth] first-layer weights (after training)" in text
    assert "[PASS] initial_loss (small init, softmax)" in text
    assert "[PASS] overfit_small_subset" in text
    assert "[ok] update/param ratio" in text
    # What the demo prints reads right: plurals, and why a ratio is undefined.
    assert "1 layer recorded" in text and "1 layers" not in text
    assert "undefined: all zeros at the first recorded update" in text

    assert sorted(p.name for p in result.figures) == FIGURES
    for path in result.figures:
        assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
        assert path.stat().st_size > 1000
    assert str((tmp_path / "figs").resolve()) in text


@pytest.mark.parametrize(
    "passed, planted, label, expected",
    [
        (True, "", "[PASS] initial_loss (small init): measured 2.3", True),
        (False, "big", "[FAIL, planted] initial_loss (small init): measured 2.3", True),
        (
            True,
            "big",
            "[PASS, UNEXPECTED] initial_loss (small init): measured 2.3",
            False,
        ),
        (
            False,
            "",
            "[FAIL, UNEXPECTED] initial_loss (small init): measured 2.3",
            False,
        ),
    ],
)
def test_each_verdict_is_labelled(passed, planted, label, expected):
    verdict = DemoVerdict("initial_loss", passed, planted)
    assert verdict.expected is expected
    text = f"[{'PASS' if passed else 'FAIL'}] initial_loss: measured 2.3\n  why"
    lines = training_demo._labelled(text, "small init", verdict).splitlines()
    assert lines[0] == label and lines[1] == "  why"
    if expected:
        assert len(lines) == 2
    else:
        assert lines[2] == f"  UNEXPECTED: {verdict.why_unexpected}."
        assert ("was not caught" in lines[2]) is bool(planted)


def test_a_demo_result_passes_only_when_every_verdict_is_expected():
    good = (DemoVerdict("a", True), DemoVerdict("b", False, "planted b"))
    assert DemoResult("t", good, ()).passed
    missed = (*good, DemoVerdict("c", True, "planted c"))
    assert [v.name for v in DemoResult("t", missed, ()).unexpected] == ["c"]
    assert str(DemoResult("text", good, ())) == "text"


def test_update_ratio_rows_say_why_a_leaf_is_not_judged():
    report = check_update_ratios(
        {"['W']": [2e-3, 3e-3], "['b']": [math.nan], "['c']": [5e-3]},
        exclude={"['c']": "a frozen embedding"},
    )
    lines = str(report).splitlines()
    assert lines[1] == "  The 1 judged leaf is within [1e-04, 1e-02]."
    assert lines[2].split() == ["leaf", "ratio", "verdict"]
    rows = {line.split()[0]: line for line in lines[3:]}
    assert rows["['W']"].endswith("  ok")
    assert rows["['c']"].endswith("undefined: a frozen embedding, so it is not judged")
    # A long reason wraps inside its column (the report fits the terminal).
    text = " ".join(str(report).split())
    assert "['b'] nan undefined: the parameter is all zeros at every recorded" in text
    plain = check_update_ratios({"['c']": 5e-3}, exclude=["['c']"])
    assert "undefined: excluded by the caller, so it is not judged" in str(plain)
