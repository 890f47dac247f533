"""Random directions per leaf, the probability of missing a bug with them, and
the localisation of wrong coordinates by bisection.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import compare, engine, tree
from ..options import callable_name, validate_callables
from ..report import CoordResult
from ._common import (
    _BATCH_BUDGET,
    _FOLLOW_FRACTION,
    PyTree,
    _device,
    _GradOf,
    _Point,
    _pow2_floor,
    _prepare,
    _scalar_output,
    _UserGradOf,
    _validate_common,
    _value_jit,
    _ValueOf,
)
from .directions_report import DirectionLeafReport, DirectionResult, DirectionsReport


def miss_probability(
    relative_error: float, num_directions: int = 1, rtol: float = compare.SMOOTH_RTOL
) -> float:
    """Upper bound on the probability that ``num_directions`` random directions
    all miss a wrong gradient.

    Let the analytic gradient of a leaf be ``a = g + e``, with ``g`` the true
    gradient and ``e`` the error, of relative size ``r = |e| / |g|``. One
    standard-normal direction ``v`` passes when the directional derivatives
    agree within ``rtol``: ``|<e, v>| <= rtol * max(|<a, v>|, |<g, v>|)``. For
    a Gaussian ``v``, ``<e, v>`` and ``<g, v>`` are jointly normal, and the
    probability of passing is at most

        ``max over the part of e along g of (atan((t - α)/s) + atan((t + α)/s)) / π``

    with ``t = rtol / (1 - rtol)``, ``α`` the relative size of ``e``'s component
    along ``g`` and ``s = sqrt(r² - α²)`` the rest; the worst case is an error
    orthogonal to the gradient, where it is ``(2/π) atan(t / r)``. Independent
    directions multiply. The bound assumes exact differences (it ignores
    round-off and truncation, which :func:`check_directions` reports separately).

    Args:
      relative_error: ``|e| / |g|``, the size of the bug relative to the leaf's
        gradient (e.g. ``1.0`` for a gradient off by a whole factor, ``1e-2``
        for a 1% error, ``|e_j| / |g|`` for one wrong entry ``j``).
      num_directions: ``K``, the number of independent directions.
      rtol: the relative-error bar of the check.

    Returns:
      the bound, in ``[0, 1]``.

    Raises:
      ValueError: for a negative ``relative_error``, ``num_directions < 1``, or
        ``rtol`` outside ``(0, 1)``.

    Examples:
      >>> p = miss_probability(1e-2, 1, rtol=1e-7)  # a 1% error, one direction
      >>> round(p / (2 / 3.141592653589793 * 1e-5), 3)  # (2/pi) * atan(1e-5)
      1.0
      >>> miss_probability(1e-6, 4, rtol=1e-4) > 0.9  # an error below the bar
      True
    """
    r = float(relative_error)
    t = float(rtol)
    if not r >= 0:
        raise ValueError(f"`relative_error` must be >= 0, got {relative_error!r}.")
    if not isinstance(num_directions, int) or num_directions < 1:
        raise ValueError(
            f"`num_directions` must be an int >= 1, got {num_directions!r}."
        )
    if not 0.0 < t < 1.0:
        raise ValueError(f"`rtol` must lie in (0, 1), got {rtol!r}.")
    t = t / (1.0 - t)
    if r == 0:
        return 1.0

    def bound(theta: np.ndarray) -> np.ndarray:
        alpha = r * np.sin(theta)
        s = r * np.cos(theta)
        return (np.arctan2(t - alpha, s) + np.arctan2(t + alpha, s)) / np.pi

    # The maximum over the split of e: a grid, then a finer grid around its best.
    theta = np.linspace(0.0, np.pi / 2, 4097)
    best = theta[int(np.argmax(bound(theta)))]
    d = theta[1] - theta[0]
    fine = np.clip(np.linspace(best - d, best + d, 1025), 0.0, np.pi / 2)
    p1 = float(np.clip(max(bound(theta).max(), bound(fine).max()), 0.0, 1.0))
    return p1**num_directions


def directions_for_risk(
    risk: float, relative_error: float = 1e-2, rtol: float = compare.SMOOTH_RTOL
) -> int:
    """The fewest random directions that miss a wrong gradient of relative size
    ``relative_error`` with probability at most ``risk``.

    Args:
      risk: the accepted probability of missing the bug, in ``(0, 1)``.
      relative_error: the smallest bug to catch, ``|e| / |g|`` per leaf.
      rtol: the relative-error bar of the check.

    Returns:
      ``K >= 1``.

    Raises:
      ValueError: if ``risk`` is not in ``(0, 1)``, or ``relative_error`` is so
        small against ``rtol`` that no number of directions reaches ``risk``.

    Examples:
      >>> directions_for_risk(1e-6, relative_error=1e-2, rtol=1e-7)
      2
      >>> directions_for_risk(1e-3, relative_error=1e-3, rtol=1e-4)
      3
    """
    if not 0.0 < float(risk) < 1.0:
        raise ValueError(
            f"`risk` must lie in (0, 1), got {risk!r}: it is the probability of "
            "missing a bug that you accept, e.g. 1e-6."
        )
    p1 = miss_probability(relative_error, 1, rtol)
    if p1 == 0.0:
        return 1
    if p1 >= 1.0:
        raise ValueError(
            f"A bug of relative size {relative_error!r} is not above the bar "
            f"rtol={rtol!r}, so no number of directions catches it. Choose a larger "
            "`relative_error` or a smaller `rtol`."
        )
    return max(1, math.ceil(math.log(risk) / math.log(p1) - 1e-12))


def _group_values(
    fn: engine.LeafFunction,
    x: jax.Array,
    g: jax.Array,
    v: jax.Array,
    rows: jax.Array,
    lo: jax.Array,
    hi: jax.Array,
    h: jax.Array,
    dyn_params: list,
    dyn_args: list,
) -> tuple[jax.Array, ...]:
    """For each group ``(row, lo, hi)``: the unit direction ``w`` = ``v[row]``
    restricted to ``[lo, hi)``, ``f(x ± h w)``, ``<g, d>`` and ``|d|`` with
    ``d = (x + h w) - (x - h w)``, and the norm of the restriction."""
    ar = jnp.arange(x.shape[0])

    def one(r: jax.Array, a: jax.Array, b: jax.Array) -> tuple[jax.Array, ...]:
        restricted = jnp.where((ar >= a) & (ar < b), v[r], 0.0)
        norm = jnp.linalg.norm(restricted)
        w = restricted / norm
        xp = x + h * w
        xm = x - h * w
        d = xp - xm
        return (
            fn(xp, dyn_params, dyn_args),
            fn(xm, dyn_params, dyn_args),
            jnp.vdot(g, d),
            jnp.linalg.norm(d),
            norm,
        )

    return jax.vmap(one)(rows, lo, hi)


_group_values_jit = jax.jit(_group_values, static_argnums=0)


class _GroupTester:
    """Evaluates groups of one leaf in vmapped batches and counts evaluations."""

    def __init__(
        self,
        fn: engine.LeafFunction,
        x: jax.Array,
        g: jax.Array,
        v: jax.Array,
        step: float,
        dyn_params: list,
        dyn_args: list,
        f0: float,
        eps: float,
        bar: compare.Bar,
        budget: int,
    ):
        self.fn, self.x, self.g, self.v = fn, x, g, v
        self.h = jnp.asarray(step, jnp.float64)
        self.dp, self.da = dyn_params, dyn_args
        self.f0, self.eps, self.bar = f0, eps, bar
        n = int(x.shape[0])
        self.max_batch = _pow2_floor(max(1, budget // (8 * 8 * max(n, 1))))
        self.evaluations = 0

    def __call__(self, rows: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> dict:
        m = len(rows)
        outs: list[list[np.ndarray]] = [[] for _ in range(5)]
        for start in range(0, m, self.max_batch):
            stop = min(m, start + self.max_batch)
            b = min(self.max_batch, 1 << max(0, (stop - start - 1).bit_length()))
            pad = np.zeros((3, b), np.int32)
            pad[0, : stop - start] = rows[start:stop]
            pad[1, : stop - start] = lo[start:stop]
            pad[2, : stop - start] = hi[start:stop]
            pad[:, stop - start :] = pad[:, :1]
            res = _group_values_jit(
                self.fn, self.x, self.g, self.v, jnp.asarray(pad[0]),
                jnp.asarray(pad[1]), jnp.asarray(pad[2]), self.h, self.dp, self.da,
            )  # fmt: skip
            for k in range(5):
                outs[k].append(np.asarray(res[k], np.float64)[: stop - start])
        self.evaluations += 2 * m
        fp, fm, gd, dlen, vnorm = (np.concatenate(o) for o in outs)
        analytic = gd / dlen
        numeric = (fp - fm) / dlen
        scale = np.maximum(np.maximum(np.abs(fp), np.abs(fm)), abs(self.f0))
        noise = self.bar.noise_factor * self.eps * scale / dlen
        return {
            "analytic": analytic,
            "numeric": numeric,
            "rel": compare.relative_error(analytic, numeric),
            "codes": compare.verdicts(analytic, numeric, noise, self.bar.rtol),
            "err": (analytic - numeric) * vnorm,
            "noise": noise * vnorm,
            "fp": fp,
            "fm": fm,
        }


def _localize(
    tester: _GroupTester,
    row: int,
    n: int,
    v_row: np.ndarray,
    shape: tuple[int, ...],
    top: dict,
    k: int,
    max_groups: int,
) -> tuple[list[CoordResult], str]:
    """Bisects the coordinates of a leaf whose direction ``row`` failed."""
    found: list[CoordResult] = []

    def record(j: int, res: dict, e: int) -> None:
        sign = 1.0 if v_row[j] >= 0 else -1.0
        found.append(
            CoordResult(
                index=tree.unravel(j, shape),
                analytic=float(sign * res["analytic"][e]),
                numeric=float(sign * res["numeric"][e]),
                rel_error=float(res["rel"][e]),
                verdict="wrong",
                f_plus=float(res["fp"][e] if sign > 0 else res["fm"][e]),
                f_minus=float(res["fm"][e] if sign > 0 else res["fp"][e]),
            )
        )

    if n == 1:
        record(0, top, k)
        return found, "complete"
    frontier = [(0, n, float(top["err"][k]))]
    while frontier:
        if len(frontier) > max_groups:
            size = frontier[0][1] - frontier[0][0]
            return found, (
                f"incomplete: {len(frontier)} groups of about {size:,} coordinates "
                f"were still wrong (more than max_groups={max_groups}): the error is "
                "spread over many coordinates (e.g. a whole leaf off by a factor), "
                "not a few wrong entries; check this leaf with check_grads"
            )
        children = []
        for lo, hi, err in frontier:
            mid = (lo + hi) // 2
            children += [(lo, mid, err), (mid, hi, err)]
        lo_a = np.array([c[0] for c in children])
        hi_a = np.array([c[1] for c in children])
        res = tester(np.full(len(children), row), lo_a, hi_a)
        frontier = []
        for e, (lo, hi, parent_err) in enumerate(children):
            wrong = res["codes"][e] == compare.WRONG
            carries = (
                abs(res["err"][e]) >= _FOLLOW_FRACTION * abs(parent_err)
                and abs(res["err"][e]) > res["noise"][e]
            )
            if hi - lo == 1:
                if wrong:
                    record(lo, res, e)
            elif wrong or carries:
                frontier.append((lo, hi, float(res["err"][e])))
    found.sort(key=lambda c: -c.rel_error)
    return found, "complete"


_TINY = (
    "some leaves had every direction within round-off noise: their gradients are "
    "tiny against |f|; scale the loss up or use a larger step."
)


def _num_directions(
    num: int | None,
    risk: float | None,
    error_size: float,
    rtol: float,
    max_groups: int,
) -> int:
    """``K`` from ``num`` or from ``risk`` (default 4), validated with
    ``max_groups``."""
    if not isinstance(max_groups, int) or max_groups < 1:
        raise ValueError(f"`max_groups` must be an int >= 1, got {max_groups!r}.")
    if num is not None and risk is not None:
        raise ValueError(
            f"Pass either `num` (directions per leaf) or `risk` (the accepted "
            f"probability of missing a bug), not both; got num={num!r}, risk={risk!r}."
        )
    if risk is not None:
        num = directions_for_risk(risk, error_size, rtol)
    elif num is None:
        num = 4
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise ValueError(f"`num` must be an int >= 1 directions per leaf, got {num!r}.")
    return num


def _check_leaf(
    f: Callable[..., Any],
    point: _Point,
    info: tree.LeafInfo,
    g: Any,
    *,
    num: int,
    seed: int,
    step: float,
    f0: float,
    eps: float,
    bar: compare.Bar,
    budget: int,
    localize: bool,
    max_groups: int,
) -> DirectionLeafReport:
    """``num`` random directions of one leaf, then the bisection of the worst
    wrong one."""
    t0 = time.perf_counter()
    dp, da = point.dyn_params, point.dyn_args
    x = dp[point.dyn_pos[info.pos]].reshape(-1)
    n = int(x.shape[0])
    v_host = np.random.default_rng([int(seed), info.pos]).standard_normal((num, n))
    tester = _GroupTester(
        point.fn(f, info.pos, info.shape), x,
        jnp.asarray(g, jnp.float64).reshape(-1), jnp.asarray(v_host),
        float(step), dp, da, f0, eps, bar, budget,
    )  # fmt: skip
    top = tester(np.arange(num), np.zeros(num, int), np.full(num, n))
    directions = tuple(
        DirectionResult(
            analytic=float(top["analytic"][k]),
            numeric=float(top["numeric"][k]),
            rel_error=float(top["rel"][k]),
            verdict=compare.VERDICT_NAMES[top["codes"][k]],
        )
        for k in range(num)
    )
    wrong = np.flatnonzero(top["codes"] == compare.WRONG)
    localized: list[CoordResult] = []
    status = "not needed"
    if len(wrong) and not localize:
        status = "off"
    elif len(wrong):
        k = int(wrong[np.argmax(top["rel"][wrong])])
        localized, status = _localize(
            tester, k, n, v_host[k], info.shape, top, k, max_groups
        )
    return DirectionLeafReport(
        path=info.path,
        shape=info.shape,
        dtype=info.dtype,
        directions=directions,
        localized=tuple(localized),
        localization=status,
        num_evaluations=tester.evaluations,
        seconds=time.perf_counter() - t0,
    )


def _value_and_grads(
    f: Callable[..., Any], point: _Point, grad_fn: Callable[..., PyTree] | None
) -> tuple[float, float, list, str]:
    """``f`` at the point, its eps, the analytic gradient of every checked leaf
    (shapes checked) and its source."""
    full = point.fn(f)
    dp, da = point.dyn_params, point.dyn_args
    out = jax.eval_shape(full, None, dp, da)
    _scalar_output(out)
    f0 = float(_value_jit(_ValueOf(full), dp, da))
    if grad_fn is None:
        grads = _value_jit(_GradOf(full, point.checked_dyn), dp, da)
        source = "jax.grad"
    else:
        paths = tuple(i.path for i in point.checked)
        grads = _UserGradOf(grad_fn, full, paths)(dp, da)
        source = callable_name(grad_fn)
    for info, g in zip(point.checked, grads, strict=True):
        if tuple(np.shape(g)) != info.shape:
            raise ValueError(
                f"`grad_fn` ({source}) returned shape {tuple(np.shape(g))} for "
                f"leaf {info.path}, which has shape {info.shape}."
            )
    return f0, float(jnp.finfo(out.dtype).eps), list(grads), source


def check_directions(
    f: Callable[..., Any],
    params: PyTree,
    *args: Any,
    num: int | None = None,
    risk: float | None = None,
    error_size: float = 1e-2,
    grad_fn: Callable[..., PyTree] | None = None,
    step: float = 1e-5,
    seed: int = 0,
    rtol: float | None = None,
    noise_factor: float | None = None,
    localize: bool = True,
    max_groups: int = 32,
    memory_budget: int | None = None,
) -> DirectionsReport:
    """Checks ``num`` random directions per leaf, and localises the wrong
    coordinates of a failing leaf by bisection.

    For each leaf and each of ``K`` standard-normal unit directions ``w``, the
    centered difference ``(f(x + h w) - f(x - h w)) / |2 h w|`` is compared with
    the analytic ``<a, w>``: ``2 K`` evaluations of ``f`` per leaf instead of two
    per coordinate (like torch's ``fast_mode`` and ``jax.test_util.check_grads``,
    but per leaf). When a direction fails, the leaf's coordinates are split in
    halves and the same direction, restricted to each half, is checked; halves
    that still fail (or still carry most of the error) are split again, down to
    single coordinates. One wrong entry of a leaf of ``N`` entries is found with
    about ``4 log2(N)`` evaluations instead of ``2 N``.

    The report states the probability that a bug of relative size
    ``error_size`` passes (:func:`miss_probability`); give ``risk`` instead of
    ``num`` to choose ``K`` from the risk you accept
    (:func:`directions_for_risk`). Never raises on a mismatch.

    Args:
      f: the scalar function, called as ``f(params, *args)``.
      params: any pytree; floating-point array leaves are checked in float64.
      *args: held fixed.
      num: ``K``, directions per leaf (default 4).
      risk: instead of ``num``: the accepted probability that a bug of relative
        size ``error_size`` goes unnoticed in a leaf.
      error_size: the bug size, relative to a leaf's gradient norm, that
        ``risk`` and the reported probability refer to.
      grad_fn: a hand-written gradient ``grad_fn(params, *args)``; default
        ``jax.grad(f)``.
      step: the step ``h`` along each unit direction.
      seed: seed of the directions.
      rtol: the relative-error bar (default ``1e-7``).
      noise_factor: the round-off allowance in units of ``eps * |f| / h``.
      localize: bisect failing leaves to find the wrong coordinates.
      max_groups: stop bisecting a leaf when more groups than this are wrong at
        once (the error is then spread out: use :func:`jaxcheck.check_grads`).
      memory_budget: bytes one batch of perturbed copies of a leaf may use.

    Returns:
      a :class:`DirectionsReport`; ``report.num_evaluations`` against
      ``report.full_check_evaluations`` says what was saved.

    Raises:
      TypeError: if ``f`` does not return a real floating-point scalar.
      ValueError: for invalid options (both ``num`` and ``risk``, ``num < 1``).

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxcheck.derivatives import check_directions
      >>> f = lambda w: jnp.sum(jnp.sin(w) * jnp.arange(1000.0) / 1000)
      >>> def grad_with_one_bug(w):
      ...     g = jnp.cos(w) * jnp.arange(1000.0) / 1000
      ...     return g.at[321].multiply(1.01)
      >>> report = check_directions(f, jnp.ones(1000), grad_fn=grad_with_one_bug)
      >>> report.passed, [c.index for c in report.leaves[0].localized]
      (False, [(321,)])
      >>> report.num_evaluations < 100 < report.full_check_evaluations
      True
    """
    validate_callables(f, grad_fn)
    _validate_common(step, 0, None)
    bar = compare.default_bar(rtol, noise_factor)
    num = _num_directions(num, risk, error_size, bar.rtol, max_groups)
    budget = _BATCH_BUDGET * 4 if memory_budget is None else int(memory_budget)
    t_start = time.perf_counter()
    with jax.enable_x64(True):
        point = _prepare(params, args)
        f0, eps, grads, source = _value_and_grads(f, point, grad_fn)
        leaves = tuple(
            _check_leaf(
                f, point, info, g, num=num, seed=seed, step=step, f0=f0, eps=eps,
                bar=bar, budget=budget, localize=localize, max_groups=max_groups,
            )
            for info, g in zip(point.checked, grads, strict=True)
        )  # fmt: skip
    notes = (_TINY,) if any(leaf.verdict == "UNTESTABLE" for leaf in leaves) else ()
    return DirectionsReport(
        leaves=leaves, skipped=point.skipped, num_directions=num, rtol=bar.rtol,
        bar_reason=bar.reason, step=float(step), seed=seed,
        error_size=float(error_size),
        miss_probability=miss_probability(error_size, num, bar.rtol),
        grad_source=source, f_value=f0, device=_device(),
        seconds=time.perf_counter() - t_start, notes=notes,
    )  # fmt: skip
