"""A wrong gradient of a large leaf, as users meet it: how long until the
check says so.

Run from the repository root::

    python benchmarks/bench_failing.py                      # n = 1e3, 4e3, 2e4
    python benchmarks/bench_failing.py --sizes 4000 --full-max 4000

The function: ``f(p) = sum(sin(w) * w) + sum(b ** 2)`` with ``w`` of ``n``
coordinates (``linspace(-1, 1, n)``) and ``b`` of 10; the gradient checked is
``jax.grad(f)`` with ``w``'s part planted ``rel`` too large (``0``: the correct
gradient, which must pass; ``1e-5``: past jaxcheck's bar of 1e-7 only;
``1e-2``: past every tool's tolerance).

Each cell is its own fresh Python process (imports and array building outside
the timed region):

* **jaxcheck**: ``jaxcheck.check_grads(f, p, grad_fn=planted)``, every
  coordinate, defaults (``max_follow_ups=256``: a sample of a large leaf's
  coordinates outside the bar is followed up; once one is confirmed wrong the
  rest are left);
* **jaxcheck, every follow-up**: the same with ``max_follow_ups=None`` (what
  every check did before the option existed), up to ``--full-max`` coordinates;
* **torch gradcheck**: ``torch.autograd.gradcheck`` (``fast_mode=False``,
  ``raise_exception=False``) of the same function in torch float64 with the
  planted backward in a ``torch.autograd.Function``;
* **jax.test_util**: ``jax.test_util.check_grads(..., order=1, modes=["rev"])``
  of ``f`` through a ``jax.custom_vjp`` with the planted backward (float64).

Each row says whether the tool found the bug. Ratios are jaxcheck (defaults) /
other: below 1, jaxcheck is faster. Results go to
``benchmarks/results/failing.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TOOLS = ("jaxcheck", "jaxcheck_full", "torch", "jtu")
NAMES = {
    "jaxcheck": "jaxcheck",
    "jaxcheck_full": "jaxcheck, every follow-up",
    "torch": "torch gradcheck",
    "jtu": "jax.test_util",
}


def child(tool: str, n: int, rel: float) -> dict[str, Any]:
    """One timed check in this (fresh) process."""
    import numpy as np

    w0 = np.linspace(-1.0, 1.0, n)
    b0 = np.linspace(0.5, 1.5, 10)
    if tool == "torch":
        import torch

        torch.set_num_threads(1)

        class Planted(torch.autograd.Function):
            @staticmethod
            def forward(ctx, w):
                ctx.save_for_backward(w)
                return torch.sum(torch.sin(w) * w)

            @staticmethod
            def backward(ctx, g):
                (w,) = ctx.saved_tensors
                return g * (torch.cos(w) * w + torch.sin(w)) * (1 + rel)

        w = torch.tensor(w0, dtype=torch.float64, requires_grad=True)
        b = torch.tensor(b0, dtype=torch.float64, requires_grad=True)

        def tf(w, b):
            return Planted.apply(w) + torch.sum(b**2)

        t = time.perf_counter()
        ok = torch.autograd.gradcheck(
            tf, (w, b), fast_mode=False, raise_exception=False
        )
        return {"seconds": time.perf_counter() - t, "found": not ok}

    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    import jaxcheck

    def f(p):
        return jnp.sum(jnp.sin(p["w"]) * p["w"]) + jnp.sum(p["b"] ** 2)

    def planted(p):
        g = jax.grad(f)(p)
        return {"w": g["w"] * (1 + rel), "b": g["b"]}

    p = {"w": jnp.asarray(w0), "b": jnp.asarray(b0)}
    if tool == "jtu":
        from jax.test_util import check_grads

        @jax.custom_vjp
        def g(p):
            return f(p)

        def fwd(p):
            return f(p), p

        def bwd(p, ct):
            return (jax.tree.map(lambda x: ct * x, planted(p)),)

        g.defvjp(fwd, bwd)
        t = time.perf_counter()
        try:
            check_grads(g, (p,), order=1, modes=["rev"])
            found = False
        except AssertionError:
            found = True
        return {"seconds": time.perf_counter() - t, "found": found}
    cap = None if tool == "jaxcheck_full" else 256
    t = time.perf_counter()
    r = jaxcheck.check_grads(f, p, grad_fn=planted, max_follow_ups=cap)
    seconds = time.perf_counter() - t
    leaf = r.leaf("['w']")
    return {
        "seconds": seconds,
        "found": not r.passed,
        "status": r.status,
        "wrong": leaf.num_wrong,
        "left": leaf.num_inconclusive,
    }


def run(tool: str, n: int, rel: float, timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", json.dumps([tool, n, rel])]
    env = {**os.environ, "JAXCHECK_NO_CACHE": "1"}
    try:
        out = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT
        )
    except subprocess.TimeoutExpired:
        return {"seconds": None, "found": None, "note": f"over {timeout:.0f} s"}
    if out.returncode != 0:
        raise RuntimeError(f"{tool} n={n} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,4000,20000")
    ap.add_argument("--rels", default="0,1e-5,1e-2")
    ap.add_argument("--full-max", type=int, default=4000)
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        tool, n, rel = json.loads(a.child)
        print(json.dumps(child(tool, n, rel)))
        return
    sys.path.insert(0, HERE)
    from _common import git_state, load_note, machine_info, markdown_table, write_result

    sizes = [int(float(s)) for s in a.sizes.split(",")]
    rels = [float(r) for r in a.rels.split(",")]
    start = load_note()
    rows = []
    for rel in rels:
        for n in sizes:
            res = {}
            for tool in TOOLS:
                if tool == "jaxcheck_full" and n > a.full_max:
                    continue
                res[tool] = run(tool, n, rel, a.timeout)
                print(rel, n, tool, res[tool], flush=True)
            mine = res["jaxcheck"]["seconds"]

            def cell(tool: str, res: dict = res, rel: float = rel) -> str:
                if tool not in res:
                    return "-"
                r = res[tool]
                if r["seconds"] is None:
                    return r["note"]
                if rel == 0:  # jaxcheck may also say "inconclusive", not a pass
                    found = "passed" if not r["found"] else "FALSE ALARM"
                    if r.get("status") == "inconclusive":
                        found = "inconclusive"
                else:
                    found = "found" if r["found"] else "MISSED"
                return f"{r['seconds']:.2f} s, {found}"

            def ratio(tool: str, res: dict = res, mine: float = mine) -> str:
                r = res.get(tool)
                if not r or r["seconds"] is None:
                    return "-"
                return f"{mine / r['seconds']:.2f}x"

            jc = res["jaxcheck"]
            rows.append(
                [f"{rel:g}", f"{n + 10:,}", cell("jaxcheck"),
                 f"{jc['wrong']:,} / {jc['left']:,}", cell("jaxcheck_full"),
                 ratio("jaxcheck_full"), cell("torch"), ratio("torch"),
                 cell("jtu"), ratio("jtu")]
            )  # fmt: skip
    table = markdown_table(
        ["bug", "params", "jaxcheck", "wrong / left", "every follow-up",
         "ratio", "torch gradcheck", "ratio", "jax.test_util", "ratio"],
        rows,
    )  # fmt: skip
    text = (
        "# A wrong gradient of a large leaf: time to a verdict\n\n"
        f"{git_state()}; {machine_info()}; {start} at start, {load_note()} at end; "
        "one fresh process per cell.\n\n"
        "Ratios are jaxcheck (defaults) / the column before: below 1, jaxcheck is "
        "faster. 'wrong / left': coordinates of `w` confirmed wrong / left "
        "inconclusive (not followed up once the leaf had failed).\n\n" + table + "\n"
    )
    print(text)
    print("written to", write_result("failing.md", text))


if __name__ == "__main__":
    main()
