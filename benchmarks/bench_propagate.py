"""Perturbation propagation against the plain vmapped engine, the roofline and
``torch.autograd.gradcheck``.

Run from the repository root::

    python benchmarks/bench_propagate.py                  # MLP 784-100-10 and CNNs
    python benchmarks/bench_propagate.py --models cnn --repeats 5
    python benchmarks/bench_propagate.py --max-seconds 60  # extrapolate slow rows

For each model (float64, softmax loss), one process measures side by side:

* ``propagated``: ``jaxcheck.check_grads(f, params, *args, propagate=True)``
  (the default) over every coordinate: ``f(x ± h e_i)`` is evaluated by
  :mod:`jaxcheck.propagate` where its plan applies; other leaves stay dense.
* ``dense``: the same check with ``propagate=False``, the plain vmapped engine.
  Beyond ``--max-seconds`` (estimated from a pilot) it is extrapolated per leaf
  from an evenly spread subset of the coordinates (marked ``~``).
* ``roofline``: 2N evaluations of a plain ``jit(vmap(f))`` over whole perturbed
  parameter sets, materialized outside the timed region, at the best of a few
  chunk sizes: what any engine that evaluates ``f`` 2N times pays at least.
* ``torch``: ``torch.autograd.gradcheck(fast_mode=False)`` of the same loss
  written in torch float64 (checked equal to the JAX loss first), at the
  faster of 2 and 1 intra-op threads (``--torch-threads``, chosen by the pilot).
  Beyond ``--max-seconds`` (estimated from a pilot over the smallest leaves)
  it is extrapolated (marked ``~``). Skipped when torch is not installed.

*first* is the first call (tracing, compiling, running); the other columns are
the best of the warm calls. The numbers are compared too: the finite
differences of both paths on a sample of every leaf's coordinates (difference
in units of the round-off noise ``eps |f| / h``), the verdicts of the two full
checks leaf by leaf, and coordinate by coordinate against a second dense check
with another ``chunk_size`` (the verdict noise of the engine itself). Results
go to ``benchmarks/results/propagate.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
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
from jaxcheck.engine import leaf as engine_leaf  # noqa: E402

try:
    import torch
except ImportError:  # the torch row is skipped
    torch = None

STEP = 1e-5
EPS = float(np.finfo(np.float64).eps)
#: torch.autograd.gradcheck settings: its own default tolerances, which the
#: correct float64 gradients of these models meet with a wide margin.
TORCH_EPS, TORCH_ATOL, TORCH_RTOL = 1e-5, 1e-5, 1e-3
#: Torch intra-op threads tried first (the machine's 2 cores); 1 is tried too.
TORCH_THREADS = 2


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
# The same losses in torch (float64), for torch.autograd.gradcheck


def torch_mlp_loss(p: list, x: Any, y: Any) -> Any:
    """``examples.mlp_loss`` in torch: tanh hidden layers, mean cross-entropy."""
    h = x
    for layer in p[:-1]:
        h = torch.tanh(h @ layer["W"] + layer["b"])
    logits = h @ p[-1]["W"] + p[-1]["b"]
    return torch.nn.functional.cross_entropy(logits, y)


def _torch_cnn(act: str, pool: str) -> Callable:
    def loss(p: dict, x: Any, y: Any) -> Any:
        F = torch.nn.functional
        activation, pooling = getattr(torch, act), getattr(F, pool)
        # lax.conv_general_dilated defaults to NCHW / OIHW cross-correlation,
        # as conv2d; "SAME" for a 3x3 kernel is a padding of 1.
        h = F.conv2d(x, p["k1"], padding=1)
        h = pooling(activation(h + p["c1"][None, :, None, None]), 2)
        h = F.conv2d(h, p["k2"], padding=1)
        h = pooling(activation(h + p["c2"][None, :, None, None]), 2)
        logits = h.reshape(h.shape[0], -1) @ p["W"] + p["b"]
        return F.cross_entropy(logits, y)

    return loss


TORCH_LOSSES = {
    "mlp": torch_mlp_loss,
    "cnn": _torch_cnn("tanh", "avg_pool2d"),
    "cnn_relu": _torch_cnn("relu", "max_pool2d"),
}


def torch_gradcheck(
    f: Callable,
    torch_loss: Callable,
    params: Any,
    args: tuple,
    *,
    repeats: int,
    max_seconds: float,
    device: str = "cpu",
    threads: Sequence[int] = (TORCH_THREADS, 1),
    pilot_coords: int = 500,
) -> dict:
    """Times ``torch.autograd.gradcheck(fast_mode=False)`` of ``torch_loss``,
    the torch version of ``f(params, x, y)``, over every parameter.

    First checks that both losses agree to 1e-12 relative at ``params``
    (raises ``AssertionError`` if not). A pilot over the smallest leaves (at
    most ``pilot_coords`` coordinates, the others held constant) gives the cost
    per coordinate; when the full check is predicted to take more than
    ``max_seconds``, it is extrapolated from the pilot instead
    (``estimated=True``). On the CPU the pilot runs at each of ``threads``
    (torch intra-op threads) and the full check at the fastest. Returns the
    timings and notes.
    """
    leaves, treedef = jax.tree_util.tree_flatten(params)
    tensors = [
        torch.tensor(np.asarray(v), dtype=torch.float64, device=device)
        .requires_grad_()
        for v in leaves
    ]  # fmt: skip
    x = torch.tensor(np.asarray(args[0]), dtype=torch.float64, device=device)
    y = torch.tensor(np.asarray(args[1]), dtype=torch.long, device=device)

    def loss(*ts: Any) -> Any:
        return torch_loss(jax.tree_util.tree_unflatten(treedef, ts), x, y)

    ref = float(f(params, *args))
    got = float(loss(*tensors).detach())
    rel = abs(got - ref) / abs(ref)
    loss_line = (
        f"torch loss {got:.17g} vs JAX {ref:.17g}: relative difference {rel:.1e}"
        f" ({'ok' if rel <= 1e-12 else 'FAILED'}, bar 1e-12)"
    )
    print(f"    {loss_line}", flush=True)
    if not rel <= 1e-12:
        raise AssertionError(f"the torch loss is not the JAX loss: {loss_line}")

    def gradcheck(fn: Callable, inputs: tuple) -> bool:
        return torch.autograd.gradcheck(
            fn, inputs, eps=TORCH_EPS, atol=TORCH_ATOL, rtol=TORCH_RTOL,
            fast_mode=False, raise_exception=False,
        )  # fmt: skip

    # gradcheck's own first-call overhead must not inflate the pilot.
    warm = torch.ones(3, dtype=torch.float64, device=device, requires_grad=True)
    gradcheck(lambda t: (t * t).sum(), (warm,))

    n = sum(t.numel() for t in tensors)
    chosen: list[int] = []
    k = 0
    for i in sorted(range(len(tensors)), key=lambda i: tensors[i].numel()):
        if chosen and k + tensors[i].numel() > pilot_coords:
            break
        chosen.append(i)
        k += tensors[i].numel()
    held = [t.detach() for t in tensors]

    def loss_subset(*sub: Any) -> Any:
        full = list(held)
        for i, t in zip(chosen, sub, strict=True):
            full[i] = t
        return loss(*full)

    # Torch's intra-op (OpenMP) threads spin while they wait: on a shared 2-core
    # machine 2 threads were measured 100x slower than 1 when other processes
    # ran. The pilot runs at each thread count and the full check at the fastest.
    pilots = {}
    for th in threads if device == "cpu" else (torch.get_num_threads(),):
        torch.set_num_threads(th)
        pilots[th] = C.time_once(
            lambda: gradcheck(loss_subset, tuple(tensors[i] for i in chosen))
        )
    best_threads = min(pilots, key=lambda th: pilots[th][0])
    torch.set_num_threads(best_threads)
    pilot_s, pilot_ok = pilots[best_threads]
    estimate = pilot_s / k * n
    per_thread = ", ".join(
        f"{th} thread{'s' if th > 1 else ''} {t:.3f} s" for th, (t, _) in pilots.items()
    )
    out = {
        "loss_line": loss_line,
        "pilot_line": f"pilot: gradcheck over {k:,} of {n:,} coordinates "
        f"({len(chosen)} smallest leaves): {per_thread}; at {best_threads}: "
        f"~{C.fmt_s(estimate)} s for all (passed: {bool(pilot_ok)})",
        "threads": best_threads,
        "device": device,
    }
    print(f"    {out['pilot_line']}", flush=True)
    if estimate * max(1, repeats) <= max_seconds:
        reps = max(1, repeats)
    elif estimate <= max_seconds:
        reps = 1
    else:
        return out | {"best": estimate, "estimated": True, "passed": bool(pilot_ok)}
    timing, ok = C.time_repeated(lambda: gradcheck(loss, tuple(tensors)), reps)
    return out | {
        "first": timing.times[0], "best": timing.best, "times": timing.times,
        "estimated": False, "passed": bool(ok),
    }  # fmt: skip


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
    # A fair first call: nothing compiled yet, for either path.
    jax.clear_caches()
    propagate._PLANS.clear()
    propagate._program_cached.cache_clear()

    def run():
        return jaxcheck.check_grads(f, params, *args, propagate=enabled)

    first, report = C.time_once(run)
    times = (first,)
    if repeats > 0:
        timing, report = C.time_repeated(run, repeats)
        times = timing.times
    return {"first": first, "best": min(times), "times": times, "report": report}


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
            for v in engine_leaf._block_jit(fn, x, blk, h, dp, da)
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


def coordinate_verdicts(f, params, args, **kw) -> dict:
    """Every coordinate's verdict, analytic value and relative error in one full
    check, keyed by ``(leaf path, index)``.

    ``max_worst`` is the size of the largest leaf, so that ``LeafReport.worst``
    (every non-kink coordinate) and ``.kinks`` list all coordinates.
    """
    big = max(int(np.size(v)) for v in jax.tree_util.tree_leaves(params))
    report = jaxcheck.check_grads(f, params, *args, max_worst=big, **kw)
    coords = {
        (leaf.path, c.index): (c.verdict, c.analytic, c.rel_error)
        for leaf in report.leaves
        for c in leaf.worst + leaf.kinks
    }
    expected = sum(leaf.num_checked for leaf in report.leaves)
    if len(coords) != expected:
        raise RuntimeError(f"listed {len(coords):,} of {expected:,} coordinates")
    chunks = {leaf.path: leaf.chunk_size for leaf in report.leaves}
    return {"report": report, "coords": coords, "chunks": chunks}


def verdict_flips(a: dict, b: dict) -> dict:
    """The coordinates whose verdict differs between two runs."""
    flipped = [k for k in a if a[k][0] != b[k][0]]
    kinds: dict[str, int] = {}
    for k in flipped:
        kind = f"{a[k][0]} -> {b[k][0]}"
        kinds[kind] = kinds.get(kind, 0) + 1
    rels = [v[2] for k in flipped for v in (a[k], b[k]) if v[0] == "ok"]
    return {
        "compared": len(a),
        "flipped": len(flipped),
        "wrong": sum("wrong" in (a[k][0], b[k][0]) for k in flipped),
        "max_analytic": max((abs(a[k][1]) for k in flipped), default=None),
        "rel_range": (min(rels), max(rels)) if rels else None,
        "kinds": kinds,
        "where": sorted({k[0] for k in flipped}),
        "keys": flipped,
    }


def _count_verdicts(coords: dict) -> str:
    counts: dict[str, int] = {}
    for verdict, _, _ in coords.values():
        counts[verdict] = counts.get(verdict, 0) + 1
    return ", ".join(f"{v} {counts[v]:,}" for v in sorted(counts))


def flip_section(f, params, args, *, chunk: int, max_listed: int = 30) -> list[str]:
    """Markdown lines: the verdict flips between the propagated check, the
    dense check and the dense check at another ``chunk_size``."""
    print("  verdicts coordinate by coordinate ...", flush=True)
    prop = coordinate_verdicts(f, params, args, propagate=True)
    dense = coordinate_verdicts(f, params, args, propagate=False)
    sizes = {leaf.path: leaf.num_checked for leaf in dense["report"].leaves}
    if chunk == dense["chunks"][max(sizes, key=sizes.get)]:  # the largest leaf's
        chunk = 8 if chunk != 8 else 32
    dense2 = coordinate_verdicts(f, params, args, propagate=False, chunk_size=chunk)
    engine_chunks = "/".join(str(c) for c in sorted(set(dense["chunks"].values())))
    runs = {
        "propagated": prop,
        f"dense, chunk {engine_chunks} (engine's choice)": dense,
        f"dense, chunk_size={chunk}": dense2,
    }
    names = list(runs)
    pairs = [(names[0], names[1]), (names[1], names[2]), (names[0], names[2])]
    lines = ["Verdicts of three full checks, coordinate by coordinate:", ""]
    lines += [f"* {name}: {_count_verdicts(r['coords'])}" for name, r in runs.items()]
    lines.append("")
    rows, flips = [], {}
    for a, b in pairs:
        fl = verdict_flips(runs[a]["coords"], runs[b]["coords"])
        flips[(a, b)] = fl
        rel = fl["rel_range"]
        rows.append([
            f"{a} vs {b}", f"{fl['compared']:,}", f"{fl['flipped']:,}",
            str(fl["wrong"]),
            "-" if fl["max_analytic"] is None else f"{fl['max_analytic']:.1e}",
            "-" if rel is None else f"{rel[0]:.1e} .. {rel[1]:.1e}",
            ", ".join(f"{k}: {v}" for k, v in sorted(fl["kinds"].items())) or "-",
            ", ".join(fl["where"]) or "-",
        ])  # fmt: skip
    lines.append(
        C.markdown_table(
            [
                "runs",
                "coordinates",
                "verdict differs",
                "of which `wrong`",
                "max abs(analytic) flipped",
                "rel error where ok",
                "flips",
                "leaves",
            ],
            rows,
        )  # fmt: skip
    )
    flipped = sorted({k for fl in flips.values() for k in fl["keys"]})
    if flipped:
        lines += ["", "The flipped coordinates (verdict, relative error):", ""]
        detail = []
        for k in flipped[:max_listed]:
            cells = [f"{k[0]}[{', '.join(map(str, k[1]))}]",
                     f"{prop['coords'][k][1]:.2e}"]  # fmt: skip
            cells += [
                f"{r['coords'][k][0]} ({r['coords'][k][2]:.1e})" for r in runs.values()
            ]
            detail.append(cells)
        lines.append(C.markdown_table(["coordinate", "analytic", *names], detail))
        if len(flipped) > max_listed:
            lines.append(f"({len(flipped) - max_listed} more not listed)")
    lines.append("")
    engine_pair = flips[(names[1], names[2])]["flipped"]
    prop_pair = max(flips[(names[0], names[1])]["flipped"],
                    flips[(names[0], names[2])]["flipped"])  # fmt: skip
    wrong = sum(fl["wrong"] for fl in flips.values())
    max_a = max((fl["max_analytic"] or 0.0 for fl in flips.values()), default=0.0)
    med_a = float(np.median([abs(v[1]) for v in prop["coords"].values()]))
    if wrong:
        lines.append(f"{wrong} flip(s) involve `wrong`: no conclusion drawn.")
    elif prop_pair == 0 and engine_pair == 0:
        lines.append("All three checks give every coordinate the same verdict.")
    elif engine_pair > 0 and prop_pair <= 2 * engine_pair:
        lines.append(
            f"Conclusion: the propagated check differs from the dense ones in at most "
            f"{prop_pair} coordinate(s), the dense check from itself in {engine_pair} "
            "when only `chunk_size` changes (the same order), and no flip involves "
            "`wrong`: the differences are the engine's own verdict noise on "
            f"coordinates with tiny gradients (abs(analytic) <= {max_a:.1e}; "
            f"median over all coordinates {med_a:.1e}), "
            "not an error of propagation."
        )
    else:
        lines.append(
            f"The propagated check differs from the dense one in {prop_pair} "
            f"coordinate(s), the dense check from itself in {engine_pair}: more "
            "than the engine's own verdict noise explains; no conclusion drawn."
        )
    return lines


# --------------------------------------------------------------------------------


def run_problem(name: str, args_ns: argparse.Namespace) -> str:
    title, f, params, args = PROBLEMS[name]()
    n = examples.num_params(params)
    skip = set(args_ns.skip.split(",")) if args_ns.skip else set()
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

    torch_row, torch_notes = None, []
    if "torch" in skip:
        torch_notes.append("torch.autograd.gradcheck: skipped (--skip torch).")
    elif torch is None:
        torch_notes.append(
            "torch.autograd.gradcheck: torch is not importable, row skipped."
        )
        print(f"  {torch_notes[-1]}", flush=True)
    else:
        print("  torch.autograd.gradcheck ...", flush=True)
        threads = [int(t) for t in args_ns.torch_threads.split(",")]
        tg = torch_gradcheck(
            f, TORCH_LOSSES[name], params, args, repeats=args_ns.repeats,
            max_seconds=args_ns.max_seconds, threads=threads,
        )  # fmt: skip
        t_est = tg["estimated"]
        print(f"    {'~' if t_est else ''}{tg['best']:.2f} s", flush=True)
        torch_row = [
            f"torch.autograd.gradcheck (fast_mode=False, {tg['threads']} thread(s))",
            C.fmt_s(tg["first"]) if "first" in tg else "-",
            C.fmt_s(tg["best"], estimated=t_est),
            C.fmt_ratio(tg["best"], roof["best"], estimated=t_est),
            C.fmt_ratio(tg["best"], prop["best"], estimated=t_est),
        ]
        torch_notes += [
            f"torch: {tg['loss_line']}.",
            f"torch {tg['pilot_line']}.",
            f"torch gradcheck (eps={TORCH_EPS:g}, atol={TORCH_ATOL:g}, "
            f"rtol={TORCH_RTOL:g}) passed: {tg['passed']}"
            + (" (pilot; the full check was extrapolated)" if t_est else "")
            + ".",
        ]

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
    if torch_row:
        rows.append(torch_row)
    lines.append(
        C.markdown_table(
            ["method", "first call (s)", "warm (s)", "x roofline", "x propagated"], rows
        )
    )
    if torch_notes:
        lines += [""] + torch_notes
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
                "max abs(Δf) / abs(f)",
                "max abs(Δ fd) / (eps abs(f) / h)",
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
    if "flips" in skip:
        pass
    elif est:
        lines += ["(verdict flips not compared: the dense check was extrapolated)", ""]
    else:
        lines += flip_section(f, params, args, chunk=args_ns.flip_chunk) + [""]
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
    ap.add_argument(
        "--flip-chunk", type=int, default=32,
        help="chunk_size of the second dense check (verdict noise baseline)",
    )  # fmt: skip
    ap.add_argument(
        "--torch-threads", default=f"{TORCH_THREADS},1",
        help="torch intra-op thread counts the pilot tries (the fastest is used)",
    )  # fmt: skip
    ap.add_argument("--skip", default="", help="comma-separated: torch, flips")
    ap.add_argument("--out", default="propagate.md")
    a = ap.parse_args()
    t0 = time.perf_counter()
    with jax.enable_x64(True):
        parts = [
            "# Perturbation propagation vs the plain engine vs the roofline vs torch",
            "",
            C.machine_info() + "; " + C.load_note() + "; " + C.git_state(),
            "",
        ]
        for name in a.models.split(","):
            parts.append(run_problem(name.strip(), a))
    parts.append(f"\n(total {time.perf_counter() - t0:.0f} s)")
    path = C.write_result(a.out, "\n".join(parts) + "\n")
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
