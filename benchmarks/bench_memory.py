"""Peak memory of a full check of a >= 1e6-parameter model under a memory budget.

Run from the repository root::

    python benchmarks/bench_memory.py                       # 1e6 params, 64/256 MiB
    python benchmarks/bench_memory.py --params 2e6 --budgets-mb 32,128,512

For each budget, a fresh subprocess builds the tanh MLP (softmax loss, batch 16,
input 64, 10 classes, float64), evaluates the loss once (so that the JAX runtime
is up), records its resident set size, resets the kernel's peak counter
(``/proc/self/clear_refs``) and runs
``jaxcheck.check_grads(mlp_loss, params, x, y, coords="all", memory_budget=B)``.
The parent polls the child's ``VmHWM`` (peak resident set) while it runs, so a
check that does not finish within ``--timeout`` still yields the peak reached
so far (the engine reaches its steady state within its first compiled call;
the table says when a check was cut short).

The number compared with the budget is the peak *increase* over the resident
set before the check: everything the check allocates (analytic gradient,
perturbed copies, XLA's compilation) counts against the budget. Linux only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

MiB = 2**20


def _status(pid: int | str = "self") -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` of a process, in bytes (empty if it is gone)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":")
                    out[key] = int(value.split()[0]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return out


def child(
    params_target: int,
    budget: int | None,
    chunk_size: int | None,
    reference: bool = False,
) -> None:
    import _common as C
    import jax

    import jaxcheck
    from jaxcheck import examples

    with jax.enable_x64(True):
        problem = C.make_problem(params_target)
        C.block(examples.mlp_loss(problem.params, problem.x, problem.y))
        before = _status()["VmRSS"]
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        print(
            json.dumps({"event": "start", "n": problem.n, "rss_before": before}),
            flush=True,
        )
        kwargs = {"coords": "all"}
        if budget is not None:
            kwargs["memory_budget"] = budget
        if chunk_size is not None:
            kwargs["chunk_size"] = chunk_size
        t0 = time.perf_counter()
        if reference:
            # The floor of any check: compile and run the loss and its gradient.
            grad = jax.jit(jax.grad(examples.mlp_loss))
            C.block(grad(problem.params, problem.x, problem.y))
            done = {"passed": None, "chunks": {}}
        else:
            report = jaxcheck.check_grads(
                examples.mlp_loss, problem.params, problem.x, problem.y, **kwargs
            )
            done = {
                "passed": bool(report.passed),
                "chunks": {
                    leaf.path: int(getattr(leaf, "chunk_size", 0))
                    for leaf in report.leaves
                },
            }
        seconds = time.perf_counter() - t0
    st = _status()
    done.update(event="done", seconds=seconds, rss_after=st["VmRSS"], hwm=st["VmHWM"])
    print(json.dumps(done), flush=True)


def measure(
    params_target: int,
    budget_mb: float | None,
    timeout: float,
    chunk_size: int | None,
    reference: bool = False,
) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child"]
    if reference:
        cmd += ["--reference"]
    cmd += ["--params", str(params_target)]
    if budget_mb is not None:
        cmd += ["--budget-bytes", str(int(budget_mb * MiB))]
    if chunk_size is not None:
        cmd += ["--chunk-size", str(chunk_size)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    start_line = proc.stdout.readline()
    if not start_line:
        proc.wait()
        return {"error": f"child exited with {proc.returncode} before the check"}
    result = json.loads(start_line)
    t0 = time.perf_counter()
    peak = 0
    peak_at = 0.0
    timed_out = False
    # Poll the child's peak counter until it exits (or the timeout).
    trace = []  # (seconds since the check started, RSS MiB), every ~0.5 s
    while proc.poll() is None:
        st = _status(proc.pid)
        if st.get("VmHWM", 0) > peak:
            peak_at = time.perf_counter() - t0
        peak = max(peak, st.get("VmHWM", 0))
        if not trace or time.perf_counter() - t0 - trace[-1][0] >= 0.5:
            trace.append(
                (round(time.perf_counter() - t0, 1), st.get("VmRSS", 0) // MiB)
            )
        if time.perf_counter() - t0 > timeout:
            timed_out = True
            peak = max(peak, _status(proc.pid).get("VmHWM", 0))
            proc.kill()
            break
        time.sleep(0.05)
    rest = proc.stdout.read()
    proc.wait()
    for line in rest.splitlines():
        if line.startswith("{"):
            result.update(json.loads(line))
    if "hwm" in result:
        peak = max(peak, result["hwm"])
    result.update(
        peak=peak,
        increase=peak - result["rss_before"],
        budget=None if budget_mb is None else int(budget_mb * MiB),
        timed_out=timed_out,
        wall=time.perf_counter() - t0,
        returncode=proc.returncode,
        peak_at=round(peak_at, 1),
        trace=trace,
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=float, default=1e6)
    parser.add_argument(
        "--budgets-mb",
        default="64,256",
        help="comma-separated memory budgets in MiB; 'default' for none given",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="seconds a check may run before it is cut short (peak so far kept)",
    )
    parser.add_argument("--chunk-size", type=int, default=None)
    parser.add_argument("--output", default="memory.md")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--budget-bytes", type=int, default=None, help=argparse.SUPPRESS
    )
    parser.add_argument("--reference", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    target = int(args.params)

    if args.child:
        child(target, args.budget_bytes, args.chunk_size, args.reference)
        return 0

    import _common as C

    info = C.machine_info()
    code = C.git_state()
    print(f"# jaxcheck memory benchmark\n\n{info}\n", flush=True)
    budgets: list[float | None] = [
        None if b.strip() == "default" else float(b)
        for b in args.budgets_mb.split(",")
        if b.strip()
    ]
    rows = []
    all_ok = True
    print("reference: jit(grad(loss)) only ...", flush=True)
    ref = measure(target, None, args.timeout, None, reference=True)
    print("  " + json.dumps(ref), flush=True)
    if "error" not in ref:
        rows.append(
            [
                "(reference: jit(grad) only)",
                f"{ref['n']:,}",
                f"{ref['rss_before'] / MiB:.0f}",
                f"{ref['peak'] / MiB:.0f}",
                f"{ref['increase'] / MiB:.0f}",
                "",
                f"{ref['seconds']:.1f} s",
                "",
            ]
        )
    for budget_mb in budgets:
        label = "default" if budget_mb is None else f"{budget_mb:g} MiB"
        print(f"budget {label} ...", flush=True)
        r = measure(target, budget_mb, args.timeout, args.chunk_size)
        print("  " + json.dumps({k: v for k, v in r.items() if k != "trace"}))
        print(f"  RSS MiB over time: {r.get('trace', [])[:40]}", flush=True)
        if "error" in r:
            rows.append([label, "error", r["error"], "", "", "", "", ""])
            all_ok = False
            continue
        within = r["budget"] is None or r["increase"] <= r["budget"]
        all_ok &= within and not r["timed_out"]
        status = (
            f"cut at {args.timeout:g} s"
            if r["timed_out"]
            else f"{r['seconds']:.1f} s, passed={r.get('passed')}"
        ) + f"; peak at {r['peak_at']:g} s"
        rows.append(
            [
                label,
                f"{r['n']:,}",
                f"{r['rss_before'] / MiB:.0f}",
                f"{r['peak'] / MiB:.0f}",
                f"{r['increase'] / MiB:.0f}",
                "n/a" if r["budget"] is None else ("yes" if within else "NO"),
                status,
                json.dumps(r.get("chunks", {})).replace('"', "")
                if r.get("chunks")
                else "",
            ]
        )
    table = C.markdown_table(
        [
            "budget",
            "params",
            "RSS before MiB",
            "peak RSS MiB",
            "peak increase MiB",
            "increase <= budget",
            "check",
            "chunk per leaf",
        ],
        rows,
    )
    text = "\n".join(
        [
            "# jaxcheck memory benchmark",
            "",
            f"Machine: {info}.",
            f"Code: {code} (at the start of the run).",
            f"Command: `python benchmarks/bench_memory.py {' '.join(sys.argv[1:])}`",
            "",
            table,
            "",
            "peak increase = peak resident set during the check minus the resident "
            "set just before it (same process, after the model and data exist).",
            "",
        ]
    )
    print("\n" + text)
    print("written:", C.write_result(args.output, text))
    return 0 if all_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
