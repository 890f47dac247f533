"""Burn-in: a short optimisation, so that a check runs at a characteristic point."""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import tree
from ..options import callable_name, validate_callables
from ..report import html_headline
from ._common import OnFailure, PyTree, _float_positions, _fmt, _merge


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


def _optimizer_name(learning_rate: float, optimizer: Any) -> str:
    """Validates the optimiser options and describes the optimiser."""
    if optimizer is not None:
        if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
            raise TypeError(
                f"`optimizer` must be an optax GradientTransformation (with `init` "
                f"and `update`), got {type(optimizer).__name__}. E.g. "
                "`optax.adam(1e-3)`, or leave it None for plain SGD."
            )
        return f"optimizer {type(optimizer).__name__}"
    if not (
        isinstance(learning_rate, int | float | np.floating)
        and math.isfinite(learning_rate)
        and learning_rate > 0
    ):
        raise ValueError(
            f"`learning_rate` must be a positive finite number, got {learning_rate!r}."
        )
    return f"SGD (learning rate {learning_rate:g})"


def _validate(steps: Any, on_failure: Any) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(
            f"`steps` must be an int >= 1, got {steps!r}. A burn-in of 20-200 steps "
            "usually moves away from the initialisation."
        )
    if on_failure not in ("warn", "raise", "ignore"):
        raise ValueError(
            f'`on_failure` must be "warn", "raise" or "ignore", got {on_failure!r}.'
        )


def _optimise(
    f: Callable[..., Any],
    params: PyTree,
    args: tuple,
    steps: int,
    learning_rate: float,
    optimizer: Any,
    grad_fn: Callable[..., PyTree] | None,
) -> tuple[PyTree, list[float]]:
    """The parameters after ``steps`` steps, and the loss before each step and
    after the last."""
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
            grads = _select(grads, pos, paths, callable_name(grad_fn))
            grads = [g.astype(p.dtype) for g, p in zip(grads, train, strict=True)]
            train, state = update_jit(train, grads, state)
        losses.append(float(loss))
    losses.append(float(loss_jit(train)))
    return _merge(leaves, pos, treedef, train), losses


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

    Use it to see how the loss moved; :func:`burn_in` is
    ``run_burn_in(...).params``.

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
    _validate(steps, on_failure)
    opt_name = _optimizer_name(learning_rate, optimizer)
    new_params, losses = _optimise(
        f, params, args, steps, learning_rate, optimizer, grad_fn
    )
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
        params=new_params,
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
    down: ``check_grads(f, burn_in(f, params, *args, steps=20), *args)``. Use
    :func:`run_burn_in` to see the losses too.

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
      >>> import jaxcheck
      >>> from jaxcheck.protocol import burn_in
      >>> loss = lambda w: jnp.sum((w - 3.0) ** 2)
      >>> w = burn_in(loss, jnp.zeros(2), steps=5, learning_rate=0.1)
      >>> [round(float(v), 3) for v in w]
      [2.017, 2.017]
      >>> jaxcheck.check_grads(loss, w).passed
      True
    """
    return run_burn_in(
        f, params, *args, steps=steps, learning_rate=learning_rate,
        optimizer=optimizer, grad_fn=grad_fn, on_failure=on_failure, _stacklevel=3,
    ).params  # fmt: skip
