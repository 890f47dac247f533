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
The call-like primitives of :data:`jaxcheck.interpret.CALLS` (``jit``,
``custom_jvp_call``, ``custom_vjp_call``, ``checkpoint``, ...) are inlined
(their primal computation is what ``f`` evaluates).

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

The pieces: :mod:`~jaxcheck.propagate.program` (the jaxpr flattened by a
:class:`~jaxcheck.interpret.Walker`, calls inlined, and its unperturbed
values), :mod:`~jaxcheck.propagate.windows` (the values),
:mod:`~jaxcheck.propagate.rules` (the per-primitive rules),
:mod:`~jaxcheck.propagate.evaluate` (the interpretation); this module plans
(whether propagation pays off) and builds the evaluators the engine calls.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import engine
from ..engine.memory import TRANSCENDENTAL, TRANSCENDENTAL_COST
from .evaluate import _interpret, _Log, _Step, _work
from .program import (
    _Base,
    _dtype,
    _Lit,
    _Program,
    _program,
    _sds,
    _signature,
)
from .program import _program_cached as _program_cached  # benchmarks clear it
from .rules import _LINEAR
from .windows import _Ctx, _inexact, _Loc, _value_ref

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
#: (At 2e9 the 11k-parameter MLP's first layer, 1.7e9, went dense: its check took
#: 1.32 s cold and 0.87-0.98 s warm, against 0.93 s and 0.31 s propagated.)
MIN_DENSE_WORK = 1e9


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
    dense_cost: int = 0  # dense_work with transcendental elements weighted


def _dense_work(
    prog: _Program, dep: frozenset[int], copies: int = 1
) -> tuple[int, int]:
    """The dense path's work per coordinate and sign, plain and with each
    element of :data:`jaxcheck.engine.memory.TRANSCENDENTAL` primitives counted
    :data:`~jaxcheck.engine.memory.TRANSCENDENTAL_COST` times."""
    total = copies * math.prod(prog.avals[prog.in_ids[0]].shape)  # perturbed copies
    extra = 0
    for eqn in prog.eqns:
        if not any(isinstance(a, int) and a in dep for a in eqn.ins):
            continue
        shapes = [
            tuple(np.shape(a.value))
            if isinstance(a, _Lit)
            else tuple(prog.avals[a].shape)
            for a in eqn.ins
        ]
        work = sum(_work(eqn, math.prod(a.shape), shapes) for a in eqn.out_avals)
        total += work
        if eqn.name in TRANSCENDENTAL:
            extra += (TRANSCENDENTAL_COST - 1) * work
    return total, total + extra


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
    dense, cost = _dense_work(prog, dep, 2 if pair else 1)
    steps = tuple(log.steps)
    work = sum(s.work for s in steps)
    nbytes = 2 * sum(s.nbytes for s in steps)
    base_ids = frozenset(log.bases[-1].accessed) if log.bases else frozenset()
    single = prog.out_tree is not None and prog.out_tree.num_leaves == 1
    details = (steps, leaf, work, dense, nbytes, base_ids, single, cost)
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
    return num_coords is not None and num_coords * plan.dense_cost < MIN_DENSE_WORK


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
            f"too small: {num_coords:,} coordinates x {plan.dense_cost:,} dense work "
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
