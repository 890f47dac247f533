"""Perturbation propagation against the plain vmapped engine and the roofline.

Run from the repository root::

    python benchmarks/bench_propagate.py                  # MLP 784-100-10 and CNNs
    python benchmarks/bench_propagate.py --models cnn --repeats 5
    python benchmarks/bench_propagate.py --max-seconds 60  # extrapolate the dense check

For each model (float64, softmax loss), one process measures side by side:

* ``propagated``: ``jaxcheck.check_grads(f, params, *args)`` over every
  coordinate, with ``f(x ± h e_i)`` evaluated by :mod:`jaxcheck.propagate`
  (where it applies; other leaves stay dense; leaves whose kinks are tracked
  go through :func:`jaxcheck.propagate.make_propagated_evaluator`). Until the
  engine has a ``propagate=`` keyword, the script routes the engine's block
  functions and chunk-size estimate through :mod:`jaxcheck.propagate` itself.
* ``dense``: the same check with the plain vmapped engine. Beyond
  ``--max-seconds`` (estimated from a pilot) it is extrapolated per leaf from
  an evenly spread subset of the coordinates (marked ``~``).
* ``roofline``: 2N evaluations of a plain ``jit(vmap(f))`` over whole perturbed
  parameter sets, materialized outside the timed region, at the best of a few
  chunk sizes: what any engine that evaluates ``f`` 2N times pays at least.

*first* is the first call (tracing, compiling, running); the other columns are
the best of the warm calls. The numbers are compared too: the finite
differences of both paths on a sample of every leaf's coordinates (difference
in units of the round-off noise ``eps |f| / h``), and the verdicts of the two
full checks, leaf by leaf. Results go to ``benchmarks/results/propagate.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.flatten_util import ravel_pytree

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import _common as C  # noqa: E402

import jaxcheck  # noqa: E402
from jaxcheck import engine, examples, propagate  # noqa: E402

STEP = 1e-5
EPS = float(np.finfo(np.float64).eps)


# --------------------------------------------------------------------------------
# Models


def mlp_problem() -> tuple[str, Callable, Any, tuple]:
    """The issue's model: 784-100-10 tanh MLP, batch 16."""
    params = examples.mlp_init((784, 100, 10), dtype=jnp.float64)
    x, y = examples.classification_batch(16, 784, 10, dtype=jnp.float64)
    return "MLP 784-100-10, batch 16", examples.mlp_loss, params, (x, y)


def _avg_pool(h: jax.Array) -> jax.Array:
    return lax.reduce_window(h, 0.0, lax.add, (1, 1, 2, 2), (1, 1, 2, 2), "VALID") / 4


def _max_pool(h: jax.Array) -> jax.Array:
    return lax.reduce_window(h, -jnp.inf, lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")


def _cnn(act: Callable, pool: Callable) -> Callable:
    def loss(p: dict, x: jax.Array, y: jax.Array) -> jax.Array:
        h = lax.conv_general_dilated(x, p["k1"], (1, 1), "SAME")
        h = pool(act(h + p["c1"][None, :, None, None]))
        h = lax.conv_general_dilated(h, p["k2"], (1, 1), "SAME")
        h = pool(act(h + p["c2"][None, :, None, None]))
        logits = h.reshape(h.shape[0], -1) @ p["W"] + p["b"]
        return examples.softmax_loss(logits, y)

    return loss


#: Two 3x3 convolutions with tanh and 2x2 average pooling, then dense (smooth).
cnn_loss = _cnn(jnp.tanh, _avg_pool)
#: The same with ReLU and max pooling: kinks, so check_grads tracks winners.
cnn_relu_loss = _cnn(jax.nn.relu, _max_pool)


def cnn_problem(loss: Callable = cnn_loss, kind: str = "tanh, average pooling"):
    """A small CNN: 1x16x16 inputs, 8 and 16 channels, batch 8 (3,818 params)."""
    rng = np.random.default_rng(0)
    params = {
        "k1": jnp.asarray(rng.normal(size=(8, 1, 3, 3)) / 3),
        "c1": jnp.asarray(rng.normal(size=(8,)) * 0.1),
        "k2": jnp.asarray(rng.normal(size=(16, 8, 3, 3)) / np.sqrt(72)),
        "c2": jnp.asarray(rng.normal(size=(16,)) * 0.1),
        "W": jnp.asarray(rng.normal(size=(256, 10)) / 16),
        "b": jnp.asarray(rng.normal(size=(10,)) * 0.1),
    }
    x = jnp.asarray(rng.normal(size=(8, 1, 16, 16)))
    y = jnp.asarray(rng.integers(0, 10, size=(8,)), jnp.int32)
    return f"CNN 1x16x16 -> 8 -> 16 ch ({kind}), batch 8", loss, params, (x, y)


PROBLEMS = {
    "mlp": mlp_problem,
    "cnn": cnn_problem,
    "cnn_relu": lambda: cnn_problem(cnn_relu_loss, "ReLU, max pooling: kinks tracked"),
}


# --------------------------------------------------------------------------------
# Routing the engine through propagation (until check_grads has the keyword)


def _has_keyword() -> bool:
    return "propagate" in inspect.signature(jaxcheck.check_grads).parameters


@contextlib.contextmanager
def propagation(enabled: bool, used: list) -> Iterator[dict]:
    """Keyword arguments for ``check_grads`` that turn propagation on or off."""
    if _has_keyword():
        yield {"propagate": enabled}
        return
    if not enabled:
        yield {}
        return
    dense_block, dense_bytes = engine._block_jit, engine.bytes_per_coordinate
    dense_eval = engine._eval_block_jit

    def evaluate(fn, x_flat, idx, deltas, dyn_params, dyn_args):
        ev = propagate.make_propagated_evaluator(
            fn, x_flat, dyn_params, dyn_args, num_coords=x_flat.size
        )
        if ev is None:
            return dense_eval(fn, x_flat, idx, deltas, dyn_params, dyn_args)
        used.append(("tracked", tuple(getattr(fn, "fn", fn).leaf_shape)))
        return ev(x_flat, idx, deltas, dyn_params, dyn_args)

    def block(fn, x_flat, idx, step, dyn_params, dyn_args):
        blk = propagate.make_propagated_block(
            fn, x_flat, dyn_params, dyn_args, num_coords=x_flat.size
        )
        if blk is None:
            return dense_block(fn, x_flat, idx, step, dyn_params, dyn_args)
        used.append(tuple(fn.leaf_shape))
        return blk(x_flat, idx, step, dyn_params, dyn_args)

    def nbytes(fn, x_flat, dyn_params, dyn_args):
        blk = propagate.make_propagated_block(
            fn, x_flat, dyn_params, dyn_args, num_coords=x_flat.size
        )
        if blk is None:
            return dense_bytes(fn, x_flat, dyn_params, dyn_args)
        return propagate.bytes_per_coordinate(fn, x_flat, dyn_params, dyn_args)

    engine._block_jit, engine.bytes_per_coordinate = block, nbytes
    engine._eval_block_jit = evaluate
    try:
        yield {}
    finally:
        engine._block_jit, engine.bytes_per_coordinate = dense_block, dense_bytes
        engine._eval_block_jit = dense_eval


def _leaf_fns(f: Callable, params: Any, args: tuple) -> Iterator[tuple]:
    leaves, td = jax.tree_util.tree_flatten(params)
    a_leaves, atd = jax.tree_util.tree_flatten(args)
    paths = [
        jax.tree_util.keystr(p)
        for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]
    ]
    for pos, leaf in enumerate(leaves):
        fn = engine.LeafFunction(
            f, td, len(leaves), {}, atd, len(a_leaves), {}, pos, leaf.shape
        )
        yield paths[pos], fn, leaf.reshape(-1), leaves, a_leaves


# --------------------------------------------------------------------------------
# Measurements


def time_check(f, params, args, *, enabled: bool, repeats: int) -> dict:
    used: list = []
    # A fair first call: nothing compiled yet, for either path.
    jax.clear_caches()
    propagate._PLANS.clear()
    propagate._program_cached.cache_clear()
    with propagation(enabled, used) as kw:
        first, report = C.time_once(
            lambda: jaxcheck.check_grads(f, params, *args, **kw)
        )
        times = (first,)
        if repeats > 0:
            timing, report = C.time_repeated(
                lambda: jaxcheck.check_grads(f, params, *args, **kw), repeats
            )
            times = timing.times
    return {"first": first, "best": min(times), "times": times,
            "report": report, "used": sorted(set(used), key=str)}  # fmt: skip


def dense_estimate(f, params, args, *, sample: int) -> dict:
    """The dense check's finite differences, timed on a subset of every leaf
    and extrapolated; plus the check's other work, from a check of 1 coordinate
    per leaf."""
    total = 0.0
    for _path, fn, x, dp, da in _leaf_fns(f, params, args):
        n = x.size
        m = min(n, sample)
        idx = np.linspace(0, n - 1, m).astype(np.int64)
        per = engine.bytes_per_coordinate(fn, x, dp, da)
        chunk = engine.choose_chunk_size(per, n, engine.default_memory_budget(), "cpu")
        run = lambda idx=idx, fn=fn, x=x, dp=dp, da=da, chunk=chunk: (  # noqa: E731
            engine.central_differences(fn, x, idx, STEP, dp, da, chunk_size=chunk)
        )
        run()  # compile
        t, _ = C.time_once(run)
        total += t * n / m
    overhead, _ = C.time_once(lambda: jaxcheck.check_grads(f, params, *args, coords=1))
    return {"best": total + overhead, "estimated": True}


def roofline(f, params, args, *, chunks=(8, 32, 128, 512), mem_mb=512) -> dict:
    flat, unravel = ravel_pytree(params)
    n = flat.size
    vloss = jax.jit(jax.vmap(lambda fl: f(unravel(fl), *args)))
    best = None
    for chunk in chunks:
        if chunk * n * 8 > mem_mb * 2**20:
            continue
        idx = np.linspace(0, n - 1, chunk).astype(np.int32)
        flats = C.block(flat[None, :] + STEP * jax.nn.one_hot(idx, n, dtype=flat.dtype))
        C.block(vloss(flats))
        calls = -(-2 * n // chunk)
        per_call, _ = C.time_per_call(
            lambda fl=flats: vloss(fl), max_calls=calls, min_seconds=0.3, repeats=3
        )
        per_eval = per_call / chunk
        if best is None or per_eval < best[1]:
            best = (chunk, per_eval)
        del flats
    return {"best": 2 * n * best[1], "chunk": best[0]}


def compare_numbers(f, params, args, *, sample: int) -> list[dict]:
    """Finite differences of both paths on a sample of each leaf."""
    rows = []
    for path, fn, x, dp, da in _leaf_fns(f, params, args):
        n = x.size
        m = min(n, sample)
        idx = np.linspace(0, n - 1, m).astype(np.int32)
        chunk = 64
        pad = (-m) % chunk
        blk = jnp.asarray(
            np.concatenate([idx, np.full(pad, idx[0])]).reshape(-1, chunk)
        )
        h = jnp.asarray(STEP)
        fpd, fmd = (
            np.asarray(v).reshape(-1)[:m]
            for v in engine._block_jit(fn, x, blk, h, dp, da)
        )
        fpp, fmp = (
            np.asarray(v).reshape(-1)[:m]
            for v in propagate._propagated_block_jit(fn, x, blk, h, dp, da)
        )
        xs = np.asarray(x)[idx]
        hr = (xs + STEP) - (xs - STEP)
        nd, np_ = (fpd - fmd) / hr, (fpp - fmp) / hr
        scale = max(np.abs(fpd).max(), np.abs(fmd).max())
        noise = EPS * scale / STEP
        rel = np.abs(nd - np_) / np.maximum(np.maximum(np.abs(nd), np.abs(np_)), 1e-300)
        rows.append({
            "path": path, "n": n, "sample": m,
            "f_max_rel": float(max(np.abs(fpp - fpd).max(), np.abs(fmp - fmd).max()) / scale),
            "fd_in_noise": float(np.abs(nd - np_).max() / noise),
            "fd_median_rel": float(np.median(rel)),
            "propagated": propagate.make_propagated_block(fn, x, dp, da) is not None,
        })  # fmt: skip
    return rows


def verdicts(report: Any) -> list[tuple]:
    return [
        (leaf.path, leaf.num_ok, leaf.num_wrong, leaf.num_untestable,
         getattr(leaf, "num_kink", 0))
        for leaf in report.leaves
    ]  # fmt: skip


# --------------------------------------------------------------------------------


def run_problem(name: str, args_ns: argparse.Namespace) -> str:
    title, f, params, args = PROBLEMS[name]()
    n = examples.num_params(params)
    print(f"\n## {title}: {n:,} parameters", flush=True)
    if args_ns.wait_quiet:
        C.wait_for_quiet(args_ns.wait_quiet)
    lines = [f"## {title}: {n:,} parameters, float64", ""]

    print("  plans ...", flush=True)
    plans = []
    for path, fn, x, dp, da in _leaf_fns(f, params, args):
        plan = propagate.propagation_plan(fn, x, dp, da, num_coords=x.size)
        plans.append(f"{path}: {plan}")

    print("  propagated check ...", flush=True)
    prop = time_check(f, params, args, enabled=True, repeats=args_ns.repeats)
    print(f"    first {prop['first']:.2f} s, warm {prop['best']:.2f} s", flush=True)

    print("  roofline ...", flush=True)
    roof = roofline(f, params, args)
    print(f"    {roof['best']:.2f} s (chunk {roof['chunk']})", flush=True)

    print("  dense check ...", flush=True)
    pilot = dense_estimate(f, params, args, sample=256)
    if pilot["best"] * (1 + args_ns.repeats) <= args_ns.max_seconds:
        dense = time_check(f, params, args, enabled=False, repeats=args_ns.repeats)
        dense["estimated"] = False
    elif pilot["best"] <= args_ns.max_seconds:
        dense = time_check(f, params, args, enabled=False, repeats=0)
        dense["estimated"] = False
    else:
        dense = dense_estimate(f, params, args, sample=2048)
    est = dense.get("estimated", False)
    print(f"    {'~' if est else ''}{dense['best']:.2f} s", flush=True)

    print("  numbers ...", flush=True)
    numbers = compare_numbers(f, params, args, sample=args_ns.sample)

    rows = [
        ["propagated check", C.fmt_s(prop["first"]), C.fmt_s(prop["best"]),
         C.fmt_ratio(prop["best"], roof["best"]), "1"],
        ["dense check (plain vmapped engine)",
         C.fmt_s(dense.get("first")) if "first" in dense else "-",
         C.fmt_s(dense["best"], estimated=est),
         C.fmt_ratio(dense["best"], roof["best"], estimated=est),
         C.fmt_ratio(dense["best"], prop["best"], estimated=est)],
        [f"roofline: 2N vmapped forward passes (chunk {roof['chunk']})", "-",
         C.fmt_s(roof["best"]), "1", C.fmt_ratio(roof["best"], prop["best"])],
    ]  # fmt: skip
    lines.append(
        C.markdown_table(
            ["method", "first call (s)", "warm (s)", "x roofline", "x propagated"], rows
        )
    )
    lines += ["", "Leaves propagated (plans):", "", "```"]
    lines += plans
    lines += ["```", ""]
    num_rows = [
        [r["path"], f"{r['n']:,}", f"{r['sample']:,}", "yes" if r["propagated"] else "no",
         f"{r['f_max_rel']:.1e}", f"{r['fd_in_noise']:.2f}", f"{r['fd_median_rel']:.1e}"]
        for r in numbers
    ]  # fmt: skip
    lines.append(
        C.markdown_table(
            [
                "leaf",
                "size",
                "compared",
                "propagated",
                "max |Δf|/|f|",
                "max |Δ fd| / (eps|f|/h)",
                "median rel Δ fd",
            ],
            num_rows,
        )  # fmt: skip
    )
    if "report" in dense:
        same = verdicts(dense["report"]) == verdicts(prop["report"])
        lines += [
            "",
            f"Verdicts (ok, wrong, untestable, kink per leaf) identical: {same}",
        ]
        if not same:
            lines += [f"  dense:      {verdicts(dense['report'])}",
                      f"  propagated: {verdicts(prop['report'])}"]  # fmt: skip
    lines += [
        f"propagated report: passed={prop['report'].passed}, "
        f"{verdicts(prop['report'])}",
        "",
    ]
    if not _has_keyword():
        lines.append(f"(leaves routed through propagation: {prop['used']})")
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="mlp,cnn,cnn_relu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-seconds", type=float, default=300.0)
    ap.add_argument("--sample", type=int, default=2048)
    ap.add_argument("--wait-quiet", type=float, default=0.0)
    ap.add_argument("--out", default="propagate.md")
    a = ap.parse_args()
    t0 = time.perf_counter()
    with jax.enable_x64(True):
        parts = [
            "# Perturbation propagation vs the plain engine vs the roofline",
            "",
            C.machine_info() + "; " + C.load_note(),
            "",
        ]
        for name in a.models.split(","):
            parts.append(run_problem(name.strip(), a))
    parts.append(f"\n(total {time.perf_counter() - t0:.0f} s)")
    path = C.write_result(a.out, "\n".join(parts) + "\n")
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
