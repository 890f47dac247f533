"""Per-coordinate verdicts, each with its evidence.

A coordinate of a check ends in one of five verdicts:

* **ok**: the analytic value agrees with a finite difference within the bar
  (at the main step, or at a step of the follow-up ladder); an analytic value
  that is exactly zero is ok when ``f`` does not change along the coordinate
  beyond round-off at any step up to the largest;
* **wrong**: it disagrees with a finite difference that is *stable*: two
  neighbouring steps of the ladder give estimates that agree with each other
  far better than with the analytic value (the flat part of the
  error-against-step curve), or, at a kink, it lies outside the one-sided
  derivatives; a non-finite analytic value where ``f`` is finite is wrong;
* **kink**: the finite difference crossed a kink (a decision of ``f`` changed)
  and the analytic value lies between the one-sided derivatives there (a
  subgradient) or matches the one side that could be measured;
* **untestable**: the difference is within the round-off noise of ``f``, even
  at the largest step of the ladder;
* **inconclusive**: no evidence either way: the estimates do not settle across
  steps, or a crossed kink could not be measured from either side, or several
  decisions changed at once and the analytic value lies outside the one-sided
  derivatives.

The main pass evaluates ``f(x ± h e_i)`` for every coordinate
(:func:`main_pass`). Coordinates it cannot settle (outside the bar, within
round-off, across a kink, or where ``f`` is not finite at ``x ± h``) get a
*follow-up*: ``f`` at ``x ± m s e_i`` for ``m = 1, 2, 3`` and a ladder of steps
``s`` from ``1e4 h`` down to ``1e-3 h`` (and steps relative to ``|x_i|`` when it
is smaller than the step, so that the ladder never jumps over a pole at 0),
plus a line of points ``x ± k delta`` whose differences measure the round-off
noise of ``f`` (ECnoise, :func:`jaxcheck.steps.ecnoise`); :func:`follow_up`
judges it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from .. import steps as stencils
from ..compare import (
    INCONCLUSIVE,
    KINK,
    KINK_RTOL,
    OK,
    UNTESTABLE,
    WRONG,
    relative_error,
)

#: Steps of the follow-up ladder, as multiples of the main step ``h``.
LADDER: tuple[float, ...] = (1e4, 1e3, 1e2, 1e1, 1.0, 1e-1, 1e-2, 1e-3)
#: Steps relative to ``|x_i|`` added when ``|x_i|`` is below ``100 h``.
TINY_STEPS: tuple[float, ...] = (1e-1, 1e-2, 1e-3, 1e-4)
#: Largest ladder step, relative to ``max(1, |x_i|)``.
MAX_STEP = 0.1
#: Multiples of each ladder step evaluated on both sides.
MULTS: tuple[int, ...] = (1, 2, 3)
#: The quick first stage of a follow-up: five steps, two multiples each.
STAGE1_LADDER: tuple[float, ...] = (1e1, 1.0, 1e-1, 1e-2, 1e-3)
#: The deep last stage, for what the full ladder leaves open: down to
#: ``1e-10 h`` (near a pole, a tiny singular value or close eigenvalues only
#: such steps stay on one smooth piece, and there the derivative is large
#: enough for their round-off).
DEEP_LADDER: tuple[float, ...] = LADDER + (1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9, 1e-10)
STAGE1_MULTS: tuple[int, ...] = (1, 2)
#: Points on each side of ``x`` for the noise estimate.
NOISE_POINTS = 6
#: In the quick stage, coordinates per leaf whose noise is measured.
NOISE_SAMPLE = 16
#: A disagreement is evidence when it exceeds this many error bounds.
EVIDENCE = 4.0
#: A step is evidence only where ``|a| * step <= LINEARITY * max|f|`` over its
#: points: beyond, ``a`` predicts a change ``f`` cannot make while staying
#: near-linear (an oscillation across the step, a pole within it).
LINEARITY = 10.0
#: ``f`` is undersampled where its measured noise is this fraction of its size:
#: it changes across its whole range within the step (an oscillation at a huge
#: argument), and no finite difference is evidence of a wrong value.
UNDERSAMPLED = 1e-2
#: Standard deviations of round-off added to the spread of a pair of estimates.
SD_MARGIN = 4.0

#: Why a non-finite analytic value where ``f`` is finite is wrong.
NAN_GRADIENT = (
    "the analytic gradient is not finite where f is: a NaN or inf leaked into the "
    "backward pass (e.g. from a discarded jnp.where branch)"
)

# Why a coordinate needs a follow-up.
NONE, ROUNDOFF, CONFIRM, CROSSED, NONFINITE = 0, 1, 2, 3, 4
#: Internal verdict: ``f`` is not finite on one side at any step (the point
#: is on the edge of ``f``'s domain); the check raises.
DOMAIN = 9


@dataclasses.dataclass
class State:
    """Every checked coordinate of a check, as it is judged (host arrays).

    Attributes:
      a: the analytic values.
      x: the coordinates' values.
      h: each coordinate's main step.
      bar: each coordinate's relative-error bar.
      group: each coordinate's leaf (noise is shared within a leaf).
      code: the verdict codes (:data:`jaxcheck.compare.VERDICT_NAMES`).
      numeric: the estimate shown for each coordinate.
      rel: the relative error between ``a`` and ``numeric`` (raw).
      step: the step of ``numeric`` when it is not the main one (else NaN).
      lo: lower end of the one-sided derivatives that excused a kink (NaN).
      hi: upper end.
      reason: why a follow-up is needed (``NONE``, ``ROUNDOFF``...).
      resolution: how the verdict was reached, in words.
      kink: the decision sites that changed across ``x ± h``.
      sigma: the measured round-off noise of ``f`` along the coordinate.
      f_plus: ``f(x + h e_i)``.
      f_minus: ``f(x - h e_i)``.
      changed: decisions that changed between ``x - h`` and ``x + h``.
      flat: ok because ``f`` is flat along the coordinate and the analytic
        value is zero (or at the round-off level of the gradient):
        their relative error compares round-off with round-off and means
        nothing.
      gscale: the largest absolute analytic value of the check.
    """

    a: np.ndarray
    x: np.ndarray
    h: np.ndarray
    bar: np.ndarray
    group: np.ndarray = None
    code: np.ndarray = None
    numeric: np.ndarray = None
    rel: np.ndarray = None
    step: np.ndarray = None
    lo: np.ndarray = None
    hi: np.ndarray = None
    reason: np.ndarray = None
    resolution: np.ndarray = None
    kink: np.ndarray = None
    sigma: np.ndarray = None
    f_plus: np.ndarray = None
    f_minus: np.ndarray = None
    changed: np.ndarray = None
    flat: np.ndarray = None
    rel_main: np.ndarray = None
    gscale: np.ndarray = None

    def __post_init__(self) -> None:
        n = len(self.a)
        nan = np.full(n, np.nan)
        self.code = np.full(n, OK, dtype=np.int64)
        self.numeric, self.rel, self.step = nan.copy(), nan.copy(), nan.copy()
        self.lo, self.hi, self.sigma = nan.copy(), nan.copy(), nan.copy()
        self.f_plus, self.f_minus = nan.copy(), nan.copy()
        self.reason = np.zeros(n, dtype=np.int64)
        self.resolution = np.full(n, "", dtype=object)
        self.kink = np.full(n, "", dtype=object)
        self.changed = np.zeros(n, dtype=np.int64)
        self.flat = np.zeros(n, dtype=bool)
        if self.group is None:
            self.group = np.zeros(n, dtype=np.int64)
        # The size of each coordinate's leaf's gradient (round-off is relative
        # to it).
        finite = np.where(np.isfinite(self.a), np.abs(self.a), 0.0)
        self.gscale = np.full(n, finite.max(initial=0.0))


def main_pass(
    s: State,
    method: str,
    f0: float,
    fp: np.ndarray,
    fm: np.ndarray,
    off_p: np.ndarray,
    off_m: np.ndarray,
    eps: float,
    noise_factor: float,
    crossed: np.ndarray | None = None,
    kink_bar: float = KINK_RTOL,
) -> None:
    """Judges the main pass: ``fp``, ``fm`` of shape ``(n, M)`` (``M``
    multiples of ``h`` of ``method``), their true offsets, and which
    coordinates crossed a kink (their bar becomes at least ``kink_bar``, the
    notes' bar for objectives with kinks). Sets ``s.code`` and ``s.reason``."""
    numeric, weight = stencils.estimate(method, f0, fp, fm, off_p, off_m)
    with np.errstate(invalid="ignore"):
        scale = np.maximum(np.maximum(np.abs(fp), np.abs(fm)).max(axis=1), abs(f0))
    noise = stencils.noise_allowance(weight, scale, eps, noise_factor)
    s.numeric = numeric
    s.rel = relative_error(s.a, numeric)
    s.rel_main = s.rel.copy()
    s.f_plus, s.f_minus = fp[:, 0].copy(), fm[:, 0].copy()
    with np.errstate(invalid="ignore"):
        diff = np.abs(s.a - numeric)
    finite_f = np.isfinite(fp).all(axis=1) & np.isfinite(fm).all(axis=1)
    if method == "forward":
        finite_f = np.isfinite(fp[:, 0])
    ok = s.rel <= s.bar
    s.code[:] = np.where(ok, OK, WRONG)
    s.reason[:] = np.where(ok, NONE, np.where(diff <= noise, ROUNDOFF, CONFIRM))
    s.code[s.reason == ROUNDOFF] = UNTESTABLE
    if crossed is not None:
        s.bar[crossed] = np.maximum(s.bar[crossed], kink_bar)
        s.reason[crossed] = CROSSED
        s.code[crossed] = INCONCLUSIVE
    s.reason[~finite_f] = NONFINITE
    s.code[~finite_f] = INCONCLUSIVE
    bad = ~np.isfinite(s.a) & finite_f
    s.code[bad] = WRONG
    s.reason[bad] = NONE
    s.rel[bad] = np.inf
    s.resolution[bad] = NAN_GRADIENT


# --------------------------------------------------------------------------- #
# The follow-up ladder.
# --------------------------------------------------------------------------- #


def ladder_steps(x: float, h: float, stage: int = 2) -> np.ndarray:
    """The ladder of one coordinate, largest first: stage 1 is ``10h, h, h/10``;
    stage 2 the full :data:`LADDER` (and steps relative to ``|x|`` when it is
    below ``100 h``).

    Examples:
      >>> ladder_steps(0.5, 1e-5).tolist()[:3]
      [0.1, 0.01, 0.001]
      >>> bool(ladder_steps(1e-8, 1e-5).min() < 1e-8)  # steps relative to |x| too
      True
      >>> ladder_steps(0.5, 1e-5, stage=1).tolist()
      [0.0001, 1e-05, 1e-06, 1e-07, 1e-08]
    """
    # Never drop the main step itself (a low-precision step may exceed the cap).
    cap = max(MAX_STEP * max(1.0, abs(x)), h)
    factors = {1: STAGE1_LADDER, 2: LADDER}.get(stage, DEEP_LADDER)
    base = [h * m for m in factors if h * m <= cap * (1 + 1e-12)]
    if stage >= 2 and 0 < abs(x) < 100 * h:
        base += [abs(x) * t for t in TINY_STEPS]
    # Steps too small to move x in float64 tell nothing.
    floor = 64 * 2.0**-52 * max(abs(x), 1e-300)
    base = [b for b in base if b > floor] or base[:1]
    return np.array(sorted({float(f"{b:.12g}") for b in base}, reverse=True))


def noise_line(
    x: np.ndarray, h: np.ndarray, eps: float, deep: bool = False
) -> np.ndarray:
    """Offsets ``+-k delta`` (``k = 1..6``) of the noise lines, shape
    ``(n, 6 L, 2)`` for ``L`` lines (2, or 3 when ``deep``).

    The first line has ``delta = h / 10`` (so a low-precision or cancelling
    ``f`` shows its rounding as noise); the second ``delta = min(h / 10,
    sqrt(eps) max(1, |x|))`` (so it stays inside the smooth neighbourhood of
    ``x`` when something non-smooth, close eigenvalues or a kink, lies within
    ``h``); the deep one ``eps**(2/3) max(1, |x|)`` (next to a pole). The
    smallest of their estimates is the noise. All stay below ``|x| / 20`` near
    0, so that they do not cross a pole there.

    Examples:
      >>> line = noise_line(np.array([2.0]), np.array([1e-5]), 2.0**-52)
      >>> line.shape, np.round(line[0, 0], 12).tolist()
      ((1, 12, 2), [1e-06, -1e-06])
    """
    x, h = np.abs(np.asarray(x, float)), np.asarray(h, float)
    k = np.arange(1, NOISE_POINTS + 1, dtype=np.float64)
    scale = np.maximum(1.0, x)
    deltas = [h / 10, np.minimum(h / 10, math.sqrt(eps) * scale)]
    if deep:
        deltas.append(np.minimum(h / 10, eps ** (2 / 3) * scale))
    lines = []
    for delta in deltas:
        delta = np.where((x > 0) & (x < 20 * delta), x / 20, delta)
        plus = delta[:, None] * k[None, :]
        lines.append(np.stack([plus, -plus], axis=-1))
    return np.concatenate(lines, axis=1)


@dataclasses.dataclass
class Plan:
    """The rows of a follow-up: which coordinate, which offsets.

    Attributes:
      sel: the coordinates followed up (indices into the state).
      stage: 1 (a quick confirmation at three steps) or 2 (the full ladder and
        the noise line).
      coord: for every row, the position in ``sel`` of its coordinate.
      deltas: ``(R, 2)`` offsets of the row's two points.
      steps: per followed-up coordinate, its ladder (largest first).
      first: per followed-up coordinate, its first row.
      noisy: per followed-up coordinate, whether its rows end with a noise line
        (always in stage 2; in stage 1 for up to :data:`NOISE_SAMPLE`
        coordinates per leaf, whose median noise the others use).
    """

    sel: np.ndarray
    stage: int
    coord: np.ndarray
    deltas: np.ndarray
    steps: list[np.ndarray]
    first: np.ndarray
    noisy: np.ndarray = None

    @property
    def mults(self) -> tuple[int, ...]:
        return STAGE1_MULTS if self.stage == 1 else MULTS


def plan(s: State, sel: np.ndarray, stage: int = 2, eps: float = 2.0**-52) -> Plan:
    """The follow-up rows of the coordinates ``sel``: for each ladder step
    ``t``, the rows ``(+m t, -m t)`` for every multiple ``m``, then the noise
    line ``(+k delta, -k delta)`` (see :attr:`Plan.noisy`)."""
    coord, deltas, ladders, first, noisy = [], [], [], [], []
    mults = np.asarray(STAGE1_MULTS if stage == 1 else MULTS, float)
    noise = noise_line(s.x[sel], s.h[sel], eps, deep=stage >= 3)
    seen: dict[int, int] = {}
    for q, i in enumerate(sel):
        t = ladder_steps(float(s.x[i]), float(s.h[i]), stage)
        ladders.append(t)
        first.append(len(coord))
        d = (t[:, None] * mults[None, :]).reshape(-1)
        rows = np.stack([d, -d], 1)
        g = int(s.group[i])
        with_noise = stage >= 2 or seen.get(g, 0) < NOISE_SAMPLE
        if with_noise:
            seen[g] = seen.get(g, 0) + 1
            rows = np.concatenate([rows, noise[q]])
        noisy.append(with_noise)
        deltas.append(rows)
        coord.extend([q] * len(rows))
    return Plan(
        sel=np.asarray(sel, dtype=np.int64), stage=stage,
        coord=np.asarray(coord, dtype=np.int64),
        deltas=np.concatenate(deltas) if deltas else np.zeros((0, 2)),
        steps=ladders, first=np.asarray(first, dtype=np.int64),
        noisy=np.asarray(noisy, dtype=bool),
    )  # fmt: skip


@dataclasses.dataclass
class _Estimate:
    value: float
    step: float
    allow: float  # round-off allowance (absolute, conservative)
    kind: str = "central"
    sd: float = 0.0  # standard deviation of its round-off (absolute)
    order: int = 2  # its truncation error is O(step**order)
    across_zero: bool = False  # its points straddle 0 (where poles often are)
    allow_lo: float = 0.0  # the allowance at the lowest plausible noise
    reach: float = 0.0  # the largest offset of its points
    fmax: float = 0.0  # the largest |f| at its points


def _pairs(ests: list[_Estimate]) -> list[tuple[_Estimate, float, str, bool]]:
    """Neighbouring estimates of one family (sorted by step, at most 10x apart)
    as ``(smaller-step estimate, bound, steps, converged)``: the bound is their
    spread plus the round-off of the smaller step; ``converged`` says the spread
    shrank from the previous pair (as truncation does when the step shrinks),
    or stayed within round-off: a sequence of estimates that grows as the step
    shrinks (a step across a pole) is not converging, however small its
    spreads are next to the analytic value. Sorted by the bound relative to the
    estimate, most stable first (so that a plateau of garbage across a pole,
    small in absolute terms, does not beat the true, large derivative found at
    steps that avoid the pole)."""
    out = []
    prev = None
    top = ests[0].step if ests else 1.0
    for e1, e2 in zip(ests[:-1], ests[1:], strict=True):
        if e1.step > 10.01 * e2.step:
            prev = None
            continue
        spread = abs(e1.value - e2.value)
        margin = SD_MARGIN * e2.sd
        # In the asymptotic regime the spread of a pair is c (s1**p - s2**p) for
        # an estimate of order p: the same c from pair to pair (steps relative
        # to the family's largest, so that huge steps do not overflow).
        span = (e1.step / top) ** e2.order - (e2.step / top) ** e2.order
        norm = spread / max(abs(span), 1e-300)
        converged = spread <= margin or (prev is not None and norm <= 4.0 * prev)
        prev = norm
        where = f"h={e1.step:.0e} and h={e2.step:.0e}"
        if e2.kind != "central":
            where += f" ({e2.kind})"
        out.append((e2, spread + margin, where, converged))
    out.sort(key=lambda p: p[1] / max(abs(p[0].value), 1e-300))
    return out


def _all_pairs(families: list[list[_Estimate]]) -> list[tuple]:
    out = [p for fam in families for p in _pairs(fam)]
    out.sort(key=lambda p: p[1] / max(abs(p[0].value), 1e-300))
    return out


def _fmt(x: float) -> str:
    return f"{x:+.6e}"


#: Richardson weights on the centered differences at ``s, 2s, 3s``, and the
#: order of the result.
_RICHARDSON = {
    "4th order": ((4 / 3, -1 / 3, 0.0), 4),
    "6th order": ((1.5, -0.6, 0.1), 6),
}


class _One:
    """The follow-up data of one coordinate, and its judgement."""

    def __init__(
        self, s: State, i: int, p: Plan, q: int, vals, words, w0, f0, eps, nf, deltas
    ):
        self.s, self.i, self.t = s, i, p.steps[q]
        self.a, self.bar, self.f0 = float(s.a[i]), float(s.bar[i]), f0
        self.eps, self.nf = eps, nf
        self.final = p.stage >= 2
        self.stage = p.stage
        mults = np.asarray(p.mults, float)
        k, M = len(self.t), len(mults)
        main = vals[: k * M].reshape(k, M, 2)
        self.plus, self.minus = main[..., 0], main[..., 1]
        d = mults[None, :] * self.t[:, None]
        x = float(s.x[i])
        self.op = stencils.offsets([x], d.reshape(1, -1)).reshape(d.shape)
        self.om = stencils.offsets([x], -d.reshape(1, -1)).reshape(d.shape)
        self.tracked = words is not None
        self.changes = 0
        if self.tracked:
            w = words[: k * M].reshape(k, M, 2, -1)
            self.wp, self.wm = w[:, :, 0], w[:, :, 1]
            self.same_p = np.all(self.wp == w0, axis=-1)
            self.same_m = np.all(self.wm == w0, axis=-1)
        else:
            self.same_p = self.same_m = np.ones_like(self.plus, dtype=bool)
        self.sigma = self.sigma_lo = math.nan
        self.noise_ratio = math.nan
        if p.noisy[q]:
            lines = vals[k * M :].reshape(-1, NOISE_POINTS, 2)
            if self.tracked:
                wl = words[k * M : k * M + NOISE_POINTS]
                ordered = [*wl[::-1, 1], w0, *wl[:, 0]]
                self.changes = sum(
                    int(np.any(u != v))
                    for u, v in zip(ordered[:-1], ordered[1:], strict=True)
                )
            # The wide line sees rounding that the narrow one may be too close
            # to resolve; the narrow one stays inside a smooth neighbourhood
            # the wide one may leave (its bound then shows the noise is small).
            sig = stencils.noise_from_rows(f0, lines[:, :, 0], lines[:, :, 1])
            bound = stencils.noise_from_rows(
                f0, lines[:, :, 0], lines[:, :, 1], bound=True
            )
            # A line along which f does not change at all although its slope
            # should move it: f is quantized coarser than the line (a large
            # sum that cancels, a low precision), and the line saw nothing.
            spacing = np.abs(deltas[k * M :, 0]).reshape(-1, NOISE_POINTS)[:, -1]
            blind = (sig == 0) & (
                abs(self.a) * spacing > 4 * eps * max(abs(f0), 1e-300)
            )
            keep = np.isfinite(sig) & ~blind
            self.sigma = float(sig[keep].min()) if keep.any() else 0.0
            size = max(abs(f0), float(np.nanmax(np.abs(lines), initial=0.0)))
            finest = sig[-1] if np.isfinite(sig[-1]) else bound[-1]
            self.noise_ratio = float(finest / size) if size > 0 else 0.0
            self.sigma_lo = min(
                self.sigma, float(np.min(bound[~blind], initial=np.inf))
            )
            if 0 < self.changes < 3:
                # A kink inside the noise line: its differences are not noise
                # (the leaf's median is used instead).
                self.sigma = math.nan
        self.chatter = self.changes >= 3

    @property
    def undersampled(self) -> bool:
        return math.isfinite(self.noise_ratio) and self.noise_ratio >= UNDERSAMPLED

    def allow(self, weight: float, scale: float, low: bool = False) -> float:
        """The round-off allowance of an estimate: the measured noise of ``f``
        (at least ``4 eps |f|``) in the follow-up, the model before; with
        ``low``, at the lowest noise the noise lines allow (a bound where the
        estimate failed: see :func:`jaxcheck.steps.ecnoise`)."""
        sigma = self.sigma_lo if low else self.sigma
        if math.isfinite(sigma):
            noise = max(4.0 * self.eps * scale, stencils.NOISE_SIGMAS * sigma)
        else:
            noise = self.nf * self.eps * scale
        return 0.5 * weight * noise

    def _across_zero(self, reach: float) -> bool:
        """Whether points ``x ± reach`` straddle 0 while ``x`` is not 0."""
        x = abs(float(self.s.x[self.i]))
        return 0 < x <= reach

    def sd(self, weight: float, scale: float) -> float:
        """The standard deviation of the round-off of an estimate whose values
        enter with absolute weights summing to ``weight``: the measured noise of
        ``f`` (at least ``eps |f| / 2``), or the model before it is measured."""
        if math.isfinite(self.sigma):
            noise = max(0.5 * self.eps * scale, self.sigma)
        else:
            noise = self.nf / stencils.NOISE_SIGMAS * self.eps * scale
        return weight * noise / math.sqrt(2.0)

    def families(self) -> list[list[_Estimate]]:
        """Estimates from points that kept the decisions of ``x`` (or all when
        the decisions chatter): the centered differences at every point, and
        the Richardson extrapolations of each ladder step."""
        mults = len(self.plus[0])
        central: list[_Estimate] = []
        rich: dict[str, list[_Estimate]] = {name: [] for name in _RICHARDSON}
        for k in range(len(self.t)):
            cs, ws, ok = [], [], True
            for m in range(mults):
                p, q = self.plus[k, m], self.minus[k, m]
                span = self.op[k, m] - self.om[k, m]
                clean = np.isfinite(p) and np.isfinite(q) and span > 0
                clean = clean and (
                    self.chatter or (self.same_p[k, m] and self.same_m[k, m])
                )
                if not clean:
                    ok = False
                    break
                scale = max(abs(p), abs(q), abs(self.f0))
                cs.append((p - q) / span)
                ws.append((2.0 / span, scale))
                if any(abs(e.step - span / 2) <= 1e-9 * e.step for e in central):
                    continue  # the same points as another rung
                central.append(
                    _Estimate(
                        cs[-1], span / 2, self.allow(*ws[-1]), sd=self.sd(*ws[-1]),
                        across_zero=self._across_zero(span / 2),
                        allow_lo=self.allow(*ws[-1], low=True), reach=span / 2,
                        fmax=scale,
                    )
                )  # fmt: skip
            if not ok:
                continue
            for name, (coef, order) in _RICHARDSON.items():
                if len(cs) < 3 and coef[2]:
                    continue
                value = sum(c * v for c, v in zip(coef, cs, strict=False))
                allow = sum(
                    abs(c) * self.allow(*w) for c, w in zip(coef, ws, strict=False)
                )
                sd = sum(abs(c) * self.sd(*w) for c, w in zip(coef, ws, strict=False))
                low = sum(
                    abs(c) * self.allow(*w, low=True)
                    for c, w in zip(coef, ws, strict=False)
                )
                reach = float(self.t[k]) * (3 if coef[2] else 2)
                rich[name].append(
                    _Estimate(
                        value, float(self.t[k]), allow, name, sd, order,
                        self._across_zero(reach), low, reach,
                        max(w[1] for w in ws[: 3 if coef[2] else 2]),
                    )
                )  # fmt: skip
        central.sort(key=lambda e: -e.step)
        self.central = central
        self.estimates = [central, *rich.values()]
        return self.estimates

    def one_sided(self, side: int) -> list[_Estimate]:
        """One-sided estimates (the quadratic through ``x + m t``, ``m = 1..3``
        on one side, extrapolated to ``x``) at every ladder step whose three
        points share their decisions."""
        vals = self.plus if side > 0 else self.minus
        offs = self.op if side > 0 else self.om
        words = (self.wp if side > 0 else self.wm) if self.tracked else None
        out = []
        for k in range(len(self.t)):
            v = vals[k]
            if len(v) < 3 or not np.isfinite(v).all():
                continue
            if words is not None and not (
                np.all(words[k, 0] == words[k, 1])
                and np.all(words[k, 0] == words[k, 2])
            ):
                continue
            d, w = stencils.one_sided(v[None, :], offs[k][None, :])
            scale = max(float(np.abs(v).max()), abs(self.f0))
            weight = float(w[0])
            out.append(
                _Estimate(
                    float(d[0]), float(self.t[k]), self.allow(weight, scale),
                    sd=self.sd(weight, scale),
                )
            )  # fmt: skip
        return out

    # -- verdicts -------------------------------------------------------------
    def set(self, code: int, numeric: float, step: float, text: str) -> None:
        """Records a verdict. A coordinate whose main step crossed a kink and
        that agrees now (at a step that avoids the kink, or as a subgradient)
        is a kink: crossed, and excused with evidence."""
        s, i = self.s, self.i
        if code == OK and s.reason[i] == CROSSED:
            code = KINK
        s.code[i] = code
        if math.isfinite(numeric):
            s.numeric[i] = numeric
            s.rel[i] = float(relative_error(self.a, numeric))
            s.step[i] = step
        s.resolution[i] = text

    def judge(self) -> bool:
        """Sets the verdict when there is evidence; returns whether it did (in
        stage 2 it always does)."""
        s, i, a = self.s, self.i, self.a
        if math.isfinite(self.sigma):
            s.sigma[i] = self.sigma
        pairs = _all_pairs(self.families())
        if not math.isfinite(a) and self.final:
            if not self.central and not self._finite_somewhere():
                s.code[i] = DOMAIN
            else:
                self.set(WRONG, math.nan, math.nan, NAN_GRADIENT)
                s.rel[i] = math.inf
            return True
        if self.final and self._zero():
            return True
        agree = self._agreeing(pairs)
        if agree is not None:
            e, where = agree
            note = " (decisions chatter at round-off level)" if self.chatter else ""
            if s.reason[i] == CROSSED and not self.chatter:
                text = f"a smaller step avoids the kink: agrees at {where}"
            else:
                text = f"agrees at {where}{note}"
            self.set(OK, e.value, e.step, text)
            return True
        self.scale_dependent = None
        decisive = self._decisive(pairs)
        if decisive is not None:
            e, b, where = decisive
            pre = (
                "a smaller step avoids the kink and still disagrees: "
                if s.reason[i] == CROSSED and not self.chatter
                else ""
            )
            self.set(
                WRONG, e.value, e.step,
                f"{pre}stable across steps ({where} agree to {b:.1e}) and "
                f"differs by {abs(a - e.value):.1e}",
            )  # fmt: skip
            return True
        if not self.final:
            return False
        reason = int(s.reason[i])
        if (reason == CROSSED or not self.central) and self.tracked and self._kink():
            if s.code[i] != INCONCLUSIVE or self.stage >= 3:
                return True
        if self.stage == 2 and reason != ROUNDOFF:
            return False  # the deep ladder may still decide
        if reason == NONFINITE and not self.central and not self._finite_somewhere():
            s.code[i] = DOMAIN
            return True
        self._unresolved(pairs)
        return True

    def _decisive(self, pairs) -> tuple[_Estimate, float, str] | None:
        """Evidence of a wrong value: the finest converged pair of estimates
        whose bound is small against its disagreement with ``a``, provided that
        every estimate at a smaller step agrees with it within its round-off
        (a derivative that changes with the scale, as near close eigenvalues
        or a pole, proves nothing at the larger steps)."""
        a = self.a
        if self.undersampled:
            return None
        if self.stage == 1 and not self._one_plateau():
            return None
        for e, b, where, converged in sorted(pairs, key=lambda p: p[0].step):
            # Steps across 0 (where gammaln, digamma, logit, cbrt... have their
            # poles) are no evidence in the quick stage: the full ladder adds
            # steps relative to |x| that must then agree with them.
            if not converged or (e.across_zero and self.stage == 1):
                continue
            # Where ``a`` predicts a change over the step far larger than f
            # itself, f cannot be near-linear there (an oscillation at a huge
            # argument, a pole): the estimate is no evidence.
            if abs(a) * e.reach > LINEARITY * max(e.fmax, abs(e.value) * e.reach):
                continue
            gap = abs(a - e.value)
            if gap <= max(EVIDENCE * b, self.bar * max(abs(a), abs(e.value))):
                continue
            finer = [
                f
                for fam in self.estimates
                for f in fam
                if f.step < e.step
                and abs(f.value - e.value) > EVIDENCE * (b + f.allow_lo)
            ]
            if finer:
                self.scale_dependent = (e, min(finer, key=lambda f: f.step))
                return None
            # Report the most accurate estimate that agrees with this one.
            same = [
                p
                for p in pairs
                if p[3] and abs(p[0].value - e.value) <= EVIDENCE * (b + p[1])
            ]
            best = min(same, key=lambda p: p[1], default=(e, b, where, True))
            return best[0], best[1], best[2]
        return None

    def _one_plateau(self) -> bool:
        """The quick stage sees four decades of steps but not the finest ones:
        it may call a value wrong only when every estimate it has, at every
        step, agrees far better with the others than with ``a``."""
        ests = [e for fam in self.estimates for e in fam]
        if len(ests) < 3:
            return False
        values = [e.value for e in ests]
        spread = max(values) - min(values) + max(e.allow for e in ests)
        return all(abs(self.a - v) > EVIDENCE * spread for v in values)

    def _agreeing(self, pairs) -> tuple[_Estimate, str] | None:
        """Evidence of agreement: a stable pair of estimates (bound within the
        bar) that agrees with ``a``, or two trusted estimates (round-off within
        the bar) of different steps or orders that both agree with it."""
        a = self.a
        for e, b, where, _ in pairs:
            scale = max(abs(a), abs(e.value))
            if b <= self.bar * scale and abs(a - e.value) <= self.bar * scale:
                return e, where
        trusted = []
        for fam in self.estimates:
            for e in fam:
                scale = max(abs(a), abs(e.value))
                if e.allow <= self.bar * scale and abs(a - e.value) <= self.bar * scale:
                    trusted.append(e)
        if len(trusted) >= 2:
            trusted.sort(key=lambda e: abs(a - e.value))
            e1, e2 = trusted[:2]
            return e1, (
                f"h={e1.step:.0e} ({e1.kind}) and h={e2.step:.0e} ({e2.kind}), which "
                "both agree"
            )
        return None

    def _zero(self) -> bool:
        """An analytic value that is zero, or below the resolution of the finite
        difference at its largest step, where ``f`` does not change beyond
        round-off at any step: ok (f is flat along this coordinate)."""
        ests = self.central
        if not ests or any(abs(e.value) > e.allow for e in ests):
            return False
        top = ests[0]
        crossed = self.s.reason[self.i] == CROSSED and not self.chatter
        # Zero, or at the round-off level of the gradient itself (the largest
        # analytic value of the check); and f's noise at its round-off level
        # (not a noisy f that hides everything). A small analytic value that f
        # is merely too coarse to resolve is not zero: it stays untestable,
        # since a wrong value of that size would pass as well.
        tiny = 64 * self.eps * float(self.s.gscale[self.i])
        if abs(self.a) > tiny and self.a != 0.0:
            return False
        if abs(self.a) > top.allow:
            return False
        if self.sigma > 64 * self.eps * max(e.fmax for e in ests):
            return False
        if top.step < self.s.h[self.i] and not crossed:
            return False  # flat only at tiny steps: not evidence enough
        worst = max(abs(e.value) for e in ests)
        what = (
            "exact zero"
            if self.a == 0.0
            else f"zero within round-off (|a|={abs(self.a):.1e})"
        )
        where = "a smaller step avoids the kink: " if crossed else ""
        self.set(
            OK, top.value, top.step,
            f"{where}{what}: f does not change along this coordinate beyond "
            f"round-off at any step up to h={top.step:.0e} (|numeric| <= {worst:.1e})",
        )  # fmt: skip
        return True

    def _finite_somewhere(self) -> bool:
        return bool(np.isfinite(self.plus).any() and np.isfinite(self.minus).any())

    def _kink(self) -> bool:
        """Judges a crossed kink by the one-sided derivatives; False when
        neither side could be measured."""
        s, i, a = self.s, self.i, self.a
        sides_e = []
        for side in (-1, +1):
            pairs = _pairs(self.one_sided(side))
            ests = self.one_sided(side)
            if pairs:
                sides_e.append((pairs[0][0], pairs[0][1]))
            elif ests:
                sides_e.append((ests[-1], ests[-1].allow))
            else:
                sides_e.append(None)
        left, right = sides_e
        if left is None and right is None:
            return False
        sides = (f"left {_fmt(left[0].value)}" if left else "left unknown") + (
            f", right {_fmt(right[0].value)}" if right else ", right unknown"
        )
        found = [e for e in (left, right) if e is not None]
        lo = min(e.value for e, _ in found)
        hi = max(e.value for e, _ in found)
        scale = max(abs(a), abs(lo), abs(hi))
        slack = EVIDENCE * max(b for _, b in found)
        tol = self.bar * scale + slack
        dist = max(lo - a, a - hi, 0.0)
        s.lo[i], s.hi[i] = lo, hi
        step = found[0][0].step
        if dist <= tol:
            if len(found) == 2 and hi - lo <= tol:
                self.set(
                    OK,
                    (lo + hi) / 2,
                    step,
                    f"one-sided derivatives ({sides}) agree and bracket it: a subgradient",
                )
            elif len(found) == 2:
                self.set(KINK, math.nan, step,
                         f"one-sided derivatives ({sides}) bracket it: a subgradient")  # fmt: skip
            else:
                self.set(
                    KINK, math.nan, step, f"matches the one-sided derivative ({sides})"
                )
            return True
        near = lo if abs(a - lo) < abs(a - hi) else hi
        if len(found) == 2 and (s.changed[i] <= 1 or hi - lo <= slack):
            self.set(WRONG, near, step,
                     f"outside the one-sided derivatives ({sides}): not a subgradient")  # fmt: skip
        elif len(found) == 2:
            self.set(INCONCLUSIVE, near, step,
                     f"undecided: outside the one-sided derivatives ({sides}), but "
                     f"{int(s.changed[i])} decisions changed at once")  # fmt: skip
        else:
            self.set(INCONCLUSIVE, near, step,
                     f"undecided: only one side could be measured ({sides})")  # fmt: skip
        return True

    def _unresolved(self, pairs) -> None:
        s, i, a = self.s, self.i, self.a
        reason = int(s.reason[i])
        ests = self.central
        closest = min(ests, key=lambda e: abs(a - e.value), default=None)
        best_note = ""
        if closest is not None:
            rel = float(relative_error(a, closest.value))
            best_note = (
                f"; the closest estimate, rel {rel:.1e}, came at h={closest.step:.0e}"
            )
            if not rel >= s.rel[i]:
                s.numeric[i], s.rel[i], s.step[i] = closest.value, rel, closest.step
        noise = f", noise of f {self.sigma:.1e}" if self.sigma > 0 else ""
        # Estimates that settle (a converged pair) but not within the bar: the
        # precision of f, not a kink or a pole, is the limit: untestable.
        settled = reason == CONFIRM and any(p[3] for p in pairs)
        if reason == ROUNDOFF or settled:
            s.code[i] = UNTESTABLE
            limit = float(self.t[0]) if len(self.t) else float(s.h[i])
            near = [e for e in ests if abs(e.step - limit) <= 1e-9 * limit]
            twice = [e for e in ests if abs(e.step - 2 * limit) <= 1e-9 * limit]
            # At the largest step, does truncation (the change to twice the step)
            # exceed round-off?
            trunc = bool(near and twice) and (
                abs(near[0].value - twice[0].value) > near[0].allow
            )
            hint = _hint(abs(a), abs(self.f0))
            if trunc:
                s.resolution[i] = (
                    f"not resolved by larger steps up to h={limit:.0e} (round-off "
                    f"limits small steps, truncation large ones){best_note}: "
                    f"|a|={abs(a):.1e} against f={self.f0:.3e}{noise}{hint}"
                )
            else:
                s.resolution[i] = (
                    f"below round-off even at h={limit:.0e}: |a|={abs(a):.1e} against "
                    f"f={self.f0:.3e}{noise}{hint}"
                )
            return
        s.code[i] = INCONCLUSIVE
        if reason == CROSSED:
            s.resolution[i] = (
                "undecided: kinks too close to measure a one-sided derivative"
                + best_note
            )
        elif not ests:
            s.resolution[i] = "undecided: f is not finite at the points of the ladder"
        elif self.undersampled:
            s.code[i] = UNTESTABLE
            s.resolution[i] = (
                "f behaves like noise at every step float64 can take here (its "
                f"noise is {self.noise_ratio:.0e} of its size: it changes across "
                "its whole range within one step, e.g. an oscillation at a huge "
                "argument), so no finite difference can test it" + best_note
            )
        elif self.scale_dependent is not None:
            big, small = self.scale_dependent
            s.resolution[i] = (
                "undecided: the finite difference depends on the step (it settles "
                f"at {_fmt(big.value)} for h={big.step:.0e} and at "
                f"{_fmt(small.value)} for h={small.step:.0e}): f is not smooth at "
                "the scale of the larger steps (close eigenvalues or singular "
                "values, a kink jaxcheck cannot see)" + best_note
            )
        else:
            spread = ""
            if pairs:
                spread = f" (the most stable pair, {pairs[0][2]}, agrees only to {pairs[0][1]:.1e})"
            s.resolution[i] = (
                "undecided: the finite difference does not settle across steps"
                + spread
                + best_note
            )


def _hint(a: float, f_abs: float) -> str:
    if a > 0 and f_abs > 0 and a < 1e-6 * f_abs:
        return (
            f"; |a|/|f| = {a / f_abs:.0e}: f is dominated by terms this coordinate "
            "barely moves; check the terms it enters separately or subtract the rest "
            "(scaling the whole loss does not help)"
        )
    if 0 < a < 1e-10:
        factor = 10.0 ** round(-math.log10(a))
        return f"; scale the loss by ~{factor:.0e} to bring it near 1"
    return ""


def follow_up(
    s: State,
    p: Plan,
    values: np.ndarray,
    words: np.ndarray | None,
    w0: np.ndarray | None,
    f0: float,
    eps: float,
    noise_factor: float,
) -> np.ndarray:
    """Judges the follow-up of ``p.sel`` from the rows' values ``(R, 2)`` and,
    when tracked, their decision words ``(R, 2, S)`` and those at ``x``.
    Returns the coordinates (indices into the state) still open after a
    stage-1 or stage-2 plan (always empty after stage 3)."""
    bounds = [*p.first.tolist(), len(p.coord)]
    ones = []
    for q, i in enumerate(p.sel):
        lo, hi = bounds[q], bounds[q + 1]
        ones.append(
            _One(
                s,
                int(i),
                p,
                q,
                values[lo:hi],
                None if words is None else words[lo:hi],
                w0,
                f0,
                eps,
                noise_factor,
                p.deltas[lo:hi],
            )  # fmt: skip
        )
    # Noise is a property of f more than of a coordinate: each coordinate uses
    # at least its leaf's median (a tight noise line near 0 may see none).
    by_group: dict[int, list[float]] = {}
    for one in ones:
        if math.isfinite(one.sigma):
            by_group.setdefault(int(s.group[one.i]), []).append(one.sigma)
    for one in ones:
        got = by_group.get(int(s.group[one.i]))
        if got:
            median = float(np.median(got))
            one.sigma = max(one.sigma, median) if math.isfinite(one.sigma) else median
            if not math.isfinite(one.sigma_lo):
                one.sigma_lo = one.sigma
    ratios: dict[int, list[float]] = {}
    for one in ones:
        if math.isfinite(one.noise_ratio):
            ratios.setdefault(int(s.group[one.i]), []).append(one.noise_ratio)
    for one in ones:
        got = ratios.get(int(s.group[one.i]))
        if not math.isfinite(one.noise_ratio) and got:
            one.noise_ratio = float(np.median(got))
    still = [one.i for one in ones if not one.judge()]
    return np.asarray(still, dtype=np.int64)


def summary_codes(code: np.ndarray) -> dict[str, Any]:
    """Counts of each verdict.

    Examples:
      >>> summary_codes(np.array([0, 0, 1, 4]))
      {'ok': 2, 'wrong': 1, 'untestable': 0, 'kink': 0, 'inconclusive': 1}
    """
    names = ("ok", "wrong", "untestable", "kink", "inconclusive")
    return {n: int((code == k).sum()) for k, n in enumerate(names)}
