"""The static kink analysis: which decisions ``f`` makes about the checked
parameters, without evaluating anything.

A :class:`~jaxcheck.interpret.Walker` whose values are ``(mask, depth)``
pairs: the bit mask of the checked leaves a value depends on, and the longest
chain of matrix products / convolutions behind it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..interpret import (
    Walker,
    call_jaxpr,
    location,
    scan_operands,
    while_operands,
)
from .facts import (
    _LAYERS,
    Frame,
    _enters,
    _is_opaque,
    _join,
    _shape,
    _site_kind,
    _untracked_kind,
)
from .sites import KinkAnalysis, Site

PyTree = Any

#: The value of what does not depend on the parameters: no leaf, depth 0.
_NOTHING = (0, 0)


class _Analysis(Walker):
    """Walks a jaxpr with ``(mask, depth)`` values and collects the sites.

    Only *live* equations (inputs that depend on the parameters, an output
    that reaches the result) are classified, entered or looked into.
    """

    def __init__(self, check_itemsize: int = 8) -> None:
        self.sites: list[tuple[Site, int]] = []
        self.blind_masks: list[int] = []  # of untracked and opaque sites
        self.untracked: list[Site] = []
        self.opaque: list[Site] = []
        self.low_precision: list[Site] = []
        self.seen_low: set = set()
        self.max_depth = 0
        self.check_itemsize = check_itemsize

    def literal(self, value: Any) -> tuple[int, int]:
        return _NOTHING

    def constant(self, value: Any) -> tuple[int, int]:
        return _NOTHING

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
        """``(masks, depths)`` of ``jaxpr``'s outputs, its sites collected."""
        frame = Frame(jaxpr, out_rel, ctx, within, loc, in_flags)
        outs = self._run(jaxpr, [None] * len(jaxpr.constvars), dep_in, depth_in, frame)
        return [d for d, _ in outs], [k for _, k in outs]

    def _run(self, jaxpr, consts, dep_in, depth_in, frame: Frame) -> list:
        outs = self.run(jaxpr, consts, list(zip(dep_in, depth_in, strict=True)), frame)
        frame.finish(jaxpr)
        return outs

    def equation(self, eqn: Any, ins: list, frame: Frame) -> list:
        mask = 0
        for d, _ in ins:
            mask |= d
        orel = any(v in frame.rel for v in eqn.outvars)
        frame.tracked = False
        if mask and orel:  # live
            frame.where = location(eqn, frame.loc)
            outs = super().equation(eqn, ins, frame)
            self._precision(eqn, frame)
        else:
            outs = _through(eqn, ins, mask)
        frame.facts.update(eqn, frame.tracked)
        if orel:
            for d, k in outs:
                if d:
                    self.max_depth = max(self.max_depth, k)
        return outs

    def enters(self, eqn: Any, ins: list, frame: Frame) -> bool:
        return _enters(eqn)

    def call(self, eqn: Any, ins: list, frame: Frame) -> list:
        inner, consts = call_jaxpr(eqn)
        sub = frame.enter(eqn, inner)
        outs = self._run(inner, consts, [d for d, _ in ins], [k for _, k in ins], sub)
        frame.facts.seed(eqn.outvars, sub.out_flags)
        return outs

    def default(self, eqn: Any, ins: list, frame: Frame) -> list:
        """A primitive: classified as a tracked site, an untracked one, or one
        jaxcheck cannot see into."""
        mask = 0
        for d, _ in ins:
            mask |= d
        name = eqn.primitive.name
        ctx, where, within = frame.ctx, frame.where, frame.within
        frame.tracked = _site_kind(eqn, [bool(d) for d, _ in ins], frame.facts)
        if frame.tracked:
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
        return _through(eqn, ins, mask)

    def _cond(self, eqn: Any, ins: list, frame: Frame) -> list:
        din, kin = [d for d, _ in ins], [k for _, k in ins]
        mask = 0
        for d in din:
            mask |= d
        ctx, within, where = frame.ctx, frame.within, frame.where
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
        return [(x | mask, k) for x, k in zip(douts, kouts, strict=True)]

    def _loop(self, eqn: Any, ins: list, frame: Frame) -> list:
        """Dependence and depth of a ``scan`` / ``while`` and its sites.

        The body's inputs depend on the parameters as they really do: its
        constants and scanned inputs from outside, its carry from the initial
        value and from what an iteration feeds back (a fixed point, found with
        scratch walks that record nothing). So a constant mask inside a loop
        (optax's ``ctc_loss``) is not a parameter-dependent computation.
        """
        p = eqn.params
        din, kin = [d for d, _ in ins], [k for _, k in ins]
        ctx, within, where = frame.ctx, frame.within, frame.where
        kmax = max(kin, default=0)
        if eqn.primitive.name == "scan":
            body = p["jaxpr"].jaxpr
            fixed, carry, rest = scan_operands(p, din)
        else:
            body = p["body_jaxpr"].jaxpr
            _, fixed, carry = while_operands(p, din)
            rest = []
        nk = len(carry)
        n_in, n_out = len(body.invars), len(body.outvars)
        for _ in range(nk + 1):
            scratch = _Analysis(self.check_itemsize)
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
            return [(d, kmax) for d in dout]
        # The number of iterations depends on what the predicate reads.
        cond = p["cond_jaxpr"].jaxpr
        cond_consts, _, _ = while_operands(p, din)
        (pred,), _ = _Analysis().walk(
            cond, [*cond_consts, *carry], [0] * len(cond.invars), [True], ctx,
            within, where,
        )  # fmt: skip
        if pred:
            self._add(Site("while", ctx, where, (), within, "int32"), pred)
        return [(c | d | pred, kmax) for c, d in zip(carry, d_b, strict=True)]

    rules = {"cond": _cond, "scan": _loop, "while": _loop}

    def _add(self, site: Site, mask: int) -> None:
        self.sites.append((site, mask))

    def _precision(self, eqn: Any, frame: Frame) -> None:
        """Records an output in a float type narrower than the check's."""
        for v in eqn.outvars:
            dtype = getattr(v.aval, "dtype", None)
            if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
                continue
            size = jnp.dtype(dtype).itemsize
            if size < self.check_itemsize:
                key = (str(dtype), frame.where)
                if key not in self.seen_low:
                    self.seen_low.add(key)
                    self.low_precision.append(
                        Site(
                            eqn.primitive.name, frame.ctx, frame.where, _shape(v),
                            frame.within, str(dtype),
                        )
                    )  # fmt: skip


def _through(eqn: Any, ins: list, mask: int) -> list:
    """Outputs of an equation not looked into: they depend on whatever its
    inputs depend on, one layer deeper after a matrix product."""
    depth = max((k for _, k in ins), default=0) + (eqn.primitive.name in _LAYERS)
    return [(mask, depth)] * len(eqn.outvars)


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
    an = _Analysis(jnp.dtype(check_dtype).itemsize)
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
