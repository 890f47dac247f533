"""A persistent compilation cache, so that a check in a new process starts fast.

Most of a first check is XLA compiling the engine's batched calls: each leaf
of each function compiles once per process (about 0.3-1 s on a CPU). JAX can
keep compiled programs on disk, but by default it only keeps those that took
more than a second to compile, which leaves most of jaxcheck's out.
:func:`use_compilation_cache` turns the cache on for every compilation. It is
a process-wide JAX setting, so jaxcheck never turns it on by itself inside
:func:`jaxcheck.check_grads`; the ``jaxcheck`` command, which owns its process,
does (``--no-cache`` turns it off).
"""

from __future__ import annotations

import os

import jax

#: Where the cache lives unless told otherwise (``$JAXCHECK_CACHE_DIR`` wins).
ENV_VAR = "JAXCHECK_CACHE_DIR"


def default_cache_dir() -> str:
    """``$JAXCHECK_CACHE_DIR``, else ``$XDG_CACHE_HOME/jaxcheck/xla``, else
    ``~/.cache/jaxcheck/xla``.

    Examples:
      >>> default_cache_dir().endswith("xla") or "JAXCHECK_CACHE_DIR" in os.environ
      True
    """
    if os.environ.get(ENV_VAR):
        return os.environ[ENV_VAR]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(
        os.path.expanduser("~"), ".cache"
    )
    return os.path.join(base, "jaxcheck", "xla")


def use_compilation_cache(path: str | os.PathLike[str] | None = None) -> str:
    """Keeps every XLA compilation of this process on disk under ``path``, so
    that later processes (a re-run, CI, the ``jaxcheck`` command) load the
    engine's compiled calls instead of compiling them again.

    This sets JAX's process-wide options ``jax_compilation_cache_dir``,
    ``jax_persistent_cache_min_compile_time_secs`` (0: cache everything) and
    ``jax_persistent_cache_min_entry_size_bytes`` (0), so it also caches your
    own programs; call it once, at the start of a script. The cache is keyed by
    the program, the JAX version and the device, so a stale entry is never
    used. ``benchmarks/bench_compile.py`` measures what it saves.

    Args:
      path: the cache directory, created if missing; ``None``:
        :func:`default_cache_dir`.

    Returns:
      the absolute path of the cache directory.

    Raises:
      ValueError: if ``path`` exists and is not a directory, or cannot be
        created.

    Examples:
      >>> import tempfile
      >>> where = use_compilation_cache(tempfile.mkdtemp())
      >>> os.path.isdir(where)
      True
    """
    where = os.path.abspath(os.fspath(default_cache_dir() if path is None else path))
    if os.path.exists(where) and not os.path.isdir(where):
        raise ValueError(
            f"The compilation cache path {where!r} exists and is not a directory. "
            "Pass a directory (it is created if missing) or remove that file."
        )
    try:
        os.makedirs(where, exist_ok=True)
    except OSError as err:
        raise ValueError(
            f"Cannot create the compilation cache directory {where!r}: {err}. Pass "
            f"a writable directory, or set ${ENV_VAR}."
        ) from err
    jax.config.update("jax_compilation_cache_dir", where)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return where
