"""The program that perturbation propagation interprets: ``f``'s jaxpr with
its calls inlined, as a flat list of equations over integer ids, and its
unperturbed values, computed on demand.

The flattening is a :class:`~jaxcheck.interpret.Walker` whose values are
the ids (or :class:`_Lit` constants): it enters the call-like primitives of
:data:`~jaxcheck.interpret.CALLS` (their primal computation is what ``f``
evaluates) and records every other equation.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from .. import engine
from ..interpret import Walker, bind, call_jaxpr


@dataclasses.dataclass(frozen=True)
class _Lit:
    """A constant input of an equation (a literal or a closed-over array)."""

    value: Any


@dataclasses.dataclass(frozen=True)
class _Eqn:
    prim: Any
    params: dict
    ins: tuple  # int ids or _Lit
    outs: tuple[int, ...]
    out_avals: tuple
    where: str  # names of the calls it was inlined from, e.g. "log_softmax/"

    @property
    def name(self) -> str:
        return self.prim.name


@dataclasses.dataclass(frozen=True)
class _Program:
    eqns: tuple[_Eqn, ...]
    num_ids: int
    in_ids: tuple[int, ...]
    outs: tuple  # int ids or _Lit
    avals: dict  # id -> aval
    producer: dict  # id -> index of the equation computing it
    out_tree: Any = None  # the pytree structure of f's output

    def dependent(self, *roots: int) -> frozenset[int]:
        dep = set(roots)
        for eqn in self.eqns:
            if any(isinstance(a, int) and a in dep for a in eqn.ins):
                dep.update(eqn.outs)
        return frozenset(dep)


class _Flattener(Walker):
    """Inlines the calls of a jaxpr into :attr:`eqns`; values are ids or
    :class:`_Lit`, the frame is the ``where`` prefix (``"log_softmax/"``)."""

    def __init__(self) -> None:
        self.eqns: list[_Eqn] = []
        self.avals: dict[int, Any] = {}
        self.count = 0

    def new_id(self, aval: Any) -> int:
        self.count += 1
        self.avals[self.count] = aval
        return self.count

    def literal(self, value: Any) -> _Lit:
        return _Lit(value)

    def constant(self, value: Any) -> _Lit:
        return _Lit(value)

    def enters(self, eqn: Any, ins: list, where: str) -> bool:
        inner, _ = call_jaxpr(eqn)
        return len(inner.invars) == len(ins)

    def call(self, eqn: Any, ins: list, where: str) -> list:
        inner, consts = call_jaxpr(eqn)
        label = eqn.params.get("name", eqn.primitive.name)
        return self.run(inner, consts, ins, f"{where}{label}/")

    def default(self, eqn: Any, ins: list, where: str) -> list:
        out_ids = tuple(self.new_id(v.aval) for v in eqn.outvars)
        self.eqns.append(
            _Eqn(
                eqn.primitive,
                dict(eqn.params),
                tuple(ins),
                out_ids,
                tuple(v.aval for v in eqn.outvars),
                where,
            )
        )
        return list(out_ids)


def _flatten(closed: Any) -> _Program:
    flat = _Flattener()
    in_ids = tuple(flat.new_id(v.aval) for v in closed.jaxpr.invars)
    outs = flat.run(closed.jaxpr, closed.consts, in_ids, "")
    producer = {o: k for k, eqn in enumerate(flat.eqns) for o in eqn.outs}
    return _Program(
        tuple(flat.eqns), flat.count, in_ids, tuple(outs), flat.avals, producer
    )


def _bind(eqn: _Eqn, args: Sequence[Any], params: dict | None = None) -> Any:
    return bind(eqn.prim, eqn.params if params is None else params, args)


class _Base:
    """The values of the program at the unperturbed point, computed on demand
    (and only those asked for); records which were asked for."""

    def __init__(self, prog: _Program, inputs: Sequence[Any]):
        self.prog = prog
        self.env: dict[int, Any] = dict(zip(prog.in_ids, inputs, strict=True))
        self.accessed: set[int] = set()

    def __getitem__(self, a: int) -> Any:
        self.accessed.add(a)
        if a not in self.env:
            self.compute([a])
        return self.env[a]

    def compute(self, ids: Sequence[int]) -> None:
        producer = self.prog.producer
        need: set[int] = set()
        stack = [a for a in ids if a not in self.env]
        while stack:
            k = producer[stack.pop()]
            if k in need:
                continue
            need.add(k)
            for a in self.prog.eqns[k].ins:
                if isinstance(a, int) and a not in self.env:
                    stack.append(a)
        for k in sorted(need):
            eqn = self.prog.eqns[k]
            args = [a.value if isinstance(a, _Lit) else self.env[a] for a in eqn.ins]
            out = _bind(eqn, args)
            if eqn.prim.multiple_results:
                self.env.update(zip(eqn.outs, out, strict=True))
            else:
                self.env[eqn.outs[0]] = out


def _weak(x: Any) -> bool:
    try:
        return bool(jax.typeof(x).weak_type)
    except Exception:  # noqa: BLE001 - not a JAX value
        return False


def _dtype(x: Any) -> Any:
    try:
        return jax.typeof(x).dtype
    except Exception:  # noqa: BLE001 - not a JAX value
        return np.result_type(x)


def _sds(x: Any) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(np.shape(x), _dtype(x), weak_type=_weak(x))


@functools.lru_cache(maxsize=64)
def _program_cached(
    fn: engine.LeafFunction, sig: tuple, pair: bool = False
) -> _Program:
    x, dp, da = jax.tree_util.tree_unflatten(
        sig[0], [jax.ShapeDtypeStruct(s, d, weak_type=w) for s, d, w in sig[1]]
    )
    if pair:  # fn.pair(leaf_a, leaf_b, dp, da): two points at once
        closed, shapes = jax.make_jaxpr(fn.pair, return_shape=True)(x, x, dp, da)
    else:
        closed, shapes = jax.make_jaxpr(fn, return_shape=True)(x, dp, da)
    prog = _flatten(closed)
    return dataclasses.replace(prog, out_tree=jax.tree_util.tree_structure(shapes))


def _signature(x_flat: Any, dyn_params: Sequence[Any], dyn_args: Sequence[Any]):
    leaves, treedef = jax.tree_util.tree_flatten(
        (x_flat, list(dyn_params), list(dyn_args))
    )
    return (
        treedef,
        tuple((tuple(np.shape(v)), _dtype(v), _weak(v)) for v in leaves),
    )


def _program(fn, x_flat, dyn_params, dyn_args, pair: bool = False) -> _Program:
    sig = _signature(x_flat, dyn_params, dyn_args)
    try:
        return _program_cached(fn, sig, pair)
    except TypeError:  # an unhashable LeafFunction: no caching
        return _program_cached.__wrapped__(fn, sig, pair)
