"""Babysitting monitors: what to watch while a network trains.

Each monitor measures, gives a verdict with the reason, and returns the numbers that
:mod:`jaxcheck.plots` draws. They work with any training loop (plain JAX, optax):

* :func:`diagnose_loss_curve`: the shape of the loss curve (x-axis in epochs) read
  for the learning rate (too low: linear; too high: explodes or plateaus early at a
  high value) and its noise level (batch size).
* :func:`diagnose_accuracy`: train/validation accuracy and the gap between them
  (overfitting, or capacity too small).
* :func:`update_ratios` and :func:`check_update_ratios`: the norm of the update over
  the norm of the parameter, per leaf, against the ~1e-3 rule of thumb.
* :func:`activation_stats`: the distribution of every nonlinearity's output (and of
  the loss gradient there), captured without changing the model by evaluating its
  jaxpr; flags dead ReLUs and saturated or collapsed tanh/sigmoid units.
* :func:`first_layer_tiles`: first-layer weights as image tiles, with a smoothness
  score.
* :class:`TrainingMonitor`: a small recorder for a training loop that feeds them all.

The analysis functions are pure; only :class:`TrainingMonitor` holds state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jex_core

from jaxcheck.sanity import (
    _dataclass_to_dict,
    _fmt,
    _html_card,
    _html_table,
    _to_builtin,
)

__all__ = [
    "LossCurveDiagnosis",
    "AccuracyDiagnosis",
    "LeafRatio",
    "UpdateRatioReport",
    "LayerStats",
    "ActivationReport",
    "FirstLayerReport",
    "MonitorSummary",
    "TrainingMonitor",
    "diagnose_loss_curve",
    "diagnose_accuracy",
    "update_ratios",
    "update_ratios_from_updates",
    "check_update_ratios",
    "activation_stats",
    "first_layer_tiles",
]

PyTree = Any


# --------------------------------------------------------------------------------------
# Loss curve.
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LossCurveDiagnosis:
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

    def __str__(self) -> str:
        m = self.metrics
        head = f"[{self.verdict}] loss curve: {len(self.losses)} points"
        if "initial" in m and "final" in m:
            head += f", {_fmt(m['initial'])} -> {_fmt(m['final'])}"
        if self.epochs:
            head += f" over {self.epochs[-1] - self.epochs[0]:.3g} epochs"
        lines = [head, f"  {self.reason}"]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """The diagnosis as plain Python types (JSON-serialisable)."""
        return {"name": self.name, **_dataclass_to_dict(self)}

    def _repr_html_(self) -> str:
        return _html_card("loss curve", self.passed, str(self), label=self.verdict)


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
    epochs = step_arr / float(steps_per_epoch)
    w = int(window) if window is not None else max(1, n // 10)

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

    trend = _smooth(values, w)
    tail = max(3, n // 10)
    initial = float(values[0])
    final = float(np.median(values[-tail:]))
    scale = max(abs(initial), 1e-12)
    drop = (initial - final) / scale
    t = (step_arr - step_arr[0]) / max(step_arr[-1] - step_arr[0], 1.0)
    half = max(2, n // 2)
    level = max(float(np.mean(np.abs(trend[-half:]))), 1e-12)
    noise = float(np.std(values[-half:] - trend[-half:]) / level)
    wiggle = float(np.std(values - trend))
    metrics: dict[str, float] = {
        "initial": initial,
        "final": final,
        "relative_drop": drop,
        "noise": noise,
        "window": float(w),
    }
    notes = []
    bs = f" (batch_size={batch_size})" if batch_size else ""
    if noise_threshold < noise <= noisy_fail:
        notes.append(
            f"The loss is noisy: its wiggle is {noise:.0%} of its level in the second "
            f"half{bs}. A larger batch smooths it; the wiggle shrinks as the batch "
            "grows toward the full data set."
        )

    peak = float(np.max(trend))
    if final > initial * 1.1 or (peak > 1.5 * scale and final > 0.9 * initial):
        return result(
            "lr_too_high",
            f"The loss grows (from {initial:.4g} to a peak of {peak:.4g}, ending at "
            f"{final:.4g}): the learning rate is too high and the optimisation "
            "is diverging.",
            notes,
            trend,
            metrics,
        )
    if drop < 0.02 or (drop < 0.1 and float(trend[0]) - final < 2.0 * wiggle):
        return result(
            "flat",
            f"The loss does not decrease beyond its noise ({initial:.4g} -> "
            f"{final:.4g}, {drop:.1%}): the learning rate is far too low, or no "
            "gradient reaches the parameters (dead units, stop_gradient, a loss "
            "that ignores them).",
            notes,
            trend,
            metrics,
        )

    progress = (initial - trend) / max(initial - final, 1e-12)
    reached_half = np.nonzero(progress >= 0.5)[0]
    reached_90 = np.nonzero(progress >= 0.9)[0]
    t_half = float(t[reached_half[0]]) if reached_half.size else 1.0
    t90 = float(t[reached_90[0]]) if reached_90.size else 1.0
    quarter = max(2, n // 4)
    early = _slope(t[:quarter], trend[:quarter])
    late = _slope(t[-quarter:], trend[-quarter:])
    slope_ratio = late / early if early < 0 else 0.0
    fit = np.polyfit(t, trend, 1)
    resid = trend - np.polyval(fit, t)
    total = float(np.sum((trend - trend.mean()) ** 2))
    linearity = 1.0 - float(np.sum(resid**2)) / total if total > 0 else 0.0
    metrics.update(t_half=t_half, t90=t90, slope_ratio=slope_ratio, linearity=linearity)

    if t90 < 0.15 and final / scale > plateau_fraction:
        return result(
            "lr_too_high",
            f"The loss fell fast (90% of its decrease in the first {t90:.0%} of the "
            f"run) and then stuck at {final:.4g}, {final / scale:.0%} of its "
            "initial value: typical of a learning rate that is too high (too much "
            "energy to settle). Compare with a smaller learning rate; if it "
            "reaches the same level, the model is the limit instead.",
            notes,
            trend,
            metrics,
        )
    if noise > noisy_fail:
        return result(
            "noisy",
            f"The loss bounces: its wiggle is {noise:.0%} of its level in the second "
            f"half{bs}. The batch is too small, or the learning rate too high (check "
            "the update/parameter ratios to tell which).",
            notes,
            trend,
            metrics,
        )
    if slope_ratio > 2.0:
        return result(
            "slow_start",
            f"The loss hardly moved at first and then sped up (late slope "
            f"{slope_ratio:.1f}x the early slope): a plateau at the start is the "
            "mark of a too-small initialisation (or a learning rate that is too low "
            "early on). Try a fan-in scaled initialisation.",
            notes,
            trend,
            metrics,
        )
    if slope_ratio > 0.5 and linearity > 0.9:
        return result(
            "lr_too_low",
            f"The loss falls along a straight line (R^2 {linearity:.2f} for a line; "
            f"late slope {slope_ratio:.0%} of the early slope) and has not started "
            "to level off: the learning rate is probably too low. Raise it (e.g. "
            "3-10x).",
            notes,
            trend,
            metrics,
        )
    return result(
        "ok",
        f"The loss decays and levels off ({initial:.4g} -> {final:.4g}; half the "
        f"decrease by {t_half:.0%} of the run): the learning rate looks reasonable.",
        notes,
        trend,
        metrics,
    )


# --------------------------------------------------------------------------------------
# Train / validation accuracy.
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AccuracyDiagnosis:
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

    def __str__(self) -> str:
        if not self.train:
            return f"[{self.verdict}] accuracy: {self.reason}"
        return (
            f"[{self.verdict}] accuracy: train {self.train[-1]:.1%}, val "
            f"{self.val[-1]:.1%}, gap {self.gap:+.1%} (best val {self.best_val:.1%} "
            f"at epoch {self.best_val_epoch:.3g})\n  {self.reason}"
        )

    def to_dict(self) -> dict[str, Any]:
        """The diagnosis as plain Python types (JSON-serialisable)."""
        return {"name": self.name, **_dataclass_to_dict(self)}

    def _repr_html_(self) -> str:
        return _html_card("accuracy", self.passed, str(self), label=self.verdict)


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


# --------------------------------------------------------------------------------------
# Update-to-parameter ratios.
# --------------------------------------------------------------------------------------


def _norm(x: jax.Array) -> jax.Array:
    x = jnp.ravel(x)
    if x.size == 0:
        return jnp.zeros((), jnp.float32)
    return jnp.linalg.norm(x.astype(jnp.promote_types(x.dtype, jnp.float32)))


# One compiled function per tree structure and leaf shapes (jit's own cache), instead
# of a few eager ops per leaf.
@jax.jit
def _diff_norms(old: PyTree, new: PyTree) -> tuple[list[jax.Array], list[jax.Array]]:
    old_l, new_l = jax.tree.leaves(old), jax.tree.leaves(new)
    return (
        [_norm(a) for a in old_l],
        [_norm(b - a) for a, b in zip(old_l, new_l, strict=True)],
    )


@jax.jit
def _pair_norms(params: PyTree, updates: PyTree) -> tuple[list[jax.Array], ...]:
    return (
        [_norm(a) for a in jax.tree.leaves(params)],
        [_norm(u) for u in jax.tree.leaves(updates)],
    )


def _paths(tree: PyTree) -> list[str]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [jax.tree_util.keystr(path) for path, _ in flat]


def _ratios(paths: Sequence[str], norms: Any) -> dict[str, float]:
    pn, un = jax.device_get(norms)
    out = {}
    for k, p, u in zip(paths, pn, un, strict=True):
        p, u = float(p), float(u)
        out[k] = u / p if p > 0 else (0.0 if u == 0 else math.nan)
    return out


def _as_arrays(tree: PyTree) -> PyTree:
    return jax.tree.map(jnp.asarray, tree)


def _check_same_structure(a: PyTree, b: PyTree, name_a: str, name_b: str) -> None:
    sa, sb = jax.tree.structure(a), jax.tree.structure(b)
    if sa != sb:
        raise ValueError(
            f"`{name_a}` and `{name_b}` must have the same pytree structure, got "
            f"{sa} and {sb}."
        )


def update_ratios(params: PyTree, new_params: PyTree) -> dict[str, float]:
    """Per leaf, the norm of the update over the norm of the parameter.

    The update is ``new_params - params``: what the optimiser actually did (for
    plain SGD, ``learning_rate * gradient``), not the raw gradient. A zero
    parameter (e.g. a bias at initialisation) has no meaningful ratio: NaN, or 0
    if the update is zero too.

    Args:
        params: Parameters before the step.
        new_params: Parameters after the step, same structure.

    Returns:
        ``{keystr path: ||new - old|| / ||old||}``, e.g. ``{"['W']": 1e-3}``.

    Raises:
        ValueError: If the two pytrees differ in structure.

    Examples:
        >>> import jax.numpy as jnp
        >>> update_ratios({"W": jnp.ones(4)}, {"W": 1.001 * jnp.ones(4)})
        {"['W']": 0.00100...}
    """
    _check_same_structure(params, new_params, "params", "new_params")
    norms = _diff_norms(_as_arrays(params), _as_arrays(new_params))
    return _ratios(_paths(params), norms)


def update_ratios_from_updates(params: PyTree, updates: PyTree) -> dict[str, float]:
    """Like :func:`update_ratios`, from the updates (e.g. optax's ``updates``).

    Args:
        params: Parameters the updates are applied to.
        updates: The updates, same structure (``new = params + updates``).

    Returns:
        ``{keystr path: ||update|| / ||param||}``.

    Raises:
        ValueError: If the two pytrees differ in structure.

    Examples:
        >>> import jax.numpy as jnp
        >>> update_ratios_from_updates({"b": 2 * jnp.ones(4)}, {"b": jnp.ones(4)})
        {"['b']": 0.5}
    """
    _check_same_structure(params, updates, "params", "updates")
    norms = _pair_norms(_as_arrays(params), _as_arrays(updates))
    return _ratios(_paths(params), norms)


@dataclasses.dataclass(frozen=True)
class LeafRatio:
    """The update-to-parameter ratio of one leaf and its verdict.

    Attributes:
        path: The leaf's ``keystr`` path.
        ratio: Typical ratio (median over the records judged).
        verdict: ``"ok"``, ``"too_high"``, ``"too_low"``, ``"frozen"`` (the leaf
            does not change) or ``"undefined"`` (zero parameter, e.g. a bias at
            initialisation).
        message: One line for the person reading it.
    """

    path: str
    ratio: float
    verdict: str
    message: str


@dataclasses.dataclass(frozen=True)
class UpdateRatioReport:
    """Update-to-parameter ratios of all leaves against the rule of thumb.

    Attributes:
        passed: No leaf too high, too low or frozen.
        verdict: ``"ok"``, ``"lr_too_high"``, ``"lr_too_low"`` (all judged leaves
            agree), ``"mixed"`` (some high, some low: per-leaf scales differ) or
            ``"frozen"``.
        reason: Why, with the numbers.
        leaves: One :class:`LeafRatio` per leaf.
        target: The rule-of-thumb ratio (1e-3).
        low: Ratios below it are too low.
        high: Ratios above it are too high.
    """

    passed: bool
    verdict: str
    reason: str
    leaves: tuple[LeafRatio, ...]
    target: float
    low: float
    high: float

    name = "update_ratios"

    @property
    def warnings(self) -> tuple[str, ...]:
        """The per-leaf messages of leaves that are not ok."""
        return tuple(
            f"{leaf.path}: {leaf.message}"
            for leaf in self.leaves
            if leaf.verdict not in ("ok", "undefined")
        )

    def as_dict(self) -> dict[str, float]:
        """``{path: ratio}``."""
        return {leaf.path: leaf.ratio for leaf in self.leaves}

    def __str__(self) -> str:
        width = max([len(leaf.path) for leaf in self.leaves] + [4])
        lines = [
            f"[{self.verdict}] update/param ratio (target ~{self.target:.0e}, ok in "
            f"[{self.low:.0e}, {self.high:.0e}])",
            f"  {self.reason}",
        ]
        for leaf in self.leaves:
            lines.append(
                f"    {leaf.path:<{width}}  {_fmt(leaf.ratio, '.2e'):>9}  "
                f"{leaf.verdict}"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """The report as plain Python types (JSON-serialisable)."""
        return {"name": self.name, **_dataclass_to_dict(self)}

    def _repr_html_(self) -> str:
        rows = [
            (lf.path, _fmt(lf.ratio, ".2e"), lf.verdict, lf.message)
            for lf in self.leaves
        ]
        return _html_card(
            "update/param ratio", self.passed, self.reason, self.verdict
        ) + (_html_table(["leaf", "ratio", "verdict", "message"], rows))


def check_update_ratios(
    ratios: Mapping[str, float | Sequence[float]],
    *,
    target: float = 1e-3,
    low: float | None = None,
    high: float | None = None,
    exclude: Sequence[str] = (),
) -> UpdateRatioReport:
    """Judges update-to-parameter ratios against the ~1e-3 rule of thumb.

    A ratio well below ``target`` suggests the learning rate is too low; well above
    it, too high. Each leaf is judged on its median ratio, so a history of ratios
    (a list per leaf) smooths out single noisy steps. NaN (zero parameter) is
    reported as ``"undefined"`` and not judged.

    Args:
        ratios: ``{path: ratio}`` or ``{path: [ratio at each recorded step]}``, as
            from :func:`update_ratios` or :meth:`TrainingMonitor.update_history`.
        target: The ratio to aim for.
        low: Ratios below are too low; default ``target / 10``.
        high: Ratios above are too high; default ``target * 10``.
        exclude: Paths not to judge (reported as ``"undefined"``).

    Returns:
        An :class:`UpdateRatioReport`.

    Raises:
        ValueError: If ``ratios`` is empty or the band is not ``0 < low < high``.

    Examples:
        >>> r = check_update_ratios({"['W']": 0.3, "['b']": 0.2})
        >>> r.verdict, r.passed
        ('lr_too_high', False)
    """
    lo = target / 10 if low is None else float(low)
    hi = target * 10 if high is None else float(high)
    if not 0 < lo < hi:
        raise ValueError(f"Need 0 < low < high, got low={lo!r}, high={hi!r}.")
    if not ratios:
        raise ValueError(
            "`ratios` is empty; record updates with update_ratios(params, "
            "new_params) first."
        )
    excluded = set(exclude)
    leaves = []
    for path, value in ratios.items():
        arr = np.asarray(value, dtype=np.float64).reshape(-1)
        finite = arr[np.isfinite(arr)]
        if path in excluded or finite.size == 0:
            shown = float(np.median(finite)) if finite.size else math.nan
            why = (
                "not judged (excluded; a leaf initialised at zero has a ratio of "
                "about 1/steps whatever the learning rate)"
                if path in excluded
                else "zero parameter: the ratio is undefined (a bias at "
                "initialisation?)"
            )
            leaves.append(LeafRatio(path, shown, "undefined", why))
            continue
        r = float(np.median(finite))
        if r == 0.0:
            leaves.append(
                LeafRatio(
                    path,
                    r,
                    "frozen",
                    "no update: zero gradient, stop_gradient, or the leaf is left "
                    "out of the optimiser",
                )
            )
        elif r > hi:
            leaves.append(
                LeafRatio(
                    path,
                    r,
                    "too_high",
                    f"ratio {r:.1e} > {hi:.0e}: updates are large against the "
                    "weights; the learning rate is likely too high for this leaf",
                )
            )
        elif r < lo:
            leaves.append(
                LeafRatio(
                    path,
                    r,
                    "too_low",
                    f"ratio {r:.1e} < {lo:.0e}: updates barely move the weights; "
                    "the learning rate is likely too low for this leaf",
                )
            )
        else:
            leaves.append(LeafRatio(path, r, "ok", f"ratio {r:.1e} is in range"))

    counts = {
        v: sum(leaf.verdict == v for leaf in leaves)
        for v in ("ok", "too_high", "too_low", "frozen", "undefined")
    }
    judged = len(leaves) - counts["undefined"]
    if judged == 0:
        verdict, reason = "undefined", "No leaf could be judged (all zero or excluded)."
    elif counts["too_high"] and counts["too_low"]:
        verdict = "mixed"
        reason = (
            f"{counts['too_high']} leaves update too fast and {counts['too_low']} "
            "too slowly: their scales differ; consider per-leaf learning rates, "
            "a different initialisation, or an adaptive optimiser."
        )
    elif counts["too_high"]:
        verdict = "lr_too_high"
        reason = (
            f"{counts['too_high']} of {judged} leaves have ratios above {hi:.0e}: "
            "lower the learning rate."
        )
    elif counts["too_low"]:
        verdict = "lr_too_low"
        reason = (
            f"{counts['too_low']} of {judged} leaves have ratios below {lo:.0e}: "
            "raise the learning rate."
        )
    elif counts["frozen"]:
        verdict = "frozen"
        reason = f"{counts['frozen']} leaves do not change at all."
    else:
        verdict = "ok"
        reason = f"All {judged} judged leaves are within [{lo:.0e}, {hi:.0e}]."
    if counts["frozen"] and verdict != "frozen":
        reason += f" {counts['frozen']} leaves do not change at all."
    passed = counts["too_high"] == counts["too_low"] == counts["frozen"] == 0
    return UpdateRatioReport(passed, verdict, reason, tuple(leaves), target, lo, hi)


# --------------------------------------------------------------------------------------
# Activation and gradient distributions, captured from the jaxpr.
# --------------------------------------------------------------------------------------

# Higher-order primitives whose sub-jaxpr computes exactly what the primitive does:
# evaluating the sub-jaxpr instead changes nothing but what we can see.
_TRANSPARENT_CALLS = frozenset(
    {"jit", "pjit", "closed_call", "core_call", "remat", "remat2", "checkpoint"}
)
# Primitives with user-defined derivatives: bound as they are (so their rules are
# used), and their sub-jaxpr is evaluated a second time only to record what is inside.
_CUSTOM_CALLS = frozenset(
    {"custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr"}
)


def _sub_jaxpr(eqn: Any) -> tuple[Any, Sequence[Any]] | None:
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        sub = eqn.params.get(key)
        if sub is None:
            continue
        if hasattr(sub, "jaxpr") and hasattr(sub, "consts"):
            return sub.jaxpr, sub.consts
        if hasattr(sub, "eqns"):
            return sub, ()
    return None


def _is_zero_literal(atom: Any) -> bool:
    if not isinstance(atom, jex_core.Literal):
        return False
    try:
        return bool(np.all(np.asarray(atom.val) == 0))
    except (TypeError, ValueError):
        return False


#: Activations that jax.nn wraps in a named ``jit``: recorded as one layer by
#: that name (not by the tanh/logistic/max inside them).
_NAMED_ACTIVATIONS = frozenset(
    {"leaky_relu", "elu", "selu", "celu", "silu", "mish", "softplus"}
)
#: Kinds whose units can die: flat (or nearly so) on the negative side. A unit
#: is dead when its output is <= 0 for every example.
RECTIFIERS = ("relu", "leaky_relu", "elu", "selu", "celu", "silu", "mish")
#: Kinds that saturate at both tails.
SQUASHERS = ("tanh", "sigmoid")


def _named_activation(eqn: Any) -> str | None:
    name = eqn.params.get("name") if eqn.primitive.name in _TRANSPARENT_CALLS else None
    if name not in _NAMED_ACTIVATIONS:
        return None
    dtype = getattr(getattr(eqn.outvars[0], "aval", None), "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        return None
    return str(name)


def _site_kind(eqn: Any) -> str | None:
    name = eqn.primitive.name
    dtype = getattr(getattr(eqn.outvars[0], "aval", None), "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        return None  # integer max(i, 0) is bookkeeping, not an activation
    if name == "tanh":
        return "tanh"
    if name == "logistic":
        return "sigmoid"
    if (
        name == "max"
        and len(eqn.invars) == 2
        and any(_is_zero_literal(v) for v in eqn.invars)
    ):
        return "relu"
    return None


class _Recorder:
    """Collects the outputs of nonlinearities while a jaxpr is evaluated."""

    def __init__(self, probes: Sequence[jax.Array] | None):
        self.probes = probes
        self.values: list[jax.Array] = []
        self.kinds: list[str] = []
        self.has_grad: list[bool] = []

    def add(self, kind: str, value: jax.Array, probing: bool) -> tuple[int, jax.Array]:
        idx = len(self.values)
        self.kinds.append(kind)
        self.has_grad.append(probing)
        self.values.append(value)
        if probing and self.probes is not None:
            value = value + self.probes[idx]
        return idx, value

    def attach(self, idx: int, value: jax.Array, probing: bool) -> jax.Array:
        """Re-attributes site ``idx`` to ``value`` (the output of a custom call)."""
        self.values[idx] = value
        self.has_grad[idx] = probing
        if probing and self.probes is not None:
            value = value + self.probes[idx]
        return value


def _eval_jaxpr(
    jaxpr: Any,
    consts: Sequence[Any],
    args: Sequence[Any],
    rec: _Recorder,
    probing: bool,
) -> tuple[list[Any], list[int | None]]:
    """Evaluates ``jaxpr``, recording nonlinearities; returns outputs and site ids."""
    env: dict[Any, Any] = {}
    site_of: dict[Any, int] = {}

    def read(atom):
        return atom.val if isinstance(atom, jex_core.Literal) else env[atom]

    for var, val in zip(jaxpr.constvars, consts, strict=True):
        env[var] = val
    for var, val in zip(jaxpr.invars, args, strict=True):
        env[var] = val

    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        name = eqn.primitive.name
        sub = _sub_jaxpr(eqn)
        manager = getattr(getattr(eqn, "ctx", None), "manager", None)
        named = _named_activation(eqn)
        with manager if manager is not None else contextlib.nullcontext():
            if named is not None:
                # One layer, evaluated as it is (its insides are not recorded).
                bind_params = eqn.primitive.get_bind_params(eqn.params)
                outs = list(eqn.primitive.bind(*invals, **bind_params))
                ids = [None] * len(outs)
                ids[0], outs[0] = rec.add(named, outs[0], probing)
            elif name == "scan" and sub is not None:
                outs, ids = _eval_scan(eqn, sub, invals, rec)
            elif name in _TRANSPARENT_CALLS and sub is not None:
                outs, ids = _eval_jaxpr(sub[0], sub[1], invals, rec, probing)
            elif name in _CUSTOM_CALLS and sub is not None:
                bind_params = eqn.primitive.get_bind_params(eqn.params)
                outs = eqn.primitive.bind(*invals, **bind_params)
                outs = list(outs) if eqn.primitive.multiple_results else [outs]
                frozen = [jax.lax.stop_gradient(v) for v in invals]
                _, ids = _eval_jaxpr(sub[0], sub[1], frozen, rec, False)
                for i, idx in enumerate(ids):
                    if idx is not None:
                        outs[i] = rec.attach(idx, outs[i], probing)
            else:
                bind_params = eqn.primitive.get_bind_params(eqn.params)
                ans = eqn.primitive.bind(*invals, **bind_params)
                outs = list(ans) if eqn.primitive.multiple_results else [ans]
                kind = _site_kind(eqn)
                ids = [None] * len(outs)
                if kind is not None:
                    ids[0], outs[0] = rec.add(kind, outs[0], probing)
        for var, val, idx in zip(eqn.outvars, outs, ids, strict=True):
            env[var] = val
            if idx is not None:
                site_of[var] = idx
    outs = [read(v) for v in jaxpr.outvars]
    out_ids = [
        None if isinstance(v, jex_core.Literal) else site_of.get(v)
        for v in jaxpr.outvars
    ]
    return outs, out_ids


def _eval_scan(
    eqn: Any, sub: tuple[Any, Sequence[Any]], invals: list[Any], rec: _Recorder
) -> tuple[list[Any], list[int | None]]:
    """Runs a ``scan`` with its body evaluated by the recording interpreter: the
    nonlinearities inside come out as extra outputs, stacked over the steps, and
    are recorded as layers of shape ``(length, ...)`` (without gradients)."""
    body, body_consts = sub
    num_consts, num_carry = eqn.params["num_consts"], eqn.params["num_carry"]
    consts = invals[:num_consts]
    init = invals[num_consts : num_consts + num_carry]
    xs = invals[num_consts + num_carry :]
    inner_kinds: list[str] = []

    def step(carry: list[Any], x: list[Any]) -> tuple[list[Any], tuple]:
        inner = _Recorder(None)
        outs, _ = _eval_jaxpr(body, body_consts, [*consts, *carry, *x], inner, False)
        inner_kinds[:] = inner.kinds
        return outs[:num_carry], (outs[num_carry:], inner.values)

    carry, (ys, recorded) = jax.lax.scan(
        step,
        list(init),
        list(xs),
        length=eqn.params["length"],
        reverse=eqn.params["reverse"],
        unroll=eqn.params.get("unroll", 1),
    )
    for kind, value in zip(inner_kinds, recorded, strict=True):
        rec.add(kind, value, False)
    outs = [*carry, *ys]
    return outs, [None] * len(outs)


@dataclasses.dataclass(frozen=True)
class LayerStats:
    """The distribution of one nonlinearity's output (and of the gradient there).

    Attributes:
        name: ``"<index>:<kind>"`` in order of evaluation, e.g. ``"0:relu"``.
        kind: ``"relu"``, ``"tanh"``, ``"sigmoid"``, or the name of a ``jax.nn``
            activation: ``"leaky_relu"``, ``"elu"``, ``"selu"``, ``"celu"``,
            ``"silu"``, ``"mish"``, ``"softplus"``.
        shape: Shape of the output.
        mean: Mean of the activations.
        std: Standard deviation of the activations.
        min: Smallest activation.
        max: Largest activation.
        fraction_zero: Fraction of activations exactly zero (ReLU).
        fraction_dead: Fraction of units (last axis) that are zero for every
            example (ReLU): dead units pass no gradient.
        fraction_saturated: Fraction of activations in the flat tails (tanh/sigmoid
            beyond ``saturation_level``), where the gradient vanishes.
        fraction_collapsed: Fraction of tanh/sigmoid activations stuck at the
            centre (``|tanh| < 0.01``), a sign of too-small weights.
        hist_counts: Histogram of the activations.
        hist_edges: Its bin edges.
        grad_mean: Mean of d(output)/d(activation), or ``None``.
        grad_std: Standard deviation of that gradient, or ``None``.
        grad_rms: Root mean square of that gradient, or ``None``.
        grad_hist_counts: Histogram of the gradient (empty without gradients).
        grad_hist_edges: Its bin edges.
        warnings: What looks wrong with this layer.
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    mean: float
    std: float
    min: float
    max: float
    fraction_zero: float
    fraction_dead: float
    fraction_saturated: float
    fraction_collapsed: float
    hist_counts: tuple[int, ...]
    hist_edges: tuple[float, ...]
    grad_mean: float | None = None
    grad_std: float | None = None
    grad_rms: float | None = None
    grad_hist_counts: tuple[int, ...] = ()
    grad_hist_edges: tuple[float, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def key_stat(self) -> str:
        """The figure that matters for this kind of layer: dead units for a
        rectifier (``"dead 12%"``), saturation for tanh/sigmoid (``"sat 3%"``);
        empty for others (softplus).

        Examples:
          >>> import jax, jax.numpy as jnp
          >>> report = activation_stats(lambda x: jax.nn.relu(x - 9.0), jnp.ones((4, 2)))
          >>> report.layers[0].key_stat
          'dead 100%'
        """
        if self.kind in RECTIFIERS:
            return f"dead {self.fraction_dead:.0%}"
        if self.kind in SQUASHERS:
            return f"sat {self.fraction_saturated:.0%}"
        return ""

    def __str__(self) -> str:
        special = self.key_stat.replace("sat ", "saturated ") or self.kind
        grad = "" if self.grad_rms is None else f", grad rms {self.grad_rms:.2e}"
        status = "; ".join(self.warnings) or "ok"
        return (
            f"{self.name} {'x'.join(map(str, self.shape))}: mean {self.mean:.3g}, "
            f"std {self.std:.3g}, {special}{grad}: {status}"
        )

    def to_dict(self) -> dict[str, Any]:
        """The stats as plain Python types (JSON-serialisable)."""
        return _dataclass_to_dict(self)


@dataclasses.dataclass(frozen=True)
class ActivationReport:
    """Per-layer activation (and gradient) statistics with warnings.

    Attributes:
        layers: One :class:`LayerStats` per recorded nonlinearity, in order.
        passed: No layer has warnings.
        reason: Summary of what was found.
    """

    layers: tuple[LayerStats, ...]
    passed: bool
    reason: str

    name = "activation_stats"

    @property
    def warnings(self) -> tuple[str, ...]:
        """All layer warnings, each prefixed with the layer name."""
        return tuple(f"{lay.name}: {w}" for lay in self.layers for w in lay.warnings)

    def layer(self, name: str) -> LayerStats:
        """The stats of the layer called ``name`` (e.g. ``"0:relu"``)."""
        for lay in self.layers:
            if lay.name == name:
                return lay
        raise KeyError(
            f"No layer named {name!r}; layers are {[lay.name for lay in self.layers]}."
        )

    def _rows(self) -> list[tuple[str, ...]]:
        rows = []
        for lay in self.layers:
            special = lay.key_stat or "-"
            rows.append(
                (
                    lay.name,
                    "x".join(map(str, lay.shape)),
                    _fmt(lay.mean, ".3f"),
                    _fmt(lay.std, ".3f"),
                    special,
                    _fmt(lay.grad_rms, ".2e"),
                    "; ".join(lay.warnings) or "ok",
                )
            )
        return rows

    _HEADERS = ("layer", "shape", "mean", "std", "dead/saturated", "grad rms", "status")

    def __str__(self) -> str:
        verdict = "ok" if self.passed else "WARN"
        lines = [f"[{verdict}] activations: {self.reason}"]
        rows = [self._HEADERS] + self._rows()
        widths = [max(len(r[i]) for r in rows) for i in range(len(self._HEADERS) - 1)]
        for r in rows:
            cells = [c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)]
            lines.append("    " + "  ".join(cells) + "  " + r[-1])
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """The report as plain Python types (JSON-serialisable)."""
        return {"name": self.name, **_dataclass_to_dict(self)}

    def _repr_html_(self) -> str:
        label = "ok" if self.passed else "WARN"
        return _html_card("activations", self.passed, self.reason, label) + _html_table(
            self._HEADERS, self._rows()
        )


def _histogram(
    values: np.ndarray, bins: int
) -> tuple[tuple[int, ...], tuple[float, ...]]:
    if values.size == 0:
        return (), ()
    lo, hi = float(values.min()), float(values.max())
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    counts, edges = np.histogram(values, bins=bins, range=(lo, hi))
    return tuple(int(c) for c in counts), tuple(float(e) for e in edges)


def activation_stats(
    f: Callable[..., Any],
    *args: Any,
    gradients: bool = False,
    bins: int = 30,
    dead_threshold: float = 0.25,
    saturation_level: float = 0.99,
    saturation_threshold: float = 0.25,
    collapse_threshold: float = 0.9,
    vanishing_ratio: float = 1e-3,
) -> ActivationReport:
    """Records every nonlinearity's output inside ``f``, without changing ``f``.

    ``f`` is traced with ``jax.make_jaxpr`` and its jaxpr evaluated by a small
    interpreter that records the output of every ``tanh``, ``logistic`` (sigmoid)
    and ``max(x, 0)`` (ReLU, including ``jax.nn.relu``), and of ``jax.nn``'s
    ``leaky_relu``, ``elu``, ``selu``, ``celu``, ``silu``/``swish``, ``mish`` and
    ``softplus`` (recognised by name, each one layer), looking inside ``jit``,
    ``checkpoint`` and ``custom_jvp``/``custom_vjp`` calls. Custom calls are still
    evaluated by their own rules. ``jax.nn.gelu`` is inlined by JAX, so its inner
    ``tanh`` shows up as a tanh layer. With ``gradients=True`` and a scalar ``f`` (a
    loss), it also records the gradient of ``f`` with respect to each recorded
    output. Nonlinearities inside a ``scan`` (an RNN, scanned layers) are
    recorded stacked over its steps, shape ``(length, ...)``, without their
    gradients; those inside ``while`` and ``cond`` are not recorded.

    Warnings per layer: ReLU layers with more than ``dead_threshold`` of their units
    dead (zero for every example: a large negative bias, too high a learning rate;
    for leaky ReLU, ELU, SiLU and the like: negative for every example);
    tanh/sigmoid layers with more than ``saturation_threshold`` of activations in
    the tails (weights too large, gradients vanish) or more than
    ``collapse_threshold`` near the centre (weights too small); layers whose
    gradient RMS is below ``vanishing_ratio`` times the largest layer's.

    Args:
        f: The model or loss, ``f(*args)``.
        *args: Its arguments, pytrees of arrays, e.g. ``params, x`` or ``params, x,
            y`` (bind anything else with ``functools.partial``). Use a batch of
            examples: "dead" means zero for every example in it.
        gradients: Also record the gradient of ``f`` (must return a scalar) with
            respect to each recorded activation.
        bins: Number of histogram bins.
        dead_threshold: Fraction of dead ReLU units that triggers a warning.
        saturation_level: ``|tanh| >= level`` (sigmoid: ``y <= 1 - level`` or
            ``y >= level``) counts as saturated.
        saturation_threshold: Fraction of saturated activations that triggers a
            warning.
        collapse_threshold: Fraction of tanh/sigmoid activations at the centre that
            triggers a warning.
        vanishing_ratio: Gradient RMS ratio to the largest layer's that triggers a
            warning.

    Returns:
        An :class:`ActivationReport`; ``report.layers`` lists the layers in order
        of evaluation.

    Raises:
        ValueError: If ``gradients=True`` and ``f`` does not return a scalar float.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> def model(p, x):
        ...     return jnp.tanh(jax.nn.relu(x @ p["W1"] + p["b1"]) @ p["W2"])
        >>> p = {"W1": jnp.ones((3, 4)), "b1": -100.0 * jnp.ones(4),
        ...      "W2": jnp.ones((4, 2))}
        >>> report = activation_stats(model, p, jnp.ones((8, 3)))
        >>> [lay.name for lay in report.layers], report.layer("0:relu").fraction_dead
        (['0:relu', '1:tanh'], 1.0)
    """
    closed = jax.make_jaxpr(f)(*args)
    flat_args = jax.tree.leaves(args)
    meta: dict[str, Any] = {}

    def run(probes, flat):
        rec = _Recorder(probes)
        outs, _ = _eval_jaxpr(closed.jaxpr, closed.consts, flat, rec, True)
        meta["kinds"] = list(rec.kinds)
        meta["has_grad"] = list(rec.has_grad)
        return outs, rec.values

    if gradients:
        out_avals = closed.out_avals
        if (
            len(out_avals) != 1
            or out_avals[0].shape != ()
            or not jnp.issubdtype(out_avals[0].dtype, jnp.floating)
        ):
            raise ValueError(
                "`gradients=True` needs `f` to return one scalar float (a loss), got "
                f"{[str(a) for a in out_avals]}; pass the loss, or gradients=False."
            )
        shapes = jax.eval_shape(lambda flat: run(None, flat)[1], flat_args)
        probes = [jnp.zeros(s.shape, s.dtype) for s in shapes]

        def loss_of_probes(pr, flat):
            outs, values = run(pr, flat)
            return outs[0], values

        grads, values = jax.jit(jax.grad(loss_of_probes, has_aux=True))(
            probes, flat_args
        )
        grads = [g if meta["has_grad"][i] else None for i, g in enumerate(grads)]
    else:
        _, values = jax.jit(lambda flat: run(None, flat))(flat_args)
        grads = [None] * len(values)
    values = jax.device_get(values)
    grads = jax.device_get(grads)

    layers = []
    for i, (kind, val, grad) in enumerate(
        zip(meta["kinds"], values, grads, strict=True)
    ):
        a = np.asarray(val, dtype=np.float64)
        flat = a.reshape(-1)
        warnings = []
        frac_zero = float(np.mean(flat == 0)) if flat.size else 0.0
        frac_dead = frac_sat = frac_col = 0.0
        if kind in RECTIFIERS:
            units = a.reshape(-1, a.shape[-1]) if a.ndim >= 1 else a.reshape(1, 1)
            dead = np.all(units <= 0, axis=0)
            frac_dead = float(np.mean(dead))
            if frac_dead > dead_threshold and kind == "relu":
                warnings.append(
                    f"{frac_dead:.0%} of {dead.size} units are dead (zero for every "
                    "example): a large negative bias or too high a learning rate "
                    "knocked them out; they pass no gradient"
                )
            elif frac_dead > dead_threshold:
                warnings.append(
                    f"{frac_dead:.0%} of {dead.size} units are dead (negative for "
                    f"every example): on the flat side of {kind} they pass only a "
                    "weak gradient; a large negative bias or too high a learning "
                    "rate pushed them there"
                )
        elif kind in SQUASHERS:
            centred = flat if kind == "tanh" else 2.0 * flat - 1.0
            frac_sat = float(np.mean(np.abs(centred) >= saturation_level))
            frac_col = float(np.mean(np.abs(centred) < 0.01))
            if frac_sat > saturation_threshold:
                warnings.append(
                    f"{frac_sat:.0%} of activations are saturated at the tails: "
                    "initial weights too large or inputs not normalised; "
                    "gradients vanish there"
                )
            if frac_col > collapse_threshold:
                warnings.append(
                    f"{frac_col:.0%} of activations sit at the centre: weights too "
                    "small, the signal is collapsing"
                )
        counts, edges = _histogram(flat, bins)
        g_mean = g_std = g_rms = None
        g_counts: tuple[int, ...] = ()
        g_edges: tuple[float, ...] = ()
        if grad is not None:
            g = np.asarray(grad, dtype=np.float64).reshape(-1)
            g_mean, g_std = float(g.mean()), float(g.std())
            g_rms = float(np.sqrt(np.mean(g**2)))
            g_counts, g_edges = _histogram(g, bins)
        layers.append(
            dict(
                name=f"{i}:{kind}",
                kind=kind,
                shape=tuple(int(s) for s in a.shape),
                mean=float(flat.mean()) if flat.size else 0.0,
                std=float(flat.std()) if flat.size else 0.0,
                min=float(flat.min()) if flat.size else 0.0,
                max=float(flat.max()) if flat.size else 0.0,
                fraction_zero=frac_zero,
                fraction_dead=frac_dead,
                fraction_saturated=frac_sat,
                fraction_collapsed=frac_col,
                hist_counts=counts,
                hist_edges=edges,
                grad_mean=g_mean,
                grad_std=g_std,
                grad_rms=g_rms,
                grad_hist_counts=g_counts,
                grad_hist_edges=g_edges,
                warnings=warnings,
            )
        )
    rms = [lay["grad_rms"] for lay in layers if lay["grad_rms"] is not None]
    top = max(rms) if rms else 0.0
    for lay in layers:
        if top > 0 and lay["grad_rms"] is not None:
            if lay["grad_rms"] < vanishing_ratio * top:
                lay["warnings"].append(
                    f"gradient RMS {lay['grad_rms']:.1e} is below {vanishing_ratio:g}"
                    f" x the largest layer's ({top:.1e}): gradients vanish here"
                )
    stats = tuple(
        LayerStats(**{**lay, "warnings": tuple(lay["warnings"])}) for lay in layers
    )
    flagged = [lay.name for lay in stats if lay.warnings]
    if not stats:
        reason = "No tanh, sigmoid or ReLU (max(x, 0)) found in f; nothing to record."
    elif flagged:
        reason = (
            f"{len(flagged)} of {len(stats)} layers need a look: {', '.join(flagged)}."
        )
    else:
        reason = f"{len(stats)} layers recorded; no dead, saturated or collapsed layer."
    return ActivationReport(stats, not flagged, reason)


# --------------------------------------------------------------------------------------
# First-layer weights as images.
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class FirstLayerReport:
    """First-layer weights arranged as image tiles, with a smoothness score.

    Attributes:
        tiles: ``(units, height, width)`` or ``(units, height, width, 3)`` array,
            each tile scaled to ``[0, 1]``.
        grid: The tiles laid out in a grid with 1-pixel gaps, ready for ``imshow``.
        roughness: Per tile, the mean squared difference of neighbouring pixels
            over twice the tile's variance: about 1 for white noise, near 0 for
            smooth features.
        median_roughness: Median of ``roughness``.
        verdict: ``"smooth"`` or ``"noisy"``.
        reason: What the verdict suggests.
    """

    tiles: np.ndarray
    grid: np.ndarray
    roughness: tuple[float, ...]
    median_roughness: float
    verdict: str
    reason: str

    name = "first_layer"

    @property
    def passed(self) -> bool:
        """Whether the features look smooth rather than like noise."""
        return self.verdict == "smooth"

    def __str__(self) -> str:
        return (
            f"[{self.verdict}] first-layer weights: {self.tiles.shape[0]} tiles of "
            f"{'x'.join(map(str, self.tiles.shape[1:]))}, median roughness "
            f"{self.median_roughness:.2f} (noise ~1)\n  {self.reason}"
        )

    def to_dict(self) -> dict[str, Any]:
        """Scores and shapes (not the pixels) as plain Python types."""
        return {
            "name": self.name,
            "num_tiles": int(self.tiles.shape[0]),
            "tile_shape": list(self.tiles.shape[1:]),
            "roughness": _to_builtin(self.roughness),
            "median_roughness": self.median_roughness,
            "verdict": self.verdict,
            "reason": self.reason,
        }

    def _repr_html_(self) -> str:
        return _html_card("first-layer weights", self.passed, str(self), self.verdict)


def first_layer_tiles(
    weights: jax.typing.ArrayLike,
    *,
    image_shape: Sequence[int] | None = None,
    layout: str = "in_out",
    max_tiles: int = 64,
    noise_threshold: float = 0.75,
) -> FirstLayerReport:
    """Arranges first-layer weights as images and scores how smooth they are.

    Noisy features can mean an unconverged network, a badly set learning rate or
    too little regularization; smooth, diverse features mean training is going
    well.

    Args:
        weights: A dense kernel ``(pixels, units)`` (``layout="in_out"``, as in
            ``x @ W``) or ``(units, pixels)`` (``layout="out_in"``), or a
            convolution kernel ``(height, width, channels, units)`` (HWIO).
        image_shape: ``(height, width)`` or ``(height, width, channels)`` of the
            input image; required for dense kernels.
        layout: ``"in_out"`` or ``"out_in"`` for dense kernels.
        max_tiles: Show at most this many units.
        noise_threshold: Median roughness above which the features are called
            noisy.

    Returns:
        A :class:`FirstLayerReport`.

    Raises:
        ValueError: If the shapes do not fit together or ``layout`` is unknown.

    Examples:
        >>> import jax
        >>> w = jax.random.normal(jax.random.key(0), (64, 16))
        >>> r = first_layer_tiles(w, image_shape=(8, 8))
        >>> r.tiles.shape, r.verdict
        ((16, 8, 8), 'noisy')
    """
    w = np.asarray(jax.device_get(weights), dtype=np.float64)
    if layout not in ("in_out", "out_in"):
        raise ValueError(f"`layout` must be 'in_out' or 'out_in', got {layout!r}.")
    if w.ndim == 4:
        tiles = np.moveaxis(w, -1, 0)  # (units, h, w, c)
    elif w.ndim == 2:
        if image_shape is None:
            raise ValueError(
                "`image_shape` is required for a dense kernel, e.g. image_shape=(8, 8)"
                " for 8x8 digits."
            )
        units_first = w.T if layout == "in_out" else w
        shape = tuple(int(s) for s in image_shape)
        if int(np.prod(shape)) != units_first.shape[1]:
            raise ValueError(
                f"`image_shape` {shape} has {int(np.prod(shape))} pixels but the "
                f"kernel has {units_first.shape[1]} inputs per unit (weights.shape="
                f"{w.shape}, layout={layout!r}); pass layout='out_in' for "
                "(units, pixels) kernels."
            )
        tiles = units_first.reshape((units_first.shape[0],) + shape)
    else:
        raise ValueError(
            f"`weights` must be 2-D (dense) or 4-D (HWIO conv), got shape {w.shape}."
        )
    if tiles.ndim == 4 and tiles.shape[-1] == 1:
        tiles = tiles[..., 0]
    if tiles.ndim == 4 and tiles.shape[-1] not in (3, 4):
        tiles = tiles.mean(axis=-1)
    tiles = tiles[: int(max_tiles)]

    grey = tiles if tiles.ndim == 3 else tiles.mean(axis=-1)
    rough = []
    for t in grey:
        var = float(t.var())
        if var == 0:
            rough.append(0.0)
            continue
        dx = np.mean(np.diff(t, axis=1) ** 2) if t.shape[1] > 1 else 0.0
        dy = np.mean(np.diff(t, axis=0) ** 2) if t.shape[0] > 1 else 0.0
        rough.append(float((dx + dy) / 2.0 / (2.0 * var)))
    median = float(np.median(rough)) if rough else 0.0

    lo = tiles.reshape(tiles.shape[0], -1).min(axis=1)
    hi = tiles.reshape(tiles.shape[0], -1).max(axis=1)
    span = np.where(hi > lo, hi - lo, 1.0)
    bshape = (-1,) + (1,) * (tiles.ndim - 1)
    scaled = (tiles - lo.reshape(bshape)) / span.reshape(bshape)

    n = scaled.shape[0]
    cols = int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    th, tw = scaled.shape[1], scaled.shape[2]
    extra = scaled.shape[3:]
    grid = np.ones((rows * (th + 1) - 1, cols * (tw + 1) - 1) + extra)
    for k in range(n):
        r, c = divmod(k, cols)
        grid[r * (th + 1) : r * (th + 1) + th, c * (tw + 1) : c * (tw + 1) + tw] = (
            scaled[k]
        )
    if median > noise_threshold:
        verdict = "noisy"
        reason = (
            f"Median roughness {median:.2f} (white noise ~1): the features look like "
            "noise: unconverged, a badly set learning rate, or too weak "
            "regularization."
        )
    else:
        verdict = "smooth"
        reason = (
            f"Median roughness {median:.2f} (white noise ~1): the features have "
            "spatial structure."
        )
    return FirstLayerReport(scaled, grid, tuple(rough), median, verdict, reason)


# --------------------------------------------------------------------------------------
# The recorder.
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MonitorSummary:
    """Everything a :class:`TrainingMonitor` recorded, judged.

    Attributes:
        loss: Diagnosis of the loss curve.
        accuracy: Diagnosis of train/validation accuracy (``None`` if none
            recorded).
        updates: Update-ratio report (``None`` if no update recorded).
        passed: No monitor failed.
    """

    loss: LossCurveDiagnosis
    accuracy: AccuracyDiagnosis | None
    updates: UpdateRatioReport | None
    passed: bool

    def __str__(self) -> str:
        parts = [str(self.loss)]
        if self.accuracy is not None:
            parts.append(str(self.accuracy))
        if self.updates is not None:
            parts.append(str(self.updates))
        return "\n".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """The summary as plain Python types (JSON-serialisable)."""
        return {
            "passed": self.passed,
            "loss": self.loss.to_dict(),
            "accuracy": None if self.accuracy is None else self.accuracy.to_dict(),
            "updates": None if self.updates is None else self.updates.to_dict(),
        }

    def _repr_html_(self) -> str:
        parts = [self.loss._repr_html_()]
        if self.accuracy is not None:
            parts.append(self.accuracy._repr_html_())
        if self.updates is not None:
            parts.append(self.updates._repr_html_())
        return "".join(parts)


class TrainingMonitor:
    """Records what to watch during training; the judging is done by pure functions.

    Call ``record_*`` from any training loop. Values may be JAX arrays: they are
    converted only when read, so recording does not force a device sync every step.

    Args:
        steps_per_epoch: Optimiser steps in one epoch (the x-axis is in epochs).
        batch_size: Batch size, mentioned in the note on noise.
        ratio_target: Rule-of-thumb update/parameter ratio.

    Raises:
        ValueError: If ``steps_per_epoch`` is not positive.

    Examples:
        >>> import jax.numpy as jnp
        >>> mon = TrainingMonitor(steps_per_epoch=10)
        >>> for step in range(50):
        ...     mon.record_loss(step, 2.3 * 0.95**step)
        >>> mon.record_accuracy(50, train=0.97, val=0.95)
        >>> ratios = mon.record_update(0, {"W": jnp.ones(3)}, {"W": 1.001 * jnp.ones(3)})
        >>> mon.summary().passed
        True
    """

    def __init__(
        self,
        *,
        steps_per_epoch: float,
        batch_size: int | None = None,
        ratio_target: float = 1e-3,
    ):
        if not steps_per_epoch > 0:
            raise ValueError(
                f"`steps_per_epoch` must be positive, got {steps_per_epoch!r}; it is "
                "len(train_set) // batch_size."
            )
        self.steps_per_epoch = float(steps_per_epoch)
        self.batch_size = batch_size
        self.ratio_target = float(ratio_target)
        self._loss_steps: list[int] = []
        self._losses: list[Any] = []
        self._acc_steps: list[int] = []
        self._train_acc: list[Any] = []
        self._val_acc: list[Any] = []
        self._update_steps: list[int] = []
        self._ratios: dict[str, list[float]] = {}
        self._zero_init: set[str] = set()

    def __repr__(self) -> str:
        return (
            f"TrainingMonitor(steps_per_epoch={self.steps_per_epoch:g}, "
            f"losses={len(self._losses)}, accuracies={len(self._acc_steps)}, "
            f"updates={len(self._update_steps)})"
        )

    def record_loss(self, step: int, loss: jax.typing.ArrayLike) -> None:
        """Records the (batch) loss at ``step``."""
        self._loss_steps.append(int(step))
        self._losses.append(loss)

    def record_accuracy(
        self,
        step: int,
        *,
        train: jax.typing.ArrayLike | None = None,
        val: jax.typing.ArrayLike | None = None,
    ) -> None:
        """Records training and/or validation accuracy (in ``[0, 1]``) at ``step``."""
        self._acc_steps.append(int(step))
        self._train_acc.append(math.nan if train is None else train)
        self._val_acc.append(math.nan if val is None else val)

    def record_update(
        self, step: int, params: PyTree, new_params: PyTree
    ) -> dict[str, float]:
        """Records the per-leaf update ratio of one step; see :func:`update_ratios`.

        Leaves that are all zero the first time they are recorded (biases) are
        not judged later: their ratio is about ``1 / steps`` whatever the
        learning rate.

        Returns:
            ``{path: ratio}`` of this step.
        """
        ratios = update_ratios(params, new_params)
        self._store_ratios(step, ratios)
        return ratios

    def record_updates(
        self, step: int, params: PyTree, updates: PyTree
    ) -> dict[str, float]:
        """Like :meth:`record_update` from optax's ``updates``."""
        ratios = update_ratios_from_updates(params, updates)
        self._store_ratios(step, ratios)
        return ratios

    def _store_ratios(self, step: int, ratios: Mapping[str, float]) -> None:
        first = not self._update_steps
        self._update_steps.append(int(step))
        for k, v in ratios.items():
            if first and not math.isfinite(v):
                self._zero_init.add(k)
            self._ratios.setdefault(k, []).append(v)

    @property
    def zero_init_leaves(self) -> tuple[str, ...]:
        """Paths of leaves that were all zero at the first recorded update."""
        return tuple(sorted(self._zero_init))

    @property
    def loss_history(self) -> tuple[np.ndarray, np.ndarray]:
        """``(steps, losses)`` as numpy arrays."""
        return (
            np.asarray(self._loss_steps, dtype=np.int64),
            np.asarray(jax.device_get(self._losses), dtype=np.float64).reshape(-1),
        )

    @property
    def accuracy_history(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(steps, train, val)`` as numpy arrays (NaN where not recorded)."""
        return (
            np.asarray(self._acc_steps, dtype=np.int64),
            np.asarray(jax.device_get(self._train_acc), dtype=np.float64).reshape(-1),
            np.asarray(jax.device_get(self._val_acc), dtype=np.float64).reshape(-1),
        )

    def update_history(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``(steps, {path: ratios})`` of every recorded update."""
        return (
            np.asarray(self._update_steps, dtype=np.int64),
            {k: np.asarray(v, dtype=np.float64) for k, v in self._ratios.items()},
        )

    def loss_diagnosis(self, **kwargs: Any) -> LossCurveDiagnosis:
        """:func:`diagnose_loss_curve` of the recorded losses (kwargs passed on)."""
        steps, losses = self.loss_history
        kwargs.setdefault("batch_size", self.batch_size)
        return diagnose_loss_curve(
            losses, steps=steps, steps_per_epoch=self.steps_per_epoch, **kwargs
        )

    def accuracy_diagnosis(self, **kwargs: Any) -> AccuracyDiagnosis | None:
        """:func:`diagnose_accuracy` of the records that have both accuracies."""
        steps, train, val = self.accuracy_history
        both = np.isfinite(train) & np.isfinite(val)
        if not both.any():
            return None
        return diagnose_accuracy(
            train[both], val[both], epochs=steps[both] / self.steps_per_epoch, **kwargs
        )

    def update_report(
        self, *, last: int | None = None, **kwargs: Any
    ) -> UpdateRatioReport | None:
        """:func:`check_update_ratios` over the recorded updates (``None`` if none).

        Args:
            last: Judge only the last ``last`` records (default: all).
            **kwargs: Passed to :func:`check_update_ratios`.
        """
        if not self._update_steps:
            return None
        _, hist = self.update_history()
        if last is not None:
            hist = {k: v[-int(last) :] for k, v in hist.items()}
        kwargs.setdefault("target", self.ratio_target)
        exclude = set(kwargs.pop("exclude", ())) | set(self.zero_init_leaves)
        return check_update_ratios(hist, exclude=sorted(exclude), **kwargs)

    def summary(self) -> MonitorSummary:
        """All diagnoses at once."""
        loss = self.loss_diagnosis()
        acc = self.accuracy_diagnosis()
        upd = self.update_report()
        passed = (
            loss.passed and (acc is None or acc.passed) and (upd is None or upd.passed)
        )
        return MonitorSummary(loss, acc, upd, passed)
