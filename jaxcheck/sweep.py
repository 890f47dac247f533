"""``step_sweep``: the relative error of the finite difference against the step.

The notes: "Be careful with the step size h"; the error of a finite difference
is the sum of a truncation error that grows with ``h`` and a round-off error
that grows like ``noise(f) / h``: on log axes, a V. This runs the check's own
program (:mod:`jaxcheck.engine.program`) on a ladder of steps for a few
coordinates of every leaf and returns a :class:`jaxcheck.steps.StepSweep`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from . import compare, tree
from . import steps as stencils
from .check import _Check
from .options import callable_name, check_options, validate_callables
from .point import finite_or_raise

PyTree = Any


def _sweep_rows(chk: _Check, ladder: np.ndarray, mults: np.ndarray) -> tuple:
    """Rows: the point itself, then per coordinate the ladder, then its noise
    line; and each coordinate's first row."""
    idx, deltas, first = [np.zeros(1, np.int64)], [np.zeros((1, 2))], []
    noise = stencils.noise_offsets(chk.x)
    pos = 1
    for j in range(len(chk.x)):
        first.append(pos)
        d = (ladder[:, None] * mults[None, :]).reshape(-1)
        rows = np.concatenate([np.stack([d, -d], 1), noise[j]])
        idx.append(np.full(len(rows), chk.gidx[j]))
        deltas.append(rows)
        pos += len(rows)
    return np.concatenate(idx), np.concatenate(deltas), first


def step_sweep(
    f: Callable[..., Any],
    params: PyTree,
    *args: Any,
    steps: Any = None,
    coords: tree.CoordSpec = 3,
    seed: int = 0,
    grad_fn: Callable[..., PyTree] | None = None,
    method: str = "central",
    track_kinks: bool = True,
) -> Any:
    """Relative error of the finite differences against the step ``h``.

    For a few sampled coordinates of every leaf, evaluates the finite
    difference at every step in ``steps`` (one batched call for all leaves) and
    compares it with the analytic gradient. On log axes the error is a V:
    truncation error (``O(h**2)`` for centered differences) on the right, the
    round-off of ``f`` (``~ noise / h``) on the left. The round-off noise of
    ``f`` along each sampled coordinate is measured too, and steps where a kink
    was crossed are marked. Steps here are absolute (not scaled by ``|x_i|``).

    Args:
      f: the scalar function, called as ``f(params, *args)``.
      params: the parameters (floating-point leaves are swept).
      *args: fixed arguments.
      steps: the steps, default one per decade from 1e-1 to 1e-10.
      coords: coordinates per leaf (as in :func:`jaxcheck.check_grads`),
        default 3.
      seed: seed of the sampling.
      grad_fn: the analytic gradient, default ``jax.grad(f)``.
      method: the finite-difference formula (see :func:`jaxcheck.check_grads`).
      track_kinks: mark steps where the winners of a kink-capable primitive
        change.

    Returns:
      a :class:`jaxcheck.steps.StepSweep`; ``str()`` is a table of median
      errors, ``.plot()`` draws the V, ``.best_step`` is where it bottoms out.

    Raises:
      ValueError: for empty or non-positive ``steps`` and the errors of
        :func:`jaxcheck.check_grads`.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxcheck import step_sweep
      >>> sweep = step_sweep(lambda w: jnp.sum(jnp.exp(w)), jnp.ones(4))
      >>> sweep.steps[0], sweep.steps[-1]
      (0.1, 1e-10)
      >>> 1e-7 <= sweep.best_step <= 1e-3
      True
    """
    ladder = _steps_ladder(steps)
    validate_callables(f, grad_fn)
    opts = check_options(
        coords=coords, seed=seed, method=method, track_kinks=track_kinks
    )
    with jax.enable_x64(True):
        chk = _Check(f, params, args, grad_fn, opts)
        user = chk.analytic_of_user() if grad_fn is not None else None
        chk.precision([] if user is None else user[1])
        chk.select()
        chk.layout()
        mults = np.asarray(stencils.multipliers(opts.method), float)
        idx, deltas, first = _sweep_rows(chk, np.asarray(ladder), mults)
        res = chk.run_rows(idx, deltas, main=True)
        f0 = finite_or_raise(float(res.dense[0, 0]))
        grads = user[0] if user is not None else res.grads
        a = np.concatenate([g[s] for g, s in zip(grads, chk.selections, strict=True)])
        w0 = None if res.dense_words is None else res.dense_words[0, 0]
        out = []
        for k, leaf in enumerate(chk.point.leaves):
            members = np.flatnonzero(chk.leaf_of == k)
            out.append(
                _leaf_sweep(chk, k, leaf, members, a, res, first, ladder, mults, f0, w0)
            )
    return stencils.StepSweep(
        leaves=tuple(out), steps=ladder, method=opts.method, f_value=f0,
        grad_source="jax.grad" if grad_fn is None else callable_name(grad_fn),
    )  # fmt: skip


def _steps_ladder(given: Any) -> tuple[float, ...]:
    ladder = stencils.SWEEP_STEPS if given is None else given
    ladder = tuple(float(h) for h in np.atleast_1d(np.asarray(ladder, dtype=float)))
    if not ladder or not all(math.isfinite(h) and h > 0 for h in ladder):
        raise ValueError(
            f"`steps` must be a non-empty sequence of positive numbers, got {given!r}; "
            "e.g. `steps=[1e-1, 1e-3, 1e-5, 1e-7]`."
        )
    return tuple(sorted(ladder, reverse=True))


def _leaf_sweep(chk, k, leaf, members, a, res, first, ladder, mults, f0, w0) -> Any:
    K, M, n = len(ladder), len(mults), len(members)
    est = np.full((n, K), np.nan)
    kink = np.zeros((n, K), dtype=bool)
    sigma = np.full(n, np.nan)
    for q, j in enumerate(members):
        lo = first[j]
        vals = res.dense[lo : lo + K * M].reshape(K, M, 2)
        for s in range(K):
            d = ladder[s] * mults[None, :]
            (est[q, s],), _ = stencils.estimate(
                chk.opts.method, f0, vals[s, :, 0][None], vals[s, :, 1][None],
                stencils.offsets([chk.x[j]], d, chk.point.dtype),
                stencils.offsets([chk.x[j]], -d, chk.point.dtype),
            )  # fmt: skip
        line = res.dense[lo + K * M : lo + K * M + 6]
        sig = stencils.noise_from_rows(f0, line[None, :, 0], line[None, :, 1])[0]
        if w0 is not None:
            words = res.dense_words[lo : lo + K * M].reshape(K, M, 2, -1)
            kink[q] = ~np.all(words == w0, axis=-1).all(axis=(-1, -2))
            lw = res.dense_words[lo + K * M : lo + K * M + 6]
            if not np.all(lw == w0):
                sig = np.nan
        sigma[q] = sig if sig > 0 else np.nan
    rel = compare.relative_error(a[members][:, None], est)
    with np.errstate(all="ignore"):
        med = np.array(
            [
                np.nanmedian(np.where(kink[:, s], np.nan, rel[:, s]))
                if (~kink[:, s]).any()
                else np.nan
                for s in range(K)
            ]
        )
    best = float(ladder[int(np.nanargmin(med))]) if np.isfinite(med).any() else math.nan
    info = leaf.info
    return stencils.LeafSweep(
        path=info.path,
        indices=tuple(tree.unravel(int(i), info.shape) for i in chk.idx[members]),
        steps=ladder, analytic=a[members].copy(), numeric=est, rel_error=rel,
        kink=kink, noise=sigma, best_step=best,
    )  # fmt: skip
