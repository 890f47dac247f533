"""Full per-coordinate gradient check of a tanh MLP: jaxcheck against the anchors.

Run from the repository root::

    python benchmarks/bench_core.py                      # 1e3, 1.1e4, 1e5 params
    python benchmarks/bench_core.py --sizes 11000 --repeats 5
    python benchmarks/bench_core.py --sizes 1e6 --max-seconds 600 --skip torch,loop

One process measures, side by side, for each model size (softmax loss, batch 16,
input 64, 10 classes, float64):

* ``jaxcheck``: ``jaxcheck.check_grads(mlp_loss, params, x, y, coords="all")``,
  first call (tracing + compilation + run) and warm calls, separately;
* ``roofline``: 2N evaluations of a plain ``jit(vmap(mlp_loss))`` over
  materialized perturbed parameter sets at full batch throughput (the best of a
  few chunk sizes; copies are built outside the timed region);
* ``loop``: a Python loop over coordinates calling a jitted loss twice per
  coordinate (the perturbation of the flat vector happens inside the jit);
* ``torch``: ``torch.autograd.gradcheck(fast_mode=False)`` over (W1, b1, W2, b2)
  of the same model, same weights, same data (optional dependency).

Baselines whose estimated time exceeds ``--max-seconds`` are either skipped
(torch: reported as ``skipped (~X s est.)``) or measured on a subset of the
coordinates and extrapolated (loop: marked with ``~``). Nothing is asserted:
the script prints a table and ratios and writes them to
``benchmarks/results/latest.md``.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import _common as C  # noqa: E402

from jaxcheck import examples  # noqa: E402

STEP = 1e-6  # finite-difference step of the baselines (irrelevant to timing)
METHODS = ("jaxcheck", "roofline", "loop", "torch")


@dataclasses.dataclass
class Result:
    """What one method measured at one size."""

    seconds: float | None = None  # the number in the table (best of repeats)
    estimated: bool = False  # extrapolated from a subset
    first_call: float | None = None  # jax variants: trace + compile + run
    times: tuple[float, ...] = ()
    note: str = ""
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def cell(self) -> str:
        if self.seconds is None:
            return self.note or "n/a"
        return C.fmt_s(self.seconds, estimated=self.estimated)


# --------------------------------------------------------------------------------
# jaxcheck


def bench_jaxcheck(
    problem: C.Problem,
    *,
    repeats: int,
    max_seconds: float,
    kwargs: dict,
    sweep_chunks: tuple[int, ...] = (),
) -> Result:
    try:
        import jaxcheck
    except ImportError as e:  # pragma: no cover - depends on checkout state
        return Result(note=f"jaxcheck import failed: {e}")
    check = getattr(jaxcheck, "check_grads", None)
    if check is None:
        return Result(note="jaxcheck.check_grads not available yet")

    def run():
        return check(examples.mlp_loss, problem.params, problem.x, problem.y, **kwargs)

    try:
        first, report = C.time_once(run)
    except Exception as e:  # noqa: BLE001 - report the core's error, keep going
        return Result(note=f"check_grads raised {type(e).__name__}: {str(e)[:80]}")
    first_leaves = [
        float(getattr(leaf, "seconds", float("nan")))
        for leaf in getattr(report, "leaves", ())
    ]
    reps = repeats if first * repeats <= max_seconds else 1
    timing, report = C.time_repeated(run, reps)
    passed = getattr(report, "passed", None)
    extra = {"passed": passed}
    for attr in ("num_checked", "seconds"):
        if hasattr(report, attr):
            extra[attr] = _jsonable(getattr(report, attr))
    # Where the time goes: per leaf, its size, chunk and finite-difference time.
    extra["leaves"] = [
        {
            "path": getattr(leaf, "path", "?"),
            "size": int(np.prod(getattr(leaf, "shape", ()))),
            "chunk": getattr(leaf, "chunk_size", None),
            "seconds": round(float(getattr(leaf, "seconds", float("nan"))), 4),
            "first_seconds": round(first, 4),
        }
        for leaf, first in zip(
            getattr(report, "leaves", ()), first_leaves, strict=False
        )
    ]
    note = "" if passed else f"passed={passed}"
    sweep = {}
    for chunk in sweep_chunks:
        kw = {**kwargs, "chunk_size": chunk}

        def run_chunk(kw=kw):
            return check(examples.mlp_loss, problem.params, problem.x, problem.y, **kw)

        t_first, _ = C.time_once(run_chunk)
        t_warm, _ = C.time_repeated(
            run_chunk, repeats if t_first * repeats <= max_seconds else 1
        )
        sweep[chunk] = {"first_call_s": t_first, "warm_s": t_warm.best}
    if sweep:
        extra["chunk_sweep"] = sweep
    return Result(
        seconds=timing.best,
        first_call=first,
        times=timing.times,
        note=note,
        extra=extra,
    )


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except TypeError:
        return repr(value)


# --------------------------------------------------------------------------------
# roofline: 2N evaluations of a plain vmapped loss at full batch throughput


def bench_roofline(
    problem: C.Problem,
    *,
    repeats: int,
    chunks: list[int],
    mem_mb: float,
    min_seconds: float = 0.2,
) -> Result:
    flat, unravel = ravel_pytree(problem.params)
    n = flat.size
    x, y = problem.x, problem.y
    vloss = jax.jit(jax.vmap(examples.mlp_loss, in_axes=(0, None, None)))

    # The same evaluations, but the perturbed copies are built inside the jit
    # (what a naive vmapped engine does): shows the cost of materialization.
    @jax.jit
    def vloss_copies(flat, idx, x, y):
        def one(i):
            return examples.mlp_loss(unravel(flat.at[i].add(STEP)), x, y)

        return jax.vmap(one)(idx)

    per_chunk: dict[int, dict[str, float]] = {}
    for chunk in chunks:
        if chunk > 2 * n or chunk * n * 8 > mem_mb * 2**20:
            continue
        calls = -(-2 * n // chunk)  # chunks in a full check
        idx = np.linspace(0, n - 1, chunk).astype(np.int32)
        flats = flat[None, :] + STEP * jax.nn.one_hot(idx, n, dtype=flat.dtype)
        batch = C.block(jax.vmap(unravel)(flats))
        del flats
        compile_s, _ = C.time_once(lambda b=batch: vloss(b, x, y))
        per_call, _ = C.time_per_call(
            lambda b=batch: vloss(b, x, y),
            max_calls=calls,
            min_seconds=min_seconds,
            repeats=repeats,
        )
        del batch
        idx_j = jnp.asarray(idx)
        compile_c, _ = C.time_once(lambda i=idx_j: vloss_copies(flat, i, x, y))
        per_call_c, _ = C.time_per_call(
            lambda i=idx_j: vloss_copies(flat, i, x, y),
            max_calls=calls,
            min_seconds=min_seconds,
            repeats=repeats,
        )
        per_chunk[chunk] = {
            "chunk_s": per_call,
            "per_eval_s": per_call / chunk,
            "first_call_s": compile_s,
            "copies_chunk_s": per_call_c,
            "copies_per_eval_s": per_call_c / chunk,
            "copies_first_call_s": compile_c,
        }
    if not per_chunk:
        return Result(note="no chunk fits --roofline-mem-mb")
    best = min(per_chunk, key=lambda c: per_chunk[c]["per_eval_s"])
    best_c = min(per_chunk, key=lambda c: per_chunk[c]["copies_per_eval_s"])
    return Result(
        seconds=2 * n * per_chunk[best]["per_eval_s"],
        first_call=per_chunk[best]["first_call_s"],
        note=f"chunk {best}",
        extra={
            "best_chunk": best,
            "per_chunk": per_chunk,
            "copies_seconds": 2 * n * per_chunk[best_c]["copies_per_eval_s"],
            "copies_best_chunk": best_c,
        },
    )


# --------------------------------------------------------------------------------
# Python loop over a jitted loss


def bench_loop(problem: C.Problem, *, repeats: int, max_seconds: float) -> Result:
    flat, unravel = ravel_pytree(problem.params)
    n = flat.size
    x, y = problem.x, problem.y

    @jax.jit
    def loss_at(flat, i, delta, x, y):
        return examples.mlp_loss(unravel(flat.at[i].add(delta)), x, y)

    def run(idx: np.ndarray) -> np.ndarray:
        out = np.empty(len(idx))
        for k, i in enumerate(idx.tolist()):
            fp = float(loss_at(flat, i, STEP, x, y))
            fm = float(loss_at(flat, i, -STEP, x, y))
            out[k] = (fp - fm) / (2 * STEP)
        return out

    compile_s, _ = C.time_once(lambda: loss_at(flat, 0, STEP, x, y))
    pilot_idx = np.linspace(0, n - 1, min(n, 300)).astype(np.int64)
    pilot_s, _ = C.time_once(lambda: run(pilot_idx))
    estimate = pilot_s / len(pilot_idx) * n
    if estimate <= max_seconds:
        reps = repeats if estimate * repeats <= max_seconds else 1
        timing, _ = C.time_repeated(lambda: run(np.arange(n)), reps)
        return Result(seconds=timing.best, first_call=compile_s, times=timing.times)
    # Too long: time an evenly spread subset and extrapolate linearly.
    m = max(len(pilot_idx), int(n * max_seconds / estimate / 2))
    sub = np.linspace(0, n - 1, m).astype(np.int64)
    t, _ = C.time_once(lambda: run(sub))
    return Result(
        seconds=t / m * n,
        estimated=True,
        first_call=compile_s,
        times=(t,),
        note=f"extrapolated from {m} of {n} coords ({t:.1f} s)",
    )


# --------------------------------------------------------------------------------
# torch.autograd.gradcheck(fast_mode=False)


def bench_torch(problem: C.Problem, *, repeats: int, max_seconds: float) -> Result:
    try:
        import torch
    except ImportError:
        return Result(note="torch not installed")

    leaves = []
    for layer in problem.params:
        leaves += [layer["W"], layer["b"]]
    tensors = [
        torch.tensor(np.asarray(a), dtype=torch.float64, requires_grad=True)
        for a in leaves
    ]
    tx = torch.tensor(np.asarray(problem.x), dtype=torch.float64)
    ty = torch.tensor(np.asarray(problem.y), dtype=torch.long)

    def loss(*ts):
        h = tx
        for k in range(0, len(ts) - 2, 2):
            h = torch.tanh(h @ ts[k] + ts[k + 1])
        logits = h @ ts[-2] + ts[-1]
        return torch.nn.functional.cross_entropy(logits, ty)

    # Same function as the JAX one?
    diff = abs(
        float(loss(*tensors).detach())
        - float(examples.mlp_loss(problem.params, problem.x, problem.y))
    )
    if diff > 1e-10:
        return Result(note=f"torch loss differs from JAX by {diff:.2e}")

    def gradcheck(inputs, fn):
        return torch.autograd.gradcheck(fn, inputs, fast_mode=False)

    # gradcheck's own first-call overhead must not inflate the pilot.
    warm = torch.ones(3, dtype=torch.float64, requires_grad=True)
    gradcheck((warm,), lambda t: (t * t).sum())

    # Pilot: gradcheck over the biases only (weights held constant) gives the
    # per-coordinate cost at this model size.
    weights = [t.detach() for t in tensors[0::2]]
    biases = tensors[1::2]

    def loss_biases(*bs):
        return loss(*[v for pair in zip(weights, bs, strict=True) for v in pair])

    k = sum(b.numel() for b in biases)
    n = problem.n
    # Torch's own thread count (intra-op parallelism) can be slower than one
    # thread on small matrices, and much slower when other processes compete
    # for the cores: give torch its best setting, chosen by the pilot.
    default_threads = torch.get_num_threads()
    pilots = {}
    for threads in sorted({default_threads, 1}, reverse=True):
        torch.set_num_threads(threads)
        pilot_s, _ = C.time_once(lambda: gradcheck(tuple(biases), loss_biases))
        pilots[threads] = pilot_s
    threads = min(pilots, key=pilots.get)
    torch.set_num_threads(threads)
    pilot_s = pilots[threads]
    estimate = pilot_s / k * n
    extra = {
        "estimate_s": estimate,
        "pilot": f"gradcheck over the {k:,} bias coords: "
        + ", ".join(f"{t} threads {v:.3f} s" for t, v in pilots.items()),
        "threads": threads,
    }
    try:
        if estimate > max_seconds:
            return Result(note=f"skipped (~{C.fmt_s(estimate)} s est.)", extra=extra)
        reps = repeats if estimate * repeats <= max_seconds else 1
        timing, ok = C.time_repeated(lambda: gradcheck(tuple(tensors), loss), reps)
    except torch.autograd.gradcheck.GradcheckError as e:  # pragma: no cover
        return Result(note=f"gradcheck failed: {str(e)[:60]}", extra=extra)
    finally:
        torch.set_num_threads(default_threads)
    return Result(
        seconds=timing.best,
        times=timing.times,
        note=f"{threads} thread(s)",
        extra={**extra, "passed": bool(ok)},
    )


# --------------------------------------------------------------------------------
# driver


def parse_kw(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        default="1000,11000,100000",
        help="comma-separated target parameter counts (default: %(default)s)",
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="timings per method (best is shown)"
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=100.0,
        help="per method and size: skip torch / extrapolate the loop beyond this",
    )
    parser.add_argument(
        "--skip", default="", help=f"comma-separated methods to skip, from {METHODS}"
    )
    parser.add_argument(
        "--chunks",
        default="16,64,256,1024,4096",
        help="roofline chunk sizes tried (default: %(default)s)",
    )
    parser.add_argument(
        "--roofline-mem-mb",
        type=float,
        default=256.0,
        help="largest materialized roofline chunk, MiB (default: %(default)s)",
    )
    parser.add_argument(
        "--jc",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra keyword for jaxcheck.check_grads, e.g. --jc chunk_size=256",
    )
    parser.add_argument(
        "--output", default="latest.md", help="file name under benchmarks/results/"
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=30.0,
        help="wait up to this many seconds for idle CPUs before each size",
    )
    parser.add_argument(
        "--jc-chunks",
        default="",
        help="also time jaxcheck with each of these chunk_size values (a sweep)",
    )
    args = parser.parse_args(argv)
    sweep_chunks = tuple(int(c) for c in args.jc_chunks.split(",") if c.strip())

    sizes = C.parse_sizes(args.sizes)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    chunks = [int(c) for c in args.chunks.split(",")]
    jc_kwargs = {"coords": "all", **parse_kw(args.jc)}

    t_start = time.perf_counter()
    info = C.machine_info()
    code = C.git_state()  # at the start: the code that gets imported
    print(f"# jaxcheck core benchmark\n\n{info}\n{code}\n", flush=True)
    rows: list[dict[str, Any]] = []
    with jax.enable_x64(True):
        # Warm up the runtime so that the first size's first call measures the
        # check, not JAX's own start-up.
        C.block(jnp.tanh(jnp.ones((4, 4))) @ jnp.ones((4, 4)))
        for target in sizes:
            busy = C.wait_for_quiet(args.wait_quiet) if args.wait_quiet > 0 else None
            problem = C.make_problem(target)
            print(
                f"size ~{target:,}: widths {problem.sizes}, {problem.n:,} params",
                flush=True,
            )
            row: dict[str, Any] = {
                "target": target,
                "n": problem.n,
                "busy_before": busy,
                "load_before": C.load_note(),
            }
            for method in METHODS:
                if method in skip:
                    row[method] = Result(note="skipped (--skip)")
                    continue
                t0 = time.perf_counter()
                if method == "jaxcheck":
                    res = bench_jaxcheck(
                        problem,
                        repeats=args.repeats,
                        max_seconds=args.max_seconds,
                        kwargs=jc_kwargs,
                        sweep_chunks=sweep_chunks,
                    )
                elif method == "roofline":
                    res = bench_roofline(
                        problem,
                        repeats=args.repeats,
                        chunks=chunks,
                        mem_mb=args.roofline_mem_mb,
                    )
                elif method == "loop":
                    res = bench_loop(
                        problem, repeats=args.repeats, max_seconds=args.max_seconds
                    )
                else:
                    res = bench_torch(
                        problem, repeats=args.repeats, max_seconds=args.max_seconds
                    )
                row[method] = res
                print(
                    f"  {method:9s} {res.cell():>12s}"
                    + (f"  first {C.fmt_s(res.first_call)}" if res.first_call else "")
                    + (f"  [{res.note}]" if res.note and res.seconds else "")
                    + f"  ({time.perf_counter() - t0:.1f} s wall)",
                    flush=True,
                )
            row["load_after"] = C.load_note()
            rows.append(row)

    text = render(rows, info, code, args, jc_kwargs, time.perf_counter() - t_start)
    print("\n" + text)
    path = C.write_result(args.output, text)
    json_path = C.write_result(
        os.path.splitext(args.output)[0] + ".json",
        json.dumps(
            [
                {
                    k: (dataclasses.asdict(v) if isinstance(v, Result) else v)
                    for k, v in r.items()
                }
                for r in rows
            ],
            indent=1,
            default=repr,
        ),
    )
    print(f"written: {path}, {json_path}")
    return 0


def render(
    rows: list[dict[str, Any]],
    info: str,
    code: str,
    args: argparse.Namespace,
    jc_kwargs: dict,
    total_s: float,
) -> str:
    headers = [
        "size",
        "params",
        "jaxcheck warm s",
        "jaxcheck first-call s",
        "roofline s",
        "python-loop s",
        "torch gradcheck s",
        "torch/jaxcheck",
        "torch/jaxcheck (first call)",
        "roofline/jaxcheck",
    ]
    table = []
    for r in rows:
        jc, roof, loop, tor = r["jaxcheck"], r["roofline"], r["loop"], r["torch"]
        jc_cell = jc.cell() if jc.extra.get("passed", True) else f"{jc.cell()} (FAIL)"
        table.append(
            [
                f"~{r['target']:.0e}".replace("e+0", "e"),
                f"{r['n']:,}",
                jc_cell,
                C.fmt_s(jc.first_call),
                roof.cell(),
                loop.cell(),
                tor.cell(),
                C.fmt_ratio(tor.seconds, jc.seconds),
                C.fmt_ratio(tor.seconds, jc.first_call),
                C.fmt_ratio(roof.seconds, jc.seconds),
            ]
        )
    lines = [
        "# jaxcheck core benchmark",
        "",
        f"Machine: {info}.",
        f"Code: {code} (at the start of the run).",
        f"Command: `python benchmarks/bench_core.py {' '.join(sys.argv[1:])}`".rstrip(),
        f"jaxcheck keywords: `{jc_kwargs}`; repeats {args.repeats} (best shown), "
        f"--max-seconds {args.max_seconds:g}; total run {total_s:.0f} s.",
        "",
        C.markdown_table(headers, table),
        "",
        "`~` marks a value extrapolated from a subset of coordinates. Ratios > 1 "
        "mean jaxcheck is faster.",
        "",
    ]
    lines += acceptance(rows)
    lines += ["", "## Details", ""]
    for r in rows:
        busy = r.get("busy_before")
        lines.append(
            f"- {r['n']:,} params (CPU busy before: "
            f"{'n/a' if busy is None else f'{busy:.0%}'}; {r['load_before']} "
            f"before, {r['load_after']} after):"
        )
        jc = r["jaxcheck"]
        if jc.times:
            lines.append(
                f"  - jaxcheck: first {C.fmt_s(jc.first_call)} s, warm "
                f"{', '.join(C.fmt_s(t) for t in jc.times)} s; passed="
                f"{jc.extra.get('passed')}; per leaf (chunk, s in first / last warm "
                "call): "
                + ", ".join(
                    f"{leaf['path']} {leaf['size']:,} ({leaf['chunk']}, "
                    f"{C.fmt_s(leaf['first_seconds'])} / {C.fmt_s(leaf['seconds'])})"
                    for leaf in jc.extra.get("leaves", [])
                )
            )
        elif jc.note:
            lines.append(f"  - jaxcheck: {jc.note}")
        if jc.extra.get("chunk_sweep"):
            lines.append(
                "  - jaxcheck chunk_size sweep (warm / first call, s): "
                + ", ".join(
                    f"{c}: {C.fmt_s(v['warm_s'])} / {C.fmt_s(v['first_call_s'])}"
                    for c, v in jc.extra["chunk_sweep"].items()
                )
            )
        roof = r["roofline"]
        if roof.seconds is not None:
            pcs = roof.extra["per_chunk"]
            lines.append(
                f"  - roofline: best chunk {roof.extra['best_chunk']}; per chunk "
                "(eval / eval with in-jit copies, s for 2N evals): "
                + ", ".join(
                    f"{c}: {C.fmt_s(2 * r['n'] * v['per_eval_s'])}"
                    f" / {C.fmt_s(2 * r['n'] * v['copies_per_eval_s'])}"
                    for c, v in pcs.items()
                )
                + f"; compile {C.fmt_s(roof.first_call)} s"
            )
        loop = r["loop"]
        if loop.seconds is not None:
            lines.append(
                f"  - loop: compile {C.fmt_s(loop.first_call)} s; "
                + (loop.note or f"runs {', '.join(C.fmt_s(t) for t in loop.times)} s")
            )
        tor = r["torch"]
        if tor.seconds is not None:
            lines.append(
                f"  - torch: {tor.extra.get('threads')} thread(s), runs "
                f"{', '.join(C.fmt_s(t) for t in tor.times)} s; pilot "
                f"{tor.extra.get('pilot')} (estimate "
                f"{C.fmt_s(tor.extra.get('estimate_s'))} s)"
            )
        elif tor.note:
            lines.append(f"  - torch: {tor.note} {tor.extra or ''}".rstrip())
    return "\n".join(lines) + "\n"


def acceptance(rows: list[dict[str, Any]]) -> list[str]:
    """The issue's measured criterion at the size closest to 11k parameters."""
    if not rows:
        return []
    r = min(rows, key=lambda r: abs(np.log(r["n"] / 11_000)))
    jc, roof, tor = r["jaxcheck"], r["roofline"], r["torch"]
    out = [f"Acceptance at {r['n']:,} params (closest to ~11k):"]
    if jc.seconds is None:
        return out + ["- jaxcheck not measured"]
    for name, other, bar, first in (
        ("torch gradcheck", tor, 1.5, True),
        ("roofline (2N vmapped evals)", roof, 1.0, False),
    ):
        if other.seconds is None or other.estimated:
            out.append(f"- vs {name}: not measured side by side")
            continue
        ratio = other.seconds / jc.seconds
        verdict = "holds" if ratio >= bar else "FAILS"
        line = f"- vs {name}: {ratio:.2f}x (need >= {bar:g}x, warm): {verdict}"
        if first and jc.first_call:
            line += f"; first call {other.seconds / jc.first_call:.2f}x"
        out.append(line)
    if not jc.extra.get("passed", True):
        out.append("- WARNING: jaxcheck reported passed=False on a correct gradient")
    return out


if __name__ == "__main__":
    raise SystemExit(main())
