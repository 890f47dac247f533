"""Sanity checks on the loss before an expensive optimisation.

Two checks from the notes' "Before learning" section, each a pure function that
measures, returns a frozen result with a verdict and the reason for it, and never
raises on a failed check:

* :func:`check_initial_loss` compares a model's initial data loss with the loss at
  chance (:func:`chance_loss`: ``ln C`` for softmax cross-entropy, ``(C - 1) *
  margin`` for the multiclass SVM) and explains a mismatch.
* :func:`check_regularization_raises_loss` evaluates the loss at increasing
  regularization strengths and checks that it increases.

The third, :func:`~jaxcheck.training.overfit.overfit_small_subset`, trains; it
lives in :mod:`jaxcheck.training.overfit`.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from jaxcheck.training._render import Doc, TrainingResult, fmt

__all__ = [
    "RegularizationResult",
    "SanityResult",
    "chance_loss",
    "check_initial_loss",
    "check_regularization_raises_loss",
]

PyTree = Any

_SOFTMAX_KINDS = ("softmax", "cross_entropy", "softmax_cross_entropy")
_SVM_KINDS = ("svm", "multiclass_svm", "hinge")


def _scalar(value: Any, name: str) -> float:
    arr = np.asarray(value)
    if arr.shape != ():
        raise ValueError(
            f"`{name}` must return a scalar (the mean loss over the batch), got an "
            f"array of shape {arr.shape}; reduce it with jnp.mean."
        )
    return float(arr)


# --------------------------------------------------------------------------------------
# Results.
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SanityResult(TrainingResult):
    """The outcome of one sanity check that compares a measurement with a value.

    Attributes:
        name: Which check produced it, e.g. ``"initial_loss"``.
        passed: Whether the measurement is within the tolerance of ``expected``.
        measured: The measured value (e.g. the initial data loss).
        expected: The value expected (e.g. ``ln C``), or ``None``.
        reason: One or more sentences: why it passed, or what is likely wrong.
        details: Further numbers (tolerance, ratio, logit spread, ...).
    """

    name: str
    passed: bool
    measured: float
    expected: float | None
    reason: str
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    def _doc(self) -> Doc:
        verdict = "PASS" if self.passed else "FAIL"
        lines = [f"  {self.reason}"]
        if self.details:
            extras = ", ".join(
                f"{k}={fmt(v) if isinstance(v, float) else v}"
                for k, v in self.details.items()
            )
            lines.append(f"  ({extras})")
        return Doc(
            f"[{verdict}] {self.name}: measured {fmt(self.measured, '.6g')}, "
            f"expected {fmt(self.expected, '.6g')}",
            lines,
            self.passed,
        )


@dataclasses.dataclass(frozen=True)
class RegularizationResult(TrainingResult):
    """The loss evaluated at increasing regularization strengths.

    Attributes:
        passed: Whether the loss increases with the strength.
        strengths: The strengths, increasing.
        losses: The total loss at each strength.
        reason: Why it passed, or what is likely wrong.
        dominates_from: The smallest strength at which the regularization term
            is larger than the data loss (``None`` if it never is). Gradient checks
            at or above it mostly check the regularizer.
    """

    passed: bool
    strengths: tuple[float, ...]
    losses: tuple[float, ...]
    reason: str
    dominates_from: float | None = None

    name = "regularization_raises_loss"

    def _doc(self) -> Doc:
        verdict = "PASS" if self.passed else "FAIL"
        pairs = ", ".join(
            f"{fmt(s, '.0e')}: {fmt(v, '.5g')}"
            for s, v in zip(self.strengths, self.losses, strict=True)
        )
        return Doc(
            f"[{verdict}] {self.name}: loss at strength {{{pairs}}}",
            [f"  {self.reason}"],
            self.passed,
        )


# --------------------------------------------------------------------------------------
# Loss at chance.
# --------------------------------------------------------------------------------------


def _canonical_kind(kind: str) -> str:
    if not isinstance(kind, str):
        raise TypeError(f"`kind` must be a string, got {type(kind).__name__}.")
    k = kind.lower()
    if k in _SOFTMAX_KINDS:
        return "softmax"
    if k in _SVM_KINDS:
        return "svm"
    raise ValueError(
        f"`kind` must be one of {_SOFTMAX_KINDS + _SVM_KINDS}, got {kind!r}; use "
        "'softmax' for softmax cross-entropy or 'svm' for the multiclass "
        "(Weston-Watkins) hinge loss, or pass `expected=` yourself."
    )


def chance_loss(kind: str, num_classes: int, *, margin: float = 1.0) -> float:
    """The expected initial data loss of a classifier whose scores are all about 0.

    With small weights every class score is close to zero. Softmax then gives every
    class probability ``1/C``, so the cross-entropy is ``-ln(1/C) = ln C``; the
    multiclass (Weston-Watkins) SVM violates every margin, so its loss is
    ``(C - 1) * margin``.

    Args:
        kind: ``"softmax"`` (aliases ``"cross_entropy"``, ``"softmax_cross_entropy"``)
            or ``"svm"`` (aliases ``"multiclass_svm"``, ``"hinge"``).
        num_classes: Number of classes ``C``, at least 2.
        margin: The SVM margin (ignored for softmax).

    Returns:
        The loss at chance as a Python float.

    Raises:
        ValueError: If ``kind`` is unknown, ``num_classes < 2`` or ``margin <= 0``.
        TypeError: If ``kind`` is not a string or ``num_classes`` not an integer.

    Examples:
        >>> round(chance_loss("softmax", 10), 6)
        2.302585
        >>> chance_loss("svm", 10)
        9.0
    """
    k = _canonical_kind(kind)
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise TypeError(
            f"`num_classes` must be an int, got {type(num_classes).__name__} "
            f"({num_classes!r})."
        )
    if num_classes < 2:
        raise ValueError(
            f"`num_classes` must be at least 2, got {num_classes}; a classifier "
            "needs two classes or more."
        )
    if k == "softmax":
        return math.log(num_classes)
    if not margin > 0:
        raise ValueError(f"`margin` must be positive, got {margin!r}.")
    return float((num_classes - 1) * margin)


def _infer_batch_size(args: Sequence[Any]) -> int | None:
    for a in args:
        shape = getattr(a, "shape", None)
        if shape is not None and len(shape) >= 1:
            return int(shape[0])
    return None


def check_initial_loss(
    loss_fn: Callable[..., jax.typing.ArrayLike],
    params: PyTree,
    *args: Any,
    kind: str = "softmax",
    num_classes: int | None = None,
    margin: float = 1.0,
    expected: float | None = None,
    rtol: float = 0.05,
    logits: jax.typing.ArrayLike | None = None,
    batch_size: int | None = None,
) -> SanityResult:
    """Checks that the initial data loss is the loss at chance.

    Evaluate this with small initial weights and the data loss alone (regularization
    strength 0): the loss should then be :func:`chance_loss`. A mismatch is
    explained from the numbers: a loss about ``batch_size`` times too large is a
    sum where a mean was meant; about ``C`` times too small is a mean over classes
    too; near zero suggests out-of-range labels (a one-hot of zeros) or labels that
    leak into the inputs; larger than chance with widely spread ``logits`` means the
    initial weights are too large. Unlike an assertion, this never raises on a
    mismatch: read ``result.passed``.

    Args:
        loss_fn: ``loss_fn(params, *args) -> scalar`` data loss, averaged over the
            batch.
        params: The freshly initialised parameters (any pytree).
        *args: The rest of ``loss_fn``'s arguments, e.g. ``x, y``.
        kind: ``"softmax"`` or ``"svm"``; see :func:`chance_loss`.
        num_classes: Number of classes; required unless ``expected`` is given.
        margin: The SVM margin.
        expected: The expected loss, overriding :func:`chance_loss`.
        rtol: Relative tolerance: passes when
            ``|measured - expected| <= rtol * expected``.
        logits: Optional class scores of the same batch; their spread tells an
            initialisation that is too large from a loss that is computed wrongly.
        batch_size: Batch size, used only to explain a summed loss; inferred from
            the leading dimension of the first array in ``args`` when omitted.

    Returns:
        A :class:`SanityResult` named ``"initial_loss"``.

    Raises:
        ValueError: If ``loss_fn`` does not return a scalar, ``rtol`` is not
            positive, or neither ``num_classes`` nor ``expected`` is given.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> x = jax.random.normal(jax.random.key(0), (32, 5))
        >>> y = jnp.arange(32) % 3
        >>> p = {"W": 1e-3 * jax.random.normal(jax.random.key(1), (5, 3))}
        >>> from jaxcheck.examples import softmax_loss
        >>> loss = lambda p, x, y: softmax_loss(x @ p["W"], y)
        >>> check_initial_loss(loss, p, x, y, num_classes=3).passed
        True
    """
    if not rtol > 0:
        raise ValueError(f"`rtol` must be positive, got {rtol!r}; try rtol=0.05.")
    k = _canonical_kind(kind)
    if expected is None:
        if num_classes is None:
            raise ValueError(
                "`num_classes` is required to compute the loss at chance (got "
                "None); pass num_classes=C, or expected=<loss at chance>."
            )
        expected = chance_loss(k, num_classes, margin=margin)
    expected = float(expected)
    measured = _scalar(loss_fn(params, *args), "loss_fn") + 0.0  # no "-0"
    if batch_size is None:
        batch_size = _infer_batch_size(args)
    details = _initial_loss_details(k, rtol, num_classes, batch_size, logits)
    if not math.isfinite(measured):
        return SanityResult(
            "initial_loss", False, measured, expected, _NOT_FINITE, details
        )
    ratio = measured / expected if expected else math.inf
    details["ratio"] = ratio
    rel = abs(measured - expected) / abs(expected) if expected else abs(measured)
    if rel <= rtol:
        reason = (
            f"Initial loss is within {100 * rtol:g}% of the loss at chance "
            f"({rel:.2%} off): scores start near zero and the loss is averaged "
            "as expected."
        )
        return SanityResult("initial_loss", True, measured, expected, reason, details)
    reasons = _arithmetic_mistakes(
        measured, ratio, k, num_classes, margin, rtol, details
    )
    if not reasons:
        reasons = [_off_chance_reason(measured, expected, ratio, details)]
    return SanityResult(
        "initial_loss", False, measured, expected, " ".join(reasons), details
    )


_NOT_FINITE = (
    "The initial loss is not finite: a log of zero probability (compute the loss "
    "with log_softmax, not log(softmax)) or an overflow from very large initial "
    "weights."
)


def _initial_loss_details(
    kind: str,
    rtol: float,
    num_classes: int | None,
    batch_size: int | None,
    logits: jax.typing.ArrayLike | None,
) -> dict[str, Any]:
    """The numbers behind the verdict of :func:`check_initial_loss`."""
    details: dict[str, Any] = {"kind": kind, "rtol": rtol}
    if num_classes is not None:
        details["num_classes"] = int(num_classes)
    if batch_size is not None:
        details["batch_size"] = int(batch_size)
    if logits is not None:
        logits_arr = np.asarray(logits, dtype=np.float64)
        details["logit_std"] = float(logits_arr.std())
        details["logit_max_abs"] = float(np.abs(logits_arr).max())
    return details


def _arithmetic_mistakes(
    measured: float,
    ratio: float,
    kind: str,
    num_classes: int | None,
    margin: float,
    rtol: float,
    details: dict[str, Any],
) -> list[str]:
    """Mistakes that scale the loss at chance by a telltale factor."""
    reasons = []
    c = num_classes
    batch_size = details.get("batch_size")
    if batch_size and batch_size > 1 and abs(ratio - batch_size) <= 0.1 * batch_size:
        reasons.append(
            f"The loss is about batch_size ({batch_size}) times chance: it is "
            "summed over the batch instead of averaged (use jnp.mean)."
        )
    if c and abs(ratio * c - 1.0) <= 0.1:
        reasons.append(
            f"The loss is about chance / num_classes ({c}): it is averaged over "
            "the classes as well as the examples (mean over the wrong axis)."
        )
    if (
        kind == "svm"
        and c
        and abs(measured - c * margin) <= max(rtol, 0.02) * c * margin
    ):
        reasons.append(
            "The SVM loss is about C * margin instead of (C - 1) * margin: the "
            "correct class is counted in the sum over classes (exclude j == y_i)."
        )
    return reasons


def _off_chance_reason(
    measured: float, expected: float, ratio: float, details: dict[str, Any]
) -> str:
    """Why the loss is off chance when no arithmetic mistake explains it."""
    logit_std = details.get("logit_std")
    if measured < 0.1 * expected:
        return (
            "The loss is far below chance at initialisation: labels may be off "
            "(out-of-range labels give an all-zero one-hot and zero loss), the "
            "labels may leak into the inputs, or the model is not at small weights."
        )
    if logit_std is not None and logit_std < 0.1:
        return (
            f"The scores are near zero (std {logit_std:.2g}) yet the loss is not at "
            "chance: the loss is computed wrongly (check the averaging, the label "
            "encoding and the formula)."
        )
    if measured > expected:
        large = logit_std is not None and logit_std > 0.5
        spread = f" (score std {logit_std:.2g})" if large else ""
        hint = (
            ""
            if logit_std is not None
            else " Pass logits= to tell this apart from a wrong loss."
        )
        return (
            f"The loss is {ratio:.2f}x chance{spread}: the initial weights are too "
            "large, so the scores are far from uniform. Scale the initialisation "
            "down (e.g. 0.01 * randn, or 1/sqrt(fan_in)) and make sure "
            "regularization is off." + hint
        )
    return (
        f"The loss is {ratio:.2f}x chance, below it at initialisation: the model "
        "predicts better than chance before training (labels leaking into the "
        "inputs, a biased initialisation) or the loss misses terms."
    )


# --------------------------------------------------------------------------------------
# Regularization raises the loss.
# --------------------------------------------------------------------------------------


def _accepts_keyword(fn: Callable[..., Any], name: str) -> bool:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins, some C callables: just try it
        return True
    for p in sig.parameters.values():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            return True
        if p.name == name and p.kind in (
            inspect.Parameter.KEYWORD_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        ):
            return True
    return False


def check_regularization_raises_loss(
    loss_fn: Callable[..., jax.typing.ArrayLike],
    params: PyTree,
    *args: Any,
    strengths: Sequence[float] = (0.0, 1e-3, 1e-2, 1e-1, 1.0),
    reg_arg: str = "reg",
) -> RegularizationResult:
    """Checks that the loss increases with the regularization strength.

    Evaluates ``loss_fn(params, *args, **{reg_arg: s})`` for each strength ``s``.
    A loss that does not change means the penalty is not added (or is multiplied by
    zero); one that falls means the penalty has the wrong sign. Differences below
    the floating-point resolution of the loss are tolerated. It also reports the
    smallest strength at which the penalty outweighs the data loss: gradient checks
    there mostly check the regularizer. Never raises on a failed check.

    Args:
        loss_fn: ``loss_fn(params, *args, reg=strength) -> scalar`` total loss
            (data loss plus ``strength`` times a penalty).
        params: Parameters at which to evaluate (not all zero, or an L2 penalty is
            zero too).
        *args: The rest of ``loss_fn``'s arguments, e.g. ``x, y``.
        strengths: At least two non-negative, strictly increasing strengths; start
            with 0 to measure the data loss alone.
        reg_arg: Name of the keyword argument of ``loss_fn`` that sets the strength.

    Returns:
        A :class:`RegularizationResult`.

    Raises:
        ValueError: If ``strengths`` is too short, negative or not increasing, or
            ``loss_fn`` does not return a scalar.
        TypeError: If ``loss_fn`` has no keyword argument named ``reg_arg``.

    Examples:
        >>> import jax.numpy as jnp
        >>> def loss(p, x, *, reg=0.0):
        ...     return jnp.mean((x @ p) ** 2) + reg * jnp.sum(p**2)
        >>> r = check_regularization_raises_loss(loss, jnp.ones(3), jnp.ones((4, 3)))
        >>> r.passed
        True
    """
    s = [float(v) for v in strengths]
    if len(s) < 2:
        raise ValueError(
            f"`strengths` needs at least two values, got {list(strengths)!r}; "
            "e.g. strengths=(0.0, 1e-2, 1.0)."
        )
    if any(v < 0 for v in s) or any(b <= a for a, b in zip(s, s[1:], strict=False)):
        raise ValueError(
            "`strengths` must be non-negative and strictly increasing, got "
            f"{list(strengths)!r}."
        )
    if not _accepts_keyword(loss_fn, reg_arg):
        raise TypeError(
            f"`loss_fn` takes no keyword argument {reg_arg!r}; give it one "
            f"(`def loss(params, x, y, *, {reg_arg}=0.0)`) or pass reg_arg= with "
            "the name it uses."
        )
    losses = [_scalar(loss_fn(params, *args, **{reg_arg: v}), "loss_fn") for v in s]
    strengths_t, losses_t = tuple(s), tuple(losses)

    if not all(math.isfinite(v) for v in losses):
        return RegularizationResult(
            False,
            strengths_t,
            losses_t,
            "The loss is not finite at some strength; check the penalty for "
            "overflow (huge weights or strengths).",
        )

    passed, reason = _judge_rise(s, losses)
    dominates_from = _penalty_dominates_from(s, losses)
    if dominates_from is not None:
        reason += (
            f" From strength {dominates_from:g} the penalty outweighs the data loss:"
            " check gradients with a smaller strength, or the data and penalty "
            "terms separately."
        )
    return RegularizationResult(passed, strengths_t, losses_t, reason, dominates_from)


def _penalty_dominates_from(s: list[float], losses: list[float]) -> float | None:
    """The smallest strength at which the penalty is larger than the data loss."""
    if s[0] != 0.0:
        return None
    data_loss = losses[0]
    for v, total in zip(s[1:], losses[1:], strict=True):
        if total - data_loss > abs(data_loss):
            return v
    return None


def _judge_rise(s: list[float], losses: list[float]) -> tuple[bool, str]:
    """Whether the loss rises with the strength (up to float32 round-off), and why."""
    eps = float(np.finfo(np.float32).eps)
    tol = [
        4 * eps * max(abs(a), abs(b)) for a, b in zip(losses, losses[1:], strict=False)
    ]
    diffs = [b - a for a, b in zip(losses, losses[1:], strict=False)]
    falls = [i for i, (d, t) in enumerate(zip(diffs, tol, strict=True)) if d < -t]
    if falls:
        i = falls[0]
        return False, (
            f"The loss falls from {losses[i]:.6g} to {losses[i + 1]:.6g} when the "
            f"strength goes from {s[i]:g} to {s[i + 1]:g}: the penalty enters with "
            "the wrong sign (or is not a norm)."
        )
    if losses[-1] - losses[0] <= 4 * eps * max(abs(losses[0]), abs(losses[-1])):
        return False, (
            f"The loss does not change between strength {s[0]:g} and {s[-1]:g} "
            f"({losses[0]:.6g}): the penalty is not added to the loss, is "
            "multiplied by zero, or the parameters it penalises are all zero."
        )
    flat = [i for i, (d, t) in enumerate(zip(diffs, tol, strict=True)) if d <= t]
    reason = (
        f"The loss rises with the strength, from {losses[0]:.6g} to {losses[-1]:.6g}."
    )
    if flat:
        reason += (
            f" (Between {s[flat[0]]:g} and {s[flat[0] + 1]:g} the rise is below "
            "floating-point resolution.)"
        )
    return True, reason
