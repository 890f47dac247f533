"""Caches: small memos of traced facts, and the compiled programs of checks."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import pathlib
import pickle
import re
import tempfile
import warnings
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

_CACHE: dict[Any, Any] = {}
_CACHE_SIZE = 64


def avals_of(tree: Any) -> tuple:
    """``(shape, dtype)`` of every leaf of ``tree``: a hashable key of shapes.

    Args:
      tree: a pytree of arrays.

    Returns:
      a tuple of ``(shape, dtype name)`` pairs.

    Examples:
      >>> avals_of([jnp.ones((2, 3)), jnp.zeros(4, jnp.int32)])
      (((2, 3), 'float32'), ((4,), 'int32'))
    """
    return tuple(
        (tuple(np.shape(a)), str(jnp.result_type(a)))
        for a in jax.tree_util.tree_leaves(tree)
    )


def cached(key: Any, compute: Callable[[], Any]) -> Any:
    """``compute()``, remembered under ``key`` (the last 64 keys are kept).

    For what is derived from tracing a :class:`LeafFunction` at given shapes
    (its jaxpr's size, its kink analysis): a second check of the same function
    skips the tracing. An unhashable key computes every time.

    Args:
      key: a hashable key, e.g. ``(name, leaf_function, avals_of(args))``.
      compute: a function of no arguments.

    Returns:
      the (possibly remembered) result.

    Examples:
      >>> cached(("doc", 1), lambda: 42), cached(("doc", 1), lambda: 0)
      (42, 42)
    """
    try:
        hit = _CACHE.pop(key, _MISSING)
    except TypeError:
        return compute()
    if hit is _MISSING:
        hit = compute()
    _CACHE[key] = hit
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.pop(next(iter(_CACHE)))
    return hit


_MISSING = object()


# --------------------------------------------------------------------------- #
# Compiled programs: in memory, and on disk across processes.
# --------------------------------------------------------------------------- #

#: Compiled programs kept in memory (least recently used dropped first). A
#: program of a small model takes a few hundred kB; a large one a few MB.
MAX_PROGRAMS = 32

#: Set to 1 to keep jaxcheck from reading or writing its on-disk cache.
NO_CACHE_ENV = "JAXCHECK_NO_CACHE"
#: The on-disk cache's directory (default ``~/.cache/jaxcheck/programs``).
CACHE_DIR_ENV = "JAXCHECK_CACHE_DIR"
#: The on-disk cache keeps at most this many bytes (oldest files removed first).
MAX_DISK_BYTES = 256 << 20
#: Stores between two listings of the cache directory (see :func:`_trim`).
SCAN_EVERY = 32
#: Per directory: this process's count of its bytes, and stores since a listing.
_USAGE: dict[pathlib.Path, list[int]] = {}

_PROGRAMS: OrderedDict[Any, Any] = OrderedDict()
_STATS = {"compiled": 0, "loaded": 0, "reused": 0}


def stats() -> dict[str, int]:
    """How many programs this process compiled, loaded from disk and reused
    from memory (a copy: for reports and benchmarks).

    Examples:
      >>> sorted(stats())
      ['compiled', 'loaded', 'reused']
    """
    return dict(_STATS)


def get_program(key: Any, build: Callable[[], Any]) -> tuple[Any, bool]:
    """The program cached under ``key``, or ``build()`` (then kept); and whether
    it was reused.

    Examples:
      >>> p, reused = get_program(("doc",), lambda: "program")
      >>> p, get_program(("doc",), lambda: "other")
      ('program', ('program', True))
    """
    hit = _PROGRAMS.pop(key, None)
    reused = hit is not None
    if hit is None:
        hit = build()
    else:
        _STATS["reused"] += 1
    _PROGRAMS[key] = hit
    while len(_PROGRAMS) > MAX_PROGRAMS:
        _PROGRAMS.popitem(last=False)
    return hit, reused


def clear_programs() -> None:
    """Forgets every compiled program kept in memory (the on-disk cache stays).

    Examples:
      >>> clear_programs()
      >>> len(_PROGRAMS)
      0
    """
    _PROGRAMS.clear()


@functools.lru_cache(maxsize=1)
def _code_version() -> str:
    """A digest of the source of the modules that build programs: a program on
    disk is never used by a different jaxcheck."""
    package = pathlib.Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        if "training" not in path.relative_to(package).parts:
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def program_key(key: str, layout: Any, dtype: Any) -> str:
    """The on-disk name of a program: its structural key, layout and dtype, the
    versions of jaxcheck's code, JAX and jaxlib, the devices, and ``XLA_FLAGS``
    (a program compiled under other XLA flags, fast math say, is not reused).

    Examples:
      >>> len(program_key("abc", ("layout",), np.float64))
      64
    """
    devices = jax.local_devices()
    parts = [
        key, repr(layout), str(np.dtype(dtype)), _code_version(), jax.__version__,
        getattr(jax.lib, "__version__", "") or _jaxlib_version(),
        devices[0].platform, getattr(devices[0], "device_kind", ""),
        str(len(devices)), str(jax.process_count()), os.environ.get("XLA_FLAGS", ""),
    ]  # fmt: skip
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def _jaxlib_version() -> str:
    try:
        import jaxlib

        return jaxlib.__version__
    except Exception:  # noqa: BLE001 - a version string is best effort
        return ""


def cache_dir() -> pathlib.Path | None:
    """Where compiled programs are kept on disk, or ``None`` when that is off
    (``$JAXCHECK_NO_CACHE=1``).

    ``$JAXCHECK_CACHE_DIR``, else ``$XDG_CACHE_HOME/jaxcheck/programs``, else
    ``~/.cache/jaxcheck/programs``. Only jaxcheck's own programs go there:
    JAX's configuration is never changed.

    Examples:
      >>> where = cache_dir()
      >>> where is None or where.name == "programs" or "JAXCHECK_CACHE_DIR" in os.environ
      True
    """
    if os.environ.get(NO_CACHE_ENV, "") not in ("", "0"):
        return None
    if os.environ.get(CACHE_DIR_ENV):
        return pathlib.Path(os.environ[CACHE_DIR_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(
        os.path.expanduser("~"), ".cache"
    )
    return pathlib.Path(base) / "jaxcheck" / "programs"


_WARNED: set[str] = set()


def _warn_once(where: pathlib.Path, problem: str) -> None:
    if str(where) in _WARNED:
        return
    _WARNED.add(str(where))
    warnings.warn(
        f"jaxcheck cannot use its program cache in {where} ({problem}); checks "
        f"compile as usual. Set ${CACHE_DIR_ENV} to a writable directory, or "
        f"${NO_CACHE_ENV}=1 to turn the cache off.",
        RuntimeWarning,
        stacklevel=4,
    )


def load_executable(name: str) -> tuple[Any, dict] | None:
    """The compiled program stored under ``name`` and the extras stored with it,
    or ``None``.

    Examples:
      >>> load_executable("0" * 64) is None
      True
    """
    where = cache_dir()
    if where is None:
        return None
    path = where / f"{name}.jxc"
    try:
        blob = path.read_bytes()
    except OSError:
        return None
    try:
        from jax.experimental import serialize_executable as ser

        payload, in_tree, out_tree, extras = pickle.loads(blob)
        compiled = ser.deserialize_and_load(payload, in_tree, out_tree)
    except Exception:  # noqa: BLE001 - a stale or damaged entry: compile instead
        with contextlib.suppress(OSError):
            path.unlink()
        return None
    prepare_custom_calls(extras.get("custom_calls"))
    with contextlib.suppress(OSError):
        os.utime(path)
    _STATS["loaded"] += 1
    return compiled, extras


_TARGET = re.compile(r'custom_call @"?([\w.$-]+)|call_target_name = "([^"]+)"')


def custom_call_targets(module_text: str) -> list[str]:
    """The custom-call targets a lowered program calls, sorted.

    Examples:
      >>> custom_call_targets("%0:3 = stablehlo.custom_call @lapack_dgetrf_ffi(%arg0)")
      ['lapack_dgetrf_ffi']
    """
    return sorted({a or b for a, b in _TARGET.findall(module_text)})


def prepare_custom_calls(targets: list[str] | None) -> None:
    """Readies the kernels behind ``targets`` (``None``: not known) before a
    program loaded from disk runs.

    Lowering a program that calls LAPACK (``jnp.linalg.solve``, ``eigh``, ...)
    on a CPU points jaxlib's LAPACK kernels at SciPy's; a program loaded from
    disk was never lowered in this process, and running it before anything
    else did would call through null pointers (a segmentation fault).

    Examples:
      >>> prepare_custom_calls([])  # nothing to ready
    """
    if targets is not None and not any(t.startswith("lapack_") for t in targets):
        return
    with contextlib.suppress(ImportError, AttributeError):
        from jax._src.lib import lapack

        lapack._lapack.initialize()


def store_executable(
    name: str, compiled: Any, *, disk: bool = True, extras: dict | None = None
) -> None:
    """Counts a compilation and keeps ``compiled`` (with picklable ``extras``,
    what tracing the program found out) on disk under ``name`` (atomically;
    best effort; not when ``disk`` is False)."""
    _STATS["compiled"] += 1
    where = cache_dir()
    if where is None or not disk:
        return
    try:
        from jax.experimental import serialize_executable as ser

        blob = pickle.dumps((*ser.serialize(compiled), extras or {}))
    except Exception:  # noqa: BLE001 - not serialisable here: keep it in memory
        return
    try:
        where.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=where, suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            fh.write(blob)
        os.replace(tmp, where / f"{name}.jxc")
        _trim(where, len(blob))
    except OSError as err:
        _warn_once(where, str(err))


def _trim(where: pathlib.Path, added: int) -> None:
    """Keeps ``where`` under :data:`MAX_DISK_BYTES` after a store of ``added``
    bytes, removing the oldest programs first.

    Listing a full directory (about a thousand programs) takes about 10 ms, a
    tenth of a small check's compilation: it is listed on this process's first
    store there, then again once this process's count of its size goes over the
    bound, or after :data:`SCAN_EVERY` stores (other processes store there too).
    """
    usage = _USAGE.get(where)
    if usage is not None:
        usage[0] += added
        usage[1] += 1
        if usage[0] <= MAX_DISK_BYTES and usage[1] < SCAN_EVERY:
            return
    files = []
    with os.scandir(where) as entries:
        for entry in entries:
            if entry.name.endswith(".jxc"):
                with contextlib.suppress(OSError):  # removed by another process
                    info = entry.stat()
                    files.append((info.st_mtime, info.st_size, entry.path))
    files.sort()
    total = sum(size for _, size, _ in files)
    for _, size, path in files:
        if total <= MAX_DISK_BYTES:
            break
        with contextlib.suppress(OSError):
            os.unlink(path)
        total -= size
    _USAGE[where] = [total, 0]
