"""Perturbation propagation: ``f(x ± h e_i)`` without a full forward pass each.

The plain engine (:func:`jaxcheck.engine._block`) evaluates ``f`` at a perturbed
copy of the leaf for every coordinate ``i``. XLA already computes what does not
depend on the leaf once, but everything downstream of the leaf is recomputed in
full, per coordinate: a perturbed copy of the leaf, then e.g. ``X @ W'``.

This module walks the jaxpr of ``f`` instead and keeps a perturbed value
*local* for as long as it can: a value ``v`` is represented by its unperturbed
``base`` (computed once per call) and a *window* (per axis a dynamic start and a
static size) outside of which ``v`` equals ``base``. Inside the window it holds
either the new values or the change (``delta``). Perturbing ``W[j, k]`` starts
as a 1x1 window; ``X @ W`` turns it into the column ``delta * X[:, j]`` placed at
column ``k`` (a 16-vector for a batch of 16, instead of a 16x100 matmul with a
784x100 copy); ``+ b`` keeps the window; ``tanh`` is elementwise, so only the
window is recomputed; the next ``@ W2`` turns the column into a dense
``(16, 10)`` change. Only where an operation mixes the window with the rest in
a way no rule covers (``reduce_max`` over the window's axis is fine, a sort or
a loop is not) is the value *materialized* (``base`` with the window written
in) and evaluation continues on full values, batched over coordinates, as in
the plain engine. Anything not covered falls back to that dense path, so
correctness never depends on coverage.

Rules (a perturbed operand meets unperturbed ones unless said otherwise):

* linear, on the change: ``dot_general`` (either operand; both perturbed is
  bilinear: dense from there), ``conv_general_dilated`` (a kernel entry: a
  one-channel convolution of one input channel; an input window on the feature
  or batch axes: a convolution of that slice only), ``gather`` (embeddings:
  only the rows that gathered the perturbed row change, found with a gather of
  an iota), ``reduce_sum``, ``add``/``sub``/``neg`` (also of two perturbed
  values), ``mul``/``div`` by an unperturbed value;
* structural, on either form: ``reshape``, ``transpose``, ``broadcast_in_dim``,
  ``squeeze``, ``slice``, ``concatenate``, ``stack``, ``pad``, ``rev``,
  ``convert_element_type``, ``stop_gradient``, ``copy``;
* local, on the new values: every elementwise primitive (``tanh``, ``exp``,
  ``max``, ``select_n``, comparisons, ``integer_pow``, ... also with several
  perturbed operands); reductions (``reduce_max``, ``argmax``, ...) and
  cumulative ops, after widening the window to the whole reduced axis;
  ``reduce_window_*`` (pooling) after widening it to the pooled axes.

Integer values carry changes exactly (modulo ``2**bits``), so a winner
tracker's uint32 decision words (:mod:`jaxcheck.kinks`, a weighted sum of the
decisions) come out bit-identical while only the window's decisions are
recomputed; :func:`make_propagated_evaluator` also propagates a tracker's
``pair`` (both points of a row and the decisions that changed between them).
``jit``/``pjit``, ``custom_jvp_call``, ``custom_vjp_call`` and ``checkpoint``
are inlined (their primal computation is what ``f`` evaluates).

Round-off: a propagated ``f(x ± h e_i)`` differs from the dense evaluation by
round-off only (a few ``eps * |f|``); elementwise steps are bit-identical, and
the linear ones sum in a different order. Finite differences of the two paths
therefore agree to within the round-off noise ``eps * |f| / h`` that the check
already allows for (verdicts can differ only for coordinates whose difference
is at that noise level).

Whether it applies is decided per leaf, from a trace of the interpretation
(cached per function and shapes): it must cover at least one linear consumer,
and the estimated work per coordinate must be at most :data:`MIN_GAIN` of the
dense path's; given the number of coordinates, a leaf cheap anyway is left to
the dense path (:data:`MIN_DENSE_WORK`). Memory per coordinate is the size of
the windows and of the values after the first materialization (see
:func:`bytes_per_coordinate`), not the leaf size.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend import core as jcore

from . import engine

__all__ = [
    "bytes_per_coordinate",
    "make_propagated_block",
    "make_propagated_evaluator",
    "propagated_eval_block",
    "propagated_block",
    "propagation_plan",
]

#: Propagate only when the estimated work per coordinate is at most this
#: fraction of the dense path's (below it the second compilation is not worth it).
MIN_GAIN = 0.7
#: When the caller says how many coordinates it will evaluate: propagate only
#: when the dense path's total estimated work (multiply-adds, roughly) is at
#: least this. Compiling the propagated evaluation costs about as much as
#: 1e8 to 1e9 units of dense work on a CPU; below this a leaf is cheap anyway.
MIN_DENSE_WORK = 2e9

# --------------------------------------------------------------------------------
# The program: a flat list of equations, with calls inlined.

_INLINE_CLOSED = {"jit", "pjit", "closed_call", "core_call"}
_INLINE_CALL_JAXPR = {"custom_jvp_call", "custom_vjp_call"}
_INLINE_OPEN = {"remat2", "checkpoint", "remat"}


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


def _flatten(closed: Any) -> _Program:
    eqns: list[_Eqn] = []
    avals: dict[int, Any] = {}
    counter = [0]

    def new_id(aval: Any) -> int:
        counter[0] += 1
        avals[counter[0]] = aval
        return counter[0]

    def walk(jaxpr: Any, consts: Sequence[Any], ins: Sequence[Any], where: str):
        env: dict[Any, Any] = {}
        for v, c in zip(jaxpr.constvars, consts, strict=True):
            env[v] = _Lit(c)
        for v, a in zip(jaxpr.invars, ins, strict=True):
            env[v] = a

        def read(v: Any) -> Any:
            return _Lit(v.val) if isinstance(v, jcore.Literal) else env[v]

        for eqn in jaxpr.eqns:
            args = [read(v) for v in eqn.invars]
            name = eqn.primitive.name
            sub = None
            if name in _INLINE_CLOSED and "jaxpr" in eqn.params:
                sub = eqn.params["jaxpr"]
                sub = (sub.jaxpr, sub.consts)
            elif name in _INLINE_CLOSED and "call_jaxpr" in eqn.params:
                sub = eqn.params["call_jaxpr"]
                sub = (sub.jaxpr, sub.consts)
            elif name in _INLINE_CALL_JAXPR and "call_jaxpr" in eqn.params:
                sub = eqn.params["call_jaxpr"]
                sub = (sub.jaxpr, sub.consts)
            elif name in _INLINE_OPEN and isinstance(
                eqn.params.get("jaxpr"), jcore.Jaxpr
            ):
                sub = (eqn.params["jaxpr"], ())
            if sub is not None and len(sub[0].invars) == len(args):
                label = eqn.params.get("name", name)
                outs = walk(sub[0], sub[1], args, f"{where}{label}/")
                for v, o in zip(eqn.outvars, outs, strict=True):
                    env[v] = o
                continue
            out_ids = tuple(new_id(v.aval) for v in eqn.outvars)
            for v, o in zip(eqn.outvars, out_ids, strict=True):
                env[v] = o
            eqns.append(
                _Eqn(
                    eqn.primitive,
                    dict(eqn.params),
                    tuple(args),
                    out_ids,
                    tuple(v.aval for v in eqn.outvars),
                    where,
                )
            )
        return [read(v) for v in jaxpr.outvars]

    in_ids = tuple(new_id(v.aval) for v in closed.jaxpr.invars)
    outs = walk(closed.jaxpr, closed.consts, in_ids, "")
    producer = {o: k for k, eqn in enumerate(eqns) for o in eqn.outs}
    return _Program(tuple(eqns), counter[0], in_ids, tuple(outs), avals, producer)


def _bind(eqn: _Eqn, args: Sequence[Any], params: dict | None = None) -> Any:
    params = eqn.params if params is None else params
    return eqn.prim.bind(*args, **eqn.prim.get_bind_params(params))


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


# --------------------------------------------------------------------------------
# Values: unperturbed constants, local perturbations, dense perturbed values.


@dataclasses.dataclass(frozen=True)
class _Const:
    value: Any


@dataclasses.dataclass(frozen=True)
class _Dense:
    value: Any


class _Ref:
    """An unperturbed value, computed when first asked for (``ref()``)."""

    def __init__(self, get: Callable[[], Any], shape: Sequence[int], dtype: Any):
        self.get = get
        self.shape = tuple(int(n) for n in shape)
        self.dtype = dtype

    def __call__(self) -> Any:
        return self.get()


def _value_ref(value: Any) -> _Ref:
    return _Ref(lambda: value, np.shape(value), _dtype(value))


@dataclasses.dataclass(frozen=True)
class _Loc:
    """The unperturbed value ``ref()`` everywhere except in the window
    ``[starts, starts + sizes)``, where the value is ``patch`` (``delta=False``)
    or ``ref() + patch``."""

    ref: _Ref
    starts: tuple  # per axis: a Python int or an integer scalar tracer
    sizes: tuple[int, ...]
    patch: Any
    delta: bool

    @property
    def base(self) -> Any:
        return self.ref()

    @property
    def shape(self) -> tuple[int, ...]:
        return self.ref.shape

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def dtype(self) -> Any:
        return self.ref.dtype

    def full(self, axis: int) -> bool:
        return self.sizes[axis] == self.shape[axis]


def _shape(x: Any) -> tuple[int, ...]:
    return x.shape if isinstance(x, _Loc) else tuple(np.shape(x.value))


def _inexact(dtype: Any) -> bool:
    return bool(jnp.issubdtype(dtype, jnp.inexact))


def _linear(dtype: Any) -> bool:
    """Whether values of ``dtype`` can carry a change (``base + delta``) through
    linear operations: floating point (up to round-off) and integers (exactly,
    modulo 2**bits, e.g. the uint32 words of a winner tracker); not bool."""
    return _inexact(dtype) or bool(jnp.issubdtype(dtype, jnp.integer))


def _is_int(x: Any) -> bool:
    return isinstance(x, int | np.integer)


def _same_start(a: Any, b: Any) -> bool:
    if _is_int(a) and _is_int(b):
        return int(a) == int(b)
    return a is b


def _rem(a: Any, n: int) -> Any:
    """``a % n`` for a nonnegative index (a Python int or an integer tracer)."""
    return a % n if _is_int(a) else lax.rem(a, jnp.asarray(n, a.dtype))


def _div(a: Any, n: int) -> Any:
    """``a // n`` for a nonnegative index."""
    return a // n if _is_int(a) else lax.div(a, jnp.asarray(n, a.dtype))


def _starts_array(starts: Sequence[Any], dtype: Any) -> list[Any]:
    return [jnp.asarray(s, dtype) for s in starts]


class _Log:
    """What a planning run saw: the steps of the interpretation, and the
    unperturbed values it asked for."""

    def __init__(self) -> None:
        self.steps: list[_Step] = []
        self.bases: list[_Base] = []


class _Ctx:
    """Per (coordinate, sign) state: the index dtype and the log."""

    def __init__(self, idx_dtype: Any, log: _Log | None):
        self.idx_dtype = idx_dtype
        self.log = log
        self.memo: dict[Any, Any] = {}

    def index(self, name: str, fn: Callable[..., Any], *operands: Any) -> Any:
        """``fn(*operands)`` on window starts, once per interpretation: equal
        windows reached along two paths then have identical starts (so they
        align without widening)."""
        if all(_is_int(o) for o in operands):
            return fn(*operands)
        key = (name, *(int(o) if _is_int(o) else id(o) for o in operands))
        hit = self.memo.get(key)
        if hit is None:
            hit = (fn(*operands), operands)
            self.memo[key] = hit
        return hit[0]

    def dslice(self, x: Any, starts: Sequence[Any], sizes: Sequence[int]) -> Any:
        if tuple(sizes) == tuple(np.shape(x)):
            return x
        # The same window of the same value is often asked for twice (for the
        # new values and for the change): slice once (less to compile).
        key = (id(x), tuple(s if _is_int(s) else id(s) for s in starts), tuple(sizes))
        hit = self.memo.get(key)
        if hit is not None and hit[0] is x:
            return hit[1]
        out = lax.dynamic_slice(
            x,
            _starts_array(starts, self.idx_dtype),
            sizes,
            allow_negative_indices=False,
        )
        self.memo[key] = (x, out, starts)
        return out

    def dupdate(self, x: Any, update: Any, starts: Sequence[Any]) -> Any:
        if np.shape(update) == np.shape(x):
            return update
        return lax.dynamic_update_slice(
            x,
            update,
            _starts_array(starts, self.idx_dtype),
            allow_negative_indices=False,
        )

    def make(self, ref: _Ref, starts: Sequence[Any], sizes: Sequence[int], patch: Any,
             delta: bool) -> _Loc:  # fmt: skip
        shape = ref.shape
        starts = tuple(
            0 if s == n else st for st, s, n in zip(starts, sizes, shape, strict=True)
        )
        assert tuple(np.shape(patch)) == tuple(sizes), (np.shape(patch), sizes)
        return _Loc(ref, starts, tuple(int(s) for s in sizes), patch, delta)

    def vals(self, loc: _Loc) -> Any:
        if not loc.delta:
            return loc.patch
        return self.dslice(loc.base, loc.starts, loc.sizes) + loc.patch

    def deltas(self, loc: _Loc) -> Any:
        if loc.delta:
            return loc.patch
        return loc.patch - self.dslice(loc.base, loc.starts, loc.sizes)

    def as_delta(self, loc: _Loc) -> _Loc:
        return dataclasses.replace(loc, patch=self.deltas(loc), delta=True)

    def materialize(self, loc: _Loc) -> Any:
        return self.dupdate(loc.base, self.vals(loc), loc.starts)

    def widen(self, loc: _Loc, axes: Sequence[int]) -> _Loc:
        axes = [a for a in axes if not loc.full(a)]
        if not axes:
            return loc
        starts = list(loc.starts)
        sizes = list(loc.sizes)
        rel = [0] * loc.ndim
        for a in axes:
            rel[a] = loc.starts[a]
            starts[a] = 0
            sizes[a] = loc.shape[a]
        if loc.delta:
            frame = jnp.zeros(sizes, loc.patch.dtype)
        else:
            frame = self.dslice(loc.base, starts, sizes)
        patch = lax.dynamic_update_slice(
            frame,
            loc.patch,
            _starts_array(rel, self.idx_dtype),
            allow_negative_indices=False,
        )
        return self.make(loc.ref, starts, sizes, patch, loc.delta)

    def broadcast_to(self, loc: _Loc, shape: tuple[int, ...]) -> _Loc:
        """``loc`` as an operand of an elementwise op with output ``shape``."""
        if loc.shape == shape:
            return loc
        if loc.ndim == 0:
            ones = (1,) * len(shape)
            old = loc
            loc = _Loc(
                _Ref(lambda: jnp.reshape(old.base, ones), ones, old.dtype),
                (0,) * len(shape),
                ones,
                jnp.reshape(loc.patch, ones),
                loc.delta,
            )
        starts = list(loc.starts)
        sizes = list(loc.sizes)
        for a, (n_in, n_out) in enumerate(zip(loc.shape, shape, strict=True)):
            if n_in != n_out:  # size 1 broadcast along the axis
                starts[a], sizes[a] = 0, n_out
        src = loc
        return self.make(
            _Ref(lambda: jnp.broadcast_to(src.base, shape), shape, loc.dtype),
            starts,
            sizes,
            jnp.broadcast_to(loc.patch, sizes),
            loc.delta,
        )

    def align(self, locs: Sequence[_Loc], skip: Sequence[int] = ()) -> list[_Loc]:
        """Gives ``locs`` (of one shape) one window; axes in ``skip`` untouched."""
        if len(locs) < 2:
            return list(locs)
        first = locs[0]
        bad = [
            a
            for a in range(first.ndim)
            if a not in skip
            and not all(
                loc.sizes[a] == first.sizes[a]
                and _same_start(loc.starts[a], first.starts[a])
                for loc in locs
            )
        ]
        return [self.widen(loc, bad) for loc in locs]

    def const_slice(self, c: Any, starts: Sequence[Any], sizes: Sequence[int],
                    shape: Sequence[int]) -> Any:  # fmt: skip
        """The window of an unperturbed operand broadcast to ``shape``."""
        cshape = np.shape(c)
        if len(cshape) == 0:
            return c
        st = [0 if cshape[a] != shape[a] else starts[a] for a in range(len(shape))]
        sz = [
            cshape[a] if cshape[a] != shape[a] else sizes[a] for a in range(len(shape))
        ]
        return self.dslice(c, st, sz)


# --------------------------------------------------------------------------------
# Rules. Each gets the context, the equation, its inputs (_Loc or _Const) and the
# unperturbed output, and returns a _Loc or None (not covered: dense from here).

_ELEMENTWISE = frozenset(
    """abs acos acosh add add_any and asin asinh atan atan2 atanh cbrt ceil clamp
    convert_element_type copy copy_p cos cosh digamma div eq erf erf_inv erfc exp
    exp2 expm1 floor ge gt integer_pow is_finite le lgamma log log1p logistic lt
    max min mul ne neg nextafter not or pow reduce_precision rem round rsqrt
    select_n sign sin sinh sqrt square stop_gradient sub tan tanh xor""".split()
)
_REDUCTIONS = frozenset(
    "reduce_max reduce_min reduce_prod reduce_and reduce_or reduce_xor argmax "
    "argmin".split()
)
_CUMULATIVE = frozenset("cumsum cumprod cummax cummin cumlogsumexp".split())
_REDUCE_WINDOW = frozenset(
    "reduce_window_sum reduce_window_max reduce_window_min".split()
)


def _elementwise(ctx: _Ctx, eqn: _Eqn, ins: Sequence[Any], out_base: Any) -> Any:
    shape = tuple(eqn.out_avals[0].shape)
    for x in ins:
        s = _shape(x)
        if len(s) not in (0, len(shape)) or any(
            a not in (1, b) for a, b in zip(s, shape, strict=False)
        ):
            return None
    locs = {
        k: ctx.broadcast_to(x, shape) for k, x in enumerate(ins) if isinstance(x, _Loc)
    }
    keys = list(locs)
    aligned = ctx.align([locs[k] for k in keys])
    for k, loc in zip(keys, aligned, strict=True):
        locs[k] = loc
    ref = aligned[0]
    args = [
        ctx.vals(locs[k])
        if k in locs
        else ctx.const_slice(x.value, ref.starts, ref.sizes, shape)
        for k, x in enumerate(ins)
    ]
    patch = _bind(eqn, args)
    return ctx.make(out_base, ref.starts, ref.sizes, patch, False)


def _linear_elementwise(ctx: _Ctx, eqn: _Eqn, ins: Sequence[Any], out_base: Any):
    """add/sub/neg/mul/div on the change, when a perturbed operand carries one."""
    name = eqn.name
    locs = [x for x in ins if isinstance(x, _Loc)]
    if not any(loc.delta for loc in locs) or not _linear(eqn.out_avals[0].dtype):
        return _elementwise(ctx, eqn, ins, out_base)
    shape = tuple(eqn.out_avals[0].shape)
    if any(len(_shape(x)) not in (0, len(shape)) for x in ins):
        return None
    if name == "neg":
        loc = ins[0]
        return ctx.make(out_base, loc.starts, loc.sizes, -ctx.deltas(loc), True)
    if name in ("add", "add_any", "sub"):
        signs = [1, -1 if name == "sub" else 1]
        parts = [
            (s, ctx.as_delta(ctx.broadcast_to(x, shape)))
            for s, x in zip(signs, ins, strict=True)
            if isinstance(x, _Loc)
        ]
        aligned = ctx.align([p for _, p in parts])
        total = None
        for (s, _), loc in zip(parts, aligned, strict=True):
            d = loc.patch if s > 0 else -loc.patch
            total = d if total is None else total + d
        ref = aligned[0]
        return ctx.make(out_base, ref.starts, ref.sizes, total, True)
    if name in ("mul", "div") and len(locs) == 1:
        k = 0 if isinstance(ins[0], _Loc) else 1
        if name == "div" and (k == 1 or not _inexact(eqn.out_avals[0].dtype)):
            return _elementwise(ctx, eqn, ins, out_base)
        loc = ctx.as_delta(ctx.broadcast_to(ins[k], shape))
        other = ctx.const_slice(ins[1 - k].value, loc.starts, loc.sizes, shape)
        patch = loc.patch * other if name == "mul" else loc.patch / other
        return ctx.make(out_base, loc.starts, loc.sizes, patch, True)
    return _elementwise(ctx, eqn, ins, out_base)


def _convert(ctx: _Ctx, eqn: _Eqn, ins: Sequence[Any], out_base: Any) -> Any:
    (loc,) = ins
    new = eqn.params["new_dtype"]
    if (
        loc.delta
        and _inexact(loc.dtype)
        and _inexact(new)
        and jnp.finfo(new).bits >= jnp.finfo(loc.dtype).bits
    ):
        return ctx.make(out_base, loc.starts, loc.sizes, _bind(eqn, [loc.patch]), True)
    return _elementwise(ctx, eqn, ins, out_base)


def _identity(ctx: _Ctx, eqn: _Eqn, ins: Sequence[Any], out_base: Any) -> Any:
    (loc,) = ins
    return ctx.make(out_base, loc.starts, loc.sizes, _bind(eqn, [loc.patch]), loc.delta)


def _reshape_groups(src: Sequence[int], dst: Sequence[int]) -> list | None:
    """Pairs (src axes, dst axes) of equal size; axes of size 1 left out."""
    if 0 in src or 0 in dst:
        return None
    ia = [a for a, n in enumerate(src) if n != 1]
    oa = [a for a, n in enumerate(dst) if n != 1]
    groups = []
    i = j = 0
    while i < len(ia) and j < len(oa):
        gi, go = [ia[i]], [oa[j]]
        pi, po = src[ia[i]], dst[oa[j]]
        i, j = i + 1, j + 1
        while pi != po:
            if pi < po:
                if i >= len(ia):
                    return None
                gi.append(ia[i])
                pi *= src[ia[i]]
                i += 1
            else:
                if j >= len(oa):
                    return None
                go.append(oa[j])
                po *= dst[oa[j]]
                j += 1
        groups.append((gi, go))
    if i != len(ia) or j != len(oa):
        return None
    return groups


def _reshape(ctx: _Ctx, eqn: _Eqn, ins: Sequence[Any], out_base: Any) -> Any:
    (loc,) = ins
    if eqn.params.get("dimensions") is not None:
        return None
    src, dst = loc.shape, tuple(eqn.out_avals[0].shape)
    groups = _reshape_groups(src, dst)
    if groups is None:
        return None

    def representable(gi: list[int], go: list[int]) -> bool:
        if all(loc.full(a) for a in gi) or (len(gi) == 1 and len(go) == 1):
            return True
        sizes = [loc.sizes[a] for a in gi]
        t = next((u for u, s in enumerate(sizes) if s != 1), len(gi) - 1)
        if not all(loc.full(a) for a in gi[t + 1 :]):
            return False
        flat = math.prod(sizes)
        return flat == 1 or len(go) == 1

    widen = [a for gi, go in groups if not representable(gi, go) for a in gi]
    loc = ctx.widen(loc, widen)
    starts: list[Any] = [0] * len(dst)
    sizes = list(dst)
    for gi, go in groups:
        if all(loc.full(a) for a in gi):
            continue
        if len(gi) == 1 and len(go) == 1:
            starts[go[0]], sizes[go[0]] = loc.starts[gi[0]], loc.sizes[gi[0]]
            continue
        flat_start: Any = 0
        for a in gi:
            flat_start = ctx.index(
                "muladd", lambda f, b, m=src[a]: f * m + b, flat_start, loc.starts[a]
            )
        flat_size = math.prod(loc.sizes[a] for a in gi)
        if len(go) == 1:
            starts[go[0]], sizes[go[0]] = flat_start, flat_size
        else:  # flat_size == 1: unravel
            rest = flat_start
            for a in reversed(go):
                starts[a], sizes[a] = ctx.index("rem", _rem, rest, dst[a]), 1
                rest = ctx.index("div", _div, rest, dst[a])
    patch = jnp.reshape(loc.patch, sizes)
    return ctx.make(out_base, starts, sizes, patch, loc.delta)


def _transpose(ctx: _Ctx, eqn: _Eqn, ins: Sequence[Any], out_base: Any) -> Any:
    (loc,) = ins
    perm = eqn.params["permutation"]
    return ctx.make(
        out_base,
        [loc.starts[p] for p in perm],
        [loc.sizes[p] for p in perm],
        jnp.transpose(loc.patch, perm),
        loc.delta,
    )


def _broadcast_in_dim(ctx: _Ctx, eqn: _Eqn, ins: Sequence[Any], out_base: Any) -> Any:
    loc = ins[0]
    if len(ins) != 1:  # dynamic shapes
        return None
    shape = tuple(eqn.params["shape"])
    dims = eqn.params["broadcast_dimensions"]
    starts: list[Any] = [0] * len(shape)
    sizes = list(shape)
    for d, o in enumerate(dims):
        if loc.shape[d] == shape[o]:
            starts[o], sizes[o] = loc.starts[d], loc.sizes[d]
    patch = lax.broadcast_in_dim(loc.patch, sizes, dims)
    return ctx.make(out_base, starts, sizes, patch, loc.delta)


def _squeeze(ctx: _Ctx, eqn: _Eqn, ins: Sequence[Any], out_base: Any) -> Any:
    (loc,) = ins
    dims = set(a % loc.ndim for a in eqn.params["dimensions"])
    keep = [a for a in range(loc.ndim) if a not in dims]
    return ctx.make(
        out_base,
        [loc.starts[a] for a in keep],
        [loc.sizes[a] for a in keep],
        jnp.reshape(loc.patch, [loc.sizes[a] for a in keep]),
        loc.delta,
    )


def _slice(ctx: _Ctx, eqn: _Eqn, ins: Sequence[Any], out_base: Any) -> Any:
    (loc,) = ins
    p = eqn.params
    lo, hi = p["start_indices"], p["limit_indices"]
    strides = p["strides"] or (1,) * loc.ndim
    # A window of one entry that may fall outside the slice: carried as a change
    # (zero when outside). Other partial windows are widened first.
    pinned = [a for a in range(loc.ndim) if not loc.full(a) and loc.sizes[a] == 1]
    if pinned and not _linear(loc.dtype):
        loc = ctx.widen(loc, pinned)
        pinned = []
    loc = ctx.widen(
        loc, [a for a in range(loc.ndim) if not loc.full(a) and loc.sizes[a] != 1]
    )
    if pinned:
        loc = ctx.as_delta(loc)
    out_shape = tuple(eqn.out_avals[0].shape)
    starts: list[Any] = [0] * loc.ndim
    sizes = list(out_shape)
    valid = None
    patch_lo, patch_hi, patch_st = [], [], []
    for a in range(loc.ndim):
        if a in pinned:
            s = loc.starts[a]
            ok = (s >= lo[a]) & (s < hi[a]) & ((s - lo[a]) % strides[a] == 0)
            valid = ok if valid is None else valid & ok
            starts[a] = ctx.index(
                "slice",
                lambda s, lo, st, n: jnp.clip((s - lo) // st, 0, n - 1),
                s, lo[a], strides[a], out_shape[a],
            )  # fmt: skip
            sizes[a] = 1
            patch_lo.append(0)
            patch_hi.append(1)
            patch_st.append(1)
        else:
            patch_lo.append(lo[a])
            patch_hi.append(hi[a])
            patch_st.append(strides[a])
    patch = lax.slice(loc.patch, patch_lo, patch_hi, patch_st)
    if valid is not None:
        patch = jnp.where(valid, patch, jnp.zeros_like(patch))
    return ctx.make(out_base, starts, sizes, patch, loc.delta)


def _join(ctx: _Ctx, ins: Sequence[Any], axis: int, out_base: _Ref) -> Any:
    """The concatenation of ``ins`` (``_Loc`` or ``_Const``) along ``axis``."""
    locs = [x for x in ins if isinstance(x, _Loc)]
    offsets = np.cumsum([0] + [_shape(x)[axis] for x in ins])
    if len(locs) == 1:
        k = next(k for k, x in enumerate(ins) if isinstance(x, _Loc))
        loc = ins[k]
        starts = list(loc.starts)
        starts[axis] = ctx.index("add", operator.add, starts[axis], int(offsets[k]))
        return ctx.make(out_base, starts, loc.sizes, loc.patch, loc.delta)
    delta = any(loc.delta for loc in locs) and _linear(out_base.dtype)
    locs = [ctx.widen(loc, [axis]) for loc in locs]
    locs = [ctx.as_delta(loc) if delta else loc for loc in locs]
    locs = ctx.align(locs, skip=[axis])
    ref = locs[0]
    it = iter(locs)
    parts = []
    for x in ins:
        if isinstance(x, _Loc):
            parts.append(next(it).patch)
        else:
            sizes = list(ref.sizes)
            sizes[axis] = np.shape(x.value)[axis]
            c = ctx.dslice(x.value, ref.starts, sizes)
            parts.append(jnp.zeros_like(c) if delta else c)
    patch = lax.concatenate(parts, axis)
    sizes = list(ref.sizes)
    sizes[axis] = int(offsets[-1])
    return ctx.make(out_base, ref.starts, sizes, patch, delta)


def _concatenate(ctx: _Ctx, eqn: _Eqn, ins: Sequence[Any], out_base: Any) -> Any:
    return _join(ctx, ins, eqn.params["dimension"], out_base)


def _expand(x: Any, axis: int) -> Any:
    """``x`` with a new axis of size 1 at ``axis``."""
    if isinstance(x, _Const):
        return _Const(jnp.expand_dims(x.value, axis))
    shape = x.shape[:axis] + (1,) + x.shape[axis:]
    ref = _Ref(lambda: jnp.expand_dims(x.base, axis), shape, x.dtype)
    return _Loc(
        ref,
        x.starts[:axis] + (0,) + x.starts[axis:],
        x.sizes[:axis] + (1,) + x.sizes[axis:],
        jnp.expand_dims(x.patch, axis),
        x.delta,
    )


def _stack(ctx: _Ctx, eqn: _Eqn, ins: Sequence[Any], out_base: Any) -> Any:
    axis = eqn.params["axis"]
    return _join(ctx, [_expand(x, axis) for x in ins], axis, out_base)


def _pad(ctx: _Ctx, eqn: _Eqn, ins: Sequence[Any], out_base: Any) -> Any:
    loc, pad_value = ins
    if not isinstance(pad_value, _Const):
        return None
    config = eqn.params["padding_config"]
    shiftable = [
        a
        for a, (lo, hi, interior) in enumerate(config)
        if not loc.full(a) and interior == 0 and lo >= 0 and hi >= 0
    ]
    loc = ctx.widen(
        loc, [a for a in range(loc.ndim) if not loc.full(a) and a not in shiftable]
    )
    out_shape = tuple(eqn.out_avals[0].shape)
    starts: list[Any] = [0] * loc.ndim
    sizes = list(out_shape)
    patch_config = []
    for a, (lo, hi, interior) in enumerate(config):
        if a in shiftable:
            starts[a] = ctx.index("add", operator.add, loc.starts[a], lo)
            sizes[a] = loc.sizes[a]
            patch_config.append((0, 0, 0))
        else:
            patch_config.append((lo, hi, interior))
    fill = jnp.zeros((), loc.patch.dtype) if loc.delta else pad_value.value
    patch = lax.pad(loc.patch, jnp.asarray(fill, loc.patch.dtype), patch_config)
    return ctx.make(out_base, starts, sizes, patch, loc.delta)


def _rev(ctx: _Ctx, eqn: _Eqn, ins: Sequence[Any], out_base: Any) -> Any:
    (loc,) = ins
    dims = eqn.params["dimensions"]
    starts = list(loc.starts)
    for a in dims:
        if not loc.full(a):
            starts[a] = ctx.index(
                "rev", lambda s, n: n - s, loc.starts[a], loc.shape[a] - loc.sizes[a]
            )
    return ctx.make(out_base, starts, loc.sizes, lax.rev(loc.patch, dims), loc.delta)


def _reduce_sum(ctx: _Ctx, eqn: _Eqn, ins: Sequence[Any], out_base: Any) -> Any:
    (loc,) = ins
    axes = tuple(eqn.params["axes"])
    if not _linear(loc.dtype):
        return _reduction(ctx, eqn, ins, out_base)
    keep = [a for a in range(loc.ndim) if a not in axes]
    patch = _bind(eqn, [ctx.deltas(loc)])
    return ctx.make(
        out_base,
        [loc.starts[a] for a in keep],
        [loc.sizes[a] for a in keep],
        patch,
        True,
    )


def _reduction(ctx: _Ctx, eqn: _Eqn, ins: Sequence[Any], out_base: Any) -> Any:
    (loc,) = ins
    axes = tuple(eqn.params["axes"])
    loc = ctx.widen(loc, axes)
    keep = [a for a in range(loc.ndim) if a not in axes]
    patch = _bind(eqn, [ctx.vals(loc)])
    return ctx.make(
        out_base,
        [loc.starts[a] for a in keep],
        [loc.sizes[a] for a in keep],
        patch,
        False,
    )


def _cumulative(ctx: _Ctx, eqn: _Eqn, ins: Sequence[Any], out_base: Any) -> Any:
    (loc,) = ins
    loc = ctx.widen(loc, [eqn.params["axis"]])
    patch = _bind(eqn, [ctx.vals(loc)])
    return ctx.make(out_base, loc.starts, loc.sizes, patch, False)


def _reduce_window(ctx: _Ctx, eqn: _Eqn, ins: Sequence[Any], out_base: Any) -> Any:
    (loc,) = ins
    p = eqn.params
    independent = [
        a
        for a in range(loc.ndim)
        if p["window_dimensions"][a] == 1
        and p["window_strides"][a] == 1
        and tuple(p["padding"][a]) == (0, 0)
        and p["base_dilation"][a] == 1
        and p["window_dilation"][a] == 1
    ]
    loc = ctx.widen(loc, [a for a in range(loc.ndim) if a not in independent])
    out_shape = tuple(eqn.out_avals[0].shape)
    patch = _bind(eqn, [ctx.vals(loc)])
    sizes = [
        loc.sizes[a] if a in independent else out_shape[a] for a in range(loc.ndim)
    ]
    starts = [loc.starts[a] if a in independent else 0 for a in range(loc.ndim)]
    return ctx.make(out_base, starts, sizes, patch, False)


def _dot_general(ctx: _Ctx, eqn: _Eqn, ins: Sequence[Any], out_base: Any) -> Any:
    lhs, rhs = ins
    if isinstance(lhs, _Loc) == isinstance(rhs, _Loc):
        return None  # bilinear in the perturbation
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    p_lhs = isinstance(lhs, _Loc)
    P, U = (lhs, rhs.value) if p_lhs else (rhs, lhs.value)
    if not _linear(P.dtype):
        return None
    pc, uc = (lc, rc) if p_lhs else (rc, lc)
    pb, ub = (lb, rb) if p_lhs else (rb, lb)
    u_starts: list[Any] = [0] * np.ndim(U)
    u_sizes = list(np.shape(U))
    for a, b in zip(tuple(pc) + tuple(pb), tuple(uc) + tuple(ub), strict=True):
        u_starts[b], u_sizes[b] = P.starts[a], P.sizes[a]
    u_win = ctx.dslice(U, u_starts, u_sizes)
    d = ctx.deltas(P)
    patch = _bind(eqn, [d, u_win] if p_lhs else [u_win, d])
    starts: list[Any] = [P.starts[a] for a in pb]
    sizes = [P.sizes[a] for a in pb]
    p_free = [a for a in range(P.ndim) if a not in pc and a not in pb]
    u_free = [b for b in range(np.ndim(U)) if b not in uc and b not in ub]
    p_part = ([P.starts[a] for a in p_free], [P.sizes[a] for a in p_free])
    u_part = ([0] * len(u_free), [np.shape(U)[b] for b in u_free])
    for part in (p_part, u_part) if p_lhs else (u_part, p_part):
        starts += part[0]
        sizes += part[1]
    return ctx.make(out_base, starts, sizes, patch, True)


def _conv(ctx: _Ctx, eqn: _Eqn, ins: Sequence[Any], out_base: Any) -> Any:
    lhs, rhs = ins
    p = eqn.params
    if p["feature_group_count"] != 1 or p["batch_group_count"] != 1:
        return None
    lhs_spec, rhs_spec, out_spec = p["dimension_numbers"]
    out_shape = tuple(eqn.out_avals[0].shape)
    if isinstance(rhs, _Loc) and isinstance(lhs, _Const):
        K = rhs
        if not _inexact(K.dtype):
            return None
        o_ax, i_ax, spatial = rhs_spec[0], rhs_spec[1], rhs_spec[2:]
        small = list(K.shape)
        small[o_ax], small[i_ax] = K.sizes[o_ax], K.sizes[i_ax]
        rel: list[Any] = [0] * K.ndim
        for s in spatial:
            rel[s] = K.starts[s]
        d = ctx.deltas(K)
        kernel = (
            d
            if tuple(small) == K.sizes
            else ctx.dupdate(jnp.zeros(small, d.dtype), d, rel)
        )
        x = lhs.value
        x_starts: list[Any] = [0] * np.ndim(x)
        x_sizes = list(np.shape(x))
        x_starts[lhs_spec[1]], x_sizes[lhs_spec[1]] = K.starts[i_ax], K.sizes[i_ax]
        patch = _bind(eqn, [ctx.dslice(x, x_starts, x_sizes), kernel])
        starts: list[Any] = [0] * len(out_shape)
        sizes = list(out_shape)
        starts[out_spec[1]], sizes[out_spec[1]] = K.starts[o_ax], K.sizes[o_ax]
        return ctx.make(out_base, starts, sizes, patch, True)
    if isinstance(lhs, _Loc) and isinstance(rhs, _Const):
        X = lhs
        if not _inexact(X.dtype):
            return None
        X = ctx.widen(X, lhs_spec[2:])
        w = rhs.value
        w_starts: list[Any] = [0] * np.ndim(w)
        w_sizes = list(np.shape(w))
        w_starts[rhs_spec[1]], w_sizes[rhs_spec[1]] = (
            X.starts[lhs_spec[1]],
            X.sizes[lhs_spec[1]],
        )
        patch = _bind(eqn, [ctx.deltas(X), ctx.dslice(w, w_starts, w_sizes)])
        starts = [0] * len(out_shape)
        sizes = list(out_shape)
        starts[out_spec[0]], sizes[out_spec[0]] = (
            X.starts[lhs_spec[0]],
            X.sizes[lhs_spec[0]],
        )
        return ctx.make(out_base, starts, sizes, patch, True)
    return None


def _gather(ctx: _Ctx, eqn: _Eqn, ins: Sequence[Any], out_base: Any) -> Any:
    op, idx = ins
    if (
        not isinstance(op, _Loc)
        or not isinstance(idx, _Const)
        or not _inexact(op.dtype)
    ):
        return None
    p = eqn.params
    dn = p["dimension_numbers"]
    slice_sizes = p["slice_sizes"]
    skipped = set(dn.collapsed_slice_dims) | set(dn.operand_batching_dims)
    offset_axes = [a for a in range(op.ndim) if a not in skipped]
    # Operand axes gathered whole: the output axis follows the operand axis.
    through = {
        a: o
        for a, o in zip(offset_axes, dn.offset_dims, strict=True)
        if slice_sizes[a] == op.shape[a]
    }
    other = [a for a in range(op.ndim) if a not in through]
    if any(op.sizes[a] != 1 for a in other):
        return None
    other_size = math.prod(op.shape[a] for a in other)
    if other_size >= 2**31:
        return None
    # Which entry of `other` every output element reads: a gather of an iota.
    code = jnp.zeros(op.shape, jnp.int32)
    target: Any = 0
    stride = 1
    for a in reversed(other):
        code = code + lax.broadcasted_iota(jnp.int32, op.shape, a) * stride
        target = target + jnp.asarray(op.starts[a], jnp.int32) * stride
        stride *= op.shape[a]
    params = dict(p)
    params["fill_value"] = (
        -1 if p["mode"] == lax.GatherScatterMode.FILL_OR_DROP else None
    )
    where = _bind(eqn, [code, idx.value], params)
    out_shape = tuple(eqn.out_avals[0].shape)
    starts: list[Any] = [0] * len(out_shape)
    sizes = list(out_shape)
    for a, o in through.items():
        starts[o], sizes[o] = op.starts[a], op.sizes[a]
    where = ctx.dslice(where, starts, sizes)
    order = sorted(through)
    d = jnp.reshape(ctx.deltas(op), [op.sizes[a] for a in order])
    d = lax.broadcast_in_dim(d, sizes, [through[a] for a in order])
    patch = jnp.where(where == target, d, jnp.zeros_like(d))
    return ctx.make(out_base, starts, sizes, patch, True)


_RULES: dict[str, Callable[..., Any]] = {
    "add": _linear_elementwise,
    "add_any": _linear_elementwise,
    "sub": _linear_elementwise,
    "neg": _linear_elementwise,
    "mul": _linear_elementwise,
    "div": _linear_elementwise,
    "convert_element_type": _convert,
    "stop_gradient": _identity,
    "copy": _identity,
    "copy_p": _identity,
    "reshape": _reshape,
    "transpose": _transpose,
    "broadcast_in_dim": _broadcast_in_dim,
    "squeeze": _squeeze,
    "slice": _slice,
    "concatenate": _concatenate,
    "stack": _stack,
    "pad": _pad,
    "rev": _rev,
    "reduce_sum": _reduce_sum,
    "dot_general": _dot_general,
    "conv_general_dilated": _conv,
    "gather": _gather,
}
for _name in _ELEMENTWISE:
    _RULES.setdefault(_name, _elementwise)
for _name in _REDUCTIONS:
    _RULES[_name] = _reduction
for _name in _CUMULATIVE:
    _RULES[_name] = _cumulative
for _name in _REDUCE_WINDOW:
    _RULES[_name] = _reduce_window

_LINEAR = frozenset(
    "dot_general conv_general_dilated gather reduce_sum add add_any sub neg mul "
    "div".split()
)

# --------------------------------------------------------------------------------
# The interpreter for one (coordinate, sign).


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


def _interpret(
    prog: _Program,
    base: _Base,
    dep: frozenset[int],
    leaves: dict[int, _Loc],
    ctx: _Ctx,
) -> list[Any]:
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
        if isinstance(s, _Const):
            return s.value
        if isinstance(s, _Dense):
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
                n = math.prod(out.sizes)
                log.steps.append(
                    _Step(
                        "propagated",
                        _describe(eqn),
                        out.shape,
                        str(out.dtype),
                        out.sizes,
                        _propagated_work(eqn, ins, n),
                        n * _itemsize(out.dtype),
                    )  # fmt: skip
                )
            continue
        if log is not None:
            for a, x in zip(eqn.ins, ins, strict=True):
                if isinstance(x, _Loc) and a not in dense_cache:
                    n = math.prod(x.shape)
                    log.steps.append(
                        _Step(
                            "materialized",
                            _describe(eqn),
                            x.shape,
                            str(x.dtype),
                            x.shape,
                            n,
                            n * _itemsize(x.dtype),
                        )  # fmt: skip
                    )
        args = [full_value(a) for a in eqn.ins]
        res = _bind(eqn, args)
        res = list(res) if eqn.prim.multiple_results else [res]
        for o, r in zip(eqn.outs, res, strict=True):
            env[o] = _Dense(r)
        if log is not None:
            shapes = [np.shape(v) for v in args]
            for aval in eqn.out_avals:
                n = math.prod(aval.shape)
                log.steps.append(
                    _Step(
                        "dense",
                        _describe(eqn),
                        tuple(aval.shape),
                        str(aval.dtype),
                        tuple(aval.shape),
                        _work(eqn, n, shapes),
                        n * _itemsize(aval.dtype),
                    )  # fmt: skip
                )
    outs = []
    for a in prog.outs:
        s = state(a)
        if isinstance(s, _Loc) and log is not None and a not in dense_cache:
            n = math.prod(s.shape)
            log.steps.append(
                _Step(
                    "materialized",
                    "output",
                    s.shape,
                    str(s.dtype),
                    s.shape,
                    n,
                    n * _itemsize(s.dtype),
                )  # fmt: skip
            )
        outs.append(full_value(a))
    return outs


def _uses_pair(fn: Any, num_offsets: int) -> bool:
    """Whether the engine evaluates ``fn.pair`` for rows of 2 offsets (a winner
    tracker: values, words, and the decisions that changed between the two)."""
    return num_offsets == 2 and callable(getattr(fn, "pair", None))


def _evaluator(
    fn: engine.LeafFunction,
    x_flat: jax.Array,
    dyn_params: Sequence[Any],
    dyn_args: Sequence[Any],
    idx_dtype: Any,
    log: _Log | None,
    pair: bool = False,
) -> Callable[[jax.Array, jax.Array], Any]:
    """``at(i, v)``: ``f`` with ``x[i]`` set to each of the values ``v`` (K,),
    stacked along a new leading axis of every output; with ``pair``,
    ``fn.pair`` at the two values ``v`` (2,)."""
    prog = _program(fn, x_flat, dyn_params, dyn_args, pair)
    leaves = [x_flat, x_flat] if pair else [x_flat]
    base = _Base(prog, [*leaves, *dyn_params, *dyn_args])
    if log is None:
        # Compute once, outside the loop over chunks, what the interpretation
        # will ask for (the planning run recorded it).
        plan = _plan(fn, x_flat, dyn_params, dyn_args, pair)
        base.compute(sorted(plan.base_ids))
    else:
        log.bases.append(base)
    roots = prog.in_ids[: len(leaves)]
    dep = prog.dependent(*roots)
    ctx = _Ctx(idx_dtype, log)
    leaf_ref = _value_ref(x_flat)

    def loc(i: jax.Array, v: jax.Array) -> _Loc:
        return _Loc(leaf_ref, (i,), (1,), jnp.reshape(v, (1,)), False)

    def at(i: jax.Array, vals: jax.Array) -> Any:
        if pair:
            start = {r: loc(i, vals[k]) for k, r in enumerate(roots)}
            outs = _interpret(prog, base, dep, start, ctx)
            return jax.tree_util.tree_unflatten(prog.out_tree, outs)

        def single(v: jax.Array) -> Any:
            outs = _interpret(prog, base, dep, {roots[0]: loc(i, v)}, ctx)
            return jax.tree_util.tree_unflatten(prog.out_tree, outs)

        return jax.vmap(single)(vals)

    return at


def row_evaluator(
    fn: Any,
    x_flat: jax.Array,
    dyn_params: Sequence[Any],
    dyn_args: Sequence[Any],
    *,
    pair: bool = False,
) -> Callable[[jax.Array, jax.Array], Any]:
    """``at(i, vals)``: ``f`` with ``x[i]`` set to each value of ``vals`` (shape
    ``(K,)``), stacked; with ``pair``, ``fn.pair`` at the two values (a winner
    tracker: values, words and the decisions that changed). By perturbation
    propagation where the plan applies, else by the plain evaluation of ``f``
    at a perturbed copy of the leaf. Call it inside :func:`jax.vmap` over rows.

    Args:
      fn: the function of the flattened leaf (hashable), or a winner tracker.
      x_flat: the leaf, flattened (may be a tracer).
      dyn_params: the dynamic parameter leaves.
      dyn_args: the dynamic argument leaves.
      pair: evaluate ``fn.pair`` at two values per row.

    Returns:
      the function ``at``.

    Examples:
      >>> import jax.tree_util as jtu
      >>> fn = engine.LeafFunction(lambda p, x: jnp.sum(jnp.tanh(x @ p)),
      ...                          jtu.tree_structure(0.0), 1, {},
      ...                          jtu.tree_structure((0.0,)), 1, {}, 0, (8, 4))
      >>> w, x = jnp.ones((8, 4)) / 8, jnp.ones((3, 8))
      >>> at = row_evaluator(fn, w.reshape(-1), [w], [x])
      >>> at(jnp.int32(5), jnp.array([0.125, 0.5])).shape
      (2,)
    """
    if not _plan(fn, x_flat, dyn_params, dyn_args, pair).applicable:

        def dense(i: jax.Array, vals: jax.Array) -> Any:
            if pair:
                return fn.pair(
                    x_flat.at[i].set(vals[0]), x_flat.at[i].set(vals[1]),
                    dyn_params, dyn_args,
                )  # fmt: skip
            outs = [
                fn(x_flat.at[i].set(vals[k]), dyn_params, dyn_args)
                for k in range(vals.shape[0])
            ]
            return jnp.stack(outs)

        return dense
    idx_dtype = np.int32 if np.size(x_flat) < 2**31 else np.int64
    return _evaluator(fn, x_flat, dyn_params, dyn_args, idx_dtype, None, pair)


def _run_block(
    fn: engine.LeafFunction,
    x_flat: jax.Array,
    idx_block: jax.Array,
    step: jax.Array,
    dyn_params: Sequence[Any],
    dyn_args: Sequence[Any],
    log: _Log | None = None,
) -> tuple[jax.Array, jax.Array]:
    at = _evaluator(fn, x_flat, dyn_params, dyn_args, idx_block.dtype, log)
    step_block = jnp.broadcast_to(jnp.asarray(step, x_flat.dtype), idx_block.shape)

    def one(i: jax.Array, h: jax.Array) -> tuple[jax.Array, jax.Array]:
        xi = x_flat[i]
        out = at(i, jnp.stack([xi + h, xi - h]))
        if not isinstance(out, jax.Array):
            raise TypeError(f"`f` must return one array, got {type(out).__name__}.")
        return out[0], out[1]

    return jax.lax.map(lambda blk: jax.vmap(one)(*blk), (idx_block, step_block))


def _run_eval(
    fn: engine.LeafFunction,
    x_flat: jax.Array,
    idx_block: jax.Array,
    delta_block: jax.Array,
    dyn_params: Sequence[Any],
    dyn_args: Sequence[Any],
    log: _Log | None = None,
) -> Any:
    pair = _uses_pair(fn, delta_block.shape[-1])
    if log is None and not _plan(fn, x_flat, dyn_params, dyn_args, pair).applicable:
        # This form of the evaluation gains nothing: the plain engine's.
        return engine._eval_block(
            fn, x_flat, idx_block, delta_block, dyn_params, dyn_args
        )
    at = _evaluator(fn, x_flat, dyn_params, dyn_args, idx_block.dtype, log, pair)

    def one(i: jax.Array, d: jax.Array) -> Any:
        return at(i, x_flat[i] + d)

    return jax.lax.map(lambda blk: jax.vmap(one)(*blk), (idx_block, delta_block))


def propagated_block(
    fn: engine.LeafFunction,
    x_flat: jax.Array,
    idx_block: jax.Array,
    step: jax.Array,
    dyn_params: Sequence[Any],
    dyn_args: Sequence[Any],
) -> tuple[jax.Array, jax.Array]:
    """``f(x ± h e_i)`` by perturbation propagation; same contract as
    :func:`jaxcheck.engine._block`.

    Args:
      fn: the function of the flattened leaf (static under :func:`jax.jit`).
      x_flat: the leaf, flattened.
      idx_block: flat coordinate indices, shape ``(num_chunks, chunk)``.
      step: the step ``h``: a scalar, or one step per coordinate (the shape of
        ``idx_block``).
      dyn_params: the dynamic parameter leaves.
      dyn_args: the dynamic argument leaves.

    Returns:
      ``(f_plus, f_minus)``, each of shape ``(num_chunks, chunk)``.

    Examples:
      >>> import jax.tree_util as jtu
      >>> fn = engine.LeafFunction(lambda p, x: jnp.sum(jnp.tanh(x @ p)),
      ...                          jtu.tree_structure(0.0), 1, {},
      ...                          jtu.tree_structure((0.0,)), 1, {}, 0, (2, 2))
      >>> w, x = jnp.eye(2).reshape(-1), jnp.ones((3, 2))
      >>> fp, fm = propagated_block(fn, w, jnp.arange(4).reshape(1, 4), 0.5,
      ...                           [w.reshape(2, 2)], [x])
      >>> fp.shape
      (1, 4)
    """
    return _run_block(fn, x_flat, idx_block, step, dyn_params, dyn_args)


_propagated_block_jit = jax.jit(propagated_block, static_argnums=0)


def propagated_eval_block(
    fn: engine.LeafFunction,
    x_flat: jax.Array,
    idx_block: jax.Array,
    delta_block: jax.Array,
    dyn_params: Sequence[Any],
    dyn_args: Sequence[Any],
) -> jax.Array:
    """``f(x + delta[r, k] e_{idx[r]})`` by perturbation propagation; same
    contract as ``jaxcheck.engine._eval_block`` for a scalar ``f``.

    Args:
      fn: the function of the flattened leaf (static under :func:`jax.jit`).
      x_flat: the leaf, flattened.
      idx_block: flat coordinate indices, shape ``(num_chunks, chunk)``.
      delta_block: offsets added to the coordinate, ``(num_chunks, chunk, K)``.
      dyn_params: the dynamic parameter leaves.
      dyn_args: the dynamic argument leaves.

    Returns:
      the values, shape ``(num_chunks, chunk, K)``.

    Examples:
      >>> import jax.tree_util as jtu
      >>> fn = engine.LeafFunction(lambda p: jnp.sum(p ** 3), jtu.tree_structure(0.0),
      ...                          1, {}, jtu.tree_structure(()), 0, {}, 0, (2,))
      >>> x = jnp.array([1.0, 2.0])
      >>> v = propagated_eval_block(fn, x, jnp.array([[0, 1]]),
      ...                           jnp.array([[[0.0, 1.0], [0.0, -1.0]]]), [x], [])
      >>> v.tolist()  # f(x), f(x + e_0); f(x), f(x - e_1)
      [[[9.0, 16.0], [9.0, 2.0]]]
    """
    return _run_eval(fn, x_flat, idx_block, delta_block, dyn_params, dyn_args)


_propagated_eval_block_jit = jax.jit(propagated_eval_block, static_argnums=0)

# --------------------------------------------------------------------------------
# Planning: whether propagation pays off, and what it does.


@dataclasses.dataclass(frozen=True)
class _Plan:
    applicable: bool
    reason: str
    steps: tuple[_Step, ...] = ()
    leaf: str = ""
    work: int = 0  # per coordinate and sign, propagated
    dense_work: int = 0  # per coordinate and sign, plain engine
    nbytes: int = 0  # per coordinate (both signs), propagated
    base_ids: frozenset = frozenset()  # unperturbed values the interpretation uses
    single_output: bool = True  # f returns one array (else only the evaluator)


def _dense_work(prog: _Program, dep: frozenset[int], copies: int = 1) -> int:
    total = copies * math.prod(prog.avals[prog.in_ids[0]].shape)  # perturbed copies
    for eqn in prog.eqns:
        if not any(isinstance(a, int) and a in dep for a in eqn.ins):
            continue
        shapes = [
            tuple(np.shape(a.value))
            if isinstance(a, _Lit)
            else tuple(prog.avals[a].shape)
            for a in eqn.ins
        ]
        for aval in eqn.out_avals:
            total += _work(eqn, math.prod(aval.shape), shapes)
    return total


def _analyse(
    fn: engine.LeafFunction, x_flat, dyn_params, dyn_args, pair=False
) -> _Plan:
    dtype = _dtype(x_flat)
    n = int(np.size(x_flat))
    inner = getattr(fn, "fn", fn)  # a winner tracker wraps the leaf function
    shape = getattr(fn, "leaf_shape", getattr(inner, "leaf_shape", (n,)))
    leaf = f"{dtype}[{','.join(map(str, shape))}]"
    if getattr(fn, "leaf_pos", getattr(inner, "leaf_pos", 0)) is None:
        return _Plan(False, "no leaf is perturbed", leaf=leaf)
    if not _inexact(dtype):
        return _Plan(False, f"the leaf is {dtype}, not floating point", leaf=leaf)
    log = _Log()
    idx = jax.ShapeDtypeStruct((1, 1), np.int32 if n < 2**31 else np.int64)
    try:
        jax.eval_shape(
            functools.partial(_run_eval, fn, log=log),
            _sds(x_flat),
            idx,
            jax.ShapeDtypeStruct((1, 1, 2 if pair else 1), dtype),
            [_sds(v) for v in dyn_params],
            [_sds(v) for v in dyn_args],
        )
        prog = _program(fn, x_flat, dyn_params, dyn_args, pair)
    except Exception as e:  # noqa: BLE001 - any failure means: use the dense path
        return _Plan(False, f"tracing failed ({type(e).__name__}: {e})", leaf=leaf)
    dep = prog.dependent(*prog.in_ids[: 2 if pair else 1])
    dense = _dense_work(prog, dep, 2 if pair else 1)
    steps = tuple(log.steps)
    work = sum(s.work for s in steps)
    nbytes = 2 * sum(s.nbytes for s in steps)
    base_ids = frozenset(log.bases[-1].accessed) if log.bases else frozenset()
    single = prog.out_tree is not None and prog.out_tree.num_leaves == 1
    details = (steps, leaf, work, dense, nbytes, base_ids, single)
    if not any(
        s.kind == "propagated" and s.eqn.split("/")[-1] in _LINEAR for s in steps
    ):
        first = next((s for s in steps if s.kind == "materialized"), None)
        where = f" (`{first.eqn}` consumes it)" if first else ""
        return _Plan(
            False, f"no linear consumer of the leaf is covered{where}", *details
        )
    if work > MIN_GAIN * dense:
        reason = (
            f"no benefit: estimated work per coordinate {work:,} vs {dense:,} dense"
        )
        return _Plan(False, reason, *details)
    return _Plan(True, "", *details)


def _plan(fn: engine.LeafFunction, x_flat, dyn_params, dyn_args, pair=False) -> _Plan:
    sig = _signature(x_flat, dyn_params, dyn_args)
    try:
        return _plan_cached(fn, sig, x_flat, dyn_params, dyn_args, pair)
    except TypeError:  # unhashable
        return _analyse(fn, x_flat, dyn_params, dyn_args, pair)


_PLANS: dict[Any, _Plan] = {}


def _plan_cached(fn, sig, x_flat, dyn_params, dyn_args, pair) -> _Plan:
    key = (fn, sig, pair)
    plan = _PLANS.get(key)
    if plan is None:
        plan = _analyse(fn, x_flat, dyn_params, dyn_args, pair)
        if len(_PLANS) > 256:
            _PLANS.clear()
        _PLANS[key] = plan
    return plan


def _too_small(plan: _Plan, num_coords: int | None) -> bool:
    return num_coords is not None and num_coords * plan.dense_work < MIN_DENSE_WORK


def make_propagated_block(
    fn: engine.LeafFunction,
    x_flat: jax.Array,
    dyn_params: Sequence[Any],
    dyn_args: Sequence[Any],
    *,
    num_coords: int | None = None,
) -> Callable[..., tuple[jax.Array, jax.Array]] | None:
    """A compiled evaluator of ``f(x ± h e_i)`` by perturbation propagation, or
    ``None`` where it does not apply or would not pay off.

    The returned ``block(x_flat, idx_block, step, dyn_params, dyn_args)`` has
    the semantics of :func:`jaxcheck.engine._block` (``idx_block`` of shape
    ``(num_chunks, chunk)``; outputs of that shape). It is already jitted, with
    ``fn`` static, so compilations are cached per function and shapes; wrapping
    it in :func:`jax.jit` again is harmless.

    Args:
      fn: the function of the flattened leaf.
      x_flat: the leaf, flattened (only its shape and dtype are used).
      dyn_params: the dynamic parameter leaves (shapes and dtypes used).
      dyn_args: the dynamic argument leaves (shapes and dtypes used).
      num_coords: how many coordinates the caller will evaluate; when given, a
        leaf whose dense evaluation is cheap anyway (below
        :data:`MIN_DENSE_WORK` in total) is declined: a second compilation would
        cost more than it saves.

    Returns:
      the block function, or ``None``: then use the dense path.
      :func:`propagation_plan` says why.

    Examples:
      >>> import jax.tree_util as jtu
      >>> fn = engine.LeafFunction(lambda p, x: jnp.sum(jnp.tanh(x @ p)),
      ...                          jtu.tree_structure(0.0), 1, {},
      ...                          jtu.tree_structure((0.0,)), 1, {}, 0, (8, 4))
      >>> w, x = jnp.ones((8, 4)) / 8, jnp.ones((3, 8))
      >>> block = make_propagated_block(fn, w.reshape(-1), [w], [x])
      >>> fp, fm = block(w.reshape(-1), jnp.arange(32).reshape(4, 8), 1e-3, [w], [x])
      >>> fp.shape
      (4, 8)
    """
    plan = _plan(fn, x_flat, dyn_params, dyn_args)
    if not plan.applicable or not plan.single_output or _too_small(plan, num_coords):
        return None
    return _Bound(_propagated_block_jit, fn)


def make_propagated_evaluator(
    fn: engine.LeafFunction,
    x_flat: jax.Array,
    dyn_params: Sequence[Any],
    dyn_args: Sequence[Any],
    *,
    num_coords: int | None = None,
) -> Callable[..., jax.Array] | None:
    """Like :func:`make_propagated_block`, for the general form
    ``evaluate(x_flat, idx_block, delta_block, dyn_params, dyn_args)`` of
    ``jaxcheck.engine._eval_block`` (``K`` offsets per coordinate).

    ``fn`` may return any pytree of arrays, e.g. a winner tracker's
    ``(value, words)``: the outputs are stacked like ``_eval_block`` stacks
    them. For a ``fn`` with a ``pair`` method (:class:`jaxcheck.kinks.WinnerTracker`)
    and rows of 2 offsets, ``fn.pair`` at both points is propagated at once, as
    ``_eval_block`` evaluates it. Integer outputs (the uint32 decision words)
    come out bit-identical: the words are modular sums, updated by the change in
    the window only.

    Args:
      fn: the function of the flattened leaf, or a winner tracker of it.
      x_flat: the leaf, flattened (only its shape and dtype are used).
      dyn_params: the dynamic parameter leaves (shapes and dtypes used).
      dyn_args: the dynamic argument leaves (shapes and dtypes used).
      num_coords: as in :func:`make_propagated_block`.

    Returns:
      the evaluator (already jitted), or ``None``: then use the dense path.

    Examples:
      >>> import jax.tree_util as jtu
      >>> fn = engine.LeafFunction(lambda p, x: jnp.sum(jnp.tanh(x @ p)),
      ...                          jtu.tree_structure(0.0), 1, {},
      ...                          jtu.tree_structure((0.0,)), 1, {}, 0, (8, 4))
      >>> w, x = jnp.ones((8, 4)) / 8, jnp.ones((3, 8))
      >>> ev = make_propagated_evaluator(fn, w.reshape(-1), [w], [x])
      >>> ev(w.reshape(-1), jnp.zeros((1, 2), jnp.int32), jnp.zeros((1, 2, 3)),
      ...    [w], [x]).shape
      (1, 2, 3)
    """
    plans = [_plan(fn, x_flat, dyn_params, dyn_args)]
    if _uses_pair(fn, 2):
        plans.append(_plan(fn, x_flat, dyn_params, dyn_args, True))
    if not any(p.applicable and not _too_small(p, num_coords) for p in plans):
        return None
    # A form of the call whose plan does not apply runs the plain engine inside.
    return _Bound(_propagated_eval_block_jit, fn)


class _Bound:
    """``jitted(fn, *args)`` with ``fn`` bound; equal (and hashing equal) when
    ``fn`` is, so it can itself be a static argument of :func:`jax.jit`."""

    def __init__(self, jitted: Callable[..., Any], fn: engine.LeafFunction):
        self.jitted = jitted
        self.fn = fn

    def __call__(self, *args: Any) -> Any:
        return self.jitted(self.fn, *args)

    def __hash__(self) -> int:
        return hash((id(self.jitted), self.fn))

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, _Bound)
            and self.jitted is other.jitted
            and self.fn == other.fn
        )

    def __repr__(self) -> str:
        return f"<propagated {self.jitted.__name__} of {self.fn!r}>"


def bytes_per_coordinate(
    fn: engine.LeafFunction,
    x_flat: jax.Array,
    dyn_params: Sequence[Any],
    dyn_args: Sequence[Any],
) -> int:
    """Estimated bytes that one coordinate (both signs) needs on the propagated
    path: the windows of the propagated values, the values materialized from
    them, and every value computed after (an upper bound, like
    :func:`jaxcheck.engine.bytes_per_coordinate` for the dense path).

    Falls back to the dense estimate where propagation does not apply.

    Examples:
      >>> import jax.tree_util as jtu
      >>> fn = engine.LeafFunction(lambda p, x: jnp.sum(jnp.tanh(x @ p)),
      ...                          jtu.tree_structure(0.0), 1, {},
      ...                          jtu.tree_structure((0.0,)), 1, {}, 0, (100, 50))
      >>> w, x = jnp.ones((100, 50)), jnp.ones((16, 100))
      >>> args = (w.reshape(-1), [w], [x])
      >>> bytes_per_coordinate(fn, *args) < engine.bytes_per_coordinate(fn, *args)
      True
    """
    plan = _plan(fn, x_flat, dyn_params, dyn_args, _uses_pair(fn, 2))
    if not plan.applicable:
        return engine.bytes_per_coordinate(fn, x_flat, dyn_params, dyn_args)
    return max(int(plan.nbytes), 8)


def _fmt_shape(dtype: str, shape: Sequence[int]) -> str:
    return f"{dtype}[{','.join(map(str, shape))}]"


def propagation_plan(
    fn: engine.LeafFunction,
    x_flat: jax.Array,
    dyn_params: Sequence[Any],
    dyn_args: Sequence[Any],
    *,
    num_coords: int | None = None,
) -> str:
    """What perturbation propagation does for this leaf, for the report.

    Lists the operations that carry the perturbation as a window (with the
    window's size against the full shape), where the dense path starts (the
    values materialized, and the operation that needed them), and the
    estimated work per coordinate against the plain engine; or why propagation
    does not apply. For a winner tracker, the plan of ``fn.pair`` (both points
    of a row at once). ``num_coords`` as in :func:`make_propagated_block`.

    Examples:
      >>> import jax.tree_util as jtu
      >>> fn = engine.LeafFunction(lambda p, x: jnp.sum(jnp.tanh(x @ p)),
      ...                          jtu.tree_structure(0.0), 1, {},
      ...                          jtu.tree_structure((0.0,)), 1, {}, 0, (8, 4))
      >>> w, x = jnp.ones((8, 4), jnp.float32), jnp.ones((3, 8), jnp.float32)
      >>> print(propagation_plan(fn, w.reshape(-1), [w], [x]))
      propagated: leaf float32[8,4]
        reshape     -> float32[8,4]  window [1,1]
        dot_general -> float32[3,4]  window [3,1]
        tanh        -> float32[3,4]  window [3,1]
        reduce_sum  -> float32[]  window [whole]
        output: float32[] materialized
      estimated work per coordinate: 9 (0.052x of the dense path's 173)
    """
    plan = _plan(fn, x_flat, dyn_params, dyn_args, _uses_pair(fn, 2))
    reason = plan.reason
    applicable = plan.applicable
    if applicable and _too_small(plan, num_coords):
        applicable = False
        reason = (
            f"too small: {num_coords:,} coordinates x {plan.dense_work:,} dense work "
            f"< {MIN_DENSE_WORK:.0e} in all, less than a second compilation costs"
        )
    head = "propagated" if applicable else "not propagated"
    lines = [f"{head}: leaf {plan.leaf}" + ("" if applicable else f": {reason}")]
    shown = [
        (k, s)
        for k, s in enumerate(plan.steps)
        if s.kind == "propagated"
        and not (
            s.window == s.shape
            and k > 0
            and plan.steps[k - 1].kind == "propagated"
            and plan.steps[k - 1].window == plan.steps[k - 1].shape
        )
    ]
    width = max([len(s.eqn) for _, s in shown] + [10])
    shown_ids = {k for k, _ in shown}
    num_dense = num_whole = 0
    for k, s in enumerate(plan.steps):
        if s.kind == "propagated" and k in shown_ids:
            if num_whole:
                lines.append(f"  ... {num_whole} more on the whole value")
                num_whole = 0
            win = "whole" if s.window == s.shape else ",".join(map(str, s.window))
            lines.append(
                f"  {s.eqn:<{width}} -> {_fmt_shape(s.dtype, s.shape)}  window [{win}]"
            )
        elif s.kind == "propagated":
            num_whole += 1
        elif s.kind == "materialized":
            if num_whole:
                lines.append(f"  ... {num_whole} more on the whole value")
                num_whole = 0
            what = "output" if s.eqn == "output" else f"dense from `{s.eqn}`"
            lines.append(f"  {what}: {_fmt_shape(s.dtype, s.shape)} materialized")
        else:
            num_dense += 1
    if num_whole:
        lines.append(f"  ... {num_whole} more on the whole value")
    if num_dense:
        lines.append(f"  then {num_dense} operation(s) on full values, per coordinate")
    if plan.dense_work:
        ratio = plan.work / plan.dense_work
        lines.append(
            f"estimated work per coordinate: {plan.work:,} "
            f"({ratio:.3g}x of the dense path's {plan.dense_work:,})"
        )
    return "\n".join(lines)
