"""The first check in a new process: compilation, with and without the cache.

Run from the repository root::

    python benchmarks/bench_compile.py                 # 11k-parameter MLP
    python benchmarks/bench_compile.py --sizes 1000,11000,100000 --repeats 2

Most of a first check is XLA compiling the engine's calls. Every row below is a
fresh Python process (what a script, a CI job or the ``jaxcheck`` command
pays), on the tanh MLP of ``_common.make_problem``, float64, all coordinates:

* ``jaxcheck, no cache``: ``check_grads`` as it is by default;
* ``jaxcheck, cache cold``: with :func:`jaxcheck.compilation.use_compilation_cache` on an
  empty directory (compiling and writing the cache);
* ``jaxcheck, cache warm``: a later process with the same directory;
* ``torch gradcheck``: ``torch.autograd.gradcheck`` (``fast_mode=False``), the
  first call in a fresh process (it compiles nothing; skipped above
  ``--max-seconds``).

*import* is the import of the library (jax + jaxcheck, or torch); *first check*
runs from a built problem to the report; *warm* is a second call in the same
process. The processes run one after another; the best of ``--repeats`` is
shown. Results go to ``benchmarks/results/compile.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _common as C  # noqa: E402

CHILD = textwrap.dedent(
    """
    import json, os, sys, time
    mode, n, cache = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    sys.path.insert(0, {here!r})
    t0 = time.perf_counter()
    if mode == "torch":
        import torch
    import jax
    import jaxcheck
    t_import = time.perf_counter() - t0
    import _common as C
    import bench_core
    with jax.enable_x64(True):
        problem = C.make_problem(n)
    out = {{"import": t_import, "n": problem.n}}
    if mode == "torch":
        with jax.enable_x64(True):  # the JAX loss it compares with, in float64
            r = bench_core.bench_torch(problem, repeats=1, max_seconds=float(cache))
        out["note"] = r.note
        if r.seconds is not None:
            # bench_torch times one warm-up on a tiny input first, then the call.
            out["first"] = r.times[0]
            out["warm"] = r.seconds
    else:
        if cache:
            jaxcheck.compilation.use_compilation_cache(cache)
        from jaxcheck import examples
        t1 = time.perf_counter()
        report = jaxcheck.check_grads(examples.mlp_loss, problem.params, problem.x,
                                      problem.y)
        out["first"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        jaxcheck.check_grads(examples.mlp_loss, problem.params, problem.x, problem.y)
        out["warm"] = time.perf_counter() - t2
        out["passed"] = report.passed
    print("RESULT " + json.dumps(out))
    """
).format(here=HERE)


def child(mode: str, n: int, cache: str) -> dict:
    env = dict(os.environ)
    env.pop("JAXCHECK_CACHE_DIR", None)
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(n), cache],
        capture_output=True,
        text=True,
        env=env,
        cwd=os.path.dirname(HERE),
    )
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if out.returncode or not lines:
        raise RuntimeError(f"{mode} at {n} failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def best(runs: list[dict], key: str) -> float | None:
    vals = [r[key] for r in runs if r.get(key) is not None]
    return min(vals) if vals else None


def run_size(n: int, repeats: int, max_seconds: float) -> tuple[list[list[str]], dict]:
    rows: dict[str, list[dict]] = {
        "no cache": [], "cache cold": [], "cache warm": [], "torch": []
    }  # fmt: skip
    for _ in range(repeats):
        rows["no cache"].append(child("jaxcheck", n, ""))
        cache = tempfile.mkdtemp(prefix="jaxcheck-cache-")
        try:
            rows["cache cold"].append(child("jaxcheck", n, cache))
            rows["cache warm"].append(child("jaxcheck", n, cache))
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        rows["torch"].append(child("torch", n, str(max_seconds)))
    torch_first = best(rows["torch"], "first")
    torch_total = (
        None if torch_first is None else torch_first + best(rows["torch"], "import")
    )
    table = []
    labels = {
        "no cache": "jaxcheck, no cache",
        "cache cold": "jaxcheck, cache cold (compiles, writes)",
        "cache warm": "jaxcheck, cache warm (a later process)",
        "torch": "torch gradcheck",
    }
    summary = {}
    for key, label in labels.items():
        imp, first, warm = (best(rows[key], k) for k in ("import", "first", "warm"))
        total = None if first is None else imp + first
        summary[key] = {"import": imp, "first": first, "warm": warm}
        note = rows[key][0].get("note", "")
        table.append([
            label, C.fmt_s(imp), C.fmt_s(first) if first else note or "-",
            C.fmt_s(warm) if warm else "-",
            C.fmt_ratio(torch_first, first) if first and torch_first else "-",
            C.fmt_ratio(torch_total, total) if total and torch_total else "-",
        ])  # fmt: skip
    return table, {"n": rows["no cache"][0]["n"], "rows": summary}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="11000")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--max-seconds", type=float, default=120.0)
    ap.add_argument("--out", default="compile.md")
    a = ap.parse_args()
    t0 = time.perf_counter()
    parts = [
        "# The first check in a new process: compilation, with and without the cache",
        "",
        C.machine_info() + "; " + C.load_note() + "; " + C.git_state(),
        "",
        "Speed-up columns are torch's time over this row's (above 1: faster than "
        "torch); *with import* adds each library's import time.",
        "",
    ]
    data = []
    for n in C.parse_sizes(a.sizes):
        table, info = run_size(n, a.repeats, a.max_seconds)
        data.append(info)
        parts += [
            f"## MLP of {info['n']:,} parameters",
            "",
            C.markdown_table(
                [
                    "run (fresh process)",
                    "import (s)",
                    "first check (s)",
                    "warm (s)",
                    "x torch, first check",
                    "x torch, with import",
                ],
                table,
            ),  # fmt: skip
            "",
        ]
        print("\n".join(parts[-4:]), flush=True)
    parts.append(f"(total {time.perf_counter() - t0:.0f} s)")
    path = C.write_result(a.out, "\n".join(parts) + "\n")
    C.write_result(a.out.replace(".md", ".json"), json.dumps(data, indent=2))
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
