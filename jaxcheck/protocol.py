"""The checking protocol of the notes: burn-in, loss terms, few datapoints and
fixed randomness.

A gradient check at one random point can pass a wrong gradient. The notes'
protocol, each step a function here:

* **Characteristic mode.** :func:`burn_in` runs a short optimisation (plain SGD
  or any optax ``GradientTransformation``) and reports when the loss did not go
  down; :func:`check_after_burn_in` checks the gradient at the point it
  reaches. A multiclass SVM gradient that treats every margin as violated is
  exact at a tiny initialisation (every margin *is* violated there) and wrong
  after a few steps.
* **Loss terms separately.** :func:`check_loss_terms` checks the data loss, the
  regularization and their sum, reports the ratio of their gradient norms, and
  warns (:class:`DominatedTermWarning`) when one term's gradient is so small
  next to another's that a bug in it would be masked in the sum.
* **Few datapoints.** :func:`take_datapoints` cuts the batch arguments to ``k``
  examples; :func:`check_few_datapoints` checks on them and records the cut.
* **Fixed randomness.** PRNG keys among ``args`` are passed unchanged to every
  evaluation of a check; :func:`check_determinism` / :func:`assert_deterministic`
  evaluate ``f`` twice (eagerly and under ``jax.jit``) and name the likely cause
  when the values differ (a key not threaded through, dropout not fixed).
"""

from __future__ import annotations

import dataclasses
import html
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from . import tree
from .check import validate_callables
from .derivatives import (
    _callable_name,
    _GradOf,
    _prepare,
    _UserGradOf,
    _value_jit,
    _ValueOf,
)
from .report import GradCheckReport, html_headline, text_table

PyTree = Any
OnFailure = Literal["warn", "raise", "ignore"]


def _check_grads() -> Callable[..., GradCheckReport]:
    """:func:`jaxcheck.check_grads`, imported late (``check.py`` may dispatch here)."""
    from .check import check_grads

    return check_grads


def _with_note(report: Any, note: str) -> Any:
    return dataclasses.replace(report, notes=tuple(report.notes) + (note,))


def _fmt(x: float) -> str:
    return f"{x:.4g}"


# --------------------------------------------------------------------------- #
# Burn-in.
# --------------------------------------------------------------------------- #


class BurnInWarning(UserWarning):
    """Warned by :func:`burn_in` when the loss did not go down."""


class BurnInError(RuntimeError):
    """Raised by :func:`burn_in` with ``on_failure="raise"`` when the loss did not
    go down."""


@dataclasses.dataclass(frozen=True)
class BurnInResult:
    """The result of :func:`run_burn_in`.

    Attributes:
      params: the parameters after the burn-in (same structure and dtypes).
      losses: the loss before every step and after the last one
        (``steps + 1`` values).
      optimizer: a description of the optimiser.
      steps: the number of steps.
      decreased: whether the final loss is finite and below the initial one.
      message: why the burn-in failed (empty when it did not).
    """

    params: PyTree
    losses: tuple[float, ...]
    optimizer: str
    steps: int
    decreased: bool
    message: str = ""

    @property
    def initial_loss(self) -> float:
        return self.losses[0]

    @property
    def final_loss(self) -> float:
        return self.losses[-1]

    def summary(self) -> str:
        """One line: the optimiser and how the loss moved."""
        return (
            f"burn-in: {self.steps} steps of {self.optimizer}: loss "
            f"{_fmt(self.initial_loss)} -> {_fmt(self.final_loss)}"
            + ("" if self.decreased else " (did NOT go down)")
        )

    def __str__(self) -> str:
        text = "jaxcheck: " + self.summary() + "."
        return text + (f"\n  {self.message}" if self.message else "")

    def _repr_html_(self) -> str:
        return f"<div>{html_headline(str(self), self.decreased)}</div>"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (without the parameters)."""
        return {
            "losses": list(self.losses),
            "optimizer": self.optimizer,
            "steps": self.steps,
            "decreased": self.decreased,
            "message": self.message,
        }


def _float_positions(params: PyTree) -> tuple[list[Any], list[int], Any]:
    leaves, infos, treedef = tree.leaf_infos(params)
    pos = [i.pos for i in infos if i.checked]
    if not pos:
        raise ValueError(
            "`params` has no floating-point array leaf to optimise or check "
            f"(leaves: {[(i.path, i.dtype) for i in infos]}). Pass float arrays."
        )
    return leaves, pos, treedef


def _merge(leaves: list, pos: list[int], treedef: Any, train: Sequence) -> PyTree:
    full = list(leaves)
    for k, v in zip(pos, train, strict=True):
        full[k] = v
    return jax.tree_util.tree_unflatten(treedef, full)


def _select(grads: PyTree, pos: list[int], paths: list[str], name: str) -> list:
    g_leaves, g_paths, _ = tree.flatten(grads)
    by_path = dict(zip(g_paths, g_leaves, strict=True))
    out = []
    for k in pos:
        g = by_path.get(paths[k])
        if g is None:
            raise ValueError(
                f"`grad_fn` ({name}) returned no gradient for leaf {paths[k]}. It must "
                "return a pytree shaped like `params`."
            )
        out.append(jnp.asarray(g))
    return out


def run_burn_in(
    f: Callable[..., Any],
    params: PyTree,
    *args: Any,
    steps: int,
    learning_rate: float = 1e-2,
    optimizer: Any = None,
    grad_fn: Callable[..., PyTree] | None = None,
    on_failure: OnFailure = "warn",
    _stacklevel: int = 2,
) -> BurnInResult:
    """Like :func:`burn_in`, but returns the losses and the verdict too.

    Args:
      f: the scalar loss, called as ``f(params, *args)``.
      params: any pytree; its floating-point array leaves are optimised, the
        other leaves are left alone.
      *args: held fixed (the batch, labels, PRNG keys).
      steps: the number of optimisation steps (>= 1).
      learning_rate: the step size of plain SGD (ignored with ``optimizer``).
      optimizer: any object with optax's ``init``/``update`` interface (an
        ``optax.GradientTransformation``); default plain SGD.
      grad_fn: the gradient to follow, ``grad_fn(params, *args)``; default
        ``jax.grad(f)``. Pass the gradient you are checking: it is the one your
        training uses.
      on_failure: what to do when the loss did not go down: ``"warn"``
        (:class:`BurnInWarning`), ``"raise"`` (:class:`BurnInError`) or
        ``"ignore"``.

    Returns:
      a :class:`BurnInResult`.

    Raises:
      BurnInError: with ``on_failure="raise"``, when the loss did not go down.
      ValueError: for invalid options.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxcheck.protocol import run_burn_in
      >>> result = run_burn_in(lambda w: jnp.sum((w - 3.0) ** 2), jnp.zeros(2),
      ...                      steps=10, learning_rate=0.1)
      >>> result.decreased, round(result.initial_loss, 3), result.final_loss < 1
      (True, 18.0, True)
    """
    validate_callables(f)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(
            f"`steps` must be an int >= 1, got {steps!r}. A burn-in of 20-200 steps "
            "usually moves away from the initialisation."
        )
    if optimizer is None:
        if not (
            isinstance(learning_rate, int | float | np.floating)
            and math.isfinite(learning_rate)
            and learning_rate > 0
        ):
            raise ValueError(
                f"`learning_rate` must be a positive finite number, got "
                f"{learning_rate!r}."
            )
        opt_name = f"SGD (learning rate {learning_rate:g})"
    else:
        if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
            raise TypeError(
                f"`optimizer` must be an optax GradientTransformation (with `init` "
                f"and `update`), got {type(optimizer).__name__}. E.g. "
                "`optax.adam(1e-3)`, or leave it None for plain SGD."
            )
        opt_name = f"optimizer {type(optimizer).__name__}"
    if on_failure not in ("warn", "raise", "ignore"):
        raise ValueError(
            f'`on_failure` must be "warn", "raise" or "ignore", got {on_failure!r}.'
        )
    leaves, pos, treedef = _float_positions(params)
    _, paths, _ = tree.flatten(params)
    lr = float(learning_rate)

    def loss_of(train: list) -> jax.Array:
        return f(_merge(leaves, pos, treedef, train), *args)

    def update(train: list, grads: list, state: Any) -> tuple[list, Any]:
        if optimizer is None:
            new = [
                (p - lr * g).astype(p.dtype) for p, g in zip(train, grads, strict=True)
            ]
            return new, state
        updates, state = optimizer.update(grads, state, train)
        new = [(p + u).astype(p.dtype) for p, u in zip(train, updates, strict=True)]
        return new, state

    @jax.jit
    def step(train: list, state: Any) -> tuple[list, Any, jax.Array]:
        loss, grads = jax.value_and_grad(loss_of)(train)
        train, state = update(train, grads, state)
        return train, state, loss

    loss_jit = jax.jit(loss_of)
    update_jit = jax.jit(update)
    train = [jnp.asarray(leaves[k]) for k in pos]
    state = None if optimizer is None else optimizer.init(train)
    losses = []
    for _ in range(steps):
        if grad_fn is None:
            train, state, loss = step(train, state)
        else:
            loss = loss_jit(train)
            grads = grad_fn(_merge(leaves, pos, treedef, train), *args)
            grads = _select(grads, pos, paths, _callable_name(grad_fn))
            grads = [g.astype(p.dtype) for g, p in zip(grads, train, strict=True)]
            train, state = update_jit(train, grads, state)
        losses.append(float(loss))
    losses.append(float(loss_jit(train)))
    decreased = math.isfinite(losses[-1]) and losses[-1] < losses[0]
    message = ""
    if not decreased:
        message = (
            f"the loss did not go down during the burn-in ({steps} steps of "
            f"{opt_name}: {_fmt(losses[0])} -> {_fmt(losses[-1])}). A check after it "
            "is not at a 'characteristic' point. Lower the learning rate if the "
            "loss grew or became non-finite; if it never decreases, the gradient "
            "itself may be wrong (run check_grads at the initial point)."
        )
        if on_failure == "raise":
            raise BurnInError("jaxcheck: " + message)
        if on_failure == "warn":
            warnings.warn("jaxcheck: " + message, BurnInWarning, stacklevel=_stacklevel)
    return BurnInResult(
        params=_merge(leaves, pos, treedef, train),
        losses=tuple(losses),
        optimizer=opt_name,
        steps=steps,
        decreased=decreased,
        message=message,
    )


def burn_in(
    f: Callable[..., Any],
    params: PyTree,
    *args: Any,
    steps: int,
    learning_rate: float = 1e-2,
    optimizer: Any = None,
    grad_fn: Callable[..., PyTree] | None = None,
    on_failure: OnFailure = "warn",
) -> PyTree:
    """Runs a short optimisation of ``f`` and returns the new parameters.

    The notes: a random initialisation may not be a "characteristic" point, and
    a wrong gradient can look right there (e.g. an SVM at tiny weights, where
    every margin is violated). Check after a short burn-in, once the loss goes
    down. This is what ``check_grads(..., burn_in=steps)`` runs first.

    Args:
      f: the scalar loss, called as ``f(params, *args)``.
      params: any pytree; its floating-point array leaves are optimised.
      *args: held fixed.
      steps: the number of optimisation steps (>= 1).
      learning_rate: the step size of plain SGD (ignored with ``optimizer``).
      optimizer: an optax ``GradientTransformation``; default plain SGD.
      grad_fn: the gradient to follow; default ``jax.grad(f)``.
      on_failure: ``"warn"`` (default), ``"raise"`` or ``"ignore"`` when the
        loss did not go down.

    Returns:
      the parameters after ``steps`` steps, with the structure and dtypes of
      ``params``.

    Raises:
      BurnInError: with ``on_failure="raise"``, when the loss did not go down.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxcheck.protocol import burn_in
      >>> w = burn_in(lambda w: jnp.sum((w - 3.0) ** 2), jnp.zeros(2), steps=50,
      ...             learning_rate=0.1)
      >>> [round(float(v), 3) for v in w]
      [3.0, 3.0]
    """
    return run_burn_in(
        f, params, *args, steps=steps, learning_rate=learning_rate,
        optimizer=optimizer, grad_fn=grad_fn, on_failure=on_failure, _stacklevel=3,
    ).params  # fmt: skip


def check_after_burn_in(
    f: Callable[..., Any],
    params: PyTree,
    *args: Any,
    steps: int,
    learning_rate: float = 1e-2,
    optimizer: Any = None,
    on_failure: OnFailure = "warn",
    **check_kwargs: Any,
) -> GradCheckReport:
    """Burns in, then checks the gradient at the point reached.

    The burn-in follows ``check_kwargs["grad_fn"]`` when one is given (the
    gradient under test, as your training would), else ``jax.grad(f)``.

    Args:
      f: the scalar loss, called as ``f(params, *args)``.
      params: the initial parameters.
      *args: held fixed.
      steps: burn-in steps.
      learning_rate: SGD step size (ignored with ``optimizer``).
      optimizer: an optax ``GradientTransformation``; default plain SGD.
      on_failure: what :func:`burn_in` does when the loss did not go down.
      **check_kwargs: passed to :func:`jaxcheck.check_grads`.

    Returns:
      the :class:`jaxcheck.GradCheckReport` at the burned-in point; a note
      records the burn-in and its losses.

    Raises:
      BurnInError: with ``on_failure="raise"``, when the loss did not go down.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxcheck.protocol import check_after_burn_in
      >>> loss = lambda w: jnp.sum(jnp.log1p(jnp.exp(w)) - 0.5 * w)
      >>> report = check_after_burn_in(loss, jnp.ones(3), steps=5, learning_rate=0.5)
      >>> report.passed, report.notes[-1].startswith("burn-in: 5 steps of SGD")
      (True, True)
    """
    result = run_burn_in(
        f, params, *args, steps=steps, learning_rate=learning_rate,
        optimizer=optimizer, grad_fn=check_kwargs.get("grad_fn"), on_failure=on_failure,
        _stacklevel=3,
    )  # fmt: skip
    report = _check_grads()(f, result.params, *args, **check_kwargs)
    return _with_note(report, result.summary())


# --------------------------------------------------------------------------- #
# Loss terms.
# --------------------------------------------------------------------------- #


class DominatedTermWarning(UserWarning):
    """Warned by :func:`check_loss_terms` when one term's gradient is so much
    smaller than another's that a bug in it would be masked in the sum."""


@dataclasses.dataclass(frozen=True)
class _TermOf:
    """Hashable ``(params, *args) -> terms(params, *args)[name]``."""

    terms: Callable[..., Mapping[str, Any]]
    name: str

    def __call__(self, params: PyTree, *args: Any) -> jax.Array:
        return self.terms(params, *args)[self.name]


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
            _callable_name(grad_fns[n]) if n in grad_fns else f"jax.grad({n})"
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
    terms: Mapping[str, Callable[..., Any]] | Callable[..., Mapping[str, Any]],
    params: PyTree,
    args: tuple,
) -> dict[str, Callable[..., Any]]:
    if isinstance(terms, Mapping):
        if not terms:
            raise ValueError(
                "`terms` is an empty mapping; give at least one loss term."
            )
        bad = [n for n, fn in terms.items() if not callable(fn)]
        if bad:
            raise TypeError(
                f"Every value of `terms` must be a function f(params, *args); the "
                f"terms {bad} are not callable."
            )
        return {str(n): fn for n, fn in terms.items()}
    if not callable(terms):
        raise TypeError(
            "`terms` must be a mapping {name: f(params, *args)} or a function "
            f"returning such a mapping, got {type(terms).__name__}."
        )
    with jax.enable_x64(True):
        out = jax.eval_shape(terms, params, *args)
    if not isinstance(out, Mapping) or not out:
        raise TypeError(
            "`terms(params, *args)` must return a non-empty dict of scalar losses, "
            f"e.g. {{'data': ..., 'reg': ...}}; got {type(out).__name__}."
        )
    return {str(n): _TermOf(terms, n) for n in out}


def is_loss_terms(f: Any, params: PyTree, *args: Any) -> bool:
    """Whether ``f`` is a dict of loss terms or a function returning one.

    For ``check_grads`` to route such an ``f`` to :func:`check_loss_terms`; it
    traces ``f`` abstractly (``jax.eval_shape``) without running it.

    Args:
      f: a mapping of loss functions, or a function called as ``f(params, *args)``.
      params: the parameters ``f`` takes.
      *args: the other arguments of ``f``.

    Returns:
      True for a mapping, or a function whose output is a mapping; False
      otherwise (including when tracing ``f`` fails: ``check_grads`` then
      reports the error itself).

    Examples:
      >>> import jax.numpy as jnp
      >>> is_loss_terms(lambda p: {"data": jnp.sum(p), "reg": jnp.sum(p**2)}, jnp.ones(2))
      True
      >>> is_loss_terms(lambda p: jnp.sum(p), jnp.ones(2))
      False
    """
    if isinstance(f, Mapping):
        return True
    if not callable(f):
        return False
    try:
        with jax.enable_x64(True):
            out = jax.eval_shape(f, params, *args)
    except Exception:  # noqa: BLE001 - not ours to diagnose: check_grads will
        return False
    return isinstance(out, Mapping)


def check_loss_terms(
    terms: Mapping[str, Callable[..., Any]] | Callable[..., Mapping[str, Any]],
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
      terms: ``{"data": f_data, "reg": f_reg, ...}`` (each called as
        ``f(params, *args)``), or one function returning such a dict of scalars.
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
      TypeError: if ``terms`` is neither a dict of functions nor a function
        returning a dict, or ``grad_fn`` is passed (use ``grad_fns``).
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
    fns = _resolve_terms(terms, params, args)
    grad_fns = dict(grad_fns or {})
    unknown = [n for n in grad_fns if n not in fns]
    if unknown:
        raise ValueError(
            f"`grad_fns` names terms {unknown} that are not among the loss terms "
            f"{list(fns)}."
        )
    check = _check_grads()
    reports = {
        name: check(fn, params, *args, grad_fn=grad_fns.get(name), **check_kwargs)
        for name, fn in fns.items()
    }
    total_fn = _SumOf(tuple(fns.values()))
    total = check(
        total_fn, params, *args,
        grad_fn=_SumGrad(fns, grad_fns) if grad_fns else None, **check_kwargs,
    )  # fmt: skip

    # Gradient norms of every term, in float64, over the checked leaves.
    grad_norms: dict[str, float] = {}
    leaf_norms: dict[str, dict[str, float]] = {}
    with jax.enable_x64(True):
        point = _prepare(params, args)
        paths = tuple(i.path for i in point.checked)
        for name, fn in fns.items():
            full = point.fn(fn)
            if name in grad_fns:
                grads = _UserGradOf(grad_fns[name], full, paths)(
                    point.dyn_params, point.dyn_args
                )
            else:
                grads = _value_jit(
                    _GradOf(full, point.checked_dyn), point.dyn_params, point.dyn_args
                )
            per = {
                p: float(np.linalg.norm(np.asarray(g, np.float64)))
                for p, g in zip(paths, grads, strict=True)
            }
            leaf_norms[name] = per
            grad_norms[name] = math.sqrt(sum(v * v for v in per.values()))
    top_name = max(grad_norms, key=lambda n: grad_norms[n])
    top = grad_norms[top_name]
    dominated = tuple(
        n
        for n in fns
        if n != top_name and (top > 0 and grad_norms[n] * dominance < top)
    )
    notes = []
    for n in dominated:
        ratio = grad_norms[n] / top
        msg = (
            f"the gradient of loss term {n!r} is "
            + (
                "zero at this point"
                if ratio == 0
                else f"{1 / ratio:.3g} times smaller than that of {top_name!r}"
            )
            + f" (norms {grad_norms[n]:.3g} vs {top:.3g}). In the sum, a bug in {n!r} "
            f"changes the gradient by only ~{ratio:.2g} relative, so a check of the "
            f"sum with a bar above that would miss it; this report checks {n!r} on "
            "its own. To check it inside the sum too, raise its weight (e.g. the "
            "regularization strength) for the check."
        )
        notes.append(msg)
        if warn:
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


# --------------------------------------------------------------------------- #
# Few datapoints.
# --------------------------------------------------------------------------- #


@dataclasses.dataclass(frozen=True)
class DatapointsCut:
    """How :func:`take_datapoints` cut the batch arguments.

    Attributes:
      k: examples kept.
      axis: the batch axis.
      batch_size: examples in the batch before the cut.
      indices: the examples kept (positions along ``axis``).
      cut: the arguments that were cut, e.g. ``("args[0]", "args[1]['y']")``.
    """

    k: int
    axis: int
    batch_size: int
    indices: tuple[int, ...]
    cut: tuple[str, ...]

    def describe(self) -> str:
        """One sentence for a report's notes."""
        if self.k >= self.batch_size:
            return (
                f"few datapoints: the batch already has {self.batch_size} example(s) "
                f"<= k={self.k}; nothing was cut"
            )
        shown = list(self.indices[:8]) + (["..."] if len(self.indices) > 8 else [])
        return (
            f"few datapoints: checked on {self.k} of {self.batch_size} examples "
            f"(indices {shown} along axis {self.axis} of {', '.join(self.cut)})"
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {
            "indices": list(self.indices),
            "cut": list(self.cut),
        }


def _is_key(x: Any) -> bool:
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        return False
    if jnp.issubdtype(dtype, jax.dtypes.prng_key):
        return True
    return np.dtype(dtype) == np.uint32 and np.shape(x)[-1:] == (2,)


def take_datapoints(
    args: Sequence[Any],
    k: int = 3,
    *,
    axis: int = 0,
    argnums: Sequence[int] | int | None = None,
    seed: int | None = None,
) -> tuple[tuple[Any, ...], DatapointsCut]:
    """Cuts the batch arguments of a check to ``k`` examples.

    The notes: fewer datapoints mean fewer kinks to cross and a faster check,
    and a gradient that checks on 2-3 datapoints almost certainly checks on the
    whole batch.

    Args:
      args: the arguments ``f(params, *args)`` takes after ``params`` (pytrees).
      k: examples to keep (>= 1).
      axis: the batch axis of every batch array.
      argnums: which arguments are batches (all their array leaves are cut).
        Default: every array leaf whose size along ``axis`` equals the batch
        size (the most common size along ``axis``); PRNG keys (typed, or raw
        ``uint32[..., 2]``) are never cut.
      seed: ``None`` keeps the first ``k`` examples; a seed keeps ``k`` random
        ones (sorted).

    Returns:
      ``(new_args, cut)``: the arguments with the batches cut, and a
      :class:`DatapointsCut` describing the cut.

    Raises:
      ValueError: if ``k < 1``, no batch array is found, or the arrays of
        ``argnums`` disagree on the batch size.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxcheck.protocol import take_datapoints
      >>> x, y = jnp.ones((128, 5)), jnp.zeros(128, jnp.int32)
      >>> (x2, y2), cut = take_datapoints((x, y), k=2)
      >>> x2.shape, y2.shape, cut.batch_size
      ((2, 5), (2,), 128)
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"`k` must be an int >= 1 examples, got {k!r}.")
    args = tuple(args)
    if isinstance(argnums, int):
        argnums = (argnums,)
    if argnums is not None:
        for i in argnums:
            if not isinstance(i, int) or not -len(args) <= i < len(args):
                raise ValueError(
                    f"`argnums` entry {i!r} is not the position of an argument "
                    f"(there are {len(args)} args after params)."
                )
        argnums = tuple(i % len(args) for i in argnums)

    candidates: list[tuple[int, Any, str, int]] = []  # (arg, path, name, size)
    for i, arg in enumerate(args):
        if argnums is not None and i not in argnums:
            continue
        for path, leaf in jax.tree_util.tree_flatten_with_path(arg)[0]:
            name = f"args[{i}]{jax.tree_util.keystr(path)}"
            if not _is_array_like(leaf) or _is_key(leaf):
                continue
            shape = np.shape(leaf)
            if len(shape) <= axis:
                if argnums is not None:
                    raise ValueError(
                        f"{name} has shape {shape}, which has no axis {axis}; every "
                        "array in the `argnums` arguments must be a batch."
                    )
                continue
            candidates.append((i, path, name, int(shape[axis])))
    if not candidates:
        raise ValueError(
            f"No batch array with an axis {axis} among the arguments "
            f"({len(args)} args). Pass the batch as an argument of f, or choose "
            "`axis=` / `argnums=`."
        )
    sizes = [c[3] for c in candidates]
    batch = max(sizes, key=lambda s: (sizes.count(s), -sizes.index(s)))
    if argnums is not None and len(set(sizes)) > 1:
        raise ValueError(
            f"The arrays of `argnums` have different sizes along axis {axis}: "
            f"{sorted({(c[2], c[3]) for c in candidates})}. They must share the "
            "batch size."
        )
    chosen = [c for c in candidates if c[3] == batch]
    if k >= batch:
        indices = np.arange(batch)
    elif seed is None:
        indices = np.arange(k)
    else:
        indices = np.sort(np.random.default_rng(seed).choice(batch, k, replace=False))
    names = {(c[0], jax.tree_util.keystr(c[1])) for c in chosen}
    idx = jnp.asarray(indices)

    def cut_arg(i: int, arg: Any) -> Any:
        def one(path: Any, leaf: Any) -> Any:
            if (i, jax.tree_util.keystr(path)) in names and k < batch:
                return jnp.take(jnp.asarray(leaf), idx, axis=axis)
            return leaf

        return jax.tree_util.tree_map_with_path(one, arg)

    new_args = tuple(cut_arg(i, a) for i, a in enumerate(args))
    info = DatapointsCut(
        k=min(k, batch),
        axis=axis,
        batch_size=batch,
        indices=tuple(int(j) for j in indices),
        cut=tuple(c[2] for c in chosen),
    )
    return new_args, info


def _is_array_like(x: Any) -> bool:
    return isinstance(x, jax.Array | np.ndarray)


def check_few_datapoints(
    f: Callable[..., Any],
    params: PyTree,
    *args: Any,
    k: int = 3,
    axis: int = 0,
    argnums: Sequence[int] | int | None = None,
    datapoint_seed: int | None = None,
    **check_kwargs: Any,
) -> GradCheckReport:
    """Checks the gradient on ``k`` examples of the batch; the report records it.

    Args:
      f: the scalar loss, called as ``f(params, *args)``.
      params: any pytree.
      *args: the arguments, batches among them.
      k: examples to keep.
      axis: the batch axis.
      argnums: which arguments are batches (see :func:`take_datapoints`).
      datapoint_seed: ``None`` keeps the first ``k`` examples, a seed random ones.
      **check_kwargs: passed to :func:`jaxcheck.check_grads`.

    Returns:
      the :class:`jaxcheck.GradCheckReport` on the cut batch, with a note that
      says which examples of which arguments were kept.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxcheck.protocol import check_few_datapoints
      >>> loss = lambda w, x: jnp.mean(jnp.tanh(x @ w) ** 2)
      >>> report = check_few_datapoints(loss, jnp.ones(3) * 0.1, jnp.ones((64, 3)), k=2)
      >>> report.passed, report.notes[-1][:42]
      (True, 'few datapoints: checked on 2 of 64 example')
    """
    new_args, cut = take_datapoints(
        args, k, axis=axis, argnums=argnums, seed=datapoint_seed
    )
    report = _check_grads()(f, params, *new_args, **check_kwargs)
    return _with_note(report, cut.describe())


# --------------------------------------------------------------------------- #
# Determinism.
# --------------------------------------------------------------------------- #


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
        grad_diff = math.nan
        if grad:
            if grad_fn is None:
                gf: Callable[..., list] = _GradOf(full, point.checked_dyn)
            else:
                gf = _UserGradOf(grad_fn, full, tuple(i.path for i in point.checked))
            g1 = [np.asarray(g, np.float64).reshape(-1) for g in gf(dp, da)]
            g2 = [np.asarray(g, np.float64).reshape(-1) for g in gf(dp, da)]
            top = max((float(np.max(np.abs(g))) for g in g1 if g.size), default=0.0)
            diff = max(
                (
                    float(np.max(np.abs(a - b)))
                    for a, b in zip(g1, g2, strict=True)
                    if a.size
                ),
                default=0.0,
            )
            grad_diff = diff / top if top > 0 else diff
    keys = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(args)[0]:
        if _is_key(leaf):
            keys.append("args" + jax.tree_util.keystr(path))
    scale = (
        max(abs(v) for v in eager + jitted if math.isfinite(v))
        if any(math.isfinite(v) for v in eager + jitted)
        else 1.0
    )
    tol = 64 * eps * max(scale, 1e-300)
    causes = []
    eager_differs = _differ(*eager, tol)
    jit_differs = bool(jitted) and _differ(*jitted, tol)
    if eager_differs:
        causes.append(
            f"f returns different values when evaluated twice at the same point "
            f"({eager[0]!r} vs {eager[1]!r}): it draws randomness that is not a "
            "function of its arguments — a PRNG key not threaded through (np.random, "
            "Python's random, a global key split on every call) or dropout that is "
            "not fixed"
            + (
                "; under jax.jit the draw is frozen at trace time, which hides it"
                if jitted and not jit_differs
                else ""
            )
            + ". "
            + _FIX
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
    if not causes and grad and not math.isnan(grad_diff) and grad_diff > 64 * eps:
        causes.append(
            f"the gradient differs between two evaluations at the same point (max "
            f"relative difference {grad_diff:.3g}): the backward pass draws its own "
            "randomness, e.g. a dropout mask re-drawn in a custom_vjp bwd (or a "
            "hand-written backward) instead of the mask saved from the forward pass. "
            + _FIX
        )
    return DeterminismReport(
        deterministic=not causes,
        eager=eager,
        jitted=jitted,
        grad_difference=grad_diff,
        keys=tuple(keys),
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

    This is what ``check_grads`` runs before a check (a few evaluations).

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


# --------------------------------------------------------------------------- #
# The whole protocol in one call: what check_grads' protocol keywords run.
# --------------------------------------------------------------------------- #

#: Keywords of :func:`jaxcheck.check_grads` that :func:`check_second_order`
#: also takes.
_SECOND_ORDER_KEYS = (
    "grad_fn", "coords", "step", "seed", "rtol", "noise_factor", "chunk_size",
    "max_worst",
)  # fmt: skip


def _add_notes(report: Any, notes: Sequence[str]) -> Any:
    if not notes:
        return report
    return dataclasses.replace(report, notes=tuple(notes) + tuple(report.notes))


def run_protocol(
    f: Any,
    params: PyTree,
    *args: Any,
    burn_in: int = 0,
    burn_in_options: Mapping[str, Any] | None = None,
    datapoints: int | None = None,
    datapoints_options: Mapping[str, Any] | None = None,
    check_determinism: bool = False,
    order: int = 1,
    modes: Sequence[str] = ("rev",),
    **check_kwargs: Any,
) -> Any:
    """The notes' protocol in one call; ``check_grads``'s protocol keywords.

    In order: cut the batch to ``datapoints`` examples
    (:func:`take_datapoints`); make sure ``f`` is deterministic
    (:func:`assert_deterministic`); run ``burn_in`` optimisation steps
    (:func:`run_burn_in`, following ``grad_fn`` when given); then check: the
    loss terms separately when ``f`` is a dict of terms or returns one
    (:func:`check_loss_terms`); else every requested mode
    (:func:`jaxcheck.derivatives.check_modes`) and, with ``order=2``, second
    derivatives (:func:`jaxcheck.derivatives.check_second_order`). Every step
    taken is recorded in the report's notes.

    Args:
      f: the scalar function ``f(params, *args)``, a dict of loss terms, or a
        function returning one.
      params: any pytree.
      *args: held fixed.
      burn_in: optimisation steps before the check (0: none).
      burn_in_options: keywords of :func:`run_burn_in` (``learning_rate``,
        ``optimizer``, ``on_failure``).
      datapoints: keep this many examples of the batch arguments (None: all).
      datapoints_options: keywords of :func:`take_datapoints` (``axis``,
        ``argnums``, ``seed``).
      check_determinism: evaluate ``f`` twice first and raise
        :class:`NondeterminismError` if the values differ.
      order: 1, or 2 to check second derivatives too.
      modes: a subset of ``("rev", "fwd")``.
      **check_kwargs: the other keywords of :func:`jaxcheck.check_grads`.

    Returns:
      a :class:`jaxcheck.GradCheckReport` when one check runs (``order=1``,
      ``modes=("rev",)``); a :class:`LossTermsReport` for loss terms; else a
      :class:`jaxcheck.derivatives.ModesReport` with one report per check
      (``"rev"``, ``"fwd"``, ``"order 2"``).

    Raises:
      NondeterminismError: with ``check_determinism=True``, when ``f`` is not
        deterministic.
      BurnInError: when the burn-in fails and ``burn_in_options`` says
        ``on_failure="raise"``.
      ValueError: for ``order`` not 1 or 2, or loss terms combined with
        ``order=2`` or forward mode.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxcheck.protocol import run_protocol
      >>> loss = lambda w, x: jnp.mean(jnp.tanh(x @ w) ** 2)
      >>> report = run_protocol(loss, jnp.ones(3) * 0.1, jnp.ones((32, 3)),
      ...                       datapoints=2, burn_in=3, order=2)
      >>> report.headline()
      'jaxcheck: protocol check PASSED: rev passed, order 2 passed.'
      >>> report.notes[0][:43], report.notes[1][:31]
      ('few datapoints: checked on 2 of 32 examples', 'burn-in: 3 steps of SGD (learni')
    """
    from . import derivatives

    if order not in (1, 2) or isinstance(order, bool):
        raise ValueError(
            f"`order` must be 1 (gradients) or 2 (second derivatives too), got "
            f"{order!r}."
        )
    if isinstance(modes, str):
        modes = (modes,)
    modes = tuple(modes)
    if isinstance(burn_in, bool) or not isinstance(burn_in, int) or burn_in < 0:
        raise ValueError(f"`burn_in` must be an int >= 0 steps, got {burn_in!r}.")
    notes: list[str] = []
    if datapoints is not None:
        args, cut = take_datapoints(args, datapoints, **dict(datapoints_options or {}))
        notes.append(cut.describe())
    terms = isinstance(f, Mapping) or is_loss_terms(f, params, *args)
    if terms and (order != 1 or modes != ("rev",)):
        raise ValueError(
            "Loss terms are checked with `order=1` and `modes=('rev',)` only; got "
            f"order={order!r}, modes={modes!r}. Check the sum of the terms with the "
            "other options separately."
        )
    if check_kwargs.get("grad_fn", 0) is None:
        del check_kwargs["grad_fn"]  # check_grads passes its default along
    grad_fn = check_kwargs.get("grad_fn")
    if terms and grad_fn is not None:
        raise TypeError(
            "Loss terms take hand-written gradients per term; call "
            "`check_loss_terms(terms, params, *args, grad_fns={name: grad_fn})`."
        )
    loss = _SumOf(tuple(_resolve_terms(f, params, args).values())) if terms else f
    if check_determinism:
        det = assert_deterministic(loss, params, *args, grad_fn=grad_fn)
        notes.append(
            "determinism: f and its gradient agreed over repeated evaluations"
            + (f"; PRNG keys held fixed: {', '.join(det.keys)}" if det.keys else "")
        )
    if burn_in:
        options = dict(burn_in_options or {})
        result = run_burn_in(
            loss, params, *args, steps=burn_in, grad_fn=None if terms else grad_fn,
            _stacklevel=3, **options,
        )  # fmt: skip
        params = result.params
        notes.append(result.summary())
    if terms:
        return _add_notes(check_loss_terms(f, params, *args, **check_kwargs), notes)
    if order == 1 and modes == ("rev",):
        return _add_notes(_check_grads()(f, params, *args, **check_kwargs), notes)
    by_modes = derivatives.check_modes(f, params, *args, modes=modes, **check_kwargs)
    reports = dict(by_modes.reports)
    if order == 2:
        second = {
            k: v
            for k, v in check_kwargs.items()
            if k in _SECOND_ORDER_KEYS and v is not None  # None: its own default
        }
        reports["order 2"] = derivatives.check_second_order(f, params, *args, **second)
    return derivatives.ModesReport(
        reports=reports,
        unsupported=dict(by_modes.unsupported),
        title="protocol" if order == 2 else "modes",
        notes=tuple(notes),
    )
