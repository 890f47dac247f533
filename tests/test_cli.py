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


def _cache_env(tmp_path, **extra):
    """The environment of a command that may use the cache, with an unusable
    default directory (``$XDG_CACHE_HOME`` is a file)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("JAXCHECK_NO_CACHE", "JAXCHECK_CACHE_DIR")
    }
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    env["XDG_CACHE_HOME"] = str(blocker)
    env.update(extra)
    return env


def _run_check(tmp_path, env, *options):
    cmd = [sys.executable, "-m", "jaxcheck.cli", "check", "good_problem:problem"]
    return subprocess.run(
        [*cmd, *options], env=env, capture_output=True, text=True, cwd=tmp_path
    )


def test_an_unusable_default_cache_dir_turns_the_cache_off_with_one_line(
    user_modules, tmp_path
):
    out = _run_check(tmp_path, _cache_env(tmp_path))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "gradient check PASSED" in out.stdout
    assert "Traceback" not in out.stderr
    ours = [line for line in out.stderr.splitlines() if line.startswith("jaxcheck:")]
    assert len(ours) == 1, out.stderr
    default = os.path.join(str(tmp_path / "not-a-dir"), "jaxcheck", "xla")
    assert ours[0].startswith("jaxcheck: compilation cache off for this run:")
    assert f"the default directory {default} cannot be used" in ours[0]
    assert "--cache-dir DIR" in ours[0] and "--no-cache" in ours[0]


def test_a_usable_cache_dir_option_wins_over_an_unusable_default(
    user_modules, tmp_path
):
    cache = tmp_path / "chosen"
    out = _run_check(tmp_path, _cache_env(tmp_path), "--cache-dir", str(cache))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "compilation cache off" not in out.stderr
    assert any(cache.iterdir())  # the compiled calls were written there


@pytest.mark.parametrize("how", ["option", "option, below a file", "env var"])
def test_an_unusable_chosen_cache_dir_is_a_usage_error(user_modules, tmp_path, how):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    if how == "env var":
        where, source = blocker, "$JAXCHECK_CACHE_DIR"
        out = _run_check(tmp_path, _cache_env(tmp_path, JAXCHECK_CACHE_DIR=str(where)))
    else:
        where = blocker if how == "option" else blocker / "xla"
        source = "--cache-dir"
        out = _run_check(tmp_path, _cache_env(tmp_path), "--cache-dir", str(where))
    assert out.returncode == 2
    assert out.stdout == ""  # nothing was checked
    assert "Traceback" not in out.stderr
    assert out.stderr.startswith("usage: jaxcheck check")
    reason = (
        "it exists and is not a directory"
        if where == blocker
        else "it cannot be created"
    )
    assert (
        f"jaxcheck check: error: {source}: cannot keep the compilation cache in "
        f"{where}: {reason}" in out.stderr
    )
    assert "--no-cache" in out.stderr


def test_an_empty_cache_dir_option_is_a_usage_error(monkeypatch, capsys):
    # Refused before any JAX option changes, so it can run in this process.
    monkeypatch.delenv("JAXCHECK_NO_CACHE")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["demo", "--no-training", "--cache-dir", ""])
    assert exit_info.value.code == 2
    assert "--cache-dir: expected a directory, got an empty string" in (
        capsys.readouterr().err
    )
