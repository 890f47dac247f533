"""The differential check: an implementation's gradient at its native dtype
against a float64 reference implementation's, leaf by leaf.

A fused or Pallas kernel, or a bfloat16/float16/float32 model, is compared with
a plain reference written for clarity: ``jax.grad(f)`` at the dtype ``f`` is
given, and ``jax.grad(f_ref)`` in float64 at the same values (the inputs ``f``
sees, cast up exactly). No finite differences: the reference's gradient is the
"numeric" side of the report. Each leaf gets a tolerance derived from the unit
roundoff of the dtypes ``f`` computes in and the reduction sizes on the path
to that leaf's gradient, read from the jaxpr of the gradient computation (see
:func:`check_against_reference` for the formula and a worked example).
"""

from __future__ import annotations

import collections
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore
from numpy.typing import ArrayLike

from . import compare, tree
from .options import callable_name, validate_callables
from .report import (
    CoordResult,
    GradCheckReport,
    GradientCheckError,
    LeafReport,
    SkippedLeaf,
)

PyTree = Any

#: Default safety factor on the rounding model. Under the random model the
#: error of an entry has a standard deviation of about ``u sqrt(N / 3)``; the
#: largest of 1e4..1e6 entries lies 4-5 of those out, about ``3 u sqrt(N)``,
#: and well-conditioned operations amplify it by a small factor more. Measured
#: on the correct implementations of tests/test_differential.py (bfloat16,
#: float16, float32) the worst entry used 0.4 of the bar.
DEFAULT_SAFETY = 8.0

#: Roundings charged to one transcendental operation (exp, log, tanh, erf...):
#: XLA's vectorised approximations are accurate to a few ulps, not to 1/2.
TRANSCENDENTAL_ROUNDINGS = 4

#: A leaf whose bar is at least this wide cannot catch a gradient scaled by
#: 1.5 or 0.5 (a relative error of 0.5 against ``|g_ref| + rms``, at most): the
#: report says so.
WIDE_BAR = 0.25

#: Primitives that move or select values without rounding them.
EXACT = frozenset(
    """abs argmax argmin broadcast_in_dim ceil clamp concatenate copy copy_p
    device_put dynamic_slice dynamic_update_slice eq expand_dims floor gather ge
    gt iota is_finite le lt max min ne neg optimization_barrier pad real
    reduce_and reduce_max reduce_min reduce_or reshape rev round scatter select_n
    sharding_constraint sign slice sort split squeeze stop_gradient transpose
    imag mesh_cast reduce_precision""".split()
)

#: Correctly rounded arithmetic (one rounding per operation).
ARITHMETIC = frozenset("add add_any sub mul div sqrt rsqrt square integer_pow".split())

#: Call-like primitives whose body maps inputs and outputs one to one, and the
#: parameter that holds it: the slice of a leaf's gradient goes inside them.
CALLS: dict[str, str] = {
    "jit": "jaxpr",
    "pjit": "jaxpr",
    "closed_call": "call_jaxpr",
    "core_call": "call_jaxpr",
    "checkpoint": "jaxpr",
    "remat": "jaxpr",
    "custom_jvp_call": "call_jaxpr",
    "custom_vjp_call": "call_jaxpr",
}

#: The rounding models: how roundings combine into an error bound.
ROUNDING_MODELS = ("random", "worst")


def unit_roundoff(dtype: Any) -> float:
    """``eps / 2`` of a floating-point dtype: the largest relative error of one
    correctly rounded operation.

    Examples:
      >>> unit_roundoff(jnp.bfloat16), unit_roundoff(jnp.float32)
      (0.00390625, 5.960464477539063e-08)
    """
    return float(jnp.finfo(jnp.dtype(dtype)).eps) / 2


# --------------------------------------------------------------------------- #
# Roundings on the path to each output of a jaxpr.
# --------------------------------------------------------------------------- #

Counts = collections.Counter  # dtype name -> roundings


class _Context:
    """What a rounding count assumes (``accumulation``) and what it could not
    see (``remarks``)."""

    def __init__(self, accumulation: str | None) -> None:
        self.accumulation = accumulation
        self.remarks: set[str] = set()


def _is_var(a: Any) -> bool:
    return not isinstance(a, jcore.Literal)


def _float_dtype(a: Any) -> str | None:
    dtype = getattr(getattr(a, "aval", None), "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        return None
    return jnp.dtype(dtype).name


def _shape(a: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in getattr(a.aval, "shape", ()))


def _reduction_size(eqn: Any) -> int | None:
    """Terms summed into one output entry, or ``None`` for a non-reduction."""
    name, p = eqn.primitive.name, eqn.params
    if name == "dot_general":
        (contract, _), _ = p["dimension_numbers"]
        return math.prod(_shape(eqn.invars[0])[d] for d in contract)
    if name in ("reduce_sum", "reduce_prod"):
        return math.prod(_shape(eqn.invars[0])[d] for d in p["axes"])
    if name in ("cumsum", "cumprod", "cumlogsumexp"):
        return _shape(eqn.invars[0])[p["axis"]]
    if name == "conv_general_dilated":
        rhs = _shape(eqn.invars[1])
        out_dim = p["dimension_numbers"].rhs_spec[0]
        return math.prod(rhs) // max(rhs[out_dim], 1)
    if name == "scatter-add":  # duplicates of an index are summed: on average
        return -(-math.prod(_shape(eqn.invars[2])) // max(1, eqn.outvars[0].aval.size))
    return None


def _eqn_counts(eqn: Any, ctx: _Context) -> Counts:
    """The roundings one entry of an equation's output goes through."""
    out = _float_dtype(eqn.outvars[0]) if eqn.outvars else None
    name = eqn.primitive.name
    if out is None or name in EXACT:
        return Counts()
    if name == "convert_element_type":
        src = _float_dtype(eqn.invars[0])
        narrower = src is not None and jnp.dtype(src).itemsize > jnp.dtype(out).itemsize
        return Counts({out: 1}) if narrower else Counts()
    size = _reduction_size(eqn)
    if size is None:
        return Counts({out: 1 if name in ARITHMETIC else TRANSCENDENTAL_ROUNDINGS})
    acc = eqn.params.get("preferred_element_type") or out
    acc = jnp.dtype(acc).name if jnp.issubdtype(acc, jnp.floating) else out
    if (
        name in ("dot_general", "conv_general_dilated")
        and ctx.accumulation
        and unit_roundoff(acc) > unit_roundoff(ctx.accumulation)
    ):
        acc = ctx.accumulation
    counts = Counts({acc: size})
    if acc != out:
        counts[out] += 1
    return counts


def _body_counts(eqn: Any, ctx: _Context) -> Counts:
    """Every rounding inside an equation with bodies it does not map one to one
    (loops, branches, kernels), charged in full."""
    name = eqn.primitive.name
    bodies = list(jcore.jaxprs_in_params(eqn.params))
    per = []
    for body in bodies:
        counts, _ = _slice(body, [True] * len(body.outvars), ctx)
        per.append(counts)
    if name == "cond":  # one branch runs: the costliest
        return max(per, key=lambda c: sum(c.values()), default=Counts())
    total = sum(per, Counts())
    if name == "scan":
        return Counts({k: v * int(eqn.params["length"]) for k, v in total.items()})
    if name == "while":
        ctx.remarks.add(
            "a while loop: its trip count is unknown, so its body's roundings are "
            "counted once"
        )
    elif name not in CALLS:
        ctx.remarks.add(
            f"{name}: its body's roundings are counted once (a kernel's grid or a "
            "map's repetitions are not seen)"
        )
    return total


def _slice(jaxpr: Any, out_live: Sequence[bool], ctx: _Context) -> tuple:
    """``(counts, in_live)``: the roundings of every equation the live outputs
    depend on (each counted once), and which inputs they read."""
    live = {
        v for v, keep in zip(jaxpr.outvars, out_live, strict=True) if keep and _is_var(v)
    }
    counts = Counts()
    for eqn in reversed(jaxpr.eqns):
        outs = [v in live for v in eqn.outvars]
        if not any(outs):
            continue
        body = eqn.params.get(CALLS.get(eqn.primitive.name, ""))
        body = getattr(body, "jaxpr", body)
        if body is not None and len(body.invars) == len(eqn.invars):
            sub, in_live = _slice(body, outs, ctx)
            counts += sub
        else:
            has_body = any(True for _ in jcore.jaxprs_in_params(eqn.params))
            counts += _body_counts(eqn, ctx) if has_body else _eqn_counts(eqn, ctx)
            in_live = [True] * len(eqn.invars)
        live.update(
            v for v, k in zip(eqn.invars, in_live, strict=True) if k and _is_var(v)
        )
    return counts, [v in live for v in jaxpr.invars]


def rounding_counts(
    closed_jaxpr: Any, accumulation: str | None = "float32"
) -> tuple[list[Counts], list[str]]:
    """Per output of a jaxpr, the roundings (by dtype) on its dependency slice.

    Every equation the output depends on counts once, with the roundings one
    entry of its result goes through: one per correctly rounded arithmetic
    operation, :data:`TRANSCENDENTAL_ROUNDINGS` per transcendental, ``K`` per
    reduction of ``K`` terms (a dot over ``K``, a sum over ``K`` entries, a
    convolution window) in its accumulation dtype, none for data movement.

    Args:
      closed_jaxpr: e.g. ``jax.make_jaxpr(jax.value_and_grad(f))(params)``.
      accumulation: the dtype in which matrix products and convolutions of a
        narrower dtype accumulate (then one more rounding to their output
        dtype); ``None`` takes the jaxpr's dtypes literally.

    Returns:
      ``(counts, remarks)``: a ``Counter`` ``{dtype name: roundings}`` per
      output, and what the count could not see (while loops, kernels).

    Examples:
      >>> cj = jax.make_jaxpr(lambda w, x: jnp.tanh(x @ w).sum())(
      ...     jnp.ones((16, 2), jnp.bfloat16), jnp.ones((3, 16), jnp.bfloat16))
      >>> rounding_counts(cj)[0]
      [Counter({'float32': 22, 'bfloat16': 6})]
      >>> rounding_counts(cj, accumulation=None)[0]
      [Counter({'bfloat16': 21, 'float32': 6})]
    """
    ctx = _Context(accumulation)
    jaxpr = closed_jaxpr.jaxpr
    out = []
    for k in range(len(jaxpr.outvars)):
        live = [j == k for j in range(len(jaxpr.outvars))]
        out.append(_slice(jaxpr, live, ctx)[0])
    return out, sorted(ctx.remarks)


def tolerance(counts: Counts, rounding: str = "random", safety: float = 1.0) -> float:
    """The bar for counts of roundings: ``safety * sqrt(sum_d N_d u_d**2)``
    (random rounding) or ``safety * sum_d N_d u_d`` (worst case).

    Examples:
      >>> round(tolerance(Counts({"bfloat16": 16}), safety=8.0), 4)
      0.125
      >>> round(tolerance(Counts({"bfloat16": 16}), "worst", safety=1.0), 4)
      0.0625
    """
    terms = [(n, unit_roundoff(d)) for d, n in counts.items() if n]
    if rounding == "worst":
        return safety * sum(n * u for n, u in terms)
    return safety * math.sqrt(sum(n * u * u for n, u in terms))


def _describe(counts: Counts) -> str:
    """``"bfloat16: 57, float32: 12"``, lowest precision first."""
    order = sorted(counts, key=lambda d: -unit_roundoff(d))
    return ", ".join(f"{d}: {counts[d]:,}" for d in order if counts[d])


def _noisy_eval(
    jaxpr: Any, consts: Sequence[Any], args: Sequence[Any], key: jax.Array, u: float,
    ctx: _Context,
) -> list:  # fmt: skip
    """Evaluates ``jaxpr`` with every rounding operation's result multiplied by
    ``1 + u xi``, ``xi ~ U[-1, 1]`` (inside one-to-one calls too)."""
    env: dict = {}

    def read(a: Any) -> Any:
        return a.val if isinstance(a, jcore.Literal) else env[a]

    env.update(zip(jaxpr.constvars, consts, strict=True))
    env.update(zip(jaxpr.invars, args, strict=True))
    for i, eqn in enumerate(jaxpr.eqns):
        ins = [read(a) for a in eqn.invars]
        k = jax.random.fold_in(key, i)
        body = eqn.params.get(CALLS.get(eqn.primitive.name, ""))
        if body is not None and len(getattr(body, "jaxpr", body).invars) == len(ins):
            inner_consts = getattr(body, "consts", [])
            outs = _noisy_eval(getattr(body, "jaxpr", body), inner_consts, ins, k, u, ctx)
        else:
            outs = eqn.primitive.bind(*ins, **eqn.params)
            outs = outs if eqn.primitive.multiple_results else [outs]
            rounds = any(True for _ in jcore.jaxprs_in_params(eqn.params)) or sum(
                _eqn_counts(eqn, ctx).values()
            )
            if rounds:
                outs = [_jitter(o, jax.random.fold_in(k, j), u) for j, o in enumerate(outs)]
        env.update(zip(eqn.outvars, outs, strict=True))
    return [read(v) for v in jaxpr.outvars]


def _jitter(x: Any, key: jax.Array, u: float) -> Any:
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.floating):
        return x
    xi = jax.random.uniform(key, jnp.shape(x), dtype, -1.0, 1.0)
    return x * (1 + u * xi)


# --------------------------------------------------------------------------- #
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
        self.a_leaves = [jnp.asarray(v) if d else v for v, d in zip(a_leaves, self.a_dyn)]
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
        dyn = [cast(v) for v, d in zip(self.a_leaves, self.a_dyn) if d]
        return theta, dyn

    def rebuild(self, theta: Sequence[Any], dyn: Sequence[Any]) -> tuple:
        leaves = list(self.leaves)
        for p, v in zip(self.checked, theta, strict=True):
            leaves[p] = v
        it = iter(dyn)
        a = [next(it) if d else v for v, d in zip(self.a_leaves, self.a_dyn)]
        params = jax.tree_util.tree_unflatten(self.treedef, leaves)
        return params, jax.tree_util.tree_unflatten(self.a_treedef, a)


def _match(grads: PyTree, inputs: _Inputs, who: str, other: str) -> list[Any]:
    """The entries of a user's gradient tree at the checked leaves, in order."""
    g_leaves, g_paths, _ = tree.flatten(grads)
    by_path = dict(zip(g_paths, g_leaves, strict=True))
    paths = inputs.paths
    extra = [p for p in by_path if p not in paths and by_path[p] is not None]
    missing = [p for p in paths if by_path.get(p) is None]
    if extra or missing:
        raise ValueError(
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
            raise ValueError(
                f"{who} returned shape {tuple(np.shape(g))} ({jnp.result_type(g)}) "
                f"for leaf {p}, but {other} has the leaf's shape {info.shape}, "
                "floating point. A gradient has the shape of its parameter (a "
                "transposed gradient is a common cause)."
            )
        out.append(g)
    return out


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
            g = _match(grad_fn(params, *args), inputs, f"{who} ({callable_name(grad_fn)})", other)
            return self._scalar(value)(theta, dyn), g

        theta, dyn = inputs.dynamic(up)
        try:
            traced = jax.jit(program).trace(theta, dyn)
        except (KeyError, IndexError, AttributeError) as e:
            raise ValueError(
                f"`{role}` ({self.name}) failed on the `params`/args that {other} "
                f"takes ({type(e).__name__}: {e}). `f` and `f_ref` are called with "
                "the same pytree; write the reference for the same structure."
            ) from e
        self.counts, self.remarks = rounding_counts(traced.jaxpr, accumulation)
        self.traced_jaxpr, self.ctx = traced.jaxpr, _Context(accumulation)
        self.compiled, self.theta, self.dyn = traced.lower().compile(), theta, dyn
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

        def one(key: jax.Array) -> list:
            return _noisy_eval(closed.jaxpr, closed.consts, flat, key, u, self.ctx)

        keys = jax.random.split(jax.random.PRNGKey(seed), samples)
        outs = jax.jit(jax.vmap(one))(keys)
        return [np.std(np.asarray(g, np.float64), axis=0, ddof=1) for g in outs[1:]]

    def _scalar(self, value: Callable) -> Callable:
        def checked(theta, dyn):
            out = value(theta, dyn)
            shape, dtype = jnp.shape(out), jnp.result_type(out)
            if shape != () or not jnp.issubdtype(dtype, jnp.floating):
                raise TypeError(
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
            return isinstance(v, int | np.integer) and not isinstance(v, bool) and v >= 0

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
            raise ValueError(f"`rtol` must be None or a positive number, got {self.rtol!r}.")
        for name in ("max_worst", "sensitivity", "seed"):
            if not count(getattr(self, name)):
                raise ValueError(
                    f"`{name}` must be an int >= 0, got {getattr(self, name)!r}."
                )
        acc = self.accumulation
        if acc is not None and not (
            isinstance(acc, str) and acc in ("float16", "bfloat16", "float32", "float64")
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
            index=tree.unravel(int(j), info.shape), analytic=float(g[j]),
            numeric=float(r[j]), rel_error=float(err[j]),
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
        f"path ({_describe(c) or 'none'})"
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
            _bar_note(info.path, counts, tol, o)
            + f"; scale {base:.3g}"
            + (f" + sensitivity (median {np.median(extra):.3g}, max {extra.max():.3g})"
               if o.sensitivity >= 2 else "")
        )  # fmt: skip
        if tol >= WIDE_BAR:
            notes.append(
                f"the bar of {info.path} is {tol:.2g}: a gradient off by a factor "
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
        f" + sensitivity_i (the spread of g_ref_i over {o.sensitivity} evaluations at "
        f"inputs perturbed by a relative {u:.2g}, divided by {u:.2g})"
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
    """DOCSTRING"""
    validate_callables(f, grad_fn)
    validate_callables(f_ref, ref_grad_fn)
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
    """DOCSTRING2"""
    report = check_against_reference(f, f_ref, params, *args, **kwargs)
    if not report.passed:
        raise GradientCheckError(report.failure_message(), report)
    return report
