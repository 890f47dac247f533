"""Devices and processes: where the rows of an evaluation run.

Every chunk of rows is split along its rows over all local devices (a
``jax.sharding`` mesh over the row axis; everything else is replicated), so the
user changes nothing. In a multi-process JAX cluster (started with
:func:`jax.distributed.initialize`, every process running the same check, as
JAX programs do), the rows of every evaluation are split over the processes,
each evaluates its share on its own devices, and the results are exchanged bit
for bit (:func:`jax.experimental.multihost_utils.process_allgather`), so every
process goes on with the same numbers and makes the same decisions
(:func:`jaxcheck.check_grads` also checks that every process passed the same
point, and takes ``f`` at the point and the analytic gradient from process 0;
:func:`this_process_only` opts a check out of the cluster).
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import numpy as np

PyTree = Any


def _coordinate_sharding() -> Any:
    """A sharding that splits the coordinate axis (axis 1 of an index block) over
    every local device, or ``None`` on a single device."""
    devices = jax.local_devices()
    if len(devices) < 2:
        return None
    mesh = jax.sharding.Mesh(np.array(devices), ("coords",))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "coords"))


def num_shards() -> int:
    """How many devices a chunk of coordinates is split over (1 on one device).

    Examples:
      >>> num_shards() >= 1
      True
    """
    return max(1, len(jax.local_devices()))


def _place(*arrays: jax.Array) -> tuple[jax.Array, ...]:
    """Spread index/step blocks over the devices along their coordinate axis."""
    sharding = _coordinate_sharding()
    if sharding is None or arrays[0].shape[1] % num_shards():
        return arrays
    return tuple(jax.device_put(a, sharding) for a in arrays)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during an evaluation, with the results of the rows finished before
    it: ``done`` is what the evaluation returns, cut to the first finished rows
    (in order), so a caller can keep them.

    Examples:
      >>> stop = Interrupted((np.zeros(3), np.zeros(3)))
      >>> isinstance(stop, KeyboardInterrupt), len(stop.done[0])
      (True, 3)
    """

    def __init__(self, done: tuple):
        first = done[0] if done else ()
        rows = len(first) if hasattr(first, "__len__") else len(first.dense)
        super().__init__(f"interrupted after {rows} rows")
        self.done = done


def _cut(parts: list, rows: int) -> np.ndarray | None:
    if not parts:
        return None
    return np.concatenate(parts)[:rows]


_THIS_PROCESS_ONLY = contextvars.ContextVar("jaxcheck_this_process_only", default=False)


@contextlib.contextmanager
def this_process_only() -> Iterator[None]:
    """Checks inside this block run on this process alone, even in a
    multi-process cluster: for a check that only some processes make (e.g.
    ``if jax.process_index() == 0:``), which would otherwise wait forever for
    the others to share the work.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxcheck
      >>> with jaxcheck.this_process_only():
      ...     jaxcheck.check_grads(lambda w: jnp.sum(w**2), jnp.ones(3)).passed
      True
    """
    token = _THIS_PROCESS_ONLY.set(True)
    try:
        yield
    finally:
        _THIS_PROCESS_ONLY.reset(token)


def num_processes() -> int:
    """How many JAX processes share the rows of every evaluation (1 unless
    :func:`jax.distributed.initialize` started a cluster, and inside
    :func:`this_process_only`).

    Examples:
      >>> num_processes()
      1
    """
    if _THIS_PROCESS_ONLY.get():
        return 1
    return max(1, jax.process_count())


def rows_per_process(num_rows: int) -> int:
    """How many of ``num_rows`` rows each process evaluates (all on one).

    Examples:
      >>> rows_per_process(10)
      10
    """
    return -(-num_rows // num_processes())


def _raw(arrays: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate(
        [np.ascontiguousarray(a).reshape(-1).view(np.uint8) for a in arrays]
        or [np.zeros(0, np.uint8)]
    )


def require_same_inputs(arrays: Sequence[Any]) -> None:
    """Raises on every process unless all processes passed the same values (a
    digest of their bytes is exchanged): the processes share one check's
    coordinates, so they must be checking the same point.

    Examples:
      >>> require_same_inputs([np.ones(3)])  # one process: nothing to compare
    """
    if num_processes() == 1:
        return
    from jax.experimental import multihost_utils

    digest = hashlib.sha256()
    for a in arrays:
        host = np.asarray(a)
        digest.update(str((host.dtype, host.shape)).encode())
        digest.update(np.ascontiguousarray(host).tobytes())
    mine = np.frombuffer(digest.digest(), dtype=np.uint8)
    everyone = np.asarray(multihost_utils.process_allgather(mine))
    differ = [
        k for k in range(len(everyone)) if not np.array_equal(everyone[k], everyone[0])
    ]
    if differ:
        raise ValueError(
            "In a multi-process cluster jaxcheck splits the coordinates of one "
            "check over the processes, so every process must pass the same params "
            f"and args; process(es) {differ} passed different ones than process 0 "
            "(a per-process shard of the data?). Pass the same batch on every "
            "process, or check on one process alone inside "
            "`with jaxcheck.this_process_only():`."
        )


def from_process_zero(arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Process 0's copies of host arrays (the same shapes and dtypes on every
    process), on every process, bit for bit; the arrays themselves on one.

    Values every decision of a check depends on (``f`` at the point, the
    analytic gradient) come from one process, so that all processes decide
    alike even when their own copies differ in the last bit.

    Examples:
      >>> from_process_zero([np.arange(3.0)])[0].tolist()
      [0.0, 1.0, 2.0]
    """
    arrays = [np.asarray(a) for a in arrays]
    if num_processes() == 1:
        return arrays
    from jax.experimental import multihost_utils

    raw = np.asarray(multihost_utils.broadcast_one_to_all(_raw(arrays)))
    out, pos = [], 0
    for a in arrays:
        size = a.size * a.dtype.itemsize
        out.append(raw[pos : pos + size].copy().view(a.dtype).reshape(a.shape))
        pos += size
    return out


def _gather_rows(parts: Sequence[np.ndarray | None], per: int, n: int) -> list:
    """Every process's ``parts`` (arrays of ``per`` rows each, the same shapes in
    every process), concatenated in process order and cut to ``n`` rows. Arrays
    travel as raw bytes (``uint8``), so float64 values arrive bit for bit
    whether or not float64 is enabled where this runs."""
    from jax.experimental import multihost_utils

    present = [p for p in parts if p is not None]
    raw = [np.ascontiguousarray(p).reshape(per, -1).view(np.uint8) for p in present]
    widths = [r.shape[1] for r in raw]
    packed = np.concatenate(raw, axis=1) if raw else np.zeros((per, 0), np.uint8)
    everyone = np.asarray(multihost_utils.process_allgather(packed))
    everyone = everyone.reshape(-1, packed.shape[1])[:n]
    out, col, k = [], 0, 0
    for p in parts:
        if p is None:
            out.append(None)
            continue
        w = widths[k]
        block = np.ascontiguousarray(everyone[:, col : col + w])
        out.append(block.view(p.dtype).reshape((n,) + p.shape[1:]))
        col, k = col + w, k + 1
    return out


def _split_over_processes(
    n: int,
    pad_rows: Callable[[np.ndarray], Any],
    run: Callable[[Any, Callable[[int], None] | None], tuple],
    on_progress: Callable[[int], None] | None,
) -> tuple | None:
    """Runs ``run`` on this process's share of ``n`` rows and gathers everyone's
    results; ``None`` with a single process (the caller runs all rows itself).

    Every process takes the same number of rows (the last share is padded with
    row 0, whose results are dropped), so all of them compile the same shapes
    and take part in the same exchanges."""
    procs = num_processes()
    if procs == 1:
        return None
    per = -(-n // procs)
    me = jax.process_index()
    rows = np.arange(me * per, (me + 1) * per)
    rows = np.where(rows < n, rows, 0)
    done = [0]

    def progress(k: int) -> None:
        # Shares advance together: report this share's pace for all of them.
        new = min(n, (done[0] + k) * procs)
        if on_progress is not None and new > min(n, done[0] * procs):
            on_progress(new - min(n, done[0] * procs))
        done[0] += k

    try:
        local = run(pad_rows(rows), progress)
    except Interrupted:
        # One process's finished rows are not a prefix of all rows.
        raise KeyboardInterrupt from None
    return tuple(_gather_rows(local, per, n))


def place_rows(*arrays: np.ndarray) -> tuple:
    """Spreads blocks of rows (axis 1 is the row axis within a chunk) over the
    local devices; on one device, or when the rows do not split evenly, the
    arrays are returned as they are.

    Examples:
      >>> idx, = place_rows(np.zeros((2, 4), np.int32))
      >>> idx.shape
      (2, 4)
    """
    sharding = _coordinate_sharding()
    if sharding is None or not arrays or arrays[0].shape[1] % num_shards():
        return arrays
    return tuple(jax.device_put(a, sharding) for a in arrays)
