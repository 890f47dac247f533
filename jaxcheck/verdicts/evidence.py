"""The judgement of one followed-up coordinate from its evidence: the estimates
of its ladder, their stability across steps, Richardson extrapolation, the
measured noise and the one-sided derivatives at a kink."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from .. import steps as stencils
from ..compare import (
    INCONCLUSIVE,
    KINK,
    OK,
    UNTESTABLE,
    WRONG,
    relative_error,
)
from .ladder import (
    Plan,
)
from .state import (
    CONFIRM,
    CROSSED,
    DOMAIN,
    EVIDENCE,
    LINEARITY,
    NAN_GRADIENT,
    NOISE_POINTS,
    NONFINITE,
    ROUGH,
    ROUNDOFF,
    SD_MARGIN,
    UNDERSAMPLED,
    State,
)


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
        # The truncation error left at the smaller step is spread / (r**p - 1)
        # (Richardson), r the ratio of the steps: the spread itself bounds it
        # only where r**p >= 2. Two nearly equal steps (a rung relative to |x_i|
        # next to a ladder rung) agree whatever their common error.
        grow = (e1.step / e2.step) ** e2.order - 1.0
        out.append((e2, spread / min(max(grow, 1e-12), 1.0) + margin, where, converged))
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
        self.abs_x = abs(x)
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

    @property
    def rough(self) -> bool:
        """Whether the measured noise of ``f`` is far above its round-off
        (see :data:`ROUGH`)."""
        floor = self.eps * max(abs(self.f0), 1e-300)
        return math.isfinite(self.sigma) and self.sigma > ROUGH * floor

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
        return 0 < self.abs_x <= reach

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
        # Python floats (not numpy scalars) in the loop: ~1 ms per coordinate
        # of a failing check went here.
        plus, minus = self.plus.tolist(), self.minus.tolist()
        op, om, t = self.op.tolist(), self.om.tolist(), self.t.tolist()
        same = (self.same_p & self.same_m).tolist()
        f0, chatter, mults = abs(self.f0), self.chatter, len(plus[0])
        central: list[_Estimate] = []
        rich: dict[str, list[_Estimate]] = {name: [] for name in _RICHARDSON}
        for k in range(len(t)):
            cs, ws, allows, sds, lows = [], [], [], [], []
            for m in range(mults):
                p, q = plus[k][m], minus[k][m]
                span = op[k][m] - om[k][m]
                if not (
                    math.isfinite(p) and math.isfinite(q) and span > 0
                    and (chatter or same[k][m])
                ):  # fmt: skip
                    break
                scale = max(abs(p), abs(q), f0)
                w = (2.0 / span, scale)
                cs.append((p - q) / span)
                ws.append(w)
                allows.append(self.allow(*w))
                sds.append(self.sd(*w))
                lows.append(self.allow(*w, low=True))
                half = span / 2
                if any(abs(e.step - half) <= 1e-9 * e.step for e in central):
                    continue  # the same points as another rung
                central.append(
                    _Estimate(
                        cs[-1], half, allows[-1], sd=sds[-1],
                        across_zero=self._across_zero(half), allow_lo=lows[-1],
                        reach=half, fmax=scale,
                    )
                )  # fmt: skip
            else:
                for name, (coef, order) in _RICHARDSON.items():
                    if len(cs) < 3 and coef[2]:
                        continue
                    n = min(len(coef), len(cs))
                    value = sum(coef[j] * cs[j] for j in range(n))
                    allow = sum(abs(coef[j]) * allows[j] for j in range(n))
                    sd = sum(abs(coef[j]) * sds[j] for j in range(n))
                    low = sum(abs(coef[j]) * lows[j] for j in range(n))
                    reach = t[k] * (3 if coef[2] else 2)
                    rich[name].append(
                        _Estimate(
                            value, t[k], allow, name, sd, order,
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
        if self.stage == 2 and self.rough:
            return None  # the deep ladder's finer steps decide
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
