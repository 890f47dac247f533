"""Kink detection by tracking winners.

The notes: "keep track of the identities of all winners in a function of form
max(x, y) ... If the identity of at least one winner changes when evaluating
f(x+h) and then f(x-h), then a kink was crossed and the numerical gradient will
not be exact."

This module traces ``f`` to a jaxpr and evaluates it with an interpreter that
also returns every branch decision it makes, folded into one ``uint32`` word
per *decision site*:

* which operand won a ``max`` / ``min`` (ReLU, hinge, maxout; also inside a
  ``custom_jvp`` such as ``jax.nn.relu`` or a ``custom_vjp``);
* the outcome of a floating-point comparison and the case a ``select_n``
  (``jnp.where``) picks;
* the sign at ``abs`` / ``sign``, the region at ``clamp``;
* the integer part at ``floor`` / ``ceil`` / ``round`` / float-to-int casts;
* the index at ``argmax`` / ``argmin`` / ``top_k``, the winners of
  ``reduce_max`` / ``reduce_min`` / ``cummax`` / ``cummin``, of every window of
  ``reduce_window_max`` (max pooling) and the permutation of ``sort``;
* the branch of ``cond`` and the number of iterations of ``while``;

recursing into ``jit``, ``custom_jvp_call``, ``custom_vjp_call``, ``checkpoint``,
``cond``, ``scan`` and ``while`` bodies. The instrumented function is an
ordinary JAX function: it is jit- and vmap-able, so the engine evaluates it at
``x + h e_i`` and ``x - h e_i`` in the same batches as the plain one, and a
coordinate whose words differ between the two crossed a kink.

Only decisions that matter are tracked: their inputs must depend on the
perturbed parameters, and their result must reach the output other than through
``stop_gradient`` (so the max that ``jax.nn.log_softmax`` subtracts for
stability is not a kink), and guards against NaN (``x != x``, ``is_finite``)
are not decisions. Primitives the interpreter cannot see into (callbacks,
Pallas kernels, custom calls) are listed, never silently ignored.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend import core as jcore
from jax.extend import source_info_util

from .render import Doc, Rendered

PyTree = Any

#: Kink-capable primitives whose decisions are tracked, and what is tracked.
TRACKED: dict[str, str] = {
    "max": "which operand wins",
    "min": "which operand wins",
    "abs": "the sign of the operand",
    "sign": "the sign of the operand",
    "clamp": "below, inside or above the range",
    "select_n": "which case is selected",
    "gt": "the outcome of the comparison",
    "ge": "the outcome of the comparison",
    "lt": "the outcome of the comparison",
    "le": "the outcome of the comparison",
    "eq": "the outcome of the comparison",
    "ne": "the outcome of the comparison",
    "floor": "the integer part",
    "ceil": "the integer part",
    "round": "the integer part",
    "convert_element_type": "the integer after a float-to-int cast",
    "rem": "the quotient",
    "argmax": "the index of the maximum",
    "argmin": "the index of the minimum",
    "top_k": "the indices of the top k",
    "reduce_max": "which entries are the maximum",
    "reduce_min": "which entries are the minimum",
    "cummax": "which entries are running maxima",
    "cummin": "which entries are running minima",
    "reduce_window_max": "the winner of every window (max pooling)",
    "reduce_window_min": "the winner of every window (min pooling)",
    "sort": "the permutation",
    "cond": "the branch taken",
    "while": "the number of iterations",
}

#: Kink-capable primitives whose winners are not tracked (listed in reports).
UNTRACKED: frozenset[str] = frozenset(
    {
        "scatter_max",
        "scatter_min",
        "reduce",
        "reduce_window",
        "select_and_scatter_add",
        "select_and_gather_add",
        "approx_top_k",
        "pmax",
        "pmin",
        "bitcast_convert_type",
    }
)

#: Primitives the interpreter cannot see into: kinks inside them are not
#: detected (listed in reports). Any other primitive that carries a jaxpr the
#: interpreter does not know how to enter is treated the same way.
OPAQUE: frozenset[str] = frozenset(
    {
        "pure_callback",
        "io_callback",
        "callback",
        "pallas_call",
        "custom_call",
        "ffi_call",
        "shard_map",
        "xla_pmap",
        "custom_transpose_call",
        "custom_lin",
    }
)

#: Primitives that carry jaxprs but whose result is a smooth function of their
#: operands (a linear solve; its pivoting only changes round-off): they are
#: neither entered nor listed as opaque.
SMOOTH_CALLS: frozenset[str] = frozenset({"custom_linear_solve"})

#: Call-like primitives the interpreter inlines, and the parameter holding the
#: called jaxpr.
_CALLS: dict[str, str] = {
    "jit": "jaxpr",
    "pjit": "jaxpr",
    "closed_call": "call_jaxpr",
    "core_call": "call_jaxpr",
    "checkpoint": "jaxpr",
    "remat": "jaxpr",
    "remat2": "jaxpr",
    "custom_jvp_call": "call_jaxpr",
    "custom_vjp_call": "call_jaxpr",
    "custom_vjp_call_jaxpr": "fun_jaxpr",
}

#: ``custom_jvp`` functions of JAX whose value is smooth although their
#: implementation uses kink-capable primitives (``logaddexp`` is
#: ``max(a, b) + log1p(exp(-|a - b|))``): not entered.
SMOOTH_CUSTOM_JVP: frozenset[str] = frozenset({"logaddexp", "logaddexp2"})

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

_U32 = jnp.uint32
_FNV_PRIME = np.uint32(16777619)


# --------------------------------------------------------------------------- #
# Sites and the analysis report.
# --------------------------------------------------------------------------- #


@dataclasses.dataclass(frozen=True)
class Site(Rendered):
    """One primitive application in ``f`` that jaxcheck reports on.

    Attributes:
      primitive: the primitive's name, e.g. ``"max"``.
      context: the innermost named function around it (``"relu"`` for the
        ``max`` inside ``jax.nn.relu``), or ``""``.
      location: the user's source line that created it, e.g.
        ``"model.py:12 (loss)"``, or ``""`` when unknown.
      shape: the shape of the value it decides on.
      within: ``"scan"``, ``"while"`` or ``"cond branch k"`` when it sits in a
        loop or branch body (its word then folds every iteration), else ``""``.
      dtype: the dtype of its output.
    """

    primitive: str
    context: str = ""
    location: str = ""
    shape: tuple[int, ...] = ()
    within: str = ""
    dtype: str = ""

    @property
    def label(self) -> str:
        """``"max in relu at model.py:12 (loss)"``: how reports name the site."""
        text = self.primitive
        if self.context and self.context != self.primitive:
            text += f" in {self.context}"
        if self.within:
            text += f" ({self.within})"
        if self.location:
            text += f" at {self.location}"
        return text

    def _doc(self) -> Doc:
        return Doc(self.label)


@dataclasses.dataclass(frozen=True)
class KinkAnalysis(Rendered):
    """What the jaxpr of ``f`` says about kinks, precision and depth.

    Attributes:
      sites: the kink-capable primitives whose inputs depend on the checked
        parameters and whose result reaches the output (not only through
        ``stop_gradient``): their winners are tracked.
      untracked: kink-capable primitives that depend on the parameters but whose
        winners jaxcheck does not track (``scatter_max``, generic ``reduce``).
      opaque: primitives jaxcheck cannot see into (callbacks, Pallas kernels,
        custom calls) that depend on the parameters: kinks inside them are not
        detected.
      low_precision: operations on the parameters' path to the output that
        compute in a floating type narrower than the check's (``float32``
        inside a ``float64`` check).
      depth: the longest chain of matrix products / convolutions from the
        parameters to the output (errors accumulate with depth).
      leaf_sites: for each checked leaf (by position in ``params``'s leaves),
        how many tracked sites depend on it.
      leaf_blind: for each checked leaf, how many untracked or opaque sites
        depend on it (their kinks cannot be seen).
    """

    sites: tuple[Site, ...] = ()
    untracked: tuple[Site, ...] = ()
    opaque: tuple[Site, ...] = ()
    low_precision: tuple[Site, ...] = ()
    depth: int = 0
    leaf_sites: dict[int, int] = dataclasses.field(default_factory=dict)
    leaf_blind: dict[int, int] = dataclasses.field(default_factory=dict)

    @property
    def has_kinks(self) -> bool:
        """True when ``f`` has a kink-capable primitive on the parameters' path
        (tracked or not) or calls something jaxcheck cannot see into."""
        return bool(self.sites or self.untracked or self.opaque)

    @property
    def low_precision_dtypes(self) -> tuple[str, ...]:
        return tuple(sorted({s.dtype for s in self.low_precision}))

    @property
    def low_precision_eps(self) -> float | None:
        """Machine epsilon of the narrowest float type inside, or None."""
        eps = [float(jnp.finfo(jnp.dtype(d)).eps) for d in self.low_precision_dtypes]
        return max(eps) if eps else None

    def summary(self, limit: int = 4) -> str:
        """A short text: the kink-capable primitives, grouped and counted."""
        return _summarise(self.sites + self.untracked + self.opaque, limit)

    _dict_extra = ("has_kinks",)

    def _doc(self) -> Doc:
        lines = [
            f"  {title}: {s.label}" + (f" [{s.dtype}]" if title[0] == "l" else "")
            for title, group in (
                ("tracked", self.sites),
                ("untracked", self.untracked),
                ("opaque (not seen into)", self.opaque),
                ("lower precision", self.low_precision),
            )
            for s in group
        ]
        return Doc(
            f"kink analysis: {len(self.sites)} tracked site(s), "
            f"{len(self.untracked)} untracked, {len(self.opaque)} opaque, "
            f"depth {self.depth}",
            lines,
        )


def _summarise(sites: Sequence[Site], limit: int = 4) -> str:
    counts: dict[str, int] = {}
    for s in sites:
        key = s.primitive + (
            f" in {s.context}" if s.context and s.context != s.primitive else ""
        )
        counts[key] = counts.get(key, 0) + 1
    parts = [f"{k} x{n}" if n > 1 else k for k, n in counts.items()]
    if len(parts) > limit:
        parts = parts[:limit] + [f"{len(parts) - limit} more"]
    return ", ".join(parts)


# --------------------------------------------------------------------------- #
# Shared rules.
# --------------------------------------------------------------------------- #


def _is_var(a: Any) -> bool:
    return not isinstance(a, jcore.Literal)


def _aval(a: Any) -> Any:
    return a.aval


def _is_float(a: Any) -> bool:
    dtype = getattr(_aval(a), "dtype", None)
    return dtype is not None and jnp.issubdtype(dtype, jnp.floating)


def _location(eqn: Any, default: str) -> str:
    try:
        text = source_info_util.summarize(eqn.source_info)
    except Exception:  # noqa: BLE001 - source info is best effort
        return default
    text = text.strip()
    if not text or text.startswith("<unknown"):
        return default
    # "path/to/model.py:12:4 (loss)" -> "model.py:12 (loss)"
    head, _, tail = text.partition(" ")
    parts = head.split(":")
    if len(parts) >= 2:
        head = f"{os.path.basename(parts[0])}:{parts[1]}"
    return f"{head} {tail}".strip()


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
        if isinstance(a, jcore.Literal):
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
    if name in _CALLS or name in SMOOTH_CALLS or name in ("cond", "scan", "while"):
        return False
    return any(True for _ in jcore.jaxprs_in_params(eqn.params))


def _call_jaxpr(eqn: Any) -> tuple[Any, list]:
    """``(jaxpr, consts)`` of a call-like equation."""
    inner = eqn.params[_CALLS[eqn.primitive.name]]
    if hasattr(inner, "jaxpr"):  # ClosedJaxpr
        return inner.jaxpr, list(inner.consts)
    return inner, []


def _context_name(eqn: Any) -> str:
    """The user-facing name of a call-like equation (``"relu"``, ``"clip"``)."""
    name = eqn.params.get("name")
    if not name:
        inner = eqn.params.get(_CALLS.get(eqn.primitive.name, ""), None)
        info = getattr(getattr(inner, "jaxpr", inner), "debug_info", None)
        name = getattr(info, "func_name", None) or ""
        if not name:
            src = getattr(info, "func_src_info", None) or ""
            name = src.split(" ")[0]
    name = str(name)
    return "" if name.startswith("<") else name


# --------------------------------------------------------------------------- #
# Static analysis (no evaluation).
# --------------------------------------------------------------------------- #


class _Analysis:
    def __init__(self) -> None:
        self.sites: list[tuple[Site, int]] = []
        self.blind_masks: list[int] = []  # of untracked and opaque sites
        self.untracked: list[Site] = []
        self.opaque: list[Site] = []
        self.low_precision: list[Site] = []
        self.seen_low: set = set()
        self.max_depth = 0
        self.check_itemsize = 8

    def walk(
        self,
        jaxpr: Any,
        dep_in: Sequence[int],
        depth_in: Sequence[int],
        out_rel: Sequence[bool],
        ctx: str,
        within: str,
        loc: str,
        in_flags: Sequence[tuple] | None = None,
    ) -> tuple[list[int], list[int]]:
        rel = _relevant(jaxpr, out_rel)
        dep: dict = {}
        depth: dict = {}
        for v, d, k in zip(jaxpr.invars, dep_in, depth_in, strict=True):
            dep[v], depth[v] = d, k
        facts = _Facts()
        facts.seed(jaxpr.invars, in_flags)
        self.out_flags: list[tuple] = []
        for eqn in jaxpr.eqns:
            din = [dep.get(a, 0) if _is_var(a) else 0 for a in eqn.invars]
            kin = [depth.get(a, 0) if _is_var(a) else 0 for a in eqn.invars]
            mask = 0
            for d in din:
                mask |= d
            orel = any(v in rel for v in eqn.outvars)
            name = eqn.primitive.name
            where = _location(eqn, loc)
            live = bool(mask) and orel
            dout = [mask] * len(eqn.outvars)
            kout = [max(kin, default=0) + (name in _LAYERS)] * len(eqn.outvars)
            tracked = False
            call_flags = None
            if live and name in _CALLS:
                if (
                    name == "custom_jvp_call"
                    and _context_name(eqn) in SMOOTH_CUSTOM_JVP
                ):
                    pass
                else:
                    inner, _ = _call_jaxpr(eqn)
                    sub = _context_name(eqn) or ctx
                    dout, kout = self.walk(
                        inner, din, kin, [v in rel for v in eqn.outvars], sub,
                        within, where, [facts.flags(a) for a in eqn.invars],
                    )  # fmt: skip
                    call_flags = self.out_flags
            elif live and name == "cond":
                if din[0]:
                    self._add(Site("cond", ctx, where, (), within, "int32"), din[0])
                douts, kouts = [0] * len(eqn.outvars), [0] * len(eqn.outvars)
                for b, br in enumerate(eqn.params["branches"]):
                    d_b, k_b = self.walk(
                        br.jaxpr, din[1:], kin[1:], [True] * len(eqn.outvars), ctx,
                        _join(within, f"cond branch {b}"), where,
                    )  # fmt: skip
                    douts = [x | y for x, y in zip(douts, d_b, strict=True)]
                    kouts = [max(x, y) for x, y in zip(kouts, k_b, strict=True)]
                dout = [x | mask for x in douts]
                kout = kouts
            elif live and name in ("scan", "while"):
                dout, kout = self._loop(eqn, din, kin, ctx, within, where)
            elif live:
                tracked = _site_kind(eqn, [bool(d) for d in din], facts)
                if tracked:
                    self._add(
                        Site(
                            name, ctx, where, _shape(eqn.invars[0]), within,
                            str(eqn.outvars[0].aval.dtype),
                        ),
                        mask,
                    )  # fmt: skip
                elif _untracked_kind(eqn):
                    self.untracked.append(Site(name, ctx, where, (), within))
                    self.blind_masks.append(mask)
                elif _is_opaque(eqn):
                    self.opaque.append(Site(name, ctx, where, (), within))
                    self.blind_masks.append(mask)
            if live:
                self._precision(eqn, ctx, where, within)
            facts.update(eqn, tracked)
            if call_flags is not None:
                facts.seed(eqn.outvars, call_flags)
            for v, d, k in zip(eqn.outvars, dout, kout, strict=True):
                dep[v], depth[v] = d, k
                self.max_depth = (
                    max(self.max_depth, k) if orel and d else self.max_depth
                )
        self.out_flags = [facts.flags(v) for v in jaxpr.outvars]
        return (
            [dep.get(v, 0) if _is_var(v) else 0 for v in jaxpr.outvars],
            [depth.get(v, 0) if _is_var(v) else 0 for v in jaxpr.outvars],
        )

    def _loop(
        self,
        eqn: Any,
        din: Sequence[int],
        kin: Sequence[int],
        ctx: str,
        within: str,
        where: str,
    ) -> tuple[list[int], list[int]]:
        """Dependence and depth of a ``scan`` / ``while`` and its sites.

        The body's inputs depend on the parameters as they really do: its
        constants and scanned inputs from outside, its carry from the initial
        value and from what an iteration feeds back (a fixed point, found with
        scratch walks that record nothing). So a constant mask inside a loop
        (optax's ``ctc_loss``) is not a parameter-dependent computation.
        """
        p = eqn.params
        kmax = max(kin, default=0)
        if eqn.primitive.name == "scan":
            body = p["jaxpr"].jaxpr
            nc, nk = p["num_consts"], p["num_carry"]
            fixed, carry, rest = (
                list(din[:nc]),
                list(din[nc : nc + nk]),
                list(din[nc + nk :]),
            )
        else:
            body = p["body_jaxpr"].jaxpr
            cn, bn = p["cond_nconsts"], p["body_nconsts"]
            fixed, carry, rest = list(din[cn : cn + bn]), list(din[cn + bn :]), []
            nk = len(carry)
        n_in, n_out = len(body.invars), len(body.outvars)
        for _ in range(nk + 1):
            scratch = _Analysis()
            scratch.check_itemsize = self.check_itemsize
            d_b, _ = scratch.walk(
                body, [*fixed, *carry, *rest], [kmax] * n_in, [True] * n_out, ctx,
                within, where,
            )  # fmt: skip
            grown = [c | d for c, d in zip(carry, d_b[:nk], strict=True)]
            if grown == carry:
                break
            carry = grown
        d_b, k_b = self.walk(
            body, [*fixed, *carry, *rest], [kmax] * n_in, [True] * n_out, ctx,
            _join(within, eqn.primitive.name), where,
        )  # fmt: skip
        kmax = max([kmax, *k_b])
        if eqn.primitive.name == "scan":
            dout = [*(c | d for c, d in zip(carry, d_b[:nk], strict=True)), *d_b[nk:]]
            return dout, [kmax] * len(eqn.outvars)
        # The number of iterations depends on what the predicate reads.
        cond = p["cond_jaxpr"].jaxpr
        scratch = _Analysis()
        (pred,), _ = scratch.walk(
            cond, [*din[: p["cond_nconsts"]], *carry], [0] * len(cond.invars),
            [True], ctx, within, where,
        )  # fmt: skip
        if pred:
            self._add(Site("while", ctx, where, (), within, "int32"), pred)
        dout = [c | d | pred for c, d in zip(carry, d_b, strict=True)]
        return dout, [kmax] * len(eqn.outvars)

    def _add(self, site: Site, mask: int) -> None:
        self.sites.append((site, mask))

    def _precision(self, eqn: Any, ctx: str, where: str, within: str) -> None:
        for v in eqn.outvars:
            dtype = getattr(v.aval, "dtype", None)
            if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
                continue
            size = jnp.dtype(dtype).itemsize
            if size < self.check_itemsize:
                key = (str(dtype), where)
                if key not in self.seen_low:
                    self.seen_low.add(key)
                    self.low_precision.append(
                        Site(
                            eqn.primitive.name,
                            ctx,
                            where,
                            _shape(v),
                            within,
                            str(dtype),
                        )
                    )


def _shape(a: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in getattr(_aval(a), "shape", ()))


def _join(a: str, b: str) -> str:
    return f"{a} > {b}" if a else b


def analyze_jaxpr(
    closed_jaxpr: Any,
    sources: Sequence[int],
    *,
    check_dtype: Any = jnp.float64,
) -> KinkAnalysis:
    """Analyses a closed jaxpr whose inputs ``sources`` are the checked leaves.

    Args:
      closed_jaxpr: the ``jax.make_jaxpr`` output of the function.
      sources: positions (among the jaxpr's flat inputs) of the checked leaves.
      check_dtype: the dtype the check runs in; operations in a narrower float
        type are reported as lower precision.

    Returns:
      a :class:`KinkAnalysis`; ``leaf_sites`` is keyed by the index in
      ``sources``.

    Examples:
      >>> cj = jax.make_jaxpr(lambda w, x: jnp.sum(jax.nn.relu(w * x)))(1.0, 2.0)
      >>> a = analyze_jaxpr(cj, [0])
      >>> [s.label.split(" at ")[0] for s in a.sites], a.leaf_sites
      (['max in relu'], {0: 1})
    """
    jaxpr = closed_jaxpr.jaxpr
    n_in = len(jaxpr.invars)
    dep_in = [0] * n_in
    for k, pos in enumerate(sources):
        dep_in[pos] |= 1 << k
    an = _Analysis()
    an.check_itemsize = jnp.dtype(check_dtype).itemsize
    an.walk(jaxpr, dep_in, [0] * n_in, [True] * len(jaxpr.outvars), "", "", "")
    leaf_sites = {k: 0 for k in range(len(sources))}
    leaf_blind = {k: 0 for k in range(len(sources))}
    for mask in an.blind_masks:
        for k in range(len(sources)):
            if mask >> k & 1:
                leaf_blind[k] += 1
    for _, mask in an.sites:
        for k in range(len(sources)):
            if mask >> k & 1:
                leaf_sites[k] += 1
    return KinkAnalysis(
        sites=tuple(s for s, _ in an.sites),
        untracked=tuple(an.untracked),
        opaque=tuple(an.opaque),
        low_precision=tuple(an.low_precision),
        depth=an.max_depth,
        leaf_sites=leaf_sites,
        leaf_blind=leaf_blind,
    )


def inspect_kinks(f: Callable[..., Any], params: PyTree, *args: Any) -> KinkAnalysis:
    """Which kink-capable primitives ``f`` applies to ``params``, in float64.

    Traces ``f(params, *args)`` (nothing is evaluated) and lists the decisions
    the winner tracking of :func:`jaxcheck.check_grads` follows, the
    kink-capable primitives it cannot follow, the primitives it cannot see into,
    operations in a float type narrower than float64, and the depth.

    Args:
      f: the scalar function, called as ``f(params, *args)``.
      params: the parameters; every floating-point array leaf counts as checked.
      *args: fixed arguments.

    Returns:
      a :class:`KinkAnalysis`.

    Raises:
      ValueError: if ``params`` has no floating-point array leaf.

    Examples:
      >>> def loss(w, x):
      ...     return jnp.sum(jnp.maximum(x @ w, 0.0)) + jnp.sum(jax.nn.log_softmax(x))
      >>> a = inspect_kinks(loss, jnp.ones((3, 2)), jnp.ones((4, 3)))
      >>> a.has_kinks, [s.primitive for s in a.sites], a.depth
      (True, ['max'], 1)
      >>> inspect_kinks(lambda w: jnp.sum(jnp.tanh(w)), jnp.ones(3)).has_kinks
      False
    """
    with jax.enable_x64(True):
        leaves, treedef = jax.tree_util.tree_flatten(params)
        leaves = [_to_x64(v) for v in leaves]
        args = jax.tree_util.tree_map(_to_x64, args)
        float_pos = [
            i
            for i, v in enumerate(leaves)
            if isinstance(v, jax.Array) and jnp.issubdtype(v.dtype, jnp.floating)
        ]
        if not float_pos:
            raise ValueError(
                "`params` has no floating-point array leaf; pass the parameters as "
                "float arrays, e.g. `jnp.asarray(w, jnp.float32)`."
            )
        arrays = [leaves[i] for i in float_pos]

        def g(arrays: list, args: tuple) -> Any:
            full = list(leaves)
            for i, a in zip(float_pos, arrays, strict=True):
                full[i] = a
            return f(jax.tree_util.tree_unflatten(treedef, full), *args)

        closed = jax.make_jaxpr(g)(arrays, args)
        return analyze_jaxpr(closed, list(range(len(arrays))))


def _to_x64(x: Any) -> Any:
    if isinstance(x, jax.Array | np.ndarray | np.generic):
        if jnp.issubdtype(x.dtype, jnp.floating):
            return jnp.asarray(x, jnp.float64)
        return jnp.asarray(x) if not jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x
    return x


# --------------------------------------------------------------------------- #
# The instrumented interpreter.
# --------------------------------------------------------------------------- #


def _weights(shape: tuple[int, ...], salt: int) -> jax.Array:
    """Odd pseudo-random uint32 weights of ``shape`` (a hash of the position)."""
    n = max(1, math.prod(shape))
    x = lax.iota(_U32, n)
    x = x * np.uint32(0x9E3779B1) + np.uint32((salt * 0x85EBCA77 + 0x165667B1) % 2**32)
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(0x85EBCA6B)
    x = x ^ (x >> np.uint32(13))
    x = x * np.uint32(0xC2B2AE35)
    x = x ^ (x >> np.uint32(16))
    x = x | np.uint32(1)
    return x[: math.prod(shape)].reshape(shape) if shape else x[0]


def _as_u32(d: jax.Array) -> jax.Array:
    """The bits of ``d`` as uint32 (64-bit values folded)."""
    dtype = d.dtype
    if dtype == jnp.bool_:
        return d.astype(_U32)
    size = jnp.dtype(dtype).itemsize
    if jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.signedinteger):
        unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint64}[size]
        d = lax.bitcast_convert_type(d, unsigned)
    if size == 8:
        d = d ^ (d >> np.uint64(32))
    return lax.convert_element_type(d, _U32)


def fold(decision: jax.Array, salt: int = 0) -> jax.Array:
    """Folds an array of decisions into one ``uint32`` word.

    A weighted sum, modulo 2**32, of the decisions' bits with odd
    pseudo-random weights: a change of any single entry always changes the
    word; several changes collide with probability about 2**-32.

    Args:
      decision: a bool, integer or float array.
      salt: varies the weights.

    Returns:
      a uint32 scalar.

    Examples:
      >>> a = fold(jnp.array([True, False, True]))
      >>> b = fold(jnp.array([True, True, True]))
      >>> a.dtype, bool(a != b), bool(a == fold(jnp.array([True, False, True])))
      (dtype('uint32'), True, True)
    """
    d = jnp.asarray(decision)
    u = _as_u32(d)
    w = _weights(tuple(d.shape), salt)
    return jnp.sum(u * w, dtype=_U32)


def _decision(name: str, eqn: Any, ins: list, outs: list) -> jax.Array:
    """The decision an equation made, as an array to fold."""
    if name == "max":
        return jnp.greater(ins[0], ins[1])
    if name == "min":
        return jnp.less(ins[0], ins[1])
    if name == "abs":
        return jnp.greater_equal(ins[0], 0)
    if name == "clamp":
        lo, x, hi = ins
        return jnp.less(x, lo).astype(jnp.int8) + 2 * jnp.greater(x, hi).astype(
            jnp.int8
        )
    if name == "select_n":
        return ins[0]
    if name == "rem":
        return jnp.round((ins[0] - outs[0]) / ins[1])
    if name in ("reduce_max", "reduce_min"):
        x, out = ins[0], outs[0]
        axes = tuple(eqn.params["axes"])
        kept = tuple(i for i in range(x.ndim) if i not in axes)
        return jnp.equal(x, lax.broadcast_in_dim(out, x.shape, kept))
    if name in ("cummax", "cummin"):
        return jnp.equal(ins[0], outs[0])
    if name in ("reduce_window_max", "reduce_window_min"):
        x = ins[0]
        bits = 20 if jnp.dtype(x.dtype).itemsize >= 4 else 8
        t = (_weights(tuple(x.shape), 7) >> np.uint32(32 - bits)).astype(x.dtype)
        params = dict(eqn.params)
        _, t_out = jax.jvp(lambda v: eqn.primitive.bind(v, **params), (x,), (t,))
        return t_out.astype(jnp.int32)
    if name == "top_k":
        return outs[1]
    # comparisons, sign, floor/ceil/round, casts, argmax/argmin: the output.
    return outs[0]


class _Evaluator:
    """Evaluates a jaxpr like ``jax.core.eval_jaxpr`` and collects one uint32
    word per decision site (in ``self.words``, described by ``self.sites``)."""

    def __init__(self) -> None:
        self.sites: list[Site] = []
        self.words: list[jax.Array] = []
        self.decisions: list[jax.Array | None] = []
        self.out_flags: list[tuple] = []

    def _emit(self, site: Site, decision: jax.Array) -> None:
        self.words.append(fold(decision, salt=len(self.sites)))
        self.decisions.append(decision)
        self.sites.append(site)

    def _emit_nested(self, site: Site, word: jax.Array) -> None:
        """A site inside a loop or branch body: only its folded word is known."""
        self.words.append(word)
        self.decisions.append(None)
        self.sites.append(site)

    def run(
        self,
        jaxpr: Any,
        consts: Sequence[Any],
        args: Sequence[Any],
        dep_in: Sequence[bool],
        out_rel: Sequence[bool],
        ctx: str = "",
        within: str = "",
        loc: str = "",
        in_flags: Sequence[tuple] | None = None,
    ) -> list:
        rel = _relevant(jaxpr, out_rel)
        env: dict = {}
        dep: dict = {}
        for v, c in zip(jaxpr.constvars, consts, strict=True):
            env[v], dep[v] = c, False
        for v, a, d in zip(jaxpr.invars, args, dep_in, strict=True):
            env[v], dep[v] = a, d

        def read(a: Any) -> Any:
            return a.val if isinstance(a, jcore.Literal) else env[a]

        facts = _Facts()
        facts.seed(jaxpr.invars, in_flags)
        for eqn in jaxpr.eqns:
            call_flags = None
            ins = [read(a) for a in eqn.invars]
            din = [dep.get(a, False) if _is_var(a) else False for a in eqn.invars]
            anyd = any(din)
            orel = any(v in rel for v in eqn.outvars)
            live = anyd and orel
            name = eqn.primitive.name
            where = _location(eqn, loc) if live else loc
            tracked = False
            if (
                live
                and name in _CALLS
                and not (
                    name == "custom_jvp_call"
                    and _context_name(eqn) in SMOOTH_CUSTOM_JVP
                )
            ):
                inner, inner_consts = _call_jaxpr(eqn)
                outs = self.run(
                    inner, inner_consts, ins, din, [v in rel for v in eqn.outvars],
                    _context_name(eqn) or ctx, within, where,
                    [facts.flags(a) for a in eqn.invars],
                )  # fmt: skip
                call_flags = self.out_flags
            elif live and name == "cond":
                outs = self._cond(eqn, ins, din, ctx, within, where)
            elif live and name == "scan":
                outs = self._scan(eqn, ins, ctx, within, where)
            elif live and name == "while":
                outs = self._while(eqn, ins, ctx, within, where)
            else:
                tracked = live and _site_kind(eqn, din, facts)
                site = None
                if tracked:
                    site = Site(
                        name, ctx, where, tuple(np.shape(ins[0])), within,
                        str(eqn.outvars[0].aval.dtype),
                    )  # fmt: skip
                if tracked and name == "sort":
                    outs = self._sort(eqn, ins, site)
                else:
                    outs = _bind(eqn, ins)
                    if tracked:
                        self._emit(site, _decision(name, eqn, ins, outs))
            facts.update(eqn, tracked)
            if call_flags is not None:
                facts.seed(eqn.outvars, call_flags)
            for v, o in zip(eqn.outvars, outs, strict=True):
                env[v] = o
                dep[v] = anyd
        self.out_flags = [facts.flags(v) for v in jaxpr.outvars]
        return [read(v) for v in jaxpr.outvars]

    # -- structured primitives ------------------------------------------------
    def _sort(self, eqn: Any, ins: list, site: Site) -> list:
        p = dict(eqn.params)
        dim = p["dimension"]
        x = ins[0]
        iota = lax.broadcasted_iota(jnp.int32, x.shape, dim)
        outs = lax.sort_p.bind(*ins, iota, **p)
        self._emit(site, outs[-1])
        return list(outs[:-1])

    def _inner(
        self, jaxpr: Any, consts: Sequence[Any], ctx: str, within: str, where: str
    ) -> tuple[Callable[..., tuple[list, jax.Array]], list[Site]]:
        """A function running ``jaxpr`` instrumented (all inputs dependent) that
        returns ``(outs, words)``, and the list its sites land in."""
        sites: list[Site] = []

        def fn(*args: Any) -> tuple[list, jax.Array]:
            ev = _Evaluator()
            outs = ev.run(
                jaxpr, consts, args, [True] * len(args),
                [True] * len(jaxpr.outvars), ctx, within, where,
            )  # fmt: skip
            sites[:] = ev.sites
            words = jnp.stack(ev.words) if ev.words else jnp.zeros((0,), _U32)
            return outs, words

        return fn, sites

    def _cond(
        self, eqn: Any, ins: list, din: list, ctx: str, within: str, where: str
    ) -> list:
        index, ops = ins[0], ins[1:]
        branches = eqn.params["branches"]
        if din[0]:
            self._emit(Site("cond", ctx, where, (), within, "int32"), index)
        fns, counts, all_sites = [], [], []
        for b, br in enumerate(branches):
            fn, sites = self._inner(
                br.jaxpr, br.consts, ctx, _join(within, f"cond branch {b}"), where
            )
            _, w = jax.eval_shape(fn, *[_sds(o) for o in ops])
            fns.append(fn)
            counts.append(int(w.shape[0]))
            all_sites.append(list(sites))
        total = sum(counts)
        if total == 0:
            return _bind(eqn, ins)
        offsets = np.cumsum([0, *counts])

        def make(b: int) -> Callable[..., tuple[list, jax.Array]]:
            def run_branch(*ops: Any) -> tuple[list, jax.Array]:
                outs, w = fns[b](*ops)
                vec = jnp.zeros((total,), _U32)
                if counts[b]:
                    vec = lax.dynamic_update_slice(vec, w, (int(offsets[b]),))
                return list(outs), vec

            return run_branch

        outs, vec = lax.switch(index, [make(b) for b in range(len(branches))], *ops)
        for b, sites in enumerate(all_sites):
            for k, s in enumerate(sites):
                self._emit_nested(s, vec[int(offsets[b]) + k])
        return list(outs)

    def _scan(self, eqn: Any, ins: list, ctx: str, within: str, where: str) -> list:
        p = eqn.params
        closed = p["jaxpr"]
        nc, nk = p["num_consts"], p["num_carry"]
        consts, init, xs = ins[:nc], ins[nc : nc + nk], ins[nc + nk :]
        fn, sites = self._inner(
            closed.jaxpr, closed.consts, ctx, _join(within, "scan"), where
        )
        x_sds = [jax.ShapeDtypeStruct(np.shape(x)[1:], x.dtype) for x in xs]
        _, w = jax.eval_shape(
            lambda c, i, x: fn(*c, *i, *x),
            [_sds(c) for c in consts], [_sds(i) for i in init], x_sds,
        )  # fmt: skip
        num = int(w.shape[0])
        inner_sites = list(sites)
        if num == 0:
            return _bind(eqn, ins)

        def body(carry: tuple, x: list) -> tuple:
            c, acc = carry
            outs, words = fn(*consts, *c, *x)
            return (list(outs[:nk]), acc * _FNV_PRIME + words), list(outs[nk:])

        (c_out, acc), ys = lax.scan(
            body, (list(init), jnp.zeros((num,), _U32)), list(xs),
            length=p["length"], reverse=p["reverse"], unroll=p["unroll"],
        )  # fmt: skip
        for k, s in enumerate(inner_sites):
            self._emit_nested(s, acc[k])
        return [*c_out, *ys]

    def _while(self, eqn: Any, ins: list, ctx: str, within: str, where: str) -> list:
        p = eqn.params
        cond_closed, body_closed = p["cond_jaxpr"], p["body_jaxpr"]
        cn, bn = p["cond_nconsts"], p["body_nconsts"]
        cconsts, bconsts, init = ins[:cn], ins[cn : cn + bn], ins[cn + bn :]
        fn, sites = self._inner(
            body_closed.jaxpr, body_closed.consts, ctx, _join(within, "while"), where
        )
        _, w = jax.eval_shape(
            lambda b, c: fn(*b, *c), [_sds(b) for b in bconsts], [_sds(c) for c in init]
        )
        num = int(w.shape[0])
        inner_sites = list(sites)
        cond_fun_plain = jcore.jaxpr_as_fun(cond_closed)

        def cond_fun(carry: tuple) -> jax.Array:
            c, _, _ = carry
            return cond_fun_plain(*cconsts, *c)[0]

        def body_fun(carry: tuple) -> tuple:
            c, acc, it = carry
            outs, words = fn(*bconsts, *c)
            return list(outs), acc * _FNV_PRIME + words, it + 1

        c_out, acc, it = lax.while_loop(
            cond_fun, body_fun, (list(init), jnp.zeros((num,), _U32), jnp.int32(0))
        )
        for k, s in enumerate(inner_sites):
            self._emit_nested(s, acc[k])
        self._emit(Site("while", ctx, where, (), within, "int32"), it)
        return list(c_out)


def _sds(x: Any) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x))


def _bind(eqn: Any, ins: list) -> list:
    params = eqn.primitive.get_bind_params(eqn.params)
    out = eqn.primitive.bind(*ins, **params)
    return list(out) if eqn.primitive.multiple_results else [out]


def _evaluate(
    closed_jaxpr: Any, args: Sequence[Any], sources: Sequence[int]
) -> _Evaluator:
    dep = [False] * len(args)
    for s in sources:
        dep[s] = True
    ev = _Evaluator()
    ev.outs = ev.run(
        closed_jaxpr.jaxpr, closed_jaxpr.consts, list(args), dep,
        [True] * len(closed_jaxpr.jaxpr.outvars),
    )  # fmt: skip
    return ev


def evaluate_pair(
    jaxpr: Any,
    consts: Sequence[Any],
    args_a: Sequence[Any],
    args_b: Sequence[Any],
    sources: Sequence[int],
) -> tuple[jax.Array, jax.Array, jax.Array, tuple[Site, ...]]:
    """``f`` and its decisions at two points, and the decisions that differ.

    ``jaxpr`` (an open jaxpr, its constants passed as ``consts`` so that they
    can be runtime values) is evaluated at ``args_a`` and at ``args_b``;
    decisions count when they depend on the inputs at positions ``sources``.
    Jit- and vmap-able.

    Args:
      jaxpr: the jaxpr of a scalar function.
      consts: values of its constvars.
      args_a: its inputs at the first point.
      args_b: its inputs at the second point.
      sources: positions of the perturbed inputs.

    Returns:
      ``(values (2,), words (2, S), changed (S,), sites)``: ``changed`` counts
      the decisions per site that differ between the points (see
      :func:`changed_decisions`).

    Examples:
      >>> cj = jax.make_jaxpr(lambda w: jnp.sum(jnp.abs(w)))(jnp.ones(2))
      >>> v, w, c, sites = evaluate_pair(cj.jaxpr, cj.consts, [jnp.array([1.0, 2.0])],
      ...                                [jnp.array([-1.0, 2.0])], [0])
      >>> v.tolist(), c.tolist(), sites[0].primitive
      ([3.0, 3.0], [1], 'abs')
    """
    evs = []
    for args in (args_a, args_b):
        dep = [False] * len(args)
        for k in sources:
            dep[k] = True
        ev = _Evaluator()
        ev.outs = ev.run(jaxpr, consts, list(args), dep, [True] * len(jaxpr.outvars))
        evs.append(ev)
    values = jnp.stack([evs[0].outs[0], evs[1].outs[0]])
    words = jnp.stack([_stack_words(ev.words) for ev in evs])
    return values, words, changed_decisions(evs[0], evs[1]), tuple(evs[0].sites)


def _stack_words(words: list) -> jax.Array:
    return jnp.stack(words) if words else jnp.zeros((0,), _U32)


def changed_decisions(first: _Evaluator, second: _Evaluator) -> jax.Array:
    """How many decisions differ between two evaluations, per site (int32).

    For a site inside a loop or branch body only the folded word is known: a
    changed word counts as 2 (at least one change, multiplicity unknown).

    Args:
      first: the evaluator of the first point (after ``run``).
      second: the evaluator of the second point, same jaxpr.

    Returns:
      an int32 vector, one count per site.

    Examples:
      >>> cj = jax.make_jaxpr(lambda w: jnp.sum(jnp.abs(w)))(jnp.ones(3))
      >>> a = _evaluate(cj, [jnp.array([1.0, -1.0, 2.0])], [0])
      >>> b = _evaluate(cj, [jnp.array([-1.0, 1.0, 2.0])], [0])
      >>> changed_decisions(a, b).tolist()
      [2]
    """
    counts = []
    for d1, d2, w1, w2 in zip(
        first.decisions, second.decisions, first.words, second.words, strict=True
    ):
        if d1 is None or d2 is None:
            counts.append(2 * (w1 != w2).astype(jnp.int32))
        else:
            counts.append(jnp.sum(d1 != d2, dtype=jnp.int32))
    return jnp.stack(counts) if counts else jnp.zeros((0,), jnp.int32)


def eval_with_winners(
    closed_jaxpr: Any, args: Sequence[Any], sources: Sequence[int]
) -> tuple[list, jax.Array, tuple[Site, ...]]:
    """Evaluates ``closed_jaxpr`` on ``args`` and returns the decisions made.

    Jit- and vmap-able: call it inside :func:`jax.jit` / :func:`jax.vmap`.

    Args:
      closed_jaxpr: from :func:`jax.make_jaxpr`.
      args: the flat inputs of the jaxpr.
      sources: positions of the inputs whose decisions count (the perturbed
        parameters); decisions that do not depend on them are not tracked.

    Returns:
      ``(outputs, words, sites)``: the jaxpr's outputs, a uint32 vector with one
      word per decision site, and the sites' descriptions.

    Examples:
      >>> cj = jax.make_jaxpr(lambda w: jnp.sum(jnp.abs(w)))(jnp.ones(3))
      >>> outs, words, sites = eval_with_winners(cj, [jnp.array([1.0, -2.0, 3.0])], [0])
      >>> float(outs[0]), words.shape, sites[0].primitive
      (6.0, (1,), 'abs')
    """
    ev = _evaluate(closed_jaxpr, args, sources)
    return ev.outs, _stack_words(ev.words), tuple(ev.sites)


class WinnerTracker:
    """A :class:`jaxcheck.engine.LeafFunction` that also returns its decisions.

    ``tracker(leaf_flat, dyn_params, dyn_args)`` returns ``(f, words)`` where
    ``words`` is a uint32 vector, one word per decision site that depends on
    the leaf (:attr:`sites` describes them). Instances compare equal when they
    wrap equal leaf functions at the same input shapes, so :func:`jax.jit`
    reuses their compilations.
    """

    def __init__(
        self,
        fn: Any,
        x_flat: jax.Array,
        dyn_params: Sequence[Any],
        dyn_args: Sequence[Any],
    ):
        self.fn = fn
        flat = jax.tree_util.tree_leaves((x_flat, list(dyn_params), list(dyn_args)))
        self.closed = jax.make_jaxpr(fn)(x_flat, list(dyn_params), list(dyn_args))
        self.in_avals = tuple(
            (tuple(np.shape(a)), str(jnp.result_type(a))) for a in flat
        )
        found: list = []

        def words_only(*a: Any) -> Any:
            _, w, sites = eval_with_winners(self.closed, a, [0])
            found[:] = sites
            return w

        jax.eval_shape(words_only, *[_sds(a) for a in flat])
        self.sites: tuple[Site, ...] = tuple(found)

    @property
    def num_sites(self) -> int:
        return len(self.sites)

    def __hash__(self) -> int:
        return hash((WinnerTracker, self.fn, self.in_avals))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, WinnerTracker):
            return NotImplemented
        return self.in_avals == other.in_avals and self.fn == other.fn

    def __call__(
        self, leaf_flat: jax.Array, dyn_params: Sequence[Any], dyn_args: Sequence[Any]
    ) -> tuple[jax.Array, jax.Array]:
        flat = jax.tree_util.tree_leaves((leaf_flat, list(dyn_params), list(dyn_args)))
        outs, words, _ = eval_with_winners(self.closed, flat, [0])
        return outs[0], words

    def pair(
        self,
        leaf_a: jax.Array,
        leaf_b: jax.Array,
        dyn_params: Sequence[Any],
        dyn_args: Sequence[Any],
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """``f`` and the words at two points, and how many decisions differ
        between them per site: ``(values (2,), words (2, S), changed (S,))``."""
        evs = []
        for leaf in (leaf_a, leaf_b):
            flat = jax.tree_util.tree_leaves((leaf, list(dyn_params), list(dyn_args)))
            evs.append(_evaluate(self.closed, flat, [0]))
        values = jnp.stack([ev.outs[0] for ev in evs])
        words = jnp.stack([_stack_words(ev.words) for ev in evs])
        return values, words, changed_decisions(evs[0], evs[1])


_TRACKERS: dict[Any, WinnerTracker] = {}
_MAX_TRACKERS = 16


def winner_tracker(
    fn: Any, x_flat: jax.Array, dyn_params: Sequence[Any], dyn_args: Sequence[Any]
) -> WinnerTracker:
    """A cached :class:`WinnerTracker` of ``fn`` at these input shapes.

    Tracing and analysing ``fn`` costs milliseconds; a second check of the
    same function reuses the tracker (and so :func:`jax.jit`'s compilations).

    Args:
      fn: a :class:`jaxcheck.engine.LeafFunction` (hashable).
      x_flat: the flattened leaf.
      dyn_params: the dynamic parameter leaves.
      dyn_args: the dynamic argument leaves.

    Returns:
      a :class:`WinnerTracker` of ``fn`` at these shapes.

    Examples:
      >>> import jax.tree_util as jtu
      >>> from jaxcheck.engine import LeafFunction
      >>> fn = LeafFunction(lambda p: jnp.sum(jnp.abs(p)), jtu.tree_structure(0.0), 1,
      ...                   {}, jtu.tree_structure(()), 0, {}, 0, (2,))
      >>> t = winner_tracker(fn, jnp.ones(2), [jnp.ones(2)], [])
      >>> t is winner_tracker(fn, jnp.ones(2), [jnp.ones(2)], []), t.num_sites
      (True, 1)
    """
    flat = jax.tree_util.tree_leaves((x_flat, list(dyn_params), list(dyn_args)))
    avals = tuple((tuple(np.shape(a)), str(jnp.result_type(a))) for a in flat)
    try:
        key = (fn, avals)
        hash(key)
    except TypeError:
        return WinnerTracker(fn, x_flat, dyn_params, dyn_args)
    hit = _TRACKERS.pop(key, None)
    if hit is None:
        hit = WinnerTracker(fn, x_flat, dyn_params, dyn_args)
    _TRACKERS[key] = hit
    while len(_TRACKERS) > _MAX_TRACKERS:
        _TRACKERS.pop(next(iter(_TRACKERS)))
    return hit


def track_winners(
    f: Callable[..., Any], params: PyTree, *args: Any
) -> tuple[Callable[..., tuple[jax.Array, jax.Array]], tuple[Site, ...]]:
    """``f`` instrumented to return its decisions as well as its value.

    Traces ``f(params, *args)`` once and returns a function
    ``g(params, *args) -> (value, words)`` (for arguments of the same shapes)
    that computes the same value and a uint32 vector with one word per
    decision site that depends on ``params``. Two points whose words differ are
    separated by a kink of ``f``. ``g`` is jit- and vmap-able.

    Args:
      f: the scalar function, called as ``f(params, *args)``.
      params: the parameters (their floating-point leaves are the sources).
      *args: fixed arguments.

    Returns:
      ``(g, sites)``: the instrumented function and the sites its words
      describe, in order.

    Examples:
      >>> g, sites = track_winners(lambda w: jnp.sum(jax.nn.relu(w)), jnp.zeros(2))
      >>> [s.primitive for s in sites]
      ['max']
      >>> _, w1 = g(jnp.array([1e-9, 1.0]))
      >>> _, w2 = g(jnp.array([-1e-9, 1.0]))
      >>> bool(w1[0] != w2[0])  # the ReLU of w[0] changed its winner
      True
    """
    leaves, treedef = jax.tree_util.tree_flatten(params)
    float_pos = [
        i
        for i, v in enumerate(leaves)
        if isinstance(v, jax.Array | np.ndarray)
        and jnp.issubdtype(v.dtype, jnp.floating)
    ]
    if not float_pos:
        raise ValueError(
            "`params` has no floating-point array leaf whose decisions could be "
            "tracked; pass the parameters as float arrays."
        )

    def flat_f(p_leaves: list, args: tuple) -> Any:
        return f(jax.tree_util.tree_unflatten(treedef, p_leaves), *args)

    closed = jax.make_jaxpr(flat_f)(leaves, args)
    pos_map = float_pos  # one jaxpr input per leaf, leaves first

    def g(params: PyTree, *args: Any) -> tuple[jax.Array, jax.Array]:
        flat = jax.tree_util.tree_leaves((jax.tree_util.tree_leaves(params), args))
        outs, words, _ = eval_with_winners(closed, flat, pos_map)
        return outs[0], words

    out: list = []

    def sites_only(*flat: Any) -> Any:
        _, w, sites = eval_with_winners(closed, flat, pos_map)
        out[:] = sites
        return w

    flat = jax.tree_util.tree_leaves((leaves, args))
    jax.eval_shape(sites_only, *[_sds(a) for a in flat])
    return g, tuple(out)
