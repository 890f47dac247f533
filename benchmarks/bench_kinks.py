"""Overhead of winner tracking (kink detection) against the plain engine.

Run from the repository root::

    python benchmarks/bench_kinks.py                    # ~1.1e4 params, 5 repeats
    python benchmarks/bench_kinks.py --sizes 1e3,11000 --repeats 7

One process measures, side by side, for each model size (ReLU MLP
``(64, hidden, 10)`` with a multiclass SVM loss, batch 16, float64):

* ``check (tracking)``: ``jaxcheck.check_grads(relu_svm, params, x, y)`` with
  winner tracking (the default for a function with kinks): every coordinate is
  evaluated by the instrumented function, which also returns one uint32 word
  per decision site, at ``x + h e_i``, ``x - h e_i`` in the same batches;
* ``check (plain)``: the same call with ``track_kinks=False``, i.e. the plain
  centered-difference engine and the same bar;
* ``engine (tracking)`` / ``engine (plain)``: the batched evaluations alone, on
  the first-layer weights (the largest leaf): ``engine.evaluate`` with the
  tracker against ``engine.central_differences`` with the plain leaf function;
* the same network with the pre-activations of one example placed within 1e-7
  of zero, so that almost every first-layer coordinate crosses a kink and is
  re-checked (the cost of re-checking, not of tracking);
* the tanh MLP of ``jaxcheck.examples`` (smooth: not instrumented at all).

Warm timings are the best (and median) of ``--repeats`` calls after a first
call; first calls (tracing + compilation) are reported separately. The
overhead target is ``check (tracking) / check (plain) < 1.5``. Results go to
``benchmarks/results/kinks.md``.
"""

from __future__ import annotations

import argparse
import functools
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
from jaxcheck import check, engine, examples, kinks  # noqa: E402

TARGET = 1.5


def svm_loss(scores: jax.Array, y: jax.Array) -> jax.Array:
    correct = jnp.take_along_axis(scores, y[:, None], axis=1)
    margins = jnp.maximum(0.0, scores - correct + 1.0)
    mask = 1.0 - jax.nn.one_hot(y, scores.shape[1], dtype=scores.dtype)
    return jnp.sum(margins * mask) / scores.shape[0]


def relu_svm(params: list, x: jax.Array, y: jax.Array) -> jax.Array:
    h = x
    for layer in params[:-1]:
        h = jax.nn.relu(h @ layer["W"] + layer["b"])
    return svm_loss(h @ params[-1]["W"] + params[-1]["b"], y)


def problem(n: int, *, near_kinks: bool = False) -> tuple:
    sizes = examples.mlp_sizes_for(n, dim=C.DIM, num_classes=C.NUM_CLASSES)
    params = examples.mlp_init(sizes, seed=0, dtype=jnp.float64)
    x, y = examples.classification_batch(
        C.BATCH, C.DIM, C.NUM_CLASSES, dtype=jnp.float64
    )
    if near_kinks:
        rng = np.random.default_rng(0)
        w = np.asarray(params[0]["W"])
        gap = 5e-8 * rng.choice([-1.0, 1.0], size=w.shape[1])
        params[0]["b"] = jnp.asarray(-(np.asarray(x[0]) @ w) + gap)
    return params, x, y


def time_check(call, repeats: int) -> tuple[C.Timing, float, object]:
    """First-call seconds, then ``repeats`` warm timings of ``call()``."""
    t0 = time.perf_counter()
    report = call()
    first = time.perf_counter() - t0
    timing, report = C.time_repeated(call, repeats)
    return timing, first, report


def engine_timings(params, x, y, repeats: int) -> tuple[C.Timing, C.Timing, int]:
    """Tracked vs plain batched evaluation of the first-layer weights."""
    point = check._prepare(relu_svm, params, (x, y), jnp.float64)
    info = point.checked[0]  # [0]['W']
    fn = point.leaf_fn(info.pos, info.shape)
    xf = point.x_flat(info)
    idx = np.arange(xf.size)
    per = engine.bytes_per_coordinate(fn, xf, point.dyn_params, point.dyn_args)
    chunk = engine.choose_chunk_size(
        per, len(idx), engine.default_memory_budget(), "cpu"
    )
    tracker = kinks.winner_tracker(fn, xf, point.dyn_params, point.dyn_args)
    deltas = np.stack([np.full(len(idx), 1e-5), np.full(len(idx), -1e-5)], 1)
    per_call = min(check.EVAL_CHUNKS_PER_CALL, -(-len(idx) // chunk))

    def plain():
        return engine.central_differences(
            fn, xf, idx, 1e-5, point.dyn_params, point.dyn_args, chunk_size=chunk
        )

    def tracked():
        return engine.evaluate(
            tracker, xf, idx, deltas, point.dyn_params, point.dyn_args,
            chunk_size=chunk, chunks_per_call=per_call,
        )  # fmt: skip

    plain(), tracked()
    t_plain, t_tracked = [], []
    for _ in range(repeats):
        t_plain.append(C.time_once(plain)[0])
        t_tracked.append(C.time_once(tracked)[0])
    return C.Timing(tuple(t_tracked)), C.Timing(tuple(t_plain)), tracker.num_sites


def bench_size(n: int, repeats: int) -> tuple[list, list, float]:
    """Rows of the table, lines of details, and the tracking overhead at ``n``."""
    rows: list = []
    details: list = []
    params, x, y = problem(n)
    n_params = examples.num_params(params)

    tracking = functools.partial(jaxcheck.check_grads, relu_svm, params, x, y)
    plain = functools.partial(tracking, track_kinks=False)

    t0 = time.perf_counter()
    r_on = tracking()
    first_on = time.perf_counter() - t0
    t0 = time.perf_counter()
    r_off = plain()
    first_off = time.perf_counter() - t0
    # Interleaved, so that changes of load hit both alike.
    on, off = [], []
    for _ in range(repeats):
        on.append(C.time_once(tracking)[0])
        off.append(C.time_once(plain)[0])
    t_on, t_off = C.Timing(tuple(on)), C.Timing(tuple(off))
    ratio = t_on.best / t_off.best
    e_on, e_off, num_sites = engine_timings(params, x, y, repeats)
    rows.append(
        [
            f"{n_params:,}",
            "relu+svm",
            C.fmt_s(t_off.best),
            C.fmt_s(t_on.best),
            C.fmt_ratio(t_on.best, t_off.best),
            C.fmt_ratio(t_on.median, t_off.median),
            C.fmt_ratio(e_on.best, e_off.best),
            f"{C.fmt_s(first_off)} / {C.fmt_s(first_on)}",
            f"{r_on.num_kink} / {num_sites}",
        ]
    )
    details.append(
        f"- {n_params:,} params, random init: tracked check "
        f"{r_on.num_checked:,} coords, passed={r_on.passed}, kinks crossed="
        f"{r_on.num_kink}; plain check passed={r_off.passed} "
        f"(wrong={r_off.num_wrong}). Warm times (s): tracking "
        f"{[round(t, 3) for t in t_on.times]}, plain "
        f"{[round(t, 3) for t in t_off.times]}; engine on [0]['W'] tracking "
        f"{[round(t, 3) for t in e_on.times]}, plain "
        f"{[round(t, 3) for t in e_off.times]}."
    )

    # Many kinks: the cost of re-checking them.
    params_k, x_k, y_k = problem(n, near_kinks=True)
    t_k, first_k, r_k = time_check(
        functools.partial(jaxcheck.check_grads, relu_svm, params_k, x_k, y_k), repeats
    )
    rows.append(
        [
            f"{n_params:,}",
            "relu+svm, near kinks",
            "-",
            C.fmt_s(t_k.best),
            C.fmt_ratio(t_k.best, t_off.best),
            C.fmt_ratio(t_k.median, t_off.median),
            "-",
            f"- / {C.fmt_s(first_k)}",
            f"{r_k.num_kink} / {num_sites}",
        ]
    )
    details.append(
        f"- {n_params:,} params, example 0's pre-activations within 1e-7 of "
        f"zero: passed={r_k.passed}, {r_k.num_kink:,} coordinates crossed a "
        f"kink ({sum(lf.num_kink_confirmed for lf in r_k.leaves):,} confirmed "
        f"by a re-check), wrong={r_k.num_wrong}; its ratio is against the "
        "plain check of the random-init network (same shapes)."
    )

    # Smooth: not instrumented.
    sizes = examples.mlp_sizes_for(n, dim=C.DIM, num_classes=C.NUM_CLASSES)
    p_s = examples.mlp_init(sizes, seed=0, dtype=jnp.float64)
    t_s, first_s, r_s = time_check(
        functools.partial(jaxcheck.check_grads, examples.mlp_loss, p_s, x, y), repeats
    )
    rows.append(
        [
            f"{n_params:,}",
            "tanh+softmax (smooth)",
            C.fmt_s(t_s.best),
            "-",
            "-",
            "-",
            "-",
            f"{C.fmt_s(first_s)} / -",
            f"0 / {len(r_s.kink_sites)}",
        ]
    )
    details.append(
        f"- smooth tanh MLP ({examples.__name__}.mlp_loss): kink sites "
        f"{len(r_s.kink_sites)}, no leaf tracked: "
        f"{not any(lf.tracked for lf in r_s.leaves)}, passed={r_s.passed}."
    )

    return rows, details, ratio


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="11000", help="parameter counts, e.g. 1e3,11000")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--wait-quiet", type=float, default=0.0, help="wait for idle CPUs")
    args = ap.parse_args(argv)

    rows, details = [], []
    worst_ratio = 0.0
    with jax.enable_x64(True):
        for n in C.parse_sizes(args.sizes):
            if args.wait_quiet:
                C.wait_for_quiet(args.wait_quiet)
            r, d, ratio = bench_size(n, args.repeats)
            rows += r
            details += d
            worst_ratio = max(worst_ratio, ratio)

    headers = [
        "params",
        "model",
        "check plain (s)",
        "check tracking (s)",
        "ratio (best)",
        "ratio (median)",
        "engine ratio",
        "first call plain / tracking (s)",
        "kinks crossed / sites",
    ]
    table = C.markdown_table(headers, rows)
    verdict = (
        f"winner-tracking overhead (best of {args.repeats}): {worst_ratio:.2f}x the "
        f"plain check (target < {TARGET}x): {'met' if worst_ratio < TARGET else 'NOT met'}"
    )
    text = "\n".join(
        [
            "# Winner tracking: overhead against the plain engine",
            "",
            f"{C.machine_info()}; {C.git_state()}; {C.load_note()}",
            "",
            table,
            "",
            verdict,
            "",
            "Details:",
            *details,
            "",
        ]
    )
    print(text)
    path = C.write_result("kinks.md", text)
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
