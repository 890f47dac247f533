"""The values of perturbation propagation: unperturbed constants
(:class:`_Const`), local perturbations (:class:`_Loc`: a window of new values
or changes over an unperturbed value), dense perturbed values
(:class:`_Dense`), and the per-(coordinate, sign) context :class:`_Ctx` that
slices, widens and aligns windows."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from jax import lax

from .program import _dtype


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


class _Ctx:
    """Per (coordinate, sign) state: the index dtype and the log (a
    :class:`~jaxcheck.propagate.evaluate._Log` in a planning run, else None)."""

    def __init__(self, idx_dtype: Any, log: Any):
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
