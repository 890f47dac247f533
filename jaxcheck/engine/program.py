"""One compiled program per check.

A check evaluates ``f`` at its point (the value and ``jax.grad``) and at many
perturbed points ``x ± d e_i``. :class:`Program` does all of it in one XLA
program, built from the jaxprs of a :class:`jaxcheck.point.Point`:

* the value and the analytic gradient (``value_and_grad`` of ``f``), computed
  when the call asks for them (a runtime flag, so follow-up calls skip them);
* *dense rows*: ``f`` at ``theta + d_0 e_i`` and ``theta + d_1 e_i`` for a
  block of rows ``(i, d_0, d_1)``, ``i`` an index into ``theta`` (the checked
  leaves flattened and concatenated), so one block serves every leaf, the main
  pass of small leaves and every follow-up (retries, kinks, noise) alike.
  Rows are batched with :func:`jax.vmap` in chunks that run one after another
  with :func:`jax.lax.map`. When ``f`` has kink-capable primitives the rows
  also return the decision words of every site (:mod:`jaxcheck.kinks`) and how
  many decisions differ between the row's two points;
* *propagated blocks*: for a large leaf whose linear consumers make it pay
  (:mod:`jaxcheck.propagate`), ``f(x ± h e_i)`` of that leaf's coordinates,
  computed by perturbation propagation; each is skipped at run time when its
  call carries no rows for it.

Constants of the jaxprs are runtime arguments, so a program is reused by any
function with the same structure (:attr:`jaxcheck.point.Point.key`), and a
changed closed-over array is always seen. Programs are kept by
:mod:`jaxcheck.engine.cache`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .. import kinks
from .. import propagate as _propagate
from ..point import any_equation
from . import cache as _cache
from . import cluster


@dataclasses.dataclass(frozen=True)
class PropBlock:
    """A leaf evaluated by perturbation propagation in the main pass.

    Attributes:
      leaf: index of the leaf among the point's checked leaves.
      chunk: coordinates per vmapped batch.
      chunks: chunks per call.
      tracked: whether its rows return decision words.
    """

    leaf: int
    chunk: int
    chunks: int
    tracked: bool


@dataclasses.dataclass(frozen=True)
class Layout:
    """The static shape of a check program.

    Attributes:
      grad: whether the program computes ``f`` and ``jax.grad`` at the point.
      tracked: whether dense rows return decision words.
      chunk: dense rows per vmapped batch.
      chunks: dense chunks per call.
      prop: the propagated blocks.
      options: XLA compiler options, as sorted ``(name, value)`` pairs.
    """

    grad: bool
    tracked: bool
    chunk: int
    chunks: int
    prop: tuple[PropBlock, ...] = ()
    options: tuple = ()

    @property
    def rows(self) -> int:
        """Dense rows per call."""
        return self.chunk * self.chunks


class JaxprLeaf:
    """``f`` as a function of one flattened leaf, from the point's jaxpr.

    ``fn(leaf_flat, dyn, consts)`` evaluates the primal jaxpr with the leaf at
    input position ``input_pos`` replaced by ``leaf_flat`` (reshaped). Equal
    (and hashing equal) for equal structural keys and positions, so the plans
    and trackers cached for one function serve every look-alike one.
    """

    def __init__(self, key: str, jaxpr: Any, input_pos: int, shape: tuple[int, ...]):
        self.key = key
        self.jaxpr = jaxpr
        self.leaf_pos = input_pos
        self.leaf_shape = tuple(shape)

    def __call__(self, leaf_flat: jax.Array, dyn: Sequence[Any], consts: Sequence[Any]):
        inputs = list(dyn)
        inputs[self.leaf_pos] = leaf_flat.reshape(self.leaf_shape)
        return jax.core.eval_jaxpr(self.jaxpr, list(consts), *inputs)[0]

    def __hash__(self) -> int:
        return hash((JaxprLeaf, self.key, self.leaf_pos, self.leaf_shape))

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, JaxprLeaf)
            and self.key == other.key
            and self.leaf_pos == other.leaf_pos
            and self.leaf_shape == other.leaf_shape
        )

    def __repr__(self) -> str:
        return f"<f of input {self.leaf_pos} {self.leaf_shape}>"


def leaf_function(point: Any, leaf: int) -> JaxprLeaf:
    """The :class:`JaxprLeaf` of a checked leaf of ``point``."""
    checked = point.leaves[leaf]
    return JaxprLeaf(
        point.key, point.primal.jaxpr, checked.input_pos, checked.info.shape
    )


@dataclasses.dataclass
class Outputs:
    """What one call of a program returns, on the host.

    Attributes:
      value: ``f`` at the point (NaN when the call did not compute it).
      grads: the analytic gradient of each checked leaf, flat (or ``None``).
      dense: ``(rows, 2)`` values of the dense rows.
      dense_words: ``(rows, 2, S)`` decision words, or ``None``.
      dense_changed: ``(rows, S)`` decisions that differ between the two points.
      prop: per propagated block, ``(values (rows, 2), words, changed)``.
    """

    value: float
    grads: list[np.ndarray] | None
    dense: np.ndarray
    dense_words: np.ndarray | None
    dense_changed: np.ndarray | None
    prop: list[tuple[np.ndarray, np.ndarray | None, np.ndarray | None]]


def _zeros_like_avals(avals: Sequence[Any]) -> list[jax.Array]:
    return [jnp.zeros(a.shape, a.dtype) for a in avals]


class Program:
    """The compiled program of a check layout (see the module docstring).

    Built and compiled once per structural key and layout; call it with
    :meth:`run`. ``sites`` describes the decision words of dense rows,
    ``prop_sites[b]`` those of propagated block ``b``.
    """

    def __init__(self, point: Any, layout: Layout):
        self.key = point.key
        self.layout = layout
        self.dtype = point.dtype
        self.sizes = [leaf.size for leaf in point.leaves]
        self.sources = [leaf.input_pos for leaf in point.leaves]
        self.sites: tuple[kinks.Site, ...] = ()
        self.prop_sites: list[tuple[kinks.Site, ...]] = []
        self.compile_seconds = 0.0
        self.lower_seconds = 0.0
        self.from_disk = False
        self.compiled: Any = None
        self.on_disk = not point.host_callbacks
        self._build(point)

    # ------------------------------------------------------------- building
    def _build(self, point: Any) -> None:
        layout = self.layout
        primal = point.primal.jaxpr
        vg = point.grad.jaxpr if (layout.grad and point.grad is not None) else None
        vg_avals = point.grad.out_avals if vg is not None else ()
        leaves = point.leaves
        sizes, offsets = self.sizes, [leaf.offset for leaf in leaves]
        shapes = [leaf.info.shape for leaf in leaves]
        sources = self.sources
        site_box: dict[str, Any] = {}
        prop_fns = [
            JaxprLeaf(point.key, primal, leaves[b.leaf].input_pos, shapes[b.leaf])
            for b in layout.prop
        ]
        trackers = [
            kinks.winner_tracker(
                fn,
                _sds_flat(point.dyn[fn.leaf_pos]),
                _sds_list(point.dyn),
                _sds_list(point.primal.consts),
            )  # fmt: skip
            if b.tracked
            else None
            for b, fn in zip(layout.prop, prop_fns, strict=True)
        ]
        self.prop_sites = [() if t is None else t.sites for t in trackers]

        def inputs_at(dyn: list, th: jax.Array) -> list:
            vals = list(dyn)
            for pos, off, size, shape in zip(
                sources, offsets, sizes, shapes, strict=True
            ):
                vals[pos] = lax.dynamic_slice_in_dim(th, off, size).reshape(shape)
            return vals

        def program(pc, gc, dyn, main, d_idx, d_delta, d_n, p_idx, p_step, p_n):
            out: dict[str, Any] = {}
            if vg is not None:
                out["vg"] = lax.cond(
                    main,
                    lambda ops: jax.core.eval_jaxpr(vg, ops[0], *ops[1]),
                    lambda ops: _zeros_like_avals(vg_avals),
                    (gc, dyn),
                )
            theta = jnp.concatenate([dyn[p].reshape(-1) for p in sources])
            convolves = any_equation(
                primal, lambda eqn: eqn.primitive.name == "conv_general_dilated"
            )

            if layout.tracked:

                def row(i: jax.Array, d: jax.Array) -> Any:
                    a = inputs_at(dyn, theta.at[i].add(d[0]))
                    b = inputs_at(dyn, theta.at[i].add(d[1]))
                    v, w, c, sites = kinks.evaluate_pair(primal, pc, a, b, sources)
                    site_box["sites"] = sites
                    return v, w, c

                batch = jax.vmap(row)
            else:

                def point(i: jax.Array, d: jax.Array) -> Any:
                    args = inputs_at(dyn, theta.at[i].add(d))
                    return jax.core.eval_jaxpr(primal, pc, *args)[0]

                def batch(idx: jax.Array, delta: jax.Array) -> Any:
                    # Both points of every row: `f` is compiled once. One flat
                    # batch, except with convolutions, whose cost per point
                    # grows with the batch of kernels (both points at once:
                    # the equinox conv2d check evaluated 2x slower), so first
                    # points, then second points, in a loop of two.
                    if convolves:
                        both = lax.map(lambda dj: jax.vmap(point)(idx, dj), delta.T)
                        return both.T
                    flat = jax.vmap(point)(jnp.repeat(idx, 2), delta.reshape(-1))
                    return flat.reshape(idx.shape[0], 2)

            out["dense"] = _chunks(batch, d_idx, d_delta, d_n)
            props = []
            for k, (blk, fn) in enumerate(zip(layout.prop, prop_fns, strict=True)):
                x_flat = dyn[fn.leaf_pos].reshape(-1)
                one = _prop_row(blk, fn, trackers[k], x_flat, dyn, pc)
                props.append(_chunks(jax.vmap(one), p_idx[k], p_step[k], p_n[k]))
            out["prop"] = props
            return out

        self._fn = program
        self._site_box = site_box

    def _example_args(self, consts_p, consts_g, dyn) -> tuple:
        layout = self.layout
        idx_dtype = np.int32 if sum(self.sizes) < 2**31 else np.int64
        d_idx = np.zeros((layout.chunks, layout.chunk), idx_dtype)
        d_delta = np.zeros((layout.chunks, layout.chunk, 2), self.dtype)
        p_idx = [np.zeros((b.chunks, b.chunk), idx_dtype) for b in layout.prop]
        p_step = [
            np.zeros((b.chunks, b.chunk, 2) if b.tracked else (b.chunks, b.chunk),
                     self.dtype)
            for b in layout.prop
        ]  # fmt: skip
        p_n = [np.int32(0) for _ in layout.prop]
        return (consts_p, consts_g, dyn, np.bool_(True), d_idx, d_delta, np.int32(0),
                p_idx, p_step, p_n)  # fmt: skip

    def compile(self, consts_p: list, consts_g: list, dyn: list) -> None:
        """Lowers and compiles (or loads from disk) for these inputs' shapes."""
        args = self._place(self._example_args(consts_p, consts_g, dyn))
        with jax.enable_x64(self.dtype == np.float64):
            t0 = time.perf_counter()
            jitted = jax.jit(
                self._fn, compiler_options=dict(self.layout.options) or None
            )
            hit = _cache.load_executable(self.disk_key()) if self.on_disk else None
            if hit is not None:
                # Neither traced nor lowered: what tracing found is stored.
                self.compiled, extras = hit
                self.sites = tuple(extras["sites"])
                self.from_disk = True
                self.compile_seconds = time.perf_counter() - t0
                return
            lowered = jitted.lower(*args)
            self.lower_seconds = time.perf_counter() - t0
            self.sites = tuple(self._site_box.get("sites", ()))
            t0 = time.perf_counter()
            compiled = lowered.compile(dict(self.layout.options) or None)
            if self.on_disk:
                extras = {
                    "sites": list(self.sites),
                    "custom_calls": _cache.custom_call_targets(lowered.as_text()),
                }
                _cache.store_executable(self.disk_key(), compiled, extras=extras)
            else:
                # It calls back into this process: kept in memory only.
                _cache.store_executable(self.disk_key(), compiled, disk=False)
            self.compile_seconds = time.perf_counter() - t0
        self.compiled = compiled

    def disk_key(self) -> str:
        return _cache.program_key(self.key, self.layout, self.dtype)

    # -------------------------------------------------------------- running
    def _place(self, args: tuple) -> tuple:
        """Spreads the row blocks over the local devices (row axis)."""
        consts_p, consts_g, dyn, main, d_idx, d_delta, d_n, p_idx, p_step, p_n = args
        d_idx, d_delta = cluster.place_rows(d_idx, d_delta)
        placed = [cluster.place_rows(i, s) for i, s in zip(p_idx, p_step, strict=True)]
        p_idx = [a for a, _ in placed]
        p_step = [b for _, b in placed]
        return (consts_p, consts_g, dyn, main, d_idx, d_delta, d_n, p_idx, p_step, p_n)

    def run(
        self,
        consts_p: list,
        consts_g: list,
        dyn: list,
        *,
        main: bool,
        d_idx: np.ndarray,
        d_delta: np.ndarray,
        d_n: int,
        p_idx: Sequence[np.ndarray],
        p_step: Sequence[np.ndarray],
        p_n: Sequence[int],
    ) -> Outputs:
        """One call: blocks padded to the layout's shapes; ``d_n`` and ``p_n``
        say how many of their chunks hold rows (the rest are not evaluated)."""
        if self.compiled is None:
            self.compile(consts_p, consts_g, dyn)
        args = self._place(
            (consts_p, consts_g, dyn, np.bool_(main), d_idx, d_delta, np.int32(d_n),
             list(p_idx), list(p_step), [np.int32(n) for n in p_n])
        )  # fmt: skip
        if self.on_disk:
            with jax.enable_x64(self.dtype == np.float64):
                out = jax.device_get(self.compiled(*args))
        else:
            with _x64_everywhere(self.dtype == np.float64):
                out = jax.device_get(self.compiled(*args))
        value, grads = float("nan"), None
        if "vg" in out:
            value = float(out["vg"][0])
            grads = [np.asarray(g, np.float64).reshape(-1) for g in out["vg"][1:]]
        rows = self.layout.rows
        dense = out["dense"]
        words = changed = None
        if self.layout.tracked:
            vals, words, changed = dense
            words = np.asarray(words).reshape(rows, 2, -1)
            changed = np.asarray(changed).reshape(rows, -1)
        else:
            vals = dense
        prop = []
        for blk, res in zip(self.layout.prop, out["prop"], strict=True):
            n = blk.chunk * blk.chunks
            if blk.tracked:
                v, w, c = res
                prop.append(
                    (np.asarray(v, np.float64).reshape(n, 2),
                     np.asarray(w).reshape(n, 2, -1), np.asarray(c).reshape(n, -1))
                )  # fmt: skip
            else:
                prop.append((np.asarray(res, np.float64).reshape(n, 2), None, None))
        return Outputs(
            value=value, grads=grads,
            dense=np.asarray(vals, np.float64).reshape(rows, 2),
            dense_words=words, dense_changed=changed, prop=prop,
        )  # fmt: skip


@contextlib.contextmanager
def _x64_everywhere(on: bool) -> Any:
    """Float64 on every thread for the duration of one call of a program with
    host callbacks.

    XLA may run such a program, and so the callbacks, on threads of its own,
    where the caller's ``jax.enable_x64`` (a thread-local setting) does not
    hold: JAX would turn the callbacks' float64 arguments into float32 before
    they reach the user's function and refuse its float64 results. So, for the
    call only, float64 becomes JAX's process-wide default (other threads of the
    process running JAX at that moment see it too), then the user's setting is
    restored.
    """
    if not on or _global_x64():
        with jax.enable_x64(on):
            yield
        return
    jax.config.update("jax_enable_x64", True)
    try:
        with jax.enable_x64(True):
            yield
    finally:
        jax.config.update("jax_enable_x64", False)


def _global_x64() -> bool:
    """Whether float64 is JAX's process-wide default (read on a new thread, where
    no thread-local setting holds)."""
    seen: list[bool] = []
    probe = threading.Thread(
        target=lambda: seen.append(
            jax.dtypes.canonicalize_dtype(np.float64) == np.float64
        )
    )
    probe.start()
    probe.join()
    return seen[0]


def _chunks(batch: Any, idx: jax.Array, delta: jax.Array, n: jax.Array) -> Any:
    """``batch`` (the rows of one chunk at once) over each of the first ``n``
    chunks of ``(idx, delta)`` (shapes ``(chunks, chunk)`` and ``(chunks, chunk,
    ...)``), one chunk after another; the outputs of the other chunks are
    zeros."""
    # `batch` is traced once: its jaxpr gives the shapes and is the loop's body.
    closed, shapes = jax.make_jaxpr(batch, return_shape=True)(idx[0], delta[0])
    out_tree = jax.tree_util.tree_structure(shapes)
    buf = jax.tree_util.tree_map(
        lambda s: jnp.zeros((idx.shape[0], *s.shape), s.dtype), shapes
    )

    def body(k: jax.Array, buf: Any) -> Any:
        flat = jax.core.eval_jaxpr(closed.jaxpr, closed.consts, idx[k], delta[k])
        res = jax.tree_util.tree_unflatten(out_tree, flat)
        return jax.tree_util.tree_map(lambda b, r: b.at[k].set(r), buf, res)

    return lax.fori_loop(0, n, body, buf)


def _prop_row(blk: PropBlock, fn: JaxprLeaf, tracker: Any, x_flat, dyn, consts):
    """One row of a propagated block: ``(f(x + h e_i), f(x - h e_i))``, or with
    tracking ``(values, words, changed)`` at ``x + d_0 e_i`` and ``x + d_1 e_i``."""
    if blk.tracked:
        at = _propagate.row_evaluator(tracker, x_flat, dyn, consts, pair=True)

        def tracked_row(i: jax.Array, d: jax.Array) -> Any:
            return at(i, x_flat[i] + d)

        return tracked_row
    at = _propagate.row_evaluator(fn, x_flat, dyn, consts)

    def plain_row(i: jax.Array, h: jax.Array) -> Any:
        xi = x_flat[i]
        out = at(i, jnp.stack([xi + h, xi - h]))
        return jnp.stack([out[0], out[1]])

    return plain_row


def _sds_flat(x: Any) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((int(np.size(x)),), jnp.result_type(x))


def _sds_list(xs: Sequence[Any]) -> list[jax.ShapeDtypeStruct]:
    return [jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x)) for x in xs]
