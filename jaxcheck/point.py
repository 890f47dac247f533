"""The point of a check: ``f``, its parameters and arguments, traced once.

:func:`prepare` flattens ``params`` and ``args`` (``None`` counts as a leaf),
says which leaves are checked (floating-point arrays) and why the others are
not, casts floating-point arrays to the dtype of the check on the host (no
compilation), and traces ``f`` once to a jaxpr over the *dynamic* inputs (the
array leaves of ``params`` and ``args``; everything else is closed over). With
``jax.grad`` as the analytic gradient it also traces ``value_and_grad`` of
``f`` over the checked leaves, which inlines every ``custom_vjp`` /
``custom_jvp`` rule.

The two jaxprs, with their literals, and the shapes and dtypes of the inputs
make up :attr:`Point.key`: two functions that compute the same thing (a fresh
closure, a re-run notebook cell) have the same key and share compiled
programs, and a function whose closed-over value changed gets another key or,
for an array constant, the same program with the new value passed at run time
(constants are runtime arguments of the programs, never baked in).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

from . import tree
from .report import SkippedLeaf

PyTree = Any


@dataclasses.dataclass(frozen=True)
class CheckedLeaf:
    """A checked leaf: where it is among the dynamic inputs and in ``theta``.

    Attributes:
      info: the leaf's path, shape and dtype (:class:`jaxcheck.tree.LeafInfo`).
      input_pos: its position among the dynamic inputs of the jaxpr.
      offset: where its entries start in the flat vector ``theta`` of all
        checked leaves.
    """

    info: tree.LeafInfo
    input_pos: int
    offset: int

    @property
    def size(self) -> int:
        return self.info.size

    @property
    def path(self) -> str:
        return self.info.path


@dataclasses.dataclass
class Point:
    """``f`` at one point, traced once (see the module docstring).

    Attributes:
      f: the user's function.
      infos: every leaf of ``params``.
      leaves: the checked leaves, in tree order.
      skipped: the leaves that are not checked, with reasons.
      dyn: the dynamic inputs (array leaves of ``params``, then of ``args``),
        floating-point ones cast to ``dtype``.
      num_dyn_params: how many of ``dyn`` come from ``params``.
      dtype: the dtype of the check (float64 unless ``dtype="float32"``).
      primal: the closed jaxpr of ``f`` over ``dyn``.
      grad: the closed jaxpr of ``value_and_grad(f)`` over the checked leaves
        (``None`` with a user's gradient function).
      out_dtype: the dtype ``f`` returns.
      key: the structural key (a hex digest) of the jaxprs and input shapes.
      rebuild: ``dyn -> (params, args)``, the user's trees.
      host_callbacks: whether ``f`` calls back into Python (its programs are
        then never kept on disk).
    """

    f: Callable[..., Any]
    infos: list[tree.LeafInfo]
    leaves: list[CheckedLeaf]
    skipped: tuple[SkippedLeaf, ...]
    dyn: list[Any]
    num_dyn_params: int
    dtype: Any
    primal: Any
    grad: Any
    out_dtype: Any
    key: str
    rebuild: Callable[[Sequence[Any]], tuple[PyTree, tuple]]
    host_callbacks: bool = False

    @property
    def size(self) -> int:
        """How many entries the checked leaves have in all."""
        return sum(leaf.size for leaf in self.leaves)

    def theta(self) -> np.ndarray:
        """The checked leaves, flattened and concatenated (host, ``dtype``)."""
        return np.concatenate(
            [np.asarray(self.dyn[leaf.input_pos]).reshape(-1) for leaf in self.leaves]
        )


def _is_array(x: Any) -> bool:
    return isinstance(x, jax.Array | np.ndarray | np.generic)


def _is_tracer(x: Any) -> bool:
    return isinstance(x, jax.core.Tracer)


def _cast(x: Any, dtype: Any) -> Any:
    """A floating array as a host array of ``dtype`` (no compilation); other
    arrays as they are."""
    if not _is_array(x):
        return x
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        return x
    if jnp.issubdtype(x.dtype, jnp.floating):
        return np.asarray(x).astype(dtype)
    return np.asarray(x)


def _refuse_tracers(params: PyTree, args: tuple) -> None:
    for name, t in (("params", params), ("args", args)):
        for path, leaf in jax.tree_util.tree_flatten_with_path(t)[0]:
            if _is_tracer(leaf):
                raise TypeError(
                    f"`{name}` leaf {jax.tree_util.keystr(path)} is a JAX tracer: "
                    "check_grads was called inside a JAX transformation (jax.jit, "
                    "jax.vmap, jax.grad, a scan body...). A gradient check runs "
                    "outside transformations, on concrete arrays: call it at the "
                    "top level of your test or script."
                )


def _refuse_non_finite(infos: list[tree.LeafInfo], leaves: list[Any]) -> None:
    for info, value in zip(infos, leaves, strict=True):
        if not info.checked:
            continue
        host = np.asarray(value, dtype=np.float64)
        bad = ~np.isfinite(host)
        if bad.any():
            where = [list(tree.unravel(i, info.shape)) for i in np.flatnonzero(bad)]
            shown = ", ".join(f"{info.path}{w}" for w in where[:5])
            name = f"leaf {info.path}" if info.path else "(a single array)"
            raise ValueError(
                f"`params` {name} has {int(bad.sum())} non-finite "
                f"entr{'y' if bad.sum() == 1 else 'ies'} ({shown}; value "
                f"{host.reshape(-1)[np.flatnonzero(bad)[0]]}): finite differences "
                "need a finite point. Replace them with finite values, or move the "
                "leaf to `args` if it should not be checked."
            )


def validate_output(out: Any) -> None:
    """Raises unless ``out`` (an array or abstract value) is a real float scalar.

    Examples:
      >>> validate_output(jax.ShapeDtypeStruct((), jnp.float32))
      >>> validate_output(jax.ShapeDtypeStruct((3,), jnp.float32))
      Traceback (most recent call last):
      ValueError: `f(params, *args)` must return a scalar, got shape (3,) ...
    """
    shape = getattr(out, "shape", None)
    dtype = getattr(out, "dtype", None)
    if shape is None or dtype is None:
        raise TypeError(
            f"`f(params, *args)` must return a scalar array, got a "
            f"{type(out).__name__}. Return a jnp scalar, e.g. `jnp.mean(losses)`."
        )
    if tuple(shape) != ():
        raise ValueError(
            f"`f(params, *args)` must return a scalar, got shape {tuple(shape)} "
            f"({dtype}). Reduce it to a scalar (e.g. `jnp.sum(out)` or "
            "`jnp.mean(out)`), or check a vector-valued function one output at a "
            "time."
        )
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"`f(params, *args)` must return a real floating-point scalar, got "
            f"dtype {dtype}. An integer or boolean output has no gradient; a complex "
            "one needs its real part taken (e.g. `jnp.real(out)`)."
        )


def _literals(jaxpr: Any, out: list) -> None:
    """Appends the bytes of every literal of ``jaxpr`` (and of the jaxprs in
    its equations' parameters) to ``out``."""
    for eqn in jaxpr.eqns:
        for a in eqn.invars:
            if isinstance(a, jcore.Literal):
                v = np.asarray(a.val)
                out.append(f"{v.dtype}:{v.tobytes().hex()}")
        for sub in jcore.jaxprs_in_params(eqn.params):
            _literals(sub, out)


def any_equation(jaxpr: Any, test: Callable[[Any], bool]) -> bool:
    """Whether an equation of ``jaxpr``, or of a jaxpr inside it (a loop's or a
    branch's body, a call), passes ``test``.

    Examples:
      >>> jaxpr = jax.make_jaxpr(lambda x: jax.lax.cond(x > 0, jnp.sin, jnp.cos, x))
      >>> any_equation(jaxpr(1.0).jaxpr, lambda e: e.primitive.name == "sin")
      True
    """
    return any(
        test(eqn)
        or any(any_equation(sub, test) for sub in jcore.jaxprs_in_params(eqn.params))
        for eqn in jaxpr.eqns
    )


def has_host_callbacks(jaxpr: Any) -> bool:
    """Whether ``jaxpr`` (or a jaxpr inside it) calls back into Python
    (``jax.pure_callback``, ``io_callback``, ``jax.debug.print``...): a compiled
    program that does refers to this process's callbacks, so it is never kept
    on disk.

    Examples:
      >>> has_host_callbacks(jax.make_jaxpr(jnp.sin)(1.0).jaxpr)
      False
    """
    return any_equation(jaxpr, lambda eqn: any("callback" in k for k in eqn.params))


def _avals(xs: Sequence[Any]) -> str:
    return ";".join(
        f"{tuple(np.shape(x))}:{jnp.result_type(x)}"
        if _is_array(x) or isinstance(x, jax.ShapeDtypeStruct)
        else type(x).__name__
        for x in xs
    )


def structural_key(*closed_jaxprs: Any, extra: str = "") -> str:
    """A digest of jaxprs' text, their literals (bit for bit), and the shapes and
    dtypes of their constants: equal for functions that compute the same thing.

    Examples:
      >>> k1 = structural_key(jax.make_jaxpr(lambda x: 3.0 * x)(1.0))
      >>> k2 = structural_key(jax.make_jaxpr(lambda y: 3.0 * y)(2.0))
      >>> k3 = structural_key(jax.make_jaxpr(lambda x: 1.0 * x)(1.0))
      >>> k1 == k2, k1 == k3
      (True, False)
    """
    digest = hashlib.sha256(extra.encode())
    for closed in closed_jaxprs:
        if closed is None:
            digest.update(b"<none>")
            continue
        digest.update(str(closed.jaxpr).encode())
        lits: list[str] = []
        _literals(closed.jaxpr, lits)
        digest.update("|".join(lits).encode())
        digest.update(_avals(closed.consts).encode())
    return digest.hexdigest()


def prepare(
    f: Callable[..., Any],
    params: PyTree,
    args: tuple,
    dtype: Any,
    *,
    with_grad: bool = True,
) -> Point:
    """Flattens, casts and traces ``f(params, *args)`` (see the module docstring).

    Args:
      f: the scalar function.
      params: the parameters.
      args: the fixed arguments.
      dtype: the dtype of the check (``jnp.float64`` or ``jnp.float32``).
      with_grad: also trace ``value_and_grad(f)`` over the checked leaves.

    Returns:
      a :class:`Point`.

    Raises:
      TypeError: if a leaf is a JAX tracer (a check inside a transformation), or
        ``f`` does not return a real floating-point scalar.
      ValueError: if no leaf can be checked, or a checked leaf has non-finite
        entries.

    Examples:
      >>> p = prepare(lambda p, x: jnp.sum(p["w"] * x), {"w": jnp.ones(3)}, (2.0,),
      ...             jnp.float32)
      >>> [leaf.path for leaf in p.leaves], len(p.dyn), p.size
      (["['w']"], 1, 3)
    """
    _refuse_tracers(params, args)
    p_leaves, infos, p_treedef = tree.leaf_infos(params)
    checked_infos = [info for info in infos if info.checked]
    skipped = tuple(
        SkippedLeaf(i.path, i.reason, i.dtype, i.shape) for i in infos if not i.checked
    )
    if not checked_infos:
        listing = "; ".join(f"{s.path}: {s.reason}" for s in skipped) or "none"
        raise ValueError(
            "`params` has no floating-point array leaf to check (leaves: "
            f"{listing}). Pass the parameters as float arrays, e.g. "
            "`jnp.asarray(w, jnp.float32)`."
        )
    _refuse_non_finite(infos, p_leaves)
    np_dtype = np.dtype(dtype)
    p_leaves = [
        _cast(v, np_dtype) if info.checked else v
        for v, info in zip(p_leaves, infos, strict=True)
    ]
    a_leaves, a_treedef = jax.tree_util.tree_flatten(args, is_leaf=lambda x: x is None)
    a_leaves = [_cast(v, np_dtype) for v in a_leaves]
    p_dyn = [i for i, v in enumerate(p_leaves) if _is_array(v)]
    a_dyn = [i for i, v in enumerate(a_leaves) if _is_array(v)]
    dyn = [p_leaves[i] for i in p_dyn] + [a_leaves[i] for i in a_dyn]
    num_dyn_params = len(p_dyn)

    def rebuild(values: Sequence[Any]) -> tuple[PyTree, tuple]:
        p_all, a_all = list(p_leaves), list(a_leaves)
        for k, i in enumerate(p_dyn):
            p_all[i] = values[k]
        for k, i in enumerate(a_dyn):
            a_all[i] = values[num_dyn_params + k]
        params_ = jax.tree_util.tree_unflatten(p_treedef, p_all)
        args_ = jax.tree_util.tree_unflatten(a_treedef, a_all)
        return params_, args_

    def g(values: list) -> Any:
        params_, args_ = rebuild(values)
        return f(params_, *args_)

    leaves, offset = [], 0
    for info in checked_infos:
        leaves.append(CheckedLeaf(info, p_dyn.index(info.pos), offset))
        offset += info.size
    with jax.enable_x64(np_dtype == np.float64):
        primal = jax.make_jaxpr(g)(dyn)
        if len(primal.out_avals) != 1:
            validate_output(jax.eval_shape(g, dyn))
        validate_output(primal.out_avals[0])
        grad = None
        if with_grad:
            pos = [leaf.input_pos for leaf in leaves]
            # Differentiate the primal jaxpr, not `f` again: its custom rules
            # are in it (as under `jax.jit`), and `f`'s Python runs once.
            primal_fun = jcore.jaxpr_as_fun(primal)

            def value_and_grad(values: list) -> Any:
                def of_checked(checked: list) -> Any:
                    full = list(values)
                    for k, v in zip(pos, checked, strict=True):
                        full[k] = v
                    return primal_fun(*full)[0]

                return jax.value_and_grad(of_checked)([values[k] for k in pos])

            grad = jax.make_jaxpr(value_and_grad)(dyn)
    key = structural_key(primal, grad, extra=f"{_avals(dyn)}|{np_dtype}")
    return Point(
        f=f, infos=infos, leaves=leaves, skipped=skipped, dyn=dyn,
        num_dyn_params=num_dyn_params, dtype=np_dtype, primal=primal, grad=grad,
        out_dtype=primal.out_avals[0].dtype, key=key, rebuild=rebuild,
        host_callbacks=has_host_callbacks(primal.jaxpr),
    )  # fmt: skip


def finite_or_raise(value: float) -> float:
    """``value`` if finite, else the error of a non-finite ``f`` at the point.

    Examples:
      >>> finite_or_raise(1.5)
      1.5
    """
    if not math.isfinite(value):
        raise ValueError(
            f"`f(params, *args)` is {value} at the given point, so nothing can be "
            "checked. Check the inputs (a log of 0, a division by 0, an overflow) "
            "or move to a point where f is finite."
        )
    return value
