"""Speed as users meet it: a fresh process, a function never checked before.

Run from the repository root::

    python benchmarks/bench_cold.py                    # all parts, median of 3
    python benchmarks/bench_cold.py --repeats 1 --only a,d
    python benchmarks/bench_cold.py --with-cache       # + the on-disk cache (a)

Every measurement is its own fresh Python process. Its imports (jax,
jaxcheck, torch) and the building of the input arrays are left out of the
timed region; everything else is in it: tracing, compilation, evaluation and
the tool's own bookkeeping. Nothing is cached on disk between children: JAX's
persistent compilation cache is off in every child (no cache variables in its
environment; each child asserts that JAX has no cache directory), and
jaxcheck's own program cache (on by default) gets an empty directory per
child, except in the ``--with-cache`` rows, where two children share one.

* (a) one cold check of the demo MLP (``jaxcheck.cli.demo_problem()``: a
  64-32-10 tanh MLP, 2,410 parameters, batch 16) by ``jaxcheck.check_grads``
  (defaults: every coordinate), ``jax.test_util.check_grads`` (``order=1,
  modes=["rev"]``, float64 params under ``jax.enable_x64(True)``; it checks
  one random direction, not every coordinate) and ``torch.autograd.gradcheck``
  (``fast_mode=False``, every coordinate) on the same network in torch
  float64 with the same weights and data;
* (b) the "8-width suite": one process per tool checks the tanh MLPs
  ``(64, w, 10)``, ``w = 8, 16, ..., 64`` (610 to 4,810 parameters), one after
  another, each with its own params; the total time per tool;
* (c) in one process, a check of ``f1`` then of ``f2``, a structurally
  identical fresh closure (same shapes, same computation, new params): the
  time and the number of XLA compilations of each;
* (d) XLA compilations (JAX's ``/jax/core/compile/backend_compile_duration``
  monitoring events) and their seconds in jaxcheck's first check of the demo
  MLP; ``report.compilation`` is shown if the report has such a field.

Before any timing, one process checks that torch's loss equals the JAX loss
(float64) to 1e-12 relative on every network; each torch child checks it again
after its timed region. Absolute times are medians over ``--repeats``; ratios
are jaxcheck / other (below 1: jaxcheck is faster). Results go to
``benchmarks/results/cold.md`` (and ``--json PATH``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WIDTHS = tuple(range(8, 65, 8))
TOOLS = ("jaxcheck", "jtu", "torch")
TOOL_NAMES = {
    "jaxcheck": "jaxcheck.check_grads",
    "jtu": "jax.test_util.check_grads",
    "torch": "torch gradcheck",
}
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
TRACE_EVENT = "/jax/core/compile/jaxpr_trace_duration"
LOWER_EVENT = "/jax/core/compile/jaxpr_to_mlir_module_duration"
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"
LOSS_RTOL = 1e-12
LOAD_WARN = 1.0
# Environment variables that would turn JAX's persistent cache on in a child.
CACHE_ENV_VARS = (
    "JAXCHECK_CACHE_DIR",
    "JAX_COMPILATION_CACHE_DIR",
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES",
    "JAX_ENABLE_COMPILATION_CACHE",
)


# --------------------------------------------------------------------------
# The child: one measurement in a fresh process.
# --------------------------------------------------------------------------


class _Events:
    """Counts and sums JAX's compile monitoring events from ``start()`` on."""

    def __init__(self) -> None:
        from jax._src import monitoring

        self.on = False
        self.durations: dict[str, list[float]] = {}
        self.counts: dict[str, int] = {}
        monitoring.register_event_duration_secs_listener(self._duration)
        monitoring.register_event_listener(self._event)

    def _duration(self, event: str, duration: float, **_: Any) -> None:
        if self.on:
            self.durations.setdefault(event, []).append(duration)

    def _event(self, event: str, **_: Any) -> None:
        if self.on:
            self.counts[event] = self.counts.get(event, 0) + 1

    def start(self) -> None:
        self.durations.clear()
        self.counts.clear()
        self.on = True

    def take(self) -> dict[str, Any]:
        """The compilations since ``start()``; starts counting again."""
        comp = self.durations.get(COMPILE_EVENT, [])
        out = {
            "compiles": len(comp),
            "compile_s": sum(comp),
            "cache_hits": self.counts.get(CACHE_HIT_EVENT, 0),
            "traces": len(self.durations.get(TRACE_EVENT, [])),
            "trace_s": sum(self.durations.get(TRACE_EVENT, [])),
            "lowerings": len(self.durations.get(LOWER_EVENT, [])),
            "lower_s": sum(self.durations.get(LOWER_EVENT, [])),
        }
        self.start()
        return out


def _torch_net(params: Any, x: Any, y: Any) -> tuple[Any, tuple[Any, ...]]:
    """The MLP of ``examples.mlp_loss`` in torch float64: ``(loss, leaves)``."""
    import numpy as np
    import torch

    leaves = tuple(
        torch.tensor(np.asarray(a, np.float64), requires_grad=True)
        for layer in params
        for a in (layer["W"], layer["b"])
    )
    tx = torch.tensor(np.asarray(x, np.float64))
    ty = torch.tensor(np.asarray(y), dtype=torch.long)

    def loss(*ts: Any) -> Any:
        h = tx
        for k in range(0, len(ts) - 2, 2):
            h = torch.tanh(h @ ts[k] + ts[k + 1])
        return torch.nn.functional.cross_entropy(h @ ts[-2] + ts[-1], ty)

    return loss, leaves


def _jax_loss64(f: Any, params: Any, x: Any, y: Any) -> float:
    """``f`` at float64 copies of ``params`` and ``x``."""
    import jax
    import jax.numpy as jnp

    with jax.enable_x64(True):
        p64 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params)
        return float(f(p64, jnp.asarray(x, jnp.float64), y))


def _loss_rel_diff(params: Any, x: Any, y: Any) -> float:
    """Relative difference of the torch and JAX float64 losses of one MLP."""
    from jaxcheck import examples

    loss, leaves = _torch_net(params, x, y)
    t = float(loss(*leaves).detach())
    j = _jax_loss64(examples.mlp_loss, params, x, y)
    return abs(t - j) / max(abs(j), 1e-300)


def _problems(part: str) -> list[tuple[Any, Any, Any, Any]]:
    """The ``(f, params, x, y)`` a part checks, in order, built untimed."""
    from jaxcheck import cli, examples

    if part == "a":
        return [cli.demo_problem()]
    if part == "b":
        x, y = examples.classification_batch(16, 64, 10, seed=1)
        return [
            (examples.mlp_loss, examples.mlp_init((64, w, 10), seed=w), x, y)
            for w in WIDTHS
        ]
    if part == "c":

        def make() -> Any:
            return lambda p, x, y: examples.mlp_loss(p, x, y)

        _, p1, x, y = cli.demo_problem()
        p2 = examples.mlp_init((64, 32, 10), seed=2)
        return [(make(), p1, x, y), (make(), p2, x, y)]
    raise ValueError(f"unknown part {part!r}: use a, b or c")


def _checker(tool: str) -> Any:
    """``check(f, params, x, y)`` of a tool; returns its report or ``None``."""
    if tool == "jaxcheck":
        import jaxcheck

        return jaxcheck.check_grads
    if tool == "jtu":
        import jax
        import jax.numpy as jnp
        import jax.test_util

        def check_jtu(f: Any, params: Any, x: Any, y: Any) -> None:
            with jax.enable_x64(True):
                p64 = jax.tree_util.tree_map(
                    lambda a: jnp.asarray(a, jnp.float64), params
                )
                x64 = jnp.asarray(x, jnp.float64)
                jax.test_util.check_grads(
                    lambda p: f(p, x64, y), (p64,), order=1, modes=["rev"]
                )

        return check_jtu
    if tool == "torch":
        import torch

        def check_torch(f: Any, params: Any, x: Any, y: Any) -> bool:
            loss, leaves = _torch_net(params, x, y)
            return bool(torch.autograd.gradcheck(loss, leaves, fast_mode=False))

        return check_torch
    raise ValueError(f"unknown tool {tool!r}: use one of {', '.join(TOOLS)}")


def child_main(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs one measurement described by ``spec`` (in a fresh process)."""
    tool, part = spec["tool"], spec["part"]
    # Imports: untimed.
    if tool == "torch" or part == "verify":
        import torch

        torch.set_num_threads(int(spec["torch_threads"]))
    import jax
    import jax.test_util  # noqa: F401

    import jaxcheck  # noqa: F401
    from jaxcheck import cli, compilation, examples  # noqa: F401

    if part == "verify":
        diffs = {}
        for name in ("a", "b", "c"):
            for i, (_, p, x, y) in enumerate(_problems(name)):
                diffs[f"{name}{i}"] = _loss_rel_diff(p, x, y)
        return {"loss_rel_diff": diffs}

    if jax.config.jax_compilation_cache_dir:
        raise RuntimeError(
            "JAX's persistent compilation cache is on in a child that must run "
            f"without it (dir {jax.config.jax_compilation_cache_dir!r}); unset the "
            "variable that sets it."
        )
    events = _Events()
    problems = _problems(part)  # builds the arrays (no compilation): untimed
    check = _checker(tool)
    out: dict[str, Any] = {"tool": tool, "part": part, "steps": []}
    events.start()
    t_all = time.perf_counter()
    for f, p, x, y in problems:
        t0 = time.perf_counter()
        report = check(f, p, x, y)
        step: dict[str, Any] = {"seconds": time.perf_counter() - t0}
        step.update(events.take())
        if tool == "jaxcheck":
            step["passed"] = bool(report.passed)
            comp = getattr(report, "compilation", None)
            if comp is not None:
                step["report_compilation"] = repr(comp)
                step["loaded"] = comp.get("loaded", 0)
        elif tool == "torch":
            step["passed"] = report
        else:
            step["passed"] = True  # jtu raises on a mismatch
        out["steps"].append(step)
    out["seconds"] = time.perf_counter() - t_all
    events.on = False
    if tool == "torch":
        out["loss_rel_diff"] = max(_loss_rel_diff(p, x, y) for _, p, x, y in problems)
    out["cache_dir_in_use"] = compilation._cache_dir_in_use()
    if out["cache_dir_in_use"]:
        raise RuntimeError(
            f"a child without the cache wrote to {out['cache_dir_in_use']!r}"
        )
    return out


# --------------------------------------------------------------------------
# The parent: runs the children and prints the table.
# --------------------------------------------------------------------------


def run_child(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Runs ``child_main(spec)`` in a fresh process and returns its result."""
    env = {k: v for k, v in os.environ.items() if k not in CACHE_ENV_VARS}
    env.pop("JAXCHECK_NO_CACHE", None)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    # jaxcheck keeps compiled programs on disk by default: a cold child gets an
    # empty directory of its own; the --with-cache rows share one.
    own = None if spec.get("cache") else tempfile.mkdtemp(prefix="bench-cold-")
    env["JAXCHECK_CACHE_DIR"] = spec.get("cache") or own
    cmd = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout
        )
    except subprocess.TimeoutExpired as err:
        raise RuntimeError(
            f"child {spec} ran past --timeout {timeout:.0f} s; raise --timeout"
        ) from err
    finally:
        if own:
            shutil.rmtree(own, ignore_errors=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"child {spec} failed:\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def git_head() -> str:
    import _common as C

    rev = C.git_revision(short=False)
    if rev is None:
        return "n/a"
    return rev[0] + (" (+ local changes in jaxcheck/)" if rev[1] else "")


def loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def parse_only(text: str) -> list[str]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    bad = [p for p in parts if p not in "abcd" or len(p) != 1]
    if bad or not parts:
        raise argparse.ArgumentTypeError(
            f"--only takes letters among a,b,c,d separated by commas, got {text!r}"
        )
    return parts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3, help="fresh processes per row")
    ap.add_argument(
        "--only", type=parse_only, default=list("abcd"), help="e.g. a,d (default all)"
    )
    ap.add_argument("--json", default=None, help="also write every run here")
    ap.add_argument("--torch-threads", type=int, default=1)
    ap.add_argument(
        "--with-cache",
        action="store_true",
        help="also (a) for jaxcheck with its program cache on a shared fresh dir",
    )
    ap.add_argument("--timeout", type=float, default=900.0, help="per child, s")
    ap.add_argument("--out", default="cold.md", help="file under benchmarks/results")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child is not None:
        print("RESULT " + json.dumps(child_main(json.loads(a.child))), flush=True)
        return 0

    sys.path.insert(0, HERE)
    import _common as C

    t_start = time.perf_counter()
    info: dict[str, Any] = {
        "commit": git_head(),
        "load_start": loadavg(),
        "machine": C.machine_info(),
        "repeats": a.repeats,
        "torch_threads": a.torch_threads,
        "only": a.only,
    }
    if info["load_start"] and info["load_start"][0] > LOAD_WARN:
        print(
            f"WARNING: load average {info['load_start'][0]} > {LOAD_WARN} at start: "
            "other processes compete for the CPUs; these timings are not trustworthy.",
            flush=True,
        )
    base = {"torch_threads": a.torch_threads}

    def run(part: str, tool: str, **extra: Any) -> dict[str, Any]:
        r = run_child({**base, "part": part, "tool": tool, **extra}, a.timeout)
        print(f"  {part} {tool:9s} {r.get('seconds', 0):8.3f} s", flush=True)
        return r

    need_torch = any(p in a.only for p in "abc")
    if need_torch:
        v = run_child({**base, "part": "verify", "tool": "torch"}, a.timeout)
        worst = max(v["loss_rel_diff"].values())
        info["loss_rel_diff_verify"] = worst
        if worst > LOSS_RTOL:
            print(
                f"torch's loss differs from the JAX loss by {worst:.2e} relative "
                f"(> {LOSS_RTOL:g}): the networks are not the same; fix _torch_net.",
                file=sys.stderr,
            )
            return 1

    runs: dict[str, list[dict[str, Any]]] = {}
    plan: list[tuple[str, str]] = []
    for part in "abc":
        if part in a.only:
            plan += [(part, tool) for tool in TOOLS]
    if "d" in a.only and "a" not in a.only:
        plan.append(("a", "jaxcheck"))
    for rep in range(a.repeats):
        print(f"repeat {rep + 1}/{a.repeats}", flush=True)
        # Tools interleaved within a repeat, so that drifting load hits them alike.
        for part, tool in plan:
            runs.setdefault(f"{part}/{tool}", []).append(run(part, tool))
        if a.with_cache:
            tmp = tempfile.mkdtemp(prefix="bench-cold-cache-")
            try:
                runs.setdefault("a/jaxcheck cache-write", []).append(
                    run("a", "jaxcheck", cache=tmp)
                )
                runs.setdefault("a/jaxcheck cache-read", []).append(
                    run("a", "jaxcheck", cache=tmp)
                )
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    info["load_end"] = loadavg()
    info["wall_s"] = round(time.perf_counter() - t_start, 1)
    for key, rs in runs.items():
        if key.endswith("/torch"):
            worst = max(r["loss_rel_diff"] for r in rs)
            if worst > LOSS_RTOL:
                raise RuntimeError(f"{key}: torch loss off by {worst:.2e} relative")

    text = render(runs, info, a, C)
    print("\n" + text)
    path = C.write_result(a.out, text + "\n")
    print(f"written to {path}")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"info": info, "runs": runs}, fh, indent=2)
        print(f"json written to {a.json}")
    loads = [x for x in (info["load_start"], info["load_end"]) if x]
    if any(x[0] > LOAD_WARN for x in loads):
        print(
            f"WARNING: load average above {LOAD_WARN} (start {info['load_start']}, "
            f"end {info['load_end']}): these timings are not trustworthy.",
        )
    return 0


def render(runs: dict[str, list[dict[str, Any]]], info: dict, a: Any, C: Any) -> str:
    """The markdown report of ``runs``."""

    def med(key: str, field: str = "seconds", step: int | None = None) -> Any:
        rs = runs.get(key)
        if not rs:
            return None
        if step is None:
            return median([r[field] for r in rs])
        return median([r["steps"][step][field] for r in rs])

    def all_passed(key: str) -> str:
        rs = runs.get(key, [])
        return "yes" if all(s["passed"] for r in rs for s in r["steps"]) else "NO"

    lines = [
        "# Cold checks: a fresh process, a new function",
        "",
        f"commit {info['commit']}; load avg at start {info['load_start']}, "
        f"at end {info['load_end']}; {info['machine']}; torch threads "
        f"{info['torch_threads']}; median of {info['repeats']} fresh process(es) "
        f"per cell; {info['wall_s']} s in all.",
        "",
    ]
    if any(x and x[0] > LOAD_WARN for x in (info["load_start"], info["load_end"])):
        lines += [
            f"**Load average above {LOAD_WARN}: these timings are not trustworthy.**",
            "",
        ]
    rows = []
    for part, label in (
        ("a", "(a) demo MLP, 2,410 params, one cold check"),
        ("b", "(b) 8-width suite, 8 MLPs in one process, total"),
    ):
        if part not in a.only:
            continue
        t = {tool: med(f"{part}/{tool}") for tool in TOOLS}
        rows.append([
            label,
            *(C.fmt_s(t[tool]) for tool in TOOLS),
            C.fmt_ratio(t["jaxcheck"], t["jtu"]),
            C.fmt_ratio(t["jaxcheck"], t["torch"]),
        ])  # fmt: skip
    if rows:
        lines += [
            "Seconds (imports excluded; tracing, compiling, evaluating included). "
            "Ratios are jaxcheck / other: below 1, jaxcheck is faster. "
            "jax.test_util checks one random direction, the others every coordinate.",
            "",
            C.markdown_table(
                ["row", *(TOOL_NAMES[t] + " s" for t in TOOLS)]
                + ["jaxcheck/jtu", "jaxcheck/torch"],
                rows,
            ),
            "",
        ]
    if "b" in a.only and runs.get("b/jaxcheck"):
        per = [
            [
                f"(64, {w}, 10), {75 * w + 10:,} params",
                *(C.fmt_s(med(f"b/{tool}", step=i)) for tool in TOOLS),
                str(med("b/jaxcheck", "compiles", i)),
            ]
            for i, w in enumerate(WIDTHS)
        ]
        lines += [
            "(b) per model (median s of each step) and jaxcheck's XLA compilations:",
            "",
            C.markdown_table(
                ["model", *(TOOL_NAMES[t] for t in TOOLS), "jaxcheck compiles"], per
            ),
            "",
        ]
    if "c" in a.only:
        crow = []
        for tool in TOOLS:
            key = f"c/{tool}"
            if not runs.get(key):
                continue
            t1, t2 = med(key, step=0), med(key, step=1)
            c1, c2 = med(key, "compiles", 0), med(key, "compiles", 1)
            jax_tool = tool != "torch"
            crow.append([
                TOOL_NAMES[tool], C.fmt_s(t1), C.fmt_s(t2), C.fmt_ratio(t2, t1),
                str(c1) if jax_tool else "-", str(c2) if jax_tool else "-",
            ])  # fmt: skip
        lines += [
            "(c) f1, then f2 = a structurally identical fresh closure with new "
            "params, in one fresh process:",
            "",
            C.markdown_table(
                ["tool", "t1 s", "t2 s", "t2/t1", "compiles f1", "compiles f2"], crow
            ),
            "",
        ]
    if "d" in a.only:
        drow = []
        for tool in ("jaxcheck", "jtu"):
            key = f"a/{tool}"
            if not runs.get(key):
                continue
            comp = runs[key][0]["steps"][0].get("report_compilation")
            drow.append([
                TOOL_NAMES[tool],
                str(med(key, "compiles", 0)),
                C.fmt_s(med(key, "compile_s", 0)),
                str(med(key, "lowerings", 0)),
                C.fmt_s(med(key, "lower_s", 0)),
                str(med(key, "traces", 0)),
                C.fmt_s(med(key, "trace_s", 0)),
                C.fmt_s(med(key, "seconds", 0)),
                comp if comp is not None else "(no such field)",
            ])  # fmt: skip
        lines += [
            "(d) JAX compile events in the first check of the demo MLP (median):",
            "",
            C.markdown_table(
                [
                    "tool",
                    "XLA compiles",
                    "compile s",
                    "lowerings",
                    "lower s",
                    "traces",
                    "trace s",
                    "check s",
                    "report.compilation",
                ],
                drow,
            ),  # fmt: skip
            "",
        ]
    if runs.get("a/jaxcheck cache-read"):
        t0 = med("a/jaxcheck")
        crow = [
            ["no cache", C.fmt_s(t0), "1", str(med("a/jaxcheck", "compiles", 0)), "-"]
        ]
        for key, label in (
            ("a/jaxcheck cache-write", "cache, 1st process (compiles, writes)"),
            ("a/jaxcheck cache-read", "cache, 2nd process (warm disk)"),
        ):
            t = med(key)
            crow.append([
                label, C.fmt_s(t), C.fmt_ratio(t, t0),
                str(med(key, "compiles", 0)), str(med(key, "loaded", 0)),
            ])  # fmt: skip
        lines += [
            "--with-cache: (a) for jaxcheck with its on-disk program cache (on by "
            "default; JAXCHECK_CACHE_DIR = a fresh tmp dir), two fresh processes "
            "on the same dir:",
            "",
            C.markdown_table(
                [
                    "run",
                    "check s",
                    "t / no-cache t",
                    "XLA compile events",
                    "programs loaded",
                ],
                crow,
            ),
            "",
            "A loaded program is deserialized, not compiled (report.compilation "
            "counts it as loaded).",
            "",
        ]
    ok = {k: all_passed(k) for k in runs}
    lines.append(
        "All checks passed: " + ", ".join(f"{k} {v}" for k, v in sorted(ok.items()))
    )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
