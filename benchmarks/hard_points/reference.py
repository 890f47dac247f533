"""50-digit reference gradients with mpmath, cached in a JSON file.

The derivative of a case's mpmath function along each coordinate is a central
difference with the step ``min(|x_i|, 1) * 2^-(prec+10)`` (``prec`` = 50 digits),
evaluated at a working precision that makes ``x_i +- h`` exact (even for
``x_i = 1e200``) and grows until ``f(x+h) - f(x-h)`` keeps ``prec + 40``
significant bits (``f`` may be 1e200 where ``h f'`` is 1e-54); its truncation
error is ~``2^-2(prec+10)`` relative. An analytic ``mp_grad`` is used instead
where the case gives one. Every reference is computed at 50 and at 40 digits; when the
two disagree beyond 1e-20 (a function that cancels internally), both are redone
with more extra bits, and the point is rejected if they never agree.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import signal
import time
from typing import Any

import mpmath as mp
import numpy as np

from hard_points.cases import Case, Point

# Bump when a helper that mp functions call changes (the cache key also holds
# the source of each case's mp_fn / mp_grad).
REF_VERSION = 1
DPS = 50
CHECK_DPS = 40
AGREE = 1e-20
EXTRA_BITS = (60, 300, 1000)
MAX_BITS = 20000


class _Timeout(Exception):
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise _Timeout()


def _source(fn: Any) -> str:
    if fn is None:
        return ""
    try:
        return inspect.getsource(fn)
    except (OSError, TypeError):
        return getattr(fn, "__qualname__", repr(fn))


def cache_key(case: Case, point: Point) -> str:
    """A key that changes when the case's mp code or the point changes."""
    h = hashlib.sha1()
    for part in (
        str(REF_VERSION),
        _source(_central),
        _source(_gradient),
        _source(_reference),
        _source(compute),
        case.name,
        _source(case.mp_fn),
        _source(case.mp_grad),
        point.x.dtype.str,
        repr(point.x.shape),
        point.x.tobytes().hex(),
        repr(point.args),
    ):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:20]


def _build(point: Point, flat: list[Any]) -> Any:
    if point.x.ndim == 2:
        rows, cols = point.x.shape
        return mp.matrix(
            [[flat[i * cols + j] for j in range(cols)] for i in range(rows)]
        )
    return list(flat)


def _central(along: Any, x0: Any, h: Any, prec: int, extra: int) -> Any:
    """``(f(x0 + h) - f(x0 - h)) / 2h`` with ``prec + 40`` significant bits left
    after the subtraction: the working precision grows until the difference
    keeps them (``f`` may be 1e200 where ``h f'`` is 1e-54, or 1 - 1e-296)."""
    wp = 2 * prec + extra
    if x0 != 0:
        wp += max(0, int(mp.mag(x0)) - int(mp.mag(h)))
    d = mp.mpf(0)
    while wp <= MAX_BITS:
        with mp.workprec(wp):
            fp, fm = along(x0 + h), along(x0 - h)
            d = fp - fm
            big = max(abs(fp), abs(fm))
            if d != 0 and mp.isfinite(d):
                lost = max(0, int(mp.mag(big)) - int(mp.mag(d)))
                if wp - lost >= prec + 40:
                    return d / (2 * h)
                wp = max(2 * wp, lost + prec + 80)
            else:
                wp *= 2
    return d / (2 * h)  # 0 at MAX_BITS: |f'| is far below float64's range


def _gradient(case: Case, point: Point, dps: int, extra: int) -> tuple[Any, list[Any]]:
    with mp.workdps(dps):
        prec = mp.mp.prec
        flat = [mp.mpf(float(v)) for v in point.x.ravel()]
        args = [mp.mpf(float(a)) for a in point.args]
        f = case.mp_fn(_build(point, flat), *args)
        if case.mp_grad is not None:
            with mp.workdps(dps + extra // 3):
                return f, list(case.mp_grad(_build(point, flat), *args))
        scale = max((abs(v) for v in flat), default=mp.mpf(1)) or mp.mpf(1)
        grad = []
        for i, xi in enumerate(flat):

            def along(t: Any, i: int = i) -> Any:
                ys = list(flat)
                ys[i] = t
                return case.mp_fn(_build(point, ys), *args)

            size = abs(xi) if xi != 0 else scale
            # An absolute step for |x| > 1 (a periodic function of x = 1e200 varies
            # on the scale 1, not 1e200); x +- h is exact at the working precision.
            step = min(size, 1) * mp.ldexp(1, -prec - 10)
            grad.append(_central(along, xi, step, prec, extra))
        return f, grad


def _reference(case: Case, point: Point) -> tuple[Any, list[Any], float]:
    """The gradient at DPS digits, the first that agrees with CHECK_DPS digits
    as the working precision grows (for functions that cancel internally)."""
    for extra in EXTRA_BITS:
        f, g = _gradient(case, point, DPS, extra)
        _, g_check = _gradient(case, point, CHECK_DPS, extra)
        dis = _disagreement(g, g_check)
        if dis <= AGREE:
            break
    return f, [g, g_check], dis


def _disagreement(a: list[Any], b: list[Any]) -> float:
    scale = max((abs(v) for v in a), default=0)
    worst = 0.0
    for u, v in zip(a, b, strict=True):
        denom = max(abs(u), scale * mp.mpf("1e-3"))
        if denom == 0:
            d = 0.0 if v == 0 else math.inf
        else:
            d = float(abs(u - v) / denom)
        worst = max(worst, d)
    return worst


def compute(case: Case, point: Point, timeout: float) -> dict[str, Any]:
    """The reference value and gradient of ``case`` at ``point`` (float64 lists).

    Returns a dict with ``ok``, ``f``, ``grad``, ``disagreement`` (between 50 and
    40 digits), ``seconds`` and, when not ok, ``reason``.
    """
    t0 = time.perf_counter()
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        f, (g, g_check), dis = _reference(case, point)
    except _Timeout:
        return {"ok": False, "reason": f"mpmath took over {timeout:g} s"}
    except Exception as e:  # noqa: BLE001 - any mpmath failure skips the point
        return {"ok": False, "reason": f"mpmath raised {type(e).__name__}: {e}"[:200]}
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    seconds = time.perf_counter() - t0
    try:
        if any(mp.im(v) != 0 for v in [f, *g]):
            return {"ok": False, "reason": "mpmath returned a complex value"}
        f, g, g_check = mp.re(f), [mp.re(v) for v in g], [mp.re(v) for v in g_check]
    except Exception as e:  # noqa: BLE001
        return {"ok": False, "reason": f"not a number: {type(e).__name__}: {e}"[:200]}
    out = {
        "ok": dis <= AGREE,
        "f": float(f),
        "grad": [float(v) for v in g],
        "disagreement": dis,
        "seconds": round(seconds, 4),
    }
    if not out["ok"]:
        out["reason"] = f"50 and 40 digits disagree by {dis:.1e} (relative)"
    return out


class ReferenceCache:
    """References keyed by :func:`cache_key`, kept in a JSON file."""

    def __init__(self, path: str | None, timeout: float = 120.0):
        self.path = path
        self.timeout = timeout
        self.data: dict[str, dict[str, Any]] = {}
        self.used: set[str] = set()
        self.computed = 0
        self.seconds = 0.0
        if path and os.path.exists(path):
            with open(path) as fh:
                self.data = json.load(fh)

    def get(self, case: Case, point: Point) -> dict[str, Any]:
        """The cached reference, computed (and stored) when missing."""
        key = cache_key(case, point)
        self.used.add(key)
        if key not in self.data:
            t0 = time.perf_counter()
            self.data[key] = compute(case, point, self.timeout) | {
                "case": case.name,
                "point": point.label,
            }
            self.seconds += time.perf_counter() - t0
            self.computed += 1
            if self.computed % 25 == 0:
                self.save()
        return self.data[key]

    def prune(self, keep: set[str]) -> None:
        """Drops the entries whose key is not in ``keep`` (stale references)."""
        self.data = {k: v for k, v in self.data.items() if k in keep}

    def save(self) -> None:
        """Writes the cache (atomically)."""
        if not self.path:
            return
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(self.data, fh, indent=0, sort_keys=True)
        os.replace(tmp, self.path)


def as_array(values: list[float]) -> np.ndarray:
    """The reference gradient as a float64 array."""
    return np.asarray(values, dtype=np.float64)
