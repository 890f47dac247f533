"""The registry of ecosystem cases: correct and planted-bug twins on real libraries.

A :class:`Case` names a scalar loss built on a real JAX library (optimistix,
lineax, diffrax, optax, flax, equinox, ``jnp.linalg``). Its ``make()`` returns
``(f_correct, f_buggy, params, args, bad_leaf_paths)``:

* ``f_correct(params, *args)``: plain autodiff through the library; its
  ``jax.grad`` is the true gradient;
* ``f_buggy(params, *args)``: the same value (the forward pass is unchanged), but
  part of it goes through a ``jax.custom_vjp`` / ``jax.custom_jvp`` rule whose
  backward carries a realistic planted bug;
* ``bad_leaf_paths``: the ``jax.tree_util.keystr`` paths of the leaves whose
  gradient the bug changes (every other leaf's gradient is unchanged), or None
  where that cannot be stated.

A new case is one :func:`register` call in one of the ``cases_*`` modules.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any
Made = tuple[Callable[..., Any], Callable[..., Any], PyTree, tuple[Any, ...], Any]


@dataclasses.dataclass(frozen=True, eq=False)
class Case:
    """One ecosystem case.

    Attributes:
      name: unique id, ``<library>-<what>``.
      make: builds ``(f_correct, f_buggy, params, args, bad_leaf_paths)``.
      coords: the ``coords=`` of every check (``"all"``, or ``k`` sampled
        coordinates per leaf for cases with a leaf above ~200 entries).
      float32_inside: the library computes part of ``f_correct`` in float32
        even from float64 inputs (nnx attention's softmax), so the registry's
        own self-check (test_twins_are_what_they_claim) uses float32-sized
        tolerances; jaxcheck's checks are unchanged.
    """

    name: str
    make: Callable[[], Made]
    coords: int | str = "all"
    float32_inside: bool = False


REGISTRY: list[Case] = []


def register(
    name: str, *, coords: int | str = "all", float32_inside: bool = False
) -> Callable:
    """Decorator: registers ``make`` as the case ``name``.

    Example::

        @register("linalg-det")
        def _det():
            ...
            return f_correct, f_buggy, params, args, ("['A']",)
    """

    def deco(make: Callable[[], Made]) -> Callable[[], Made]:
        if any(c.name == name for c in REGISTRY):
            raise ValueError(f"Case {name!r} is registered twice; rename one.")
        REGISTRY.append(Case(name, make, coords, float32_inside))
        return make

    return deco


# ---------------------------------------------------------------------------
# Small helpers shared by the case modules.


def normal(seed: int, *shape: int, scale: float = 1.0, dtype=jnp.float64) -> jax.Array:
    """Deterministic normal draws (float64 unless ``dtype`` says otherwise).

    Drawn with numpy (no XLA compilation per shape), then put on the device.
    """
    x = scale * np.random.default_rng(seed).standard_normal(shape)
    with jax.enable_x64(True):
        return jnp.asarray(x, dtype)


def randomize(tree: PyTree, seed: int, scale: float = 0.5) -> PyTree:
    """Concrete values for a model's parameters, fast.

    Every floating leaf (an array, or a ``jax.ShapeDtypeStruct`` from an
    abstract initialisation such as ``jax.eval_shape(model.init, ...)``) becomes
    normal draws of its shape and dtype (biases and scales away from their 0 / 1
    init); an abstract PRNG key becomes ``jax.random.key(seed)``, an abstract
    integer zeros. Initialising abstractly and drawing with numpy avoids one
    XLA compilation per parameter shape (seconds per model on a CPU).
    """
    leaves, treedef = jax.tree.flatten(tree)
    new = []
    for i, x in enumerate(leaves):
        if isinstance(x, jax.Array | jax.ShapeDtypeStruct):
            if jnp.issubdtype(x.dtype, jnp.floating):
                x = normal(seed + i, *x.shape, scale=scale, dtype=x.dtype)
            elif isinstance(x, jax.ShapeDtypeStruct):
                if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
                    x = jax.random.key(seed + i)
                else:
                    x = jnp.zeros(x.shape, x.dtype)
        new.append(x)
    return jax.tree.unflatten(treedef, new)


def vjp_rule(fun: Callable, bwd_fn: Callable) -> Callable:
    """``fun`` with a ``jax.custom_vjp`` whose backward is hand-written.

    ``bwd_fn(primals, out, g)`` returns one cotangent per primal argument.
    """

    @jax.custom_vjp
    def op(*xs):
        return fun(*xs)

    def fwd(*xs):
        out = fun(*xs)
        return out, (xs, out)

    def bwd(res, g):
        xs, out = res
        return tuple(bwd_fn(xs, out, g))

    op.defvjp(fwd, bwd)
    return op


def unary_jvp(fun: Callable, deriv: Callable) -> Callable:
    """``fun`` with a ``jax.custom_jvp`` whose tangent is ``deriv(x, fun(x)) * t``."""

    @jax.custom_jvp
    def op(x):
        return fun(x)

    @op.defjvp
    def op_jvp(primals, tangents):
        (x,), (t,) = primals, tangents
        y = fun(x)
        return y, deriv(x, y) * t

    return op


def paths(tree: PyTree) -> list[str]:
    """The keystr paths of the array leaves of ``tree``."""
    return [
        jax.tree_util.keystr(p)
        for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
        if isinstance(x, jax.Array | np.ndarray)
    ]


def is_float_array(x: Any) -> bool:
    """A floating-point array leaf (what jaxcheck checks)."""
    return isinstance(x, jax.Array | np.ndarray) and jnp.issubdtype(
        x.dtype, jnp.floating
    )


def on_floats(
    f: Callable, params: PyTree
) -> tuple[list[str], list[jax.Array], Callable[..., jax.Array]]:
    """``f`` as a function of the floating-point leaves of ``params`` only.

    Returns ``(paths, floats, g)`` with ``g(floats, *args) == f(params, *args)``;
    the other leaves (bools, PRNG keys, integer counters inside modules) are
    held fixed, as jaxcheck does, so ``jax.jit(g)`` and ``jax.grad(g)`` work on
    any model pytree.
    """
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    leaves = [x for _, x in flat]
    idx = [i for i, x in enumerate(leaves) if is_float_array(x)]

    def g(floats, *args):
        new = list(leaves)
        for i, v in zip(idx, floats, strict=True):
            new[i] = v
        return f(jax.tree.unflatten(treedef, new), *args)

    return (
        [jax.tree_util.keystr(flat[i][0]) for i in idx],
        [leaves[i] for i in idx],
        g,
    )


def to_float64(tree: PyTree) -> PyTree:
    """Casts the floating-point array leaves of ``tree`` to float64 (inside x64)."""

    def cast(x):
        if isinstance(x, jax.Array | np.ndarray) and jnp.issubdtype(
            x.dtype, jnp.floating
        ):
            return jnp.asarray(np.asarray(x, np.float64))  # cast on the host
        return x

    return jax.tree.map(cast, tree)


def directional_fd(
    f: Callable, point: Callable[[float], Any], args: tuple, h: float = 1e-3
) -> float:
    """Richardson-extrapolated central difference of ``t -> f(point(t), *args)``
    at ``t = 0``.

    ``(4 D(h/2) - D(h)) / 3`` with ``D(h) = (f(p + h v) - f(p - h v)) / 2h`` has a
    truncation error of order ``h**4``: about 1e-12 relative for the smooth,
    O(1)-scaled losses of the registry, and round-off about ``eps |f| / h``
    (1e-13). Call it inside ``jax.enable_x64(True)`` with float64 params.
    """

    def at(t):
        return float(f(point(t), *args))

    def d(step):
        return (at(step) - at(-step)) / (2 * step)

    return (4 * d(h / 2) - d(h)) / 3


def rel(a: float, b: float) -> float:
    """``|a - b| / max(|a|, |b|)`` (0 for two zeros)."""
    den = max(abs(a), abs(b))
    return 0.0 if den == 0 else abs(a - b) / den


def leaf_rel_diff(a: jax.Array, b: jax.Array) -> float:
    """``||a - b|| / max(||a||, ||b||)`` over one leaf (0 for two zero leaves)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    den = max(np.linalg.norm(a), np.linalg.norm(b))
    return 0.0 if den == 0 else float(np.linalg.norm(a - b) / den)
