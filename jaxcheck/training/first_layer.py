"""First-layer weights as image tiles, with a smoothness score.

Noisy first-layer features can mean an unconverged network, a badly set learning
rate or too little regularization; smooth, diverse features mean training is going
well. :func:`first_layer_tiles` arranges the weights as images and scores them;
:func:`~jaxcheck.training.plots.plot_first_layer` draws them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from jaxcheck.training._render import Doc, TrainingResult

__all__ = ["FirstLayerReport", "first_layer_tiles"]


@dataclasses.dataclass(frozen=True, eq=False)
class FirstLayerReport(TrainingResult):
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

    def _doc(self) -> Doc:
        return Doc(
            f"[{self.verdict}] first-layer weights: {self.tiles.shape[0]} tiles of "
            f"{'x'.join(map(str, self.tiles.shape[1:]))}, median roughness "
            f"{self.median_roughness:.2f} (noise ~1)",
            [f"  {self.reason}"],
            self.passed,
        )

    def _data(self) -> dict[str, Any]:
        """Scores and shapes (not the pixels)."""
        return {
            "name": self.name,
            "num_tiles": int(self.tiles.shape[0]),
            "tile_shape": list(self.tiles.shape[1:]),
            "roughness": list(self.roughness),
            "median_roughness": self.median_roughness,
            "verdict": self.verdict,
            "reason": self.reason,
        }


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
    tiles = _as_tiles(w, image_shape, layout)[: int(max_tiles)]
    rough = _roughness(tiles if tiles.ndim == 3 else tiles.mean(axis=-1))
    median = float(np.median(rough)) if rough else 0.0
    lo = tiles.reshape(tiles.shape[0], -1).min(axis=1)
    hi = tiles.reshape(tiles.shape[0], -1).max(axis=1)
    span = np.where(hi > lo, hi - lo, 1.0)
    bshape = (-1,) + (1,) * (tiles.ndim - 1)
    scaled = (tiles - lo.reshape(bshape)) / span.reshape(bshape)
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
    return FirstLayerReport(
        scaled, _tile_grid(scaled), tuple(rough), median, verdict, reason
    )


def _as_tiles(
    w: np.ndarray, image_shape: Sequence[int] | None, layout: str
) -> np.ndarray:
    """One image per unit: ``(units, h, w)`` or ``(units, h, w, 3 or 4)``."""
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
    return tiles


def _roughness(grey: np.ndarray) -> list[float]:
    """Per tile, the mean squared neighbour difference over twice the variance."""
    rough = []
    for t in grey:
        var = float(t.var())
        if var == 0:
            rough.append(0.0)
            continue
        dx = np.mean(np.diff(t, axis=1) ** 2) if t.shape[1] > 1 else 0.0
        dy = np.mean(np.diff(t, axis=0) ** 2) if t.shape[0] > 1 else 0.0
        rough.append(float((dx + dy) / 2.0 / (2.0 * var)))
    return rough


def _tile_grid(scaled: np.ndarray) -> np.ndarray:
    """The tiles laid out in a near-square grid with 1-pixel gaps (value 1)."""
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
    return grid
