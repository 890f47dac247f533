"""Figures for the sanity checks and training monitors (matplotlib, headless).

Every function returns a ``matplotlib.figure.Figure`` built without ``pyplot``: no
global backend is switched and no window opens, so they work on servers and in CI.
Write a figure with :func:`save_figure` (PNG) or get its bytes with :func:`to_png`
(``IPython.display.Image(data=to_png(fig))`` shows it in a notebook). The numbers
behind each figure come from the other modules of :mod:`jaxcheck.training`.

matplotlib is an optional dependency: ``pip install jaxcheck[plots]``.
"""

from __future__ import annotations

import io
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from jaxcheck.training.activations import ActivationReport
from jaxcheck.training.curves import LossCurveDiagnosis, diagnose_loss_curve
from jaxcheck.training.first_layer import FirstLayerReport, first_layer_tiles
from jaxcheck.training.monitor import TrainingMonitor
from jaxcheck.training.overfit import OverfitResult
from jaxcheck.training.sanity import RegularizationResult
from jaxcheck.training.updates import check_update_ratios

__all__ = [
    "plot_loss",
    "plot_accuracy",
    "plot_update_ratios",
    "plot_activation_stats",
    "plot_first_layer",
    "plot_overfit",
    "plot_regularization",
    "plot_monitor",
    "save_figure",
    "to_png",
]

Figure = Any  # matplotlib.figure.Figure; imported lazily.
Axes = Any

_PLOTS_HINT = (
    "jaxcheck.training.plots needs matplotlib; install jaxcheck[plots] "
    "(or `pip install matplotlib`)."
)
_OK, _BAD, _NEUTRAL = "#1a7f37", "#cf222e", "#57606a"


def _new_figure(figsize: tuple[float, float]) -> Figure:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure as _Figure
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(_PLOTS_HINT) from err
    fig = _Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax
    fig = _new_figure(figsize)
    return fig, fig.add_subplot(1, 1, 1)


def _verdict_color(passed: bool) -> str:
    return _OK if passed else _BAD


def _loss_diagnosis(source: Any, steps_per_epoch: float) -> LossCurveDiagnosis:
    if isinstance(source, LossCurveDiagnosis):
        return source
    if isinstance(source, TrainingMonitor):
        return source.loss_diagnosis()
    values = np.asarray(jax.device_get(source), dtype=np.float64)
    return diagnose_loss_curve(values, steps_per_epoch=steps_per_epoch)


def plot_loss(
    source: Any,
    *,
    steps_per_epoch: float = 1.0,
    log_scale: bool = False,
    ax: Axes | None = None,
    title: str | None = None,
) -> Figure:
    """The loss against epochs, raw and smoothed, titled with its diagnosis.

    Args:
        source: A :class:`~jaxcheck.training.TrainingMonitor`, a
            :class:`~jaxcheck.training.LossCurveDiagnosis`, or a sequence of losses.
        steps_per_epoch: Used only when ``source`` is a plain sequence.
        log_scale: Log y-axis (exponential progress then looks like a line).
        ax: Draw into these axes instead of a new figure.
        title: Title; default the diagnosis verdict.

    Returns:
        The figure.

    Raises:
        ImportError: If matplotlib is missing (``jaxcheck[plots]``).

    Examples:
        >>> import numpy as np
        >>> fig = plot_loss(2.3 * np.exp(-np.arange(200) / 40), steps_per_epoch=20)
        >>> fig.axes[0].get_xlabel()
        'epoch'
    """
    diag = _loss_diagnosis(source, steps_per_epoch)
    fig, ax = _axes(ax, (6.0, 3.6))
    epochs = np.asarray(diag.epochs)
    ax.plot(epochs, diag.losses, color="#8ab4f8", lw=0.8, label="loss (per step)")
    ax.plot(epochs, diag.smoothed, color="#1f4e9c", lw=2.0, label="trend")
    if log_scale and np.all(np.asarray(diag.losses) > 0):
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss" + (" (log)" if log_scale else ""))
    ax.set_title(
        title or f"loss: {diag.verdict}", color=_verdict_color(diag.passed), loc="left"
    )
    ax.legend(loc="upper right", fontsize="small")
    ax.grid(True, alpha=0.3)
    return fig


def plot_accuracy(
    source: Any, *, ax: Axes | None = None, title: str | None = None
) -> Figure:
    """Train and validation accuracy against epochs, with the gap shaded.

    Args:
        source: A :class:`~jaxcheck.training.TrainingMonitor` or an
            :class:`~jaxcheck.training.AccuracyDiagnosis`.
        ax: Draw into these axes instead of a new figure.
        title: Title; default the diagnosis verdict.

    Returns:
        The figure.

    Raises:
        ValueError: If the monitor recorded no pair of train/val accuracies.
        ImportError: If matplotlib is missing (``jaxcheck[plots]``).

    Examples:
        >>> from jaxcheck.training import diagnose_accuracy
        >>> fig = plot_accuracy(diagnose_accuracy([0.2, 0.8, 0.99], [0.2, 0.7, 0.8]))
        >>> fig.axes[0].get_title(loc="left")
        'accuracy: overfitting'
    """
    diag = (
        source.accuracy_diagnosis() if isinstance(source, TrainingMonitor) else source
    )
    if diag is None:
        raise ValueError(
            "`source` has no accuracy records with both train and val; call "
            "monitor.record_accuracy(step, train=..., val=...)."
        )
    fig, ax = _axes(ax, (6.0, 3.6))
    ep = np.asarray(diag.epochs)
    ax.plot(ep, diag.train, "o-", color="#1f4e9c", ms=3, label="train")
    ax.plot(ep, diag.val, "o-", color="#d9822b", ms=3, label="validation")
    ax.fill_between(ep, diag.train, diag.val, color="#d9822b", alpha=0.15, label="gap")
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy")
    ax.set_title(
        title or f"accuracy: {diag.verdict}",
        color=_verdict_color(diag.passed),
        loc="left",
    )
    ax.legend(loc="lower right", fontsize="small")
    ax.grid(True, alpha=0.3)
    return fig


def plot_update_ratios(
    source: Any,
    *,
    steps: Sequence[int] | None = None,
    steps_per_epoch: float | None = None,
    target: float = 1e-3,
    ax: Axes | None = None,
    title: str | None = None,
) -> Figure:
    """Update-to-parameter ratio per leaf against epochs, on a log scale.

    The band ``[target / 10, target * 10]`` is shaded and the target dashed.

    Args:
        source: A :class:`~jaxcheck.training.TrainingMonitor`, or a mapping
            ``{path: ratios}`` (one value per record, or one value).
        steps: Step of each record (mapping source); default ``0, 1, ...``.
        steps_per_epoch: x-axis in epochs; default the monitor's (or 1).
        target: The rule-of-thumb ratio.
        ax: Draw into these axes instead of a new figure.
        title: Title; default the report verdict.

    Returns:
        The figure.

    Raises:
        ValueError: If there is nothing to plot.
        ImportError: If matplotlib is missing (``jaxcheck[plots]``).

    Examples:
        >>> fig = plot_update_ratios({"['W']": [1e-3, 2e-3, 1.5e-3]})
        >>> fig.axes[0].get_yscale()
        'log'
    """
    exclude: Sequence[str] = ()
    if isinstance(source, TrainingMonitor):
        step_arr, hist = source.update_history()
        spe = source.steps_per_epoch if steps_per_epoch is None else steps_per_epoch
        exclude = source.zero_init_leaves
    elif isinstance(source, Mapping):
        hist = {
            k: np.atleast_1d(np.asarray(v, dtype=np.float64)) for k, v in source.items()
        }
        n = max((v.size for v in hist.values()), default=0)
        step_arr = np.arange(n) if steps is None else np.asarray(steps)
        spe = 1.0 if steps_per_epoch is None else steps_per_epoch
    else:
        raise TypeError(
            "`source` must be a TrainingMonitor or a {path: ratios} mapping, got "
            f"{type(source).__name__}."
        )
    if not hist:
        raise ValueError("No update ratios to plot; record some updates first.")
    report = check_update_ratios(hist, target=target, exclude=exclude)
    fig, ax = _axes(ax, (6.5, 3.8))
    x = np.asarray(step_arr, dtype=np.float64) / float(spe)
    ax.axhspan(report.low, report.high, color=_OK, alpha=0.08, label="ok band")
    ax.axhline(target, color=_NEUTRAL, ls="--", lw=1, label=f"target {target:.0e}")
    verdicts = {leaf.path: leaf.verdict for leaf in report.leaves}
    for path, values in hist.items():
        vals = np.where(np.isfinite(values) & (values > 0), values, np.nan)
        if np.all(np.isnan(vals)):
            continue
        style = ":" if verdicts.get(path) == "undefined" else "-"
        ax.plot(x[: vals.size], vals, style, lw=1.3, label=f"{path} ({verdicts[path]})")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("||update|| / ||param||")
    ax.set_title(
        title or f"update/param ratio: {report.verdict}",
        color=_verdict_color(report.passed),
        loc="left",
    )
    ax.legend(loc="best", fontsize="x-small")
    ax.grid(True, which="both", alpha=0.2)
    return fig


def plot_activation_stats(report: ActivationReport, *, max_layers: int = 8) -> Figure:
    """Histograms of each recorded layer's activations (and gradients, if any).

    Layer titles are red where the layer has warnings (dead ReLUs, saturated or
    collapsed tanh/sigmoid, vanishing gradients).

    Args:
        report: From :func:`jaxcheck.training.activation_stats`.
        max_layers: Draw at most this many layers (the first ones).

    Returns:
        The figure: one column per layer; a second row for gradients when
        recorded.

    Raises:
        ValueError: If the report has no layers.
        ImportError: If matplotlib is missing (``jaxcheck[plots]``).

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from jaxcheck.training import activation_stats
        >>> rep = activation_stats(lambda x: jnp.tanh(3 * x), jnp.linspace(-2, 2, 50))
        >>> len(plot_activation_stats(rep).axes)
        1
    """
    layers = report.layers[: int(max_layers)]
    if not layers:
        raise ValueError(
            "The report has no layers: f contains no tanh, sigmoid or ReLU to record."
        )
    with_grads = any(lay.grad_hist_counts for lay in layers)
    rows = 2 if with_grads else 1
    cols = len(layers)
    fig = _new_figure((max(4.5, 2.6 * cols), 2.4 * rows + 0.5))
    axes = fig.subplots(rows, cols, squeeze=False)
    for j, lay in enumerate(layers):
        ax = axes[0][j]
        if lay.hist_counts:
            edges = np.asarray(lay.hist_edges)
            ax.stairs(lay.hist_counts, edges, fill=True, color="#1f4e9c", alpha=0.8)
        extra = f", {lay.key_stat}" if lay.key_stat else ""
        ax.set_title(
            f"{lay.name}\nmean {lay.mean:.2f} std {lay.std:.2f}{extra}",
            fontsize="small",
            color=_BAD if lay.warnings else "black",
        )
        ax.tick_params(labelsize="x-small")
        if j == 0:
            ax.set_ylabel("activations", fontsize="small")
        if with_grads:
            gax = axes[1][j]
            if lay.grad_hist_counts:
                gax.stairs(
                    lay.grad_hist_counts,
                    np.asarray(lay.grad_hist_edges),
                    fill=True,
                    color="#d9822b",
                    alpha=0.8,
                )
                gax.set_title(f"grad rms {lay.grad_rms:.1e}", fontsize="small")
            else:
                gax.set_title("no gradient recorded", fontsize="small")
            gax.tick_params(labelsize="x-small")
            if j == 0:
                gax.set_ylabel("gradients", fontsize="small")
    fig.suptitle(
        "activations per layer: " + ("ok" if report.passed else "WARN"),
        color=_verdict_color(report.passed),
    )
    return fig


def plot_first_layer(
    source: Any,
    *,
    image_shape: Sequence[int] | None = None,
    ax: Axes | None = None,
    title: str | None = None,
) -> Figure:
    """First-layer weights drawn as a grid of image tiles.

    Args:
        source: A :class:`~jaxcheck.training.FirstLayerReport`, or a weight array
            (then ``image_shape`` is needed for dense kernels; see
            :func:`jaxcheck.training.first_layer_tiles`).
        image_shape: Shape of one input image, for a weight array.
        ax: Draw into these axes instead of a new figure.
        title: Title; default the verdict and roughness.

    Returns:
        The figure.

    Raises:
        ImportError: If matplotlib is missing (``jaxcheck[plots]``).

    Examples:
        >>> import jax
        >>> w = jax.random.normal(jax.random.key(0), (64, 16))
        >>> fig = plot_first_layer(w, image_shape=(8, 8))
        >>> fig.axes[0].get_title(loc="left").startswith("first-layer weights")
        True
    """
    report = (
        source
        if isinstance(source, FirstLayerReport)
        else first_layer_tiles(source, image_shape=image_shape)
    )
    fig, ax = _axes(ax, (5.0, 5.0))
    cmap = "gray" if report.grid.ndim == 2 else None
    ax.imshow(report.grid, cmap=cmap, interpolation="nearest", vmin=0.0, vmax=1.0)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(
        title
        or f"first-layer weights: {report.verdict} "
        f"(roughness {report.median_roughness:.2f})",
        loc="left",
        fontsize="medium",
    )
    return fig


def plot_overfit(result: OverfitResult, *, ax: Axes | None = None) -> Figure:
    """The loss (log scale) and accuracy of :func:`jaxcheck.training.overfit_small_subset`.

    Args:
        result: The overfit result.
        ax: Draw into these axes instead of a new figure (accuracy on a twin axis).

    Returns:
        The figure.

    Raises:
        ImportError: If matplotlib is missing (``jaxcheck[plots]``).

    Examples:
        >>> from jaxcheck.training import OverfitResult
        >>> r = OverfitResult(True, 20, 2, 2.3, 0.01, 1.0, (2.3, 0.5, 0.01),
        ...                   (0.1, 0.6, 1.0), 0.023, 1.0, "ok")
        >>> len(plot_overfit(r).axes)
        2
    """
    fig, ax = _axes(ax, (6.0, 3.6))
    steps = np.arange(len(result.losses))
    losses = np.asarray(result.losses, dtype=np.float64)
    ax.plot(steps, losses, color="#1f4e9c", lw=1.6, label="loss")
    ax.axhline(result.max_loss, color=_NEUTRAL, ls="--", lw=1, label="loss bar")
    if np.all(losses[np.isfinite(losses)] > 0):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    handles, labels = ax.get_legend_handles_labels()
    if result.accuracies:
        twin = ax.twinx()
        twin.plot(steps, result.accuracies, color="#d9822b", lw=1.4, label="accuracy")
        twin.set_ylim(0.0, 1.05)
        twin.set_ylabel("training accuracy")
        h2, l2 = twin.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, loc="center right", fontsize="small")
    ax.set_title(
        f"overfit {result.num_examples} examples: "
        + ("PASS" if result.passed else "FAIL"),
        color=_verdict_color(result.passed),
        loc="left",
    )
    ax.grid(True, alpha=0.3)
    return fig


def plot_regularization(
    result: RegularizationResult, *, ax: Axes | None = None
) -> Figure:
    """The loss against the regularization strength (symlog x-axis).

    Args:
        result: From :func:`jaxcheck.training.check_regularization_raises_loss`.
        ax: Draw into these axes instead of a new figure.

    Returns:
        The figure.

    Raises:
        ImportError: If matplotlib is missing (``jaxcheck[plots]``).

    Examples:
        >>> from jaxcheck.training import RegularizationResult
        >>> r = RegularizationResult(True, (0.0, 0.1, 1.0), (2.3, 2.5, 4.0), "ok")
        >>> plot_regularization(r).axes[0].get_xscale()
        'symlog'
    """
    fig, ax = _axes(ax, (5.0, 3.4))
    s = np.asarray(result.strengths)
    positive = s[s > 0]
    ax.plot(s, result.losses, "o-", color="#1f4e9c")
    ax.set_xscale("symlog", linthresh=float(positive.min()) if positive.size else 1.0)
    ax.set_xlabel("regularization strength")
    ax.set_ylabel("loss")
    ax.set_title(
        "regularization raises loss: " + ("PASS" if result.passed else "FAIL"),
        color=_verdict_color(result.passed),
        loc="left",
    )
    ax.grid(True, alpha=0.3)
    return fig


def plot_monitor(monitor: TrainingMonitor, *, log_scale: bool = True) -> Figure:
    """A dashboard of a :class:`~jaxcheck.training.TrainingMonitor`: loss, accuracy
    and update ratios side by side (panels without records are left out).

    Args:
        monitor: The monitor.
        log_scale: Log y-axis for the loss.

    Returns:
        The figure.

    Raises:
        ValueError: If the monitor recorded no loss.
        ImportError: If matplotlib is missing (``jaxcheck[plots]``).

    Examples:
        >>> from jaxcheck.training import TrainingMonitor
        >>> mon = TrainingMonitor(steps_per_epoch=10)
        >>> for k in range(40):
        ...     mon.record_loss(k, 2.3 * 0.9**k)
        >>> len(plot_monitor(mon).axes)
        1
    """
    _, losses = monitor.loss_history
    if losses.size == 0:
        raise ValueError("The monitor has no losses; call record_loss first.")
    panels = ["loss"]
    if monitor.accuracy_diagnosis() is not None:
        panels.append("accuracy")
    if monitor.update_history()[0].size:
        panels.append("updates")
    fig = _new_figure((5.2 * len(panels), 3.8))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels, strict=True):
        if panel == "loss":
            plot_loss(monitor, log_scale=log_scale, ax=ax)
        elif panel == "accuracy":
            plot_accuracy(monitor, ax=ax)
        else:
            plot_update_ratios(monitor, ax=ax)
    return fig


def to_png(fig: Figure, *, dpi: int = 100) -> bytes:
    """The figure as PNG bytes (``IPython.display.Image(data=...)`` shows them).

    Args:
        fig: A matplotlib figure.
        dpi: Resolution.

    Returns:
        PNG file contents.

    Examples:
        >>> to_png(plot_loss([3.0, 2.0, 1.5, 1.2, 1.1, 1.0, 1.0, 1.0]))[:4]
        b'\\x89PNG'
    """
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def save_figure(
    fig: Figure, path: str | pathlib.Path, *, dpi: int = 100
) -> pathlib.Path:
    """Writes the figure as a PNG file, creating the folder if needed.

    Args:
        fig: A matplotlib figure.
        path: Destination; ``.png`` is appended if it has no suffix.
        dpi: Resolution.

    Returns:
        The path written.

    Raises:
        ValueError: If ``path`` has a suffix other than ``.png``.

    Examples:
        >>> import tempfile, pathlib
        >>> p = save_figure(plot_loss([3.0, 2.0, 1.5, 1.2, 1.1, 1.0, 1.0, 1.0]),
        ...                 pathlib.Path(tempfile.mkdtemp()) / "loss")
        >>> p.suffix, p.stat().st_size > 0
        ('.png', True)
    """
    p = pathlib.Path(path)
    if p.suffix == "":
        p = p.with_suffix(".png")
    if p.suffix.lower() != ".png":
        raise ValueError(f"`path` must end in .png, got {str(path)!r}.")
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, format="png", dpi=dpi)
    return p
