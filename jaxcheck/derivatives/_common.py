"""What every derivative check shares: the float64 point, split into traced and
closed-over leaves, the hashable functions of it, and small helpers.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import compare, engine, tree
from ..options import callable_name
from ..report import CoordResult, LeafReport, SkippedLeaf

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
                f"`grad_fn` ({callable_name(self.grad_fn)}) returned no gradient "
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


def _pow2_floor(n: int) -> int:
    n = max(int(n), 1)
    return 1 << (n.bit_length() - 1)


def _fmt_e(x: float) -> str:
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return f"{x:.2e}"


def _plural(n: int, noun: str, plural: str | None = None) -> str:
    return f"{n:,} {noun if n == 1 else (plural or noun + 's')}"


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


def _entry_report(
    path: str,
    shape: tuple[int, ...],
    dtype: str,
    index_of: Callable[[int], tuple[int, ...]],
    analytic: np.ndarray,
    fp: np.ndarray,
    fm: np.ndarray,
    h_real: np.ndarray,
    scale_floor: Any,
    *,
    eps: float,
    bar: compare.Bar,
    step: float,
    max_worst: int,
    chunk: int,
    seconds: float,
) -> LeafReport:
    """The verdicts of centered differences ``(fp - fm) / h_real`` against
    ``analytic``, entry by entry, as one :class:`jaxcheck.LeafReport`.

    ``analytic``, ``fp`` and ``fm`` share a shape; ``h_real`` and
    ``scale_floor`` (the least ``|f|`` the round-off allowance assumes)
    broadcast to it; ``index_of`` maps a flat entry to its reported index.
    """
    numeric = (fp - fm) / h_real
    rel = compare.relative_error(analytic, numeric)
    scale = np.maximum(np.maximum(np.abs(fp), np.abs(fm)), scale_floor)
    noise = bar.noise_factor * eps * scale / h_real
    codes = compare.verdicts(analytic, numeric, noise, bar.rtol)
    flat = [np.ravel(v) for v in (analytic, numeric, rel, codes, fp, fm)]
    a_f, n_f, r_f, c_f, p_f, m_f = flat
    order = np.lexsort((-r_f, -(c_f == compare.WRONG).astype(np.int8)))
    worst = tuple(
        CoordResult(
            index=index_of(int(e)),
            analytic=float(a_f[e]),
            numeric=float(n_f[e]),
            rel_error=float(r_f[e]),
            verdict=compare.VERDICT_NAMES[c_f[e]],
            f_plus=float(p_f[e]),
            f_minus=float(m_f[e]),
        )
        for e in order[:max_worst]
    )
    return LeafReport(
        path=path,
        shape=shape,
        dtype=dtype,
        num_checked=int(rel.size),
        max_rel_error=float(rel.max()) if rel.size else 0.0,
        band_counts=compare.band_counts(rel),
        num_ok=int((codes == compare.OK).sum()),
        num_wrong=int((codes == compare.WRONG).sum()),
        num_untestable=int((codes == compare.UNTESTABLE).sum()),
        worst=worst,
        step=step,
        chunk_size=chunk,
        seconds=seconds,
    )
