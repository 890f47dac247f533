"""Sanity checks before learning, measured on scikit-learn's 8x8 digits."""

import json
import math
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcheck.examples import (
    accuracy,
    l2_penalty,
    mlp_apply,
    mlp_init_named,
    multiclass_svm_loss,
    softmax_loss,
)
from jaxcheck.training import (
    chance_loss,
    check_initial_loss,
    check_regularization_raises_loss,
    load_digits,
    overfit_small_subset,
)

# Tolerance on the initial loss of a model with 1e-3-scale weights: scores are
# O(1e-3), so the loss differs from chance by O(1e-6) relative; 1e-3 leaves room
# for float32 round-off.
SMALL_INIT_RTOL = 1e-3


@pytest.fixture(scope="module")
def digits():
    d = load_digits(seed=0)
    return (
        jnp.asarray(d.x_train[:512]),
        jnp.asarray(d.y_train[:512]),
        d,
    )


@jax.jit
def data_loss(p, x, y):
    return softmax_loss(mlp_apply(p, x), y)


@jax.jit
def svm_loss(p, x, y):
    return multiclass_svm_loss(mlp_apply(p, x), y)


# --- chance_loss ------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind, num_classes, margin, expected",
    [
        ("softmax", 10, 1.0, 2.302585),
        ("cross_entropy", 10, 1.0, 2.302585),
        ("softmax", 2, 1.0, math.log(2)),
        ("svm", 10, 1.0, 9.0),
        ("multiclass_svm", 3, 1.0, 2.0),
        ("svm", 10, 2.0, 18.0),
        ("SVM", 10, 0.5, 4.5),
    ],
)
def test_chance_loss_values(kind, num_classes, margin, expected):
    assert chance_loss(kind, num_classes, margin=margin) == pytest.approx(
        expected, abs=1e-6
    )


def test_chance_loss_is_the_loss_of_zero_scores():
    labels = jnp.arange(40) % 10
    zeros = jnp.zeros((40, 10))
    assert float(softmax_loss(zeros, labels)) == pytest.approx(
        chance_loss("softmax", 10), rel=1e-6
    )
    assert float(multiclass_svm_loss(zeros, labels)) == chance_loss("svm", 10)


@pytest.mark.parametrize(
    "args, kwargs, error, match",
    [
        (("hinge2", 10), {}, ValueError, "`kind`"),
        ((3, 10), {}, TypeError, "`kind`"),
        (("softmax", 1), {}, ValueError, "at least 2"),
        (("softmax", 2.5), {}, TypeError, "`num_classes` must be an int"),
        (("svm", 10), {"margin": 0.0}, ValueError, "`margin`"),
    ],
)
def test_chance_loss_rejects_bad_input(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        chance_loss(*args, **kwargs)


# --- check_initial_loss -----------------------------------------------------------


@pytest.mark.parametrize(
    "kind, loss_fn, expected",
    [("softmax", data_loss, 2.302585), ("svm", svm_loss, 9.0)],
)
def test_small_init_matches_chance_on_digits(digits, kind, loss_fn, expected):
    x, y, _ = digits
    params = mlp_init_named(jax.random.key(0), [64, 32, 10], scale=1e-3)
    r = check_initial_loss(loss_fn, params, x, y, kind=kind, num_classes=10)
    assert r.passed, str(r)
    assert r.expected == pytest.approx(expected, abs=1e-6)
    assert abs(r.measured - expected) / expected < SMALL_INIT_RTOL
    assert r.details["batch_size"] == 512


@pytest.mark.parametrize("kind, loss_fn", [("softmax", data_loss), ("svm", svm_loss)])
def test_large_init_is_flagged(digits, kind, loss_fn):
    x, y, _ = digits
    params = mlp_init_named(jax.random.key(0), [64, 32, 10], scale=1.0)
    logits = mlp_apply(params, x)
    r = check_initial_loss(
        loss_fn, params, x, y, kind=kind, num_classes=10, logits=logits
    )
    assert not r.passed
    assert r.measured > 2 * r.expected
    assert "initial weights are too large" in r.reason
    assert r.details["logit_std"] > 1.0


def test_planted_loss_bugs_are_explained(digits):
    x, y, _ = digits
    p = mlp_init_named(jax.random.key(0), [64, 32, 10], scale=1e-3)

    def summed(p, x, y):
        return data_loss(p, x, y) * x.shape[0]

    def mean_over_classes(p, x, y):
        logp = jax.nn.log_softmax(mlp_apply(p, x))
        return -jnp.mean(jax.nn.one_hot(y, 10) * logp)

    def labels_out_of_range(p, x, y):
        logp = jax.nn.log_softmax(mlp_apply(p, x))
        return -jnp.mean(jnp.sum(jax.nn.one_hot(y + 10, 10) * logp, axis=-1))

    def svm_counts_true_class(p, x, y):
        s = mlp_apply(p, x)
        correct = jnp.take_along_axis(s, y[:, None], axis=1)
        return jnp.mean(jnp.sum(jnp.maximum(0.0, s - correct + 1.0), axis=-1))

    cases = [
        (summed, "softmax", "summed over the batch"),
        (mean_over_classes, "softmax", "averaged over the classes"),
        (labels_out_of_range, "softmax", "labels may be off"),
        (svm_counts_true_class, "svm", "correct class is counted"),
    ]
    for fn, kind, phrase in cases:
        r = check_initial_loss(fn, p, x, y, kind=kind, num_classes=10)
        assert not r.passed, fn.__name__
        assert phrase in r.reason, (fn.__name__, r.reason)


def test_small_scores_but_wrong_loss_blames_the_loss(digits):
    x, y, _ = digits
    p = mlp_init_named(jax.random.key(0), [64, 32, 10], scale=1e-3)
    r = check_initial_loss(
        lambda p, x, y: 1.5 * data_loss(p, x, y),
        p,
        x,
        y,
        num_classes=10,
        logits=mlp_apply(p, x),
    )
    assert not r.passed
    assert "computed wrongly" in r.reason


def test_initial_loss_nonfinite_and_errors(digits):
    x, y, _ = digits
    p = mlp_init_named(jax.random.key(0), [64, 8, 10], scale=1e-3)
    r = check_initial_loss(lambda p, x, y: jnp.log(0.0), p, x, y, num_classes=10)
    assert not r.passed and "not finite" in r.reason
    with pytest.raises(ValueError, match="must return a scalar"):
        check_initial_loss(lambda p, x, y: jnp.ones(3), p, x, y, num_classes=10)
    with pytest.raises(ValueError, match="`num_classes` is required"):
        check_initial_loss(data_loss, p, x, y)
    with pytest.raises(ValueError, match="`rtol`"):
        check_initial_loss(data_loss, p, x, y, num_classes=10, rtol=0.0)
    r = check_initial_loss(data_loss, p, x, y, expected=math.log(10))
    assert r.passed


def test_sanity_result_renderings(digits):
    x, y, _ = digits
    p = mlp_init_named(jax.random.key(0), [64, 8, 10], scale=1e-3)
    r = check_initial_loss(data_loss, p, x, y, num_classes=10)
    text = str(r)
    assert text.startswith("[PASS] initial_loss: measured 2.302")
    d = r.to_dict()
    assert json.loads(json.dumps(d))["expected"] == pytest.approx(math.log(10))
    assert d["passed"] is True
    assert "PASS" in r._repr_html_()
    with pytest.raises(AttributeError):
        r.passed = False  # frozen


# --- regularization ---------------------------------------------------------------


@jax.jit
def total_loss(p, x, y, *, reg=0.0):
    return data_loss(p, x, y) + reg * l2_penalty(p)


def test_regularization_raises_loss(digits):
    x, y, _ = digits
    p = mlp_init_named(jax.random.key(1), [64, 32, 10])
    r = check_regularization_raises_loss(total_loss, p, x, y)
    assert r.passed, str(r)
    assert r.strengths == (0.0, 1e-3, 1e-2, 1e-1, 1.0)
    assert all(b > a for a, b in zip(r.losses, r.losses[1:], strict=False))
    # 0.5 * ||W||^2 of a He-initialised 64-32-10 net is ~ 37: the penalty passes
    # the data loss (~2.3) at strength 0.1.
    assert r.dominates_from == 0.1
    assert "outweighs the data loss" in r.reason
    assert json.loads(json.dumps(r.to_dict()))["passed"] is True


def test_regularization_wrong_sign_and_missing_are_flagged(digits):
    x, y, _ = digits
    p = mlp_init_named(jax.random.key(1), [64, 32, 10])

    def wrong_sign(p, x, y, *, reg=0.0):
        return data_loss(p, x, y) - reg * l2_penalty(p)

    def forgotten(p, x, y, *, reg=0.0):
        return data_loss(p, x, y)

    r = check_regularization_raises_loss(wrong_sign, p, x, y)
    assert not r.passed and "wrong sign" in r.reason
    r = check_regularization_raises_loss(forgotten, p, x, y)
    assert not r.passed and "not added" in r.reason


def test_regularization_custom_keyword_and_errors(digits):
    x, y, _ = digits
    p = mlp_init_named(jax.random.key(1), [64, 8, 10])

    def loss(p, x, y, *, weight_decay=0.0):
        return total_loss(p, x, y, reg=weight_decay)

    r = check_regularization_raises_loss(
        loss, p, x, y, strengths=(0.0, 1.0), reg_arg="weight_decay"
    )
    assert r.passed
    with pytest.raises(TypeError, match="no keyword argument 'reg'"):
        check_regularization_raises_loss(loss, p, x, y)
    with pytest.raises(ValueError, match="at least two"):
        check_regularization_raises_loss(total_loss, p, x, y, strengths=(1.0,))
    with pytest.raises(ValueError, match="strictly increasing"):
        check_regularization_raises_loss(total_loss, p, x, y, strengths=(1.0, 0.1))


# --- overfit a tiny subset --------------------------------------------------------


def test_overfit_twenty_digits(digits):
    x, y, _ = digits
    params = mlp_init_named(jax.random.key(2), [64, 32, 10])
    r = overfit_small_subset(
        data_loss, params, x, y, predict_fn=mlp_apply, num_examples=20, steps=150
    )
    assert r.passed, str(r)
    assert r.num_examples == 20
    assert r.final_accuracy >= 0.99
    assert r.final_loss < 0.01 * r.initial_loss
    assert len(r.losses) == len(r.accuracies) == 151
    assert r.losses[0] == pytest.approx(r.initial_loss)
    d = json.loads(json.dumps(r.to_dict()))
    assert d["name"] == "overfit_small_subset" and len(d["losses"]) == 151


def test_overfit_accepts_one_hot_labels_and_optimizer(digits):
    import optax

    x, y, _ = digits
    params = mlp_init_named(jax.random.key(2), [64, 32, 10])
    r = overfit_small_subset(
        data_loss,
        params,
        x,
        jax.nn.one_hot(y, 10),
        predict_fn=mlp_apply,
        steps=100,
        optimizer=optax.adam(2e-2),
    )
    assert r.passed, str(r)
    assert r.final_accuracy == 1.0


@pytest.mark.parametrize(
    "lr, phrase", [(1e-6, "barely moved"), (1e4, "diverged")], ids=["low", "high"]
)
def test_overfit_failures_are_explained(digits, lr, phrase):
    import optax

    x, y, _ = digits
    params = mlp_init_named(jax.random.key(2), [64, 32, 10])
    r = overfit_small_subset(
        data_loss,
        params,
        x,
        y,
        predict_fn=mlp_apply,
        steps=40,
        optimizer=optax.sgd(lr),
    )
    assert not r.passed
    assert phrase in r.reason


def test_overfit_argument_errors(digits):
    x, y, _ = digits
    p = mlp_init_named(jax.random.key(2), [64, 8, 10])
    with pytest.raises(ValueError, match="same number of examples"):
        overfit_small_subset(data_loss, p, x, y[:10])
    with pytest.raises(ValueError, match="`steps`"):
        overfit_small_subset(data_loss, p, x, y, steps=0)
    with pytest.raises(ValueError, match="`num_examples`"):
        overfit_small_subset(data_loss, p, x, y, num_examples=0)


def test_missing_optax_names_the_extra(monkeypatch, digits):
    x, y, _ = digits
    monkeypatch.setitem(sys.modules, "optax", None)
    with pytest.raises(ImportError, match=r"jaxcheck\[train\]"):
        overfit_small_subset(data_loss, {}, x, y)


def test_missing_sklearn_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r"jaxcheck\[data\]"):
        load_digits()


# --- helpers ----------------------------------------------------------------------


def test_mlp_helpers():
    p = mlp_init_named(jax.random.key(0), [64, 16, 10], bias=-1.0)
    assert jax.tree_util.keystr(jax.tree_util.tree_flatten_with_path(p)[0][0][0]) == (
        "['layer0']['W']"
    )
    assert float(p["layer0"]["b"][0]) == -1.0
    assert float(jnp.std(p["layer0"]["W"])) == pytest.approx(math.sqrt(2 / 64), rel=0.1)
    out = mlp_apply(p, jnp.ones((3, 64)), activation="sigmoid")
    assert out.shape == (3, 10)
    with pytest.raises(ValueError, match="`activation`"):
        mlp_apply(p, jnp.ones((3, 64)), activation="swish")
    with pytest.raises(ValueError, match="`sizes`"):
        mlp_init_named(jax.random.key(0), [64])
    assert float(l2_penalty({"W": 2 * jnp.ones((2, 3)), "b": jnp.ones(3)})) == 12.0
    labels = jnp.array([0, 2, 1])
    logits = jnp.array([[2.0, 0.0, 0.0], [0.0, 0.0, 3.0], [1.0, 0.0, 0.0]])
    assert float(softmax_loss(logits, labels)) == pytest.approx(
        float(softmax_loss(logits, jax.nn.one_hot(labels, 3)))
    )
    assert accuracy(logits, labels) == pytest.approx(2 / 3)


def test_digits_split_is_deterministic():
    a = load_digits(seed=3)
    b = load_digits(seed=3)
    assert a.num_train + a.num_val == 1797
    np.testing.assert_array_equal(a.y_val, b.y_val)
    assert abs(float(a.x_train.mean())) < 1e-6
    assert a.to_dict()["num_classes"] == 10
    with pytest.raises(ValueError, match="`val_fraction`"):
        load_digits(val_fraction=1.0)
