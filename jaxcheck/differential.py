"""The differential check: an implementation's gradient at its native dtype
against a float64 reference implementation's, leaf by leaf.

A fused or Pallas kernel, or a bfloat16/float16/float32 model, is compared with
a plain reference written for clarity: ``jax.grad(f)`` at the dtype ``f`` is
given, and ``jax.grad(f_ref)`` in float64 at the same values (the inputs ``f``
sees, cast up exactly). No finite differences: the reference's gradient is the
"numeric" side of the report. Each leaf gets a tolerance derived from the unit
roundoff of the dtypes ``f`` computes in and the reduction sizes on the path
to that leaf's gradient, read from the jaxpr of the gradient computation (see
:func:`check_against_reference` for the formula).

The rounding model: "random" (the default) lets errors grow like ``sqrt(K) u``
over ``K`` roundings: roundings of different operations are uncorrelated in
practice (the probabilistic bounds of Higham and Mary, 2019). The worst case
``K u`` needs every rounding to go the same way and would put the bar of a
bfloat16 dot over 1024 terms at 4 (32 with the default safety 8); ``rounding="worst"`` gives it.

Worked example: ``W`` of shape (64, 4) in ``tanh(x @ W).sum()`` with ``x`` of
shape (8, 64), all bfloat16 (the example of :func:`check_against_reference`).
The counts on ``W``'s gradient path are bfloat16: 11, float32: 72 (dots
accumulate in float32), float64: 80 (the reference), so ``bar = 8 * sqrt(11) * 2**-8 = 0.10``; the
float32 and float64 terms add less than 1e-8. An entry with ``g_ref = 0.5``
in a leaf of RMS gradient 1.9 may be off by ``0.10 * 2.4 = 0.25`` plus
``8 sigma_i``: bfloat16 is coarse. The network of tests/test_differential.py
gets bars near 5e-6 in float32, where a dropped gradient term of relative size
1e-2 fails (and passes in bfloat16, whose bars are near 0.1).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpy.typing import ArrayLike

from . import compare, tree
from .options import callable_name
from .report import (
    CoordResult,
    GradCheckReport,
    GradientCheckError,
    LeafReport,
    SkippedLeaf,
)
from .rounding import (
    ROUNDING_MODELS,
    Context,
    Counts,
    describe,
    noisy_eval,
    rounding_counts,
    tolerance,
    unit_roundoff,
)

PyTree = Any

#: Default safety factor on the rounding model. Under the random model the
#: error of an entry has a standard deviation of about ``u sqrt(N / 3)``; the
#: largest of 1e4..1e6 entries lies 4-5 of those out, about ``3 u sqrt(N)``,
#: and well-conditioned operations amplify it by a small factor more. Measured
#: on the correct implementations of tests/test_differential.py (bfloat16,
#: float16, float32) the worst entry used 0.4 of the bar.
DEFAULT_SAFETY = 8.0

#: Above this many numbers (samples x rounded entries), the sensitivity noise
#: is drawn inside the program instead of on the host (64 MiB of float32).
MAX_HOST_NOISE = 1 << 24

#: A leaf whose bar is at least this wide cannot catch a gradient scaled by
#: 1.5 or 0.5 (a relative error of 0.5 against ``|g_ref| + rms``, at most): the
#: report says so.
WIDE_BAR = 0.25

# The two sides: inputs, traced gradient programs, values.
# --------------------------------------------------------------------------- #


class _Inputs:
    """``params`` and ``args`` as ``f`` sees them, split into the checked leaves,
    the other array leaves (dynamic) and everything else (closed over)."""

    def __init__(self, params: PyTree, args: tuple) -> None:
        leaves, self.infos, self.treedef = tree.leaf_infos(params)
        self.checked = [i.pos for i in self.infos if i.checked]
        if not self.checked:
            listing = "; ".join(f"{i.path}: {i.reason}" for i in self.infos)
            raise ValueError(
                "`params` has no floating-point array leaf to compare (leaves: "
                f"{listing or 'none'}). Pass the parameters as float arrays, e.g. "
                "jnp.asarray(w, jnp.bfloat16)."
            )
        for x in jax.tree_util.tree_leaves((params, args)):
            if isinstance(x, jax.core.Tracer):
                raise TypeError(
                    "`params` or `args` holds a JAX tracer: the differential check "
                    "cannot run inside jax.jit / jax.vmap / jax.grad. Call it "
                    "outside any transformation."
                )
        self.leaves = [
            jnp.asarray(v) if i.checked else v
            for v, i in zip(leaves, self.infos, strict=True)
        ]
        a_leaves, self.a_treedef = jax.tree_util.tree_flatten(args)
        self.a_dyn = [isinstance(v, jax.Array | np.ndarray) for v in a_leaves]
        self.a_leaves = [
            jnp.asarray(v) if d else v
            for v, d in zip(a_leaves, self.a_dyn, strict=True)
        ]
        self.skipped = tuple(
            SkippedLeaf(i.path, i.reason, i.dtype, i.shape)
            for i in self.infos
            if not i.checked
        )

    @property
    def paths(self) -> list[str]:
        return [self.infos[p].path for p in self.checked]

    def dynamic(self, up: bool) -> tuple[list, list]:
        """The checked leaves and the array leaves of ``args``; ``up`` casts the
        floating-point ones to float64 (exactly: they hold the same values)."""

        def cast(v: Any) -> Any:
            if up and jnp.issubdtype(v.dtype, jnp.floating):
                return jnp.asarray(np.asarray(v).astype(np.float64))
            return v

        theta = [cast(self.leaves[p]) for p in self.checked]
        dyn = [cast(v) for v, d in zip(self.a_leaves, self.a_dyn, strict=True) if d]
        return theta, dyn

    def rebuild(self, theta: Sequence[Any], dyn: Sequence[Any]) -> tuple:
        leaves = list(self.leaves)
        for p, v in zip(self.checked, theta, strict=True):
            leaves[p] = v
        it = iter(dyn)
        a = [
            next(it) if d else v for v, d in zip(self.a_leaves, self.a_dyn, strict=True)
        ]
        params = jax.tree_util.tree_unflatten(self.treedef, leaves)
        return params, jax.tree_util.tree_unflatten(self.a_treedef, a)


class _TreeMismatch(ValueError):
    """A gradient tree unlike ``params`` (raised as is, never re-wrapped)."""


class _NotScalar(TypeError):
    """An output that is not a real scalar (raised as is, never re-wrapped)."""


def _match(grads: PyTree, inputs: _Inputs, who: str, other: str) -> list[Any]:
    """The entries of a user's gradient tree at the checked leaves, in order."""
    g_leaves, g_paths, _ = tree.flatten(grads)
    by_path = dict(zip(g_paths, g_leaves, strict=True))
    paths = inputs.paths
    extra = [p for p in by_path if p not in paths and by_path[p] is not None]
    missing = [p for p in paths if by_path.get(p) is None]
    if extra or missing:
        raise _TreeMismatch(
            f"{who} returned a gradient tree with leaves {sorted(by_path)}, but "
            f"{other} has one per checked leaf of `params`: {paths} (missing: "
            f"{missing}, not in params: {extra}). Both gradients must have the "
            "structure of `params`."
        )
    out = []
    for p, info in zip(paths, (inputs.infos[i] for i in inputs.checked), strict=True):
        g = by_path[p]
        if tuple(np.shape(g)) != info.shape or not jnp.issubdtype(
            jnp.result_type(g), jnp.floating
        ):
            raise _TreeMismatch(
                f"{who} returned shape {tuple(np.shape(g))} ({jnp.result_type(g)}) "
                f"for leaf {p}, but {other} has the leaf's shape {info.shape}, "
                "floating point. A gradient has the shape of its parameter (a "
                "transposed gradient is a common cause)."
            )
        out.append(g)
    return out


def _quick() -> dict[str, Any] | None:
    """XLA options for the small programs of a check on CPU: no optimization
    passes (compilation dominates; the runs take milliseconds)."""
    if jax.local_devices()[0].platform != "cpu":
        return None
    return {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}


class _HostNoise:
    """Numbers in ``[-1, 1]`` handed out in order from one flat array; with
    ``None``, only counts how many are asked for (zeros)."""

    def __init__(self, flat: Any) -> None:
        self.flat, self.used = flat, 0

    def __call__(self, shape: tuple[int, ...], dtype: Any) -> Any:
        start, self.used = self.used, self.used + math.prod(shape)
        if self.flat is None:
            return jnp.zeros(shape, dtype)
        return self.flat[start : self.used].reshape(shape).astype(dtype)


def _key_noise(key: jax.Array) -> Callable:
    """Numbers uniform in ``[-1, 1]`` from ``key``, a new key per request."""
    count = iter(range(1 << 30))

    def noise(shape: tuple[int, ...], dtype: Any) -> Any:
        return jax.random.uniform(
            jax.random.fold_in(key, next(count)), shape, dtype, -1, 1
        )

    return noise


class _Side:
    """One implementation: ``f`` at its native dtype or ``f_ref`` in float64.

    Traces ``(value, gradients)`` once, counts the roundings on the path to each
    output, and evaluates the compiled program.
    """

    def __init__(
        self, role: str, fn, grad_fn, inputs: _Inputs, up: bool, other: str,
        accumulation: str | None,
    ):  # fmt: skip
        self.role, self.name = role, callable_name(fn)
        who = f"`{'grad_fn' if role == 'f' else 'ref_grad_fn'}`"
        self.grad_source = (
            "jax.grad" if grad_fn is None else f"{who[1:-1]} ({callable_name(grad_fn)})"
        )

        def value(theta, dyn):
            params, args = inputs.rebuild(theta, dyn)
            return fn(params, *args)

        def program(theta, dyn):
            if grad_fn is None:
                v, g = jax.value_and_grad(self._scalar(value))(theta, dyn)
                return v, list(g)
            params, args = inputs.rebuild(theta, dyn)
            g = _match(
                grad_fn(params, *args),
                inputs,
                f"{who} ({callable_name(grad_fn)})",
                other,
            )
            return self._scalar(value)(theta, dyn), g

        theta, dyn = inputs.dynamic(up)
        try:
            traced = jax.jit(program).trace(theta, dyn)
        except (_TreeMismatch, _NotScalar):
            raise
        except (KeyError, IndexError, AttributeError, TypeError, ValueError) as e:
            raise ValueError(
                f"`{role}` ({self.name}) failed on the `params`/args that {other} "
                f"runs on ({type(e).__name__}: {str(e)[:300]}). `f` and `f_ref` "
                "are called with the same pytree and shapes; write the reference "
                "for the same structure (same keys, same shapes and layouts)."
            ) from e
        self.counts, self.remarks = rounding_counts(traced.jaxpr, accumulation)
        self.traced_jaxpr, self.ctx = traced.jaxpr, Context(accumulation)
        self.compiled, self.theta, self.dyn = (
            traced.lower().compile(_quick()),
            theta,
            dyn,
        )
        out = self.compiled(theta, dyn)
        self.value = float(np.asarray(out[0]).astype(np.float64))
        self.grads = [np.asarray(g).astype(np.float64) for g in out[1]]
        self.grad_dtypes = [jnp.dtype(g.dtype).name for g in out[1]]
        self.dtypes = sorted(
            {d for c in self.counts for d in c}, key=lambda d: -unit_roundoff(d)
        )

    def sensitivity(self, u: float, samples: int, seed: int) -> list[np.ndarray]:
        """Per leaf, the spread (standard deviation) of the gradient over
        ``samples`` evaluations in which every rounding operation's result is
        multiplied by ``1 + u xi``, ``xi`` uniform in ``[-1, 1]`` (Monte Carlo
        arithmetic: rounding to ``u`` emulated in float64, with the
        amplification of every later operation included)."""
        if samples < 2:
            return [np.zeros_like(g) for g in self.grads]
        closed = self.traced_jaxpr
        flat = jax.tree_util.tree_leaves((self.theta, self.dyn))

        def run(noise: Callable) -> list:
            return noisy_eval(closed.jaxpr, closed.consts, flat, noise, u, self.ctx)

        counter = _HostNoise(None)
        jax.eval_shape(lambda: run(counter))
        if counter.used * samples <= MAX_HOST_NOISE:  # drawn on the host: quick
            xi = np.random.default_rng(seed).uniform(-1, 1, (samples, counter.used))
            xi = xi.astype(np.float32)
            program = jax.vmap(lambda row: run(_HostNoise(row)))
        else:  # drawn in the program: no large input, a longer compilation
            xi = jax.random.split(jax.random.key(seed, impl="unsafe_rbg"), samples)
            program = jax.vmap(lambda key: run(_key_noise(key)))
        outs = jax.jit(program).lower(xi).compile(_quick())(xi)
        return [np.std(np.asarray(g, np.float64), axis=0, ddof=1) for g in outs[1:]]

    def _scalar(self, value: Callable) -> Callable:
        def checked(theta, dyn):
            out = value(theta, dyn)
            shape, dtype = jnp.shape(out), jnp.result_type(out)
            if shape != () or not jnp.issubdtype(dtype, jnp.floating):
                raise _NotScalar(
                    f"`{self.role}` ({self.name}) returned shape {shape} and dtype "
                    f"{dtype}; `f` and `f_ref` must both return a real "
                    "floating-point scalar (a loss). Reduce the output, e.g. "
                    "with jnp.sum, in both."
                )
            return out

        return checked


# --------------------------------------------------------------------------- #
# Comparison and report.
# --------------------------------------------------------------------------- #


@dataclasses.dataclass(frozen=True)
class _Options:
    """The keyword options of :func:`check_against_reference`, validated."""

    rounding: str = "random"
    safety: float = DEFAULT_SAFETY
    scale: str | float = "rms"
    sensitivity: int = 8
    accumulation: str | None = "float32"
    rtol: float | None = None
    max_worst: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        def number(v: Any) -> bool:
            ok = isinstance(v, int | float | np.floating) and not isinstance(v, bool)
            return ok and math.isfinite(v)

        def count(v: Any) -> bool:
            return (
                isinstance(v, int | np.integer) and not isinstance(v, bool) and v >= 0
            )

        if self.rounding not in ROUNDING_MODELS:
            raise ValueError(
                f"`rounding` must be one of {ROUNDING_MODELS}, got {self.rounding!r}: "
                '"random" (errors grow like sqrt(K) u) or "worst" (like K u).'
            )
        if not (number(self.safety) and self.safety > 0):
            raise ValueError(
                f"`safety` must be a positive finite number, got {self.safety!r}."
            )
        if self.scale != "rms" and not (number(self.scale) and self.scale >= 0):
            raise ValueError(
                '`scale` must be "rms" (the leaf\'s RMS reference gradient) or a '
                f"non-negative finite number, got {self.scale!r}."
            )
        if self.rtol is not None and not (number(self.rtol) and self.rtol > 0):
            raise ValueError(
                f"`rtol` must be None or a positive number, got {self.rtol!r}."
            )
        for name in ("max_worst", "sensitivity", "seed"):
            if not count(getattr(self, name)):
                raise ValueError(
                    f"`{name}` must be an int >= 0, got {getattr(self, name)!r}."
                )
        acc = self.accumulation
        if acc is not None and not (
            isinstance(acc, str)
            and acc in ("float16", "bfloat16", "float32", "float64")
        ):
            raise ValueError(
                '`accumulation` must be None or a float dtype name such as "float32", '
                f"got {acc!r}."
            )


def _scale_of(r: np.ndarray, scale: str | float) -> float:
    if scale == "rms":
        finite = r[np.isfinite(r)]
        return float(np.sqrt(np.mean(finite**2))) if finite.size else 0.0
    return float(scale)


def scaled_error(g: ArrayLike, r: ArrayLike, scale: ArrayLike) -> np.ndarray:
    """``|g - r| / (|r| + scale)`` elementwise; ``0`` where both sides are equal
    and ``inf`` where ``g`` is not finite.

    Examples:
      >>> scaled_error([1.5, 0.0, 1e-3], [1.0, 0.0, 0.0], 1.0)
      array([0.25 , 0.   , 0.001])
    """
    g, r = np.asarray(g, np.float64), np.asarray(r, np.float64)
    diff = np.abs(g - r)
    den = np.abs(r) + np.asarray(scale, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        err = np.where(diff == 0, 0.0, diff / np.where(den > 0, den, 0.0))
    return np.where(np.isfinite(g), err, np.inf)


def _leaf_report(
    info: tree.LeafInfo, g: np.ndarray, r: np.ndarray, tol: float, scale: np.ndarray,
    max_worst: int,
) -> LeafReport:  # fmt: skip
    g, r = g.reshape(-1), r.reshape(-1)
    err = scaled_error(g, r, scale.reshape(-1))
    inconclusive = ~np.isfinite(r)
    wrong = ~inconclusive & (err > tol)
    code = np.where(inconclusive, compare.INCONCLUSIVE, compare.OK)
    code = np.where(wrong, compare.WRONG, code)
    order = np.lexsort((-np.nan_to_num(err), ~inconclusive, ~wrong))
    worst = tuple(
        CoordResult(
            index=tree.unravel(int(j), info.shape),
            analytic=float(g[j]),
            numeric=float(r[j]),
            rel_error=float(err[j]),
            verdict=compare.VERDICT_NAMES[int(code[j])],
        )  # fmt: skip
        for j in order[:max_worst]
    )
    scored = err[~inconclusive]
    return LeafReport(
        path=info.path, shape=info.shape, dtype=info.dtype, num_checked=g.size,
        max_rel_error=float(scored.max()) if scored.size else 0.0,
        band_counts=compare.band_counts(scored),
        num_ok=int((code == compare.OK).sum()), num_wrong=int(wrong.sum()),
        num_untestable=0, worst=worst, step=0.0, num_selected=g.size,
        num_inconclusive=int(inconclusive.sum()), rtol=tol,
        main_rel_error=float(scored.max()) if scored.size else math.nan,
    )  # fmt: skip


def _bar_note(path: str, c: Counts, tol: float, o: _Options) -> str:
    """How the bar of one leaf was derived."""
    if o.rtol is not None:
        return f"bar of {path}: {tol:.2g} (given as `rtol`)"
    low = max(c, key=unit_roundoff, default="float64")
    ratio = {d: unit_roundoff(d) / unit_roundoff(low) for d in c}
    if o.rounding == "random":
        n_eff = sum(n * ratio[d] ** 2 for d, n in c.items())
        form = f"sqrt({n_eff:,.4g})"
    else:
        form = f"{sum(n * ratio[d] for d, n in c.items()):,.4g}"
    return (
        f"bar of {path}: {tol:.2g} = {o.safety:g} * {form} * u({low}) = {o.safety:g} "
        f"* {form} * {unit_roundoff(low):.2g}, from the roundings on its gradient's "
        f"path ({describe(c) or 'none'})"
    )


def _compare(
    mine: _Side, ref: _Side, inputs: _Inputs, o: _Options
) -> tuple[list[LeafReport], list[str], float]:
    """The leaf reports, a note per leaf on its bar and scale, and ``u``."""
    u = max(unit_roundoff(d) for d in [*mine.dtypes, *mine.grad_dtypes, "float64"])
    sigmas = ref.sensitivity(u, o.sensitivity, o.seed)
    leaves, notes = [], []
    for k, pos in enumerate(inputs.checked):
        info, g, r = inputs.infos[pos], mine.grads[k], ref.grads[k]
        counts = mine.counts[k + 1] + ref.counts[k + 1]
        tol = o.rtol or tolerance(counts, o.rounding, o.safety)
        base = _scale_of(r, o.scale)
        extra = o.safety * np.where(np.isfinite(sigmas[k]), sigmas[k], 0.0) / tol
        leaves.append(_leaf_report(info, g, r, tol, base + extra, o.max_worst))
        notes.append(
            _bar_note(info.path or "params", counts, tol, o)
            + f"; scale {base:.3g}"
            + (f" + {o.safety:g} sigma / bar (median {np.median(extra):.3g}, max {extra.max():.3g})"
               if o.sensitivity >= 2 else "")
        )  # fmt: skip
        if tol >= WIDE_BAR:
            notes.append(
                f"the bar of {info.path or 'params'} is {tol:.2g}: a gradient off by a factor "
                f"within 1 +- {tol:.2g} cannot be told from rounding there. Compare "
                "a float32 build of the implementation to check it tighter."
            )
    return leaves, notes, u


def _value_note(mine: _Side, ref: _Side, o: _Options) -> str:
    tol = tolerance(mine.counts[0] + ref.counts[0], o.rounding, o.safety)
    v, v_ref = mine.value, ref.value
    rel = abs(v - v_ref) / abs(v_ref) if v_ref else abs(v - v_ref)
    text = f"values: f = {v:.8g}, f_ref = {v_ref:.8g} (relative difference {rel:.2g}"
    if rel > tol:
        return text + (
            f", above the rounding allowance {tol:.2g} of the value: f and f_ref may "
            "not compute the same function)"
        )
    return text + f", within the rounding allowance {tol:.2g})"


def _report(mine: _Side, ref: _Side, inputs: _Inputs, o: _Options, t0: float):
    leaves, bar_notes, u = _compare(mine, ref, inputs, o)
    low = [d for d in mine.dtypes if unit_roundoff(d) > unit_roundoff("float64")]
    ref_low = [d for d in ref.dtypes if unit_roundoff(d) > unit_roundoff("float64")]
    sens = (
        f" + {o.safety:g} sigma_i / bar, sigma_i = the spread of g_ref_i over "
        f"{o.sensitivity} float64 evaluations with every rounding emulated as a "
        f"relative perturbation of {u:.2g}"
        if o.sensitivity >= 2
        else ""
    )
    base = "rms(g_ref over the leaf)" if o.scale == "rms" else f"{o.scale:g}"
    notes = [
        "numeric = the reference gradient (f_ref in float64 at the same input "
        f"values); rel = |g - g_ref| / (|g_ref| + scale), scale = {base}{sens}",
        *bar_notes,
        _value_note(mine, ref, o),
    ]
    if ref_low:
        notes.append(
            f"f_ref computes in {'/'.join(ref_low)} inside, not only float64: its "
            "own roundings are charged to the bar, and a reference is best kept "
            "in float64 throughout."
        )
    remarks = sorted(set(mine.remarks + ref.remarks))
    notes += [f"not seen by the rounding count: {r}" for r in remarks]
    formula = (
        "the given rtol"
        if o.rtol is not None
        else f"{o.safety:g} * "
        + ("sqrt(sum N_d u_d^2)" if o.rounding == "random" else "sum N_d u_d")
        + " over the roundings N_d in dtype d on the leaf's gradient path"
    )
    device = jax.local_devices()[0]
    return GradCheckReport(
        leaves=tuple(leaves), skipped=inputs.skipped,
        rtol=max(leaf.rtol for leaf in leaves),
        bar_reason=f"per leaf |g - g_ref| <= bar * (|g_ref| + scale), bar = {formula}",
        step=0.0, method="reference", dtype=(low or ["float64"])[0],
        grad_source=f"{mine.grad_source} of {mine.name} against {ref.grad_source} "
        f"of {ref.name} in float64",
        f_value=mine.value, device=f"{device.platform}:{device.id}",
        seconds=time.perf_counter() - t0, notes=tuple(notes),
        precision=f"{'/'.join(low)} inside" if low else "", seed=o.seed,
    )  # fmt: skip


def _validate_callables(**fns: Any) -> None:
    """Raises a TypeError naming the first argument that is not callable
    (``None`` is allowed for the gradient functions)."""
    for name, fn in fns.items():
        if fn is None and name.endswith("grad_fn"):
            continue
        if not callable(fn):
            raise TypeError(
                f"`{name}` must be callable as {name}(params, *args)"
                f"{' or None' if name.endswith('grad_fn') else ''}, got "
                f"{type(fn).__name__}."
            )


def check_against_reference(
    f: Callable[..., Any],
    f_ref: Callable[..., Any],
    params: PyTree,
    *args: Any,
    grad_fn: Callable[..., PyTree] | None = None,
    ref_grad_fn: Callable[..., PyTree] | None = None,
    rounding: str = "random",
    safety: float = DEFAULT_SAFETY,
    scale: str | float = "rms",
    sensitivity: int = 8,
    accumulation: str | None = "float32",
    rtol: float | None = None,
    max_worst: int = 5,
    seed: int = 0,
) -> GradCheckReport:
    """Compares ``jax.grad(f)`` at its native dtype with ``jax.grad(f_ref)`` in
    float64, leaf by leaf, with a bar derived from the rounding on the way.

    ``f`` (a fused or Pallas kernel, a bfloat16/float16/float32 model) gets
    ``params`` and ``args`` as given; ``f_ref`` gets the SAME values cast up to
    float64 (exactly), so a difference comes from rounding in ``f`` or a bug.
    The reference gradient is the report's "numeric" column.

    Coordinate ``i`` of a leaf passes when::

        |g_i - g_ref_i| <= bar * (|g_ref_i| + scale) + safety * sigma_i
        bar   = safety * sqrt(sum_d N_d u_d**2)     (rounding="random")
              = safety * sum_d N_d u_d              (rounding="worst")

    ``N_d`` counts the roundings in dtype ``d`` on the leaf's gradient path,
    read from the jaxprs of both gradient computations: one per arithmetic
    operation, 4 per transcendental, ``K`` per reduction of ``K`` terms (a dot
    over ``K``, a sum over ``K`` entries) in its accumulation dtype; ``u_d`` is
    the unit roundoff ``eps/2`` of ``d`` (2**-8 for bfloat16, 2**-11 for
    float16, 2**-24 for float32); why "random" is the default: see the module
    docstring. ``scale``
    (the leaf's RMS reference gradient by default) keeps near-zero entries from
    being judged by relative error alone, and ``sigma_i`` is the spread of
    ``g_ref_i`` over ``sensitivity`` float64 evaluations with every rounding
    emulated as a random relative perturbation of size ``u`` (the lowest
    precision ``f`` computes in), wider where the gradient is ill-conditioned.
    The report shows ``bar`` as each leaf's ``rtol`` and the relative error
    ``|g_i - g_ref_i| / (|g_ref_i| + scale + safety * sigma_i / bar)``.

    Args:
      f: the implementation, a scalar function ``f(params, *args)``.
      f_ref: the reference, a scalar function of the same ``params`` pytree
        and ``args``, evaluated in float64.
      params: the pytree of parameters, at the dtype ``f`` runs in. Leaves
        that are not floating-point arrays are skipped and listed.
      *args: fixed arguments of both (float arrays cast up for ``f_ref`` too).
      grad_fn: the gradient of ``f`` as ``grad_fn(params, *args)`` (a pytree
        like ``params``) instead of ``jax.grad(f)``.
      ref_grad_fn: the same for ``f_ref``.
      rounding: ``"random"`` (``sqrt(N) u``) or ``"worst"`` (``N u``).
      safety: the factor on the rounding model (see :data:`DEFAULT_SAFETY`).
      scale: ``"rms"`` (each leaf's RMS reference gradient) or a number.
      sensitivity: evaluations for ``sigma_i``; below 2 it is left out.
      accumulation: where narrower dots and convolutions accumulate (float32
        on CPU, GPU, TPU); ``None`` takes the jaxpr's dtypes literally.
      rtol: a fixed bar for every leaf instead of the derived one.
      max_worst: worst coordinates kept per leaf; seed: of the sensitivity.

    Returns:
      a :class:`GradCheckReport` (method ``"reference"``), every coordinate
      of every checked leaf compared.

    Raises:
      ValueError: ``f`` and ``f_ref`` (or a ``grad_fn``) disagree on the
        pytree or shapes (the message names both), or an option is invalid.
      TypeError: ``f`` or ``f_ref`` is not callable or returns no float scalar.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> def layer(p, x):
      ...     return jnp.tanh(x @ p["W"]).sum()
      >>> k1, k2 = jax.random.split(jax.random.PRNGKey(0))
      >>> p = {"W": jax.random.normal(k1, (64, 4), jnp.bfloat16) / 8}
      >>> x = jax.random.normal(k2, (8, 64), jnp.bfloat16)
      >>> report = check_against_reference(layer, layer, p, x)
      >>> report.status, round(report.leaf("['W']").rtol, 3)
      ('passed', 0.104)
      >>> bad = lambda p, x: layer(p, x) + 0.5 * layer(p, x)  # gradient x1.5
      >>> check_against_reference(bad, layer, p, x).failures[0].path
      "['W']"
    """
    _validate_callables(f=f, f_ref=f_ref, grad_fn=grad_fn, ref_grad_fn=ref_grad_fn)
    o = _Options(
        rounding, safety, scale, sensitivity, accumulation, rtol, max_worst, seed
    )
    t0 = time.perf_counter()
    inputs = _Inputs(params, args)
    f_name, ref_name = callable_name(f), callable_name(f_ref)
    mine = _Side("f", f, grad_fn, inputs, False, f"`f_ref` ({ref_name})", accumulation)
    with jax.enable_x64(True):
        ref = _Side(
            "f_ref", f_ref, ref_grad_fn, inputs, True, f"`f` ({f_name})", accumulation
        )
        return _report(mine, ref, inputs, o, t0)


def assert_against_reference(
    f: Callable[..., Any],
    f_ref: Callable[..., Any],
    params: PyTree,
    *args: Any,
    **kwargs: Any,
) -> GradCheckReport:
    """Like :func:`check_against_reference`, but raises when the check does not
    pass.

    Takes exactly the arguments of :func:`check_against_reference` and returns
    its report when the check passes, so it can be used in pytest.

    Args:
      f: the implementation, ``f(params, *args)`` at its native dtype.
      f_ref: the reference, evaluated in float64.
      params: the parameters (see :func:`check_against_reference`).
      *args: fixed arguments of both.
      **kwargs: the keyword arguments of :func:`check_against_reference`.

    Returns:
      the :class:`GradCheckReport` of a passing check.

    Raises:
      GradientCheckError: (an ``AssertionError``) when a coordinate is off by
        more than its allowance; its message is the report of the failing
        leaves and ``.report`` holds the full report.

    Examples:
      >>> import jax.numpy as jnp
      >>> def loss(w, x):
      ...     return jnp.sum(jnp.exp(x * w))
      >>> def wrong(w, x):  # the gradient's sign flipped
      ...     return jnp.sum(jnp.exp(x * (2 * jax.lax.stop_gradient(w) - w)))
      >>> w, x = jnp.linspace(-1, 1, 5, dtype=jnp.float16), jnp.ones(5, jnp.float16)
      >>> _ = assert_against_reference(loss, loss, w, x)
      >>> try:
      ...     assert_against_reference(wrong, loss, w, x)
      ... except GradientCheckError as e:
      ...     print(str(e).splitlines()[0][:54])
      jaxcheck: gradient check FAILED: 1 leaf, 5 coordinates
    """
    report = check_against_reference(f, f_ref, params, *args, **kwargs)
    if not report.passed:
        raise GradientCheckError(report.failure_message(), report)
    return report
