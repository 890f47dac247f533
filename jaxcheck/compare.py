"""Relative error, the bands of the notes, and per-coordinate verdicts.

Everything here works on host NumPy arrays in float64: it runs after the
finite differences have been computed and is cheap.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

#: Band names and their lower edges (relative error strictly above the edge).
#: The edges are the ones in the notes: > 1e-2 the gradient is probably wrong,
#: 1e-2 .. 1e-4 is uncomfortable, 1e-4 .. 1e-7 is acceptable only for functions
#: with kinks, < 1e-7 is good.
BANDS: tuple[tuple[str, float], ...] = (
    ("probably_wrong", 1e-2),
    ("uncomfortable", 1e-4),
    ("acceptable_with_kinks", 1e-7),
    ("good", 0.0),
)
BAND_NAMES: tuple[str, ...] = tuple(name for name, _ in BANDS)

#: Relative-error bar for smooth functions (the notes: "1e-7 and less you
#: should be happy"; above it a smooth function is not right).
SMOOTH_RTOL = 1e-7

#: Relative-error bar for functions with kinks (the notes: "1e-4 > relative
#: error is usually okay for objectives with kinks").
KINK_RTOL = 1e-4

#: Largest default bar for a function that computes in a low precision.
LOW_PRECISION_MAX_RTOL = 1e-1

#: Default allowance for round-off, in units of ``eps * |f| / h``.
DEFAULT_NOISE_FACTOR = 64.0

Verdict = Literal["ok", "wrong", "untestable", "kink", "inconclusive"]
OK, WRONG, UNTESTABLE, KINK, INCONCLUSIVE = 0, 1, 2, 3, 4
VERDICT_NAMES: tuple[Verdict, ...] = (
    "ok",
    "wrong",
    "untestable",
    "kink",
    "inconclusive",
)


def relative_error(analytic: ArrayLike, numeric: ArrayLike) -> np.ndarray:
    """Relative error ``|a - n| / max(|a|, |n|)``, elementwise.

    Two exact zeros give 0 (they agree perfectly). A NaN or infinite value on
    either side gives ``inf``, so it always lands in the worst band.

    Args:
      analytic: the gradient from autodiff or the user's gradient function.
      numeric: the finite-difference estimate, same shape.

    Returns:
      a float64 array of the broadcast shape, every entry in ``[0, 2]`` (2 when
      the signs differ) or ``inf``.

    Examples:
      >>> relative_error([1.0, 0.0, 2.0, 0.0], [1.5, 0.0, -2.0, 1e-30])
      array([0.33333333, 0.        , 2.        , 1.        ])
    """
    a = np.asarray(analytic, dtype=np.float64)
    n = np.asarray(numeric, dtype=np.float64)
    diff = np.abs(a - n)
    scale = np.maximum(np.abs(a), np.abs(n))
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.where(scale > 0, diff / np.where(scale > 0, scale, 1.0), 0.0)
    finite = np.isfinite(a) & np.isfinite(n)
    return np.where(finite, rel, np.inf)


def band_index(rel_error: ArrayLike) -> np.ndarray:
    """Index into :data:`BANDS` of each relative error (0 = probably wrong).

    Args:
      rel_error: relative errors, any shape.

    Returns:
      an int array of the same shape.

    Examples:
      >>> band_index([0.5, 1e-3, 1e-5, 1e-9]).tolist()
      [0, 1, 2, 3]
    """
    rel = np.asarray(rel_error, dtype=np.float64)
    out = np.full(rel.shape, len(BANDS) - 1, dtype=np.int64)
    # Walk from the most lenient band up so the strictest match wins.
    for i in range(len(BANDS) - 2, -1, -1):
        out = np.where(rel > BANDS[i][1], i, out)
    return out


def band_counts(rel_error: ArrayLike) -> dict[str, int]:
    """How many relative errors fall in each band of the notes.

    Args:
      rel_error: relative errors, any shape.

    Returns:
      ``{band name: count}`` in the order of :data:`BANDS`.

    Examples:
      >>> band_counts([0.5, 1e-3, 1e-9, 0.0])
      {'probably_wrong': 1, 'uncomfortable': 1, 'acceptable_with_kinks': 0, 'good': 2}
    """
    idx = band_index(rel_error).ravel()
    counts = np.bincount(idx, minlength=len(BANDS))
    return {name: int(c) for name, c in zip(BAND_NAMES, counts, strict=True)}


@dataclasses.dataclass(frozen=True)
class Bar:
    """The relative-error bar a check applies, and why.

    Attributes:
      rtol: a coordinate whose relative error exceeds this (and whose absolute
        difference is not explained by round-off) is wrong.
      reason: a sentence that says where the number comes from.
      noise_factor: the round-off allowance, in units of ``eps * |f| / h``.
    """

    rtol: float
    reason: str
    noise_factor: float = DEFAULT_NOISE_FACTOR


def default_bar(rtol: float | None = None, noise_factor: float | None = None) -> Bar:
    """The bar for a check: the notes' smooth-function bar unless overridden.

    Args:
      rtol: an explicit relative-error bar (e.g. ``1e-4`` for a deep network
        with kinks). ``None`` applies the notes' bar for smooth functions.
      noise_factor: the round-off allowance in units of ``eps * |f| / h``.

    Returns:
      a :class:`Bar`.

    Raises:
      ValueError: if ``rtol`` is not in ``(0, 1)`` or ``noise_factor`` < 0.

    Examples:
      >>> default_bar().rtol
      1e-07
      >>> default_bar(1e-4).reason
      'rtol=0.0001 given by the caller'
    """
    nf = DEFAULT_NOISE_FACTOR if noise_factor is None else float(noise_factor)
    if not nf >= 0:
        raise ValueError(
            f"`noise_factor` must be >= 0, got {noise_factor!r}. It scales the "
            "round-off allowance eps*|f|/h; use 0 to disable it."
        )
    if rtol is None:
        return Bar(
            SMOOTH_RTOL,
            "relative error < 1e-7, the CS231n gradient-check notes' bar for a "
            "smooth function in double precision; pass `rtol=` to change it",
            nf,
        )
    rtol = float(rtol)
    if not 0.0 < rtol < 1.0:
        raise ValueError(
            f"`rtol` must lie in (0, 1), got {rtol!r}. Typical values: 1e-7 "
            "(smooth, float64), 1e-4 (functions with kinks), 1e-2 (very deep nets)."
        )
    return Bar(rtol, f"rtol={rtol!r} given by the caller", nf)


def low_precision_rtol(eps: float) -> float:
    """The default bar when ``f`` computes with machine epsilon ``eps`` inside.

    ``10 * sqrt(eps)`` (3.5e-3 for float32), at least the smooth bar and at most
    :data:`LOW_PRECISION_MAX_RTOL`: round-off of a float32 computation leaves
    relative errors near 1e-3 in a correct gradient.

    Args:
      eps: machine epsilon of the precision ``f`` computes in.

    Returns:
      the relative-error bar.

    Examples:
      >>> round(low_precision_rtol(1.1920929e-07), 5)
      0.00345
    """
    return float(min(LOW_PRECISION_MAX_RTOL, max(SMOOTH_RTOL, 10.0 * np.sqrt(eps))))


def choose_bar(
    rtol: float | None = None,
    noise_factor: float | None = None,
    *,
    kinks: str | None = None,
    low_precision: tuple[str, float] | None = None,
    depth: int | None = None,
) -> Bar:
    """The bar of a check, chosen from what the jaxpr of ``f`` says.

    Args:
      rtol: an explicit bar from the caller; it always wins.
      noise_factor: the round-off allowance in units of ``eps * |f| / h``.
      kinks: a summary of the kink-capable primitives of ``f`` (``None`` or
        ``""`` for a smooth function).
      low_precision: ``(dtype name, eps)`` when ``f`` computes in a float type
        narrower than the check's, else ``None``.
      depth: the longest chain of matrix products / convolutions, stated in
        the reason.

    Returns:
      a :class:`Bar` whose ``reason`` says which case applied.

    Raises:
      ValueError: if ``rtol`` or ``noise_factor`` is invalid.

    Examples:
      >>> choose_bar().rtol, choose_bar(kinks="max in relu").rtol
      (1e-07, 0.0001)
      >>> choose_bar(1e-3, kinks="max in relu").reason
      'rtol=0.001 given by the caller (f has kinks: max in relu)'
    """
    base = default_bar(rtol, noise_factor)
    deep = ""
    if depth is not None and depth > 0:
        deep = (
            f"; depth {depth} (matrix products / convolutions in a chain): errors "
            "grow with depth, pass `rtol=` for a very deep network"
        )
    if rtol is not None:
        extra = []
        if kinks:
            extra.append(f"f has kinks: {kinks}")
        if low_precision:
            extra.append(f"f computes in {low_precision[0]} inside")
        reason = base.reason + (f" ({'; '.join(extra)})" if extra else "")
        return Bar(base.rtol, reason, base.noise_factor)
    if low_precision:
        name, eps = low_precision
        value = low_precision_rtol(eps)
        return Bar(
            value,
            f"low precision: f computes in {name} inside (eps {eps:.1e}), so relative "
            f"errors near {10 * np.sqrt(eps):.0e} are expected in a correct gradient; "
            f"bar 10*sqrt(eps){deep}",
            base.noise_factor,
        )
    if kinks:
        return Bar(
            KINK_RTOL,
            f"kinked: f has kink-capable primitives ({kinks}), so the CS231n "
            f"gradient-check notes' bar for objectives with kinks{deep}",
            base.noise_factor,
        )
    return Bar(
        SMOOTH_RTOL,
        "smooth: no kink-capable primitive depends on the parameters, so the "
        f"CS231n gradient-check notes' bar for smooth functions{deep}",
        base.noise_factor,
    )


def subgradient_verdicts(
    analytic: ArrayLike,
    left: ArrayLike,
    right: ArrayLike,
    left_noise: ArrayLike,
    right_noise: ArrayLike,
    rtol: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Judges gradients at a kink against the one-sided derivatives there.

    At a kink of a max/ReLU/hinge the derivative jumps from ``left`` to
    ``right``; any value between them is a valid (Clarke) subgradient, and an
    autodiff system returns one of them. A value outside the interval, by more
    than ``rtol`` relative plus the round-off of the one-sided estimates, is
    wrong. NaN marks a side that could not be estimated (another kink too
    close): with one side missing, only a match with the other side confirms.

    Args:
      analytic: the analytic gradient entries.
      left: left derivatives (NaN where unknown).
      right: right derivatives (NaN where unknown).
      left_noise: absolute round-off of the left estimates.
      right_noise: absolute round-off of the right estimates.
      rtol: the relative-error bar.

    Returns:
      ``(codes, distance)``: ``KINK`` (confirmed: a subgradient), ``WRONG``
      (outside the interval), or ``UNTESTABLE`` (not decidable here), and the
      relative distance of the analytic value from the interval.

    Examples:
      >>> codes, dist = subgradient_verdicts([0.0, 0.5, 2.0, 0.3], [0.0, 0.0, 0.0, np.nan],
      ...                                    [1.0, 1.0, 1.0, 1.0], 1e-9, 1e-9, 1e-4)
      >>> codes.tolist(), dist.round(3).tolist()
      ([3, 3, 1, 2], [0.0, 0.0, 0.5, 0.7])
    """
    a = np.asarray(analytic, dtype=np.float64)
    lft = np.asarray(left, dtype=np.float64)
    rgt = np.asarray(right, dtype=np.float64)
    ln = np.broadcast_to(np.asarray(left_noise, dtype=np.float64), a.shape)
    rn = np.broadcast_to(np.asarray(right_noise, dtype=np.float64), a.shape)
    have_l, have_r = np.isfinite(lft), np.isfinite(rgt)
    both = have_l & have_r
    lo = np.where(both, np.minimum(lft, rgt), np.where(have_l, lft, rgt))
    hi = np.where(both, np.maximum(lft, rgt), np.where(have_l, lft, rgt))
    noise = np.where(both, np.maximum(ln, rn), np.where(have_l, ln, rn))
    with np.errstate(invalid="ignore"):
        scale = np.maximum(np.abs(a), np.maximum(np.abs(lo), np.abs(hi)))
        tol = rtol * scale + noise
        dist = np.maximum(lo - a, a - hi)
        dist = np.maximum(dist, 0.0)
        rel = np.where(scale > 0, dist / np.where(scale > 0, scale, 1.0), 0.0)
        inside = dist <= tol
    one = have_l ^ have_r
    codes = np.where(
        ~np.isfinite(a),
        WRONG,
        np.where(
            ~(have_l | have_r),
            UNTESTABLE,
            np.where(inside, KINK, np.where(one, UNTESTABLE, WRONG)),
        ),
    )
    rel = np.where(have_l | have_r, rel, np.nan)
    return codes.astype(np.int64), rel


def verdicts(
    analytic: ArrayLike,
    numeric: ArrayLike,
    noise_abs: ArrayLike,
    rtol: float,
) -> np.ndarray:
    """Per-coordinate verdict codes: ``OK`` (0), ``WRONG`` (1), ``UNTESTABLE`` (2).

    A coordinate is ``OK`` when its relative error is within ``rtol``. Otherwise
    it is ``UNTESTABLE`` when the absolute difference ``|a - n|`` is within the
    round-off noise ``noise_abs`` of the finite difference (the difference could
    be pure round-off, so the check can neither confirm nor refute it at this
    step), and ``WRONG`` when it is not. Non-finite values are ``WRONG``.

    Args:
      analytic: analytic gradient entries.
      numeric: finite-difference estimates.
      noise_abs: absolute round-off noise of each estimate (broadcastable).
      rtol: the relative-error bar.

    Returns:
      an int array of verdict codes.

    Examples:
      >>> verdicts([1.0, 1.0, 1e-12], [1.0, 1.1, 2e-12], 1e-9, 1e-7).tolist()
      [0, 1, 2]
    """
    a = np.asarray(analytic, dtype=np.float64)
    n = np.asarray(numeric, dtype=np.float64)
    rel = relative_error(a, n)
    with np.errstate(invalid="ignore"):
        diff = np.abs(a - n)
    noise = np.asarray(noise_abs, dtype=np.float64)
    ok = rel <= rtol
    finite = np.isfinite(rel)
    untestable = ~ok & finite & (diff <= noise)
    return np.where(ok, OK, np.where(untestable, UNTESTABLE, WRONG))
