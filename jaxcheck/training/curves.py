"""Reading the curves of a training run: the loss, and train/validation accuracy.

* :func:`diagnose_loss_curve`: the shape of the loss curve (x-axis in epochs) read
  for the learning rate (too low: linear; too high: explodes or plateaus early at a
  high value) and its noise level (batch size).
* :func:`diagnose_accuracy`: train/validation accuracy and the gap between them
  (overfitting, or capacity too small).

Both are pure functions; :class:`~jaxcheck.training.monitor.TrainingMonitor` feeds
them from a training loop and :mod:`jaxcheck.training.plots` draws them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from jaxcheck.training._render import Doc, TrainingResult, fmt

__all__ = [
    "AccuracyDiagnosis",
    "LossCurveDiagnosis",
    "diagnose_accuracy",
    "diagnose_loss_curve",
]


# --------------------------------------------------------------------------------------
# Loss curve.
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LossCurveDiagnosis(TrainingResult):
    """The shape of a loss curve, read for the learning rate and the batch size.

    Attributes:
        verdict: One of ``"ok"``, ``"lr_too_low"`` (linear decrease),
            ``"lr_too_high"`` (explodes, or plateaus early at a high value),
            ``"diverged"`` (NaN/inf), ``"flat"`` (no decrease beyond the noise),
            ``"noisy"`` (the loss bounces), ``"slow_start"`` (a plateau at the
            start, then faster: initialisation too small) or
            ``"insufficient_data"``.
        passed: ``True`` for ``"ok"`` and ``"insufficient_data"``.
        reason: Why, in words, with the numbers.
        notes: Further observations (e.g. the noise level against the batch size).
        epochs: x-axis of the curve in epochs.
        losses: The recorded losses.
        smoothed: A moving average of ``losses`` (the trend).
        metrics: The numbers behind the verdict: ``initial``, ``final``,
            ``relative_drop``, ``t_half`` and ``t90`` (fraction of the run at which
            half / 90% of the decrease was reached), ``linearity`` (R^2 of a
            straight line through the trend), ``slope_ratio`` (late slope over
            early slope), ``noise`` (std of the wiggle around the trend over the
            loss level, second half of the run).
    """

    verdict: str
    passed: bool
    reason: str
    notes: tuple[str, ...]
    epochs: tuple[float, ...]
    losses: tuple[float, ...]
    smoothed: tuple[float, ...]
    metrics: dict[str, float]

    name = "loss_curve"

    def _doc(self) -> Doc:
        m = self.metrics
        head = f"[{self.verdict}] loss curve: {len(self.losses)} points"
        if "initial" in m and "final" in m:
            head += f", {fmt(m['initial'])} -> {fmt(m['final'])}"
        if self.epochs:
            head += f" over {self.epochs[-1] - self.epochs[0]:.3g} epochs"
        lines = [f"  {self.reason}", *(f"  note: {n}" for n in self.notes)]
        return Doc(head, lines, self.passed)


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or values.size < 3:
        return values.copy()
    kernel = np.ones(window)
    num = np.convolve(values, kernel, mode="same")
    den = np.convolve(np.ones_like(values), kernel, mode="same")
    return num / den


def _slope(t: np.ndarray, v: np.ndarray) -> float:
    if t.size < 2 or np.ptp(t) == 0:
        return 0.0
    return float(np.polyfit(t, v, 1)[0])


def diagnose_loss_curve(
    losses: Sequence[float] | jax.typing.ArrayLike,
    *,
    steps: Sequence[int] | jax.typing.ArrayLike | None = None,
    steps_per_epoch: float = 1.0,
    batch_size: int | None = None,
    window: int | None = None,
    noise_threshold: float = 0.1,
    noisy_fail: float = 0.5,
    plateau_fraction: float = 0.5,
) -> LossCurveDiagnosis:
    """Reads a training loss curve the way the notes read their cartoon.

    With too low a learning rate the loss falls along a straight line; with too high
    a one it explodes, or falls fast and then sticks at a high value (too much
    "energy" to settle). The wiggle around the trend reflects the batch size.
    Thresholds are heuristics: the verdict says which measurement triggered it.

    Args:
        losses: Loss per recorded step (per-batch losses are fine).
        steps: Step number of each loss; default ``0, 1, 2, ...``.
        steps_per_epoch: Steps in one epoch; the x-axis is ``steps /
            steps_per_epoch``.
        batch_size: Used in the note on noise.
        window: Width of the moving average that gives the trend; default about a
            tenth of the points.
        noise_threshold: Wiggle (std of losses minus trend, over the loss level)
            above which a note calls the curve noisy.
        noisy_fail: Wiggle above which the verdict is ``"noisy"`` (the loss
            bounces: batch too small or learning rate too high).
        plateau_fraction: A curve that reaches 90% of its decrease in the first
            15% of the run and ends above this fraction of its initial value is
            called an early plateau at a high value.

    Returns:
        A :class:`LossCurveDiagnosis`.

    Raises:
        ValueError: If ``losses`` is not one-dimensional, ``steps`` has another
            length, or ``steps_per_epoch`` is not positive.

    Examples:
        >>> import numpy as np
        >>> d = diagnose_loss_curve(2.3 - 0.002 * np.arange(500), steps_per_epoch=50)
        >>> d.verdict
        'lr_too_low'
        >>> diagnose_loss_curve(2.3 * np.exp(-np.arange(500) / 60) + 0.1).verdict
        'ok'
    """
    values, step_arr = _curve_arrays(losses, steps, steps_per_epoch)
    epochs = step_arr / float(steps_per_epoch)
    n = values.size

    def result(verdict, reason, notes=(), smoothed=None, metrics=None):
        return LossCurveDiagnosis(
            verdict=verdict,
            passed=verdict in ("ok", "insufficient_data"),
            reason=reason,
            notes=tuple(notes),
            epochs=tuple(float(e) for e in epochs),
            losses=tuple(float(v) for v in values),
            smoothed=tuple(
                float(v) for v in (values if smoothed is None else smoothed)
            ),
            metrics=dict(metrics or {}),
        )

    finite = np.isfinite(values)
    if not finite.all():
        k = int(np.argmin(finite))
        return result(
            "diverged",
            f"The loss became {values[k]} at step {int(step_arr[k])} (epoch "
            f"{epochs[k]:.3g}): the learning rate is far too high, or the loss "
            "takes a log of zero / overflows.",
        )
    if n < 8:
        return result(
            "insufficient_data",
            f"Only {n} losses recorded; record at least 8 to read the curve's shape.",
        )
    w = int(window) if window is not None else max(1, n // 10)
    trend = _smooth(values, w)
    metrics = _level_metrics(values, trend, w)
    bs = f" (batch_size={batch_size})" if batch_size else ""
    notes = []
    if noise_threshold < metrics["noise"] <= noisy_fail:
        notes.append(
            f"The loss is noisy: its wiggle is {metrics['noise']:.0%} of its level in "
            f"the second half{bs}. A larger batch smooths it; the wiggle shrinks as "
            "the batch grows toward the full data set."
        )
    verdict = _level_verdict(values, trend, metrics)
    if verdict is None:
        metrics.update(_shape_metrics(trend, step_arr, metrics))
        verdict = _shape_verdict(metrics, noisy_fail, plateau_fraction, bs)
    return result(*verdict, notes, trend, metrics)


def _curve_arrays(
    losses: Any, steps: Any, steps_per_epoch: float
) -> tuple[np.ndarray, np.ndarray]:
    """The losses and their steps as float64 arrays, checked."""
    values = np.asarray(jax.device_get(losses), dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(
            f"`losses` must be one-dimensional (one loss per step), got shape "
            f"{values.shape}."
        )
    if not steps_per_epoch > 0:
        raise ValueError(
            f"`steps_per_epoch` must be positive, got {steps_per_epoch!r}."
        )
    n = values.size
    step_arr = (
        np.arange(n, dtype=np.float64)
        if steps is None
        else np.asarray(jax.device_get(steps), dtype=np.float64)
    )
    if step_arr.shape != values.shape:
        raise ValueError(
            f"`steps` must have one entry per loss, got {step_arr.shape[0]} steps "
            f"for {n} losses."
        )
    return values, step_arr


def _level_metrics(values: np.ndarray, trend: np.ndarray, w: int) -> dict[str, float]:
    """Where the curve starts and ends, and how much it wiggles around its trend."""
    n = values.size
    tail = max(3, n // 10)
    initial = float(values[0])
    final = float(np.median(values[-tail:]))
    scale = max(abs(initial), 1e-12)
    half = max(2, n // 2)
    level = max(float(np.mean(np.abs(trend[-half:]))), 1e-12)
    return {
        "initial": initial,
        "final": final,
        "relative_drop": (initial - final) / scale,
        "noise": float(np.std(values[-half:] - trend[-half:]) / level),
        "window": float(w),
    }


def _level_verdict(
    values: np.ndarray, trend: np.ndarray, metrics: dict[str, float]
) -> tuple[str, str] | None:
    """A curve that grows (``lr_too_high``) or stays level (``flat``), else None."""
    initial, final, drop = (
        metrics["initial"],
        metrics["final"],
        metrics["relative_drop"],
    )
    scale = max(abs(initial), 1e-12)
    peak = float(np.max(trend))
    if final > initial * 1.1 or (peak > 1.5 * scale and final > 0.9 * initial):
        return (
            "lr_too_high",
            f"The loss grows (from {initial:.4g} to a peak of {peak:.4g}, ending at "
            f"{final:.4g}): the learning rate is too high and the optimisation "
            "is diverging.",
        )
    wiggle = float(np.std(values - trend))
    if drop < 0.02 or (drop < 0.1 and float(trend[0]) - final < 2.0 * wiggle):
        return (
            "flat",
            f"The loss does not decrease beyond its noise ({initial:.4g} -> "
            f"{final:.4g}, {drop:.1%}): the learning rate is far too low, or no "
            "gradient reaches the parameters (dead units, stop_gradient, a loss "
            "that ignores them).",
        )
    return None


def _shape_metrics(
    trend: np.ndarray, step_arr: np.ndarray, metrics: dict[str, float]
) -> dict[str, float]:
    """When the decrease happened and how straight the trend is."""
    initial, final = metrics["initial"], metrics["final"]
    n = trend.size
    t = (step_arr - step_arr[0]) / max(step_arr[-1] - step_arr[0], 1.0)
    progress = (initial - trend) / max(initial - final, 1e-12)
    reached_half = np.nonzero(progress >= 0.5)[0]
    reached_90 = np.nonzero(progress >= 0.9)[0]
    quarter = max(2, n // 4)
    early = _slope(t[:quarter], trend[:quarter])
    late = _slope(t[-quarter:], trend[-quarter:])
    fit = np.polyfit(t, trend, 1)
    resid = trend - np.polyval(fit, t)
    total = float(np.sum((trend - trend.mean()) ** 2))
    return {
        "t_half": float(t[reached_half[0]]) if reached_half.size else 1.0,
        "t90": float(t[reached_90[0]]) if reached_90.size else 1.0,
        "slope_ratio": late / early if early < 0 else 0.0,
        "linearity": 1.0 - float(np.sum(resid**2)) / total if total > 0 else 0.0,
    }


def _shape_verdict(
    m: dict[str, float], noisy_fail: float, plateau_fraction: float, bs: str
) -> tuple[str, str]:
    """The verdict on a curve that decreases, read from its shape."""
    initial, final = m["initial"], m["final"]
    scale = max(abs(initial), 1e-12)
    t90, slope_ratio, linearity = m["t90"], m["slope_ratio"], m["linearity"]
    if t90 < 0.15 and final / scale > plateau_fraction:
        return (
            "lr_too_high",
            f"The loss fell fast (90% of its decrease in the first {t90:.0%} of the "
            f"run) and then stuck at {final:.4g}, {final / scale:.0%} of its "
            "initial value: typical of a learning rate that is too high (too much "
            "energy to settle). Compare with a smaller learning rate; if it "
            "reaches the same level, the model is the limit instead.",
        )
    if m["noise"] > noisy_fail:
        return (
            "noisy",
            f"The loss bounces: its wiggle is {m['noise']:.0%} of its level in the "
            f"second half{bs}. The batch is too small, or the learning rate too high "
            "(check the update/parameter ratios to tell which).",
        )
    if slope_ratio > 2.0:
        return (
            "slow_start",
            f"The loss hardly moved at first and then sped up (late slope "
            f"{slope_ratio:.1f}x the early slope): a plateau at the start is the "
            "mark of a too-small initialisation (or a learning rate that is too low "
            "early on). Try a fan-in scaled initialisation.",
        )
    if slope_ratio > 0.5 and linearity > 0.9:
        return (
            "lr_too_low",
            f"The loss falls along a straight line (R^2 {linearity:.2f} for a line; "
            f"late slope {slope_ratio:.0%} of the early slope) and has not started "
            "to level off: the learning rate is probably too low. Raise it (e.g. "
            "3-10x).",
        )
    return (
        "ok",
        f"The loss decays and levels off ({initial:.4g} -> {final:.4g}; half the "
        f"decrease by {m['t_half']:.0%} of the run): the learning rate looks "
        "reasonable.",
    )


# --------------------------------------------------------------------------------------
# Train / validation accuracy.
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AccuracyDiagnosis(TrainingResult):
    """Train and validation accuracy, and what their gap says.

    Attributes:
        verdict: ``"ok"``, ``"overfitting"`` (validation well below training),
            ``"underfitting"`` (validation tracks training, both below
            ``target_accuracy``: capacity too small or training too short),
            ``"val_above_train"`` (a measurement problem) or
            ``"insufficient_data"``.
        passed: ``True`` for ``"ok"`` and ``"insufficient_data"``.
        reason: Why, with the numbers.
        epochs: x-axis in epochs.
        train: Training accuracy at each record.
        val: Validation accuracy at each record.
        gap: Final ``train - val``.
        best_val: Highest validation accuracy and ``best_val_epoch`` where it was.
        best_val_epoch: Epoch of ``best_val``.
    """

    verdict: str
    passed: bool
    reason: str
    epochs: tuple[float, ...]
    train: tuple[float, ...]
    val: tuple[float, ...]
    gap: float
    best_val: float
    best_val_epoch: float

    name = "accuracy"

    def _doc(self) -> Doc:
        if not self.train:
            return Doc(f"[{self.verdict}] accuracy: {self.reason}", ok=self.passed)
        return Doc(
            f"[{self.verdict}] accuracy: train {self.train[-1]:.1%}, val "
            f"{self.val[-1]:.1%}, gap {self.gap:+.1%} (best val {self.best_val:.1%} "
            f"at epoch {self.best_val_epoch:.3g})",
            [f"  {self.reason}"],
            self.passed,
        )


def diagnose_accuracy(
    train: Sequence[float] | jax.typing.ArrayLike,
    val: Sequence[float] | jax.typing.ArrayLike,
    *,
    epochs: Sequence[float] | jax.typing.ArrayLike | None = None,
    max_gap: float = 0.1,
    target_accuracy: float = 0.9,
) -> AccuracyDiagnosis:
    """Reads train/validation accuracy curves for overfitting and capacity.

    A validation accuracy far below the training accuracy means overfitting (more
    regularization, more data); a validation accuracy that tracks a low training
    accuracy means the model is too small (or not trained enough).

    Args:
        train: Training accuracy (in ``[0, 1]``) at each record.
        val: Validation accuracy at the same records.
        epochs: Epoch of each record; default ``0, 1, 2, ...``.
        max_gap: Largest acceptable final ``train - val``.
        target_accuracy: Training accuracy below which a small gap is read as
            too little capacity.

    Returns:
        An :class:`AccuracyDiagnosis`.

    Raises:
        ValueError: If ``train``, ``val`` (and ``epochs``) differ in length.

    Examples:
        >>> diagnose_accuracy([0.5, 0.9, 1.0], [0.5, 0.7, 0.72]).verdict
        'overfitting'
        >>> diagnose_accuracy([0.3, 0.5, 0.6], [0.3, 0.5, 0.58]).verdict
        'underfitting'
    """
    tr, va, ep = _accuracy_arrays(train, val, epochs)
    if tr.size == 0:
        return AccuracyDiagnosis(
            "insufficient_data",
            True,
            "No accuracy recorded.",
            (),
            (),
            (),
            0.0,
            0.0,
            0.0,
        )
    gap = float(tr[-1] - va[-1])
    best = int(np.argmax(va))
    common = dict(
        epochs=tuple(map(float, ep)),
        train=tuple(map(float, tr)),
        val=tuple(map(float, va)),
        gap=gap,
        best_val=float(va[best]),
        best_val_epoch=float(ep[best]),
    )
    if gap > max_gap:
        fell = va[-1] < va[best] - 0.02
        extra = (
            f" Validation accuracy peaked at {va[best]:.1%} (epoch {ep[best]:.3g}) "
            "and has been falling since."
            if fell
            else ""
        )
        return AccuracyDiagnosis(
            "overfitting",
            False,
            f"Training accuracy ({tr[-1]:.1%}) is {gap:.1%} above validation "
            f"({va[-1]:.1%}), more than {max_gap:.0%}: the model overfits. Increase "
            "regularization (L2, dropout) or get more data." + extra,
            **common,
        )
    if gap < -max_gap / 2:
        return AccuracyDiagnosis(
            "val_above_train",
            False,
            f"Validation accuracy ({va[-1]:.1%}) is above training ({tr[-1]:.1%}): "
            "training accuracy may be measured with dropout or augmentation on, or "
            "the splits differ in difficulty or overlap.",
            **common,
        )
    if tr[-1] < target_accuracy:
        return AccuracyDiagnosis(
            "underfitting",
            False,
            f"Validation tracks training (gap {gap:+.1%}) but training accuracy is "
            f"only {tr[-1]:.1%} (< {target_accuracy:.0%}): the model capacity is "
            "too small, or training has not run long enough. Make the model larger.",
            **common,
        )
    return AccuracyDiagnosis(
        "ok",
        True,
        f"Training {tr[-1]:.1%} and validation {va[-1]:.1%} accuracy, gap "
        f"{gap:+.1%} within {max_gap:.0%}.",
        **common,
    )


def _accuracy_arrays(
    train: Any, val: Any, epochs: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train, validation and epochs as float64 vectors of one length, checked."""
    tr = np.asarray(jax.device_get(train), dtype=np.float64).reshape(-1)
    va = np.asarray(jax.device_get(val), dtype=np.float64).reshape(-1)
    if tr.shape != va.shape:
        raise ValueError(
            f"`train` and `val` must have the same length, got {tr.size} and "
            f"{va.size}; record both at the same steps."
        )
    ep = (
        np.arange(tr.size, dtype=np.float64)
        if epochs is None
        else np.asarray(jax.device_get(epochs), dtype=np.float64).reshape(-1)
    )
    if ep.shape != tr.shape:
        raise ValueError(
            f"`epochs` must have one entry per record, got {ep.size} for {tr.size}."
        )
    return tr, va, ep
