"""Random-direction checks with localisation against a full per-coordinate check.

Run from the repository root::

    python benchmarks/bench_directions.py                  # a 1e5-entry leaf
    python benchmarks/bench_directions.py --sizes 1e4 1e5 1e6 --full

The model: one tanh layer whose weight leaf ``W`` has ``N`` entries (``(N/100,
100)``), a bias, a fixed readout and a softmax loss over a batch of 16, float64.
The gradient under test is ``jax.grad`` with ONE entry of ``W`` off by 1%.

For each size it prints, side by side:

* ``check_directions(num=4)``: evaluations of ``f`` (4 directions per leaf, then
  bisection of the failing leaf), the coordinate it localised, and its time
  (first call with compilation, then warm);
* a full check: ``2 N`` evaluations of ``f`` for ``W`` alone (the count is exact;
  with ``--full`` it is also timed with ``jaxcheck.check_grads(coords="all")``);
* the bound on the probability that 4 directions miss this bug
  (``miss_probability`` at its size relative to ``|grad W|``).

Nothing is asserted. Results go to ``benchmarks/results/directions.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import _common as C  # noqa: E402

import jaxcheck  # noqa: E402
from jaxcheck.derivatives import check_directions, miss_probability  # noqa: E402

HIDDEN = 100
BATCH = 16
CLASSES = 10
NUM_DIRECTIONS = 4


def make_problem(n: int, seed: int = 0):
    """Params ``{"W": (n/100, 100), "b": (100,)}``, data and a readout."""
    rng = np.random.default_rng(seed)
    d = max(1, n // HIDDEN)
    params = {
        "W": jnp.asarray(rng.normal(size=(d, HIDDEN)) / np.sqrt(d)),
        "b": jnp.asarray(0.1 * rng.normal(size=HIDDEN)),
    }
    x = jnp.asarray(rng.normal(size=(BATCH, d)))
    y = jnp.asarray(rng.integers(0, CLASSES, size=BATCH))
    readout = jnp.asarray(rng.normal(size=(HIDDEN, CLASSES)) / np.sqrt(HIDDEN))
    return params, x, y, readout


def loss(params, x, y, readout):
    h = jnp.tanh(x @ params["W"] + params["b"])
    logp = jax.nn.log_softmax(h @ readout)
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))


def make_buggy_grad(bad_index: tuple[int, int]):
    grad = jax.jit(jax.grad(loss))

    def grad_one_wrong_entry(params, x, y, readout):
        g = grad(params, x, y, readout)
        return {"W": g["W"].at[bad_index].multiply(1.01), "b": g["b"]}

    return grad_one_wrong_entry


def run(n: int, full: bool) -> list[str]:
    with jax.enable_x64(True):
        params, x, y, readout = make_problem(n)
        shape = params["W"].shape
        bad = (shape[0] // 3, 45)
        grad_fn = make_buggy_grad(bad)
        g = jax.grad(loss)(params, x, y, readout)["W"]
        rel_size = 0.01 * abs(float(g[bad])) / float(jnp.linalg.norm(g))
    t0 = time.perf_counter()
    report = check_directions(
        loss, params, x, y, readout, grad_fn=grad_fn, num=NUM_DIRECTIONS
    )
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    report = check_directions(
        loss, params, x, y, readout, grad_fn=grad_fn, num=NUM_DIRECTIONS
    )
    warm = time.perf_counter() - t0
    leaf = report.leaf("['W']")
    found = [c.index for c in leaf.localized]
    full_evals = 2 * int(np.prod(shape))
    full_time = "not run (--full)"
    if full:
        t0 = time.perf_counter()
        full_report = jaxcheck.check_grads(
            loss, params, x, y, readout, grad_fn=grad_fn, coords={"['b']": 1}
        )
        seconds = time.perf_counter() - t0
        wrong = [
            c.index for c in full_report.leaf("['W']").worst if c.verdict == "wrong"
        ]
        full_time = f"{seconds:.1f} s, wrong at {wrong}"
    return [
        f"{int(np.prod(shape)):,}",
        str(bad),
        str(found),
        f"{leaf.num_evaluations:,}",
        f"{full_evals:,}",
        f"{full_evals / leaf.num_evaluations:,.0f}x",
        f"{first:.2f} s / {warm:.2f} s",
        full_time,
        f"{rel_size:.1e}",
        f"{miss_probability(rel_size, NUM_DIRECTIONS, report.rtol):.1e}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=float, default=[1e5])
    parser.add_argument(
        "--full", action="store_true", help="also time the full check of W"
    )
    args = parser.parse_args()
    headers = [
        "entries of W",
        "planted bug",
        "localised",
        "evaluations (directions)",
        "evaluations (full check)",
        "fewer",
        "time first / warm",
        "full check time",
        "bug size (norm e / norm g)",
        "P(miss) with 4 dirs",
    ]
    rows = [run(int(n), args.full) for n in args.sizes]
    table = C.markdown_table(headers, rows)
    text = (
        "# check_directions: localising one wrong entry\n\n"
        f"{C.machine_info()}\n\n{table}\n"
    )
    print(text)
    os.makedirs(C.RESULTS_DIR, exist_ok=True)
    with open(os.path.join(C.RESULTS_DIR, "directions.md"), "w") as fh:
        fh.write(text)


if __name__ == "__main__":
    main()
