"""Loss terms checked separately, with the ratio of their gradient norms."""

from __future__ import annotations

import dataclasses
import html
import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from .. import tree
from ..check import check_grads
from ..derivatives._common import _GradOf, _prepare, _UserGradOf, _value_jit
from ..options import callable_name
from ..report import GradCheckReport, html_headline, text_table
from ._common import PyTree, _float_positions, _merge


class DominatedTermWarning(UserWarning):
    """Warned by :func:`check_loss_terms` when one term's gradient is so much
    smaller than another's that a bug in it would be masked in the sum."""


@dataclasses.dataclass(frozen=True)
class _SumOf:
    """Hashable sum of the terms."""

    fns: tuple[Callable[..., Any], ...]

    def __call__(self, params: PyTree, *args: Any) -> jax.Array:
        values = [fn(params, *args) for fn in self.fns]
        return sum(values[1:], start=values[0])


def _grad_tree(fn: Callable[..., Any], params: PyTree, args: tuple) -> PyTree:
    """``jax.grad(fn)`` over the floating leaves; ``None`` at the other leaves."""
    leaves, pos, treedef = _float_positions(params)
    grads = jax.grad(lambda t: fn(_merge(leaves, pos, treedef, t), *args))(
        [leaves[k] for k in pos]
    )
    out: list[Any] = [None] * len(leaves)
    for k, g in zip(pos, grads, strict=True):
        out[k] = g
    return jax.tree_util.tree_unflatten(treedef, out)


class _SumGrad:
    """The gradient of the sum: each term's ``grad_fns[name]`` or ``jax.grad``."""

    def __init__(self, fns: dict[str, Callable], grad_fns: Mapping[str, Callable]):
        self.fns = fns
        self.grad_fns = grad_fns
        self.__qualname__ = "sum of " + ", ".join(
            callable_name(grad_fns[n]) if n in grad_fns else f"jax.grad({n})"
            for n in fns
        )

    def __call__(self, params: PyTree, *args: Any) -> PyTree:
        total: list[Any] | None = None
        treedef = None
        for name, fn in self.fns.items():
            g = (
                self.grad_fns[name](params, *args)
                if name in self.grad_fns
                else _grad_tree(fn, params, args)
            )
            g_leaves, _, treedef = tree.flatten(g)
            if total is None:
                total = list(g_leaves)
            else:
                total = [
                    b if a is None else a if b is None else a + b
                    for a, b in zip(total, g_leaves, strict=True)
                ]
        return jax.tree_util.tree_unflatten(treedef, total)


@dataclasses.dataclass(frozen=True)
class LossTermsReport:
    """The result of :func:`check_loss_terms`.

    Attributes:
      terms: ``{name: GradCheckReport}``, one check per loss term.
      total: the check of the sum of the terms.
      grad_norms: ``{name: |grad of the term|}`` over all checked leaves.
      leaf_norms: ``{name: {leaf path: |grad of the term on that leaf|}}``.
      dominated: the terms whose gradient norm is below ``1 / dominance`` of the
        largest term's: a bug in them would be masked in the sum.
      dominance: the ratio above which a term counts as dominated.
      notes: remarks the reader should see.
    """

    terms: dict[str, GradCheckReport]
    total: GradCheckReport
    grad_norms: dict[str, float]
    leaf_norms: dict[str, dict[str, float]]
    dominated: tuple[str, ...]
    dominance: float
    notes: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        """True when every term and the sum passed."""
        return self.total.passed and all(r.passed for r in self.terms.values())

    @property
    def failed_terms(self) -> tuple[str, ...]:
        """The names of the terms whose check failed."""
        return tuple(n for n, r in self.terms.items() if not r.passed)

    def ratio(self, name: str) -> float:
        """``|grad name| / max over terms |grad term|``."""
        top = max(self.grad_norms.values(), default=0.0)
        return self.grad_norms[name] / top if top > 0 else 0.0

    def headline(self) -> str:
        """One line: the verdict of every term and of the sum."""
        status = "PASSED" if self.passed else "FAILED"
        parts = [
            f"{n} {'passed' if r.passed else 'FAILED'}" for n, r in self.terms.items()
        ]
        parts.append(f"sum {'passed' if self.total.passed else 'FAILED'}")
        text = f"jaxcheck: loss-term check {status}: " + ", ".join(parts)
        if self.dominated:
            text += f"; dominated: {', '.join(self.dominated)}"
        return text + "."

    _HEADER = (
        "term",
        "grad norm",
        "ratio to largest",
        "max rel err",
        "wrong",
        "verdict",
    )

    def _rows(self) -> list[list[str]]:
        rows = []
        for name, r in self.terms.items():
            rows.append(
                [
                    name,
                    f"{self.grad_norms[name]:.3e}",
                    f"{self.ratio(name):.3e}",
                    f"{r.max_rel_error:.2e}",
                    str(r.num_wrong),
                    "ok" if r.passed else "FAIL",
                ]
            )
        t = self.total
        rows.append(
            ["(sum)", "", "", f"{t.max_rel_error:.2e}", str(t.num_wrong),
             "ok" if t.passed else "FAIL"]
        )  # fmt: skip
        return rows

    def __str__(self) -> str:
        lines = [self.headline(), *text_table([list(self._HEADER), *self._rows()])]
        for name, r in self.terms.items():
            if not r.passed:
                lines.append(f"--- term {name} ---")
                lines.append(r.failure_message())
        if not self.total.passed:
            lines.append("--- sum ---")
            lines.append(self.total.failure_message())
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        esc = html.escape
        parts = [
            "<div>" + html_headline(self.headline(), self.passed),
            "<table><thead><tr>",
            "".join(f"<th>{esc(h)}</th>" for h in self._HEADER),
            "</tr></thead><tbody>",
        ]
        for row in self._rows():
            style = ' style="background:#ffebee"' if row[-1] == "FAIL" else ""
            parts.append(
                f"<tr{style}>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>"
            )
        parts.append("</tbody></table>")
        parts.extend(f"<p>Note: {esc(n)}</p>" for n in self.notes)
        for name, r in self.terms.items():
            if not r.passed:
                parts.append(f"<h4>term {esc(name)}</h4>{r._repr_html_()}")
        parts.append("</div>")
        return "".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of the whole report."""
        return {
            "passed": self.passed,
            "terms": {n: r.to_dict() for n, r in self.terms.items()},
            "total": self.total.to_dict(),
            "grad_norms": dict(self.grad_norms),
            "ratios": {n: self.ratio(n) for n in self.terms},
            "leaf_norms": {n: dict(v) for n, v in self.leaf_norms.items()},
            "dominated": list(self.dominated),
            "dominance": self.dominance,
            "notes": list(self.notes),
        }


def _resolve_terms(
    terms: Mapping[str, Callable[..., Any]], grad_fns: Mapping[str, Callable] | None
) -> tuple[dict[str, Callable[..., Any]], dict[str, Callable[..., PyTree]]]:
    """``(terms, grad_fns)`` as plain dicts, validated."""
    if not isinstance(terms, Mapping):
        raise TypeError(
            "`terms` must be a dict {name: f(params, *args)} of scalar loss "
            f"functions, got {type(terms).__name__}. For one function `fn` that "
            "returns a dict of terms, pass "
            "`{n: (lambda p, *a, n=n: fn(p, *a)[n]) for n in names}`."
        )
    if not terms:
        raise ValueError("`terms` is an empty dict; give at least one loss term.")
    bad = [n for n, fn in terms.items() if not callable(fn)]
    if bad:
        raise TypeError(
            f"Every value of `terms` must be a function f(params, *args); the "
            f"terms {bad} are not callable."
        )
    fns = {str(n): fn for n, fn in terms.items()}
    grads = dict(grad_fns or {})
    unknown = [n for n in grads if n not in fns]
    if unknown:
        raise ValueError(
            f"`grad_fns` names terms {unknown} that are not among the loss terms "
            f"{list(fns)}."
        )
    return fns, grads


def _gradient_norms(
    fns: dict[str, Callable[..., Any]],
    grad_fns: dict[str, Callable[..., PyTree]],
    params: PyTree,
    args: tuple,
) -> dict[str, dict[str, float]]:
    """``{term: {leaf path: |gradient of the term on that leaf|}}`` in float64."""
    leaf_norms: dict[str, dict[str, float]] = {}
    with jax.enable_x64(True):
        point = _prepare(params, args)
        dp, da = point.dyn_params, point.dyn_args
        paths = tuple(i.path for i in point.checked)
        for name, fn in fns.items():
            full = point.fn(fn)
            if name in grad_fns:
                grads = _UserGradOf(grad_fns[name], full, paths)(dp, da)
            else:
                grads = _value_jit(_GradOf(full, point.checked_dyn), dp, da)
            leaf_norms[name] = {
                p: float(np.linalg.norm(np.asarray(g, np.float64)))
                for p, g in zip(paths, grads, strict=True)
            }
    return leaf_norms


def _dominated(
    grad_norms: dict[str, float], dominance: float
) -> tuple[tuple[str, ...], list[str]]:
    """The dominated terms, and one note per dominated term saying what it means."""
    top_name = max(grad_norms, key=lambda n: grad_norms[n])
    top = grad_norms[top_name]
    dominated = tuple(
        n
        for n in grad_norms
        if n != top_name and (top > 0 and grad_norms[n] * dominance < top)
    )
    notes = []
    for n in dominated:
        ratio = grad_norms[n] / top
        size = (
            "zero at this point"
            if ratio == 0
            else f"{1 / ratio:.3g} times smaller than that of {top_name!r}"
        )
        notes.append(
            f"the gradient of loss term {n!r} is {size} (norms {grad_norms[n]:.3g} vs "
            f"{top:.3g}). In the sum, a bug in {n!r} changes the gradient by only "
            f"~{ratio:.2g} relative, so a check of the sum with a bar above that "
            f"would miss it; this report checks {n!r} on its own. To check it inside "
            "the sum too, raise its weight (e.g. the regularization strength) for "
            "the check."
        )
    return dominated, notes


def check_loss_terms(
    terms: Mapping[str, Callable[..., Any]],
    params: PyTree,
    *args: Any,
    grad_fns: Mapping[str, Callable[..., PyTree]] | None = None,
    dominance: float = 100.0,
    warn: bool = True,
    **check_kwargs: Any,
) -> LossTermsReport:
    """Checks each loss term separately, and their sum, and compares their
    gradient norms.

    The notes: the regularization can overwhelm the data loss (or the other way
    round), and then a bug in the smaller term barely moves the gradient of the
    sum: a regularization gradient missing a factor 2 passes a check of the sum
    at ``rtol=1e-4`` when its gradient is 1e-4 of the data gradient. Each term
    is checked on its own with :func:`jaxcheck.check_grads`, where such a bug is
    a relative error of 0.5.

    Args:
      terms: ``{"data": f_data, "reg": f_reg, ...}``, each a scalar function
        called as ``f(params, *args)``.
      params: any pytree.
      *args: held fixed, passed to every term.
      grad_fns: hand-written gradients of some terms, ``{name: grad_fn}``; the
        sum is then checked against their sum (``jax.grad`` for the others).
      dominance: a term whose gradient norm is more than this many times smaller
        than the largest term's is reported as dominated.
      warn: warn (:class:`DominatedTermWarning`) about dominated terms.
      **check_kwargs: passed to each :func:`jaxcheck.check_grads` (``coords``,
        ``rtol``, ``step``, ...).

    Returns:
      a :class:`LossTermsReport`.

    Raises:
      TypeError: if ``terms`` is not a dict of functions, or ``grad_fn`` is
        passed (use ``grad_fns``).
      ValueError: if ``grad_fns`` names an unknown term, or ``dominance <= 1``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jaxcheck.protocol import check_loss_terms
      >>> @jax.custom_vjp
      ... def l2(w):
      ...     return jnp.sum(w ** 2)
      >>> l2.defvjp(lambda w: (l2(w), w), lambda w, g: (g * w,))  # forgot the 2
      >>> terms = {"data": lambda w, x: jnp.sum(jnp.sin(x @ w)),
      ...          "reg": lambda w, x: 1e-3 * l2(w)}
      >>> report = check_loss_terms(terms, jnp.ones(3), jnp.ones((4, 3)), warn=False)
      >>> report.failed_terms
      ('reg',)
    """
    if "grad_fn" in check_kwargs:
        raise TypeError(
            "`check_loss_terms` takes hand-written gradients per term as "
            "`grad_fns={name: grad_fn}`, not `grad_fn=`."
        )
    if not (isinstance(dominance, int | float) and dominance > 1):
        raise ValueError(
            f"`dominance` must be a number > 1, got {dominance!r}; e.g. 100 flags a "
            "term whose gradient is 100 times smaller than another's."
        )
    fns, grad_fns = _resolve_terms(terms, grad_fns)
    reports = {
        name: check_grads(fn, params, *args, grad_fn=grad_fns.get(name), **check_kwargs)
        for name, fn in fns.items()
    }
    total = check_grads(
        _SumOf(tuple(fns.values())), params, *args,
        grad_fn=_SumGrad(fns, grad_fns) if grad_fns else None, **check_kwargs,
    )  # fmt: skip
    leaf_norms = _gradient_norms(fns, grad_fns, params, args)
    grad_norms = {
        n: math.sqrt(sum(v * v for v in per.values())) for n, per in leaf_norms.items()
    }
    dominated, notes = _dominated(grad_norms, dominance)
    if warn:
        for msg in notes:
            warnings.warn("jaxcheck: " + msg, DominatedTermWarning, stacklevel=2)
    return LossTermsReport(
        terms=reports,
        total=total,
        grad_norms=grad_norms,
        leaf_norms=leaf_norms,
        dominated=dominated,
        dominance=float(dominance),
        notes=tuple(notes),
    )
