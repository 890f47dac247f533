"""The facts both kink interpreters share: which values are strictly
positive, NaN guards or tracked comparisons, which equations are decision
sites, and the per-jaxpr :class:`Frame` they walk with."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from ..interpret import CALLS, CONTROL_FLOW, call_name, carries_jaxpr, is_literal
from .sites import OPAQUE, SMOOTH_CALLS, SMOOTH_CUSTOM_JVP, TRACKED, UNTRACKED

_COMPARISONS = frozenset({"gt", "ge", "lt", "le", "eq", "ne"})
_BOOL_LOGIC = frozenset({"not", "and", "or", "reduce_and", "reduce_or", "xor"})
#: Primitives whose output is strictly positive whatever the input.
_POSITIVE_SOURCES = frozenset({"exp", "exp2", "logistic"})
#: Primitives that keep strictly positive inputs strictly positive.
_POSITIVE_KEEPERS = frozenset(
    {
        "add",
        "mul",
        "div",
        "reduce_sum",
        "reduce_max",
        "reduce_min",
        "broadcast_in_dim",
        "reshape",
        "transpose",
        "squeeze",
        "expand_dims",
        "slice",
        "dynamic_slice",
        "gather",
        "concatenate",
        "sqrt",
        "rsqrt",
        "copy",
        "convert_element_type",
        "reduce_precision",
        "max",
        "min",
        "cumsum",
        "integer_pow",
    }
)
_LAYERS = frozenset({"dot_general", "conv_general_dilated"})


def _is_var(a: Any) -> bool:
    return not is_literal(a)


def _aval(a: Any) -> Any:
    return a.aval


def _is_float(a: Any) -> bool:
    dtype = getattr(_aval(a), "dtype", None)
    return dtype is not None and jnp.issubdtype(dtype, jnp.floating)


def _shape(a: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in getattr(_aval(a), "shape", ()))


def _join(a: str, b: str) -> str:
    return f"{a} > {b}" if a else b


def _relevant(jaxpr: Any, out_rel: Sequence[bool]) -> set:
    """Variables whose value reaches a relevant output other than only
    through ``stop_gradient``."""
    rel = {v for v, r in zip(jaxpr.outvars, out_rel, strict=True) if r and _is_var(v)}
    for eqn in reversed(jaxpr.eqns):
        if eqn.primitive.name == "stop_gradient":
            continue
        if any(v in rel for v in eqn.outvars):
            rel.update(v for v in eqn.invars if _is_var(v))
    return rel


class _Facts:
    """Per-jaxpr facts the rules need: strictly positive values, NaN guards and
    comparisons already tracked."""

    def __init__(self) -> None:
        self.positive: set = set()
        self.guard: set = set()
        self.tracked_cmp: set = set()

    def is_positive(self, a: Any) -> bool:
        if is_literal(a):
            try:
                return bool(np.all(np.asarray(a.val) > 0))
            except Exception:  # noqa: BLE001
                return False
        return a in self.positive

    def flags(self, a: Any) -> tuple[bool, bool, bool]:
        """``(positive, guard, tracked comparison)`` of an atom."""
        if not _is_var(a):
            return (self.is_positive(a), False, False)
        return (a in self.positive, a in self.guard, a in self.tracked_cmp)

    def seed(self, atoms: Sequence[Any], flags: Sequence[tuple] | None) -> None:
        """Gives ``atoms`` (a jaxpr's invars or an equation's outvars) ``flags``."""
        if flags is None:
            return
        for a, (pos, guard, cmp) in zip(atoms, flags, strict=True):
            if not _is_var(a):
                continue
            if pos:
                self.positive.add(a)
            if guard:
                self.guard.add(a)
            if cmp:
                self.tracked_cmp.add(a)

    def update(self, eqn: Any, tracked: bool) -> None:
        name = eqn.primitive.name
        ins, outs = eqn.invars, eqn.outvars
        if name in _POSITIVE_SOURCES:
            self.positive.update(outs)
        elif name == "max" and any(self.is_positive(a) for a in ins):
            self.positive.update(outs)
        elif name in _POSITIVE_KEEPERS and ins:
            floats = [a for a in ins if _is_float(a)]
            if floats and all(self.is_positive(a) for a in floats):
                self.positive.update(outs)
        if name == "is_finite" or (
            name in ("ne", "eq") and len(ins) == 2 and ins[0] is ins[1]
        ):
            self.guard.update(outs)
        elif (
            name in _BOOL_LOGIC
            and any(_is_var(a) for a in ins)
            and all(not _is_var(a) or a in self.guard for a in ins)
        ):
            # A constant operand (``isfinite(x) & True``) keeps a guard a guard.
            self.guard.update(outs)
        if tracked and name in _COMPARISONS:
            self.tracked_cmp.update(outs)


def _site_kind(eqn: Any, din: Sequence[bool], facts: _Facts) -> bool:
    """Whether ``eqn`` (with inputs depending per ``din``) is a tracked site."""
    name = eqn.primitive.name
    ins = eqn.invars
    if not any(din) or name not in TRACKED:
        return False
    if name in ("max", "min", "rem"):
        return _is_float(ins[0])
    if name in ("abs", "sign"):
        return _is_float(ins[0]) and not facts.is_positive(ins[0])
    if name == "clamp":
        return _is_float(ins[1]) and din[1]
    if name in _COMPARISONS:
        if len(ins) == 2 and ins[0] is ins[1]:
            return False  # x != x: a NaN guard
        return any(_is_float(a) for a in ins)
    if name == "select_n":
        pred = ins[0]
        return (
            din[0]
            and _is_var(pred)
            and pred not in facts.guard
            and pred not in facts.tracked_cmp
        )
    if name in ("floor", "ceil", "round"):
        return _is_float(ins[0])
    if name == "convert_element_type":
        out = eqn.outvars[0].aval.dtype
        return _is_float(ins[0]) and not jnp.issubdtype(out, jnp.inexact)
    if name in ("cond", "while"):
        return False  # handled structurally
    if name == "sort":
        keys = ins[: eqn.params.get("num_keys", 1)]
        return any(_is_float(a) for a in keys)
    return _is_float(ins[0])


def _untracked_kind(eqn: Any) -> bool:
    name = eqn.primitive.name
    if name == "bitcast_convert_type":
        return _is_float(eqn.invars[0])
    return name in UNTRACKED


def _is_opaque(eqn: Any) -> bool:
    name = eqn.primitive.name
    if name in OPAQUE:
        return True
    if name in CALLS or name in SMOOTH_CALLS or name in CONTROL_FLOW:
        return False
    return carries_jaxpr(eqn)


def _enters(eqn: Any) -> bool:
    """Whether a kink interpreter walks into this call-like equation: all but
    the ``custom_jvp`` functions of :data:`SMOOTH_CUSTOM_JVP`."""
    return not (
        CALLS[eqn.primitive.name].custom == "jvp"
        and call_name(eqn) in SMOOTH_CUSTOM_JVP
    )


class Frame:
    """What a kink interpreter knows while it walks one jaxpr: the relevant
    variables, the facts, where it is (the named function around, the loop or
    branch, the source line of the call), and, once walked, the facts about
    the outputs (passed on to the equation that called the jaxpr)."""

    __slots__ = (
        "rel", "facts", "ctx", "within", "loc", "where", "tracked", "out_flags",
    )  # fmt: skip

    def __init__(
        self,
        jaxpr: Any,
        out_rel: Sequence[bool],
        ctx: str,
        within: str,
        loc: str,
        in_flags: Sequence[tuple] | None,
    ) -> None:
        self.rel = _relevant(jaxpr, out_rel)
        self.facts = _Facts()
        self.facts.seed(jaxpr.invars, in_flags)
        self.ctx, self.within, self.loc = ctx, within, loc
        # The equation being interpreted: its source line (``loc`` when
        # unknown) and whether it is a tracked site.
        self.where = loc
        self.tracked = False
        self.out_flags: list[tuple] = []

    def live(self, eqn: Any, depends: bool) -> bool:
        """Whether ``eqn`` matters: its inputs depend on the parameters
        (``depends``) and an output is relevant."""
        return depends and any(v in self.rel for v in eqn.outvars)

    def enter(self, eqn: Any, inner: Any) -> Frame:
        """The frame of the jaxpr ``inner`` that the call ``eqn`` enters: its
        relevant outputs, name and location, and the facts about its inputs."""
        return Frame(
            inner, [v in self.rel for v in eqn.outvars], call_name(eqn) or self.ctx,
            self.within, self.where, [self.facts.flags(a) for a in eqn.invars],
        )  # fmt: skip

    def finish(self, jaxpr: Any) -> None:
        self.out_flags = [self.facts.flags(v) for v in jaxpr.outvars]
