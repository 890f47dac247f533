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

import math

import numpy as np

from .evidence import _One
from .ladder import Plan, ladder_steps, noise_line, plan
from .state import (
    CONFIRM,
    CROSSED,
    DOMAIN,
    NAN_GRADIENT,
    NONE,
    NONFINITE,
    ROUNDOFF,
    State,
    main_pass,
    summary_codes,
)

__all__ = (
    "CONFIRM",
    "CROSSED",
    "DOMAIN",
    "NAN_GRADIENT",
    "NONE",
    "NONFINITE",
    "ROUNDOFF",
    "Plan",
    "State",
    "follow_up",
    "ladder_steps",
    "main_pass",
    "noise_line",
    "plan",
    "summary_codes",
)


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
    # (One median per leaf, computed once: per coordinate it made a follow-up
    # of n coordinates cost O(n^2).)
    sigmas = _group_medians(ones, s.group, "sigma")
    ratios = _group_medians(ones, s.group, "noise_ratio")
    for one in ones:
        median = sigmas.get(int(s.group[one.i]))
        if median is not None:
            one.sigma = max(one.sigma, median) if math.isfinite(one.sigma) else median
            if not math.isfinite(one.sigma_lo):
                one.sigma_lo = one.sigma
        ratio = ratios.get(int(s.group[one.i]))
        if not math.isfinite(one.noise_ratio) and ratio is not None:
            one.noise_ratio = ratio
    still = [one.i for one in ones if not one.judge()]
    return np.asarray(still, dtype=np.int64)


def _group_medians(ones: list[_One], group: np.ndarray, name: str) -> dict[int, float]:
    """The median of the finite values of attribute ``name`` of ``ones``, per
    group (leaf) that has any."""
    by_group: dict[int, list[float]] = {}
    for one in ones:
        value = getattr(one, name)
        if math.isfinite(value):
            by_group.setdefault(int(group[one.i]), []).append(value)
    return {g: float(np.median(v)) for g, v in by_group.items()}
