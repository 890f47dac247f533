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

The engine runs on whatever device JAX has. It does not enable float64 itself:
:func:`jaxcheck.check_grads` calls it inside ``jax.enable_x64(True)``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
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
    step: jax.Array,
    dyn_params: Sequence[Any],
    dyn_args: Sequence[Any],
) -> tuple[jax.Array, jax.Array]:
    """``f(x ± h e_i)`` for ``idx_block`` of shape ``(num_chunks, chunk)``."""

    def one(i: jax.Array) -> tuple[jax.Array, jax.Array]:
        xi = x_flat[i]
        plus = fn(x_flat.at[i].set(xi + step), dyn_params, dyn_args)
        minus = fn(x_flat.at[i].set(xi - step), dyn_params, dyn_args)
        return plus, minus

    return jax.lax.map(jax.vmap(one), idx_block)


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

    Examples:
      >>> fn = LeafFunction(lambda p: jnp.sum(p ** 2), jax.tree_util.tree_structure(0.0),
      ...                   1, {}, jax.tree_util.tree_structure(()), 0, {}, 0, (3,))
      >>> bytes_per_coordinate(fn, jnp.ones(3), [jnp.ones(3)], []) > 0
      True
    """
    closed = jax.make_jaxpr(fn)(x_flat, dyn_params, dyn_args)
    per_eval = _jaxpr_bytes(closed.jaxpr) + _nbytes(x_flat)
    return 2 * max(per_eval, 8)


def default_memory_budget(device: Any | None = None) -> int:
    """The default memory budget of a check, in bytes, for ``device``.

    On an accelerator: a quarter of the memory the device has free. On a CPU:
    an eighth of the machine's physical memory, at most 2 GiB.

    Examples:
      >>> default_memory_budget() > 0
      True
    """
    device = jax.devices()[0] if device is None else device
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
    # Round down to a power of two so that similar leaves share compilations.
    return 1 << (chunk.bit_length() - 1)


def central_differences(
    fn: LeafFunction,
    x_flat: jax.Array,
    indices: np.ndarray,
    step: float,
    dyn_params: Sequence[Any],
    dyn_args: Sequence[Any],
    *,
    chunk_size: int,
    on_progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``f(x + h e_i)`` and ``f(x - h e_i)`` for every flat index ``i`` in ``indices``.

    Args:
      fn: the function of the flattened leaf.
      x_flat: the leaf, flattened, in the dtype of the check (float64).
      indices: flat coordinate indices into ``x_flat``.
      step: the step ``h``.
      dyn_params: the dynamic parameter leaves (unbatched).
      dyn_args: the dynamic argument leaves (unbatched).
      chunk_size: coordinates per vmapped batch.
      on_progress: called with the number of coordinates finished by each call.

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
    chunk = max(1, min(int(chunk_size), n))
    num_chunks = -(-n // chunk)
    per_call = min(CHUNKS_PER_CALL, num_chunks)
    h = jnp.asarray(step, dtype=x_flat.dtype)
    plus_parts, minus_parts = [], []
    done = 0
    start_chunk = 0
    while start_chunk < num_chunks:
        nblk = min(per_call, num_chunks - start_chunk)
        lo = start_chunk * chunk
        hi = min(n, (start_chunk + nblk) * chunk)
        block = np.zeros(
            nblk * chunk, dtype=np.int32 if x_flat.size < 2**31 else np.int64
        )
        block[: hi - lo] = indices[lo:hi]
        block[hi - lo :] = indices[lo]  # pad with a valid index; results dropped
        fp, fm = _block_jit(
            fn, x_flat, jnp.asarray(block.reshape(nblk, chunk)), h, dyn_params, dyn_args
        )
        plus_parts.append(np.asarray(fp, dtype=np.float64).reshape(-1)[: hi - lo])
        minus_parts.append(np.asarray(fm, dtype=np.float64).reshape(-1)[: hi - lo])
        done += hi - lo
        if on_progress is not None:
            on_progress(hi - lo)
        start_chunk += nblk
    return np.concatenate(plus_parts), np.concatenate(minus_parts)
