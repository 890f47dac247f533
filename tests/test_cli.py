import os
import subprocess
import sys
import textwrap

import pytest

from jaxcheck import cli

GOOD = """
import jax.numpy as jnp

def problem():
    return (lambda p, x: jnp.sum((p * x) ** 2)), jnp.array([1.0, 2.0]), jnp.array([3.0, 4.0])
"""

BAD = """
import jax
import jax.numpy as jnp

@jax.custom_vjp
def sq(x):
    return x ** 2

sq.defvjp(lambda x: (x ** 2, x), lambda x, g: (-2 * g * x,))  # wrong sign

def problem():
    return (lambda p: jnp.sum(sq(p))), jnp.array([1.0, 2.0])
"""


@pytest.fixture
def user_modules(tmp_path, monkeypatch):
    (tmp_path / "good_problem.py").write_text(textwrap.dedent(GOOD))
    (tmp_path / "bad_problem.py").write_text(textwrap.dedent(BAD))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))


def test_demo_catches_the_planted_bug(capsys):
    assert cli.main(["demo", "--no-training"]) == 0
    out = capsys.readouterr().out
    assert out.count("gradient check PASSED") == 1
    assert out.count("gradient check FAILED") == 1
    assert "Verdicts as expected" in out


def test_check_exit_codes(user_modules, capsys):
    assert cli.main(["check", "good_problem:problem"]) == 0
    assert "PASSED" in capsys.readouterr().out
    assert cli.main(["check", "bad_problem:problem"]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "analytic=-2.000000e+00  numeric=+2.000000e+00" in out


def test_check_json(user_modules, capsys):
    import json

    assert cli.main(["check", "bad_problem:problem", "--json"]) == 1
    d = json.loads(capsys.readouterr().out)
    assert d["passed"] is False and d["num_wrong"] == 2


@pytest.mark.parametrize(
    "target, msg",
    [
        ("no_colon", "expected MODULE:FUNCTION"),
        ("not_a_module_xyz:f", "cannot import module"),
        ("good_problem:missing", "has no callable 'missing'"),
    ],
)
def test_check_usage_errors(user_modules, target, msg):
    with pytest.raises(SystemExit, match=msg):
        cli.main(["check", target])


def test_console_script_installed():
    out = subprocess.run(
        [sys.executable, "-m", "jaxcheck.cli", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "demo" in out.stdout and "check" in out.stdout


def test_check_options(user_modules, capsys):
    assert (
        cli.main(["check", "good_problem:problem", "--step", "auto", "--strict"]) == 0
    )
    assert "PASSED" in capsys.readouterr().out
    assert cli.main(["check", "bad_problem:problem", "--method", "four_point"]) == 1
    with pytest.raises(SystemExit):
        cli.main(["check", "good_problem:problem", "--step", "tiny"])


def test_the_command_keeps_compiled_calls_for_the_next_run(user_modules, tmp_path):
    cache = tmp_path / "xla-cache"
    env = {k: v for k, v in os.environ.items() if k != "JAXCHECK_NO_CACHE"}
    env["JAXCHECK_CACHE_DIR"] = str(cache)
    cmd = [sys.executable, "-m", "jaxcheck.cli", "check", "good_problem:problem"]

    def run():
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp_path)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout, sorted(p.name for p in cache.iterdir())

    first, entries = run()
    assert "PASSED" in first and entries  # the compiled calls were written
    second, entries_after = run()
    # The second process found every program in the cache: nothing new written.
    assert entries_after == entries
    assert first.splitlines()[0] == second.splitlines()[0]

    env["JAXCHECK_NO_CACHE"] = "1"
    env["JAXCHECK_CACHE_DIR"] = str(tmp_path / "unused")
    run_off = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp_path)
    assert run_off.returncode == 0 and not (tmp_path / "unused").exists()


def test_a_cache_path_that_is_a_file_is_refused(tmp_path):
    from jaxcheck import use_compilation_cache

    path = tmp_path / "a-file"
    path.write_text("")
    with pytest.raises(ValueError, match="is not a directory"):
        use_compilation_cache(path)
