"""The per-primitive rules of perturbation propagation.

Each gets the context, the equation, its inputs (:class:`_Loc` or
:class:`_Const`) and the unperturbed output (a :class:`_Ref`), and returns a
:class:`_Loc`, or None when it does not cover the case (dense from there).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from jax import lax

from .program import _bind, _Eqn
from .windows import (
    _Const,
    _Ctx,
    _div,
    _inexact,
    _linear,
    _Loc,
    _Ref,
    _rem,
    _shape,
)

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
    return _reduced(ctx, loc, axes, _bind(eqn, [ctx.deltas(loc)]), out_base, True)


def _reduction(ctx: _Ctx, eqn: _Eqn, ins: Sequence[Any], out_base: Any) -> Any:
    (loc,) = ins
    axes = tuple(eqn.params["axes"])
    loc = ctx.widen(loc, axes)
    return _reduced(ctx, loc, axes, _bind(eqn, [ctx.vals(loc)]), out_base, False)


def _reduced(
    ctx: _Ctx, loc: Any, axes: tuple, patch: Any, out_base: Any, delta: bool
) -> Any:
    """The window of a reduction over ``axes`` of ``loc``: its other axes."""
    keep = [a for a in range(loc.ndim) if a not in axes]
    return ctx.make(
        out_base,
        [loc.starts[a] for a in keep],
        [loc.sizes[a] for a in keep],
        patch,
        delta,
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
