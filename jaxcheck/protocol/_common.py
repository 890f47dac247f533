"""What the protocol's steps share: the floating leaves of the parameters, and
PRNG keys among the arguments.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from .. import tree

PyTree = Any
OnFailure = Literal["warn", "raise", "ignore"]


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def _float_positions(params: PyTree) -> tuple[list[Any], list[int], Any]:
    leaves, infos, treedef = tree.leaf_infos(params)
    pos = [i.pos for i in infos if i.checked]
    if not pos:
        raise ValueError(
            "`params` has no floating-point array leaf to optimise or check "
            f"(leaves: {[(i.path, i.dtype) for i in infos]}). Pass float arrays."
        )
    return leaves, pos, treedef


def _merge(leaves: list, pos: list[int], treedef: Any, train: Sequence) -> PyTree:
    full = list(leaves)
    for k, v in zip(pos, train, strict=True):
        full[k] = v
    return jax.tree_util.tree_unflatten(treedef, full)


def _is_key(x: Any) -> bool:
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        return False
    if jnp.issubdtype(dtype, jax.dtypes.prng_key):
        return True
    return np.dtype(dtype) == np.uint32 and np.shape(x)[-1:] == (2,)
