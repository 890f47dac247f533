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
judges it. A leaf with more coordinates to follow up than ``max_follow_ups``
follows up a sample first (:func:`sample_follow_ups`); once one of its
coordinates is confirmed wrong, the rest are left inconclusive
(:func:`leave_failed_leaves`).
"""

from __future__ import annotations

import math

import numpy as np

from ..compare import INCONCLUSIVE, WRONG
from .evidence import _One
from .ladder import Plan, ladder_steps, noise_line, plan
from .state import (
    CONFIRM,
    CROSSED,
    DEFERRED,
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
    "DEFERRED",
    "DOMAIN",
    "NAN_GRADIENT",
    "NONE",
    "NONFINITE",
    "ROUNDOFF",
    "Plan",
    "State",
    "follow_up",
    "leave_failed_leaves",
    "ladder_steps",
    "main_pass",
    "noise_line",
    "plan",
    "sample_follow_ups",
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


def sample_follow_ups(
    s: State, cap: int | None, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """The coordinates to follow up (``s.reason`` set), split into those
    followed up first and the others: a leaf with more than ``cap`` of them
    gets a random sample (``seed``) of ``cap`` first. After following those up,
    :func:`leave_failed_leaves` says which of the others are left. A wrong
    gradient of a large leaf then costs a ladder of evaluations per sampled
    coordinate, not per coordinate.

    Examples:
      >>> s = State(a=np.ones(5), x=np.zeros(5), h=np.ones(5), bar=np.ones(5))
      >>> s.reason[:] = [CONFIRM, CONFIRM, NONE, ROUNDOFF, CONFIRM]
      >>> first, later = sample_follow_ups(s, 2, seed=0)
      >>> len(first), len(later), sorted([*first.tolist(), *later.tolist()])
      (2, 2, [0, 1, 3, 4])
      >>> sample_follow_ups(s, None, seed=0)[1]
      array([], dtype=int64)
    """
    todo = np.flatnonzero(s.reason != NONE)
    if cap is None or len(todo) <= cap:
        return todo, todo[:0]
    first, later = [], [todo[:0]]
    for k in np.unique(s.group[todo]):
        mine = todo[s.group[todo] == k]
        pick = np.zeros(len(mine), dtype=bool)
        if len(mine) <= cap:
            pick[:] = True
        else:
            rng = np.random.default_rng([seed, int(k), 11])
            pick[rng.choice(len(mine), cap, replace=False)] = True
        first.append(mine[pick])
        later.append(mine[~pick])
    return np.sort(np.concatenate(first)), np.concatenate(later)


def leave_failed_leaves(s: State, later: np.ndarray, cap: int | None) -> np.ndarray:
    """Of the coordinates ``later`` (not followed up yet), those of leaves that
    already have a coordinate confirmed wrong are left: inconclusive, with a
    reason; returns that mask. The others must still be followed up, so that a
    leaf never passes on a sample.

    Examples:
      >>> s = State(a=np.ones(4), x=np.zeros(4), h=np.ones(4), bar=np.ones(4),
      ...           group=np.array([0, 0, 1, 1]))
      >>> s.code[:] = WRONG  # the main pass: outside the bar
      >>> s.code[3] = 0  # followed up: ok
      >>> left = leave_failed_leaves(s, np.array([1, 2]), cap=1)
      >>> left.tolist(), s.code.tolist()
      ([True, False], [1, 4, 1, 0])
    """
    judged = np.ones(len(s.code), dtype=bool)
    judged[later] = False
    failed = np.zeros(int(s.group.max(initial=0)) + 1, dtype=bool)
    failed[np.unique(s.group[judged & (s.code == WRONG)])] = True
    left = failed[s.group[later]]
    for k in np.unique(s.group[later[left]]):
        mine = later[left & (s.group[later] == k)]
        s.code[mine] = INCONCLUSIVE
        wrong = int(((s.group == k) & (s.code == WRONG)).sum())
        s.reason[mine] = DEFERRED
        s.resolution[mine] = (
            f"not followed up: this leaf already has {wrong} coordinate"
            f"{'s' if wrong > 1 else ''} confirmed wrong (a sample of {cap} of its "
            "coordinates outside the bar or within round-off was followed up; "
            "max_follow_ups=None follows up every one)"
        )
    return left
