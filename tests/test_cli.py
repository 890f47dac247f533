"""The ``jaxcheck`` command: exit status 0 pass / 1 fail / 2 usage, one-line
errors, strict JSON, the demo's verdicts and the compilation cache.

Everything runs in-process through ``cli.main`` except what needs a process of
its own: the real entry point once, and the compilation cache (process-wide).
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from jaxcheck import cli, examples
from jaxcheck.report import GradCheckReport
from jaxcheck.training import demo as training_demo

PROBLEMS = """
import jax
import jax.numpy as jnp

def good():
    return (lambda p, x: jnp.sum((p * x) ** 2)), jnp.array([1.0, 2.0]), jnp.array([3.0, 4.0])

@jax.custom_vjp
def sq(x):
    return x ** 2

sq.defvjp(lambda x: (x ** 2, x), lambda x, g: (-2 * g * x,))  # wrong sign

def bad():
    return (lambda p: jnp.sum(sq(p))), jnp.array([1.0, 2.0])

def kinked():  # |p| at 0: a kink, one-sided derivatives measured
    return (lambda p: jnp.sum(jnp.abs(p)) + jnp.sum(p ** 2)), jnp.array([0.0, 1.5])

def inconclusive():  # the gradient is far below f's round-off at every step
    return (lambda w: 1.0 + 1e-12 * jnp.sum(w ** 2)), jnp.linspace(1.0, 2.0, 3)

def not_scalar():
    return (lambda p: p * 2.0), jnp.array([1.0, 2.0])

def raises_inside_f():
    def f(p):
        raise RuntimeError("broken model")
    return f, jnp.array([1.0])

def only_f():
    return (lambda p: jnp.sum(p),)

def not_a_tuple():
    return {"f": None}

def not_a_function():
    return 3, jnp.array([1.0])

def raises():
    raise RuntimeError("cannot build the problem")
"""


@pytest.fixture
def user_modules(tmp_path, monkeypatch):
    (tmp_path / "problems.py").write_text(textwrap.dedent(PROBLEMS))
    (tmp_path / "broken_module.py").write_text("import not_installed_package_xyz\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))


def run(argv):
    """``cli.main(argv)``'s exit status, also when argparse exits."""
    try:
        return cli.main(argv)
    except SystemExit as stop:
        return stop.code


def raise_on_constant(name):
    raise ValueError(f"not strict JSON: {name}")


# --------------------------------------------------------------- exit status


def test_exit_status_is_0_when_passed_and_1_when_a_gradient_is_wrong(
    user_modules, capsys
):
    assert run(["check", "problems:good"]) == cli.EXIT_PASSED == 0
    assert "PASSED" in capsys.readouterr().out
    assert run(["check", "problems:bad"]) == cli.EXIT_FAILED == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "analytic=-2.000000e+00  numeric=+2.000000e+00" in out
    assert run(["check", "problems:bad", "--method", "four_point"]) == 1


def test_an_inconclusive_check_exits_1_and_says_why(user_modules, capsys):
    assert run(["check", "problems:inconclusive"]) == cli.EXIT_FAILED
    captured = capsys.readouterr()
    assert "gradient check INCONCLUSIVE" in captured.out
    assert "exit 1: the check is inconclusive: no coordinate could be tested" in (
        captured.err
    )
    assert "not a pass" in captured.err
    assert run(["check", "problems:inconclusive", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["status"] == "inconclusive"


@pytest.mark.parametrize(
    "target, message",
    [
        ("no_colon", "expected MODULE:FUNCTION, got 'no_colon'"),
        ("not_a_module_xyz:f", "cannot import module 'not_a_module_xyz'"),
        ("broken_module:f", "No module named 'not_installed_package_xyz'"),
        ("problems:missing", "'problems' has no callable 'missing'"),
        ("problems:raises", "problems:raises() raised RuntimeError: cannot build"),
        ("problems:only_f", "got a tuple of length 1"),
        ("problems:not_a_tuple", "must return a tuple (f, params, *args) of at least"),
        ("problems:not_a_function", "its first element is int, not a function"),
        ("problems:not_scalar", "must return a scalar, got shape (2,)"),
        ("problems:raises_inside_f", "RuntimeError: broken model"),
    ],
)
def test_an_input_error_exits_2_with_one_line(user_modules, capsys, target, message):
    assert run(["check", target]) == cli.EXIT_USAGE == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # nothing was checked
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err  # no traceback
    assert lines[0].startswith("jaxcheck check: error: ")
    assert message in lines[0]


def test_the_tuple_message_says_what_is_expected(user_modules, capsys):
    run(["check", "problems:only_f"])
    err = capsys.readouterr().err
    assert "the scalar function f(params, *args), its parameters" in err
    assert "got tuple." not in err


@pytest.mark.parametrize(
    "option, message",
    [
        (["--coords", "abc"], 'expected "all" or a whole number >= 1'),
        (["--coords", "0"], 'expected "all" or a whole number >= 1'),
        (["--rtol", "-1"], "expected a positive relative-error bar"),
        (["--rtol", "nan"], "expected a positive relative-error bar"),
        (["--step", "tiny"], 'expected a positive number or "auto"'),
        (["--step", "0"], 'expected a positive number or "auto"'),
        (["--method", "backward"], "invalid choice: 'backward'"),
        (["--seed", "x"], "invalid int value: 'x'"),
    ],
)
def test_a_bad_option_exits_2(user_modules, capsys, option, message):
    assert run(["check", "problems:good", *option]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("usage: jaxcheck check")
    assert message in captured.err


def test_traceback_option_shows_the_traceback(user_modules, capsys):
    assert run(["check", "problems:not_scalar", "--traceback"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):")
    assert "point.py" in err  # where the checker raised it
    assert err.splitlines()[-1].startswith("jaxcheck check: error: ValueError:")
    # Without it, one line that says how to see it.
    run(["check", "problems:not_scalar"])
    assert "(--traceback shows where it was raised)" in capsys.readouterr().err


def test_ctrl_c_before_anything_was_judged_exits_130(user_modules, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "check_grads", interrupted)
    assert run(["check", "problems:good"]) == cli.EXIT_INTERRUPTED == 130
    assert "interrupted (Ctrl-C)" in capsys.readouterr().err


def test_an_interrupted_report_exits_130_unless_something_is_wrong(
    user_modules, capsys, monkeypatch
):
    partial = GradCheckReport(
        leaves=(), skipped=(), rtol=1e-7, bar_reason="", step=1e-5, interrupted=("",)
    )
    assert partial.status == "interrupted"
    monkeypatch.setattr(cli, "check_grads", lambda *a, **k: partial)
    assert run(["check", "problems:good"]) == 130
    assert "no wrong gradient among the coordinates checked" in (
        capsys.readouterr().err
    )


def test_help_documents_the_exit_status(capsys):
    for argv in (["--help"], ["check", "--help"], ["demo", "--help"]):
        assert run(argv) == 0
        out = capsys.readouterr().out
        assert "exit status:" in out
        assert "2    usage or input error" in out and "inconclusive" in out


# -------------------------------------------------------------------- JSON


def test_json_is_strict_and_says_what_null_means(user_modules, capsys):
    assert run(["check", "problems:kinked", "--json"]) == 0
    out = capsys.readouterr().out
    assert "NaN" not in out and "Infinity" not in out
    d = json.loads(out, parse_constant=raise_on_constant)
    assert d["status"] == "passed"
    (at_kink,) = d["leaves"][0]["kinks"]
    assert at_kink["index"] == [0] and at_kink["verdict"] == "kink"
    assert at_kink["lo"] == pytest.approx(-1.0, abs=1e-6)
    assert at_kink["hi"] == pytest.approx(1.0, abs=1e-6)
    # The smooth coordinate has no one-sided derivatives (NaN in the report):
    # null here, and "non_finite" says what that null means.
    (smooth,) = [c for c in d["leaves"][0]["worst"] if c["index"] == [1]]
    assert smooth["lo"] is None and smooth["hi"] is None
    assert d["non_finite"]["lo"].startswith("null: no one-sided derivatives")


def test_json_of_a_failed_check(user_modules, capsys):
    assert run(["check", "problems:bad", "--json"]) == 1
    d = json.loads(capsys.readouterr().out, parse_constant=raise_on_constant)
    assert d["passed"] is False and d["status"] == "failed" and d["num_wrong"] == 2


def test_json_of_an_input_error(user_modules, capsys):
    assert run(["check", "problems:not_scalar", "--json"]) == 2
    captured = capsys.readouterr()
    d = json.loads(captured.out, parse_constant=raise_on_constant)
    assert d["status"] == "error" and d["passed"] is False
    assert "must return a scalar" in d["error"] and "--traceback" not in d["error"]
    assert len(captured.err.splitlines()) == 1


def test_strict_json_replaces_every_non_finite_number():
    d = cli.strict_json(
        {"a": [1.0, float("nan")], "b": {"numeric": float("-inf")}, "c": "NaN"}
    )
    assert d["a"] == [1.0, None] and d["b"] == {"numeric": "-inf"} and d["c"] == "NaN"
    assert set(d["non_finite"]) == {"a", "numeric"}
    json.loads(json.dumps(d, allow_nan=False), parse_constant=raise_on_constant)


# -------------------------------------------------------------------- demo


def test_demo_catches_the_planted_bug(capsys):
    assert run(["demo", "--no-training"]) == 0
    out = capsys.readouterr().out
    assert out.count("gradient check PASSED") == 1
    assert out.count("gradient check FAILED") == 1
    assert "expected: FAILED, planted." in out
    assert "Verdicts as expected" in out and "UNEXPECTED" not in out


def _small_problem(buggy=False):
    params = examples.mlp_init((5, 3, 2), seed=0)
    x, y = examples.classification_batch(4, 5, 2, seed=1)
    return (cli.buggy_mlp_loss if buggy else examples.mlp_loss), params, x, y


@pytest.mark.parametrize(
    "swap, unexpected",
    [
        ("missed", "the planted bug was not caught (the check is PASSED)"),
        ("correct fails", "the correct model's check is FAILED"),
    ],
)
def test_demo_exits_1_on_an_unexpected_gradient_verdict(
    monkeypatch, capsys, swap, unexpected
):
    if swap == "missed":  # the planted bug is gone: it cannot be caught
        monkeypatch.setattr(cli, "demo_problem", lambda buggy=False: _small_problem())
    else:  # the "correct" model has the bug
        monkeypatch.setattr(
            cli, "demo_problem", lambda buggy=False: _small_problem(buggy=True)
        )
    assert run(["demo", "--no-training"]) == 1
    out = capsys.readouterr().out
    assert f"UNEXPECTED: {unexpected}" in out
    assert "jaxcheck demo: UNEXPECTED verdicts" in out


@pytest.mark.parametrize("training_ok", [True, False])
def test_demo_exit_status_follows_the_training_part(
    monkeypatch, capsys, tmp_path, training_ok
):
    monkeypatch.setattr(cli, "demo_problem", _small_problem)
    verdicts = (
        training_demo.DemoVerdict("initial_loss (small init)", True),
        training_demo.DemoVerdict(
            "initial_loss (large init)", training_ok is False, "x"
        ),
    )
    result = training_demo.DemoResult("<training part>", verdicts, ())
    monkeypatch.setattr(training_demo, "run_demo", lambda out: result)
    assert run(["demo", "--out", str(tmp_path)]) == (0 if training_ok else 1)
    out = capsys.readouterr().out
    assert "<training part>" in out
    assert ("UNEXPECTED verdicts" in out) is not training_ok


def test_demo_without_the_optional_packages_skips_the_training_part(
    monkeypatch, capsys, tmp_path
):
    def missing(out):
        raise ImportError("optax is not installed")

    monkeypatch.setattr(cli, "demo_problem", _small_problem)
    monkeypatch.setattr(training_demo, "run_demo", missing)
    assert run(["demo", "--out", str(tmp_path)]) == 0
    assert "skipped (not a failure; needs jaxcheck[demo]): optax" in (
        capsys.readouterr().out
    )


# ------------------------------------------------- the real entry point, once


def test_the_installed_command_exits_2_on_an_input_error(user_modules, tmp_path):
    # `python -m jaxcheck.cli` runs `sys.exit(main())`, like the console script.
    out = subprocess.run(
        [sys.executable, "-m", "jaxcheck.cli", "check", "problems:not_scalar"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert out.returncode == 2 and out.stdout == ""
    assert "Traceback" not in out.stderr
    assert "jaxcheck check: error: ValueError: `f(params, *args)` must return a " in (
        out.stderr
    )


# ------------------------------------------------------- compilation cache


@pytest.mark.slow
def test_the_command_keeps_compiled_calls_for_the_next_run(user_modules, tmp_path):
    cache = tmp_path / "xla-cache"
    env = {k: v for k, v in os.environ.items() if k != "JAXCHECK_NO_CACHE"}
    env["JAXCHECK_CACHE_DIR"] = str(cache)
    cmd = [sys.executable, "-m", "jaxcheck.cli", "check", "problems:good"]

    def run_command():
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp_path)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout, sorted(p.name for p in cache.iterdir())

    first, entries = run_command()
    assert "PASSED" in first and entries  # the compiled calls were written
    second, entries_after = run_command()
    # The second process found every program in the cache: nothing new written.
    assert entries_after == entries
    assert first.splitlines()[0] == second.splitlines()[0]

    env["JAXCHECK_NO_CACHE"] = "1"
    env["JAXCHECK_CACHE_DIR"] = str(tmp_path / "unused")
    run_off = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp_path)
    assert run_off.returncode == 0 and not (tmp_path / "unused").exists()


def test_a_cache_path_that_is_a_file_is_refused(tmp_path):
    from jaxcheck.compilation import use_compilation_cache

    path = tmp_path / "a-file"
    path.write_text("")
    with pytest.raises(ValueError, match="is not a directory"):
        use_compilation_cache(path)


@pytest.fixture
def unusable_default_cache(tmp_path, monkeypatch):
    """An environment that may use the cache, with an unusable default directory
    (``$XDG_CACHE_HOME`` is a file). An unusable directory changes no JAX option,
    so these checks can run in this process."""
    monkeypatch.delenv("JAXCHECK_NO_CACHE", raising=False)
    monkeypatch.delenv("JAXCHECK_CACHE_DIR", raising=False)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    return blocker


def test_an_unusable_default_cache_dir_turns_the_cache_off_with_one_line(
    user_modules, unusable_default_cache, capsys
):
    assert run(["check", "problems:good"]) == 0
    captured = capsys.readouterr()
    assert "gradient check PASSED" in captured.out
    ours = [line for line in captured.err.splitlines() if line.startswith("jaxcheck:")]
    assert len(ours) == 1, captured.err
    default = os.path.join(str(unusable_default_cache), "jaxcheck", "xla")
    assert ours[0].startswith("jaxcheck: compilation cache off for this run:")
    assert f"the default directory {default} cannot be used" in ours[0]
    assert "--cache-dir DIR" in ours[0] and "--no-cache" in ours[0]


def test_a_usable_cache_dir_option_wins_over_an_unusable_default(
    user_modules, tmp_path
):
    # Turns the cache on, which is process-wide: in a process of its own.
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("JAXCHECK_NO_CACHE", "JAXCHECK_CACHE_DIR")
    }
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    env["XDG_CACHE_HOME"] = str(blocker)
    cache = tmp_path / "chosen"
    cmd = [sys.executable, "-m", "jaxcheck.cli", "check", "problems:good"]
    out = subprocess.run(
        [*cmd, "--cache-dir", str(cache)],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "compilation cache off" not in out.stderr
    assert any(cache.iterdir())  # the compiled calls were written there


@pytest.mark.parametrize("how", ["option", "option, below a file", "env var"])
def test_an_unusable_chosen_cache_dir_is_a_usage_error(
    user_modules, unusable_default_cache, tmp_path, monkeypatch, capsys, how
):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    options = []
    if how == "env var":
        where, source = blocker, "$JAXCHECK_CACHE_DIR"
        monkeypatch.setenv("JAXCHECK_CACHE_DIR", str(where))
    else:
        where = blocker if how == "option" else blocker / "xla"
        source = "--cache-dir"
        options = ["--cache-dir", str(where)]
    assert run(["check", "problems:good", *options]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # nothing was checked
    assert "Traceback" not in captured.err
    assert captured.err.startswith("usage: jaxcheck check")
    reason = (
        "it exists and is not a directory"
        if where == blocker
        else "it cannot be created"
    )
    assert (
        f"jaxcheck check: error: {source}: cannot keep the compilation cache in "
        f"{where}: {reason}" in captured.err
    )
    assert "--no-cache" in captured.err


def test_an_empty_cache_dir_option_is_a_usage_error(monkeypatch, capsys):
    # Refused before any JAX option changes, so it can run in this process.
    monkeypatch.delenv("JAXCHECK_NO_CACHE")
    assert run(["demo", "--no-training", "--cache-dir", ""]) == 2
    assert "--cache-dir: expected a directory, got an empty string" in (
        capsys.readouterr().err
    )


def test_check_options_reach_the_checker(user_modules, capsys, monkeypatch):
    seen = {}
    real = cli.check_grads

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(cli, "check_grads", spy)
    argv = ["check", "problems:good", "--coords", "1", "--step", "auto", "--strict"]
    assert run([*argv, "--rtol", "1e-6", "--seed", "3"]) == 0
    assert seen == {
        "coords": 1,
        "step": "auto",
        "rtol": 1e-6,
        "seed": 3,
        "method": "central",
        "strict": True,
    }
    assert "PASSED" in capsys.readouterr().out
