"""The follow-up ladder: the steps and noise lines a coordinate is evaluated at
when the main pass cannot settle it, and the rows of a follow-up."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from .state import (
    DEEP_LADDER,
    LADDER,
    MAX_STEP,
    MULTS,
    NOISE_POINTS,
    NOISE_SAMPLE,
    STAGE1_LADDER,
    STAGE1_MULTS,
    TINY_STEPS,
    State,
)


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
