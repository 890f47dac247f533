"""Full float64 gradient checks on an accelerator (a GPU), with a CPU smoke test.

Run from the repository root, on a machine with a CUDA build of jax (and
optionally of torch)::

    python benchmarks/bench_gpu.py                       # 1e6 params; 1e5 vs torch
    python benchmarks/bench_gpu.py --largest --budget 60  # grow until > 60 s
    # CPU smoke test with small sizes:
    python benchmarks/bench_gpu.py --params 20000 --torch-params 5000 --largest \\
        --start-params 5000 --budget 5

The model is the benchmarks' tanh MLP ``(64, hidden, 10)``, softmax loss,
batch 16, float64 (``_common.make_problem``). Three parts:

* **full**: ``jaxcheck.check_grads`` over every coordinate of the
  ``--params`` model: the first call (tracing, compiling, running) and the best
  of ``--repeats`` warm calls.
* **torch**: at ``--torch-params``, the same check against
  ``torch.autograd.gradcheck(fast_mode=False)`` of the same loss on the same
  kind of device (torch CUDA when available, else CPU; printed), with the ratio.
  Beyond ``--max-seconds`` torch is extrapolated from a pilot (marked ``~``).
* **largest** (``--largest``): from ``--start-params``, the hidden width is
  doubled until the first call of a full check takes more than ``--budget``
  seconds (or fails, or passes ``--max-params``); the largest model that
  finished within the budget is reported.

Device information (``jax.devices()``, torch's device) is printed; results go
to ``benchmarks/results/gpu.md``. jax is told not to preallocate most of the
GPU's memory so that torch can run beside it in the same process.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

# Before jax is imported: leave GPU memory to torch in the same process.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import _common as C  # noqa: E402
import bench_propagate as BP  # noqa: E402

import jaxcheck  # noqa: E402
from jaxcheck import examples  # noqa: E402

torch = BP.torch


def device_lines() -> list[str]:
    """What jax and torch run on."""
    lines = [
        f"jax {jax.__version__}, default backend `{jax.default_backend()}`, "
        f"jax.devices(): {jax.devices()}"
    ]
    lines += [
        f"* jax device {d.id}: {d.platform}, {d.device_kind}" for d in jax.devices()
    ]
    if torch is None:
        lines.append("* torch: not importable (the torch part is skipped)")
    elif torch.cuda.is_available():
        lines.append(
            f"* torch {torch.__version__}: CUDA {torch.version.cuda}, "
            f"{torch.cuda.get_device_name(0)}"
        )
    else:
        lines.append(
            f"* torch {torch.__version__}: no CUDA, CPU with "
            f"{torch.get_num_threads()} threads"
        )
    return lines


def torch_device() -> str:
    return "cuda" if torch is not None and torch.cuda.is_available() else "cpu"


def peak_memory() -> str:
    """The device's peak memory in use so far in this process (n/a on CPU)."""
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # not every backend implements it
        stats = None
    if not stats or "peak_bytes_in_use" not in stats:
        return "n/a"
    return f"{stats['peak_bytes_in_use'] / 2**30:.2f} GiB"


def mlp(sizes: tuple[int, ...]) -> C.Problem:
    """The benchmark MLP with the given widths (``make_problem`` fixes them
    from a parameter count)."""
    params = examples.mlp_init(sizes, dtype=jax.numpy.float64)
    x, y = examples.classification_batch(
        C.BATCH, C.DIM, C.NUM_CLASSES, dtype=jax.numpy.float64
    )
    return C.Problem(tuple(sizes), params, x, y)


def full_check(problem: C.Problem, *, repeats: int) -> dict:
    """A full check of ``problem``: first call (nothing compiled) and warm."""
    jax.clear_caches()

    def run():
        return jaxcheck.check_grads(
            examples.mlp_loss, problem.params, problem.x, problem.y
        )

    first, report = C.time_once(run)
    warm = None
    if repeats > 0:
        timing, report = C.time_repeated(run, repeats)
        warm = timing.best
    counts = {
        k: sum(getattr(leaf, f"num_{k}") for leaf in report.leaves)
        for k in ("ok", "wrong", "untestable", "kink")
    }
    return {"first": first, "warm": warm, "report": report, "counts": counts}


def _counts(r: dict) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in r["counts"].items())


# --------------------------------------------------------------------------------


def part_full(a: argparse.Namespace) -> list[str]:
    problem = C.make_problem(a.params)
    print(f"\n## full check: {problem.sizes}, {problem.n:,} parameters", flush=True)
    r = full_check(problem, repeats=a.repeats)
    print(f"    first {r['first']:.2f} s, warm {C.fmt_s(r['warm'])} s", flush=True)
    rows = [[
        str(problem.sizes), f"{problem.n:,}", C.fmt_s(r["first"]), C.fmt_s(r["warm"]),
        str(r["report"].passed), _counts(r), peak_memory(),
    ]]  # fmt: skip
    return [
        f"## Full check of ~{a.params:,} parameters",
        "",
        C.markdown_table(
            [
                "sizes",
                "params",
                "first call (s)",
                f"warm, best of {a.repeats} (s)",
                "passed",
                "verdicts",
                "device peak memory",
            ],
            rows,
        ),  # fmt: skip
        "",
    ]


def part_torch(a: argparse.Namespace) -> list[str]:
    problem = C.make_problem(a.torch_params)
    head = f"## jaxcheck vs torch.autograd.gradcheck at ~{a.torch_params:,} parameters"
    print(f"\n{head}: {problem.sizes}, {problem.n:,}", flush=True)
    if torch is None:
        print("    torch is not importable: skipped", flush=True)
        return [head, "", "torch is not importable: skipped.", ""]
    r = full_check(problem, repeats=a.repeats)
    print(f"    jaxcheck first {r['first']:.2f} s, warm {C.fmt_s(r['warm'])} s")
    device = torch_device()
    print(f"    torch on {device} ...", flush=True)
    tg = BP.torch_gradcheck(
        examples.mlp_loss, BP.torch_mlp_loss, problem.params, (problem.x, problem.y),
        repeats=1, max_seconds=a.max_seconds, device=device,
        threads=sorted({int(t) for t in a.torch_threads.split(",")}, reverse=True),
    )  # fmt: skip
    est = tg["estimated"]
    print(f"    torch {'~' if est else ''}{tg['best']:.2f} s", flush=True)
    jc = r["warm"] if r["warm"] is not None else r["first"]
    where = f"cuda, {torch.cuda.get_device_name(0)}" if device == "cuda" else "CPU"
    rows = [
        ["jaxcheck.check_grads, first call", C.fmt_s(r["first"]),
         C.fmt_ratio(tg["best"], r["first"], estimated=est)],
        ["jaxcheck.check_grads, warm", C.fmt_s(r["warm"]),
         C.fmt_ratio(tg["best"], jc, estimated=est)],
        [f"torch.autograd.gradcheck on {where}",
         C.fmt_s(tg["best"], estimated=est), "1"],
    ]  # fmt: skip
    return [
        f"{head} ({problem.sizes}, {problem.n:,})",
        "",
        C.markdown_table(["method", "seconds", "torch / this"], rows),
        "",
        f"jaxcheck passed: {r['report'].passed} ({_counts(r)}).",
        f"{tg['loss_line']}.",
        f"torch {tg['pilot_line']}.",
        f"torch gradcheck passed: {tg['passed']}"
        + (" (pilot only: the full check was extrapolated)" if est else "")
        + (f"; {tg['threads']} CPU thread(s)." if device == "cpu" else "."),
        "",
    ]


def part_largest(a: argparse.Namespace) -> list[str]:
    sizes = C.make_problem(a.start_params).sizes
    print(f"\n## largest full check within {a.budget:g} s", flush=True)
    rows, best, stop = [], None, ""
    while True:
        n = sizes[0] * sizes[1] + sizes[1] + sizes[1] * sizes[2] + sizes[2]
        if n > a.max_params:
            stop = f"the next size, {n:,} parameters, is above --max-params"
            break
        problem = mlp(sizes)
        print(f"    {sizes}: {n:,} parameters ...", flush=True)
        try:
            r = full_check(problem, repeats=0)
        except Exception as e:  # out of memory, most likely
            stop = f"{n:,} parameters failed: {type(e).__name__}: {str(e)[:200]}"
            rows.append([str(sizes), f"{n:,}", "failed", "-", "-", peak_memory()])
            break
        within = r["first"] <= a.budget
        print(f"      {r['first']:.2f} s, passed {r['report'].passed}", flush=True)
        rows.append([
            str(sizes), f"{n:,}", C.fmt_s(r["first"]), str(r["report"].passed),
            "yes" if within else "no", peak_memory(),
        ])  # fmt: skip
        del problem
        if not within:
            stop = f"{n:,} parameters took {r['first']:.1f} s > {a.budget:g} s"
            break
        best = (sizes, n, r["first"])
        sizes = (sizes[0], 2 * sizes[1], sizes[2])
    lines = [
        f"## Largest full check within {a.budget:g} s (first call, compile included)",
        "",
        C.markdown_table(
            [
                "sizes",
                "params",
                "first call (s)",
                "passed",
                "within budget",
                "device peak memory (process)",
            ],
            rows,
        ),  # fmt: skip
        "",
        f"Stopped: {stop}.",
    ]
    if best:
        lines.append(
            f"Largest that finished within {a.budget:g} s: {best[0]}, "
            f"{best[1]:,} parameters, {best[2]:.1f} s."
        )
    else:
        lines.append(f"No size finished within {a.budget:g} s.")
    print("\n".join(lines[-2:]), flush=True)
    return lines + [""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", type=float, default=1e6)
    ap.add_argument("--torch-params", type=float, default=1e5)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--max-seconds", type=float, default=300.0,
                    help="torch gradcheck beyond this is extrapolated")  # fmt: skip
    ap.add_argument(
        "--torch-threads", default=f"{os.cpu_count() or 1},1",
        help="on CPU: torch thread counts the pilot tries (the fastest is used)",
    )  # fmt: skip
    ap.add_argument("--largest", action="store_true")
    ap.add_argument("--start-params", type=float, default=1e5)
    ap.add_argument("--budget", type=float, default=60.0)
    ap.add_argument("--max-params", type=float, default=2e8)
    ap.add_argument("--skip", default="", help="comma-separated: full, torch")
    ap.add_argument("--out", default="gpu.md")
    a = ap.parse_args()
    a.params, a.torch_params = int(a.params), int(a.torch_params)
    a.start_params, a.max_params = int(a.start_params), int(a.max_params)
    skip = set(a.skip.split(",")) if a.skip else set()
    t0 = time.perf_counter()
    devices = device_lines()
    print("\n".join(devices), flush=True)
    backend = jax.default_backend()
    with jax.enable_x64(True):
        parts = [
            f"# Full float64 checks on `{backend}`",
            "",
            C.machine_info() + "; " + C.load_note() + "; " + C.git_state(),
            "",
            *devices,
            "",
        ]
        if backend == "cpu":
            parts += ["No accelerator: a CPU run (smoke test), not GPU numbers.", ""]
        if "full" not in skip:
            parts += part_full(a)
        if "torch" not in skip:
            parts += part_torch(a)
        if a.largest:
            parts += part_largest(a)
    parts.append(f"(total {time.perf_counter() - t0:.0f} s)")
    path = C.write_result(a.out, "\n".join(parts) + "\n")
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
