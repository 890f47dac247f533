"""Rounding counts: how many roundings, in which dtype, lie on the path to
each output of a jaxpr, the error bar they imply, and an evaluation of a jaxpr
with every rounding emulated as a random relative perturbation.

Used by :mod:`jaxcheck.differential` to derive a tolerance per leaf from the
dtypes an implementation computes in and the reduction sizes along the way.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax.numpy as jnp
from jax.extend import core as jcore

from .interpret import call_jaxpr, is_call

#: Roundings charged to one transcendental operation (exp, log, tanh, erf...):
#: XLA's vectorised approximations are accurate to a few ulps, not to 1/2.
TRANSCENDENTAL_ROUNDINGS = 4

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


class Context:
    """What a rounding count assumes (``accumulation``) and what it could not
    see (``remarks``).

    Examples:
      >>> Context("float32").accumulation, Context(None).remarks
      ('float32', set())
    """

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


def _eqn_counts(eqn: Any, ctx: Context) -> Counts:
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


def _body_counts(eqn: Any, ctx: Context) -> Counts:
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
    elif not is_call(eqn):
        ctx.remarks.add(
            f"{name}: its body's roundings are counted once (a kernel's grid or a "
            "map's repetitions are not seen)"
        )
    return total


def _has_body(eqn: Any) -> bool:
    """Whether an equation runs jaxprs of its own (a scatter's combiner, e.g.
    the ``add`` of scatter-add, is counted as a reduction instead)."""
    if eqn.primitive.name.startswith("scatter"):
        return False
    return any(True for _ in jcore.jaxprs_in_params(eqn.params))


def _slice(jaxpr: Any, out_live: Sequence[bool], ctx: Context) -> tuple:
    """``(counts, in_live)``: the roundings of every equation the live outputs
    depend on (each counted once), and which inputs they read."""
    live = {
        v
        for v, keep in zip(jaxpr.outvars, out_live, strict=True)
        if keep and _is_var(v)
    }
    counts = Counts()
    for eqn in reversed(jaxpr.eqns):
        outs = [v in live for v in eqn.outvars]
        if not any(outs):
            continue
        body = call_jaxpr(eqn)[0] if is_call(eqn) else None
        if body is not None and len(body.invars) == len(eqn.invars):
            sub, in_live = _slice(body, outs, ctx)
            counts += sub
        else:
            counts += (
                _body_counts(eqn, ctx) if _has_body(eqn) else _eqn_counts(eqn, ctx)
            )
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
      >>> import jax
      >>> cj = jax.make_jaxpr(lambda w, x: jnp.tanh(x @ w).sum())(
      ...     jnp.ones((16, 2), jnp.bfloat16), jnp.ones((3, 16), jnp.bfloat16))
      >>> rounding_counts(cj)[0]
      [Counter({'float32': 22, 'bfloat16': 6})]
      >>> rounding_counts(cj, accumulation=None)[0]
      [Counter({'bfloat16': 21, 'float32': 6})]
    """
    ctx = Context(accumulation)
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


def describe(counts: Counts) -> str:
    """The counts as text, lowest precision first.

    Examples:
      >>> describe(Counts({"float32": 1200, "bfloat16": 57}))
      'bfloat16: 57, float32: 1,200'
    """
    order = sorted(counts, key=lambda d: -unit_roundoff(d))
    return ", ".join(f"{d}: {counts[d]:,}" for d in order if counts[d])


def noisy_eval(
    jaxpr: Any, consts: Sequence[Any], args: Sequence[Any],
    noise: Callable[[tuple[int, ...], Any], Any], u: float, ctx: Context,
) -> list:  # fmt: skip
    """Evaluates ``jaxpr`` with every rounding operation's result multiplied by
    ``1 + u xi`` (inside one-to-one calls too), ``xi = noise(shape, dtype)``
    with entries in ``[-1, 1]``, drawn in the order of the equations.

    Examples:
      >>> import jax
      >>> cj = jax.make_jaxpr(lambda x: jnp.exp(x) + 1.0)(jnp.zeros(2))
      >>> half = lambda shape, dtype: jnp.full(shape, 0.5, dtype)
      >>> out = noisy_eval(cj.jaxpr, [], [jnp.zeros(2)], half, 0.1, Context(None))
      >>> [round(v, 5) for v in out[0].tolist()]  # (1 * 1.05 + 1) * 1.05
      [2.1525, 2.1525]
    """
    env: dict = {}

    def read(a: Any) -> Any:
        return a.val if isinstance(a, jcore.Literal) else env[a]

    env.update(zip(jaxpr.constvars, consts, strict=True))
    env.update(zip(jaxpr.invars, args, strict=True))
    for eqn in jaxpr.eqns:
        ins = [read(a) for a in eqn.invars]
        body, inner_consts = call_jaxpr(eqn) if is_call(eqn) else (None, [])
        if body is not None and len(body.invars) == len(ins):
            outs = noisy_eval(body, inner_consts, ins, noise, u, ctx)
        else:
            outs = eqn.primitive.bind(*ins, **eqn.params)
            outs = outs if eqn.primitive.multiple_results else [outs]
            rounds = _has_body(eqn) or sum(_eqn_counts(eqn, ctx).values())
            if rounds:
                outs = [_jitter(o, noise, u) for o in outs]
        env.update(zip(eqn.outvars, outs, strict=True))
    return [read(v) for v in jaxpr.outvars]


def _jitter(x: Any, noise: Callable[[tuple[int, ...], Any], Any], u: float) -> Any:
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.floating):
        return x
    return x * (1 + u * noise(tuple(jnp.shape(x)), dtype))


# --------------------------------------------------------------------------- #
