"""The training monitor: records a training loop and judges it.

:class:`TrainingMonitor` records losses, accuracies and update-to-parameter
ratios from any training loop (plain JAX, optax) and judges them with the pure
functions of :mod:`jaxcheck.training.curves` and :mod:`jaxcheck.training.updates`;
:meth:`TrainingMonitor.summary` gives all verdicts at once.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from jaxcheck.training.curves import (
    AccuracyDiagnosis,
    LossCurveDiagnosis,
    diagnose_accuracy,
    diagnose_loss_curve,
)
from jaxcheck.training.updates import (
    UpdateRatioReport,
    check_update_ratios,
    update_ratios,
    update_ratios_from_updates,
)

__all__ = ["MonitorSummary", "TrainingMonitor"]

PyTree = Any

#: Why a leaf that was all zeros at the first recorded update is not judged.
_ZERO_INIT = (
    "all zeros at the first recorded update (a bias initialised at 0): its "
    "ratio falls like 1/steps whatever the learning rate"
)


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
        given = kwargs.pop("exclude", ())
        exclude = (
            dict(given)
            if isinstance(given, Mapping)
            else dict.fromkeys(given, "excluded by the caller")
        )
        for path in self.zero_init_leaves:
            exclude.setdefault(path, _ZERO_INIT)
        return check_update_ratios(hist, exclude=exclude, **kwargs)

    def summary(self) -> MonitorSummary:
        """All diagnoses at once."""
        loss = self.loss_diagnosis()
        acc = self.accuracy_diagnosis()
        upd = self.update_report()
        passed = (
            loss.passed and (acc is None or acc.passed) and (upd is None or upd.passed)
        )
        return MonitorSummary(loss, acc, upd, passed)
