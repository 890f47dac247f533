"""The training part of ``jaxcheck demo``: sanity checks and a babysat run.

:func:`run_demo` runs the sanity checks of :mod:`jaxcheck.training.sanity` and
:mod:`jaxcheck.training.overfit` on scikit-learn's 8x8 digits, trains a small MLP
of :mod:`jaxcheck.examples` under a
:class:`~jaxcheck.training.monitor.TrainingMonitor` and writes the figures of
:mod:`jaxcheck.training.plots`.
"""

from __future__ import annotations

import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcheck.examples import (
    l2_penalty,
    mlp_apply,
    mlp_init_named,
    multiclass_svm_loss,
    softmax_loss,
)
from jaxcheck.training import plots
from jaxcheck.training._optional import require_optax
from jaxcheck.training.activations import ActivationReport, activation_stats
from jaxcheck.training.data import Digits, load_digits
from jaxcheck.training.first_layer import FirstLayerReport, first_layer_tiles
from jaxcheck.training.monitor import TrainingMonitor
from jaxcheck.training.overfit import OverfitResult, overfit_small_subset
from jaxcheck.training.sanity import (
    check_initial_loss,
    check_regularization_raises_loss,
)

__all__ = ["run_demo"]

PyTree = Any


@jax.jit
def _data_loss(p: PyTree, x: jax.Array, y: jax.Array) -> jax.Array:
    return softmax_loss(mlp_apply(p, x), y)


@jax.jit
def _svm_loss(p: PyTree, x: jax.Array, y: jax.Array) -> jax.Array:
    return multiclass_svm_loss(mlp_apply(p, x), y)


@jax.jit
def _total_loss(
    p: PyTree, x: jax.Array, y: jax.Array, *, reg: float = 0.0
) -> jax.Array:
    return _data_loss(p, x, y) + reg * l2_penalty(p)


@jax.jit
def _accuracy(p: PyTree, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean(jnp.argmax(mlp_apply(p, x), -1) == y)


def run_demo(out_dir: str | pathlib.Path, *, seed: int = 0, epochs: int = 6) -> str:
    """Runs the sanity checks and a babysat training run on the 8x8 digits.

    On scikit-learn's bundled digits (no download) it checks the loss at chance
    for a softmax and an SVM classifier with small weights, shows that a model with
    large initial weights is flagged, checks that regularization raises the loss,
    overfits 20 examples, then trains a small ReLU MLP for a few epochs under a
    :class:`~jaxcheck.training.TrainingMonitor` (loss curve, train/validation
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
    require_optax()
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    digits = load_digits(seed=seed)
    k_small, k_large, k_mlp = jax.random.split(jax.random.key(seed), 3)
    sizes = [digits.x_train.shape[1], 64, digits.num_classes]
    he = mlp_init_named(k_mlp, sizes)
    lines = [f"jaxcheck demo: sanity checks and babysitting on {digits}"]
    results = _sanity_checks(digits, sizes, k_small, k_large, he, seed)
    overfit = results[-1]
    lines += ["", "Sanity checks before learning:", *_result_lines(results)]

    batch_size = 64
    mon, params, steps = _babysat_run(digits, he, epochs, batch_size, seed)
    x_train, y_train = jnp.asarray(digits.x_train), jnp.asarray(digits.y_train)
    layer_report = activation_stats(
        _data_loss, params, x_train[:256], y_train[:256], gradients=True
    )
    first = first_layer_tiles(params["layer0"]["W"], image_shape=(8, 8))
    lines.append("")
    lines.append(
        f"Babysat training: {epochs} epochs, batch {batch_size}, Adam 3e-3, "
        f"{steps} steps"
    )
    for part in (mon.summary(), layer_report, first):
        lines.append("  " + str(part).replace("\n", "\n  "))

    paths = _write_figures(out, mon, layer_report, first, overfit)
    lines.append("")
    lines.append(f"Figures written to {out.resolve()}:")
    lines.extend(f"  {p.name}" for p in paths)
    lines.append(f"(demo took {time.perf_counter() - t_start:.1f} s)")
    return "\n".join(lines)


def _sanity_checks(
    digits: Digits,
    sizes: list[int],
    k_small: jax.Array,
    k_large: jax.Array,
    he: PyTree,
    seed: int,
) -> list[Any]:
    """The checks before learning; the overfit result comes last."""
    x_train, y_train = jnp.asarray(digits.x_train), jnp.asarray(digits.y_train)
    c = digits.num_classes
    small = mlp_init_named(k_small, sizes, scale=1e-3)
    large = mlp_init_named(k_large, sizes, scale=1.0)
    predict = jax.jit(mlp_apply)
    return [
        check_initial_loss(
            _data_loss, small, x_train, y_train, kind="softmax", num_classes=c
        ),
        check_initial_loss(
            _svm_loss, small, x_train, y_train, kind="svm", num_classes=c
        ),
        check_initial_loss(
            _data_loss,
            large,
            x_train,
            y_train,
            kind="softmax",
            num_classes=c,
            logits=predict(large, x_train),
        ),
        check_regularization_raises_loss(
            _total_loss, he, x_train, y_train, strengths=(0.0, 1e-3, 1e-2, 1e-1, 1.0)
        ),
        overfit_small_subset(
            _data_loss, he, x_train, y_train, predict_fn=mlp_apply, steps=150, seed=seed
        ),
    ]


def _result_lines(results: list[Any]) -> list[str]:
    """One indented block per result; the initial-loss ones say which model."""
    labels = ["small init, softmax", "small init, SVM", "large init (std 1.0)"]
    lines = []
    for i, r in enumerate(results):
        tag = f" ({labels[i]})" if i < len(labels) else ""
        text = str(r).replace("\n", "\n    ")
        lines.append(f"  {text.split(':', 1)[0]}{tag}:{text.split(':', 1)[1]}")
    return lines


def _babysat_run(
    digits: Digits, params: PyTree, epochs: int, batch_size: int, seed: int
) -> tuple[TrainingMonitor, PyTree, int]:
    """Minibatch Adam on the full training set under a :class:`TrainingMonitor`."""
    optax = require_optax()
    x_train, y_train = jnp.asarray(digits.x_train), jnp.asarray(digits.y_train)
    x_val, y_val = jnp.asarray(digits.x_val), jnp.asarray(digits.y_val)
    steps_per_epoch = digits.num_train // batch_size
    opt = optax.adam(3e-3)
    mon = TrainingMonitor(steps_per_epoch=steps_per_epoch, batch_size=batch_size)
    opt_state = opt.init(params)

    @jax.jit
    def train_step(p, s, xb, yb):
        loss, g = jax.value_and_grad(_data_loss)(p, xb, yb)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    def record_accuracy(step: int, p: PyTree) -> None:
        mon.record_accuracy(
            step,
            train=float(_accuracy(p, x_train, y_train)),
            val=float(_accuracy(p, x_val, y_val)),
        )

    rng = np.random.RandomState(seed)
    step = 0
    record_accuracy(0, params)
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
        record_accuracy(step, params)
    return mon, params, step


def _write_figures(
    out: pathlib.Path,
    mon: TrainingMonitor,
    layer_report: ActivationReport,
    first: FirstLayerReport,
    overfit: OverfitResult,
) -> list[pathlib.Path]:
    """The demo's figures as PNG files in ``out``."""
    figures = {
        "loss_curve.png": plots.plot_loss(mon, log_scale=True),
        "accuracy.png": plots.plot_accuracy(mon),
        "update_ratios.png": plots.plot_update_ratios(mon),
        "activations.png": plots.plot_activation_stats(layer_report),
        "first_layer_weights.png": plots.plot_first_layer(first),
        "overfit_subset.png": plots.plot_overfit(overfit),
    }
    return [plots.save_figure(fig, out / name) for name, fig in figures.items()]
