"""The third sanity check before learning: overfit a tiny subset.

:func:`overfit_small_subset` trains on about 20 examples with regularization off
and checks that the loss reaches about zero and the accuracy 100%: unless a model
can memorise a handful of examples, it is not worth training on the full data.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcheck.examples import class_labels
from jaxcheck.training._optional import require_optax
from jaxcheck.training._render import Doc, TrainingResult, fmt

__all__ = ["OverfitResult", "overfit_small_subset"]

PyTree = Any


@dataclasses.dataclass(frozen=True)
class OverfitResult(TrainingResult):
    """Training on a tiny subset with regularization off: the curve and the verdict.

    Attributes:
        passed: Whether the final loss is below ``max_loss`` and (when accuracy is
            measured) the final training accuracy is at least ``min_accuracy``.
        num_examples: Size of the subset.
        steps: Optimiser steps taken.
        initial_loss: Loss before the first step.
        final_loss: Loss after the last step.
        final_accuracy: Training accuracy after the last step (``None`` without a
            ``predict_fn``).
        losses: Loss before each step and after the last one (``steps + 1``).
        accuracies: Accuracy at the same points (empty without ``predict_fn``).
        max_loss: The loss bar used.
        min_accuracy: The accuracy bar used.
        reason: Why it passed, or what is likely wrong.
        seconds: Wall-clock time of the run, compilation included.
    """

    passed: bool
    num_examples: int
    steps: int
    initial_loss: float
    final_loss: float
    final_accuracy: float | None
    losses: tuple[float, ...]
    accuracies: tuple[float, ...]
    max_loss: float
    min_accuracy: float
    reason: str
    seconds: float = 0.0

    name = "overfit_small_subset"

    def _doc(self) -> Doc:
        verdict = "PASS" if self.passed else "FAIL"
        acc = (
            ""
            if self.final_accuracy is None
            else f", accuracy {100 * self.final_accuracy:.1f}%"
        )
        return Doc(
            f"[{verdict}] {self.name}: {self.num_examples} examples, {self.steps} "
            f"steps: loss {fmt(self.initial_loss)} -> {fmt(self.final_loss)}{acc} "
            f"({self.seconds:.2f} s)",
            [f"  {self.reason}"],
            self.passed,
        )


# --------------------------------------------------------------------------------------
# Overfit a tiny subset.
# --------------------------------------------------------------------------------------


def overfit_small_subset(
    loss_fn: Callable[..., jax.typing.ArrayLike],
    params: PyTree,
    x: jax.typing.ArrayLike,
    y: jax.typing.ArrayLike,
    *,
    predict_fn: Callable[..., jax.typing.ArrayLike] | None = None,
    num_examples: int = 20,
    steps: int = 200,
    optimizer: Any = None,
    max_loss: float | None = None,
    min_accuracy: float = 1.0,
    seed: int = 0,
) -> OverfitResult:
    """Trains on a tiny subset with regularization off and checks it is memorised.

    Picks ``num_examples`` examples (a seeded random choice), runs ``steps``
    full-batch optimiser steps (compiled as one ``jax.lax.scan``) and checks that the
    loss reaches about zero and the training accuracy 100%. Pass the data loss
    alone: a regularization term keeps the loss from reaching zero. Unless this
    passes it is not worth training on the full data. Passing does not prove the
    model right: a net can memorise 20 examples even when a bug scrambles the
    features, and then never generalise. Never raises on a failed check.

    Args:
        loss_fn: ``loss_fn(params, x, y) -> scalar`` data loss (no regularization).
        params: Initial parameters (any pytree of float arrays).
        x: Inputs, leading dimension = examples.
        y: Integer labels ``(n,)`` or one-hot ``(n, C)``.
        predict_fn: Optional ``predict_fn(params, x) -> scores`` of shape
            ``(n, C)``; with it the accuracy (argmax) is measured too.
        num_examples: Size of the subset (all of ``x`` if it has fewer).
        steps: Number of optimiser steps.
        optimizer: An ``optax.GradientTransformation``; default
            ``optax.adam(1e-2)``.
        max_loss: Loss bar; default 1% of the initial loss.
        min_accuracy: Accuracy bar in ``[0, 1]`` (used with ``predict_fn``).
        seed: Seed of the subset choice.

    Returns:
        An :class:`OverfitResult` with the loss (and accuracy) curve.

    Raises:
        ImportError: If optax is not installed (``jaxcheck[train]``).
        ValueError: If ``num_examples`` or ``steps`` is not positive, ``x`` and
            ``y`` differ in length, or ``loss_fn`` does not return a scalar.

    Examples:
        >>> import jax
        >>> from jaxcheck.examples import mlp_apply, mlp_init_named, softmax_loss
        >>> x = jax.random.normal(jax.random.key(0), (20, 8))
        >>> y = jax.numpy.arange(20) % 4
        >>> p = mlp_init_named(jax.random.key(1), [8, 32, 4])
        >>> loss = lambda p, x, y: softmax_loss(mlp_apply(p, x), y)
        >>> r = overfit_small_subset(loss, p, x, y, predict_fn=mlp_apply, steps=100)
        >>> r.passed, r.final_accuracy
        (True, 1.0)
    """
    optax = require_optax()
    _check_overfit_args(num_examples, steps, min_accuracy)
    xs, ys = _pick_subset(jnp.asarray(x), jnp.asarray(y), num_examples, seed)
    k = int(xs.shape[0])
    if optimizer is None:
        optimizer = optax.adam(1e-2)
    t0 = time.perf_counter()
    losses, accuracies = _train_on_subset(
        loss_fn, predict_fn, optimizer, params, xs, ys, int(steps)
    )
    seconds = time.perf_counter() - t0
    initial = losses[0]
    final = losses[-1]
    final_accuracy = accuracies[-1] if predict_fn else None
    bar = float(max_loss) if max_loss is not None else 0.01 * abs(initial)
    loss_ok = math.isfinite(final) and final <= bar
    acc_ok = final_accuracy is None or final_accuracy >= min_accuracy - 1e-9
    passed = loss_ok and acc_ok
    return OverfitResult(
        passed=passed,
        num_examples=k,
        steps=int(steps),
        initial_loss=initial,
        final_loss=final,
        final_accuracy=final_accuracy,
        losses=losses,
        accuracies=accuracies,
        max_loss=bar,
        min_accuracy=float(min_accuracy),
        reason=_overfit_reason(passed, losses, final_accuracy, bar, int(steps), k),
        seconds=seconds,
    )


def _check_overfit_args(num_examples: int, steps: int, min_accuracy: float) -> None:
    if isinstance(num_examples, bool) or int(num_examples) < 1:
        raise ValueError(
            f"`num_examples` must be a positive int, got {num_examples!r}."
        )
    if isinstance(steps, bool) or int(steps) < 1:
        raise ValueError(f"`steps` must be a positive int, got {steps!r}.")
    if not 0.0 <= float(min_accuracy) <= 1.0:
        raise ValueError(f"`min_accuracy` must be in [0, 1], got {min_accuracy!r}.")


def _pick_subset(
    x: jax.Array, y: jax.Array, num_examples: int, seed: int
) -> tuple[jax.Array, jax.Array]:
    """A seeded random choice of ``num_examples`` examples, in their order."""
    if x.shape[:1] != y.shape[:1]:
        raise ValueError(
            f"`x` and `y` must have the same number of examples, got x.shape="
            f"{x.shape} and y.shape={y.shape}."
        )
    n = int(x.shape[0])
    k = min(int(num_examples), n)
    idx = np.sort(np.random.RandomState(seed).choice(n, size=k, replace=False))
    return x[idx], y[idx]


def _train_on_subset(
    loss_fn: Callable[..., jax.typing.ArrayLike],
    predict_fn: Callable[..., jax.typing.ArrayLike] | None,
    optimizer: Any,
    params: PyTree,
    xs: jax.Array,
    ys: jax.Array,
    steps: int,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Full-batch training as one compiled ``scan``: the loss (and accuracy, with
    ``predict_fn``) before each step and after the last."""
    optax = require_optax()
    labels = class_labels(ys)

    def acc_of(p):
        if predict_fn is None:
            return jnp.zeros((), jnp.float32)
        pred = jnp.argmax(jnp.asarray(predict_fn(p, xs)), axis=-1)
        return jnp.mean((pred == labels).astype(jnp.float32))

    def loss_of(p):
        out = jnp.asarray(loss_fn(p, xs, ys))
        if out.shape != ():
            raise ValueError(
                "`loss_fn` must return a scalar (the mean loss over the batch), got "
                f"an array of shape {out.shape}; reduce it with jnp.mean."
            )
        return out

    def step(carry, _):
        p, state = carry
        loss, grads = jax.value_and_grad(loss_of)(p)
        acc = acc_of(p)
        updates, state = optimizer.update(grads, state, p)
        p = optax.apply_updates(p, updates)
        return (p, state), (loss, acc)

    @jax.jit
    def run(p):
        (p, _), (losses, accs) = jax.lax.scan(
            step, (p, optimizer.init(p)), None, length=steps
        )
        return losses, accs, loss_of(p), acc_of(p)

    losses, accs, final_loss, final_acc = jax.device_get(run(params))
    losses = tuple(float(v) for v in losses) + (float(final_loss),)
    accuracies = (
        tuple(float(v) for v in accs) + (float(final_acc),) if predict_fn else ()
    )
    return losses, accuracies


def _overfit_reason(
    passed: bool,
    losses: tuple[float, ...],
    final_accuracy: float | None,
    bar: float,
    steps: int,
    k: int,
) -> str:
    """Why the subset was memorised, or what is likely wrong."""
    initial, final = losses[0], losses[-1]
    acc_text = (
        "" if final_accuracy is None else f" and accuracy {100 * final_accuracy:.1f}%"
    )
    bad = [i for i, v in enumerate(losses) if not math.isfinite(v)]
    if passed:
        return (
            f"The loss fell from {initial:.4g} to {final:.3g} (bar {bar:.3g})"
            f"{acc_text} on {k} examples: the model can fit data. (A pass does not "
            "prove correctness: scrambled features can be memorised too.)"
        )
    if bad:
        return (
            f"The loss became {losses[bad[0]]} at step {bad[0]}: the optimisation "
            "diverged. Lower the learning rate, or look for a log(0) or an overflow."
        )
    if final >= 0.9 * initial:
        return (
            f"The loss barely moved ({initial:.4g} -> {final:.4g}) in {steps} steps: "
            "the gradients may be zero or detached (stop_gradient, dead units, "
            "parameters the loss does not use) or the learning rate is far too low."
        )
    return (
        f"The loss fell from {initial:.4g} to {final:.4g} but not below {bar:.3g}"
        f"{acc_text} in {steps} steps on {k} examples: train longer or with a "
        "larger learning rate, make sure regularization and dropout are off; if "
        "the model still cannot memorise the subset, it is too small or the "
        "labels do not match the inputs."
    )
