"""Which leaves of a parameter pytree are checked, their names, and coordinates.

Leaves are named by their path, ``jax.tree_util.keystr(path)``, as the user
wrote them: ``['layer1']['W']``, ``[0].b``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any


def _is_none(x: Any) -> bool:
    return x is None


@dataclasses.dataclass(frozen=True)
class LeafInfo:
    """One leaf of the parameter pytree.

    Attributes:
      pos: position among all leaves (``None`` counted as a leaf).
      path: ``jax.tree_util.keystr`` of the leaf's path.
      shape: the leaf's shape (``()`` for non-arrays).
      dtype: the leaf's dtype name, or its Python type name for non-arrays.
      checked: whether the leaf is checked.
      reason: why a leaf is skipped (empty for checked leaves).
    """

    pos: int
    path: str
    shape: tuple[int, ...]
    dtype: str
    checked: bool
    reason: str = ""

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


def _classify(value: Any) -> tuple[bool, str, tuple[int, ...], str]:
    """(checked, reason, shape, dtype-name) of one leaf."""
    if value is None:
        return False, "None: nothing to check", (), "None"
    if isinstance(value, jax.Array | np.ndarray | np.generic):
        shape = tuple(int(d) for d in np.shape(value))
        dtype = value.dtype
        if jnp.issubdtype(dtype, jax.dtypes.prng_key):
            return False, "PRNG key array: not differentiable", shape, str(dtype)
        name = str(np.dtype(dtype)) if not hasattr(dtype, "name") else dtype.name
        if jnp.issubdtype(dtype, jnp.complexfloating):
            return (
                False,
                "complex leaf: not supported yet (split it into real and "
                "imaginary parts to check it)",
                shape,
                name,
            )
        if jnp.issubdtype(dtype, jnp.floating):
            if 0 in shape:
                return False, "empty array: no coordinate to check", shape, name
            return True, "", shape, name
        if jnp.issubdtype(dtype, jnp.bool_):
            return False, "bool leaf: not differentiable", shape, name
        if jnp.issubdtype(dtype, jnp.integer):
            return False, "integer leaf: not differentiable", shape, name
        return False, f"dtype {name} is not a floating type", shape, name
    if isinstance(value, bool | int):
        return False, "Python scalar: not an array", (), type(value).__name__
    if isinstance(value, float):
        return (
            False,
            "Python float: not an array (wrap it in jnp.asarray to check it)",
            (),
            "float",
        )
    return False, f"non-array leaf of type {type(value).__name__}", (), "object"


def flatten(tree: PyTree) -> tuple[list[Any], list[str], Any]:
    """Leaves, their keystr paths, and the treedef, counting ``None`` as a leaf.

    Examples:
      >>> leaves, paths, _ = flatten({"W": jnp.ones(2), "n": None})
      >>> paths
      ["['W']", "['n']"]
    """
    with_path, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_none)
    paths = [jax.tree_util.keystr(p) for p, _ in with_path]
    leaves = [v for _, v in with_path]
    return leaves, paths, treedef


def leaf_infos(params: PyTree) -> tuple[list[Any], list[LeafInfo], Any]:
    """Flattens ``params`` and says which leaves are checked and why not.

    Examples:
      >>> _, infos, _ = leaf_infos({"W": jnp.ones((2, 3)), "step": jnp.int32(3)})
      >>> [(i.path, i.checked) for i in infos]
      [("['W']", True), ("['step']", False)]
    """
    leaves, paths, treedef = flatten(params)
    infos = []
    for pos, (value, path) in enumerate(zip(leaves, paths, strict=True)):
        checked, reason, shape, dtype = _classify(value)
        infos.append(LeafInfo(pos, path, shape, dtype, checked, reason))
    return leaves, infos, treedef


CoordSpec = Any  # "all" | int | Mapping[str, "all" | int | array of indices]


def select_coords(info: LeafInfo, coords: CoordSpec, seed: int) -> np.ndarray:
    """Flat indices of the coordinates of one leaf to check.

    Args:
      info: the leaf.
      coords: ``"all"``; an int ``k`` (``k`` coordinates sampled without
        replacement from every leaf; a leaf with at most ``k`` entries is checked
        whole); or a mapping from leaf path to ``"all"``, an int, or an explicit
        array of indices (flat ints or multi-index tuples). Leaves absent from the
        mapping are checked whole.
      seed: seed of the sampling; the same seed gives the same coordinates.

    Returns:
      a sorted int64 array of flat indices into the leaf.

    Raises:
      ValueError: for an int below 1, a per-leaf count larger than that leaf, or
        indices out of range.

    Examples:
      >>> info = LeafInfo(0, "['W']", (4, 5), "float32", True)
      >>> select_coords(info, 3, seed=0).shape
      (3,)
      >>> select_coords(info, {"['W']": [(0, 1), (3, 4)]}, seed=0).tolist()
      [1, 19]
    """
    size = info.size
    explicit = False
    spec = coords
    if isinstance(coords, Mapping):
        spec = coords.get(info.path, "all")
        explicit = True
    if isinstance(spec, str):
        if spec != "all":
            raise ValueError(
                f'`coords` must be "all", an int, or a mapping from leaf path to '
                f'"all"/int/indices; got the string {spec!r} for leaf {info.path}.'
            )
        return np.arange(size, dtype=np.int64)
    if isinstance(spec, bool):
        raise TypeError(f"`coords` must not be a bool, got {spec!r}.")
    if isinstance(spec, int | np.integer):
        k = int(spec)
        if k < 1:
            raise ValueError(
                f"`coords` must be >= 1 coordinates per leaf, got {k} for leaf "
                f'{info.path}. Use coords="all" to check every coordinate.'
            )
        if k > size:
            if explicit:
                raise ValueError(
                    f"`coords` asks for {k} coordinates of leaf {info.path}, which "
                    f"has only {size} (shape {info.shape}). Ask for at most {size}, "
                    'or "all".'
                )
            return np.arange(size, dtype=np.int64)
        rng = np.random.default_rng([int(seed), info.pos])
        return np.sort(rng.choice(size, size=k, replace=False)).astype(np.int64)
    # Explicit indices.
    idx = np.asarray(spec)
    if idx.dtype.kind not in "iu":
        raise TypeError(
            f"`coords` for leaf {info.path} must be integer indices, got dtype "
            f"{idx.dtype}."
        )
    if idx.ndim == 2:  # a list of multi-indices
        if idx.shape[1] != len(info.shape):
            raise ValueError(
                f"`coords` for leaf {info.path} gives {idx.shape[1]}-dimensional "
                f"indices but the leaf has shape {info.shape}."
            )
        for d, n in enumerate(info.shape):
            if np.any(idx[:, d] < 0) or np.any(idx[:, d] >= n):
                raise ValueError(
                    f"`coords` for leaf {info.path} has an index out of range in "
                    f"dimension {d} (size {n}); leaf shape is {info.shape}."
                )
        flat = np.ravel_multi_index(tuple(idx.T), info.shape)
    else:
        flat = idx.reshape(-1)
        if np.any(flat < 0) or np.any(flat >= size):
            raise ValueError(
                f"`coords` for leaf {info.path} has a flat index out of range "
                f"[0, {size}); leaf shape is {info.shape}."
            )
    return np.unique(flat.astype(np.int64))


def unravel(flat_index: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Multi-index of a flat index (``()`` for a scalar leaf).

    Examples:
      >>> unravel(7, (2, 5))
      (1, 2)
    """
    if not shape:
        return ()
    return tuple(int(i) for i in np.unravel_index(int(flat_index), shape))
