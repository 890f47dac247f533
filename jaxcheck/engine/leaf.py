"""``f`` as a function of one leaf, and the per-leaf batched evaluations built
on it (used by :mod:`jaxcheck.derivatives` and :mod:`jaxcheck.propagate`).

For one leaf ``x`` (flattened) of the parameters, and a set of coordinate
indices, :func:`central_differences` evaluates ``f(x + h e_i)`` and
``f(x - h e_i)`` for all of them, and :func:`evaluate` ``f(x + d_k e_i)`` for
any offsets: one perturbed coordinate per batch element (:func:`jax.vmap`),
chunks run one after another inside one compiled call (:func:`jax.lax.map`).
:func:`jaxcheck.check_grads` itself runs one program per check
(:mod:`jaxcheck.engine.program`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .cluster import Interrupted, _cut, _place, _split_over_processes
from .memory import CHUNKS_PER_CALL

PyTree = Any


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


def _one_call(fn, evaluator, x_flat, indices, deltas, dyn, per_call, chunk, int_dtype):
    """One compiled call of :func:`evaluate`: the rows padded to ``per_call``
    chunks of ``chunk`` rows (the padding repeats the first row). Returns the
    rows' values and, for a tracker, their words and changed-decision counts
    (else None)."""
    rows, num_offsets = len(indices), deltas.shape[1]
    rows_per_call = per_call * chunk
    idx = np.full(rows_per_call, indices[0], dtype=int_dtype)
    idx[:rows] = indices
    dlt = np.zeros((rows_per_call, num_offsets))
    dlt[:rows] = deltas
    idx_arr, dlt_arr = _place(
        jnp.asarray(idx.reshape(per_call, chunk)),
        jnp.asarray(dlt.reshape(per_call, chunk, num_offsets), dtype=x_flat.dtype),
    )
    call_args = (x_flat, idx_arr, dlt_arr, *dyn)
    out = (
        _eval_block_jit(fn, *call_args) if evaluator is None else evaluator(*call_args)
    )
    words = counts = None
    if isinstance(out, tuple):
        out, words, *rest = out
        words = np.asarray(words).reshape(rows_per_call, num_offsets, -1)[:rows]
        if rest:
            counts = np.asarray(rest[0]).reshape(rows_per_call, -1)[:rows]
    vals = np.asarray(out, dtype=np.float64).reshape(rows_per_call, num_offsets)[:rows]
    return vals, words, counts


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
            vals, words, counts = _one_call(
                fn, evaluator, x_flat, indices[start:stop], deltas[start:stop],
                (dyn_params, dyn_args), per_call, chunk, int_dtype,
            )  # fmt: skip
            val_parts.append(vals)
            if words is not None:
                word_parts.append(words)
            if counts is not None:
                count_parts.append(counts)
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
