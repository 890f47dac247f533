"""Few datapoints: cut the batch arguments of a check to ``k`` examples."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._common import _is_key


@dataclasses.dataclass(frozen=True)
class DatapointsCut:
    """How :func:`take_datapoints` cut the batch arguments.

    Attributes:
      k: examples kept.
      axis: the batch axis.
      batch_size: examples in the batch before the cut.
      indices: the examples kept (positions along ``axis``).
      cut: the arguments that were cut, e.g. ``("args[0]", "args[1]['y']")``.
    """

    k: int
    axis: int
    batch_size: int
    indices: tuple[int, ...]
    cut: tuple[str, ...]

    def describe(self) -> str:
        """One sentence for a report's notes."""
        if self.k >= self.batch_size:
            return (
                f"few datapoints: the batch already has {self.batch_size} example(s) "
                f"<= k={self.k}; nothing was cut"
            )
        shown = list(self.indices[:8]) + (["..."] if len(self.indices) > 8 else [])
        return (
            f"few datapoints: checked on {self.k} of {self.batch_size} examples "
            f"(indices {shown} along axis {self.axis} of {', '.join(self.cut)})"
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {
            "indices": list(self.indices),
            "cut": list(self.cut),
        }


def _argnums(argnums: Sequence[int] | int | None, n: int) -> tuple[int, ...] | None:
    """``argnums`` as non-negative positions, validated."""
    if argnums is None:
        return None
    if isinstance(argnums, int):
        argnums = (argnums,)
    for i in argnums:
        if not isinstance(i, int) or not -n <= i < n:
            raise ValueError(
                f"`argnums` entry {i!r} is not the position of an argument "
                f"(there are {n} args after params)."
            )
    return tuple(i % n for i in argnums)


def _batch_arrays(
    args: tuple, axis: int, argnums: tuple[int, ...] | None
) -> tuple[list[tuple[int, str, str]], int]:
    """The batch arrays ``(arg, keystr path, name)`` to cut, and the batch size:
    the most common size along ``axis`` (the only one allowed with ``argnums``)."""
    found: list[tuple[int, str, str, int]] = []
    for i, arg in enumerate(args):
        if argnums is not None and i not in argnums:
            continue
        for path, leaf in jax.tree_util.tree_flatten_with_path(arg)[0]:
            name = f"args[{i}]{jax.tree_util.keystr(path)}"
            if not _is_array_like(leaf) or _is_key(leaf):
                continue
            shape = np.shape(leaf)
            if len(shape) <= axis:
                if argnums is not None:
                    raise ValueError(
                        f"{name} has shape {shape}, which has no axis {axis}; every "
                        "array in the `argnums` arguments must be a batch."
                    )
                continue
            found.append((i, jax.tree_util.keystr(path), name, int(shape[axis])))
    if not found:
        raise ValueError(
            f"No batch array with an axis {axis} among the arguments "
            f"({len(args)} args). Pass the batch as an argument of f, or choose "
            "`axis=` / `argnums=`."
        )
    sizes = [c[3] for c in found]
    if argnums is not None and len(set(sizes)) > 1:
        raise ValueError(
            f"The arrays of `argnums` have different sizes along axis {axis}: "
            f"{sorted({(c[2], c[3]) for c in found})}. They must share the "
            "batch size."
        )
    batch = max(sizes, key=lambda s: (sizes.count(s), -sizes.index(s)))
    return [c[:3] for c in found if c[3] == batch], batch


def take_datapoints(
    args: Sequence[Any],
    k: int = 3,
    *,
    axis: int = 0,
    argnums: Sequence[int] | int | None = None,
    seed: int | None = None,
) -> tuple[tuple[Any, ...], DatapointsCut]:
    """Cuts the batch arguments of a check to ``k`` examples.

    The notes: fewer datapoints mean fewer kinks to cross and a faster check,
    and a gradient that checks on 2-3 datapoints almost certainly checks on the
    whole batch. Check on them with ``check_grads(f, params, *new_args)``;
    ``cut.describe()`` says what was kept.

    Args:
      args: the arguments ``f(params, *args)`` takes after ``params`` (pytrees).
      k: examples to keep (>= 1).
      axis: the batch axis of every batch array.
      argnums: which arguments are batches (all their array leaves are cut).
        Default: every array leaf whose size along ``axis`` equals the batch
        size (the most common size along ``axis``); PRNG keys (typed, or raw
        ``uint32[..., 2]``) are never cut.
      seed: ``None`` keeps the first ``k`` examples; a seed keeps ``k`` random
        ones (sorted).

    Returns:
      ``(new_args, cut)``: the arguments with the batches cut, and a
      :class:`DatapointsCut` describing the cut.

    Raises:
      ValueError: if ``k < 1``, no batch array is found, or the arrays of
        ``argnums`` disagree on the batch size.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxcheck.protocol import take_datapoints
      >>> x, y = jnp.ones((128, 5)), jnp.zeros(128, jnp.int32)
      >>> (x2, y2), cut = take_datapoints((x, y), k=2)
      >>> x2.shape, y2.shape, cut.batch_size
      ((2, 5), (2,), 128)
      >>> import jaxcheck
      >>> loss = lambda w, x, y: jnp.mean(jnp.tanh(x @ w) ** 2)
      >>> jaxcheck.check_grads(loss, jnp.full(5, 0.1), x2, y2).num_checked
      5
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"`k` must be an int >= 1 examples, got {k!r}.")
    args = tuple(args)
    chosen, batch = _batch_arrays(args, axis, _argnums(argnums, len(args)))
    if k >= batch:
        indices = np.arange(batch)
    elif seed is None:
        indices = np.arange(k)
    else:
        indices = np.sort(np.random.default_rng(seed).choice(batch, k, replace=False))
    names = {(i, path) for i, path, _ in chosen}
    idx = jnp.asarray(indices)

    def cut_arg(i: int, arg: Any) -> Any:
        def one(path: Any, leaf: Any) -> Any:
            if (i, jax.tree_util.keystr(path)) in names and k < batch:
                return jnp.take(jnp.asarray(leaf), idx, axis=axis)
            return leaf

        return jax.tree_util.tree_map_with_path(one, arg)

    new_args = tuple(cut_arg(i, a) for i, a in enumerate(args))
    info = DatapointsCut(
        k=min(k, batch),
        axis=axis,
        batch_size=batch,
        indices=tuple(int(j) for j in indices),
        cut=tuple(name for _, _, name in chosen),
    )
    return new_args, info


def _is_array_like(x: Any) -> bool:
    return isinstance(x, jax.Array | np.ndarray)
