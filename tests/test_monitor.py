"""Babysitting monitors: loss shape, accuracy gap, update ratios, activations."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcheck.examples import mlp_apply, mlp_init_named, softmax_loss
from jaxcheck.training import (
    TrainingMonitor,
    _capture,
    activation_stats,
    check_update_ratios,
    diagnose_accuracy,
    diagnose_loss_curve,
    first_layer_tiles,
    load_digits,
    update_ratios,
    update_ratios_from_updates,
)


@pytest.fixture(scope="module")
def digits():
    d = load_digits(seed=0)
    return jnp.asarray(d.x_train[:512]), jnp.asarray(d.y_train[:512])


@jax.jit
def data_loss(p, x, y):
    return softmax_loss(mlp_apply(p, x), y)


# --- loss curve -------------------------------------------------------------------

T = np.arange(400, dtype=np.float64)
RNG = np.random.RandomState(0)


@pytest.mark.parametrize(
    "losses, verdict",
    [
        (2.3 * np.exp(-T / 60) + 0.1 + 0.005 * RNG.randn(400), "ok"),
        (2.3 - 0.003 * T + 0.005 * RNG.randn(400), "lr_too_low"),
        (2.3 * np.exp(T / 150), "lr_too_high"),
        (1.6 + 0.7 * np.exp(-T / 5) + 0.01 * RNG.randn(400), "lr_too_high"),
        (2.3 + 0.02 * RNG.randn(400), "flat"),
        (np.abs(1.0 * np.exp(-T / 60) + 0.3 + 0.4 * RNG.randn(400)), "noisy"),
        (2.3 - 2.0 / (1 + np.exp(-(T - 300) / 20)), "slow_start"),
        (np.r_[2.3 * np.exp(-T[:200] / 60), np.full(200, np.nan)], "diverged"),
        ([2.3, 2.2, 2.1], "insufficient_data"),
    ],
    ids=[
        "exp-decay",
        "linear",
        "explodes",
        "early-plateau",
        "flat",
        "noisy",
        "slow-start",
        "nan",
        "short",
    ],
)
def test_loss_curve_shapes(losses, verdict):
    d = diagnose_loss_curve(losses, steps_per_epoch=40, batch_size=32)
    assert d.verdict == verdict, str(d)
    assert d.passed == (verdict in ("ok", "insufficient_data"))
    assert d.reason


def test_loss_curve_x_axis_in_epochs_and_noise_note():
    losses = 2.3 * np.exp(-T / 60) + 0.3 + 0.06 * RNG.randn(400)
    d = diagnose_loss_curve(losses, steps=T * 2, steps_per_epoch=80, batch_size=8)
    assert d.epochs[0] == 0.0 and d.epochs[-1] == pytest.approx(798 / 80)
    assert d.verdict == "ok"
    assert 0.1 < d.metrics["noise"] < 0.5
    assert any("batch_size=8" in n for n in d.notes)
    assert len(d.smoothed) == len(d.losses) == 400
    assert json.loads(json.dumps(d.to_dict()))["verdict"] == "ok"
    assert "note:" in str(d)


def test_loss_curve_errors():
    with pytest.raises(ValueError, match="one-dimensional"):
        diagnose_loss_curve(np.ones((3, 3)))
    with pytest.raises(ValueError, match="`steps`"):
        diagnose_loss_curve(np.ones(10), steps=np.arange(9))
    with pytest.raises(ValueError, match="`steps_per_epoch`"):
        diagnose_loss_curve(np.ones(10), steps_per_epoch=0)


# --- accuracy ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "train, val, verdict",
    [
        ([0.5, 0.9, 1.0], [0.5, 0.7, 0.72], "overfitting"),
        ([0.3, 0.5, 0.6], [0.3, 0.5, 0.58], "underfitting"),
        ([0.5, 0.9, 0.97], [0.5, 0.88, 0.95], "ok"),
        ([0.5, 0.7, 0.8], [0.6, 0.85, 0.95], "val_above_train"),
    ],
)
def test_accuracy_gap(train, val, verdict):
    d = diagnose_accuracy(train, val)
    assert d.verdict == verdict, str(d)
    assert d.gap == pytest.approx(train[-1] - val[-1])


def test_accuracy_peak_and_errors():
    d = diagnose_accuracy(
        [0.5, 0.9, 1.0, 1.0], [0.5, 0.85, 0.8, 0.7], epochs=[0, 1, 2, 3]
    )
    assert d.verdict == "overfitting"
    assert d.best_val == 0.85 and d.best_val_epoch == 1.0
    assert "peaked" in d.reason
    with pytest.raises(ValueError, match="same length"):
        diagnose_accuracy([0.1, 0.2], [0.1])


# --- update ratios ----------------------------------------------------------------


def test_update_ratio_values_and_paths():
    old = {"W": jnp.full((2, 2), 2.0), "b": jnp.zeros(2), "s": jnp.ones(3)}
    new = {"W": jnp.full((2, 2), 2.002), "b": jnp.ones(2), "s": jnp.ones(3)}
    r = update_ratios(old, new)
    assert set(r) == {"['W']", "['b']", "['s']"}
    assert r["['W']"] == pytest.approx(1e-3, rel=1e-3)
    assert math.isnan(r["['b']"])  # zero parameter: undefined
    assert r["['s']"] == 0.0
    u = update_ratios_from_updates(old, jax.tree.map(lambda a, b: b - a, old, new))
    assert u["['W']"] == pytest.approx(r["['W']"], rel=1e-3)
    with pytest.raises(ValueError, match="same pytree structure"):
        update_ratios(old, {"W": old["W"]})


def test_check_update_ratios_verdicts():
    r = check_update_ratios({"['a']": [1e-3, 2e-3], "['b']": 0.0, "['c']": math.nan})
    by = {leaf.path: leaf.verdict for leaf in r.leaves}
    assert by == {"['a']": "ok", "['b']": "frozen", "['c']": "undefined"}
    assert not r.passed and r.verdict == "frozen"
    mixed = check_update_ratios({"['a']": 0.5, "['b']": 1e-6})
    assert mixed.verdict == "mixed"
    assert len(mixed.warnings) == 2
    assert check_update_ratios({"['a']": 0.5}, exclude=["['a']"]).verdict == "undefined"
    with pytest.raises(ValueError, match="empty"):
        check_update_ratios({})


@jax.jit
def _sgd_step(params, x, y, lr):
    loss, grads = jax.value_and_grad(data_loss)(params, x, y)
    return jax.tree.map(lambda p, g: p - lr * g, params, grads), loss


def _sgd_ratios(params, x, y, lr, steps=8):
    """Plain SGD (update = -lr * grad) for a few steps under a TrainingMonitor."""
    mon = TrainingMonitor(steps_per_epoch=8, batch_size=64)
    for k in range(steps):
        sl = slice(64 * k, 64 * (k + 1))
        new, loss = _sgd_step(params, x[sl], y[sl], lr)
        mon.record_loss(k, loss)
        mon.record_update(k, params, new)
        params = new
    return mon.update_report()


def test_update_ratio_flags_lr_100x_too_high_and_too_low(digits):
    x, y = digits
    params = mlp_init_named(jax.random.key(0), [64, 32, 10])
    base_lr = 0.03  # gives ratios of a few 1e-3 on this model
    good = _sgd_ratios(params, x, y, base_lr)
    high = _sgd_ratios(params, x, y, 100 * base_lr)
    low = _sgd_ratios(params, x, y, base_lr / 100)
    weights = ["['layer0']['W']", "['layer1']['W']"]
    assert good.verdict == "ok", str(good)
    assert high.verdict == "lr_too_high", str(high)
    assert low.verdict == "lr_too_low", str(low)
    for path in weights:
        g, h, lo = (r.as_dict()[path] for r in (good, high, low))
        assert 1e-4 < g < 1e-2
        assert h > 1e-2 and lo < 1e-4
    # Biases start at zero: recorded but not judged.
    assert {leaf.verdict for leaf in high.leaves if "['b']" in leaf.path} == {
        "undefined"
    }
    assert any("['layer0']['W']" in w and "too high" in w for w in high.warnings)
    assert any("['layer1']['W']" in w and "too low" in w for w in low.warnings)


# --- activation statistics --------------------------------------------------------


def test_dead_relu_layer_is_flagged(digits):
    x, _ = digits
    params = mlp_init_named(jax.random.key(0), [64, 32, 32, 10])
    healthy = activation_stats(mlp_apply, params, x[:128])
    assert [lay.name for lay in healthy.layers] == ["0:relu", "1:relu"]
    assert healthy.passed, str(healthy)
    assert all(lay.fraction_dead < 0.25 for lay in healthy.layers)

    params["layer1"]["b"] = params["layer1"]["b"] - 50.0
    report = activation_stats(mlp_apply, params, x[:128])
    assert not report.passed
    dead = report.layer("1:relu")
    assert dead.fraction_dead == 1.0 and dead.fraction_zero == 1.0
    assert any("dead" in w for w in dead.warnings)
    assert report.layer("0:relu").warnings == ()
    assert report.warnings[0].startswith("1:relu: 100% of 32 units are dead")


def test_activation_gradients_and_vanishing(digits):
    x, y = digits
    params = mlp_init_named(jax.random.key(0), [64, 32, 32, 10])
    params["layer1"]["b"] = params["layer1"]["b"] - 50.0
    report = activation_stats(data_loss, params, x[:128], y[:128], gradients=True)
    first, second = report.layers
    # A dead layer passes no gradient back: the layer before it sees zero gradient.
    assert first.grad_rms == 0.0
    assert second.grad_rms > 0.0
    assert any("gradients vanish" in w for w in first.warnings)
    assert sum(first.grad_hist_counts) == 128 * 32


@pytest.mark.parametrize(
    "activation, scale, field, message",
    [
        ("tanh", 3.0, "fraction_saturated", "saturated"),
        ("sigmoid", 3.0, "fraction_saturated", "saturated"),
        ("tanh", 1e-3, "fraction_collapsed", "centre"),
    ],
)
def test_tanh_and_sigmoid_saturation(digits, activation, scale, field, message):
    x, _ = digits
    params = mlp_init_named(jax.random.key(0), [64, 32, 32, 10], scale=scale)
    report = activation_stats(
        lambda p, x: mlp_apply(p, x, activation=activation), params, x[:128]
    )
    last = report.layers[-1]
    assert last.kind == activation
    assert getattr(last, field) > 0.25
    assert any(message in w for w in last.warnings), str(report)
    ok = activation_stats(
        lambda p, x: mlp_apply(p, x, activation=activation),
        mlp_init_named(jax.random.key(0), [64, 32, 32, 10], scale="xavier"),
        x[:128],
    )
    assert ok.passed, str(ok)


def test_jaxpr_interpreter_finds_all_relu_spellings_and_nested_calls():
    @jax.jit
    def inner(h):
        return jnp.maximum(0.0, h)  # max with the literal first

    def f(x):
        a = jax.nn.relu(x)  # custom_jvp -> jit -> max(x, 0)
        b = inner(x - 1.0)
        c = jax.checkpoint(jnp.tanh)(a + b)
        return jax.nn.sigmoid(c) + jnp.maximum(x, 0.5)  # max with 0.5: not a ReLU

    x = jnp.linspace(-2.0, 2.0, 12).reshape(3, 4)
    report = activation_stats(f, x)
    assert [lay.kind for lay in report.layers] == ["relu", "relu", "tanh", "sigmoid"]
    np.testing.assert_allclose(
        report.layers[0].max, float(jnp.max(jax.nn.relu(x))), rtol=1e-6
    )
    # The interpreter computes exactly what f computes.
    closed = jax.make_jaxpr(f)(x)
    rec = _capture.Recorder(None)
    out, _ = _capture.eval_jaxpr(closed.jaxpr, closed.consts, [x], rec, True)
    np.testing.assert_allclose(out[0], f(x), rtol=1e-6)


def test_custom_vjp_rules_are_kept_for_gradients():
    @jax.custom_vjp
    def scale_grad(h):
        return h

    scale_grad.defvjp(lambda h: (h, None), lambda _, ct: (5.0 * ct,))

    def loss(x):
        return jnp.sum(scale_grad(jnp.tanh(x)))

    report = activation_stats(loss, jnp.linspace(-1.0, 1.0, 8), gradients=True)
    (tanh,) = report.layers
    # d loss / d tanh(x) is 5 under the custom rule (1 if the rule were bypassed).
    assert tanh.grad_mean == pytest.approx(5.0)


def test_integer_max_is_not_an_activation():
    def f(x, i):
        return jnp.sum(jax.nn.relu(x)) + jnp.maximum(i, 0).sum()

    report = activation_stats(f, jnp.ones(3), jnp.arange(-2, 2), gradients=True)
    assert [lay.kind for lay in report.layers] == ["relu"]


def test_activation_stats_errors_and_empty():
    with pytest.raises(ValueError, match="one scalar float"):
        activation_stats(lambda x: jnp.tanh(x), jnp.ones(3), gradients=True)
    empty = activation_stats(lambda x: x * 2.0, jnp.ones(3))
    assert empty.layers == () and empty.passed
    assert "nothing to record" in empty.reason


def test_activation_report_renderings(digits):
    x, _ = digits
    params = mlp_init_named(jax.random.key(0), [64, 16, 10], bias=-50.0)
    report = activation_stats(mlp_apply, params, x[:32])
    text = str(report)
    assert text.startswith("[WARN] activations")
    assert "dead 100%" in text
    assert "<table>" in report._repr_html_()
    d = json.loads(json.dumps(report.to_dict()))
    assert d["layers"][0]["fraction_dead"] == 1.0
    assert "0:relu 32x16" in str(report.layers[0])


# --- first-layer tiles ------------------------------------------------------------


def test_first_layer_tiles_noise_vs_smooth():
    noise = np.random.default_rng(0).standard_normal((64, 16))
    r = first_layer_tiles(noise, image_shape=(8, 8))
    assert r.tiles.shape == (16, 8, 8)
    assert r.grid.shape == (4 * 9 - 1, 4 * 9 - 1)
    assert r.verdict == "noisy" and 0.75 < r.median_roughness < 1.3
    yy, xx = np.mgrid[0:8, 0:8]
    blobs = np.stack(
        [np.exp(-((yy - c) ** 2 + (xx - 7 + c) ** 2) / 8.0).ravel() for c in range(6)],
        axis=1,
    )
    s = first_layer_tiles(blobs, image_shape=(8, 8))
    assert s.verdict == "smooth" and s.median_roughness < 0.2
    assert s.tiles.min() == 0.0 and s.tiles.max() == 1.0
    t = first_layer_tiles(blobs.T, image_shape=(8, 8), layout="out_in")
    np.testing.assert_allclose(t.tiles, s.tiles)
    conv = first_layer_tiles(np.random.RandomState(0).randn(5, 5, 3, 10))
    assert conv.tiles.shape == (10, 5, 5, 3) and conv.grid.shape[-1] == 3
    assert json.loads(json.dumps(s.to_dict()))["verdict"] == "smooth"


def test_first_layer_tiles_errors():
    w = np.ones((64, 4))
    with pytest.raises(ValueError, match="`image_shape` is required"):
        first_layer_tiles(w)
    with pytest.raises(ValueError, match="65 pixels"):
        first_layer_tiles(w, image_shape=(5, 13))
    with pytest.raises(ValueError, match="`layout`"):
        first_layer_tiles(w, image_shape=(8, 8), layout="io")
    with pytest.raises(ValueError, match="2-D"):
        first_layer_tiles(np.ones(5))


# --- the recorder -----------------------------------------------------------------


def test_training_monitor_records_and_summarises():
    mon = TrainingMonitor(steps_per_epoch=20, batch_size=16)
    for k in range(200):
        mon.record_loss(k, jnp.float32(2.3 * math.exp(-k / 30) + 0.05))
    for e in range(11):
        mon.record_accuracy(20 * e, train=0.1 + 0.085 * e, val=0.1 + 0.08 * e)
    mon.record_accuracy(200, train=0.5)  # val missing: ignored by the diagnosis
    old = {"W": jnp.ones((4, 4)), "b": jnp.zeros(4)}
    new = {"W": 1.002 * jnp.ones((4, 4)), "b": jnp.full(4, 0.1)}
    mon.record_update(0, old, new)
    mon.record_update(1, new, jax.tree.map(lambda a: 1.001 * a, new))
    steps, losses = mon.loss_history
    assert steps.shape == losses.shape == (200,)
    s = mon.summary()
    assert s.loss.verdict == "ok" and s.loss.epochs[-1] == pytest.approx(199 / 20)
    assert s.accuracy.verdict == "ok" and len(s.accuracy.train) == 11
    assert mon.zero_init_leaves == ("['b']",)
    assert s.updates.verdict == "ok"
    assert s.passed
    d = json.loads(json.dumps(s.to_dict()))
    assert d["updates"]["leaves"][0]["path"] == "['W']"
    assert "update/param ratio" in str(s)
    assert "TrainingMonitor(steps_per_epoch=20" in repr(mon)
    with pytest.raises(ValueError, match="`steps_per_epoch`"):
        TrainingMonitor(steps_per_epoch=0)


def _two_layer(act):
    def model(p, x):
        return act(x @ p["W1"] + p["b1"]) @ p["W2"]

    return model


def _two_layer_params(bias: float) -> dict:
    rng = np.random.default_rng(0)
    return {
        "W1": jnp.asarray(rng.standard_normal((64, 16)) / 8.0, jnp.float32),
        "b1": jnp.full(16, bias),
        "W2": jnp.asarray(rng.standard_normal((16, 10)) / 4.0, jnp.float32),
    }


@pytest.mark.parametrize(
    "act, kind",
    [
        (jax.nn.leaky_relu, "leaky_relu"),
        (jax.nn.elu, "elu"),
        (jax.nn.selu, "selu"),
        (jax.nn.celu, "celu"),
        (jax.nn.silu, "silu"),
        (jax.nn.mish, "mish"),
    ],
)
def test_named_rectifiers_are_one_layer_and_their_dead_units_are_flagged(
    digits, act, kind
):
    x, _ = digits
    healthy = activation_stats(_two_layer(act), _two_layer_params(0.0), x[:128])
    # One layer by its name, not the logistic/tanh/max inside it.
    assert [lay.name for lay in healthy.layers] == [f"0:{kind}"]
    assert healthy.passed, str(healthy)
    assert healthy.layers[0].fraction_dead < 0.25

    dead = activation_stats(_two_layer(act), _two_layer_params(-50.0), x[:128])
    (lay,) = dead.layers
    assert not dead.passed
    assert lay.fraction_dead == 1.0 and lay.key_stat == "dead 100%"
    assert lay.warnings[0].startswith("100% of 16 units are dead (negative for every")
    assert kind in lay.warnings[0]


def test_softplus_is_recorded_without_a_dead_or_saturation_verdict(digits):
    x, _ = digits
    report = activation_stats(
        _two_layer(jax.nn.softplus), _two_layer_params(-50.0), x[:128]
    )
    (lay,) = report.layers
    assert lay.name == "0:softplus" and lay.key_stat == "" and report.passed
    assert "0:softplus 128x16" in str(lay) and "softplus" in str(lay)


def test_relu_and_tanh_keep_their_key_stats(digits):
    x, _ = digits
    report = activation_stats(_two_layer(jax.nn.relu), _two_layer_params(-50.0), x[:8])
    assert report.layers[0].key_stat == "dead 100%"
    report = activation_stats(_two_layer(jnp.tanh), _two_layer_params(0.0), x[:8])
    assert report.layers[0].key_stat.startswith("sat ")
    assert "saturated" in str(report.layers[0])


def _rnn(p, xs):
    def cell(h, x):
        h = jnp.tanh(h @ p["Wh"] + x @ p["Wx"])
        return h, jax.nn.relu(h @ p["Wo"] + p["bo"])

    _, ys = jax.lax.scan(cell, jnp.zeros((xs.shape[1], 8)), xs)
    return jnp.mean(ys**2)


def _rnn_params(bias: float) -> dict:
    rng = np.random.default_rng(1)
    return {
        "Wh": jnp.asarray(rng.standard_normal((8, 8)) / 3.0, jnp.float32),
        "Wx": jnp.asarray(rng.standard_normal((4, 8)) / 2.0, jnp.float32),
        "Wo": jnp.asarray(rng.standard_normal((8, 6)) / 3.0, jnp.float32),
        "bo": jnp.full(6, bias),
    }


def test_nonlinearities_inside_a_scan_are_recorded_over_its_steps():
    xs = jnp.asarray(  # 7 steps, batch 5
        np.random.default_rng(2).standard_normal((7, 5, 4)), jnp.float32
    )
    report = activation_stats(_rnn, _rnn_params(0.0), xs, gradients=True)
    assert [lay.name for lay in report.layers] == ["0:tanh", "1:relu"]
    tanh, relu = report.layers
    assert tanh.shape == (7, 5, 8) and relu.shape == (7, 5, 6)
    # The recorded values are the scan's own: recompute the hidden states.
    p, h, hs = _rnn_params(0.0), jnp.zeros((5, 8)), []
    for t in range(7):
        h = jnp.tanh(h @ p["Wh"] + xs[t] @ p["Wx"])
        hs.append(h)
    assert tanh.mean == pytest.approx(float(jnp.stack(hs).mean()), rel=1e-5)
    assert tanh.grad_rms is None  # no gradients inside a scan
    assert report.passed, str(report)

    dead = activation_stats(_rnn, _rnn_params(-50.0), xs)
    assert dead.layer("1:relu").fraction_dead == 1.0
    assert dead.warnings == ("1:relu: " + dead.layer("1:relu").warnings[0],)
