"""Trust on real code: jaxcheck and ``jax.test_util.check_grads`` at hard points.

Run from the repository root::

    python benchmarks/bench_hard_points.py                  # every case, ~10 min
    python benchmarks/bench_hard_points.py --only gammaln   # cases whose name contains it
    python benchmarks/bench_hard_points.py --json rows.json

About 145 scalar float64 functions of ``jax.scipy.special``, ``jnp``, ``jax.nn``,
``jax.scipy.stats``, ``jnp.linalg`` and ``jax.scipy.linalg`` (vector-valued ones
reduced by a fixed random weighted sum) are checked at 540 hard-but-valid
points (``benchmarks/hard_points/``): tiny and huge magnitudes, poles and domain
edges within a finite-difference step, ill-conditioned matrices, near-degenerate
spectra, singular values below the step, and ordinary control points.

Ground truth per point: JAX's gradient (``jax.jit(jax.grad(f))`` in float64, what
jaxcheck checks) is compared, coordinate by coordinate, with a 50-digit mpmath
reference (``hard_points/reference.py``, cached in
``benchmarks/results/hard_points_refs.json``):

    err_i = |g_i - r_i| / max(|r_i|, floor),   floor = 1e-3 max_j |r_j| for matrices
                                               and vectors of like entries (std,
                                               logsumexp...), else 1e-300;

the gradient is CORRECT when ``max_i err_i <= tol`` with ``tol = 1e-6``, widened
to ``1e3 * cond * eps`` for cases whose float64 accuracy is limited by the
conditioning of the point (inverses, determinants, factorizations; ``cond`` is
the matrix's condition number, or ``|lambda|max / gap`` for eigen/singular
vectors). Otherwise it is a TRUE ERROR of JAX. 1e-6 is ten times looser than
jaxcheck's smooth bar (1e-7) and ten orders of magnitude above float64 round-off:
a correct float64 gradient of a well-conditioned function is good to ~1e-13 even
after a few cancellations, while a wrong formula or a lost term is off by O(1).
Points where ``f`` is not finite in float64, where float64 ``f`` is itself
inaccurate (error above ``tol`` relative to ``max(|f|, max_i |x_i r_i|)``), where
the reference gradient overflows float64, or where mpmath fails are skipped and
counted by reason.

Then ``jaxcheck.check_grads(f, x, *args)`` (default options) and
``jax.test_util.check_grads(f, (x,), order=1, modes=["rev"])`` run on every
point. A jaxcheck *alarm* is a FAILED report with at least one ``wrong``
coordinate; at a correct point it is a FALSE ALARM; at a true error it FOUND it.
An exception from jaxcheck is a CRASH, and so is a check with no result within
``--point-timeout`` seconds: the checks run in a child process, restarted after
such a hang (``jax.vmap(jax.scipy.special.exp1)`` never returns at 1e-8).
The summary lists the true errors (and who found them), the false alarms (worst
wrong coordinate: analytic, numeric, relative error, resolution, and how far the
numeric estimate is from the reference), jaxcheck's crashes and the runtime. It
is printed and written to ``benchmarks/results/hard_points.md``; every row goes to
``--json`` (default ``benchmarks/results/hard_points.json``).
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import multiprocessing
import os
import platform
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import test_util as jtu

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from hard_points import Case, Point, all_cases  # noqa: E402
from hard_points.reference import ReferenceCache  # noqa: E402

import jaxcheck  # noqa: E402

RESULTS = os.path.join(HERE, "results")
EPS = float(np.finfo(np.float64).eps)
TOL = 1e-6
COND_FACTOR = 1e3
MATRIX_FLOOR = 1e-3
TINY = 1e-300


# ---- ground truth -------------------------------------------------------------------


def tolerance(case: Case, point: Point) -> float:
    """The ground-truth bar of relative error for JAX's gradient at ``point``."""
    if case.cond_sensitive:
        return max(TOL, COND_FACTOR * point.cond * EPS)
    return TOL


def coord_errors(g: np.ndarray, r: np.ndarray, floor_rel: float) -> np.ndarray:
    """``|g - r| / max(|r|, floor_rel * max |r|, 1e-300)`` per coordinate."""
    floor = max(floor_rel * float(np.max(np.abs(r))), TINY)
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.abs(g - r) / np.maximum(np.abs(r), floor)
    err = np.where(g == r, 0.0, err)  # equal infinities, exact zeros
    return np.where(np.isnan(err), np.inf, err)


def rel(a: float, b: float) -> float:
    """``|a - b| / max(|a|, |b|)`` (0 when both are 0)."""
    d = max(abs(a), abs(b))
    if d == 0:
        return 0.0
    if not math.isfinite(d):
        return 0.0 if a == b else math.inf
    return abs(a - b) / d


# ---- jaxcheck and check_grads -------------------------------------------------------


def jaxcheck_status(report: Any) -> tuple[str, int]:
    """``("failed" | "passed" | "inconclusive", number of wrong coordinates)``.

    Uses ``report.status`` when the report has one, else ``report.passed`` and
    the wrong counts; attributes that may be missing are read with defaults.
    """
    leaves = getattr(report, "leaves", ()) or ()
    wrong = int(sum(getattr(leaf, "num_wrong", 0) for leaf in leaves))
    status = getattr(report, "status", None)
    if isinstance(status, str) and status.lower() in (
        "passed",
        "failed",
        "inconclusive",
    ):
        return status.lower(), wrong
    passed = bool(getattr(report, "passed", False))
    if passed:
        return "passed", wrong
    return ("failed" if wrong > 0 else "inconclusive"), wrong


def _flat_index(index: Any, shape: tuple[int, ...]) -> int:
    index = tuple(int(i) for i in (index or ()))
    if not index:
        return 0
    return int(np.ravel_multi_index(index, shape))


def coord_rows(
    report: Any, shape: tuple[int, ...], r: np.ndarray, g: np.ndarray
) -> list[dict[str, Any]]:
    """The coordinates the report lists (worst and kinks), with the reference."""
    out = []
    for leaf in getattr(report, "leaves", ()) or ():
        listed = list(getattr(leaf, "worst", ()) or ()) + list(
            getattr(leaf, "kinks", ()) or ()
        )
        seen = set()
        for c in listed:
            idx = _flat_index(getattr(c, "index", ()), shape)
            if idx in seen:
                continue
            seen.add(idx)
            numeric = float(getattr(c, "numeric", math.nan))
            out.append(
                {
                    "index": idx,
                    "verdict": str(getattr(c, "verdict", "")),
                    "analytic": float(getattr(c, "analytic", math.nan)),
                    "numeric": numeric,
                    "rel_error": float(getattr(c, "rel_error", math.nan)),
                    "step": float(getattr(c, "step", math.nan)),
                    "resolution": str(getattr(c, "resolution", "")),
                    "kink": str(getattr(c, "kink", "")),
                    "reference": float(r[idx]),
                    "jax": float(g[idx]),
                    "jax_vs_ref": rel(float(g[idx]), float(r[idx])),
                    "numeric_vs_ref": rel(numeric, float(r[idx])),
                }
            )
    return out


def run_jaxcheck(
    f: Any, x: jax.Array, args: tuple[Any, ...], r: np.ndarray, g: np.ndarray
) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        report = jaxcheck.check_grads(f, x, *args)
    except Exception as e:  # noqa: BLE001 - a crash is a result
        tb = traceback.format_exc().strip().splitlines()
        return {
            "status": "crash",
            "num_wrong": 0,
            "error": f"{type(e).__name__}: {e}"[:300],
            "where": tb[-3][:200] if len(tb) >= 3 else "",
            "seconds": time.perf_counter() - t0,
        }
    seconds = time.perf_counter() - t0
    status, wrong = jaxcheck_status(report)
    leaves = getattr(report, "leaves", ()) or ()
    return {
        "status": status,
        "num_wrong": wrong,
        "num_untestable": int(sum(getattr(lf, "num_untestable", 0) for lf in leaves)),
        "num_kink": int(sum(getattr(lf, "num_kink", 0) for lf in leaves)),
        "max_rel_error": float(getattr(report, "max_rel_error", math.nan)),
        "rtol": float(getattr(report, "rtol", math.nan)),
        "step": float(getattr(report, "step", math.nan)),
        "bar_reason": str(getattr(report, "bar_reason", ""))[:120],
        "notes": [str(n)[:300] for n in getattr(report, "notes", ()) or ()],
        "coords": coord_rows(report, tuple(x.shape), r, g),
        "seconds": seconds,
    }


def run_check_grads(f: Any, x: jax.Array, args: tuple[Any, ...]) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        jtu.check_grads(lambda y: f(y, *args), (x,), order=1, modes=["rev"])
        status, msg = "passed", ""
    except AssertionError as e:
        status, msg = "failed", " ".join(str(e).split())[:200]
    except Exception as e:  # noqa: BLE001
        status, msg = "error", f"{type(e).__name__}: {e}"[:200]
    return {"status": status, "message": msg, "seconds": time.perf_counter() - t0}


# ---- one point ----------------------------------------------------------------------


def _floats(a: Any) -> list[float]:
    return [float(v) for v in np.asarray(a, dtype=np.float64).ravel()]


def run_point(
    case: Case,
    point: Point,
    ref: dict[str, Any],
    phase: Callable[[str, dict[str, Any]], None] = lambda name, row: None,
) -> dict[str, Any]:
    """Everything about one (function, point): truth, then both checkers.

    ``ref`` is the reference (:mod:`hard_points.reference`); ``phase(name, row)``
    is called before each checker with the row so far (the parent process keeps
    it, to report a checker that never returns).
    """
    row: dict[str, Any] = {
        "case": case.name,
        "group": case.group,
        "kind": point.kind,
        "point": point.label,
        "x": _floats(point.x),
        "shape": list(point.x.shape),
        "args": list(point.args),
        "cond": point.cond,
    }
    f = case.jax_fn
    x = jnp.asarray(point.x, dtype=jnp.float64)
    args = tuple(jnp.asarray(a, dtype=jnp.float64) for a in point.args)

    def skip(reason: str) -> dict[str, Any]:
        row["skipped"] = reason
        return row

    try:
        fx = float(jax.jit(f)(x, *args))
    except Exception as e:  # noqa: BLE001
        return skip(f"f raises {type(e).__name__}: {e}"[:200])
    row["f"] = fx
    if not math.isfinite(fx):
        return skip("f not finite in float64")
    if not ref.get("ok"):
        return skip("reference failed: " + str(ref.get("reason", "")))
    r = np.asarray(ref["grad"], dtype=np.float64)
    row["f_ref"] = ref["f"]
    row["ref"] = _floats(r)
    if not np.all(np.isfinite(r)):
        return skip("reference gradient overflows float64")
    tol = tolerance(case, point)
    row["tol"] = tol
    xs = np.abs(point.x.ravel())
    f_scale = max(abs(ref["f"]), float(np.max(xs * np.abs(r))), TINY)
    row["f_err"] = abs(fx - ref["f"]) / f_scale
    if row["f_err"] > tol:
        return skip("f inaccurate in float64")

    try:
        g = np.asarray(jax.jit(jax.grad(f))(x, *args), dtype=np.float64).ravel()
    except Exception as e:  # noqa: BLE001
        return skip(f"jax.grad raises {type(e).__name__}: {e}"[:200])
    floor_rel = MATRIX_FLOOR if point.x.ndim == 2 else case.floor
    err = coord_errors(g, r, floor_rel)
    row["jax"] = _floats(g)
    row["jax_err"] = float(np.max(err))
    row["jax_err_coords"] = [float(v) for v in err]
    row["correct"] = bool(row["jax_err"] <= tol)
    try:
        ge = np.asarray(jax.grad(f)(x, *args), dtype=np.float64).ravel()
        row["eager_err"] = float(np.max(coord_errors(ge, r, floor_rel)))
    except Exception as e:  # noqa: BLE001
        row["eager_err"] = math.inf
        row["eager_error"] = f"{type(e).__name__}: {e}"[:200]
    phase("jaxcheck", row)
    row["jaxcheck"] = run_jaxcheck(f, x, args, r, g)
    phase("check_grads", row)
    row["check_grads"] = run_check_grads(f, x, args)
    return row


# ---- the worker process -------------------------------------------------------------
#
# The checks run in a child process: a check that never returns (a while loop in
# ``f`` that does not terminate at some perturbed point runs inside XLA, where no
# signal reaches it) is then cut after ``--point-timeout`` seconds, recorded as a
# hang of the checker that was running, and the sweep goes on in a new process.


def _worker(conn: Any) -> None:
    warnings.simplefilter("ignore", RuntimeWarning)
    cases = {c.name: c for c in all_cases()}
    with jax.enable_x64(True):
        while True:
            msg = conn.recv()
            if msg is None:
                return
            name, i, ref = msg
            case = cases[name]
            row = run_point(
                case,
                case.points[i],
                ref,
                lambda ph, row: conn.send(("phase", ph, dict(row))),
            )
            conn.send(("row", None, row))


class Worker:
    """A child process that runs points, restarted when one hangs."""

    def __init__(self, timeout: float):
        self.timeout = timeout
        self.ctx = multiprocessing.get_context("spawn")
        self.proc: Any = None
        self.conn: Any = None
        self.hangs = 0

    def _start(self) -> None:
        parent, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(target=_worker, args=(child,), daemon=True)
        self.proc.start()
        child.close()
        self.conn = parent

    def run(self, case: Case, i: int, ref: dict[str, Any]) -> dict[str, Any]:
        """The row of ``case.points[i]``; a hang fills in what was running."""
        if self.proc is None or not self.proc.is_alive():
            self._start()
        self.conn.send((case.name, i, ref))
        partial: dict[str, Any] = {}
        running = "start"
        deadline = time.monotonic() + self.timeout
        while True:
            left = deadline - time.monotonic()
            if left > 0 and self.conn.poll(min(left, 1.0)):
                kind, ph, row = self.conn.recv()
                if kind == "row":
                    return row
                running, partial = ph, row
                continue
            if left > 0 and self.proc.is_alive():
                continue
            # Cut: a hang (or a dead worker).
            why = (
                f"no result within {self.timeout:g} s (hang)"
                if self.proc.is_alive()
                else f"the worker process died (exit code {self.proc.exitcode})"
            )
            self.close(kill=True)
            self.hangs += 1
            row = partial or {
                "case": case.name,
                "group": case.group,
                "kind": case.points[i].kind,
                "point": case.points[i].label,
            }
            if running == "jaxcheck":
                row["jaxcheck"] = {
                    "status": "crash",
                    "num_wrong": 0,
                    "error": why,
                    "where": "",
                    "seconds": self.timeout,
                }
                row["check_grads"] = {"status": "not run", "message": "", "seconds": 0}
            elif running == "check_grads":
                row["check_grads"] = {"status": "error", "message": why, "seconds": 0}
            else:
                row["skipped"] = f"evaluating f or jax.grad: {why}"
            return row

    def close(self, kill: bool = False) -> None:
        if self.proc is None:
            return
        if kill:
            self.proc.kill()
        else:
            try:
                self.conn.send(None)
            except OSError:
                pass
        self.proc.join(timeout=10)
        self.proc = None


# ---- summary ------------------------------------------------------------------------

CAUSES = {
    "pole": "pole/edge crossing",
    "edge": "pole/edge crossing",
    "small-sv": "pole/edge crossing",
    "ill-conditioned": "pole/edge crossing",
    "huge": "huge or tiny magnitude (a fixed step)",
    "tiny": "huge or tiny magnitude (a fixed step)",
    "degenerate": "degenerate spectrum",
    "curvature": "truncation/curvature",
}


def cause(kind: str) -> str:
    """The cause group of a point kind (for the lists)."""
    return CAUSES.get(kind, "other")


def crash_kind(error: str) -> str:
    """A short name for a jaxcheck exception (or hang), to group crashes."""
    if "(hang)" in error:
        return "hang: no result within the point timeout"
    if "worker process died" in error:
        return "the process died"
    if "is not finite at" in error and "perturbed point" in error:
        return "ValueError: f not finite at x +- h (refuses a point near a domain edge)"
    head, _, rest = error.partition(":")
    return f"{head}: {rest.strip()[:70]}"


def _g(v: float) -> str:
    return f"{v:+.4e}" if isinstance(v, float) and math.isfinite(v) else str(v)


def _worst_wrong(row: dict[str, Any]) -> dict[str, Any] | None:
    wrong = [c for c in row["jaxcheck"].get("coords", []) if c["verdict"] == "wrong"]
    if not wrong:
        return None
    return max(
        wrong, key=lambda c: c["rel_error"] if math.isfinite(c["rel_error"]) else 1e300
    )


def _compact(rows: list[dict[str, Any]]) -> str:
    """``"f (p1; p2), g (p3)"`` in order of first appearance."""
    by_case: dict[str, list[str]] = {}
    for r in rows:
        by_case.setdefault(r["case"], []).append(r["point"])
    return ", ".join(f"{c} ({'; '.join(p)})" for c, p in by_case.items())


def git_commit(path: str) -> str:
    """``git rev-parse HEAD`` of the checkout at ``path``, with ``+dirty`` when
    the jaxcheck package has uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "-C", path, "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", path, "status", "--porcelain", "--", "jaxcheck"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def summarize(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The summary as markdown text."""
    lines: list[str] = []
    add = lines.append
    evaluated = [r for r in rows if "skipped" not in r]
    skipped = [r for r in rows if "skipped" in r]
    correct = [r for r in evaluated if r["correct"]]
    errors = [r for r in evaluated if not r["correct"]]

    def jc(r: dict[str, Any]) -> str:
        return r["jaxcheck"]["status"]

    def alarm(r: dict[str, Any]) -> bool:
        return jc(r) == "failed" and r["jaxcheck"]["num_wrong"] > 0

    add(
        "# Hard points: jaxcheck vs jax.test_util.check_grads against 50-digit references"
    )
    add("")
    add(
        f"jaxcheck commit {meta['commit']}, jax {meta['jax']}, mpmath {meta['mpmath']}, "
        f"{meta['machine']}; command: `{meta['command']}`"
    )
    add("")
    n_cases = len({r["case"] for r in rows})
    add(
        f"* cases: {n_cases}; points: {len(rows)}; evaluated: {len(evaluated)}; "
        f"skipped: {len(skipped)}"
    )
    reasons = collections.Counter(r["skipped"].split(":")[0] for r in skipped)
    for reason, n in reasons.most_common():
        add(f"  * {reason}: {n}")
    widened = [r for r in evaluated if r["tol"] > TOL]
    add(
        f"* ground truth: JAX's gradient correct at {len(correct)} points, a TRUE ERROR "
        f"at {len(errors)} (bar {TOL:g} relative; widened to {COND_FACTOR:g} cond eps "
        f"at {len(widened)} ill-conditioned points)"
    )
    found_jc = [r for r in errors if alarm(r)]
    found_cg = [r for r in errors if r["check_grads"]["status"] == "failed"]
    add(
        f"* true errors found: jaxcheck {len(found_jc)}/{len(errors)}, "
        f"jax.test_util.check_grads {len(found_cg)}/{len(errors)}"
    )
    fa = [r for r in correct if alarm(r)]
    fa_coords = sum(r["jaxcheck"]["num_wrong"] for r in fa)
    cg_fa = [r for r in correct if r["check_grads"]["status"] == "failed"]
    add(
        f"* jaxcheck FALSE ALARMS (wrong on a correct gradient): {len(fa)} points, "
        f"{fa_coords} coordinates; check_grads raised on {len(cg_fa)} correct points"
    )
    jc_counts = collections.Counter(jc(r) for r in correct)
    add(
        "* jaxcheck at correct points: "
        + ", ".join(f"{k} {v}" for k, v in sorted(jc_counts.items()))
    )
    crashes = [r for r in evaluated if jc(r) == "crash"]
    add(f"* jaxcheck crashes: {len(crashes)}")
    cg_err = [r for r in evaluated if r["check_grads"]["status"] == "error"]
    if cg_err:
        add(f"* check_grads raised something other than AssertionError: {len(cg_err)}")
    eager = [
        r for r in evaluated if (r.get("eager_err", 0) <= r["tol"]) != r["correct"]
    ]
    if eager:
        add(
            f"* eager jax.grad and jit(jax.grad) disagree on correctness at "
            f"{len(eager)} points: "
            + "; ".join(
                f"{r['case']} {r['point']} (jit {r['jax_err']:.1e}, eager "
                f"{r['eager_err']:.1e})"
                for r in eager
            )
        )
    t = meta["seconds"]
    add(
        f"* runtime: {t['total']:.0f} s (references computed {t['ref_computed']} in "
        f"{t['references']:.0f} s; jaxcheck {t['jaxcheck']:.0f} s; check_grads "
        f"{t['check_grads']:.0f} s)"
    )

    add("")
    add(f"## True errors of JAX ({len(errors)})")
    add("")
    add(
        "*coord* is JAX's worst coordinate; *jaxcheck there* its verdict on it and how "
        "far its numeric estimate is from the reference (a large gap: found by an "
        "estimate that is itself wrong); *f error* the float64 value's error."
    )
    add("")
    add(
        "| function | point | kind | JAX rel. error | coord | jax | reference | "
        "jaxcheck | wrong coords | jaxcheck there | f error | check_grads |"
    )
    add("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in errors:
        i = int(np.argmax(r["jax_err_coords"]))
        there = next(
            (c for c in r["jaxcheck"].get("coords", []) if c["index"] == i), None
        )
        there_s = (
            f"{there['verdict']}, numeric vs ref {there['numeric_vs_ref']:.0e}"
            if there
            else "not listed"
        )
        add(
            f"| {r['case']} | {r['point']} | {r['kind']} | {r['jax_err']:.1e} | {i} | "
            f"{_g(r['jax'][i])} | {_g(r['ref'][i])} | {jc(r)} | "
            f"{r['jaxcheck']['num_wrong']} | {there_s} | {r['f_err']:.0e} | "
            f"{r['check_grads']['status']} |"
        )

    add("")
    add(f"## jaxcheck false alarms ({len(fa)} points, {fa_coords} coordinates)")
    add("")
    add(
        "Worst wrong coordinate of each; *numeric vs ref* is how far jaxcheck's "
        "estimate is from the reference, *JAX vs ref* how far the gradient is."
    )
    by_cause: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for r in fa:
        by_cause[cause(r["kind"])].append(r)
    for name in sorted(by_cause, key=lambda k: -len(by_cause[k])):
        group = by_cause[name]
        add("")
        add(
            f"### {name} ({len(group)} points, "
            f"{sum(r['jaxcheck']['num_wrong'] for r in group)} coordinates)"
        )
        add("")
        add(
            "| function | point | kind | wrong | analytic | numeric | rel. error | bar | "
            "numeric vs ref | JAX vs ref | resolution |"
        )
        add("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in group:
            c = _worst_wrong(r) or {}
            add(
                f"| {r['case']} | {r['point']} | {r['kind']} | "
                f"{r['jaxcheck']['num_wrong']} | {_g(c.get('analytic', math.nan))} | "
                f"{_g(c.get('numeric', math.nan))} | {c.get('rel_error', math.nan):.1e} | "
                f"{r['jaxcheck']['rtol']:.0e} | {c.get('numeric_vs_ref', math.nan):.1e} | "
                f"{c.get('jax_vs_ref', math.nan):.1e} | "
                f"{c.get('resolution', '')[:80]} |"
            )

    add("")
    add("### The same, compactly (function: points)")
    for name in sorted(by_cause, key=lambda k: -len(by_cause[k])):
        add("")
        add(f"* **{name}**: " + _compact(by_cause[name]))

    if cg_fa:
        add("")
        add(f"## jax.test_util.check_grads false alarms ({len(cg_fa)} points)")
        add("")
        add(", ".join(f"{r['case']} {r['point']}" for r in cg_fa))

    if crashes:
        add("")
        add(f"## jaxcheck crashes ({len(crashes)}: raised, or no result in time)")
        kinds: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
        for r in crashes:
            kinds[crash_kind(r["jaxcheck"]["error"])].append(r)
        for name in sorted(kinds, key=lambda k: -len(kinds[k])):
            group = kinds[name]
            add("")
            add(f"### {name} ({len(group)})")
            add("")
            add(f"Example: {group[0]['jaxcheck']['error']}")
            add("")
            for r in group:
                truth = "correct" if r["correct"] else "TRUE ERROR"
                add(f"* {r['case']} {r['point']} ({r['kind']}; JAX's gradient {truth})")

    inconclusive = [r for r in evaluated if jc(r) == "inconclusive"]
    if inconclusive:
        add("")
        add(
            f"## jaxcheck inconclusive ({len(inconclusive)}: no wrong coordinate, "
            "not passed)"
        )
        add("")
        add(", ".join(f"{r['case']} {r['point']}" for r in inconclusive))

    if skipped:
        add("")
        add(f"## Skipped points ({len(skipped)})")
        add("")
        for r in skipped:
            add(f"* {r['case']} {r['point']}: {r['skipped']}")
    return "\n".join(lines) + "\n"


# ---- main ---------------------------------------------------------------------------

_MARKS = {"passed": ".", "failed": "F", "inconclusive": "?", "crash": "C"}


def _mark(row: dict[str, Any]) -> str:
    """One point in the progress line: ``.`` passed, ``F`` failed, ``?``
    inconclusive, ``C`` jaxcheck raised or hung, ``s`` skipped; ``!`` marks a
    true error of JAX."""
    if "skipped" in row:
        return "s"
    mark = _MARKS.get(row["jaxcheck"]["status"], "?")
    return mark if row["correct"] else mark + "!"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated substrings; only cases whose name contains one run",
    )
    parser.add_argument(
        "--json",
        default=os.path.join(RESULTS, "hard_points.json"),
        help="where every row goes (JSON)",
    )
    parser.add_argument(
        "--out",
        default=os.path.join(RESULTS, "hard_points.md"),
        help="where the summary goes (markdown)",
    )
    parser.add_argument(
        "--refs",
        default=os.path.join(RESULTS, "hard_points_refs.json"),
        help="the reference cache ('' for none)",
    )
    parser.add_argument(
        "--ref-timeout", type=float, default=120.0, help="seconds per mpmath reference"
    )
    parser.add_argument(
        "--point-timeout",
        type=float,
        default=60.0,
        help="seconds per point before its checker is recorded as a hang",
    )
    parser.add_argument("--quiet", action="store_true", help="no line per case")
    opts = parser.parse_args(argv)

    cases = all_cases()
    if opts.only:
        wanted = [s for s in opts.only.split(",") if s]
        cases = [c for c in cases if any(s in c.name for s in wanted)]
        if not cases:
            parser.error(f"--only {opts.only!r} matches no case; see hard_points/")
    refs = ReferenceCache(opts.refs or None, timeout=opts.ref_timeout)
    worker = Worker(opts.point_timeout)
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    try:
        for case in cases:
            tc = time.perf_counter()
            case_rows = [
                worker.run(case, i, refs.get(case, p))
                for i, p in enumerate(case.points)
            ]
            rows.extend(case_rows)
            if not opts.quiet:
                print(
                    f"{case.name:48s} {' '.join(_mark(r) for r in case_rows):24s} "
                    f"{time.perf_counter() - tc:6.1f}s",
                    flush=True,
                )
    finally:
        worker.close()
    if not opts.only:
        refs.prune(refs.used)
    refs.save()
    total = time.perf_counter() - t0
    ev = [r for r in rows if "skipped" not in r]
    meta = {
        "commit": git_commit(os.path.dirname(os.path.dirname(jaxcheck.__file__))),
        "jaxcheck_file": jaxcheck.__file__,
        "jax": jax.__version__,
        "mpmath": __import__("mpmath").__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, python "
        f"{platform.python_version()}",
        "command": "python benchmarks/bench_hard_points.py"
        + (" " + " ".join(sys.argv[1:]) if argv is None and sys.argv[1:] else ""),
        "seconds": {
            "total": total,
            "references": refs.seconds,
            "ref_computed": refs.computed,
            "jaxcheck": sum(r["jaxcheck"]["seconds"] for r in ev),
            "check_grads": sum(r["check_grads"]["seconds"] for r in ev),
        },
        "tol": TOL,
        "cond_factor": COND_FACTOR,
    }
    text = summarize(rows, meta)
    print()
    print(text)
    for path, content in ((opts.out, text), (opts.json, None)):
        if not path:
            continue
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as fh:
            if content is None:
                json.dump({"meta": meta, "rows": rows}, fh, indent=1, default=str)
            else:
                fh.write(content)
    print(f"summary: {opts.out}; rows: {opts.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
