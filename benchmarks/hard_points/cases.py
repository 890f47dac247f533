"""The case and point types, and helpers that build cases compactly."""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import mpmath as mp
import numpy as np

# Kinds of points (the a-priori reason a point is hard). ``control`` points are
# ordinary ones, where every tool should pass.
KINDS = (
    "control",  # an ordinary point
    "tiny",  # |x| tiny, far from any singularity in relative terms
    "pole",  # a pole or singular derivative within a step of x
    "edge",  # a domain edge (or a kink) within a step of x
    "huge",  # |x| so large that a fixed step is at or below its float spacing
    "tail",  # far in a tail: tiny values or gradients, still normal floats
    "curvature",  # large higher derivatives (truncation error of a difference)
    "ill-conditioned",  # a matrix with condition number 1e8..1e12
    "degenerate",  # eigen/singular values 1e-6 apart
    "small-sv",  # a singular value below the step
)


@dataclasses.dataclass(frozen=True, eq=False)
class Point:
    """One point of a case.

    Attributes:
      x: the differentiated input, float64, shape ``(k,)`` or ``(n, m)``.
      kind: one of :data:`KINDS`.
      label: a short human-readable description of the point.
      args: fixed (not differentiated) float arguments, passed after ``x``.
      cond: the conditioning of the gradient at this point; the ground-truth
        tolerance widens to ``100 * cond * eps`` for cases marked
        ``cond_sensitive`` (float64 cannot do better there).
    """

    x: np.ndarray
    kind: str
    label: str
    args: tuple[float, ...] = ()
    cond: float = 1.0


@dataclasses.dataclass(frozen=True, eq=False)
class Case:
    """A scalar function, written in JAX and in mpmath, and its hard points.

    Attributes:
      name: e.g. ``"special.gammaln"``.
      group: ``special``, ``jnp``, ``nn``, ``stats`` or ``linalg``.
      jax_fn: ``jax_fn(x, *args) -> scalar`` in float64.
      mp_fn: ``mp_fn(x, *args) -> mpf``; ``x`` is a list of mpf (1-d points) or
        an ``mp.matrix`` (2-d points), ``args`` are mpf.
      points: the points.
      mp_grad: optional analytic gradient ``mp_grad(x, *args) -> list of mpf``
        (flattened, row-major), used instead of differentiating ``mp_fn``.
      cond_sensitive: whether the gradient's accuracy in float64 is limited by
        ``Point.cond`` (matrix inverses, determinants...).
      floor: for 1-d points whose coordinates are of one kind (the entries of a
        vector: ``logsumexp``, ``std``...), the ground truth compares a coordinate
        below ``floor * max |reference|`` absolutely, like a matrix entry; 0 (the
        default) compares every coordinate relatively (distinct parameters).
    """

    name: str
    group: str
    jax_fn: Callable[..., Any]
    mp_fn: Callable[..., Any]
    points: tuple[Point, ...]
    mp_grad: Callable[..., list[Any]] | None = None
    cond_sensitive: bool = False
    floor: float = 0.0


def _label(values: Sequence[float]) -> str:
    return ", ".join(repr(float(v)) for v in values)


def pt(
    kind: str,
    *x: float,
    args: Sequence[float] = (),
    label: str | None = None,
    cond: float = 1.0,
) -> Point:
    """A point of a 1-d case: ``pt("pole", 1e-8)``, ``pt("control", 2.0, 3.0)``."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; use one of {KINDS}")
    if label is None:
        label = "x=" + _label(x) if len(x) == 1 else "x=(" + _label(x) + ")"
        if args:
            label += ", args=(" + _label(args) + ")"
    return Point(
        np.asarray(x, dtype=np.float64),
        kind,
        label,
        tuple(float(a) for a in args),
        cond,
    )


def unary(
    name: str,
    group: str,
    jfn: Callable[[Any], Any],
    mfn: Callable[[Any], Any],
    points: Sequence[tuple[Any, ...] | Point],
    **kw: Any,
) -> Case:
    """A case of a function of one scalar; points as ``(kind, value[, label])``."""
    pts = []
    for p in points:
        if isinstance(p, Point):
            pts.append(p)
        else:
            kind, value, *rest = p
            pts.append(pt(kind, value, label=rest[0] if rest else None))
    return Case(
        name,
        group,
        lambda x, *a: jfn(x[0]),
        lambda x, *a: mfn(x[0]),
        tuple(pts),
        **kw,
    )


def weights(shape: tuple[int, ...], tag: str) -> np.ndarray:
    """Fixed random weights in [0.5, 1.5) (exact in mpmath too), seeded by ``tag``."""
    rng = np.random.default_rng(zlib.crc32(tag.encode()))
    return rng.uniform(0.5, 1.5, size=shape)


def mp_weighted(w: np.ndarray, values: Any) -> Any:
    """``sum(w * values)`` in mpmath; ``values`` flat list or ``mp.matrix``."""
    flat = w.ravel()
    if isinstance(values, mp.matrix):
        vals = [values[i, j] for i in range(values.rows) for j in range(values.cols)]
    else:
        vals = list(values)
    if len(vals) != flat.size:
        raise ValueError(f"weights of size {flat.size} for {len(vals)} values")
    return mp.fsum(mp.mpf(float(wi)) * v for wi, v in zip(flat, vals, strict=True))


def all_cases() -> list[Case]:
    """Every case of the registry, in a fixed order."""
    from hard_points import elementwise, linalg, special, stats

    cases = special.cases() + elementwise.cases() + stats.cases() + linalg.cases()
    names = [c.name for c in cases]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ValueError(f"duplicate case names: {sorted(dup)}")
    return cases
