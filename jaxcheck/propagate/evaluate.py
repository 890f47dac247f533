"""The propagating interpretation of a flat program, for one coordinate
and sign: every equation that depends on the perturbed leaf goes through its
rule of :data:`~jaxcheck.propagate.rules._RULES` (a window out) or, where no
rule covers it, is evaluated on full values (dense from there). A planning
run also logs what it did (:class:`_Step`), for the work estimate and the
report.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .program import _Base, _bind, _Eqn, _Lit, _Program
from .rules import _RULES
from .windows import _Const, _Ctx, _Dense, _Loc, _Ref, _shape


@dataclasses.dataclass(frozen=True)
class _Step:
    """One log entry of an interpretation."""

    kind: str  # "propagated" | "materialized" | "dense"
    eqn: str  # where/primitive
    shape: tuple[int, ...]  # full output shape
    dtype: str
    window: tuple[int, ...]  # window sizes ("propagated"), else the shape
    work: int  # estimated multiply-adds per coordinate and sign
    nbytes: int  # bytes of the per-coordinate result


def _work(eqn: _Eqn, out_elems: int, in_shapes: Sequence[tuple]) -> int:
    if eqn.name == "dot_general":
        (lc, _), _ = eqn.params["dimension_numbers"]
        return out_elems * max(1, math.prod(in_shapes[0][a] for a in lc))
    if eqn.name == "conv_general_dilated":
        rhs_spec = eqn.params["dimension_numbers"][1]
        w = in_shapes[1]
        return out_elems * max(1, math.prod(w[a] for a in rhs_spec[1:]))
    return out_elems


def _propagated_work(eqn: _Eqn, ins: Sequence[Any], out_elems: int) -> int:
    """Like :func:`_work`, with the contraction over the window only."""
    if eqn.name == "dot_general":
        (lc, rc), _ = eqn.params["dimension_numbers"]
        k, axes = (0, lc) if isinstance(ins[0], _Loc) else (1, rc)
        return out_elems * max(1, math.prod(ins[k].sizes[a] for a in axes))
    if eqn.name == "conv_general_dilated":
        lhs_spec, rhs_spec, _ = eqn.params["dimension_numbers"]
        lhs, rhs = ins
        w = _shape(rhs)
        spatial = math.prod(w[a] for a in rhs_spec[2:])
        if isinstance(rhs, _Loc):
            return out_elems * max(1, rhs.sizes[rhs_spec[1]] * spatial)
        return out_elems * max(1, lhs.sizes[lhs_spec[1]] * spatial)
    return out_elems


def _itemsize(dtype: Any) -> int:
    try:
        return np.dtype(dtype).itemsize
    except TypeError:
        return 8


def _describe(eqn: _Eqn) -> str:
    return f"{eqn.where}{eqn.name}"


class _Log:
    """What a planning run saw: the steps of the interpretation, and the
    unperturbed values it asked for."""

    def __init__(self) -> None:
        self.steps: list[_Step] = []
        self.bases: list[_Base] = []


def _step(kind: str, where: str, shape: Sequence[int], dtype: Any,
          window: Sequence[int], work: int) -> _Step:  # fmt: skip
    n = math.prod(window)
    return _Step(
        kind, where, tuple(shape), str(dtype), tuple(window), work,
        n * _itemsize(dtype),
    )  # fmt: skip


def _log_propagated(log: _Log, eqn: _Eqn, ins: Sequence[Any], out: _Loc) -> None:
    work = _propagated_work(eqn, ins, math.prod(out.sizes))
    log.steps.append(
        _step("propagated", _describe(eqn), out.shape, out.dtype, out.sizes, work)
    )


def _log_materialized(log: _Log, where: str, x: _Loc) -> None:
    n = math.prod(x.shape)
    log.steps.append(_step("materialized", where, x.shape, x.dtype, x.shape, n))


def _log_dense(log: _Log, eqn: _Eqn, args: Sequence[Any]) -> None:
    shapes = [np.shape(v) for v in args]
    for aval in eqn.out_avals:
        work = _work(eqn, math.prod(aval.shape), shapes)
        log.steps.append(
            _step("dense", _describe(eqn), aval.shape, aval.dtype, aval.shape, work)
        )


def _interpret(
    prog: _Program,
    base: _Base,
    dep: frozenset[int],
    leaves: dict[int, _Loc],
    ctx: _Ctx,
) -> list[Any]:
    """The outputs of ``prog`` with the perturbed ``leaves`` (by input id):
    full values, materialized from windows where needed."""
    env: dict[int, Any] = dict(leaves)
    dense_cache: dict[int, Any] = {}
    log = ctx.log
    ctx.memo = {}
    if log is not None:
        log.steps.clear()

    def state(a: Any) -> Any:
        if isinstance(a, _Lit):
            return _Const(a.value)
        if a in env:
            return env[a]
        return _Const(base[a])

    def full_value(a: Any) -> Any:
        s = state(a)
        if isinstance(s, _Const | _Dense):
            return s.value
        if a not in dense_cache:
            dense_cache[a] = ctx.materialize(s)
        return dense_cache[a]

    for eqn in prog.eqns:
        if not any(isinstance(a, int) and a in dep for a in eqn.ins):
            continue
        ins = [state(a) for a in eqn.ins]
        out = None
        rule = _RULES.get(eqn.name)
        if (
            rule is not None
            and not eqn.prim.multiple_results
            and not any(isinstance(x, _Dense) for x in ins)
        ):
            o = eqn.outs[0]
            ref = _Ref(
                lambda o=o: base[o], eqn.out_avals[0].shape, eqn.out_avals[0].dtype
            )
            out = rule(ctx, eqn, ins, ref)
        if out is not None:
            env[eqn.outs[0]] = out
            if log is not None:
                _log_propagated(log, eqn, ins, out)
            continue
        if log is not None:
            for a, x in zip(eqn.ins, ins, strict=True):
                if isinstance(x, _Loc) and a not in dense_cache:
                    _log_materialized(log, _describe(eqn), x)
        args = [full_value(a) for a in eqn.ins]
        res = _bind(eqn, args)
        res = list(res) if eqn.prim.multiple_results else [res]
        for o, r in zip(eqn.outs, res, strict=True):
            env[o] = _Dense(r)
        if log is not None:
            _log_dense(log, eqn, args)
    outs = []
    for a in prog.outs:
        s = state(a)
        if isinstance(s, _Loc) and log is not None and a not in dense_cache:
            _log_materialized(log, "output", s)
        outs.append(full_value(a))
    return outs
