"""Fixed randomness: ``f`` must be a function of its arguments."""

from __future__ import annotations

import dataclasses
import html
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..derivatives._common import _GradOf, _prepare, _UserGradOf, _value_jit, _ValueOf
from ..report import html_headline
from ._common import PyTree, _is_key


class NondeterminismError(ValueError):
    """Raised by :func:`assert_deterministic` when ``f`` (or its gradient) gives
    different values at the same point. ``.report`` holds the
    :class:`DeterminismReport`."""

    def __init__(self, message: str, report: DeterminismReport | None = None):
        super().__init__(message)
        self.report = report


@dataclasses.dataclass(frozen=True)
class DeterminismReport:
    """The result of :func:`check_determinism`.

    Attributes:
      deterministic: True when every repeated evaluation agreed.
      eager: ``f`` evaluated twice without ``jax.jit``.
      jitted: ``f`` evaluated twice under ``jax.jit`` (empty if not run).
      grad_difference: the largest difference between two evaluations of the
        gradient, relative to its largest entry (``nan`` if not run).
      keys: the PRNG keys among ``args`` (held fixed by every check).
      causes: one sentence per problem found, naming the likely cause.
    """

    deterministic: bool
    eager: tuple[float, ...]
    jitted: tuple[float, ...]
    grad_difference: float
    keys: tuple[str, ...]
    causes: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return self.deterministic

    def headline(self) -> str:
        status = "PASSED" if self.deterministic else "FAILED"
        keys = (
            f"PRNG keys held fixed: {', '.join(self.keys)}"
            if self.keys
            else "no PRNG key among args"
        )
        return (
            f"jaxcheck: determinism check {status}: f evaluated twice per mode; {keys}."
        )

    def __str__(self) -> str:
        lines = [self.headline()]
        lines.append(f"  eager: {', '.join(repr(v) for v in self.eager)}")
        if self.jitted:
            lines.append(f"  jit:   {', '.join(repr(v) for v in self.jitted)}")
        if not math.isnan(self.grad_difference):
            lines.append(
                f"  gradient: max relative difference {self.grad_difference:.3g}"
            )
        lines.extend(f"  cause: {c}" for c in self.causes)
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        items = "".join(f"<li>{html.escape(c)}</li>" for c in self.causes)
        return (
            "<div>"
            + html_headline(self.headline(), self.deterministic)
            + f"<pre>{html.escape(str(self))}</pre>"
            + (f"<ul>{items}</ul>" if items else "")
            + "</div>"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "deterministic": self.deterministic,
            "eager": list(self.eager),
            "jitted": list(self.jitted),
            "grad_difference": self.grad_difference,
            "keys": list(self.keys),
            "causes": list(self.causes),
        }


_FIX = (
    "Pass a `jax.random` key as an argument of f (checks hold every argument "
    "fixed) and derive all randomness from it, e.g. a dropout mask "
    "`jax.random.bernoulli(key, keep, x.shape)`; or turn dropout and random "
    "augmentation off for the check."
)


def _differ(a: float, b: float, tol: float) -> bool:
    if math.isnan(a) and math.isnan(b):
        return False
    return not abs(a - b) <= tol


def _grad_difference(gf: Callable[..., list], dp: list, da: list) -> float:
    """The largest difference between two evaluations of the gradient, relative
    to its largest entry."""
    g1 = [np.asarray(g, np.float64).reshape(-1) for g in gf(dp, da)]
    g2 = [np.asarray(g, np.float64).reshape(-1) for g in gf(dp, da)]
    top = max((float(np.max(np.abs(g))) for g in g1 if g.size), default=0.0)
    diff = max(
        (float(np.max(np.abs(a - b))) for a, b in zip(g1, g2, strict=True) if a.size),
        default=0.0,
    )
    return diff / top if top > 0 else diff


def _evaluate(
    f: Callable[..., Any],
    params: PyTree,
    args: tuple,
    jit: bool,
    grad: bool,
    grad_fn: Callable[..., PyTree] | None,
) -> tuple[float, tuple[float, ...], tuple[float, ...], float]:
    """``(eps, eager values, jitted values, gradient difference)``."""
    with jax.enable_x64(True):
        point = _prepare(params, args)
        full = point.fn(f)
        dp, da = point.dyn_params, point.dyn_args
        out = jax.eval_shape(full, None, dp, da)
        eps = float(jnp.finfo(out.dtype).eps) if hasattr(out, "dtype") else 2.2e-16
        eager = (float(full(None, dp, da)), float(full(None, dp, da)))
        jitted: tuple[float, ...] = ()
        if jit:
            vf = _ValueOf(full)
            jitted = (float(_value_jit(vf, dp, da)), float(_value_jit(vf, dp, da)))
        if not grad:
            return eps, eager, jitted, math.nan
        if grad_fn is None:
            gf: Callable[..., list] = _GradOf(full, point.checked_dyn)
        else:
            gf = _UserGradOf(grad_fn, full, tuple(i.path for i in point.checked))
        return eps, eager, jitted, _grad_difference(gf, dp, da)


def _causes(
    eps: float, eager: tuple[float, ...], jitted: tuple[float, ...], grad_diff: float
) -> list[str]:
    """One sentence per problem found in the repeated evaluations."""
    values = [v for v in eager + jitted if math.isfinite(v)]
    scale = max((abs(v) for v in values), default=1.0)
    tol = 64 * eps * max(scale, 1e-300)
    causes = []
    eager_differs = _differ(*eager, tol)
    jit_differs = bool(jitted) and _differ(*jitted, tol)
    if eager_differs:
        frozen = (
            "; under jax.jit the draw is frozen at trace time, which hides it"
            if jitted and not jit_differs
            else ""
        )
        causes.append(
            f"f returns different values when evaluated twice at the same point "
            f"({eager[0]!r} vs {eager[1]!r}): it draws randomness that is not a "
            "function of its arguments — a PRNG key not threaded through (np.random, "
            "Python's random, a global key split on every call) or dropout that is "
            f"not fixed{frozen}. {_FIX}"
        )
    if jit_differs:
        causes.append(
            f"under jax.jit, two calls of f at the same point differ ({jitted[0]!r} "
            f"vs {jitted[1]!r}): f reads state that changes between calls (a "
            "callback, a global counter or key read through a callback) or uses "
            "non-deterministic ops. " + _FIX
        )
    if (
        jitted
        and not eager_differs
        and not jit_differs
        and _differ(eager[0], jitted[0], max(tol, 1e-6 * scale))
    ):
        causes.append(
            f"f gives {eager[0]!r} eagerly but {jitted[0]!r} under jax.jit: it draws "
            "random numbers or reads Python state at trace time (jit freezes them), "
            "e.g. np.random inside f. " + _FIX
        )
    if not causes and not math.isnan(grad_diff) and grad_diff > 64 * eps:
        causes.append(
            f"the gradient differs between two evaluations at the same point (max "
            f"relative difference {grad_diff:.3g}): the backward pass draws its own "
            "randomness, e.g. a dropout mask re-drawn in a custom_vjp bwd (or a "
            "hand-written backward) instead of the mask saved from the forward pass. "
            + _FIX
        )
    return causes


def check_determinism(
    f: Callable[..., Any],
    params: PyTree,
    *args: Any,
    jit: bool = True,
    grad: bool = True,
    grad_fn: Callable[..., PyTree] | None = None,
) -> DeterminismReport:
    """Evaluates ``f`` twice at the same point (eagerly and under ``jax.jit``),
    and its gradient twice, and reports any difference with its likely cause.

    Every gradient check evaluates ``f`` many times at nearby points and
    assumes it is a function of ``(params, *args)`` alone; PRNG keys among
    ``args`` are passed unchanged to every evaluation, so randomness drawn from
    them is held fixed. Randomness drawn any other way (``np.random``, Python's
    ``random``, a global key split on every call) makes the finite differences
    meaningless. Values agree when they differ by at most 64 ulps of ``|f|``.
    Never raises on a difference: see :func:`assert_deterministic`.

    Args:
      f: the scalar function, called as ``f(params, *args)``.
      params: any pytree.
      *args: held fixed.
      jit: also evaluate twice under ``jax.jit`` and compare with eager.
      grad: also evaluate the gradient twice (``jax.grad``, or ``grad_fn``).
      grad_fn: a hand-written gradient to evaluate instead of ``jax.grad(f)``.

    Returns:
      a :class:`DeterminismReport`.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jaxcheck.protocol import check_determinism
      >>> def loss(w, x, key):
      ...     keep = jax.random.bernoulli(key, 0.8, x.shape)
      ...     return jnp.sum(jnp.where(keep, x / 0.8, 0.0) @ w)
      >>> report = check_determinism(loss, jnp.ones(3), jnp.ones((2, 3)),
      ...                            jax.random.key(0))
      >>> report.deterministic, report.keys
      (True, ('args[1]',))
    """
    eps, eager, jitted, grad_diff = _evaluate(f, params, args, jit, grad, grad_fn)
    keys = tuple(
        "args" + jax.tree_util.keystr(path)
        for path, leaf in jax.tree_util.tree_flatten_with_path(args)[0]
        if _is_key(leaf)
    )
    causes = _causes(eps, eager, jitted, grad_diff)
    return DeterminismReport(
        deterministic=not causes,
        eager=eager,
        jitted=jitted,
        grad_difference=grad_diff,
        keys=keys,
        causes=tuple(causes),
    )


def assert_deterministic(
    f: Callable[..., Any],
    params: PyTree,
    *args: Any,
    jit: bool = True,
    grad: bool = True,
    grad_fn: Callable[..., PyTree] | None = None,
) -> DeterminismReport:
    """Like :func:`check_determinism`, but raises when ``f`` is not deterministic.

    Call it before a check: ``check_grads`` assumes ``f`` is a function of its
    arguments and does not test it (that takes a few more evaluations).

    Raises:
      NondeterminismError: (a ``ValueError``) naming the likely cause: a PRNG key
        not threaded through, dropout not fixed, randomness in the backward pass.

    Examples:
      >>> import numpy as np, jax.numpy as jnp
      >>> from jaxcheck.protocol import assert_deterministic
      >>> def noisy(w, x):  # dropout mask from NumPy: not a function of the args
      ...     keep = np.random.default_rng().random(x.shape) < 0.8
      ...     return jnp.sum(jnp.where(keep, x, 0.0) @ w)
      >>> x = jnp.asarray(np.random.default_rng(0).normal(size=(50, 3)))
      >>> try:  # (distinct entries: two masks never give the same sum)
      ...     assert_deterministic(noisy, jnp.ones(3), x)
      ... except ValueError as e:
      ...     print("key not threaded" in str(e))
      True
    """
    report = check_determinism(f, params, *args, jit=jit, grad=grad, grad_fn=grad_fn)
    if not report.deterministic:
        raise NondeterminismError(
            "jaxcheck: f is not deterministic at the given point, so no finite-"
            "difference check can be trusted.\n  " + "\n  ".join(report.causes),
            report,
        )
    return report
