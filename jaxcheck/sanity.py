"""Sanity checks to run before an expensive optimisation.

Three checks from the notes' "Before learning" section, each a pure function that
measures, returns a frozen result with a verdict and the reason for it, and never
raises on a failed check:

* :func:`check_initial_loss` compares a model's initial data loss with the loss at
  chance (:func:`chance_loss`: ``ln C`` for softmax cross-entropy, ``(C - 1) *
  margin`` for the multiclass SVM) and explains a mismatch.
* :func:`check_regularization_raises_loss` evaluates the loss at increasing
  regularization strengths and checks that it increases.
* :func:`overfit_small_subset` trains on about 20 examples with regularization off
  and checks that the loss reaches about zero and the accuracy 100%.

The module also holds a tiny MLP (:func:`mlp_init`, :func:`mlp_apply`), two
classification losses and :func:`run_demo`, the sanity-and-babysitting part of
``jaxcheck demo``. It imports nothing from the gradient-checker modules.
"""

from __future__ import annotations

import dataclasses
import html
import inspect
import math
import pathlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "SanityResult",
    "RegularizationResult",
    "OverfitResult",
    "chance_loss",
    "check_initial_loss",
    "check_regularization_raises_loss",
    "overfit_small_subset",
    "mlp_init",
    "mlp_apply",
    "softmax_cross_entropy",
    "multiclass_svm_loss",
    "l2_penalty",
    "accuracy",
    "run_demo",
]

PyTree = Any

_TRAIN_HINT = (
    "this needs optax for its optimisers; install jaxcheck[train] "
    "(or `pip install optax`)."
)

_SOFTMAX_KINDS = ("softmax", "cross_entropy", "softmax_cross_entropy")
_SVM_KINDS = ("svm", "multiclass_svm", "hinge")


# --------------------------------------------------------------------------------------
# Shared rendering helpers (also used by jaxcheck.monitor).
# --------------------------------------------------------------------------------------


def _to_builtin(value: Any) -> Any:
    """Converts numpy/jax scalars and arrays, tuples and dicts to plain Python."""
    if isinstance(value, Mapping):
        return {str(k): _to_builtin(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_builtin(v) for v in value]
    if isinstance(value, (np.ndarray, jax.Array)):
        arr = np.asarray(value)
        return arr.item() if arr.ndim == 0 else arr.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _dataclass_to_dict(obj: Any) -> dict[str, Any]:
    out = {}
    for field in dataclasses.fields(obj):
        value = getattr(obj, field.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            out[field.name] = _dataclass_to_dict(value)
        elif (
            isinstance(value, (list, tuple))
            and value
            and dataclasses.is_dataclass(value[0])
        ):
            out[field.name] = [_dataclass_to_dict(v) for v in value]
        else:
            out[field.name] = _to_builtin(value)
    return out


def _status_html(passed: bool | None, label: str | None = None) -> str:
    if passed is None:
        color, text = "#666", label or "n/a"
    elif passed:
        color, text = "#1a7f37", label or "PASS"
    else:
        color, text = "#cf222e", label or "FAIL"
    return f'<b style="color:{color}">{html.escape(text)}</b>'


def _html_card(title: str, passed: bool | None, body_text: str, label=None) -> str:
    return (
        '<div style="font-family:monospace">'
        f"{_status_html(passed, label)} <b>{html.escape(title)}</b>"
        f'<pre style="white-space:pre-wrap">{html.escape(body_text)}</pre></div>'
    )


def _html_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(x: float | None, spec: str = ".4g") -> str:
    if x is None:
        return "-"
    return format(float(x), spec)


def _scalar(value: Any, name: str) -> float:
    arr = np.asarray(value)
    if arr.shape != ():
        raise ValueError(
            f"`{name}` must return a scalar (the mean loss over the batch), got an "
            f"array of shape {arr.shape}; reduce it with jnp.mean."
        )
    return float(arr)


def _require_optax():
    try:
        import optax
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(f"jaxcheck: {_TRAIN_HINT}") from err
    return optax


# --------------------------------------------------------------------------------------
# Results.
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SanityResult:
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

    def __str__(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        lines = [
            f"[{verdict}] {self.name}: measured {_fmt(self.measured, '.6g')}, "
            f"expected {_fmt(self.expected, '.6g')}",
            f"  {self.reason}",
        ]
        if self.details:
            extras = ", ".join(
                f"{k}={_fmt(v) if isinstance(v, float) else v}"
                for k, v in self.details.items()
            )
            lines.append(f"  ({extras})")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """The result as plain Python types (JSON-serialisable)."""
        return _dataclass_to_dict(self)

    def _repr_html_(self) -> str:
        return _html_card(self.name, self.passed, str(self))


@dataclasses.dataclass(frozen=True)
class RegularizationResult:
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

    def __str__(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        pairs = ", ".join(
            f"{_fmt(s, '.0e')}: {_fmt(v, '.5g')}"
            for s, v in zip(self.strengths, self.losses, strict=True)
        )
        return f"[{verdict}] {self.name}: loss at strength {{{pairs}}}\n  {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        """The result as plain Python types (JSON-serialisable)."""
        return {"name": self.name, **_dataclass_to_dict(self)}

    def _repr_html_(self) -> str:
        table = _html_table(
            ["strength", "loss"],
            [
                (_fmt(s, ".1e"), _fmt(v, ".6g"))
                for s, v in zip(self.strengths, self.losses, strict=True)
            ],
        )
        return _html_card(self.name, self.passed, self.reason) + table


@dataclasses.dataclass(frozen=True)
class OverfitResult:
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

    def __str__(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        acc = (
            ""
            if self.final_accuracy is None
            else f", accuracy {100 * self.final_accuracy:.1f}%"
        )
        return (
            f"[{verdict}] {self.name}: {self.num_examples} examples, {self.steps} "
            f"steps: loss {_fmt(self.initial_loss)} -> {_fmt(self.final_loss)}{acc} "
            f"({self.seconds:.2f} s)\n  {self.reason}"
        )

    def to_dict(self) -> dict[str, Any]:
        """The result as plain Python types (JSON-serialisable)."""
        return {"name": self.name, **_dataclass_to_dict(self)}

    def _repr_html_(self) -> str:
        return _html_card(self.name, self.passed, str(self))


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
        >>> loss = lambda p, x, y: softmax_cross_entropy(x @ p["W"], y)
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

    details: dict[str, Any] = {"kind": k, "rtol": rtol}
    if num_classes is not None:
        details["num_classes"] = int(num_classes)
    if batch_size is not None:
        details["batch_size"] = int(batch_size)
    logit_std = None
    if logits is not None:
        logits_arr = np.asarray(logits, dtype=np.float64)
        logit_std = float(logits_arr.std())
        details["logit_std"] = logit_std
        details["logit_max_abs"] = float(np.abs(logits_arr).max())

    if not math.isfinite(measured):
        return SanityResult(
            "initial_loss",
            False,
            measured,
            expected,
            "The initial loss is not finite: a log of zero probability (compute "
            "the loss with log_softmax, not log(softmax)) or an overflow from very "
            "large initial weights.",
            details,
        )

    ratio = measured / expected if expected else math.inf
    details["ratio"] = ratio
    rel = abs(measured - expected) / abs(expected) if expected else abs(measured)
    if rel <= rtol:
        return SanityResult(
            "initial_loss",
            True,
            measured,
            expected,
            f"Initial loss is within {100 * rtol:g}% of the loss at chance "
            f"({rel:.2%} off): scores start near zero and the loss is averaged "
            "as expected.",
            details,
        )

    reasons = []
    c = num_classes
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
    if k == "svm" and c and abs(measured - c * margin) <= max(rtol, 0.02) * c * margin:
        reasons.append(
            "The SVM loss is about C * margin instead of (C - 1) * margin: the "
            "correct class is counted in the sum over classes (exclude j == y_i)."
        )
    if not reasons:
        spread_large = logit_std is not None and logit_std > 0.5
        spread_small = logit_std is not None and logit_std < 0.1
        if measured < 0.1 * expected:
            reasons.append(
                "The loss is far below chance at initialisation: labels may be "
                "off (out-of-range labels give an all-zero one-hot and zero loss), "
                "the labels may leak into the inputs, or the model is not at small "
                "weights."
            )
        elif spread_small:
            reasons.append(
                f"The scores are near zero (std {logit_std:.2g}) yet the loss is "
                "not at chance: the loss is computed wrongly (check the averaging, "
                "the label encoding and the formula)."
            )
        elif measured > expected:
            spread = f" (score std {logit_std:.2g})" if spread_large else ""
            reasons.append(
                f"The loss is {ratio:.2f}x chance{spread}: the initial weights are "
                "too large, so the scores are far from uniform. Scale the "
                "initialisation down (e.g. 0.01 * randn, or 1/sqrt(fan_in)) and "
                "make sure regularization is off."
                + (
                    ""
                    if logits is not None
                    else " Pass logits= to tell this apart from a wrong loss."
                )
            )
        else:
            reasons.append(
                f"The loss is {ratio:.2f}x chance, below it at initialisation: the "
                "model predicts better than chance before training (labels leaking "
                "into the inputs, a biased initialisation) or the loss misses terms."
            )
    return SanityResult(
        "initial_loss", False, measured, expected, " ".join(reasons), details
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

    data_loss = losses[0] if s[0] == 0.0 else None
    dominates_from = None
    if data_loss is not None:
        for v, total in zip(s[1:], losses[1:], strict=True):
            if total - data_loss > abs(data_loss):
                dominates_from = v
                break

    eps = float(np.finfo(np.float32).eps)
    tol = [
        4 * eps * max(abs(a), abs(b)) for a, b in zip(losses, losses[1:], strict=False)
    ]
    diffs = [b - a for a, b in zip(losses, losses[1:], strict=False)]
    falls = [i for i, (d, t) in enumerate(zip(diffs, tol, strict=True)) if d < -t]
    total_rise = losses[-1] - losses[0]
    if falls:
        i = falls[0]
        reason = (
            f"The loss falls from {losses[i]:.6g} to {losses[i + 1]:.6g} when the "
            f"strength goes from {s[i]:g} to {s[i + 1]:g}: the penalty enters with "
            "the wrong sign (or is not a norm)."
        )
        passed = False
    elif total_rise <= 4 * eps * max(abs(losses[0]), abs(losses[-1])):
        reason = (
            f"The loss does not change between strength {s[0]:g} and {s[-1]:g} "
            f"({losses[0]:.6g}): the penalty is not added to the loss, is "
            "multiplied by zero, or the parameters it penalises are all zero."
        )
        passed = False
    else:
        flat = [i for i, (d, t) in enumerate(zip(diffs, tol, strict=True)) if d <= t]
        reason = (
            f"The loss rises with the strength, from {losses[0]:.6g} to "
            f"{losses[-1]:.6g}."
        )
        if flat:
            reason += (
                f" (Between {s[flat[0]]:g} and {s[flat[0] + 1]:g} the rise is below "
                "floating-point resolution.)"
            )
        passed = True
    if dominates_from is not None:
        reason += (
            f" From strength {dominates_from:g} the penalty outweighs the data loss:"
            " check gradients with a smaller strength, or the data and penalty "
            "terms separately."
        )
    return RegularizationResult(passed, strengths_t, losses_t, reason, dominates_from)


# --------------------------------------------------------------------------------------
# Overfit a tiny subset.
# --------------------------------------------------------------------------------------


def _labels_as_int(y: jax.Array) -> jax.Array:
    return jnp.argmax(y, axis=-1) if y.ndim >= 2 else y


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
        >>> from jaxcheck.sanity import mlp_init, mlp_apply, softmax_cross_entropy
        >>> x = jax.random.normal(jax.random.key(0), (20, 8))
        >>> y = jax.numpy.arange(20) % 4
        >>> p = mlp_init(jax.random.key(1), [8, 32, 4])
        >>> loss = lambda p, x, y: softmax_cross_entropy(mlp_apply(p, x), y)
        >>> r = overfit_small_subset(loss, p, x, y, predict_fn=mlp_apply, steps=100)
        >>> r.passed, r.final_accuracy
        (True, 1.0)
    """
    optax = _require_optax()
    if isinstance(num_examples, bool) or int(num_examples) < 1:
        raise ValueError(
            f"`num_examples` must be a positive int, got {num_examples!r}."
        )
    if isinstance(steps, bool) or int(steps) < 1:
        raise ValueError(f"`steps` must be a positive int, got {steps!r}.")
    if not 0.0 <= float(min_accuracy) <= 1.0:
        raise ValueError(f"`min_accuracy` must be in [0, 1], got {min_accuracy!r}.")
    x = jnp.asarray(x)
    y = jnp.asarray(y)
    if x.shape[:1] != y.shape[:1]:
        raise ValueError(
            f"`x` and `y` must have the same number of examples, got x.shape="
            f"{x.shape} and y.shape={y.shape}."
        )
    n = int(x.shape[0])
    k = min(int(num_examples), n)
    idx = np.sort(np.random.RandomState(seed).choice(n, size=k, replace=False))
    xs, ys = x[idx], y[idx]
    labels = _labels_as_int(ys)
    if optimizer is None:
        optimizer = optax.adam(1e-2)

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
            step, (p, optimizer.init(p)), None, length=int(steps)
        )
        return losses, accs, loss_of(p), acc_of(p)

    t0 = time.perf_counter()
    losses, accs, final_loss, final_acc = jax.device_get(run(params))
    seconds = time.perf_counter() - t0
    losses = tuple(float(v) for v in losses) + (float(final_loss),)
    accuracies = (
        tuple(float(v) for v in accs) + (float(final_acc),) if predict_fn else ()
    )
    initial = losses[0]
    final = losses[-1]
    final_accuracy = accuracies[-1] if predict_fn else None
    bar = float(max_loss) if max_loss is not None else 0.01 * abs(initial)

    loss_ok = math.isfinite(final) and final <= bar
    acc_ok = final_accuracy is None or final_accuracy >= min_accuracy - 1e-9
    passed = loss_ok and acc_ok
    acc_text = (
        "" if final_accuracy is None else f" and accuracy {100 * final_accuracy:.1f}%"
    )
    bad = [i for i, v in enumerate(losses) if not math.isfinite(v)]
    if passed:
        reason = (
            f"The loss fell from {initial:.4g} to {final:.3g} (bar {bar:.3g})"
            f"{acc_text} on {k} examples: the model can fit data. (A pass does not "
            "prove correctness: scrambled features can be memorised too.)"
        )
    elif bad:
        reason = (
            f"The loss became {losses[bad[0]]} at step {bad[0]}: the optimisation "
            "diverged. Lower the learning rate, or look for a log(0) or an overflow."
        )
    elif final >= 0.9 * initial:
        reason = (
            f"The loss barely moved ({initial:.4g} -> {final:.4g}) in {steps} steps: "
            "the gradients may be zero or detached (stop_gradient, dead units, "
            "parameters the loss does not use) or the learning rate is far too low."
        )
    else:
        reason = (
            f"The loss fell from {initial:.4g} to {final:.4g} but not below {bar:.3g}"
            f"{acc_text} in {steps} steps on {k} examples: train longer or with a "
            "larger learning rate, make sure regularization and dropout are off; if "
            "the model still cannot memorise the subset, it is too small or the "
            "labels do not match the inputs."
        )
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
        reason=reason,
        seconds=seconds,
    )


# --------------------------------------------------------------------------------------
# A tiny MLP and classification losses (for demos, notebooks and tests).
# --------------------------------------------------------------------------------------

_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "identity": lambda h: h,
}


def mlp_init(
    key: jax.Array,
    sizes: Sequence[int],
    *,
    scale: float | str = "he",
    bias: float = 0.0,
    dtype: Any = jnp.float32,
) -> dict[str, dict[str, jax.Array]]:
    """Initialises a fully connected network ``{"layer0": {"W", "b"}, ...}``.

    Args:
        key: A ``jax.random`` key.
        sizes: Layer widths from input to output, e.g. ``[64, 32, 10]``.
        scale: ``"he"`` (``sqrt(2 / fan_in)``), ``"xavier"`` (``sqrt(1 / fan_in)``)
            or a float: the standard deviation of the Gaussian weights.
        bias: Initial value of every bias.
        dtype: Floating dtype of the parameters.

    Returns:
        A dict of layers, each ``{"W": (fan_in, fan_out), "b": (fan_out,)}``; leaf
        paths read ``['layer0']['W']``.

    Raises:
        ValueError: If ``sizes`` has fewer than two entries or ``scale`` is unknown.

    Examples:
        >>> import jax
        >>> p = mlp_init(jax.random.key(0), [64, 32, 10], scale=0.01)
        >>> p["layer0"]["W"].shape, p["layer1"]["b"].shape
        ((64, 32), (10,))
    """
    sizes = [int(s) for s in sizes]
    if len(sizes) < 2 or any(s < 1 for s in sizes):
        raise ValueError(
            f"`sizes` must list at least an input and an output width (all >= 1), "
            f"got {sizes!r}; e.g. sizes=[64, 32, 10]."
        )
    if isinstance(scale, str) and scale not in ("he", "xavier"):
        raise ValueError(f"`scale` must be 'he', 'xavier' or a float, got {scale!r}.")
    # One draw for all weights: a single compiled sampler per total size, then the
    # pieces are cut on the host (cheaper than compiling a sampler per layer).
    shapes = list(zip(sizes[:-1], sizes[1:], strict=True))
    total = sum(a * b for a, b in shapes)
    noise = np.asarray(jax.random.normal(key, (total,), dtype=jnp.float32))
    params = {}
    offset = 0
    for i, (fan_in, fan_out) in enumerate(shapes):
        if scale == "he":
            std = math.sqrt(2.0 / fan_in)
        elif scale == "xavier":
            std = math.sqrt(1.0 / fan_in)
        else:
            std = float(scale)
        w = std * noise[offset : offset + fan_in * fan_out].reshape(fan_in, fan_out)
        offset += fan_in * fan_out
        params[f"layer{i}"] = {
            "W": jnp.asarray(w, dtype=dtype),
            "b": jnp.asarray(np.full((fan_out,), bias), dtype=dtype),
        }
    return params


def mlp_apply(
    params: Mapping[str, Mapping[str, jax.Array]],
    x: jax.typing.ArrayLike,
    *,
    activation: str = "relu",
) -> jax.Array:
    """Applies the network of :func:`mlp_init`: affine, nonlinearity, ..., affine.

    Args:
        params: Parameters from :func:`mlp_init`.
        x: Inputs of shape ``(batch, sizes[0])``.
        activation: ``"relu"``, ``"tanh"``, ``"sigmoid"`` or ``"identity"``
            between the layers (none after the last).

    Returns:
        The class scores (logits), shape ``(batch, sizes[-1])``.

    Raises:
        ValueError: If ``activation`` is unknown.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> p = mlp_init(jax.random.key(0), [4, 8, 3])
        >>> mlp_apply(p, jnp.ones((2, 4)), activation="tanh").shape
        (2, 3)
    """
    if activation not in _ACTIVATIONS:
        raise ValueError(
            f"`activation` must be one of {sorted(_ACTIVATIONS)}, got {activation!r}."
        )
    act = _ACTIVATIONS[activation]
    n = len(params)
    h = jnp.asarray(x)
    for i in range(n):
        layer = params[f"layer{i}"]
        h = h @ layer["W"] + layer["b"]
        if i < n - 1:
            h = act(h)
    return h


def softmax_cross_entropy(
    logits: jax.typing.ArrayLike, labels: jax.typing.ArrayLike
) -> jax.Array:
    """Mean softmax cross-entropy over the batch.

    Args:
        logits: Class scores ``(batch, C)``.
        labels: Integer labels ``(batch,)`` or one-hot / soft labels ``(batch, C)``.

    Returns:
        A scalar: the mean over examples of ``-log softmax(logits)[label]``.

    Examples:
        >>> import jax.numpy as jnp
        >>> float(softmax_cross_entropy(jnp.zeros((4, 10)), jnp.arange(4)))  # ln 10
        2.302585...
    """
    logits = jnp.asarray(logits)
    labels = jnp.asarray(labels)
    logp = jax.nn.log_softmax(logits, axis=-1)
    if labels.ndim == logits.ndim:
        return -jnp.mean(jnp.sum(labels * logp, axis=-1))
    picked = jnp.take_along_axis(logp, labels[..., None].astype(jnp.int32), axis=-1)
    return -jnp.mean(picked)


def multiclass_svm_loss(
    scores: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    margin: float = 1.0,
) -> jax.Array:
    """Mean multiclass (Weston-Watkins) hinge loss over the batch.

    ``L_i = sum_{j != y_i} max(0, s_j - s_{y_i} + margin)``.

    Args:
        scores: Class scores ``(batch, C)``.
        labels: Integer labels ``(batch,)``.
        margin: The margin (``delta``).

    Returns:
        A scalar: the mean of ``L_i`` over the batch.

    Examples:
        >>> import jax.numpy as jnp
        >>> float(multiclass_svm_loss(jnp.zeros((4, 10)), jnp.arange(4)))
        9.0
    """
    scores = jnp.asarray(scores)
    labels = jnp.asarray(labels).astype(jnp.int32)
    correct = jnp.take_along_axis(scores, labels[:, None], axis=-1)
    viol = jnp.maximum(0.0, scores - correct + margin)
    not_true = jnp.arange(scores.shape[-1])[None, :] != labels[:, None]
    return jnp.mean(jnp.sum(jnp.where(not_true, viol, 0.0), axis=-1))


def l2_penalty(params: PyTree) -> jax.Array:
    """Half the sum of squares of the weight matrices (leaves with ``ndim >= 2``).

    Biases (1-D leaves) are not penalised, as is customary.

    Args:
        params: Any pytree of arrays.

    Returns:
        A scalar ``0.5 * sum(W**2)`` over the leaves with two or more dimensions.

    Examples:
        >>> import jax.numpy as jnp
        >>> float(l2_penalty({"W": jnp.ones((2, 2)), "b": jnp.ones(2)}))
        2.0
    """
    leaves = [jnp.asarray(v) for v in jax.tree.leaves(params)]
    total = jnp.zeros(())
    for v in leaves:
        if v.ndim >= 2:
            total = total + 0.5 * jnp.sum(v.astype(jnp.result_type(float)) ** 2)
    return total


def accuracy(scores: jax.typing.ArrayLike, labels: jax.typing.ArrayLike) -> float:
    """Fraction of examples whose highest score is the label.

    Args:
        scores: Class scores ``(batch, C)``.
        labels: Integer labels ``(batch,)`` or one-hot ``(batch, C)``.

    Returns:
        The accuracy in ``[0, 1]`` as a Python float.

    Examples:
        >>> import jax.numpy as jnp
        >>> accuracy(jnp.eye(3), jnp.array([0, 1, 1]))
        0.666...
    """
    labels = _labels_as_int(jnp.asarray(labels))
    pred = jnp.argmax(jnp.asarray(scores), axis=-1)
    return float(jnp.mean((pred == labels).astype(jnp.float32)))


# --------------------------------------------------------------------------------------
# The demo (called by `jaxcheck demo`).
# --------------------------------------------------------------------------------------


def run_demo(out_dir: str | pathlib.Path, *, seed: int = 0, epochs: int = 6) -> str:
    """Runs the sanity checks and a babysat training run on the 8x8 digits.

    On scikit-learn's bundled digits (no download) it checks the loss at chance
    for a softmax and an SVM classifier with small weights, shows that a model with
    large initial weights is flagged, checks that regularization raises the loss,
    overfits 20 examples, then trains a small ReLU MLP for a few epochs under a
    :class:`jaxcheck.monitor.TrainingMonitor` (loss curve, train/validation
    accuracy, update-to-parameter ratios, activation and gradient distributions,
    first-layer weights) and writes the figures as PNG files into ``out_dir``.
    It takes a few seconds on a laptop CPU.

    Args:
        out_dir: Folder for the figures; created if missing.
        seed: Seed of the initialisation, the data split and the batches.
        epochs: Epochs of the babysat training run.

    Returns:
        A printable, multi-line summary that ends with the figure paths.

    Raises:
        ImportError: If optax, matplotlib or scikit-learn is missing
            (``jaxcheck[demo]``).

    Examples:
        >>> import tempfile
        >>> text = run_demo(tempfile.mkdtemp(), epochs=1)  # doctest: +SKIP
        >>> print(text)  # doctest: +SKIP
    """
    from jaxcheck import data as _data
    from jaxcheck import monitor as _monitor
    from jaxcheck import plots as _plots

    optax = _require_optax()
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    digits = _data.load_digits(seed=seed)
    x_train, y_train = jnp.asarray(digits.x_train), jnp.asarray(digits.y_train)
    x_val, y_val = jnp.asarray(digits.x_val), jnp.asarray(digits.y_val)
    c = digits.num_classes
    key = jax.random.key(seed)
    k_small, k_large, k_mlp = jax.random.split(key, 3)
    sizes = [x_train.shape[1], 64, c]
    lines = [f"jaxcheck demo: sanity checks and babysitting on {digits}"]

    @jax.jit
    def data_loss(p, x, y):
        return softmax_cross_entropy(mlp_apply(p, x), y)

    @jax.jit
    def svm_loss(p, x, y):
        return multiclass_svm_loss(mlp_apply(p, x), y)

    @jax.jit
    def total_loss(p, x, y, *, reg=0.0):
        return data_loss(p, x, y) + reg * l2_penalty(p)

    predict = jax.jit(mlp_apply)

    small = mlp_init(k_small, sizes, scale=1e-3)
    large = mlp_init(k_large, sizes, scale=1.0)
    results: list[Any] = [
        check_initial_loss(
            data_loss, small, x_train, y_train, kind="softmax", num_classes=c
        ),
        check_initial_loss(
            svm_loss, small, x_train, y_train, kind="svm", num_classes=c
        ),
        check_initial_loss(
            data_loss,
            large,
            x_train,
            y_train,
            kind="softmax",
            num_classes=c,
            logits=predict(large, x_train),
        ),
    ]
    he = mlp_init(k_mlp, sizes)
    results.append(
        check_regularization_raises_loss(
            total_loss, he, x_train, y_train, strengths=(0.0, 1e-3, 1e-2, 1e-1, 1.0)
        )
    )
    overfit = overfit_small_subset(
        data_loss, he, x_train, y_train, predict_fn=mlp_apply, steps=150, seed=seed
    )
    results.append(overfit)
    lines.append("")
    lines.append("Sanity checks before learning:")
    labels = ["small init, softmax", "small init, SVM", "large init (std 1.0)"]
    for i, r in enumerate(results):
        tag = f" ({labels[i]})" if i < len(labels) else ""
        text = str(r).replace("\n", "\n    ")
        lines.append(f"  {text.split(':', 1)[0]}{tag}:{text.split(':', 1)[1]}")

    # The babysat run: minibatch Adam on the full training set.
    batch_size = 64
    steps_per_epoch = digits.num_train // batch_size
    opt = optax.adam(3e-3)
    mon = _monitor.TrainingMonitor(
        steps_per_epoch=steps_per_epoch, batch_size=batch_size
    )
    params = he
    opt_state = opt.init(params)

    @jax.jit
    def train_step(p, s, xb, yb):
        loss, g = jax.value_and_grad(data_loss)(p, xb, yb)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    acc_fn = jax.jit(lambda p, x, y: jnp.mean(jnp.argmax(mlp_apply(p, x), -1) == y))
    rng = np.random.RandomState(seed)
    step = 0
    mon.record_accuracy(
        0,
        train=float(acc_fn(params, x_train, y_train)),
        val=float(acc_fn(params, x_val, y_val)),
    )
    for _ in range(int(epochs)):
        order = rng.permutation(digits.num_train)
        for b in range(steps_per_epoch):
            sel = order[b * batch_size : (b + 1) * batch_size]
            new_params, opt_state, loss = train_step(
                params, opt_state, x_train[sel], y_train[sel]
            )
            mon.record_loss(step, loss)
            if step % 5 == 0:
                mon.record_update(step, params, new_params)
            params = new_params
            step += 1
        mon.record_accuracy(
            step,
            train=float(acc_fn(params, x_train, y_train)),
            val=float(acc_fn(params, x_val, y_val)),
        )
    layer_report = _monitor.activation_stats(
        data_loss, params, x_train[:256], y_train[:256], gradients=True
    )
    first = _monitor.first_layer_tiles(params["layer0"]["W"], image_shape=(8, 8))
    summary = mon.summary()
    lines.append("")
    lines.append(
        f"Babysat training: {epochs} epochs, batch {batch_size}, Adam 3e-3, "
        f"{step} steps"
    )
    lines.append("  " + str(summary).replace("\n", "\n  "))
    lines.append("  " + str(layer_report).replace("\n", "\n  "))
    lines.append("  " + str(first).replace("\n", "\n  "))

    figures = {
        "loss_curve.png": _plots.plot_loss(mon, log_scale=True),
        "accuracy.png": _plots.plot_accuracy(mon),
        "update_ratios.png": _plots.plot_update_ratios(mon),
        "activations.png": _plots.plot_activation_stats(layer_report),
        "first_layer_weights.png": _plots.plot_first_layer(first),
        "overfit_subset.png": _plots.plot_overfit(overfit),
    }
    paths = [_plots.save_figure(fig, out / name) for name, fig in figures.items()]
    lines.append("")
    lines.append(f"Figures written to {out.resolve()}:")
    lines.extend(f"  {p.name}" for p in paths)
    lines.append(f"(demo took {time.perf_counter() - t_start:.1f} s)")
    return "\n".join(lines)
