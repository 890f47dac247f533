"""The persistent compilation cache: what it changes in a process, and when."""

import doctest
import json
import os
import subprocess
import sys
import textwrap

import jax
import pytest

from jaxcheck import compilation
from jaxcheck.compilation import use_compilation_cache

_OPTIONS = (
    "jax_compilation_cache_dir",
    "jax_persistent_cache_min_compile_time_secs",
    "jax_persistent_cache_min_entry_size_bytes",
)


def _jax_state():
    options = {name: getattr(jax.config, name) for name in _OPTIONS}
    return options, compilation._cache_dir_in_use()


def test_the_doctests_leave_jax_options_alone():
    before = _jax_state()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in doctest.DocTestFinder().find(compilation, "jaxcheck.compilation"):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert _jax_state() == before
    assert result.failed == 0
    assert result.attempted >= 5  # the examples did run


def test_an_unwritable_directory_is_refused_before_anything_changes(
    tmp_path, monkeypatch
):
    where = tmp_path / "read-only"
    where.mkdir()
    real_access = os.access

    def access(path, mode, **kwargs):
        if os.fspath(path) == str(where):
            return False  # as for a read-only mount (root may write anywhere)
        return real_access(path, mode, **kwargs)

    monkeypatch.setattr(os, "access", access)
    before = _jax_state()
    with pytest.raises(ValueError, match=r"read-only'.*: it is not writable\. Pass"):
        use_compilation_cache(where)
    assert _jax_state() == before


SCRIPT = """
import json, os, sys

import jax
import jax.numpy as jnp

from jaxcheck.compilation import use_compilation_cache

first, second, early = sys.argv[1:4]
out = {}
# Nothing has compiled yet: the directory can still change.
out["early"] = use_compilation_cache(early)
out["first"] = use_compilation_cache(first)
jax.jit(lambda x: x + 1)(jnp.ones(3)).block_until_ready()
out["entries"] = len(os.listdir(first))
out["same"] = use_compilation_cache(first)
try:
    use_compilation_cache(second)
except ValueError as err:
    out["error"] = str(err)
out["config"] = jax.config.jax_compilation_cache_dir
jax.jit(lambda x: x * 7 - 3)(jnp.ones(5)).block_until_ready()
out["entries_later"] = len(os.listdir(first))
print(json.dumps(out))
"""


def test_the_directory_cannot_change_once_jax_has_used_it(tmp_path):
    first, second, early = (str(tmp_path / n) for n in ("first", "second", "early"))
    env = {k: v for k, v in os.environ.items() if k != "JAXCHECK_CACHE_DIR"}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SCRIPT), first, second, early],
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["early"] == early and os.listdir(early) == []  # replaced in time
    assert out["first"] == first and out["entries"] > 0
    assert out["same"] == first  # the same directory again: nothing changes
    assert out["error"].startswith(
        f"This process's compilation cache already writes to {first!r}, and JAX "
        f"cannot move it to {second!r}"
    )
    assert "from a new process" in out["error"]
    assert out["config"] == first  # the refused call changed no option
    assert not os.path.exists(second)
    # JAX goes on writing to the first directory.
    assert out["entries_later"] > out["entries"]
