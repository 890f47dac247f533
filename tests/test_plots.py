"""Figures render headless to valid PNG files."""

import math
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcheck.examples import mlp_apply, mlp_init_named, softmax_loss
from jaxcheck.training import (
    OverfitResult,
    RegularizationResult,
    TrainingMonitor,
    activation_stats,
    diagnose_accuracy,
    first_layer_tiles,
    plots,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _assert_png(path):
    assert path.exists()
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 1000
    # IHDR: width and height are positive.
    width = int.from_bytes(data[16:20], "big")
    height = int.from_bytes(data[20:24], "big")
    assert width > 100 and height > 100


@pytest.fixture(scope="module")
def monitor():
    mon = TrainingMonitor(steps_per_epoch=10, batch_size=32)
    rng = np.random.RandomState(0)
    w = {"W": jnp.ones((3, 3)), "b": jnp.zeros(3)}
    for k in range(60):
        mon.record_loss(k, 2.3 * math.exp(-k / 15) + 0.1 + 0.02 * rng.randn())
        if k % 10 == 0:
            mon.record_accuracy(k, train=0.1 + 0.015 * k, val=0.1 + 0.012 * k)
        new = jax.tree.map(lambda a: a * 1.002 + 0.001, w)
        mon.record_update(k, w, new)
        w = new
    return mon


@pytest.fixture(scope="module")
def dead_relu_report():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((64, 8)), jnp.float32)
    params = mlp_init_named(jax.random.key(1), [8, 16, 16, 4])
    params["layer1"]["b"] = params["layer1"]["b"] - 50.0

    def loss(p, x):
        return softmax_loss(mlp_apply(p, x), jnp.zeros(64, jnp.int32))

    report = activation_stats(loss, params, x, gradients=True)
    assert report.layer("1:relu").fraction_dead == 1.0
    return report


def test_every_figure_renders_to_png(tmp_path, monitor, dead_relu_report):
    overfit = OverfitResult(
        True,
        20,
        3,
        2.3,
        0.01,
        1.0,
        (2.3, 1.0, 0.1, 0.01),
        (0.1, 0.5, 0.9, 1.0),
        0.023,
        1.0,
        "ok",
    )
    reg = RegularizationResult(True, (0.0, 1e-2, 1.0), (2.3, 2.4, 5.0), "ok")
    figures = {
        "loss": plots.plot_loss(monitor, log_scale=True),
        "loss_seq": plots.plot_loss([3.0, 2.0, 1.5, 1.2, 1.1, 1.0, 1.0, 0.9]),
        "accuracy": plots.plot_accuracy(monitor),
        "ratios": plots.plot_update_ratios(monitor),
        "ratios_map": plots.plot_update_ratios({"['W']": [1e-3, 1e-2, 0.2]}),
        "dead_relu": plots.plot_activation_stats(dead_relu_report),
        "first_layer": plots.plot_first_layer(
            np.random.default_rng(0).standard_normal((64, 16)), image_shape=(8, 8)
        ),
        "first_layer_rgb": plots.plot_first_layer(
            first_layer_tiles(np.random.RandomState(0).randn(5, 5, 3, 6))
        ),
        "overfit": plots.plot_overfit(overfit),
        "regularization": plots.plot_regularization(reg),
        "dashboard": plots.plot_monitor(monitor),
    }
    for name, fig in figures.items():
        path = plots.save_figure(fig, tmp_path / name)
        assert path.name == f"{name}.png"
        _assert_png(path)


def test_figures_carry_the_verdicts(monitor, dead_relu_report):
    fig = plots.plot_activation_stats(dead_relu_report)
    titles = [ax.get_title() for ax in fig.axes]
    assert any("1:relu" in t and "dead 100%" in t for t in titles)
    assert len(fig.axes) == 4  # two layers x (activations, gradients)
    acc = plots.plot_accuracy(diagnose_accuracy([0.2, 0.9, 1.0], [0.2, 0.6, 0.65]))
    assert acc.axes[0].get_title(loc="left") == "accuracy: overfitting"
    loss = plots.plot_loss(monitor, log_scale=True)
    assert loss.axes[0].get_yscale() == "log"
    assert loss.axes[0].get_xlabel() == "epoch"
    assert loss.axes[0].lines[0].get_xdata()[-1] == pytest.approx(5.9)
    assert len(plots.plot_monitor(monitor).axes) == 3


def test_to_png_and_save_errors(tmp_path):
    fig = plots.plot_loss([3.0, 2.0, 1.5, 1.2, 1.1, 1.0, 1.0, 0.9])
    assert plots.to_png(fig).startswith(PNG_SIGNATURE)
    nested = plots.save_figure(fig, tmp_path / "a" / "b" / "loss.png")
    _assert_png(nested)
    with pytest.raises(ValueError, match=r"\.png"):
        plots.save_figure(fig, tmp_path / "loss.jpg")
    with pytest.raises(TypeError, match="`source`"):
        plots.plot_update_ratios([1e-3, 1e-3])
    with pytest.raises(ValueError, match="no accuracy"):
        plots.plot_accuracy(TrainingMonitor(steps_per_epoch=1))


def test_missing_matplotlib_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"jaxcheck\[plots\]"):
        plots.plot_loss([1.0] * 8)
