"""Step sizes, finite-difference stencils and the round-off noise of ``f``.

The notes: "Be careful with the step size h. It is not necessarily the case
that smaller is better, because when h is much smaller, you may start running
into numerical precision problems." The error of a finite difference is the
sum of a truncation error that grows with ``h`` (``O(h**2)`` for the centered
formula) and a round-off error that grows like ``noise(f) / h``; plotted
against ``h`` on log axes it is a V. This module holds

* the stencils (``method=``): centered, forward, and the 4-point centered
  stencil (Richardson extrapolation of two centered differences), plus the
  one-sided extrapolations used next to a kink;
* the noise estimate of ``f`` at a point (the ECnoise difference table of
  Moré and Wild, 2011), so that "within round-off" is measured, not guessed;
* the choice of ``h`` per leaf (``step="auto"``) and the report of a step
  sweep (:func:`jaxcheck.step_sweep`), with a plot.

Everything here is host-side NumPy except the plot.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from .render import Doc, Rendered, Table

#: Finite-difference formulas, by name.
METHODS: tuple[str, ...] = ("central", "forward", "four_point")
_ALIASES = {
    "centered": "central",
    "richardson": "four_point",
    "five_point": "four_point",
}

#: Step of each method in float64 when the caller gives none (``central``
#: keeps jaxcheck's historical 1e-5; the others are about the optimum
#: ``eps**(1/2)`` and ``eps**(1/5)``).
DEFAULT_STEPS: dict[str, float] = {"central": 1e-5, "forward": 1e-8, "four_point": 1e-3}

#: Steps of a sweep: one per decade from 1e-1 to 1e-10.
SWEEP_STEPS: tuple[float, ...] = tuple(10.0**-k for k in range(1, 11))

#: Steps ``step="auto"`` tries: half decades from 1e-1 to 1e-10.
AUTO_STEPS: tuple[float, ...] = tuple(10.0 ** (-k / 2) for k in range(2, 21))

#: How many standard deviations of measured noise count as round-off: a
#: coordinate within ``NOISE_SIGMAS * sigma / (2 h)`` of its centered estimate
#: is not refuted (that is about 11 standard deviations of the estimate).
NOISE_SIGMAS = 16.0


def canonical_method(method: str) -> str:
    """The canonical name of a finite-difference method.

    Args:
      method: ``"central"``, ``"forward"``, ``"four_point"`` or an alias
        (``"centered"``, ``"richardson"``, ``"five_point"``).

    Returns:
      the name in :data:`METHODS`.

    Raises:
      ValueError: for an unknown method; the message lists the known ones.

    Examples:
      >>> canonical_method("richardson")
      'four_point'
    """
    name = _ALIASES.get(method, method) if isinstance(method, str) else method
    if name not in METHODS:
        raise ValueError(
            f"`method` must be one of {METHODS} (or 'richardson'), got {method!r}."
        )
    return name


def default_step(method: str, eps: float) -> float:
    """The step ``h`` used when the caller gives none.

    For float64 these are :data:`DEFAULT_STEPS`; for a lower precision
    (``eps`` above 1e-15) the optimum of each formula: ``eps**(1/3)`` for
    centered, ``eps**(1/2)`` forward, ``eps**(1/5)`` for the 4-point stencil.

    Args:
      method: a name in :data:`METHODS`.
      eps: machine epsilon of the precision ``f`` computes in.

    Returns:
      the step ``h``.

    Examples:
      >>> default_step("central", 2.220446049250313e-16)
      1e-05
      >>> round(default_step("central", 1.1920929e-07), 4)
      0.0049
    """
    method = canonical_method(method)
    if eps <= 1e-15:
        return DEFAULT_STEPS[method]
    power = {"central": 1 / 3, "forward": 1 / 2, "four_point": 1 / 5}[method]
    return float(eps**power)


def multipliers(method: str) -> tuple[int, ...]:
    """The step multiples ``m`` evaluated at ``x +- m h`` by a method.

    Args:
      method: a name in :data:`METHODS`.

    Returns:
      ``(1,)``, or ``(1, 2)`` for the 4-point stencil.

    Examples:
      >>> multipliers("four_point")
      (1, 2)
    """
    return (1, 2) if canonical_method(method) == "four_point" else (1,)


def offsets(x: ArrayLike, deltas: ArrayLike, dtype: Any = np.float64) -> np.ndarray:
    """The perturbations the device really applies: ``(x + d) - x`` in ``dtype``.

    ``x + h`` is rounded, so the true step differs from ``h`` in its last bits;
    dividing by the true step removes that error.

    Args:
      x: the coordinates' values, shape ``(n,)``.
      deltas: the steps added to them, shape ``(n, K)``.
      dtype: the dtype the device computes ``x + d`` in.

    Returns:
      float64 offsets of shape ``(n, K)``.

    Examples:
      >>> offsets([1.0], [[1e-5]]).item() == (1.0 + 1e-5) - 1.0
      True
    """
    xv = np.asarray(x, dtype=dtype).reshape(-1, 1)
    d = np.asarray(deltas, dtype=dtype)
    return ((xv + d) - xv).astype(np.float64)


def estimate(
    method: str,
    f0: float,
    f_plus: np.ndarray,
    f_minus: np.ndarray,
    off_plus: np.ndarray,
    off_minus: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """A method's derivative estimate from values at ``x +- m h``.

    Args:
      method: a name in :data:`METHODS`.
      f0: ``f(x)``.
      f_plus: ``f(x + m h e_i)``, shape ``(n, len(multipliers(method)))``.
      f_minus: ``f(x - m h e_i)``, same shape.
      off_plus: the true offsets of the plus points (see :func:`offsets`).
      off_minus: the true offsets of the minus points (negative).

    Returns:
      ``(numeric, weight)``: the estimates, and the sum of the absolute
      weights of the values in it (round-off of each value is amplified by
      this; ``1 / h`` for the centered formula).

    Examples:
      >>> fp, fm = np.array([[9.0, 16.0]]), np.array([[1.0, 0.0]])  # f = (2 + t)**2
      >>> n, w = estimate("four_point", 4.0, fp, fm, np.array([[1.0, 2.0]]),
      ...                 np.array([[-1.0, -2.0]]))
      >>> n.tolist(), w.tolist()
      ([4.0], [1.5])
    """
    method = canonical_method(method)
    fp, fm = np.asarray(f_plus), np.asarray(f_minus)
    op, om = np.asarray(off_plus), np.asarray(off_minus)
    with np.errstate(divide="ignore", invalid="ignore"):
        if method == "forward":
            num = (fp[:, 0] - f0) / op[:, 0]
            weight = 2.0 / np.abs(op[:, 0])
        else:
            span = op - om
            d = (fp - fm) / span
            if method == "central":
                num = d[:, 0]
                weight = 2.0 / span[:, 0]
            else:
                num = (4.0 * d[:, 0] - d[:, 1]) / 3.0
                weight = (4.0 / 3.0) * 2.0 / span[:, 0] + (1.0 / 3.0) * 2.0 / span[:, 1]
    return num, weight


def one_sided(values: np.ndarray, offs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The derivative at ``x`` of the quadratic through three points on one side.

    Used next to a kink: the points ``x + t_1, x + t_2, x + t_3`` (all on the
    same side, not including ``x``) lie on one smooth piece of ``f``, and the
    derivative of that piece, extrapolated to ``x``, is its one-sided
    derivative there (``O(h**2)`` accurate), whether or not ``x`` sits exactly
    on the kink.

    Args:
      values: ``f`` at the three points, shape ``(n, 3)``.
      offs: the offsets ``t_j``, shape ``(n, 3)``.

    Returns:
      ``(derivative, weight)``, ``weight`` the sum of absolute weights.

    Examples:
      >>> t = np.array([[1.0, 2.0, 3.0]])
      >>> d, w = one_sided(3 + 2 * t + t**2, t)  # f(t) = 3 + 2t + t^2: f'(0) = 2
      >>> d.round(12).tolist(), w.tolist()
      ([2.0], [8.0])
    """
    t = np.asarray(offs, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    w = np.zeros_like(t)
    with np.errstate(divide="ignore", invalid="ignore"):
        for j in range(3):
            a, b = [t[:, k] for k in range(3) if k != j]
            w[:, j] = -(a + b) / ((t[:, j] - a) * (t[:, j] - b))
    return (w * v).sum(axis=1), np.abs(w).sum(axis=1)


def noise_allowance(
    weight: ArrayLike,
    scale: ArrayLike,
    eps: float,
    noise_factor: float,
    sigma: ArrayLike = 0.0,
) -> np.ndarray:
    """The absolute round-off allowance of a finite-difference estimate.

    ``0.5 * weight * max(noise_factor * eps * scale, NOISE_SIGMAS * sigma)``:
    the model ``eps * |f|`` of the round-off of one evaluation, or the measured
    standard deviation ``sigma`` of that round-off when it is larger. For the
    centered formula, ``weight = 1 / h`` and this is
    ``noise_factor * eps * |f| / (2 h)``.

    Args:
      weight: the sum of absolute weights of the estimate (see :func:`estimate`).
      scale: ``|f|`` at the points used.
      eps: machine epsilon of the precision ``f`` computes in.
      noise_factor: the model's allowance in units of ``eps * |f|``.
      sigma: the measured noise of ``f`` (standard deviation), 0 if unknown.

    Returns:
      the absolute allowance, broadcast over the inputs.

    Examples:
      >>> float(noise_allowance(1e5, 1.0, 2**-52, 64.0))  # 32 eps / h
      7.105427357601002e-10
    """
    model = noise_factor * eps * np.asarray(scale, dtype=np.float64)
    measured = NOISE_SIGMAS * np.asarray(sigma, dtype=np.float64)
    return 0.5 * np.asarray(weight, dtype=np.float64) * np.maximum(model, measured)


def ecnoise(values: ArrayLike, max_order: int = 6, bound: bool = False) -> np.ndarray:
    """The standard deviation of the round-off noise in ``values`` (ECnoise).

    ``values[..., k] = f(x + k delta p)`` on equally spaced points. Differences
    of order ``j`` of a smooth function shrink like ``delta**j``; those of
    noise do not, and ``gamma_j * mean((Delta^j f)**2)`` with
    ``gamma_j = (j!)**2 / (2j)!`` estimates its variance (Moré and Wild,
    "Estimating computational noise", SIAM J. Sci. Comput. 2011). An order is
    accepted when its differences change sign and the estimates of it and the
    next two orders agree within a factor of 4.

    Args:
      values: shape ``(..., m + 1)`` with ``m >= max_order + 2``.
      max_order: the highest difference order used.
      bound: where no order is accepted, return the smallest scaled difference
        (an upper bound of the noise) instead of NaN.

    Returns:
      the noise estimates, shape ``values.shape[:-1]``; 0 where ``f`` is
      constant along the points (no noise seen), NaN where no order is
      accepted (the points are too far apart: truncation dominates) unless
      ``bound``.

    Examples:
      >>> rng = np.random.default_rng(0)
      >>> t = np.arange(13) * 1e-6
      >>> f = 1.0 + 2.0 * t + 1e-10 * rng.standard_normal(13)
      >>> bool(0.3e-10 < ecnoise(f) < 3e-10)
      True
      >>> float(ecnoise(np.full(13, 2.0)))
      0.0
    """
    v = np.asarray(values, dtype=np.float64)
    sig, changes = [], []
    d = v
    for j in range(1, max_order + 1):
        d = np.diff(d, axis=-1)
        gamma = math.factorial(j) ** 2 / math.factorial(2 * j)
        sig.append(np.sqrt(gamma * np.mean(d * d, axis=-1)))
        changes.append((d.min(axis=-1) < 0) & (d.max(axis=-1) > 0))
    sig_a, chg_a = np.stack(sig, -1), np.stack(changes, -1)
    out = np.full(v.shape[:-1], np.nan)
    done = np.zeros(v.shape[:-1], dtype=bool)
    for k in range(max_order - 2):
        trio = sig_a[..., k : k + 3]
        ok = (trio.max(-1) <= 4 * trio.min(-1)) & chg_a[..., k] & ~done
        out = np.where(ok, sig_a[..., k], out)
        done |= ok
    if bound:
        # No order accepted: the smallest scaled difference still bounds the
        # noise from above (noise enters every order).
        out = np.where(np.isfinite(out), out, sig_a.min(axis=-1))
    constant = np.all(v == v[..., :1], axis=-1)
    return np.where(constant, 0.0, out)


def noise_offsets(x: ArrayLike, num: int = 6, rel: float = 1e-6) -> np.ndarray:
    """Offsets ``+-k delta`` (``k = 1..num``) of the noise estimate, per row.

    ``delta = rel * max(|x|, 1e-3)``: small enough that the sixth differences
    of the smooth part of ``f`` are far below round-off, large enough that every
    point is a different floating-point number.

    Args:
      x: the coordinates' values, shape ``(n,)``.
      num: points on each side.
      rel: the spacing relative to ``|x|``.

    Returns:
      shape ``(n, num, 2)``: ``[..., 0] = +k delta``, ``[..., 1] = -k delta``.

    Examples:
      >>> noise_offsets([2.0], num=2).tolist()
      [[[2e-06, -2e-06], [4e-06, -4e-06]]]
    """
    xv = np.abs(np.asarray(x, dtype=np.float64)).reshape(-1, 1)
    delta = rel * np.maximum(xv, 1e-3)
    k = np.arange(1, num + 1, dtype=np.float64)
    plus = delta * k
    return np.stack([plus, -plus], axis=-1)


def noise_from_rows(
    f0: float, plus: np.ndarray, minus: np.ndarray, bound: bool = False
) -> np.ndarray:
    """ECnoise of the symmetric points ``f(x - k d), ..., f(x), ..., f(x + k d)``.

    Args:
      f0: ``f(x)``.
      plus: ``f(x + k d)`` for ``k = 1..num``, shape ``(n, num)``.
      minus: ``f(x - k d)``, same shape.

    Returns:
      shape ``(n,)`` noise estimates (see :func:`ecnoise`).

    Examples:
      >>> noise_from_rows(1.0, np.ones((1, 6)), np.ones((1, 6))).tolist()
      [0.0]
    """
    plus, minus = np.asarray(plus), np.asarray(minus)
    line = np.concatenate(
        [minus[:, ::-1], np.full((plus.shape[0], 1), f0), plus], axis=1
    )
    return ecnoise(line, bound=bound)


def choose_step(
    steps: ArrayLike, numeric: np.ndarray, valid: np.ndarray | None = None
) -> tuple[float, np.ndarray]:
    """The step where the estimate is most stable, from a ladder of steps.

    For each pair of neighbouring steps the change of the estimate,
    ``|D(h_j) - D(h_{j+1})| / |D|``, bounds the error of the larger one; the
    step of the pair with the smallest median change (over the sampled
    coordinates) wins. The analytic gradient is not used, so a wrong gradient
    cannot steer the choice.

    Args:
      steps: the ladder, largest first, shape ``(K,)``.
      numeric: estimates, shape ``(n, K)``.
      valid: which estimates may be used (e.g. no kink crossed), ``(n, K)``.

    Returns:
      ``(step, change)``: the chosen step and the median change per pair
      (shape ``(K - 1,)``, NaN where unusable).

    Examples:
      >>> steps = np.array([1e-1, 1e-2, 1e-3, 1e-4])
      >>> d = np.array([[1.01, 1.0001, 1.000001, 1.0003]])  # truncation, then noise
      >>> choose_step(steps, d)[0]
      0.01
    """
    h = np.asarray(steps, dtype=np.float64)
    d = np.asarray(numeric, dtype=np.float64)
    ok = np.isfinite(d) if valid is None else (np.asarray(valid) & np.isfinite(d))
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.maximum(np.abs(d[:, 1:]), np.abs(d[:, :-1]))
        change = np.abs(d[:, 1:] - d[:, :-1]) / np.where(scale > 0, scale, 1.0)
    change = np.where(ok[:, 1:] & ok[:, :-1], change, np.nan)
    with np.errstate(all="ignore"):
        med = np.array(
            [
                np.nanmedian(change[:, j])
                if np.isfinite(change[:, j]).any()
                else np.nan
                for j in range(change.shape[1])
            ]
        )
    if not np.isfinite(med).any():
        return float("nan"), med
    j = int(np.nanargmin(med))
    return float(h[j]), med


# --------------------------------------------------------------------------- #
# The step sweep report.
# --------------------------------------------------------------------------- #


@dataclasses.dataclass(frozen=True)
class LeafSweep(Rendered):
    """Error against step size for the sampled coordinates of one leaf.

    Attributes:
      path: ``jax.tree_util.keystr`` of the leaf.
      indices: the sampled coordinates (multi-indices).
      steps: the steps, largest first.
      analytic: the analytic gradient at each coordinate, shape ``(n,)``.
      numeric: the estimates, shape ``(n, len(steps))``.
      rel_error: relative errors, same shape.
      kink: whether a kink was crossed at that step, same shape.
      noise: the measured round-off noise of ``f`` along each coordinate
        (standard deviation; NaN where not measurable), shape ``(n,)``.
      best_step: the step with the smallest median relative error.
    """

    path: str
    indices: tuple[tuple[int, ...], ...]
    steps: tuple[float, ...]
    analytic: np.ndarray
    numeric: np.ndarray
    rel_error: np.ndarray
    kink: np.ndarray
    noise: np.ndarray
    best_step: float

    @property
    def median_error(self) -> np.ndarray:
        """Median relative error over the coordinates at each step."""
        with np.errstate(all="ignore"):
            return np.array(
                [
                    np.nanmedian(self.rel_error[:, k])
                    if np.isfinite(self.rel_error[:, k]).any()
                    else np.nan
                    for k in range(len(self.steps))
                ]
            )

    _dict_extra = ("median_error",)

    def _doc(self) -> Doc:
        sweep = StepSweep((self,), self.steps, "", math.nan)
        summary = f"step sweep of {self.path}: best h = {self.best_step:.0e}"
        return Doc(summary, [sweep._table()])


@dataclasses.dataclass(frozen=True)
class StepSweep(Rendered):
    """The result of :func:`jaxcheck.step_sweep`: error against ``h`` per leaf.

    Attributes:
      leaves: one :class:`LeafSweep` per checked leaf.
      steps: the steps, largest first.
      method: the finite-difference formula.
      f_value: ``f`` at the point.
      grad_source: where the analytic gradient came from.
    """

    leaves: tuple[LeafSweep, ...]
    steps: tuple[float, ...]
    method: str
    f_value: float
    grad_source: str = "jax.grad"

    @property
    def best_step(self) -> float:
        """The step with the smallest median error over every leaf."""
        errs = np.stack([leaf.median_error for leaf in self.leaves])
        with np.errstate(all="ignore"):
            worst = np.nanmax(np.where(np.isfinite(errs), errs, np.inf), axis=0)
        return float(self.steps[int(np.argmin(worst))])

    def leaf(self, path: str) -> LeafSweep:
        """The sweep of the leaf at ``path``.

        Raises:
          KeyError: if no leaf has that path.
        """
        for leaf in self.leaves:
            if leaf.path == path:
                return leaf
        raise KeyError(
            f"No leaf at path {path!r}; leaves: {[leaf.path for leaf in self.leaves]}."
        )

    _dict_extra = ("best_step",)

    def table(self) -> list[list[str]]:
        """The median relative error per step (rows) and leaf (columns), as
        text cells, the header first; ``*`` marks a step that crossed a kink."""
        table = self._table()
        return [list(table.header), *map(list, table.rows)]

    def _table(self) -> Table:
        rows = []
        meds = [leaf.median_error for leaf in self.leaves]
        for k, h in enumerate(self.steps):
            row = [f"{h:.0e}"]
            for leaf, med in zip(self.leaves, meds, strict=True):
                cell = "-" if not np.isfinite(med[k]) else f"{med[k]:.1e}"
                row.append(cell + ("*" if leaf.kink[:, k].any() else ""))
            rows.append(row)
        paths = [leaf.path or "(root)" for leaf in self.leaves]
        return Table(["h", *paths], rows, "right")

    def _doc(self) -> Doc:
        summary = (
            f"jaxcheck: step sweep, {self.method} differences, f={self.f_value:.6g}, "
            f"gradient from {self.grad_source}; median relative error per leaf "
            f"(* = a kink was crossed); best h = {self.best_step:.0e}"
        )
        lines = [
            f"  best h for {lf.path or '(root)'}: {lf.best_step:.0e}"
            for lf in self.leaves
        ]
        return Doc(summary, [self._table(), *lines])

    def plot(self, ax: Any = None) -> Any:
        """Plots error against step size (see :func:`plot_step_sweep`)."""
        return plot_step_sweep(self, ax=ax)


def plot_step_sweep(
    sweep: StepSweep, ax: Any = None, *, show_noise: bool = True
) -> Any:
    """Plots relative error against ``h`` on log axes, one line per leaf.

    The median over each leaf's sampled coordinates is drawn as a line, every
    coordinate as faint dots; steps where a kink was crossed are marked with
    crosses. The dashed line of each leaf is the round-off floor predicted
    from the measured noise, ``sigma / (h |a|)``: the right arm of the V.

    Args:
      sweep: a :class:`StepSweep`.
      ax: a matplotlib axes; default a new figure.
      show_noise: draw the round-off floor.

    Returns:
      the axes.

    Raises:
      ImportError: if matplotlib is not installed.

    Examples:
      >>> from jaxcheck import step_sweep
      >>> sweep = step_sweep(lambda w: jnp.sum(jnp.sin(w)), jnp.ones(3))
      >>> ax = plot_step_sweep(sweep)
      >>> ax.get_xscale(), ax.get_yscale()
      ('log', 'log')
    """
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError(
            "plot_step_sweep needs matplotlib: `pip install 'jaxcheck[plots]'`."
        ) from None
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    steps = np.asarray(sweep.steps)
    floor = 1e-18
    for k, leaf in enumerate(sweep.leaves):
        color = f"C{k % 10}"
        rel = np.where(np.isfinite(leaf.rel_error), leaf.rel_error, np.nan)
        for row, kink in zip(rel, leaf.kink, strict=True):
            ax.scatter(steps, np.maximum(row, floor), s=6, color=color, alpha=0.25)
            if kink.any():
                ax.scatter(
                    steps[kink], np.maximum(row[kink], floor), marker="x", color=color
                )
        ax.plot(steps, np.maximum(leaf.median_error, floor), "-o", color=color,
                label=leaf.path or "params", markersize=3)  # fmt: skip
        if show_noise:
            with np.errstate(all="ignore"):
                a = np.nanmedian(np.abs(leaf.analytic))
                sigma = np.nanmedian(leaf.noise)
            if np.isfinite(sigma) and sigma > 0 and a > 0:
                ax.plot(steps, sigma / (steps * a), "--", color=color, alpha=0.6,
                        linewidth=1)  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("step h")
    ax.set_ylabel("relative error |a - n| / max(|a|, |n|)")
    ax.set_title(f"error against step size ({sweep.method} differences)")
    ax.legend(fontsize="small")
    return ax
