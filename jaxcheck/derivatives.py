"""Every kind of derivative: second order, forward mode, VJPs, Jacobians,
random directions with localisation, and checks at several points at once.

The checks here build on :func:`jaxcheck.check_grads` (whose report types they
reuse) for everything that is the gradient of a scalar, and add a small
"block" engine for derivatives that are matrices:

* :func:`check_second_order` compares centered differences of the *gradient
  function* with forward-over-reverse Hessian-vector products (``jax.jvp`` of
  ``jax.grad``, the columns of ``jax.hessian``) or reverse-over-reverse ones. A
  backward rule that is right at first order but not differentiable (a
  ``stop_gradient`` inside a ``custom_vjp`` bwd) passes :func:`check_grads` and
  fails here.
* :func:`check_forward_mode` and :func:`check_modes` check the ``jax.jvp``
  derivative too; a ``custom_vjp`` function is reported as reverse-only.
* :func:`check_vjp` checks a vector-valued function (a layer) with an upstream
  gradient; :func:`check_jacobian` checks its whole Jacobian, block by block.
* :func:`check_directions` checks ``K`` random directions per leaf (cheap), and
  localises the wrong coordinates of a failing leaf by bisecting over groups of
  coordinates; :func:`miss_probability` and :func:`directions_for_risk` say how
  likely a wrong gradient is to pass with ``K`` directions.
* :func:`check_points` checks a batch of parameter points at once (vmapped).

Everything runs in float64 inside ``jax.enable_x64(True)`` (never the global
flag), and no check raises on a mismatch: each returns a report.
"""

from __future__ import annotations

import dataclasses
import html
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from . import compare, engine, tree
from .check import validate_callables
from .report import (
    CoordResult,
    GradCheckReport,
    LeafReport,
    SkippedLeaf,
    html_headline,
    text_table,
)

PyTree = Any

#: Largest number of (input coordinate, output entry) pairs a block check holds
#: at once by default (three float64 arrays of this many entries).
DEFAULT_MAX_ENTRIES = 10_000_000

#: Bytes one batch of perturbed evaluations of the block and direction engines
#: may use by default.
_BATCH_BUDGET = 64 << 20

#: A child group of coordinates is followed during localisation when it carries
#: at least this fraction of its parent's error (besides failing on its own).
_FOLLOW_FRACTION = 0.25


# --------------------------------------------------------------------------- #
# Shared preparation: float64 casting and the static/dynamic split.
# --------------------------------------------------------------------------- #


def _is_array(x: Any) -> bool:
    return isinstance(x, jax.Array | np.ndarray | np.generic)


def _to_x64(x: Any) -> Any:
    """Floating arrays to float64; PRNG keys and every other leaf unchanged."""
    if _is_array(x):
        dtype = x.dtype
        if jnp.issubdtype(dtype, jax.dtypes.prng_key):
            return x
        if jnp.issubdtype(dtype, jnp.floating):
            return jnp.asarray(x, dtype=jnp.float64)
        return jnp.asarray(x)
    return x


def _callable_name(fn: Callable[..., Any]) -> str:
    return (
        getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
    )


@dataclasses.dataclass
class _Point:
    """A point ``(params, args)`` split into traced and closed-over leaves."""

    infos: list[tree.LeafInfo]
    p_treedef: Any
    a_treedef: Any
    num_p: int
    num_a: int
    static_params: dict[int, Any]
    static_args: dict[int, Any]
    dyn_params: list[Any]
    dyn_args: list[Any]
    dyn_pos: dict[int, int]

    @property
    def checked(self) -> list[tree.LeafInfo]:
        return [i for i in self.infos if i.checked]

    @property
    def skipped(self) -> tuple[SkippedLeaf, ...]:
        return tuple(
            SkippedLeaf(i.path, i.reason, i.dtype, i.shape)
            for i in self.infos
            if not i.checked
        )

    def fn(
        self, f: Callable[..., Any], pos: int | None = None, shape: tuple = ()
    ) -> engine.LeafFunction:
        return engine.LeafFunction(
            f, self.p_treedef, self.num_p, self.static_params,
            self.a_treedef, self.num_a, self.static_args, pos, shape,
        )  # fmt: skip

    @property
    def checked_dyn(self) -> tuple[int, ...]:
        return tuple(self.dyn_pos[i.pos] for i in self.checked)


def _prepare(params: PyTree, args: tuple, name: str = "params") -> _Point:
    """Splits ``(params, args)`` as :func:`jaxcheck.check_grads` does.

    Must be called inside ``jax.enable_x64(True)``.
    """
    p_leaves, infos, p_treedef = tree.leaf_infos(params)
    if not any(i.checked for i in infos):
        listing = "; ".join(f"{i.path}: {i.reason}" for i in infos) or "none"
        raise ValueError(
            f"`{name}` has no floating-point array leaf to check (leaves: "
            f"{listing}). Pass them as float arrays, e.g. "
            "`jnp.asarray(w, jnp.float32)`."
        )
    p_leaves = [
        _to_x64(v) if info.checked else v
        for v, info in zip(p_leaves, infos, strict=True)
    ]
    a_leaves, a_treedef = jax.tree_util.tree_flatten(args, is_leaf=lambda x: x is None)
    a_leaves = [_to_x64(v) for v in a_leaves]
    static_params = {i: v for i, v in enumerate(p_leaves) if not _is_array(v)}
    static_args = {i: v for i, v in enumerate(a_leaves) if not _is_array(v)}
    dyn_pos: dict[int, int] = {}
    for i in range(len(p_leaves)):
        if i not in static_params:
            dyn_pos[i] = len(dyn_pos)
    return _Point(
        infos=infos,
        p_treedef=p_treedef,
        a_treedef=a_treedef,
        num_p=len(p_leaves),
        num_a=len(a_leaves),
        static_params=static_params,
        static_args=static_args,
        dyn_params=[v for v in p_leaves if _is_array(v)],
        dyn_args=[v for v in a_leaves if _is_array(v)],
        dyn_pos=dyn_pos,
    )


def _replace(dyn: Sequence[Any], idx: Sequence[int], values: Sequence[Any]) -> list:
    out = list(dyn)
    for k, v in zip(idx, values, strict=True):
        out[k] = v
    return out


def _scalar_output(out: Any, what: str = "`f(params, *args)`") -> None:
    shape = getattr(out, "shape", None)
    dtype = getattr(out, "dtype", None)
    if shape is None or tuple(shape) != () or not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"{what} must return a real floating-point scalar, got {out}. Reduce it "
            "to a scalar (e.g. `jnp.sum(out)`), or use `check_vjp` / "
            "`check_jacobian` for a vector-valued function."
        )


@dataclasses.dataclass(frozen=True)
class _GradOf:
    """Hashable ``(dyn_params, dyn_args) -> [d f / d checked leaf, ...]``."""

    full: engine.LeafFunction
    idx: tuple[int, ...]

    def __call__(self, dyn_params: Sequence[Any], dyn_args: Sequence[Any]) -> list:
        def g(checked: list) -> jax.Array:
            return self.full(None, _replace(dyn_params, self.idx, checked), dyn_args)

        return list(jax.grad(g)([dyn_params[k] for k in self.idx]))


@dataclasses.dataclass(frozen=True)
class _UserGradOf:
    """Hashable ``(dyn_params, dyn_args) -> [grad_fn(...)[checked leaf], ...]``."""

    grad_fn: Callable[..., Any]
    full: engine.LeafFunction
    paths: tuple[str, ...]

    def __call__(self, dyn_params: Sequence[Any], dyn_args: Sequence[Any]) -> list:
        params, args = self.full.rebuild(dyn_params, dyn_args)
        leaves, paths, _ = tree.flatten(self.grad_fn(params, *args))
        by_path = dict(zip(paths, leaves, strict=True))
        missing = [p for p in self.paths if by_path.get(p) is None]
        if missing:
            raise ValueError(
                f"`grad_fn` ({_callable_name(self.grad_fn)}) returned no gradient "
                f"for leaves {missing}. It must return a pytree shaped like `params`."
            )
        return [jnp.asarray(by_path[p]) for p in self.paths]


@dataclasses.dataclass(frozen=True)
class _OutputsOf:
    """Hashable ``(dyn_params, dyn_args) -> flattened outputs of f``."""

    full: engine.LeafFunction

    def __call__(self, dyn_params: Sequence[Any], dyn_args: Sequence[Any]) -> list:
        out = self.full(None, dyn_params, dyn_args)
        return list(jax.tree_util.tree_leaves(out))


@dataclasses.dataclass(frozen=True)
class _ValueOf:
    """Hashable ``(dyn_params, dyn_args) -> f(params, *args)``."""

    full: engine.LeafFunction

    def __call__(self, dyn_params: Sequence[Any], dyn_args: Sequence[Any]) -> Any:
        return self.full(None, dyn_params, dyn_args)


def _value(fn: Callable[..., Any], dyn_params: list, dyn_args: list) -> Any:
    return fn(dyn_params, dyn_args)


_value_jit = jax.jit(_value, static_argnums=0)


# --------------------------------------------------------------------------- #
# The block engine: Jacobians of vector-valued functions, column by column.
# --------------------------------------------------------------------------- #


def _ravel_all(outs: Sequence[Any]) -> list[jax.Array]:
    return [jnp.ravel(o) for o in outs]


def _fd_columns(
    out_fn: Callable[..., list],
    a: int,
    shape: tuple[int, ...],
    x_flat: jax.Array,
    idx: jax.Array,
    h: jax.Array,
    dyn_params: list,
    dyn_args: list,
) -> tuple[list, list]:
    def at(xf: jax.Array) -> list:
        return _ravel_all(
            out_fn(_replace(dyn_params, [a], [xf.reshape(shape)]), dyn_args)
        )

    def one(i: jax.Array) -> tuple[list, list]:
        xi = x_flat[i]
        return at(x_flat.at[i].set(xi + h)), at(x_flat.at[i].set(xi - h))

    return jax.vmap(one)(idx)


_fd_columns_jit = jax.jit(_fd_columns, static_argnums=(0, 1, 2))


def _jvp_columns(
    out_fn: Callable[..., list],
    a: int,
    shape: tuple[int, ...],
    idx: jax.Array,
    dyn_params: list,
    dyn_args: list,
) -> list:
    size = math.prod(shape)
    xa = dyn_params[a]

    def g(v: jax.Array) -> list:
        return _ravel_all(out_fn(_replace(dyn_params, [a], [v]), dyn_args))

    def one(i: jax.Array) -> list:
        t = jnp.zeros(size, xa.dtype).at[i].set(1).reshape(shape)
        return jax.jvp(g, (xa,), (t,))[1]

    return jax.vmap(one)(idx)


_jvp_columns_jit = jax.jit(_jvp_columns, static_argnums=(0, 1, 2))


def _vjp_rows(
    out_fn: Callable[..., list],
    out_k: int,
    in_idx: tuple[int, ...],
    idx: jax.Array,
    dyn_params: list,
    dyn_args: list,
) -> list:
    def g(xs: list) -> list:
        return _ravel_all(out_fn(_replace(dyn_params, in_idx, xs), dyn_args))

    outs, pullback = jax.vjp(g, [dyn_params[k] for k in in_idx])

    def one(i: jax.Array) -> list:
        ct = [jnp.zeros_like(o) for o in outs]
        ct[out_k] = ct[out_k].at[i].set(1)
        (res,) = pullback(ct)
        return _ravel_all(res)

    return jax.vmap(one)(idx)


_vjp_rows_jit = jax.jit(_vjp_rows, static_argnums=(0, 1, 2))


def _jacrev_full(
    out_fn: Callable[..., list],
    in_idx: tuple[int, ...],
    dyn_params: list,
    dyn_args: list,
) -> list:
    def g(xs: list) -> list:
        return _ravel_all(out_fn(_replace(dyn_params, in_idx, xs), dyn_args))

    return jax.jacrev(g)([dyn_params[k] for k in in_idx])


_jacrev_full_jit = jax.jit(_jacrev_full, static_argnums=(0, 1))


def _pow2_floor(n: int) -> int:
    n = max(int(n), 1)
    return 1 << (n.bit_length() - 1)


def _fmt_e(x: float) -> str:
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return f"{x:.2e}"


def _plural(n: int, noun: str, plural: str | None = None) -> str:
    return f"{n:,} {noun if n == 1 else (plural or noun + 's')}"


@dataclasses.dataclass(frozen=True)
class BlockCheckReport(GradCheckReport):
    """A check of a matrix of derivatives (a Jacobian or a Hessian), block by block.

    It is a :class:`jaxcheck.GradCheckReport` whose "leaves" are blocks: the block
    ``d{out}/d{in}`` holds the derivatives of one output leaf with respect to one
    input leaf, with shape ``out.shape + in.shape``, and each
    :class:`jaxcheck.CoordResult` index is an output index followed by an input
    index. Everything else (``passed``, ``failures``, text, HTML,
    ``to_dict()``, :class:`jaxcheck.GradientCheckError`) works as for a gradient.

    Attributes:
      kind: what was checked, e.g. ``"second-order"`` or ``"Jacobian"``.
    """

    kind: str = "Jacobian"

    def headline(self) -> str:
        """One line: the verdict, what was checked, and the worst entry."""
        status = "PASSED" if self.passed else "FAILED"
        text = (
            f"jaxcheck: {self.kind} check {status}: "
            f"{_plural(len(self.leaves), 'block')}, "
            f"{_plural(self.num_checked, 'entry', 'entries')}"
        )
        if not self.passed:
            text += (
                f", {self.num_wrong:,} wrong in {_plural(len(self.failures), 'block')}"
            )
        if self.num_untestable:
            text += f", {self.num_untestable:,} untestable"
        w = self.worst
        if w is not None:
            idx = "[" + ", ".join(str(i) for i in w[1].index) + "]"
            text += f"; worst relative error {_fmt_e(w[1].rel_error)} at {w[0]}{idx}"
        return text + "."

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of the whole report."""
        return super().to_dict() | {"kind": self.kind}


def _check_blocks(
    out_fn: Callable[..., list],
    point: _Point,
    selections: dict[int, np.ndarray],
    *,
    step: float,
    bar: compare.Bar,
    analytic: str,
    max_worst: int,
    chunk_size: int | None,
    max_entries: int,
    block_name: Callable[[int, tree.LeafInfo], str],
    eps: float,
) -> list[LeafReport]:
    """Numeric vs analytic columns of ``d out_fn / d (checked leaves)``."""
    dp, da = point.dyn_params, point.dyn_args
    checked = point.checked
    outs0 = _value_jit(out_fn, dp, da)
    g0 = [np.asarray(o, np.float64).reshape(-1) for o in outs0]
    out_sizes = [o.size for o in g0]
    out_shapes = [tuple(np.shape(o)) for o in outs0]
    out_total = max(sum(out_sizes), 1)
    total = sum(len(selections[i.pos]) for i in checked) * out_total
    if total > max_entries:
        raise ValueError(
            f"This check compares {total:,} derivative entries ({out_total:,} outputs "
            f"x {sum(len(selections[i.pos]) for i in checked):,} input coordinates), "
            f"more than `max_entries`={max_entries:,}. Sample input coordinates with "
            "`coords=k` (e.g. coords=16), or raise `max_entries`."
        )
    maxabs = [float(np.max(np.abs(o))) if o.size else 0.0 for o in g0]
    in_idx = point.checked_dyn
    jac = None
    if analytic == "jacrev":
        jac = [
            [np.asarray(blk, np.float64).reshape(out_sizes[k], -1) for blk in row]
            for k, row in enumerate(_jacrev_full_jit(out_fn, in_idx, dp, da))
        ]
    if chunk_size is None:
        chunk = _pow2_floor(min(256, _BATCH_BUDGET // (8 * 4 * out_total)))
    else:
        chunk = int(chunk_size)
    reports: list[LeafReport] = []
    h = jnp.asarray(step, jnp.float64)
    for n_in, info in enumerate(checked):
        t0 = time.perf_counter()
        a = point.dyn_pos[info.pos]
        x_flat = dp[a].reshape(-1)
        indices = selections[info.pos]
        c = max(1, min(chunk, _pow2_floor(len(indices))))
        fps: list[list[np.ndarray]] = [[] for _ in g0]
        fms: list[list[np.ndarray]] = [[] for _ in g0]
        ans: list[list[np.ndarray]] = [[] for _ in g0]
        for lo in range(0, len(indices), c):
            part = indices[lo : lo + c]
            block = np.full(c, part[0], dtype=np.int32)
            block[: len(part)] = part
            idx = jnp.asarray(block)
            plus, minus = _fd_columns_jit(out_fn, a, info.shape, x_flat, idx, h, dp, da)
            if analytic == "jvp":
                an = _jvp_columns_jit(out_fn, a, info.shape, idx, dp, da)
            elif analytic == "vjp_rows":
                an = _vjp_rows_jit(out_fn, n_in, in_idx, idx, dp, da)
            else:
                assert jac is not None
                an = [jac[k][n_in][:, block].T for k in range(len(g0))]
            for k in range(len(g0)):
                fps[k].append(np.asarray(plus[k], np.float64)[: len(part)])
                fms[k].append(np.asarray(minus[k], np.float64)[: len(part)])
                ans[k].append(np.asarray(an[k], np.float64)[: len(part)])
        x_host = np.asarray(x_flat)[indices]
        h_real = ((x_host + step) - (x_host - step))[:, None]
        seconds = (time.perf_counter() - t0) / max(len(g0), 1)
        for k in range(len(g0)):
            fp = np.concatenate(fps[k])
            fm = np.concatenate(fms[k])
            a_val = np.concatenate(ans[k])
            numeric = (fp - fm) / h_real
            rel = compare.relative_error(a_val, numeric)
            scale = np.maximum(np.maximum(np.abs(fp), np.abs(fm)), maxabs[k])
            noise = bar.noise_factor * eps * scale / h_real
            codes = compare.verdicts(a_val, numeric, noise, bar.rtol)
            flat_rel, flat_codes = rel.reshape(-1), codes.reshape(-1)
            order = np.lexsort(
                (-flat_rel, -(flat_codes == compare.WRONG).astype(np.int8))
            )
            worst = []
            for e in order[:max_worst]:
                r, j = divmod(int(e), out_sizes[k])
                worst.append(
                    CoordResult(
                        index=tree.unravel(j, out_shapes[k])
                        + tree.unravel(indices[r], info.shape),
                        analytic=float(a_val[r, j]),
                        numeric=float(numeric[r, j]),
                        rel_error=float(rel[r, j]),
                        verdict=compare.VERDICT_NAMES[flat_codes[e]],
                        f_plus=float(fp[r, j]),
                        f_minus=float(fm[r, j]),
                    )
                )
            reports.append(
                LeafReport(
                    path=block_name(k, info),
                    shape=out_shapes[k] + info.shape,
                    dtype=info.dtype,
                    num_checked=int(rel.size),
                    max_rel_error=float(rel.max()) if rel.size else 0.0,
                    band_counts=compare.band_counts(rel),
                    num_ok=int((codes == compare.OK).sum()),
                    num_wrong=int((codes == compare.WRONG).sum()),
                    num_untestable=int((codes == compare.UNTESTABLE).sum()),
                    worst=tuple(worst),
                    step=step,
                    chunk_size=c,
                    seconds=seconds,
                )
            )
    return reports


def _label(path: str, root: str) -> str:
    return path if path else root


def _validate_common(step: float, max_worst: int, chunk_size: int | None) -> None:
    if not (
        isinstance(step, int | float | np.floating) and math.isfinite(step) and step > 0
    ):
        raise ValueError(
            f"`step` must be a positive finite number, got {step!r}. A typical value "
            "in float64 is 1e-5."
        )
    if not isinstance(max_worst, int) or max_worst < 0:
        raise ValueError(f"`max_worst` must be an int >= 0, got {max_worst!r}.")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"`chunk_size` must be an int >= 1, got {chunk_size!r}.")


def _device() -> str:
    d = jax.devices()[0]
    return f"{d.platform}:{d.id}"


def _untestable_note(n_untestable: int, total: int, bar: compare.Bar) -> str:
    what = (
        "EVERY checked entry" if n_untestable == total else f"{n_untestable:,} entries"
    )
    return (
        f"{what} had a difference within round-off noise of the finite difference "
        f"(|a - n| <= {bar.noise_factor:g}·eps·scale/h): neither confirmed nor "
        "refuted. Try a larger `step` to resolve them."
    )


# --------------------------------------------------------------------------- #
# Second order.
# --------------------------------------------------------------------------- #

SecondOrderMethod = Literal["fwd_over_rev", "rev_over_rev"]


def check_second_order(
    f: Callable[..., Any],
    params: PyTree,
    *args: Any,
    grad_fn: Callable[..., PyTree] | None = None,
    coords: tree.CoordSpec = "all",
    step: float = 1e-5,
    seed: int = 0,
    rtol: float | None = None,
    noise_factor: float | None = None,
    method: SecondOrderMethod = "fwd_over_rev",
    chunk_size: int | None = None,
    max_worst: int = 5,
    max_entries: int = DEFAULT_MAX_ENTRIES,
) -> BlockCheckReport:
    """Checks second derivatives: differences of the gradient against Hessian products.

    For every checked coordinate ``i`` of every leaf, the centered difference of
    the gradient function ``(g(x + h e_i) - g(x - h e_i)) / 2h`` (a column of the
    Hessian, measured) is compared entry by entry with the analytic column
    ``H e_i``: by default a forward-over-reverse Hessian-vector product
    (``jax.jvp`` of ``jax.grad``, exactly the columns of ``jax.hessian``), or with
    ``method="rev_over_rev"`` the row ``jax.grad(lambda x: jax.grad(f)(x)[i])``.
    This is what ``check_grads(..., order=2)`` runs.

    It catches backward rules that are right at first order but not
    differentiable, e.g. a ``stop_gradient`` inside a ``custom_vjp`` bwd: the
    gradient checks out, but its derivative is silently zero.

    Like :func:`jaxcheck.check_grads` it never raises on a mismatch.

    Args:
      f: the scalar function, called as ``f(params, *args)``.
      params: any pytree; floating-point array leaves are checked in float64.
      *args: held fixed (batches, labels, PRNG keys).
      grad_fn: a hand-written gradient ``grad_fn(params, *args)`` whose derivative
        is checked instead of ``jax.grad(f)``'s (it must be JAX-differentiable).
      coords: which input coordinates ``i`` (as in :func:`jaxcheck.check_grads`);
        each yields a whole Hessian column over every checked leaf.
      step: the step ``h`` of the differences of the gradient.
      seed: seed of the coordinate sampling.
      rtol: the relative-error bar per Hessian entry (default ``1e-7``).
      noise_factor: the round-off allowance in units of ``eps * |g| / h``.
      method: ``"fwd_over_rev"`` (default) or ``"rev_over_rev"``.
      chunk_size: coordinates per vmapped batch (default: from a memory budget).
      max_worst: worst entries kept per block.
      max_entries: refuse checks of more Hessian entries than this.

    Returns:
      a :class:`BlockCheckReport` with one block ``d2f/d{B}d{A}`` per pair of
      checked leaves; an entry's index is ``B``'s index followed by ``A``'s.

    Raises:
      TypeError: if ``f`` does not return a real floating-point scalar.
      ValueError: for invalid options, or a check larger than ``max_entries``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jaxcheck.derivatives import check_second_order
      >>> @jax.custom_vjp
      ... def cube(x):
      ...     return x ** 3
      >>> cube.defvjp(
      ...     lambda x: (x ** 3, x),
      ...     lambda x, g: (g * 3 * jax.lax.stop_gradient(x) ** 2,),
      ... )
      >>> loss = lambda p: jnp.sum(cube(p))
      >>> check_second_order(loss, jnp.array([1.0, 2.0])).passed
      False
    """
    validate_callables(f, grad_fn)
    if method not in ("fwd_over_rev", "rev_over_rev"):
        raise ValueError(
            f'`method` must be "fwd_over_rev" or "rev_over_rev", got {method!r}.'
        )
    _validate_common(step, max_worst, chunk_size)
    bar = compare.default_bar(rtol, noise_factor)
    t_start = time.perf_counter()
    with jax.enable_x64(True):
        point = _prepare(params, args)
        full = point.fn(f)
        out = jax.eval_shape(full, None, point.dyn_params, point.dyn_args)
        _scalar_output(out)
        f0 = float(_value_jit(_ValueOf(full), point.dyn_params, point.dyn_args))
        eps = float(jnp.finfo(out.dtype).eps)
        checked = point.checked
        if grad_fn is None:
            out_fn: Callable[..., list] = _GradOf(full, point.checked_dyn)
            source = "jax.grad"
        else:
            out_fn = _UserGradOf(grad_fn, full, tuple(i.path for i in checked))
            source = _callable_name(grad_fn)
        selections = {i.pos: tree.select_coords(i, coords, seed) for i in checked}
        reports = _check_blocks(
            out_fn, point, selections, step=float(step), bar=bar,
            analytic="jvp" if method == "fwd_over_rev" else "vjp_rows",
            max_worst=max_worst, chunk_size=chunk_size, max_entries=max_entries,
            block_name=lambda k, info: (
                f"d2f/d{_label(checked[k].path, 'params')} d{_label(info.path, 'params')}"
            ), eps=eps,
        )  # fmt: skip
    how = (
        "forward-over-reverse HVP (jax.jvp of "
        if method == "fwd_over_rev"
        else "reverse-over-reverse (jax.vjp of "
    ) + f"{source})"
    notes = []
    n_untestable = sum(r.num_untestable for r in reports)
    if n_untestable:
        total = sum(r.num_checked for r in reports)
        notes.append(_untestable_note(n_untestable, total, bar))
    return BlockCheckReport(
        leaves=tuple(reports),
        skipped=point.skipped,
        rtol=bar.rtol,
        bar_reason=bar.reason,
        step=float(step),
        method="central (of the gradient)",
        dtype="float64",
        grad_source=how,
        f_value=f0,
        device=_device(),
        seconds=time.perf_counter() - t_start,
        notes=tuple(notes),
        kind="second-order",
    )


# --------------------------------------------------------------------------- #
# Vector-valued functions: Jacobians and VJPs.
# --------------------------------------------------------------------------- #

JacobianMode = Literal["rev", "fwd"]


def _validate_vector_output(out: Any) -> None:
    leaves, paths, _ = tree.flatten(out)
    if not leaves:
        raise TypeError(
            "`f(x, *args)` returned no array (an empty pytree); a Jacobian needs "
            "at least one floating-point output."
        )
    for leaf, path in zip(leaves, paths, strict=True):
        dtype = getattr(leaf, "dtype", None)
        if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(
                f"`f(x, *args)` must return floating-point arrays, but output "
                f"{path or 'f'} is {leaf}. Return only the differentiable outputs "
                "(drop integer outputs, take `jnp.real` of complex ones)."
            )


def check_jacobian(
    f: Callable[..., Any],
    x: PyTree,
    *args: Any,
    coords: tree.CoordSpec = "all",
    mode: JacobianMode = "rev",
    step: float = 1e-5,
    seed: int = 0,
    rtol: float | None = None,
    noise_factor: float | None = None,
    chunk_size: int | None = None,
    max_worst: int = 5,
    max_entries: int = DEFAULT_MAX_ENTRIES,
) -> BlockCheckReport:
    """Checks the whole Jacobian of a vector-valued function, block by block.

    For every checked input coordinate ``i``, the centered difference
    ``(f(x + h e_i) - f(x - h e_i)) / 2h`` (a column of the Jacobian, for every
    output leaf) is compared entry by entry with the analytic column: from
    ``jax.jacrev`` (``mode="rev"``, which runs ``custom_vjp`` rules and
    hand-written backward passes) or from ``jax.jvp`` (``mode="fwd"``).

    Never raises on a mismatch: it returns a report.

    Args:
      f: the function, called as ``f(x, *args)``; it returns an array or a
        pytree of floating-point arrays (e.g. a layer's activations).
      x: the input pytree; its floating-point array leaves are differentiated.
      *args: held fixed.
      coords: which input coordinates (as in :func:`jaxcheck.check_grads`).
      mode: ``"rev"`` (default) or ``"fwd"``.
      step: the step ``h`` of the centered differences.
      seed: seed of the coordinate sampling.
      rtol: the relative-error bar per entry (default ``1e-7``).
      noise_factor: the round-off allowance in units of ``eps * |f| / h``.
      chunk_size: input coordinates per vmapped batch.
      max_worst: worst entries kept per block.
      max_entries: refuse checks of more Jacobian entries than this.

    Returns:
      a :class:`BlockCheckReport` with one block ``df{out}/dx{in}`` per pair of
      output and input leaves; an entry's index is the output index followed by
      the input index (the layout of ``jax.jacrev``). ``f_value`` is ``nan``.

    Raises:
      TypeError: if ``f`` returns non-floating outputs.
      ValueError: for invalid options, or a check larger than ``max_entries``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxcheck.derivatives import check_jacobian
      >>> layer = lambda x, W: jnp.tanh(x @ W)
      >>> report = check_jacobian(layer, jnp.ones((2, 3)), jnp.eye(3) * 0.5)
      >>> report.passed, report.leaves[0].shape
      (True, (2, 3, 2, 3))
    """
    if not callable(f):
        raise TypeError(f"`f` must be callable as f(x, *args), got {type(f).__name__}.")
    if mode not in ("rev", "fwd"):
        raise ValueError(f'`mode` must be "rev" or "fwd", got {mode!r}.')
    _validate_common(step, max_worst, chunk_size)
    bar = compare.default_bar(rtol, noise_factor)
    t_start = time.perf_counter()
    with jax.enable_x64(True):
        point = _prepare(x, args, name="x")
        full = point.fn(f)
        out = jax.eval_shape(full, None, point.dyn_params, point.dyn_args)
        _validate_vector_output(out)
        _, out_paths, _ = tree.flatten(out)
        eps = max(float(jnp.finfo(o.dtype).eps) for o in jax.tree_util.tree_leaves(out))
        checked = point.checked
        selections = {i.pos: tree.select_coords(i, coords, seed) for i in checked}
        reports = _check_blocks(
            _OutputsOf(full), point, selections, step=float(step), bar=bar,
            analytic="jacrev" if mode == "rev" else "jvp", max_worst=max_worst,
            chunk_size=chunk_size, max_entries=max_entries,
            block_name=lambda k, info: f"df{out_paths[k]}/dx{info.path}", eps=eps,
        )  # fmt: skip
    notes = []
    n_untestable = sum(r.num_untestable for r in reports)
    if n_untestable:
        total = sum(r.num_checked for r in reports)
        notes.append(_untestable_note(n_untestable, total, bar))
    return BlockCheckReport(
        leaves=tuple(reports),
        skipped=point.skipped,
        rtol=bar.rtol,
        bar_reason=bar.reason,
        step=float(step),
        method="central",
        dtype="float64",
        grad_source="jax.jacrev" if mode == "rev" else "jax.jvp",
        f_value=math.nan,
        device=_device(),
        seconds=time.perf_counter() - t_start,
        notes=tuple(notes),
        kind="Jacobian",
    )


@dataclasses.dataclass(frozen=True)
class _CotangentDot:
    """``(x, cotangent, *args) -> <cotangent, f(x, *args)>``, a scalar."""

    f: Callable[..., Any]

    def __call__(self, x: PyTree, cotangent: PyTree, *args: Any) -> jax.Array:
        out = jax.tree_util.tree_leaves(self.f(x, *args))
        cts = jax.tree_util.tree_leaves(cotangent)
        return sum(
            (jnp.vdot(c, o) for c, o in zip(cts, out, strict=True)),
            start=jnp.zeros((), jnp.result_type(*out)),
        )


class _UserVjp:
    """``vjp_fn`` seen as the ``grad_fn`` of ``<cotangent, f(x)>``."""

    def __init__(self, vjp_fn: Callable[..., PyTree]):
        self.vjp_fn = vjp_fn
        self.__qualname__ = _callable_name(vjp_fn)

    def __call__(self, x: PyTree, cotangent: PyTree, *args: Any) -> PyTree:
        return self.vjp_fn(x, cotangent, *args)


def _check_cotangent(cotangent: PyTree, out: PyTree) -> None:
    c_leaves, c_def = jax.tree_util.tree_flatten(cotangent)
    o_leaves, o_def = jax.tree_util.tree_flatten(out)
    if c_def != o_def:
        raise ValueError(
            f"`cotangent` must have the structure of f's output, {o_def}, got "
            f"{c_def}. Pass one upstream-gradient array per output array."
        )
    for c, o in zip(c_leaves, o_leaves, strict=True):
        if tuple(np.shape(c)) != tuple(o.shape):
            raise ValueError(
                f"`cotangent` has a leaf of shape {tuple(np.shape(c))} where f's "
                f"output has shape {tuple(o.shape)}. The cotangent (upstream "
                "gradient) has the shape of the output it multiplies."
            )


def check_vjp(
    f: Callable[..., Any],
    x: PyTree,
    cotangent: PyTree | None = None,
    *args: Any,
    vjp_fn: Callable[..., PyTree] | None = None,
    seed: int = 0,
    **check_kwargs: Any,
) -> GradCheckReport:
    """Checks a vector-Jacobian product: a layer's backward pass for an upstream
    gradient.

    ``J(x)^T c`` for the cotangent (upstream gradient) ``c`` is exactly the
    gradient of the scalar ``<c, f(x)>``, so every coordinate of it is checked
    by :func:`jaxcheck.check_grads` against centered differences of
    ``<c, f(x ± h e_i)>``, with per-leaf reports. This is the notes'
    layer-by-layer check: each layer with the gradient that flows into it.

    Never raises on a mismatch: it returns a report.

    Args:
      f: the function, called as ``f(x, *args)``; returns an array or a pytree of
        floating-point arrays.
      x: the input pytree (e.g. a layer's inputs, or ``(inputs, weights)``).
      cotangent: the upstream gradient, shaped like ``f``'s output; ``None``
        draws a standard-normal one from ``seed``.
      *args: held fixed.
      vjp_fn: a hand-written backward pass ``vjp_fn(x, cotangent, *args)``
        returning a pytree shaped like ``x``; default ``jax.vjp`` of ``f`` (which
        runs every ``custom_vjp`` rule inside ``f``).
      seed: seed of the random cotangent and of the coordinate sampling.
      **check_kwargs: passed to :func:`jaxcheck.check_grads` (``coords``,
        ``step``, ``rtol``, ...).

    Returns:
      a :class:`jaxcheck.GradCheckReport` over the leaves of ``x``.

    Raises:
      TypeError: if ``f`` returns non-floating outputs.
      ValueError: if ``cotangent`` does not match ``f``'s output.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxcheck.derivatives import check_vjp
      >>> def layer(inputs):
      ...     x, W = inputs
      ...     return jnp.tanh(x @ W)
      >>> def bad_backward(inputs, g):  # forgot the derivative of tanh
      ...     x, W = inputs
      ...     return (g @ W.T, x.T @ g)
      >>> inputs = (jnp.ones((2, 3)) * 0.3, jnp.eye(3))
      >>> check_vjp(layer, inputs, jnp.ones((2, 3))).passed
      True
      >>> check_vjp(layer, inputs, jnp.ones((2, 3)), vjp_fn=bad_backward).passed
      False
    """
    if not callable(f):
        raise TypeError(f"`f` must be callable as f(x, *args), got {type(f).__name__}.")
    if "grad_fn" in check_kwargs:
        raise TypeError(
            "`check_vjp` takes the hand-written backward pass as `vjp_fn=`, not "
            "`grad_fn=`."
        )
    with jax.enable_x64(True):
        x64 = jax.tree_util.tree_map(_to_x64, x)
        args64 = tuple(jax.tree_util.tree_map(_to_x64, args))
        out = jax.eval_shape(f, x64, *args64)
        _validate_vector_output(out)
        if cotangent is None:
            rng = np.random.default_rng(seed)
            cotangent = jax.tree_util.tree_map(
                lambda o: jnp.asarray(rng.standard_normal(o.shape), jnp.float64), out
            )
        _check_cotangent(cotangent, out)
    report = _check_grads()(
        _CotangentDot(f), x, cotangent, *args,
        grad_fn=None if vjp_fn is None else _UserVjp(vjp_fn), seed=seed,
        **check_kwargs,
    )  # fmt: skip
    norm = math.sqrt(
        sum(float(np.sum(np.square(c))) for c in jax.tree_util.tree_leaves(cotangent))
    )
    return dataclasses.replace(
        report,
        grad_source="jax.vjp" if vjp_fn is None else report.grad_source,
        notes=report.notes
        + (
            f"vector-Jacobian product J^T c with a cotangent c of norm {norm:.4g}, "
            "checked as the gradient of <c, f(x)>.",
        ),
    )


def _check_grads() -> Callable[..., GradCheckReport]:
    """:func:`jaxcheck.check_grads`, imported late (``check.py`` may dispatch here)."""
    from .check import check_grads

    return check_grads


# --------------------------------------------------------------------------- #
# Forward mode.
# --------------------------------------------------------------------------- #


class ForwardModeUnsupportedError(TypeError):
    """Raised by :func:`check_forward_mode` when ``f`` has no forward mode
    (it contains a ``jax.custom_vjp`` function)."""


@dataclasses.dataclass(frozen=True)
class _AsList:
    fn: Callable[..., Any]

    def __call__(self, dyn_params: Sequence[Any], dyn_args: Sequence[Any]) -> list:
        return [self.fn(dyn_params, dyn_args)]


def _mode_support(f: Callable[..., Any], params: PyTree, args: tuple) -> dict[str, str]:
    """``{mode: reason}`` for the modes of autodiff ``f`` does not support.

    Lowers (does not run or compile) a ``jax.jvp`` and a ``jax.grad`` of ``f``.
    """
    out: dict[str, str] = {}
    with jax.enable_x64(True):
        point = _prepare(params, args)
        full = point.fn(f)
        idx = point.checked_dyn
        xs = [point.dyn_params[k] for k in idx]

        def fwd(dp: list, da: list, xs: list) -> Any:
            g = lambda c: full(None, _replace(dp, idx, c), da)  # noqa: E731
            return jax.jvp(g, (xs,), (xs,))

        def rev(dp: list, da: list, xs: list) -> Any:
            return jax.grad(lambda c: full(None, _replace(dp, idx, c), da))(xs)

        for mode, fn in (("fwd", fwd), ("rev", rev)):
            try:
                jax.jit(fn).lower(point.dyn_params, point.dyn_args, xs)
            except (TypeError, ValueError) as e:
                msg = str(e)
                if mode == "fwd" and "custom_vjp" in msg:
                    out[mode] = (
                        "reverse-only: f contains a jax.custom_vjp function, which "
                        "defines no forward mode (jax.jvp raises on it)"
                    )
                elif mode == "rev" and "Reverse-mode differentiation" in msg:
                    out[mode] = f"forward-only: {msg.splitlines()[0]}"
                else:
                    raise
    return out


class _ForwardGrad:
    """A ``grad_fn`` for :func:`jaxcheck.check_grads` computed by ``jax.jvp``.

    Only the coordinates the check selects are computed (one JVP each); the
    other entries are NaN and never read.
    """

    def __init__(self, f: Callable[..., Any], coords: tree.CoordSpec, seed: int):
        self.f = f
        self.coords = coords
        self.seed = seed
        self.__qualname__ = "jax.jvp (forward mode)"

    def __call__(self, params: PyTree, *args: Any) -> PyTree:
        with jax.enable_x64(True):
            point = _prepare(params, args)
            out_fn = _AsList(_ValueOf(point.fn(self.f)))
            _, _, treedef = tree.flatten(params)
            leaves: list[Any] = [None] * point.num_p
            dp, da = point.dyn_params, point.dyn_args
            for info in point.checked:
                idx = tree.select_coords(info, self.coords, self.seed)
                a = point.dyn_pos[info.pos]
                c = _pow2_floor(min(1024, len(idx)))
                vals = []
                for lo in range(0, len(idx), c):
                    part = idx[lo : lo + c]
                    block = np.full(c, part[0], dtype=np.int32)
                    block[: len(part)] = part
                    (col,) = _jvp_columns_jit(
                        out_fn, a, info.shape, jnp.asarray(block), dp, da
                    )
                    vals.append(np.asarray(col, np.float64).reshape(-1)[: len(part)])
                g = np.full(info.size, np.nan)
                g[idx] = np.concatenate(vals)
                leaves[info.pos] = jnp.asarray(g.reshape(info.shape))
            return jax.tree_util.tree_unflatten(treedef, leaves)


def check_forward_mode(
    f: Callable[..., Any],
    params: PyTree,
    *args: Any,
    coords: tree.CoordSpec = "all",
    seed: int = 0,
    **check_kwargs: Any,
) -> GradCheckReport:
    """Checks the forward-mode derivative (``jax.jvp``) of ``f``, coordinate by
    coordinate.

    The analytic derivative of coordinate ``i`` is the JVP of ``f`` with the
    tangent ``e_i`` (a column of ``jax.jacfwd``), which runs ``custom_jvp`` rules
    directly (reverse mode runs their transpose). Otherwise exactly
    :func:`jaxcheck.check_grads`: same coordinates, bar and report.

    Args:
      f: the scalar function, called as ``f(params, *args)``.
      params: any pytree.
      *args: held fixed.
      coords: which coordinates (as in :func:`jaxcheck.check_grads`).
      seed: seed of the coordinate sampling.
      **check_kwargs: passed to :func:`jaxcheck.check_grads` (``step``,
        ``rtol``, ...); ``grad_fn`` is not accepted.

    Returns:
      a :class:`jaxcheck.GradCheckReport` whose ``grad_source`` is
      ``"jax.jvp (forward mode)"``.

    Raises:
      ForwardModeUnsupportedError: (a ``TypeError``) if ``f`` contains a
        ``jax.custom_vjp`` function; use :func:`check_modes`, which reports such
        a function as reverse-only instead.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jaxcheck.derivatives import check_forward_mode
      >>> @jax.custom_jvp
      ... def softplus(x):
      ...     return jnp.log1p(jnp.exp(x))
      >>> @softplus.defjvp
      ... def softplus_jvp(primals, tangents):
      ...     (x,), (t,) = primals, tangents
      ...     return softplus(x), t * jnp.exp(x)  # bug: should be t * sigmoid(x)
      >>> check_forward_mode(lambda p: jnp.sum(softplus(p)), jnp.ones(3)).passed
      False
    """
    if "grad_fn" in check_kwargs:
        raise TypeError(
            "`check_forward_mode` checks jax.jvp of `f` and takes no `grad_fn`; "
            "check a hand-written gradient with `check_grads(..., grad_fn=...)`."
        )
    unsupported = _mode_support(f, params, args).get("fwd")
    if unsupported:
        raise ForwardModeUnsupportedError(
            f"`f` cannot be checked in forward mode: {unsupported}. Use "
            "`check_modes(f, params, ...)`, which reports it as reverse-only, or "
            "check reverse mode alone with `check_grads`."
        )
    return _check_grads()(
        f, params, *args, grad_fn=_ForwardGrad(f, coords, seed), coords=coords,
        seed=seed, **check_kwargs,
    )  # fmt: skip


@dataclasses.dataclass(frozen=True)
class ModesReport:
    """The result of :func:`check_modes`: one gradient check per mode of autodiff.

    Also the result of ``check_grads`` when it runs several kinds of check at
    once (e.g. ``modes=("rev", "fwd"), order=2``): then ``reports`` holds
    ``"order 2"`` too, and ``title`` says so.

    Attributes:
      reports: ``{mode: GradCheckReport}`` for the modes that were checked
        (``"rev"``: ``jax.grad``; ``"fwd"``: ``jax.jvp``; ``"order 2"``: the
        :class:`BlockCheckReport` of :func:`check_second_order`).
      unsupported: ``{mode: reason}`` for requested modes ``f`` does not have
        (a ``custom_vjp`` function is reverse-only). Not a failure.
      title: what the headline calls the check.
      notes: remarks about the whole check (burn-in, datapoints, ...).
    """

    reports: dict[str, GradCheckReport]
    unsupported: dict[str, str]
    title: str = "modes"
    notes: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        """True when every checked mode passed (unsupported modes do not fail)."""
        return all(r.passed for r in self.reports.values())

    @property
    def reverse_only(self) -> bool:
        """True when forward mode was requested but ``f`` has none."""
        return "fwd" in self.unsupported

    def report(self, mode: str) -> GradCheckReport:
        """The report of one mode (``"rev"`` or ``"fwd"``).

        Raises:
          KeyError: if that mode was not checked; the message says why.
        """
        if mode in self.reports:
            return self.reports[mode]
        why = self.unsupported.get(mode, "it was not requested")
        raise KeyError(f"Mode {mode!r} was not checked: {why}.")

    def headline(self) -> str:
        """One line: the verdict of every mode."""
        parts = [
            f"{m} {'passed' if r.passed else 'FAILED'}" for m, r in self.reports.items()
        ]
        parts += [
            f"{m} unsupported ({why.split(':')[0]})"
            for m, why in self.unsupported.items()
        ]
        status = "PASSED" if self.passed else "FAILED"
        return f"jaxcheck: {self.title} check {status}: " + ", ".join(parts) + "."

    def __str__(self) -> str:
        lines = [self.headline()]
        for mode, why in self.unsupported.items():
            lines.append(f"  {mode}: {why}")
        lines.extend(f"  note: {n}" for n in self.notes)
        for mode, r in self.reports.items():
            lines.append(f"--- {mode} ---")
            lines.append(str(r))
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        parts = ["<div>" + html_headline(self.headline(), self.passed)]
        for mode, why in self.unsupported.items():
            parts.append(f"<p><b>{html.escape(mode)}</b>: {html.escape(why)}</p>")
        parts.extend(f"<p>Note: {html.escape(n)}</p>" for n in self.notes)
        for mode, r in self.reports.items():
            parts.append(f"<h4>{html.escape(mode)}</h4>{r._repr_html_()}")
        parts.append("</div>")
        return "".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of the whole report."""
        return {
            "passed": self.passed,
            "reports": {m: r.to_dict() for m, r in self.reports.items()},
            "unsupported": dict(self.unsupported),
            "title": self.title,
            "notes": list(self.notes),
        }


def check_modes(
    f: Callable[..., Any],
    params: PyTree,
    *args: Any,
    modes: Sequence[str] = ("rev", "fwd"),
    **check_kwargs: Any,
) -> ModesReport:
    """Checks the derivative of ``f`` in reverse mode, forward mode, or both.

    ``"rev"`` is :func:`jaxcheck.check_grads` (``jax.grad``, or ``grad_fn`` when
    given); ``"fwd"`` is :func:`check_forward_mode` (``jax.jvp``). A mode ``f``
    does not have is reported, not raised: a function containing a
    ``jax.custom_vjp`` is reverse-only. A wrong ``custom_jvp`` rule fails in both
    modes (reverse mode transposes it). This is what
    ``check_grads(..., modes=("rev", "fwd"))`` runs.

    Args:
      f: the scalar function, called as ``f(params, *args)``.
      params: any pytree.
      *args: held fixed.
      modes: a non-empty subset of ``("rev", "fwd")``.
      **check_kwargs: passed to each check (``coords``, ``step``, ``rtol``, ...);
        ``grad_fn`` applies to ``"rev"`` only.

    Returns:
      a :class:`ModesReport`.

    Raises:
      ValueError: if ``modes`` is empty or names an unknown mode.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jaxcheck.derivatives import check_modes
      >>> @jax.custom_vjp
      ... def square(x):
      ...     return x ** 2
      >>> square.defvjp(lambda x: (x ** 2, x), lambda x, g: (2 * x * g,))
      >>> report = check_modes(lambda p: jnp.sum(square(p)), jnp.ones(3))
      >>> report.passed, report.reverse_only
      (True, True)
    """
    if isinstance(modes, str):
        modes = (modes,)
    modes = tuple(modes)
    if (
        not modes
        or any(m not in ("rev", "fwd") for m in modes)
        or len(set(modes)) != len(modes)
    ):
        raise ValueError(
            f'`modes` must be a non-empty subset of ("rev", "fwd") without repeats, '
            f'got {modes!r}. E.g. modes=("rev", "fwd").'
        )
    support = _mode_support(f, params, args)
    reports: dict[str, GradCheckReport] = {}
    unsupported: dict[str, str] = {}
    fwd_kwargs = {k: v for k, v in check_kwargs.items() if k != "grad_fn"}
    for mode in modes:
        if mode == "rev" and "grad_fn" in check_kwargs:
            reports[mode] = _check_grads()(f, params, *args, **check_kwargs)
        elif mode in support:
            unsupported[mode] = support[mode]
        elif mode == "rev":
            reports[mode] = _check_grads()(f, params, *args, **check_kwargs)
        else:
            reports[mode] = check_forward_mode(f, params, *args, **fwd_kwargs)
    return ModesReport(reports=reports, unsupported=unsupported)


# --------------------------------------------------------------------------- #
# Random directions, the probability of missing a bug, and localisation.
# --------------------------------------------------------------------------- #


def miss_probability(
    relative_error: float, num_directions: int = 1, rtol: float = compare.SMOOTH_RTOL
) -> float:
    """Upper bound on the probability that ``num_directions`` random directions
    all miss a wrong gradient.

    Let the analytic gradient of a leaf be ``a = g + e``, with ``g`` the true
    gradient and ``e`` the error, of relative size ``r = |e| / |g|``. One
    standard-normal direction ``v`` passes when the directional derivatives
    agree within ``rtol``: ``|<e, v>| <= rtol * max(|<a, v>|, |<g, v>|)``. For
    a Gaussian ``v``, ``<e, v>`` and ``<g, v>`` are jointly normal, and the
    probability of passing is at most

        ``max over the part of e along g of (atan((t - α)/s) + atan((t + α)/s)) / π``

    with ``t = rtol / (1 - rtol)``, ``α`` the relative size of ``e``'s component
    along ``g`` and ``s = sqrt(r² - α²)`` the rest; the worst case is an error
    orthogonal to the gradient, where it is ``(2/π) atan(t / r)``. Independent
    directions multiply. The bound assumes exact differences (it ignores
    round-off and truncation, which :func:`check_directions` reports separately).

    Args:
      relative_error: ``|e| / |g|``, the size of the bug relative to the leaf's
        gradient (e.g. ``1.0`` for a gradient off by a whole factor, ``1e-2``
        for a 1% error, ``|e_j| / |g|`` for one wrong entry ``j``).
      num_directions: ``K``, the number of independent directions.
      rtol: the relative-error bar of the check.

    Returns:
      the bound, in ``[0, 1]``.

    Raises:
      ValueError: for a negative ``relative_error``, ``num_directions < 1``, or
        ``rtol`` outside ``(0, 1)``.

    Examples:
      >>> p = miss_probability(1e-2, 1, rtol=1e-7)  # a 1% error, one direction
      >>> round(p / (2 / 3.141592653589793 * 1e-5), 3)  # (2/pi) * atan(1e-5)
      1.0
      >>> miss_probability(1e-6, 4, rtol=1e-4) > 0.9  # an error below the bar
      True
    """
    r = float(relative_error)
    t = float(rtol)
    if not r >= 0:
        raise ValueError(f"`relative_error` must be >= 0, got {relative_error!r}.")
    if not isinstance(num_directions, int) or num_directions < 1:
        raise ValueError(
            f"`num_directions` must be an int >= 1, got {num_directions!r}."
        )
    if not 0.0 < t < 1.0:
        raise ValueError(f"`rtol` must lie in (0, 1), got {rtol!r}.")
    t = t / (1.0 - t)
    if r == 0:
        return 1.0

    def bound(theta: np.ndarray) -> np.ndarray:
        alpha = r * np.sin(theta)
        s = r * np.cos(theta)
        return (np.arctan2(t - alpha, s) + np.arctan2(t + alpha, s)) / np.pi

    # The maximum over the split of e: a grid, then a finer grid around its best.
    theta = np.linspace(0.0, np.pi / 2, 4097)
    best = theta[int(np.argmax(bound(theta)))]
    d = theta[1] - theta[0]
    fine = np.clip(np.linspace(best - d, best + d, 1025), 0.0, np.pi / 2)
    p1 = float(np.clip(max(bound(theta).max(), bound(fine).max()), 0.0, 1.0))
    return p1**num_directions


def directions_for_risk(
    risk: float, relative_error: float = 1e-2, rtol: float = compare.SMOOTH_RTOL
) -> int:
    """The fewest random directions that miss a wrong gradient of relative size
    ``relative_error`` with probability at most ``risk``.

    Args:
      risk: the accepted probability of missing the bug, in ``(0, 1)``.
      relative_error: the smallest bug to catch, ``|e| / |g|`` per leaf.
      rtol: the relative-error bar of the check.

    Returns:
      ``K >= 1``.

    Raises:
      ValueError: if ``risk`` is not in ``(0, 1)``, or ``relative_error`` is so
        small against ``rtol`` that no number of directions reaches ``risk``.

    Examples:
      >>> directions_for_risk(1e-6, relative_error=1e-2, rtol=1e-7)
      2
      >>> directions_for_risk(1e-3, relative_error=1e-3, rtol=1e-4)
      3
    """
    if not 0.0 < float(risk) < 1.0:
        raise ValueError(
            f"`risk` must lie in (0, 1), got {risk!r}: it is the probability of "
            "missing a bug that you accept, e.g. 1e-6."
        )
    p1 = miss_probability(relative_error, 1, rtol)
    if p1 == 0.0:
        return 1
    if p1 >= 1.0:
        raise ValueError(
            f"A bug of relative size {relative_error!r} is not above the bar "
            f"rtol={rtol!r}, so no number of directions catches it. Choose a larger "
            "`relative_error` or a smaller `rtol`."
        )
    return max(1, math.ceil(math.log(risk) / math.log(p1) - 1e-12))


def _group_values(
    fn: engine.LeafFunction,
    x: jax.Array,
    g: jax.Array,
    v: jax.Array,
    rows: jax.Array,
    lo: jax.Array,
    hi: jax.Array,
    h: jax.Array,
    dyn_params: list,
    dyn_args: list,
) -> tuple[jax.Array, ...]:
    """For each group ``(row, lo, hi)``: the unit direction ``w`` = ``v[row]``
    restricted to ``[lo, hi)``, ``f(x ± h w)``, ``<g, d>`` and ``|d|`` with
    ``d = (x + h w) - (x - h w)``, and the norm of the restriction."""
    ar = jnp.arange(x.shape[0])

    def one(r: jax.Array, a: jax.Array, b: jax.Array) -> tuple[jax.Array, ...]:
        restricted = jnp.where((ar >= a) & (ar < b), v[r], 0.0)
        norm = jnp.linalg.norm(restricted)
        w = restricted / norm
        xp = x + h * w
        xm = x - h * w
        d = xp - xm
        return (
            fn(xp, dyn_params, dyn_args),
            fn(xm, dyn_params, dyn_args),
            jnp.vdot(g, d),
            jnp.linalg.norm(d),
            norm,
        )

    return jax.vmap(one)(rows, lo, hi)


_group_values_jit = jax.jit(_group_values, static_argnums=0)


@dataclasses.dataclass(frozen=True)
class DirectionResult:
    """One random direction of one leaf.

    Attributes:
      analytic: ``<a, w>``, the analytic directional derivative along the unit
        direction ``w``.
      numeric: ``(f(x + h w) - f(x - h w)) / |2 h w|``.
      rel_error: ``|analytic - numeric| / max(|analytic|, |numeric|)``.
      verdict: ``"ok"``, ``"wrong"`` or ``"untestable"``.
    """

    analytic: float
    numeric: float
    rel_error: float
    verdict: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class DirectionLeafReport:
    """The random-direction check of one leaf, and the localisation of its bugs.

    Attributes:
      path: ``jax.tree_util.keystr`` of the leaf.
      shape: the leaf's shape.
      dtype: the caller's dtype of the leaf.
      directions: one result per random direction.
      localized: the coordinates found wrong by bisection (analytic and numeric
        are the plain coordinate derivatives), worst first.
      localization: ``"not needed"``, ``"off"``, ``"complete"`` or
        ``"incomplete: <why>"``.
      num_evaluations: evaluations of ``f`` spent on this leaf (2 per direction
        and 2 per group tested while bisecting).
      seconds: time spent on this leaf.
    """

    path: str
    shape: tuple[int, ...]
    dtype: str
    directions: tuple[DirectionResult, ...]
    localized: tuple[CoordResult, ...]
    localization: str
    num_evaluations: int
    seconds: float = 0.0

    @property
    def size(self) -> int:
        return int(math.prod(self.shape))

    @property
    def num_wrong_directions(self) -> int:
        return sum(d.verdict == "wrong" for d in self.directions)

    @property
    def max_rel_error(self) -> float:
        return max((d.rel_error for d in self.directions), default=0.0)

    @property
    def passed(self) -> bool:
        """True when no direction and no localised coordinate is wrong."""
        return self.num_wrong_directions == 0 and not self.localized

    @property
    def verdict(self) -> str:
        if not self.passed:
            return "FAIL"
        if self.directions and all(d.verdict == "untestable" for d in self.directions):
            return "UNTESTABLE"
        return "ok"

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "passed": self.passed,
            "max_rel_error": self.max_rel_error,
            "num_wrong_directions": self.num_wrong_directions,
            "directions": [d.to_dict() for d in self.directions],
            "localized": [c.to_dict() for c in self.localized],
            "localization": self.localization,
            "num_evaluations": self.num_evaluations,
            "seconds": self.seconds,
        }


@dataclasses.dataclass(frozen=True)
class DirectionsReport:
    """The result of :func:`check_directions`.

    Attributes:
      leaves: one :class:`DirectionLeafReport` per checked leaf.
      skipped: the leaves that were not checked, with reasons.
      num_directions: ``K``, random directions per leaf.
      rtol: the relative-error bar.
      bar_reason: why that bar.
      step: the step ``h`` along each unit direction.
      seed: seed of the directions.
      error_size: the bug size (relative to a leaf's gradient) for which
        :attr:`miss_probability` is stated.
      miss_probability: upper bound on the probability that a bug of relative
        size ``error_size`` in one leaf passes all ``K`` directions.
      grad_source: ``"jax.grad"`` or the user's gradient function.
      f_value: ``f`` at the point.
      device: the device the check ran on.
      seconds: wall time of the whole check.
      notes: remarks the reader should see.
    """

    leaves: tuple[DirectionLeafReport, ...]
    skipped: tuple[SkippedLeaf, ...]
    num_directions: int
    rtol: float
    bar_reason: str
    step: float
    seed: int
    error_size: float
    miss_probability: float
    grad_source: str = "jax.grad"
    f_value: float = math.nan
    device: str = ""
    seconds: float = 0.0
    notes: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        """True when no direction of any leaf is wrong."""
        return all(leaf.passed for leaf in self.leaves)

    @property
    def failures(self) -> tuple[DirectionLeafReport, ...]:
        return tuple(leaf for leaf in self.leaves if not leaf.passed)

    @property
    def num_evaluations(self) -> int:
        """Evaluations of ``f`` the check spent (besides one at the point)."""
        return sum(leaf.num_evaluations for leaf in self.leaves)

    @property
    def full_check_evaluations(self) -> int:
        """Evaluations a full coordinate-by-coordinate check would need."""
        return 2 * sum(leaf.size for leaf in self.leaves)

    def leaf(self, path: str) -> DirectionLeafReport:
        """The report of the leaf at ``path``.

        Raises:
          KeyError: if no checked leaf has that path.
        """
        for leaf in self.leaves:
            if leaf.path == path:
                return leaf
        raise KeyError(
            f"No checked leaf at path {path!r}; checked: "
            f"{[leaf.path for leaf in self.leaves]}."
        )

    def headline(self) -> str:
        """One line: the verdict, the evaluations spent, the localised bugs."""
        status = "PASSED" if self.passed else "FAILED"
        n_loc = sum(len(leaf.localized) for leaf in self.leaves)
        text = (
            f"jaxcheck: direction check {status}: {_plural(len(self.leaves), 'leaf', 'leaves')}"
            f" x {self.num_directions} random directions, "
            f"{self.num_evaluations:,} evaluations of f (a full check: "
            f"{self.full_check_evaluations:,})"
        )
        if not self.passed:
            text += (
                f"; {_plural(len(self.failures), 'leaf', 'leaves')} wrong, "
                f"{_plural(n_loc, 'coordinate')} localised"
            )
        return text + "."

    _HEADER = (
        "leaf", "shape", "dtype", "directions", "max rel err", "wrong dirs",
        "localised", "evaluations", "verdict",
    )  # fmt: skip

    def _rows(self) -> list[list[str]]:
        return [
            [
                leaf.path or "(root)",
                str(leaf.shape),
                leaf.dtype,
                str(len(leaf.directions)),
                _fmt_e(leaf.max_rel_error),
                str(leaf.num_wrong_directions),
                str(len(leaf.localized)),
                f"{leaf.num_evaluations:,}",
                leaf.verdict,
            ]
            for leaf in self.leaves
        ]

    def format(self) -> str:
        """The report as text."""
        lines = [self.headline()]
        lines.append(
            f"  unit directions, h={self.step:g}, float64, gradient from "
            f"{self.grad_source}, f={self.f_value:.6g}, seed={self.seed}, on {self.device}"
        )
        lines.append(f"  bar: relative error <= {self.rtol:g} ({self.bar_reason})")
        lines.append(
            f"  a bug of relative size {self.error_size:g} in a leaf passes all "
            f"{self.num_directions} directions with probability <= "
            f"{self.miss_probability:.2g}"
        )
        lines.extend(text_table([list(self._HEADER), *self._rows()]))
        for s in self.skipped:
            lines.append(f"  skipped {s.path} ({s.dtype}): {s.reason}")
        for leaf in self.failures:
            lines.append(f"  {leaf.path or '(root)'}: localisation {leaf.localization}")
            for c in leaf.localized:
                idx = "[" + ", ".join(str(i) for i in c.index) + "]"
                lines.append(
                    f"    {leaf.path}{idx}  analytic={c.analytic:+.6e}  "
                    f"numeric={c.numeric:+.6e}  rel={_fmt_e(c.rel_error)}  {c.verdict}"
                )
        for note in self.notes:
            lines.append(f"  note: {note}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()

    def _repr_html_(self) -> str:
        esc = html.escape
        parts = [
            "<div>" + html_headline(self.headline(), self.passed),
            f"<p>h={self.step:g}; bar: relative error &le; {self.rtol:g}; a bug of "
            f"relative size {self.error_size:g} passes with probability &le; "
            f"{self.miss_probability:.2g}</p><table><thead><tr>",
            "".join(f"<th>{esc(h)}</th>" for h in self._HEADER),
            "</tr></thead><tbody>",
        ]
        for leaf, row in zip(self.leaves, self._rows(), strict=True):
            style = "" if leaf.passed else ' style="background:#ffebee"'
            parts.append(
                f"<tr{style}>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>"
            )
        parts.append("</tbody></table>")
        for leaf in self.failures:
            parts.append(
                f"<p>Localised in <code>{esc(leaf.path)}</code> "
                f"({esc(leaf.localization)}):</p><ul>"
            )
            for c in leaf.localized:
                idx = "[" + ", ".join(str(i) for i in c.index) + "]"
                parts.append(
                    f"<li><code>{esc(leaf.path + idx)}</code> analytic={c.analytic:+.6e} "
                    f"numeric={c.numeric:+.6e} rel={_fmt_e(c.rel_error)}</li>"
                )
            parts.append("</ul>")
        parts.extend(f"<p>Note: {esc(n)}</p>" for n in self.notes)
        parts.append("</div>")
        return "".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of the whole report."""
        return {
            "passed": self.passed,
            "num_directions": self.num_directions,
            "rtol": self.rtol,
            "bar_reason": self.bar_reason,
            "step": self.step,
            "seed": self.seed,
            "error_size": self.error_size,
            "miss_probability": self.miss_probability,
            "grad_source": self.grad_source,
            "f_value": self.f_value,
            "device": self.device,
            "seconds": self.seconds,
            "num_evaluations": self.num_evaluations,
            "full_check_evaluations": self.full_check_evaluations,
            "leaves": [leaf.to_dict() for leaf in self.leaves],
            "skipped": [s.to_dict() for s in self.skipped],
            "notes": list(self.notes),
        }


class _GroupTester:
    """Evaluates groups of one leaf in vmapped batches and counts evaluations."""

    def __init__(
        self,
        fn: engine.LeafFunction,
        x: jax.Array,
        g: jax.Array,
        v: jax.Array,
        step: float,
        dyn_params: list,
        dyn_args: list,
        f0: float,
        eps: float,
        bar: compare.Bar,
        budget: int,
    ):
        self.fn, self.x, self.g, self.v = fn, x, g, v
        self.h = jnp.asarray(step, jnp.float64)
        self.dp, self.da = dyn_params, dyn_args
        self.f0, self.eps, self.bar = f0, eps, bar
        n = int(x.shape[0])
        self.max_batch = _pow2_floor(max(1, budget // (8 * 8 * max(n, 1))))
        self.evaluations = 0

    def __call__(self, rows: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> dict:
        m = len(rows)
        outs: list[list[np.ndarray]] = [[] for _ in range(5)]
        for start in range(0, m, self.max_batch):
            stop = min(m, start + self.max_batch)
            b = min(self.max_batch, 1 << max(0, (stop - start - 1).bit_length()))
            pad = np.zeros((3, b), np.int32)
            pad[0, : stop - start] = rows[start:stop]
            pad[1, : stop - start] = lo[start:stop]
            pad[2, : stop - start] = hi[start:stop]
            pad[:, stop - start :] = pad[:, :1]
            res = _group_values_jit(
                self.fn, self.x, self.g, self.v, jnp.asarray(pad[0]),
                jnp.asarray(pad[1]), jnp.asarray(pad[2]), self.h, self.dp, self.da,
            )  # fmt: skip
            for k in range(5):
                outs[k].append(np.asarray(res[k], np.float64)[: stop - start])
        self.evaluations += 2 * m
        fp, fm, gd, dlen, vnorm = (np.concatenate(o) for o in outs)
        analytic = gd / dlen
        numeric = (fp - fm) / dlen
        scale = np.maximum(np.maximum(np.abs(fp), np.abs(fm)), abs(self.f0))
        noise = self.bar.noise_factor * self.eps * scale / dlen
        return {
            "analytic": analytic,
            "numeric": numeric,
            "rel": compare.relative_error(analytic, numeric),
            "codes": compare.verdicts(analytic, numeric, noise, self.bar.rtol),
            "err": (analytic - numeric) * vnorm,
            "noise": noise * vnorm,
            "fp": fp,
            "fm": fm,
        }


def _localize(
    tester: _GroupTester,
    row: int,
    n: int,
    v_row: np.ndarray,
    shape: tuple[int, ...],
    top: dict,
    k: int,
    max_groups: int,
) -> tuple[list[CoordResult], str]:
    """Bisects the coordinates of a leaf whose direction ``row`` failed."""
    found: list[CoordResult] = []

    def record(j: int, res: dict, e: int) -> None:
        sign = 1.0 if v_row[j] >= 0 else -1.0
        found.append(
            CoordResult(
                index=tree.unravel(j, shape),
                analytic=float(sign * res["analytic"][e]),
                numeric=float(sign * res["numeric"][e]),
                rel_error=float(res["rel"][e]),
                verdict="wrong",
                f_plus=float(res["fp"][e] if sign > 0 else res["fm"][e]),
                f_minus=float(res["fm"][e] if sign > 0 else res["fp"][e]),
            )
        )

    if n == 1:
        record(0, top, k)
        return found, "complete"
    frontier = [(0, n, float(top["err"][k]))]
    while frontier:
        if len(frontier) > max_groups:
            size = frontier[0][1] - frontier[0][0]
            return found, (
                f"incomplete: {len(frontier)} groups of about {size:,} coordinates "
                f"were still wrong (more than max_groups={max_groups}): the error is "
                "spread over many coordinates (e.g. a whole leaf off by a factor), "
                "not a few wrong entries; check this leaf with check_grads"
            )
        children = []
        for lo, hi, err in frontier:
            mid = (lo + hi) // 2
            children += [(lo, mid, err), (mid, hi, err)]
        lo_a = np.array([c[0] for c in children])
        hi_a = np.array([c[1] for c in children])
        res = tester(np.full(len(children), row), lo_a, hi_a)
        frontier = []
        for e, (lo, hi, parent_err) in enumerate(children):
            wrong = res["codes"][e] == compare.WRONG
            carries = (
                abs(res["err"][e]) >= _FOLLOW_FRACTION * abs(parent_err)
                and abs(res["err"][e]) > res["noise"][e]
            )
            if hi - lo == 1:
                if wrong:
                    record(lo, res, e)
            elif wrong or carries:
                frontier.append((lo, hi, float(res["err"][e])))
    found.sort(key=lambda c: -c.rel_error)
    return found, "complete"


def check_directions(
    f: Callable[..., Any],
    params: PyTree,
    *args: Any,
    num: int | None = None,
    risk: float | None = None,
    error_size: float = 1e-2,
    grad_fn: Callable[..., PyTree] | None = None,
    step: float = 1e-5,
    seed: int = 0,
    rtol: float | None = None,
    noise_factor: float | None = None,
    localize: bool = True,
    max_groups: int = 32,
    memory_budget: int | None = None,
) -> DirectionsReport:
    """Checks ``num`` random directions per leaf, and localises the wrong
    coordinates of a failing leaf by bisection.

    For each leaf and each of ``K`` standard-normal unit directions ``w``, the
    centered difference ``(f(x + h w) - f(x - h w)) / |2 h w|`` is compared with
    the analytic ``<a, w>``: ``2 K`` evaluations of ``f`` per leaf instead of two
    per coordinate (like torch's ``fast_mode`` and ``jax.test_util.check_grads``,
    but per leaf). When a direction fails, the leaf's coordinates are split in
    halves and the same direction, restricted to each half, is checked; halves
    that still fail (or still carry most of the error) are split again, down to
    single coordinates. One wrong entry of a leaf of ``N`` entries is found with
    about ``4 log2(N)`` evaluations instead of ``2 N``.

    The report states the probability that a bug of relative size
    ``error_size`` passes (:func:`miss_probability`); give ``risk`` instead of
    ``num`` to choose ``K`` from the risk you accept
    (:func:`directions_for_risk`). Never raises on a mismatch.

    Args:
      f: the scalar function, called as ``f(params, *args)``.
      params: any pytree; floating-point array leaves are checked in float64.
      *args: held fixed.
      num: ``K``, directions per leaf (default 4).
      risk: instead of ``num``: the accepted probability that a bug of relative
        size ``error_size`` goes unnoticed in a leaf.
      error_size: the bug size, relative to a leaf's gradient norm, that
        ``risk`` and the reported probability refer to.
      grad_fn: a hand-written gradient ``grad_fn(params, *args)``; default
        ``jax.grad(f)``.
      step: the step ``h`` along each unit direction.
      seed: seed of the directions.
      rtol: the relative-error bar (default ``1e-7``).
      noise_factor: the round-off allowance in units of ``eps * |f| / h``.
      localize: bisect failing leaves to find the wrong coordinates.
      max_groups: stop bisecting a leaf when more groups than this are wrong at
        once (the error is then spread out: use :func:`jaxcheck.check_grads`).
      memory_budget: bytes one batch of perturbed copies of a leaf may use.

    Returns:
      a :class:`DirectionsReport`; ``report.num_evaluations`` against
      ``report.full_check_evaluations`` says what was saved.

    Raises:
      TypeError: if ``f`` does not return a real floating-point scalar.
      ValueError: for invalid options (both ``num`` and ``risk``, ``num < 1``).

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxcheck.derivatives import check_directions
      >>> f = lambda w: jnp.sum(jnp.sin(w) * jnp.arange(1000.0) / 1000)
      >>> def grad_with_one_bug(w):
      ...     g = jnp.cos(w) * jnp.arange(1000.0) / 1000
      ...     return g.at[321].multiply(1.01)
      >>> report = check_directions(f, jnp.ones(1000), grad_fn=grad_with_one_bug)
      >>> report.passed, [c.index for c in report.leaves[0].localized]
      (False, [(321,)])
      >>> report.num_evaluations < 100 < report.full_check_evaluations
      True
    """
    validate_callables(f, grad_fn)
    _validate_common(step, 0, None)
    bar = compare.default_bar(rtol, noise_factor)
    if num is not None and risk is not None:
        raise ValueError(
            f"Pass either `num` (directions per leaf) or `risk` (the accepted "
            f"probability of missing a bug), not both; got num={num!r}, risk={risk!r}."
        )
    if risk is not None:
        num = directions_for_risk(risk, error_size, bar.rtol)
    elif num is None:
        num = 4
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise ValueError(f"`num` must be an int >= 1 directions per leaf, got {num!r}.")
    if not isinstance(max_groups, int) or max_groups < 1:
        raise ValueError(f"`max_groups` must be an int >= 1, got {max_groups!r}.")
    budget = _BATCH_BUDGET * 4 if memory_budget is None else int(memory_budget)
    t_start = time.perf_counter()
    with jax.enable_x64(True):
        point = _prepare(params, args)
        full = point.fn(f)
        dp, da = point.dyn_params, point.dyn_args
        out = jax.eval_shape(full, None, dp, da)
        _scalar_output(out)
        eps = float(jnp.finfo(out.dtype).eps)
        f0 = float(_value_jit(_ValueOf(full), dp, da))
        checked = point.checked
        if grad_fn is None:
            grads = _value_jit(_GradOf(full, point.checked_dyn), dp, da)
            source = "jax.grad"
        else:
            grads = _UserGradOf(grad_fn, full, tuple(i.path for i in checked))(dp, da)
            source = _callable_name(grad_fn)
        leaves = []
        for info, g in zip(checked, grads, strict=True):
            t0 = time.perf_counter()
            if tuple(np.shape(g)) != info.shape:
                raise ValueError(
                    f"`grad_fn` ({source}) returned shape {tuple(np.shape(g))} for "
                    f"leaf {info.path}, which has shape {info.shape}."
                )
            a = point.dyn_pos[info.pos]
            x = dp[a].reshape(-1)
            n = int(x.shape[0])
            rng = np.random.default_rng([int(seed), info.pos])
            v_host = rng.standard_normal((num, n))
            tester = _GroupTester(
                point.fn(f, info.pos, info.shape), x,
                jnp.asarray(g, jnp.float64).reshape(-1), jnp.asarray(v_host),
                float(step), dp, da, f0, eps, bar, budget,
            )  # fmt: skip
            top = tester(np.arange(num), np.zeros(num, int), np.full(num, n))
            directions = tuple(
                DirectionResult(
                    analytic=float(top["analytic"][k]),
                    numeric=float(top["numeric"][k]),
                    rel_error=float(top["rel"][k]),
                    verdict=compare.VERDICT_NAMES[top["codes"][k]],
                )
                for k in range(num)
            )
            wrong = np.flatnonzero(top["codes"] == compare.WRONG)
            localized: list[CoordResult] = []
            status = "not needed"
            if len(wrong) and not localize:
                status = "off"
            elif len(wrong):
                k = int(wrong[np.argmax(top["rel"][wrong])])
                localized, status = _localize(
                    tester, k, n, v_host[k], info.shape, top, k, max_groups
                )
            leaves.append(
                DirectionLeafReport(
                    path=info.path,
                    shape=info.shape,
                    dtype=info.dtype,
                    directions=directions,
                    localized=tuple(localized),
                    localization=status,
                    num_evaluations=tester.evaluations,
                    seconds=time.perf_counter() - t0,
                )
            )
    notes = []
    if any(leaf.verdict == "UNTESTABLE" for leaf in leaves):
        notes.append(
            "some leaves had every direction within round-off noise: their "
            "gradients are tiny against |f|; scale the loss up or use a larger step."
        )
    return DirectionsReport(
        leaves=tuple(leaves),
        skipped=point.skipped,
        num_directions=num,
        rtol=bar.rtol,
        bar_reason=bar.reason,
        step=float(step),
        seed=seed,
        error_size=float(error_size),
        miss_probability=miss_probability(error_size, num, bar.rtol),
        grad_source=source,
        f_value=f0,
        device=_device(),
        seconds=time.perf_counter() - t_start,
        notes=tuple(notes),
    )


# --------------------------------------------------------------------------- #
# Several points at once.
# --------------------------------------------------------------------------- #


def stack_points(points: Sequence[PyTree]) -> PyTree:
    """Stacks parameter pytrees of one structure into one with a leading axis.

    Args:
      points: a non-empty sequence of pytrees with identical structure and shapes.

    Returns:
      one pytree whose array leaves have a new leading axis of ``len(points)``,
      as :func:`check_points` takes.

    Raises:
      ValueError: if ``points`` is empty or the structures differ.

    Examples:
      >>> import jax.numpy as jnp
      >>> stacked = stack_points([{"w": jnp.ones(3)}, {"w": jnp.zeros(3)}])
      >>> stacked["w"].shape
      (2, 3)
    """
    points = list(points)
    if not points:
        raise ValueError("`points` must hold at least one parameter pytree, got none.")
    structs = [jax.tree_util.tree_structure(p) for p in points]
    for i, s in enumerate(structs[1:], start=1):
        if s != structs[0]:
            raise ValueError(
                f"`points[{i}]` has structure {s}, but `points[0]` has {structs[0]}. "
                "Every point must be the same pytree with the same shapes."
            )
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *points)


def _points_fd(
    fn: engine.LeafFunction,
    a: int,
    idx: jax.Array,
    h: jax.Array,
    dyn_params_b: list,
    dyn_args: list,
) -> tuple[jax.Array, jax.Array]:
    def per_point(dp: list) -> tuple[jax.Array, jax.Array]:
        x_flat = dp[a].reshape(-1)

        def one(i: jax.Array) -> tuple[jax.Array, jax.Array]:
            xi = x_flat[i]
            return (
                fn(x_flat.at[i].set(xi + h), dp, dyn_args),
                fn(x_flat.at[i].set(xi - h), dp, dyn_args),
            )

        return jax.vmap(one)(idx)

    return jax.vmap(per_point)(dyn_params_b)


_points_fd_jit = jax.jit(_points_fd, static_argnums=(0, 1))


def _points_apply(fn: Callable[..., Any], dyn_params_b: list, dyn_args: list) -> Any:
    return jax.vmap(lambda dp: fn(dp, dyn_args))(dyn_params_b)


_points_apply_jit = jax.jit(_points_apply, static_argnums=0)


@dataclasses.dataclass(frozen=True)
class MultiPointReport:
    """The result of :func:`check_points`: one gradient check per parameter point.

    Attributes:
      reports: one :class:`jaxcheck.GradCheckReport` per point, in order.
      seconds: wall time of the whole check.
    """

    reports: tuple[GradCheckReport, ...]
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        """True when every point passed."""
        return all(r.passed for r in self.reports)

    @property
    def failed_points(self) -> tuple[int, ...]:
        """Indices of the points with a wrong coordinate."""
        return tuple(i for i, r in enumerate(self.reports) if not r.passed)

    def headline(self) -> str:
        """One line: the verdict and the worst point."""
        status = "PASSED" if self.passed else "FAILED"
        n = sum(r.num_checked for r in self.reports)
        text = (
            f"jaxcheck: multi-point check {status}: {_plural(len(self.reports), 'point')}, "
            f"{_plural(n, 'coordinate')} in all"
        )
        if not self.passed:
            text += f", {len(self.failed_points)} failing"
        if self.reports:
            worst = max(
                range(len(self.reports)), key=lambda i: self.reports[i].max_rel_error
            )
            text += (
                f"; worst relative error {_fmt_e(self.reports[worst].max_rel_error)} "
                f"at point {worst}"
            )
        return text + "."

    def _rows(self) -> list[list[str]]:
        return [
            [
                str(i),
                f"{r.f_value:.6g}",
                str(r.num_checked),
                _fmt_e(r.max_rel_error),
                str(r.num_wrong),
                str(r.num_untestable),
                "ok" if r.passed else "FAIL",
            ]
            for i, r in enumerate(self.reports)
        ]

    _HEADER = ("point", "f", "checked", "max rel err", "wrong", "untestable", "verdict")

    def __str__(self) -> str:
        lines = [self.headline(), *text_table([list(self._HEADER), *self._rows()])]
        for i in self.failed_points:
            lines.append(f"--- point {i} ---")
            lines.append(self.reports[i].failure_message())
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        esc = html.escape
        parts = [
            "<div>" + html_headline(self.headline(), self.passed),
            "<table><thead><tr>",
            "".join(f"<th>{esc(h)}</th>" for h in self._HEADER),
            "</tr></thead><tbody>",
        ]
        for r, row in zip(self.reports, self._rows(), strict=True):
            style = "" if r.passed else ' style="background:#ffebee"'
            parts.append(
                f"<tr{style}>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>"
            )
        parts.append("</tbody></table></div>")
        return "".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of the whole report."""
        return {
            "passed": self.passed,
            "failed_points": list(self.failed_points),
            "seconds": self.seconds,
            "points": [r.to_dict() for r in self.reports],
        }


def _coord_leaf_report(
    info: tree.LeafInfo,
    indices: np.ndarray,
    a: np.ndarray,
    fp: np.ndarray,
    fm: np.ndarray,
    f0: float,
    x_host: np.ndarray,
    step: float,
    eps: float,
    bar: compare.Bar,
    max_worst: int,
    chunk: int,
    seconds: float,
) -> LeafReport:
    h_real = (x_host + step) - (x_host - step)
    numeric = (fp - fm) / h_real
    rel = compare.relative_error(a, numeric)
    scale = np.maximum(np.maximum(np.abs(fp), np.abs(fm)), abs(f0))
    codes = compare.verdicts(
        a, numeric, bar.noise_factor * eps * scale / h_real, bar.rtol
    )
    order = np.lexsort((-rel, -(codes == compare.WRONG).astype(np.int8)))
    worst = tuple(
        CoordResult(
            index=tree.unravel(indices[j], info.shape),
            analytic=float(a[j]),
            numeric=float(numeric[j]),
            rel_error=float(rel[j]),
            verdict=compare.VERDICT_NAMES[codes[j]],
            f_plus=float(fp[j]),
            f_minus=float(fm[j]),
        )
        for j in order[:max_worst]
    )
    return LeafReport(
        path=info.path,
        shape=info.shape,
        dtype=info.dtype,
        num_checked=len(indices),
        max_rel_error=float(rel.max()) if len(rel) else 0.0,
        band_counts=compare.band_counts(rel),
        num_ok=int((codes == compare.OK).sum()),
        num_wrong=int((codes == compare.WRONG).sum()),
        num_untestable=int((codes == compare.UNTESTABLE).sum()),
        worst=worst,
        step=step,
        chunk_size=chunk,
        seconds=seconds,
    )


def check_points(
    f: Callable[..., Any],
    params_batch: PyTree,
    *args: Any,
    coords: tree.CoordSpec = 8,
    grad_fn: Callable[..., PyTree] | None = None,
    step: float = 1e-5,
    seed: int = 0,
    rtol: float | None = None,
    noise_factor: float | None = None,
    max_worst: int = 5,
    chunk_size: int | None = None,
) -> MultiPointReport:
    """Checks the gradient at several parameter points at once, vmapped over them.

    A check at one point can pass a wrong gradient; checking a batch of points
    (several initialisations, points along a training run) in one compiled,
    vmapped call fills an accelerator. Every point checks the same coordinates
    (``coords`` per leaf, sampled with ``seed``) by centered differences against
    ``jax.vmap(jax.grad(f))`` (or ``grad_fn`` at each point), with the bar and
    verdicts of :func:`jaxcheck.check_grads`. Never raises on a mismatch.

    Args:
      f: the scalar function, called as ``f(params, *args)`` for one point.
      params_batch: the points, stacked: every array leaf has a leading axis of
        the number of points (see :func:`stack_points`).
      *args: held fixed, shared by every point.
      coords: coordinates per leaf and point (as in :func:`jaxcheck.check_grads`;
        default 8).
      grad_fn: a hand-written gradient, called at each point.
      step: the step ``h``.
      seed: seed of the coordinate sampling.
      rtol: the relative-error bar (default ``1e-7``).
      noise_factor: the round-off allowance in units of ``eps * |f| / h``.
      max_worst: worst coordinates kept per leaf and point.
      chunk_size: coordinates per vmapped batch.

    Returns:
      a :class:`MultiPointReport` with one :class:`jaxcheck.GradCheckReport` per
      point.

    Raises:
      ValueError: if the array leaves of ``params_batch`` do not share a leading
        axis, or for invalid options.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxcheck.derivatives import check_points, stack_points
      >>> loss = lambda p: jnp.sum(jnp.tanh(p["w"]) ** 2)
      >>> points = stack_points([{"w": jnp.full(3, s)} for s in (0.1, 0.5, 2.0)])
      >>> report = check_points(loss, points)
      >>> report.passed, len(report.reports)
      (True, 3)
    """
    validate_callables(f)
    _validate_common(step, max_worst, chunk_size)
    bar = compare.default_bar(rtol, noise_factor)
    t_start = time.perf_counter()
    with jax.enable_x64(True):
        b_leaves, b_paths, _ = tree.flatten(params_batch)
        sizes = {
            (p, int(np.shape(v)[0]) if np.ndim(v) else None)
            for v, p in zip(b_leaves, b_paths, strict=True)
            if _is_array(v)
        }
        counts = {n for _, n in sizes}
        if not counts or None in counts or len(counts) != 1:
            raise ValueError(
                "Every array leaf of `params_batch` must have the same leading axis "
                f"(one entry per point); got leading sizes "
                f"{sorted((p, n) for p, n in sizes)}. Build it with "
                "`stack_points([params_0, params_1, ...])`."
            )
        num_points = counts.pop()
        first = jax.tree_util.tree_map(
            lambda v: v[0] if _is_array(v) else v,
            params_batch,
            is_leaf=lambda x: x is None,
        )
        point = _prepare(first, args)
        dpb = [
            _to_x64(v) if info.checked else jnp.asarray(v)
            for v, info in zip(b_leaves, point.infos, strict=True)
            if _is_array(v)
        ]
        da = point.dyn_args
        full = point.fn(f)
        out = jax.eval_shape(full, None, point.dyn_params, da)
        _scalar_output(out)
        eps = float(jnp.finfo(out.dtype).eps)
        f0 = np.asarray(_points_apply_jit(_ValueOf(full), dpb, da), np.float64)
        checked = point.checked
        if grad_fn is None:
            grads = [
                np.asarray(g, np.float64).reshape(num_points, -1)
                for g in _points_apply_jit(_GradOf(full, point.checked_dyn), dpb, da)
            ]
            source = "jax.vmap(jax.grad)"
        else:
            user = _UserGradOf(grad_fn, full, tuple(i.path for i in checked))
            per = [user([v[p] for v in dpb], da) for p in range(num_points)]
            grads = [
                np.stack(
                    [
                        np.asarray(per[p][k], np.float64).reshape(-1)
                        for p in range(num_points)
                    ]
                )
                for k in range(len(checked))
            ]
            source = _callable_name(grad_fn)
        h = jnp.asarray(step, jnp.float64)
        leaf_parts: list[list[LeafReport]] = [[] for _ in range(num_points)]
        for k, info in enumerate(checked):
            t0 = time.perf_counter()
            a = point.dyn_pos[info.pos]
            indices = tree.select_coords(info, coords, seed)
            if chunk_size is None:
                c = _pow2_floor(
                    max(1, _BATCH_BUDGET // (16 * num_points * max(info.size, 1)))
                )
                c = min(c, 256)
            else:
                c = chunk_size
            c = max(1, min(c, _pow2_floor(len(indices))))
            fn = point.fn(f, info.pos, info.shape)
            fps, fms = [], []
            for lo in range(0, len(indices), c):
                part = indices[lo : lo + c]
                block = np.full(c, part[0], dtype=np.int32)
                block[: len(part)] = part
                fp, fm = _points_fd_jit(fn, a, jnp.asarray(block), h, dpb, da)
                fps.append(np.asarray(fp, np.float64)[:, : len(part)])
                fms.append(np.asarray(fm, np.float64)[:, : len(part)])
            fp_all, fm_all = np.concatenate(fps, axis=1), np.concatenate(fms, axis=1)
            x_all = np.asarray(dpb[a], np.float64).reshape(num_points, -1)
            seconds = (time.perf_counter() - t0) / num_points
            for p in range(num_points):
                leaf_parts[p].append(
                    _coord_leaf_report(
                        info,
                        indices,
                        grads[k][p][indices],
                        fp_all[p],
                        fm_all[p],
                        float(f0[p]),
                        x_all[p][indices],
                        float(step),
                        eps,
                        bar,
                        max_worst,
                        c,
                        seconds,
                    )  # fmt: skip
                )
    device = _device()
    reports = tuple(
        GradCheckReport(
            leaves=tuple(leaf_parts[p]),
            skipped=point.skipped,
            rtol=bar.rtol,
            bar_reason=bar.reason,
            step=float(step),
            grad_source=source,
            f_value=float(f0[p]),
            device=device,
            seconds=sum(r.seconds for r in leaf_parts[p]),
            notes=(f"point {p} of {num_points}, checked together (vmapped)",),
        )
        for p in range(num_points)
    )
    return MultiPointReport(reports=reports, seconds=time.perf_counter() - t_start)
