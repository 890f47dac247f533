"""Kink tracking: ``f`` evaluated with every decision it makes about the
checked parameters folded into one ``uint32`` word per decision site.

A :class:`~jaxcheck.interpret.Walker` whose values are ``(array, depends)``
pairs; a live decision site (see :mod:`jaxcheck.kinks`) emits the word of its
decision, a loop or branch body is re-run instrumented (its sites' words fold
every iteration).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ..interpret import (
    Walker,
    bind_eqn,
    call_jaxpr,
    location,
    run_scan,
    run_while,
    scan_operands,
    while_operands,
)
from .facts import Frame, _enters, _join, _site_kind
from .sites import Site

_U32 = jnp.uint32
_FNV_PRIME = np.uint32(16777619)


def _fnv(acc: jax.Array, words: jax.Array) -> jax.Array:
    """One iteration's words folded into the words of the previous ones."""
    return acc * _FNV_PRIME + words


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


def _reduce_extremum(eqn: Any, ins: list, outs: list) -> jax.Array:
    x, out = ins[0], outs[0]
    axes = tuple(eqn.params["axes"])
    kept = tuple(i for i in range(x.ndim) if i not in axes)
    return jnp.equal(x, lax.broadcast_in_dim(out, x.shape, kept))


def _window_winners(eqn: Any, ins: list, outs: list) -> jax.Array:
    """The winner of every window: the tangent of a pseudo-random input
    tangent, which is the winner's entry."""
    x = ins[0]
    bits = 20 if jnp.dtype(x.dtype).itemsize >= 4 else 8
    t = (_weights(tuple(x.shape), 7) >> np.uint32(32 - bits)).astype(x.dtype)
    params = dict(eqn.params)
    _, t_out = jax.jvp(lambda v: eqn.primitive.bind(v, **params), (x,), (t,))
    return t_out.astype(jnp.int32)


def _clamp_region(eqn: Any, ins: list, outs: list) -> jax.Array:
    lo, x, hi = ins
    below = jnp.less(x, lo).astype(jnp.int8)
    return below + 2 * jnp.greater(x, hi).astype(jnp.int8)


#: The decision of a tracked primitive, ``decide(eqn, ins, outs) -> array``;
#: any other (comparisons, sign, floor / ceil / round, casts, argmax /
#: argmin) decides its output. ``sort`` is bound with an iota to see its
#: permutation (:meth:`_Evaluator._sort`).
_DECISIONS: dict[str, Callable[[Any, list, list], jax.Array]] = {
    "max": lambda eqn, ins, outs: jnp.greater(ins[0], ins[1]),
    "min": lambda eqn, ins, outs: jnp.less(ins[0], ins[1]),
    "abs": lambda eqn, ins, outs: jnp.greater_equal(ins[0], 0),
    "clamp": _clamp_region,
    "select_n": lambda eqn, ins, outs: ins[0],
    "rem": lambda eqn, ins, outs: jnp.round((ins[0] - outs[0]) / ins[1]),
    "reduce_max": _reduce_extremum,
    "reduce_min": _reduce_extremum,
    "cummax": lambda eqn, ins, outs: jnp.equal(ins[0], outs[0]),
    "cummin": lambda eqn, ins, outs: jnp.equal(ins[0], outs[0]),
    "reduce_window_max": _window_winners,
    "reduce_window_min": _window_winners,
    "top_k": lambda eqn, ins, outs: outs[1],
}


def _decision(name: str, eqn: Any, ins: list, outs: list) -> jax.Array:
    """The decision an equation made, as an array to fold."""
    decide = _DECISIONS.get(name)
    return outs[0] if decide is None else decide(eqn, ins, outs)


class _Evaluator(Walker):
    """Evaluates a jaxpr like ``jax.core.eval_jaxpr`` and collects one uint32
    word per decision site (in ``self.words``, described by ``self.sites``).

    Its values are ``(array, depends)`` pairs: whether the array depends on
    the perturbed inputs. Only live equations (see :class:`Frame`) are looked
    into; the others are bound as they are.
    """

    def __init__(self) -> None:
        self.sites: list[Site] = []
        self.words: list[jax.Array] = []
        self.decisions: list[jax.Array | None] = []
        self.out_flags: list[tuple] = []

    def literal(self, value: Any) -> tuple[Any, bool]:
        return (value, False)

    def constant(self, value: Any) -> tuple[Any, bool]:
        return (value, False)

    def _emit(self, site: Site, decision: jax.Array) -> None:
        self.words.append(fold(decision, salt=len(self.sites)))
        self.decisions.append(decision)
        self.sites.append(site)

    def _emit_nested(self, site: Site, word: jax.Array) -> None:
        """A site inside a loop or branch body: only its folded word is known."""
        self.words.append(word)
        self.decisions.append(None)
        self.sites.append(site)

    def evaluate(
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
        """The outputs of ``jaxpr`` on ``args`` (``dep_in``: which depend on the
        perturbed inputs; ``out_rel``: which outputs matter)."""
        frame = Frame(jaxpr, out_rel, ctx, within, loc, in_flags)
        outs = self.run(jaxpr, consts, list(zip(args, dep_in, strict=True)), frame)
        frame.finish(jaxpr)
        self.out_flags = frame.out_flags
        return [v for v, _ in outs]

    def equation(self, eqn: Any, ins: list, frame: Frame) -> list:
        depends = any(d for _, d in ins)
        frame.tracked = False
        if frame.live(eqn, depends):
            frame.where = location(eqn, frame.loc)
            outs = super().equation(eqn, ins, frame)
        else:
            outs = bind_eqn(eqn, [v for v, _ in ins])
        frame.facts.update(eqn, frame.tracked)
        return [(o, depends) for o in outs]

    def enters(self, eqn: Any, ins: list, frame: Frame) -> bool:
        return _enters(eqn)

    def call(self, eqn: Any, ins: list, frame: Frame) -> list:
        inner, consts = call_jaxpr(eqn)
        sub = frame.enter(eqn, inner)
        outs = self.run(inner, consts, ins, sub)
        sub.finish(inner)
        frame.facts.seed(eqn.outvars, sub.out_flags)
        return [v for v, _ in outs]

    def default(self, eqn: Any, ins: list, frame: Frame) -> list:
        """A primitive; a tracked site emits its decision."""
        vals = [v for v, _ in ins]
        frame.tracked = _site_kind(eqn, [d for _, d in ins], frame.facts)
        if not frame.tracked:
            return bind_eqn(eqn, vals)
        name = eqn.primitive.name
        site = Site(
            name, frame.ctx, frame.where, tuple(np.shape(vals[0])), frame.within,
            str(eqn.outvars[0].aval.dtype),
        )  # fmt: skip
        if name == "sort":
            return self._sort(eqn, vals, site)
        outs = bind_eqn(eqn, vals)
        self._emit(site, _decision(name, eqn, vals, outs))
        return outs

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
            outs = ev.evaluate(
                jaxpr, consts, args, [True] * len(args),
                [True] * len(jaxpr.outvars), ctx, within, where,
            )  # fmt: skip
            sites[:] = ev.sites
            words = jnp.stack(ev.words) if ev.words else jnp.zeros((0,), _U32)
            return outs, words

        return fn, sites

    def _cond(self, eqn: Any, ins: list, frame: Frame) -> list:
        vals = [v for v, _ in ins]
        index, ops = vals[0], vals[1:]
        ctx, within, where = frame.ctx, frame.within, frame.where
        branches = eqn.params["branches"]
        if ins[0][1]:
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
            return bind_eqn(eqn, vals)
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

    def _scan(self, eqn: Any, ins: list, frame: Frame) -> list:
        vals = [v for v, _ in ins]
        closed = eqn.params["jaxpr"]
        consts, init, xs = scan_operands(eqn.params, vals)
        fn, sites = self._inner(
            closed.jaxpr, closed.consts, frame.ctx, _join(frame.within, "scan"),
            frame.where,
        )  # fmt: skip
        x_sds = [jax.ShapeDtypeStruct(np.shape(x)[1:], x.dtype) for x in xs]
        _, w = jax.eval_shape(
            lambda c, i, x: fn(*c, *i, *x),
            [_sds(c) for c in consts], [_sds(i) for i in init], x_sds,
        )  # fmt: skip
        num = int(w.shape[0])
        inner_sites = list(sites)
        if num == 0:
            return bind_eqn(eqn, vals)
        outs, acc = run_scan(eqn, vals, fn, acc=jnp.zeros((num,), _U32), fold=_fnv)
        for k, s in enumerate(inner_sites):
            self._emit_nested(s, acc[k])
        return outs

    def _while(self, eqn: Any, ins: list, frame: Frame) -> list:
        vals = [v for v, _ in ins]
        body_closed = eqn.params["body_jaxpr"]
        _, bconsts, init = while_operands(eqn.params, vals)
        fn, sites = self._inner(
            body_closed.jaxpr, body_closed.consts, frame.ctx,
            _join(frame.within, "while"), frame.where,
        )  # fmt: skip
        _, w = jax.eval_shape(
            lambda b, c: fn(*b, *c), [_sds(b) for b in bconsts], [_sds(c) for c in init]
        )
        num = int(w.shape[0])
        inner_sites = list(sites)
        c_out, acc, it = run_while(
            eqn, vals, fn, acc=jnp.zeros((num,), _U32), fold=_fnv
        )
        for k, s in enumerate(inner_sites):
            self._emit_nested(s, acc[k])
        site = Site("while", frame.ctx, frame.where, (), frame.within, "int32")
        self._emit(site, it)
        return c_out

    rules = {"cond": _cond, "scan": _scan, "while": _while}


def _sds(x: Any) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x))


def _evaluate(
    closed_jaxpr: Any, args: Sequence[Any], sources: Sequence[int]
) -> _Evaluator:
    dep = [False] * len(args)
    for s in sources:
        dep[s] = True
    ev = _Evaluator()
    ev.outs = ev.evaluate(
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
      args_b: its inputs at the second point; only those at ``sources`` may
        differ from ``args_a`` (the others are taken from ``args_a``).
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
    moved = sorted(set(sources))
    dep = [k in moved for k in range(len(args_a))]
    box: dict[str, Any] = {}

    def one(values: list) -> tuple:
        # Only the perturbed inputs differ between the two points; the others
        # are shared, so `f` is traced and compiled once for both.
        args = list(args_a)
        for k, v in zip(moved, values, strict=True):
            args[k] = v
        ev = _Evaluator()
        outs = ev.evaluate(jaxpr, consts, args, dep, [True] * len(jaxpr.outvars))
        box["sites"], box["nested"] = tuple(ev.sites), [d is None for d in ev.decisions]
        known = [d for d in ev.decisions if d is not None]
        return outs[0], _stack_words(ev.words), known

    if moved:
        both = [jnp.stack([args_a[k], args_b[k]]) for k in moved]
        values, words, known = jax.vmap(one)(both)
    else:  # nothing is perturbed: the two points are one
        values, words, known = jax.vmap(lambda _: one([]))(jnp.zeros(2))
    first, second = _Evaluator(), _Evaluator()
    first.words, second.words = list(words[0]), list(words[1])
    it = iter(known)
    for nested in box["nested"]:
        d = None if nested else next(it)
        first.decisions.append(None if d is None else d[0])
        second.decisions.append(None if d is None else d[1])
    return values, words, changed_decisions(first, second), box["sites"]


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
