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


def _cache_dir_in_use() -> str | None:
    """The directory JAX's persistent cache of this process writes to, or ``None``
    while it has none.

    JAX reads ``jax_compilation_cache_dir`` once, at the first compilation after
    it is set, and keeps that directory for the rest of the process (a later
    change of the option is ignored). JAX has no public way to ask for it, so
    this reads the private ``jax._src.compilation_cache._cache`` (as in JAX
    0.10.2); where that is missing it answers ``None``.

    Examples:
      >>> where = _cache_dir_in_use()
      >>> where is None or os.path.isabs(where)
      True
    """
    try:
        from jax._src import compilation_cache as jax_cache
    except ImportError:  # pragma: no cover - a JAX without that module
        return None
    cache = getattr(jax_cache, "_cache", None)
    path = getattr(cache, "_path", None)
    return None if path is None else str(path)


def _prepare_cache_dir(where: str) -> str | None:
    """Creates the directory ``where`` if missing; returns why it cannot hold the
    cache, or ``None`` if it can.

    Examples:
      >>> import tempfile
      >>> _prepare_cache_dir(tempfile.gettempdir()) is None
      True
      >>> with tempfile.NamedTemporaryFile() as f:
      ...     _prepare_cache_dir(f.name)
      'it exists and is not a directory'
    """
    if os.path.exists(where) and not os.path.isdir(where):
        return "it exists and is not a directory"
    try:
        os.makedirs(where, exist_ok=True)
    except OSError as err:
        return f"it cannot be created: {err}"
    if not os.access(where, os.W_OK | os.X_OK):
        return "it is not writable"
    return None


def _same_dir(a: str, b: str) -> bool:
    """Whether ``a`` and ``b`` name one directory (links resolved)."""
    return os.path.realpath(a) == os.path.realpath(b)


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

    JAX fixes the directory at the first compilation after it is set: from then
    on a call with the same directory changes nothing, and a call with another
    one raises (JAX would go on writing to the first), so choose the directory
    before anything compiles, or start a new process to change it.

    Args:
      path: the cache directory, created if missing; ``None``:
        :func:`default_cache_dir`.

    Returns:
      the absolute path of the cache directory.

    Raises:
      ValueError: if ``path`` exists and is not a directory, cannot be created
        or is not writable; or if this process's cache already writes to
        another directory.

    Examples:
      At the start of a script (not run here: it changes JAX's options for the
      rest of the process):

      >>> use_compilation_cache()  # doctest: +SKIP
      '/home/me/.cache/jaxcheck/xla'

      A path that cannot be a directory is refused before anything changes:

      >>> import tempfile
      >>> with tempfile.NamedTemporaryFile() as f:
      ...     use_compilation_cache(f.name)
      Traceback (most recent call last):
      ValueError: Cannot keep the compilation cache in '...': it exists and is not a directory. ...
    """
    where = os.path.abspath(os.fspath(default_cache_dir() if path is None else path))
    in_use = _cache_dir_in_use()
    if in_use is not None and not _same_dir(in_use, where):
        raise ValueError(
            f"This process's compilation cache already writes to {in_use!r}, and "
            f"JAX cannot move it to {where!r}: it fixes the directory at the first "
            "compilation after it is set. Call use_compilation_cache with the "
            f"same directory, or use {where!r} from a new process (call "
            "use_compilation_cache before anything compiles)."
        )
    problem = _prepare_cache_dir(where)
    if problem is not None:
        raise ValueError(
            f"Cannot keep the compilation cache in {where!r}: {problem}. Pass a "
            f"writable directory (it is created if missing), or set ${ENV_VAR} to "
            "one and pass no path."
        )
    jax.config.update("jax_compilation_cache_dir", where)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return where
