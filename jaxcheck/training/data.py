"""A small real data set for demos, notebooks and tests: scikit-learn's 8x8 digits.

The digits (1797 grey-scale 8x8 images of the digits 0-9, pixel values 0-16) ship
inside the scikit-learn wheel, so loading them never touches the network. They are
small enough that a whole training run fits in a few seconds on a laptop CPU, yet
real enough that the sanity checks and monitors of :mod:`jaxcheck.training`
behave as they do on larger problems.

scikit-learn is an optional dependency: ``pip install jaxcheck[data]``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from jaxcheck.training._render import Doc, TrainingResult

__all__ = ["Digits", "load_digits"]

_INSTALL_HINT = (
    "jaxcheck.training.data needs scikit-learn for its bundled 8x8 digits data set; "
    "install jaxcheck[data] (or `pip install scikit-learn`)."
)


@dataclasses.dataclass(frozen=True, eq=False)
class Digits(TrainingResult):
    """The 8x8 digits split into a training and a validation set.

    Attributes:
        x_train: Training images, flattened, shape ``(n_train, 64)``.
        y_train: Integer class labels 0-9, shape ``(n_train,)``.
        x_val: Validation images, shape ``(n_val, 64)``.
        y_val: Validation labels, shape ``(n_val,)``.
        image_shape: Shape of one image, ``(8, 8)``.
        num_classes: Number of classes, 10.
        pixel_mean: Per-pixel training mean that was subtracted (zeros if
            ``center=False``), shape ``(64,)``.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    image_shape: tuple[int, int]
    num_classes: int
    pixel_mean: np.ndarray

    @property
    def num_train(self) -> int:
        """Number of training examples."""
        return int(self.x_train.shape[0])

    @property
    def num_val(self) -> int:
        """Number of validation examples."""
        return int(self.x_val.shape[0])

    def _doc(self) -> Doc:
        return Doc(
            f"Digits(train={self.num_train}, val={self.num_val}, "
            f"features={self.x_train.shape[1]}, image_shape={self.image_shape}, "
            f"num_classes={self.num_classes}, dtype={self.x_train.dtype})"
        )

    def __repr__(self) -> str:
        return self._doc().summary

    def _data(self) -> dict[str, Any]:
        """Sizes and metadata (not the arrays)."""
        return {
            "num_train": self.num_train,
            "num_val": self.num_val,
            "num_features": int(self.x_train.shape[1]),
            "image_shape": list(self.image_shape),
            "num_classes": self.num_classes,
            "dtype": str(self.x_train.dtype),
        }


def load_digits(
    *,
    val_fraction: float = 0.25,
    center: bool = True,
    seed: int = 0,
    dtype: Any = np.float32,
) -> Digits:
    """Loads scikit-learn's bundled 8x8 digits, scaled and split; no download.

    Pixels are scaled from 0-16 to 0-1 and, with ``center=True``, the per-pixel
    training mean is subtracted (zero-centred inputs make the "loss at chance"
    sanity check sharp). The split is a seeded shuffle (not stratified), so it is
    identical on every call with the same arguments.

    Args:
        val_fraction: Fraction of the 1797 examples held out for validation, in
            ``(0, 1)``.
        center: Subtract the training per-pixel mean.
        seed: Seed of the shuffle that makes the split.
        dtype: Floating dtype of the images (labels are ``int32``).

    Returns:
        A :class:`Digits` with numpy arrays ``x_train, y_train, x_val, y_val``.

    Raises:
        ImportError: If scikit-learn is not installed (``jaxcheck[data]``).
        ValueError: If ``val_fraction`` is not strictly between 0 and 1.

    Examples:
        >>> from jaxcheck.training import load_digits
        >>> d = load_digits(val_fraction=0.25, seed=0)
        >>> d.x_train.shape, d.x_val.shape, d.num_classes
        ((1348, 64), (449, 64), 10)
    """
    if not 0.0 < float(val_fraction) < 1.0:
        raise ValueError(
            f"`val_fraction` must be strictly between 0 and 1, got {val_fraction!r}; "
            "pass e.g. val_fraction=0.25."
        )
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(_INSTALL_HINT) from err

    bunch = _sk_load_digits()
    x = np.asarray(bunch.data, dtype=np.float64) / 16.0
    y = np.asarray(bunch.target, dtype=np.int32)
    order = np.random.RandomState(seed).permutation(x.shape[0])
    x, y = x[order], y[order]
    n_val = max(1, int(round(val_fraction * x.shape[0])))
    x_train, y_train = x[n_val:], y[n_val:]
    x_val, y_val = x[:n_val], y[:n_val]
    mean = x_train.mean(axis=0) if center else np.zeros(x.shape[1])
    return Digits(
        x_train=(x_train - mean).astype(dtype),
        y_train=y_train,
        x_val=(x_val - mean).astype(dtype),
        y_val=y_val,
        image_shape=(8, 8),
        num_classes=10,
        pixel_mean=mean.astype(dtype),
    )
