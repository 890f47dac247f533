"""The state of a check's coordinates as they are judged, the constants of the
judgement, and the judgement of the main pass (see :mod:`jaxcheck.verdicts.judge`
for the verdicts and how they are reached)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from .. import steps as stencils
from ..compare import (
    INCONCLUSIVE,
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
#: ``f`` is rough at the scale of its noise lines where its measured noise
#: exceeds this many times its round-off (``eps |f|``): an oscillation faster than
#: the steps (``sici``, ``fresnel`` at a huge argument) looks like noise there, and
#: steps across it see a smoothed ``f``. Such a coordinate is not called wrong
#: from the full ladder; the deep ladder's finer steps must confirm it.
ROUGH = 1e4

#: Why a non-finite analytic value where ``f`` is finite is wrong.
NAN_GRADIENT = (
    "the analytic gradient is not finite where f is: a NaN or inf leaked into the "
    "backward pass (e.g. from a discarded jnp.where branch)"
)

# Why a coordinate needs a follow-up.
NONE, ROUNDOFF, CONFIRM, CROSSED, NONFINITE = 0, 1, 2, 3, 4
#: Outside the bar at the main step and not followed up: its leaf had already
#: failed (``max_follow_ups``); the coordinate is left inconclusive.
DEFERRED = 5
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


def summary_codes(code: np.ndarray) -> dict[str, Any]:
    """Counts of each verdict.

    Examples:
      >>> summary_codes(np.array([0, 0, 1, 4]))
      {'ok': 2, 'wrong': 1, 'untestable': 0, 'kink': 0, 'inconclusive': 1}
    """
    names = ("ok", "wrong", "untestable", "kink", "inconclusive")
    return {n: int((code == k).sum()) for k, n in enumerate(names)}
