"""Feeding rows to a check's program: calls, padding, processes, Ctrl-C.

A check asks for *streams* of rows: the dense rows ``(i, d_0, d_1)`` (any
coordinate of any leaf) and the rows of each propagated block ``(i, h)`` (in
the main pass, and in follow-ups for rows ``(x + d, x - d)``). :func:`run`
cuts every stream into calls of the program's capacity (all streams advance
together, one call at a time), pads the last call, and returns every row's
results in order. In a multi-process cluster each process runs an equal share
of every stream and the results are exchanged bit for bit. Ctrl-C between
calls raises :class:`jaxcheck.engine.Interrupted` carrying the rows finished
so far.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from . import cluster
from .program import Outputs, Program

#: Every row's results, in order: the same fields as one call's outputs
#: (:class:`jaxcheck.engine.program.Outputs`), over all calls.
Results = Outputs


def _pad(block: np.ndarray, rows: int) -> np.ndarray:
    """``block`` cut or padded (with its first row, or zeros) to ``rows`` rows."""
    if len(block) >= rows:
        return block[:rows]
    fill = block[:1] if len(block) else np.zeros((1, *block.shape[1:]), block.dtype)
    return np.concatenate([block, np.repeat(fill, rows - len(block), axis=0)])


def _concat(parts: list, empty: Any) -> Any:
    return np.concatenate(parts) if parts else empty


def _run_local(
    program: Program,
    fixed: tuple,
    dense: tuple[np.ndarray, np.ndarray],
    prop: Sequence[tuple[np.ndarray, np.ndarray]],
    main: bool,
    on_progress: Callable[[int], None] | None,
) -> Results:
    layout = program.layout
    cap_d = layout.rows
    caps = [b.chunk * b.chunks for b in layout.prop]
    d_idx, d_delta = dense
    n_calls = max(
        [-(-len(d_idx) // cap_d)]
        + [-(-len(i) // c) for (i, _), c in zip(prop, caps, strict=True)]
        + [1 if main else 0]
    )
    idx_dtype = np.int32 if sum(program.sizes) < 2**31 else np.int64
    value, grads = float("nan"), None
    parts: dict[str, list] = {"v": [], "w": [], "c": []}
    p_parts: list[dict[str, list]] = [{"v": [], "w": [], "c": []} for _ in prop]
    try:
        for call in range(n_calls):
            lo, hi = call * cap_d, min(len(d_idx), (call + 1) * cap_d)
            n_d = max(0, hi - lo)
            blk_i = _pad(d_idx[lo:hi].astype(idx_dtype), cap_d)
            blk_d = _pad(d_delta[lo:hi].astype(program.dtype), cap_d)
            p_i, p_s, p_n, p_rows = [], [], [], []
            for (pi, ps), cap, b in zip(prop, caps, layout.prop, strict=True):
                plo, phi = call * cap, min(len(pi), (call + 1) * cap)
                p_rows.append(max(0, phi - plo))
                p_i.append(
                    _pad(pi[plo:phi].astype(idx_dtype), cap).reshape(b.chunks, b.chunk)
                )
                p_s.append(
                    _pad(ps[plo:phi].astype(program.dtype), cap).reshape(
                        (b.chunks, b.chunk, *ps.shape[1:])
                    )
                )
                p_n.append(-(-p_rows[-1] // b.chunk))
            out = program.run(
                *fixed, main=main and call == 0,
                d_idx=blk_i.reshape(layout.chunks, layout.chunk),
                d_delta=blk_d.reshape(layout.chunks, layout.chunk, 2),
                d_n=-(-n_d // layout.chunk), p_idx=p_i, p_step=p_s, p_n=p_n,
            )  # fmt: skip
            if main and call == 0:
                value, grads = out.value, out.grads
            parts["v"].append(out.dense[:n_d])
            if out.dense_words is not None:
                parts["w"].append(out.dense_words[:n_d])
                parts["c"].append(out.dense_changed[:n_d])
            for k, (v, w, c) in enumerate(out.prop):
                p_parts[k]["v"].append(v[: p_rows[k]])
                if w is not None:
                    p_parts[k]["w"].append(w[: p_rows[k]])
                    p_parts[k]["c"].append(c[: p_rows[k]])
            if on_progress is not None:
                on_progress(n_d + sum(p_rows))
    except KeyboardInterrupt:
        done = _collect(value, grads, parts, p_parts, len(program.sites))
        raise cluster.Interrupted((done,)) from None
    return _collect(value, grads, parts, p_parts, len(program.sites))


def _collect(value, grads, parts, p_parts, num_sites: int) -> Results:
    empty2 = np.zeros((0, 2))
    words = _concat(parts["w"], None) if parts["w"] else None
    changed = _concat(parts["c"], None) if parts["c"] else None
    prop = []
    for p in p_parts:
        prop.append(
            (
                _concat(p["v"], empty2),
                _concat(p["w"], None) if p["w"] else None,
                _concat(p["c"], None) if p["c"] else None,
            )
        )
    return Results(value, grads, _concat(parts["v"], empty2), words, changed, prop)


def run(
    program: Program,
    fixed: tuple,
    dense: tuple[np.ndarray, np.ndarray],
    prop: Sequence[tuple[np.ndarray, np.ndarray]] = (),
    *,
    main: bool = False,
    on_progress: Callable[[int], None] | None = None,
) -> Results:
    """Runs the streams through ``program`` (see the module docstring).

    Args:
      program: the check's program.
      fixed: ``(consts_p, consts_g, dyn)``, the same for every call.
      dense: ``(idx (R,), delta (R, 2))`` dense rows.
      prop: per propagated block of the layout, ``(idx (R_b,), step (R_b,))``
        (with tracking, ``delta (R_b, 2)``); empty streams allowed.
      main: also compute ``f`` and the analytic gradient (first call).
      on_progress: called with the number of rows each call finished.

    Returns:
      :class:`Results`.

    Raises:
      jaxcheck.engine.Interrupted: on Ctrl-C, with the finished rows
        (``.done[0]``, a :class:`Results` cut to them) on a single process.
    """
    if not prop:
        prop = [
            (np.zeros(0, np.int64), np.zeros((0, 2) if b.tracked else 0))
            for b in program.layout.prop
        ]
    procs = cluster.num_processes()
    if procs == 1:
        return _run_local(program, fixed, dense, prop, main, on_progress)
    return _run_shared(program, fixed, dense, prop, main, on_progress, procs)


def _share(arrays: Sequence[np.ndarray], procs: int) -> tuple[list, int, int]:
    n = len(arrays[0])
    per = -(-n // procs)
    me = jax.process_index()
    rows = np.arange(me * per, (me + 1) * per)
    rows = np.where(rows < n, rows, 0)
    if n == 0:
        return [a[:0] for a in arrays], 0, 0
    return [a[rows] for a in arrays], per, n


def _run_shared(program, fixed, dense, prop, main, on_progress, procs) -> Results:
    d_local, d_per, d_n = _share(dense, procs)
    p_local = [_share(p, procs) for p in prop]

    def progress(k: int) -> None:
        if on_progress is not None:
            on_progress(k * procs)

    try:
        local = _run_local(
            program, fixed, tuple(d_local), [tuple(p[0]) for p in p_local], main,
            progress,
        )  # fmt: skip
    except cluster.Interrupted:
        # One process's finished rows are not a prefix of all rows.
        raise KeyboardInterrupt from None
    dense_parts = cluster._gather_rows(
        [local.dense, local.dense_words, local.dense_changed], d_per, d_n
    )
    prop_out = []
    for (_, per, n), (v, w, c) in zip(p_local, local.prop, strict=True):
        prop_out.append(tuple(cluster._gather_rows([v, w, c], per, n)))
    value, grads = local.value, local.grads
    if main:
        shared = cluster.from_process_zero([np.float64(value), *(grads or [])])
        value = float(shared[0])
        grads = list(shared[1:]) if grads is not None else None
    return Results(value, grads, *dense_parts, prop_out)
