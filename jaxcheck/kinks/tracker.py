"""Winner trackers: ``f`` instrumented once, called at many points (the
engine's form of :mod:`jaxcheck.kinks.winners`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .sites import Site
from .winners import (
    _evaluate,
    _sds,
    _stack_words,
    changed_decisions,
    eval_with_winners,
)

PyTree = Any


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
