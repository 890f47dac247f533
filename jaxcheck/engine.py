"""The batched centered-difference engine.

For one leaf ``x`` (flattened) of the parameters, and a set of coordinate
indices, it evaluates ``f(x + h e_i)`` and ``f(x - h e_i)`` for all of them:

* one perturbed coordinate per batch element, batched with :func:`jax.vmap`;
  the other leaves and the arguments enter unbatched, so XLA computes whatever
  does not depend on the perturbed leaf once per chunk, not once per coordinate;
* chunks of ``chunk_size`` coordinates run one after another inside a single
  compiled call with :func:`jax.lax.map` (no Python dispatch per chunk);
* ``chunk_size`` comes from a memory budget and an estimate of the bytes one
  perturbed evaluation needs, so a model with millions of parameters never
  holds more than the budget at once;
* compiled functions are cached per (function, leaf, shapes, chunk), so a second
  check of the same function does not compile again.

The engine runs on whatever device JAX has. With several local devices (GPUs,
or CPU devices forced with ``--xla_force_host_platform_device_count``), every
chunk is split along its coordinates over all of them (a ``jax.sharding`` mesh
over the coordinate axis; the leaf, the other parameters and the arguments are
replicated), so the user changes nothing. In a multi-process JAX cluster
(started with :func:`jax.distributed.initialize`, every process running the
same check, as JAX programs do), the rows of every evaluation are split over
the processes, each evaluates its share on its own devices, and the results are
exchanged bit for bit (:func:`jax.experimental.multihost_utils.process_allgather`),
so every process goes on with the same numbers and makes the same decisions
(:func:`jaxcheck.check_grads` also checks that every process passed the same
point, and takes ``f`` at the point and the analytic gradient from process 0;
:func:`this_process_only` opts a check out of the cluster).
It does not enable float64 itself: :func:`jaxcheck.check_grads` calls it
inside ``jax.enable_x64(True)``.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import math
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any

#: Largest chunk (coordinates per vmapped batch). On a CPU, larger chunks only
#: add memory traffic (every perturbed copy of the leaf is written and read).
MAX_CHUNK_CPU = 256
#: ... but batches below this size pay per-batch overhead (fewer, larger copies
#: were still faster at 1e5 parameters: chunks of 8 beat chunks of 1 and 4).
MIN_CHUNK_CPU = 8
MAX_CHUNK_ACCELERATOR = 8192
#: On a CPU, keep one chunk's working set around this size: it then stays in
#: cache (measured on a 2-core CPU: chunks of 8 perturbed copies of a 75 kB leaf
#: ran 2.3x faster than chunks of 128).
CPU_CHUNK_TARGET_BYTES = 2 << 20
#: At most this many chunks per compiled call; longer leaves take several calls
#: (this bounds the padding wasted on the last call and lets progress show).
CHUNKS_PER_CALL = 64


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
        super().__init__(f"interrupted after {len(done[0])} rows")
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


def _hash_or_id(x: Any) -> int:
    try:
        return hash(x)
    except TypeError:
        return id(x)


class LeafFunction:
    """``f`` seen as a function of one flattened leaf, the other dynamic leaves,
    and the dynamic arguments: ``g(leaf_flat, dyn_params, dyn_args) -> f(...)``.

    Non-array leaves of ``params`` and ``args`` (strings, functions inside an
    equinox module, Python scalars) are closed over. Instances compare equal
    when they wrap the same function, tree structure and leaf, and the very
    same closed-over objects, which lets :func:`jax.jit` reuse compilations
    across calls.
    """

    def __init__(
        self,
        f: Callable[..., Any],
        params_treedef: Any,
        num_param_leaves: int,
        static_params: dict[int, Any],
        args_treedef: Any,
        num_arg_leaves: int,
        static_args: dict[int, Any],
        leaf_pos: int | None,
        leaf_shape: tuple[int, ...] = (),
    ):
        self.f = f
        self.params_treedef = params_treedef
        self.num_param_leaves = num_param_leaves
        self.static_params = static_params
        self.args_treedef = args_treedef
        self.num_arg_leaves = num_arg_leaves
        self.static_args = static_args
        self.leaf_pos = leaf_pos
        self.leaf_shape = tuple(leaf_shape)

    def _key(self) -> tuple:
        return (
            self.params_treedef,
            self.args_treedef,
            self.leaf_pos,
            self.leaf_shape,
            tuple(sorted(self.static_params)),
            tuple(sorted(self.static_args)),
        )

    def __hash__(self) -> int:
        return hash((_hash_or_id(self.f), self._key()))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LeafFunction):
            return NotImplemented
        if self._key() != other._key():
            return False
        same_f = self.f is other.f
        if not same_f:
            try:
                same_f = bool(self.f == other.f)
            except Exception:  # noqa: BLE001 - exotic __eq__: treat as different
                same_f = False
        return (
            same_f
            and all(
                self.static_params[k] is other.static_params[k]
                for k in self.static_params
            )
            and all(
                self.static_args[k] is other.static_args[k] for k in self.static_args
            )
        )

    def rebuild(self, dyn_params: Sequence[Any], dyn_args: Sequence[Any]) -> tuple:
        """``(params, args)`` from the dynamic leaves (positions not static)."""
        it = iter(dyn_params)
        p_leaves = [
            self.static_params[i] if i in self.static_params else next(it)
            for i in range(self.num_param_leaves)
        ]
        it = iter(dyn_args)
        a_leaves = [
            self.static_args[i] if i in self.static_args else next(it)
            for i in range(self.num_arg_leaves)
        ]
        params = jax.tree_util.tree_unflatten(self.params_treedef, p_leaves)
        args = jax.tree_util.tree_unflatten(self.args_treedef, a_leaves)
        return params, args

    def __call__(
        self, leaf_flat: jax.Array, dyn_params: Sequence[Any], dyn_args: Sequence[Any]
    ) -> jax.Array:
        dyn_params = list(dyn_params)
        if self.leaf_pos is not None:
            dyn_params[self.dyn_index] = leaf_flat.reshape(self.leaf_shape)
        params, args = self.rebuild(dyn_params, dyn_args)
        return self.f(params, *args)

    @property
    def dyn_index(self) -> int:
        """Index of the perturbed leaf among the dynamic parameter leaves."""
        assert self.leaf_pos is not None
        return self.leaf_pos - sum(1 for k in self.static_params if k < self.leaf_pos)


def _block(
    fn: LeafFunction,
    x_flat: jax.Array,
    idx_block: jax.Array,
    step_block: jax.Array,
    dyn_params: Sequence[Any],
    dyn_args: Sequence[Any],
) -> tuple[jax.Array, jax.Array]:
    """``f(x ± h e_i)`` for ``idx_block`` of shape ``(num_chunks, chunk)``;
    ``step_block`` is one step per coordinate (same shape) or a scalar."""
    step_block = jnp.broadcast_to(step_block, idx_block.shape)

    def one(i: jax.Array, step: jax.Array) -> tuple[jax.Array, jax.Array]:
        xi = x_flat[i]
        plus = fn(x_flat.at[i].set(xi + step), dyn_params, dyn_args)
        minus = fn(x_flat.at[i].set(xi - step), dyn_params, dyn_args)
        return plus, minus

    return jax.lax.map(lambda blk: jax.vmap(one)(*blk), (idx_block, step_block))


_block_jit = jax.jit(_block, static_argnums=0)


def _nbytes(aval: Any) -> int:
    shape = getattr(aval, "shape", None)
    dtype = getattr(aval, "dtype", None)
    if shape is None or dtype is None:
        return 0
    try:
        itemsize = np.dtype(dtype).itemsize
    except TypeError:
        itemsize = 8
    return int(math.prod(shape)) * itemsize


def _jaxpr_bytes(jaxpr: Any) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        total += sum(_nbytes(v.aval) for v in eqn.outvars)
        for param in eqn.params.values():
            inner = getattr(param, "jaxpr", param)
            if hasattr(inner, "eqns"):
                total += _jaxpr_bytes(inner)
    return total


def bytes_per_coordinate(
    fn: LeafFunction,
    x_flat: jax.Array,
    dyn_params: Sequence[Any],
    dyn_args: Sequence[Any],
) -> int:
    """Estimated bytes that one perturbed coordinate (two evaluations) needs.

    Sums the sizes of every intermediate value in the jaxpr of ``fn`` (an upper
    bound on what is live at once) plus the perturbed copy of the leaf, for
    ``f(x + h e_i)`` and ``f(x - h e_i)``.

    Args:
      fn: the function of the flattened leaf.
      x_flat: the leaf, flattened.
      dyn_params: the dynamic parameter leaves.
      dyn_args: the dynamic argument leaves.

    Returns:
      bytes, at least 16.

    Examples:
      >>> fn = LeafFunction(lambda p: jnp.sum(p ** 2), jax.tree_util.tree_structure(0.0),
      ...                   1, {}, jax.tree_util.tree_structure(()), 0, {}, 0, (3,))
      >>> bytes_per_coordinate(fn, jnp.ones(3), [jnp.ones(3)], []) > 0
      True
    """

    def compute() -> int:
        closed = jax.make_jaxpr(fn)(x_flat, dyn_params, dyn_args)
        per_eval = _jaxpr_bytes(closed.jaxpr) + _nbytes(x_flat)
        return 2 * max(per_eval, 8)

    return cached(("bytes", fn, avals_of((x_flat, dyn_params, dyn_args))), compute)


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


def default_memory_budget(device: Any | None = None) -> int:
    """The default memory budget of a check, in bytes, for ``device``.

    On an accelerator: a quarter of the memory the device has free. On a CPU:
    an eighth of the machine's physical memory, at most 2 GiB.

    Args:
      device: a JAX device; default the first one.

    Returns:
      bytes.

    Examples:
      >>> default_memory_budget() > 0
      True
    """
    device = jax.local_devices()[0] if device is None else device
    stats = None
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - some backends do not implement it
        stats = None
    if stats and "bytes_limit" in stats:
        free = int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
        return max(free // 4, 1 << 20)
    try:
        phys = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        phys = 8 << 30
    return int(min(2 << 30, phys // 8))


def choose_chunk_size(
    per_coordinate_bytes: int,
    num_coords: int,
    memory_budget: int,
    platform: str,
) -> int:
    """Coordinates per vmapped batch: as many as fit in the budget, capped.

    Args:
      per_coordinate_bytes: from :func:`bytes_per_coordinate`.
      num_coords: how many coordinates the leaf has to check.
      memory_budget: bytes one batch may use.
      platform: ``"cpu"``, ``"gpu"``, ``"tpu"``.

    Returns:
      a power of two.

    Examples:
      >>> choose_chunk_size(1_000, 10_000, 1 << 30, "cpu")
      256
      >>> choose_chunk_size(1 << 20, 10_000, 1 << 30, "cpu")
      8
      >>> choose_chunk_size(1 << 20, 10_000, 2 << 20, "cpu")  # the budget wins
      2
    """
    fit = max(1, memory_budget // max(per_coordinate_bytes, 1))
    if platform == "cpu":
        cap = min(MAX_CHUNK_CPU, CPU_CHUNK_TARGET_BYTES // per_coordinate_bytes)
        cap = max(cap, MIN_CHUNK_CPU)
    else:
        cap = MAX_CHUNK_ACCELERATOR
    chunk = int(min(fit, cap, max(num_coords, 1)))
    # Round down to a power of two so that similar leaves share compilations,
    # and up to a multiple of the devices the chunk is spread over.
    chunk = 1 << (chunk.bit_length() - 1)
    shards = num_shards()
    return -(-chunk // shards) * shards


def central_differences(
    fn: LeafFunction,
    x_flat: jax.Array,
    indices: np.ndarray,
    step: float | np.ndarray,
    dyn_params: Sequence[Any],
    dyn_args: Sequence[Any],
    *,
    chunk_size: int,
    on_progress: Callable[[int], None] | None = None,
    chunks_per_call: int | None = None,
    block: Callable[..., Any] | None = None,
    _local: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """``f(x + h e_i)`` and ``f(x - h e_i)`` for every flat index ``i`` in ``indices``.

    Args:
      fn: the function of the flattened leaf.
      x_flat: the leaf, flattened, in the dtype of the check (float64).
      indices: flat coordinate indices into ``x_flat`` (may repeat).
      step: the step ``h``, or one step per entry of ``indices``.
      dyn_params: the dynamic parameter leaves (unbatched).
      dyn_args: the dynamic argument leaves (unbatched).
      chunk_size: coordinates per vmapped batch.
      on_progress: called with the number of coordinates finished by each call.
      chunks_per_call: when given, every compiled call holds exactly this many
        chunks (the last one padded), so that calls with any number of
        coordinates reuse one compilation. By default calls hold up to
        :data:`CHUNKS_PER_CALL` chunks and the last one only what is left.
      block: evaluates one call instead of the plain vmapped engine, as
        ``block(x_flat, idx_block, step_block, dyn_params, dyn_args) ->
        (f_plus, f_minus)`` (e.g. from
        :func:`jaxcheck.propagate.make_propagated_block`); ``None``: the plain
        engine.

    Returns:
      ``(f_plus, f_minus)``, float64 NumPy arrays of ``len(indices)``.

    Examples:
      >>> import jax.tree_util as jtu
      >>> fn = LeafFunction(lambda p: jnp.sum(p ** 2), jtu.tree_structure(0.0), 1,
      ...                   {}, jtu.tree_structure(()), 0, {}, 0, (3,))
      >>> x = jnp.array([1.0, 2.0, 3.0])
      >>> fp, fm = central_differences(fn, x, np.arange(3), 0.5, [x], [], chunk_size=2)
      >>> ((fp - fm) / 1.0).tolist()  # 2 x_i
      [2.0, 4.0, 6.0]
    """
    n = len(indices)
    if n == 0:
        return np.zeros(0), np.zeros(0)
    steps_arr = np.broadcast_to(np.asarray(step, dtype=np.float64), (n,))
    if not _local:
        local = functools.partial(
            central_differences, fn, x_flat, chunk_size=chunk_size,
            chunks_per_call=chunks_per_call, block=block, _local=True,
        )  # fmt: skip
        shared = _split_over_processes(
            n,
            lambda rows: (np.asarray(indices)[rows], steps_arr[rows]),
            lambda part, progress: local(
                *part, dyn_params, dyn_args, on_progress=progress
            ),
            on_progress,
        )
        if shared is not None:
            return shared[0], shared[1]
    # With a fixed call shape the chunk stays as given (one compilation).
    chunk = max(1, int(chunk_size) if chunks_per_call else min(int(chunk_size), n))
    num_chunks = -(-n // chunk)
    per_call = chunks_per_call or min(CHUNKS_PER_CALL, num_chunks)
    int_dtype = np.int32 if x_flat.size < 2**31 else np.int64
    plus_parts, minus_parts = [], []
    try:
        start_chunk = 0
        while start_chunk < num_chunks:
            nblk = (
                per_call if chunks_per_call else min(per_call, num_chunks - start_chunk)
            )
            lo = start_chunk * chunk
            hi = min(n, (start_chunk + nblk) * chunk)
            block_idx = np.zeros(nblk * chunk, dtype=int_dtype)
            block_idx[: hi - lo] = indices[lo:hi]
            block_idx[hi - lo :] = indices[
                lo
            ]  # pad with a valid index; results dropped
            hs = np.full(nblk * chunk, steps_arr[lo])
            hs[: hi - lo] = steps_arr[lo:hi]
            idx_arr, hs_arr = _place(
                jnp.asarray(block_idx.reshape(nblk, chunk)),
                jnp.asarray(hs.reshape(nblk, chunk), dtype=x_flat.dtype),
            )
            if block is None:
                fp, fm = _block_jit(fn, x_flat, idx_arr, hs_arr, dyn_params, dyn_args)
            else:
                fp, fm = block(x_flat, idx_arr, hs_arr, dyn_params, dyn_args)
            plus_parts.append(np.asarray(fp, dtype=np.float64).reshape(-1)[: hi - lo])
            minus_parts.append(np.asarray(fm, dtype=np.float64).reshape(-1)[: hi - lo])
            if on_progress is not None:
                on_progress(hi - lo)
            start_chunk += nblk
    except KeyboardInterrupt:
        rows = min(sum(map(len, plus_parts)), sum(map(len, minus_parts)))
        done = [_cut(plus_parts, rows), _cut(minus_parts, rows)]
        raise Interrupted(
            tuple(np.zeros(0) if d is None else d for d in done)
        ) from None
    return np.concatenate(plus_parts), np.concatenate(minus_parts)


def call_shapes(num: int, chunk_size: int) -> tuple[int, ...]:
    """The chunks per compiled call :func:`central_differences` uses for ``num``
    coordinates (by default), smallest first.

    Args:
      num: coordinates (rows) of the call.
      chunk_size: coordinates per vmapped batch.

    Returns:
      the distinct numbers of chunks per compiled call.

    Examples:
      >>> call_shapes(1000, 8)  # 125 chunks: calls of 64 and 61 chunks
      (61, 64)
    """
    chunk = max(1, min(int(chunk_size), num))
    num_chunks = -(-num // chunk)
    per_call = min(CHUNKS_PER_CALL, num_chunks)
    shapes = {per_call}
    if num_chunks % per_call:
        shapes.add(num_chunks % per_call)
    return tuple(sorted(shapes))


def _eval_block(
    fn: Callable[..., Any],
    x_flat: jax.Array,
    idx_block: jax.Array,
    delta_block: jax.Array,
    dyn_params: Sequence[Any],
    dyn_args: Sequence[Any],
) -> Any:
    """``fn(x + delta[r, k] e_{idx[r]})`` for blocks of shape ``(num_chunks, chunk)``
    of rows, ``K`` offsets per row (``delta_block`` has shape
    ``(num_chunks, chunk, K)``)."""
    num_offsets = delta_block.shape[-1]
    paired = hasattr(fn, "pair") and num_offsets == 2

    def one(i: jax.Array, d: jax.Array) -> Any:
        xi = x_flat[i]
        if paired:
            return fn.pair(
                x_flat.at[i].set(xi + d[0]), x_flat.at[i].set(xi + d[1]),
                dyn_params, dyn_args,
            )  # fmt: skip
        outs = [
            fn(x_flat.at[i].set(xi + d[k]), dyn_params, dyn_args)
            for k in range(num_offsets)
        ]
        return jax.tree_util.tree_map(lambda *r: jnp.stack(r), *outs)

    return jax.lax.map(lambda blk: jax.vmap(one)(*blk), (idx_block, delta_block))


_eval_block_jit = jax.jit(_eval_block, static_argnums=0)


def evaluate(
    fn: Callable[..., Any],
    x_flat: jax.Array,
    indices: np.ndarray,
    deltas: np.ndarray,
    dyn_params: Sequence[Any],
    dyn_args: Sequence[Any],
    *,
    chunk_size: int,
    chunks_per_call: int | None = None,
    on_progress: Callable[[int], None] | None = None,
    evaluator: Callable[..., Any] | None = None,
    _local: bool = False,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """``f(x + deltas[r, k] e_i)`` for every row ``r`` (``i = indices[r]``) and
    offset ``k``: the general form of :func:`central_differences`.

    Rows are batched with :func:`jax.vmap` and chunked with :func:`jax.lax.map`
    exactly like the centered differences. Every compiled call holds
    ``chunks_per_call`` chunks (the last one padded), so that all calls for one
    leaf, whatever their number of rows, share one compilation. ``fn`` may
    return ``(value, words)``, as a :class:`jaxcheck.kinks.WinnerTracker` does;
    the words then come back as well, and with two offsets per row a tracker's
    ``pair`` also counts the decisions that differ between them.

    Args:
      fn: a function of the flattened leaf, like :class:`LeafFunction`.
      x_flat: the leaf, flattened.
      indices: flat coordinate index of every row, shape ``(R,)``.
      deltas: offsets added to that coordinate, shape ``(R, K)``.
      dyn_params: the dynamic parameter leaves (unbatched).
      dyn_args: the dynamic argument leaves (unbatched).
      chunk_size: rows per vmapped batch.
      chunks_per_call: chunks per compiled call (default: as many as needed, at
        most :data:`CHUNKS_PER_CALL`).
      on_progress: called with the number of rows finished by each call.
      evaluator: evaluates one call instead of the plain engine, with the
        arguments of ``_eval_block`` after ``fn`` (e.g. from
        :func:`jaxcheck.propagate.make_propagated_evaluator`).

    Returns:
      ``(values, words, changed)``: float64 values of shape ``(R, K)``; the
      uint32 words of shape ``(R, K, S)`` when ``fn`` returns them (else
      ``None``); the number of decisions per site that differ between the two
      offsets of a row, shape ``(R, S)``, for a tracker with ``K = 2`` (else
      ``None``).

    Examples:
      >>> import jax.tree_util as jtu
      >>> fn = LeafFunction(lambda p: jnp.sum(p ** 3), jtu.tree_structure(0.0), 1,
      ...                   {}, jtu.tree_structure(()), 0, {}, 0, (2,))
      >>> x = jnp.array([1.0, 2.0])
      >>> v, _, _ = evaluate(fn, x, np.array([0, 1]),
      ...                    np.array([[0.0, 1.0], [0.0, -1.0]]), [x], [], chunk_size=2)
      >>> v.tolist()  # f(x), f(x + e_0); f(x), f(x - e_1)
      [[9.0, 16.0], [9.0, 2.0]]
    """
    indices = np.asarray(indices)
    deltas = np.asarray(deltas, dtype=np.float64)
    n = len(indices)
    if deltas.ndim != 2 or deltas.shape[0] != n:
        raise ValueError(
            f"`deltas` must have shape (len(indices), K) = ({n}, K), got "
            f"{deltas.shape}."
        )
    num_offsets = deltas.shape[1]
    if n == 0:
        return np.zeros((0, num_offsets)), None, None
    if not _local:
        local = functools.partial(
            evaluate, fn, x_flat, chunk_size=chunk_size,
            chunks_per_call=chunks_per_call, evaluator=evaluator, _local=True,
        )  # fmt: skip
        shared = _split_over_processes(
            n,
            lambda rows: (indices[rows], deltas[rows]),
            lambda part, progress: local(
                *part, dyn_params, dyn_args, on_progress=progress
            ),
            on_progress,
        )
        if shared is not None:
            return shared
    chunk = max(1, int(chunk_size) if chunks_per_call else min(int(chunk_size), n))
    num_chunks = -(-n // chunk)
    per_call = chunks_per_call or min(CHUNKS_PER_CALL, num_chunks)
    int_dtype = np.int32 if x_flat.size < 2**31 else np.int64
    val_parts, word_parts, count_parts = [], [], []
    try:
        start = 0
        rows_per_call = per_call * chunk
        while start < n:
            stop = min(n, start + rows_per_call)
            idx = np.full(rows_per_call, indices[start], dtype=int_dtype)
            idx[: stop - start] = indices[start:stop]
            dlt = np.zeros((rows_per_call, num_offsets))
            dlt[: stop - start] = deltas[start:stop]
            idx_arr, dlt_arr = _place(
                jnp.asarray(idx.reshape(per_call, chunk)),
                jnp.asarray(
                    dlt.reshape(per_call, chunk, num_offsets), dtype=x_flat.dtype
                ),
            )
            call_args = (x_flat, idx_arr, dlt_arr, dyn_params, dyn_args)
            if evaluator is None:
                out = _eval_block_jit(fn, *call_args)
            else:
                out = evaluator(*call_args)
            if isinstance(out, tuple):
                vals, words = out[0], out[1]
                word_parts.append(
                    np.asarray(words).reshape(rows_per_call, num_offsets, -1)[
                        : stop - start
                    ]
                )
                if len(out) > 2:
                    count_parts.append(
                        np.asarray(out[2]).reshape(rows_per_call, -1)[: stop - start]
                    )
            else:
                vals = out
            val_parts.append(
                np.asarray(vals, dtype=np.float64).reshape(rows_per_call, num_offsets)[
                    : stop - start
                ]
            )
            if on_progress is not None:
                on_progress(stop - start)
            start = stop
    except KeyboardInterrupt:
        # Words and counts of a call are kept before its values.
        rows = sum(map(len, val_parts))
        for parts in (word_parts, count_parts):
            if parts:
                rows = min(rows, sum(map(len, parts)))
        values = _cut(val_parts, rows)
        raise Interrupted(
            (np.zeros((0, num_offsets)) if values is None else values,
             _cut(word_parts, rows), _cut(count_parts, rows))
        ) from None  # fmt: skip
    values = np.concatenate(val_parts)
    words_all = np.concatenate(word_parts) if word_parts else None
    counts_all = np.concatenate(count_parts) if count_parts else None
    return values, words_all, counts_all
