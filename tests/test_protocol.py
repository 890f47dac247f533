"""Tests of jaxcheck.protocol: burn-in, loss terms, few datapoints, determinism."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcheck import check_grads
from jaxcheck.protocol import (
    BurnInError,
    BurnInResult,
    BurnInWarning,
    DatapointsCut,
    DominatedTermWarning,
    LossTermsReport,
    NondeterminismError,
    assert_deterministic,
    burn_in,
    check_after_burn_in,
    check_determinism,
    check_few_datapoints,
    check_loss_terms,
    is_loss_terms,
    run_burn_in,
    run_protocol,
    take_datapoints,
)

# --------------------------------------------------------------------------- #
# A multiclass SVM whose hand-written gradient treats every margin as violated.
# --------------------------------------------------------------------------- #

NUM_CLASSES = 3


def _svm_data():
    rng = np.random.default_rng(0)
    n, d = 12, 4
    centers = rng.normal(size=(NUM_CLASSES, d)) * 2
    y = np.arange(n) % NUM_CLASSES
    x = centers[y] + 0.5 * rng.normal(size=(n, d))
    w0 = 1e-3 * rng.normal(size=(d, NUM_CLASSES))  # a tiny initialisation
    return jnp.asarray(w0), jnp.asarray(x), jnp.asarray(y)


def svm_loss(w, x, y):
    scores = x @ w
    correct = jnp.take_along_axis(scores, y[:, None], axis=1)
    margins = jnp.maximum(0.0, scores - correct + 1.0)
    margins = margins * (1 - jax.nn.one_hot(y, NUM_CLASSES))
    return jnp.sum(margins) / x.shape[0]


def _svm_grad(w, x, y, violated):
    onehot = jax.nn.one_hot(y, NUM_CLASSES)
    ds = violated * (1 - onehot)
    ds = ds - onehot * jnp.sum(ds, axis=1, keepdims=True)
    return x.T @ ds / x.shape[0]


def svm_grad_correct(w, x, y):
    scores = x @ w
    correct = jnp.take_along_axis(scores, y[:, None], axis=1)
    return _svm_grad(w, x, y, (scores - correct + 1.0 > 0).astype(w.dtype))


def svm_grad_every_margin_violated(w, x, y):
    return _svm_grad(w, x, y, jnp.ones((x.shape[0], NUM_CLASSES), w.dtype))


def test_svm_bug_passes_at_tiny_init_and_fails_after_burn_in():
    w0, x, y = _svm_data()
    at_init = check_grads(svm_loss, w0, x, y, grad_fn=svm_grad_every_margin_violated)
    assert at_init.passed  # every margin IS violated at tiny weights
    after = check_after_burn_in(
        svm_loss, w0, x, y, steps=10, learning_rate=0.01,
        grad_fn=svm_grad_every_margin_violated,
    )  # fmt: skip
    assert not after.passed
    assert after.num_wrong >= 6
    assert after.notes[-1].startswith("burn-in: 10 steps of SGD (learning rate 0.01)")


def test_correct_svm_gradient_passes_after_burn_in():
    w0, x, y = _svm_data()
    report = check_after_burn_in(
        svm_loss, w0, x, y, steps=10, learning_rate=0.01, grad_fn=svm_grad_correct
    )
    assert report.passed
    assert report.num_checked == 12


def test_burn_in_loss_goes_down_and_keeps_structure():
    params = {"w": jnp.zeros(3, jnp.float32), "step": jnp.int32(7), "name": "mlp"}

    def loss(p, target):
        return jnp.sum((p["w"] - target) ** 2)

    result = run_burn_in(loss, params, jnp.ones(3), steps=20, learning_rate=0.1)
    assert isinstance(result, BurnInResult)
    assert result.decreased
    assert len(result.losses) == 21
    assert result.losses[0] == pytest.approx(3.0)
    assert result.final_loss < 0.05
    assert result.params["w"].dtype == jnp.float32
    assert int(result.params["step"]) == 7 and result.params["name"] == "mlp"
    json.dumps(result.to_dict())
    assert "did NOT" not in str(result)
    new = burn_in(loss, params, jnp.ones(3), steps=20, learning_rate=0.1)
    np.testing.assert_allclose(new["w"], result.params["w"])


def test_burn_in_with_optax_optimizer():
    def loss(w):
        return jnp.sum((w - 2.0) ** 2)

    result = run_burn_in(loss, jnp.zeros(4), steps=30, optimizer=optax.adam(0.1))
    assert result.decreased
    assert result.optimizer.startswith("optimizer")
    assert result.final_loss < result.initial_loss / 4


def _diverging(w):
    return jnp.sum(w**2)


def test_burn_in_warns_when_loss_does_not_go_down():
    with pytest.warns(BurnInWarning, match="did not go down"):
        result = run_burn_in(_diverging, jnp.ones(2), steps=5, learning_rate=5.0)
    assert not result.decreased
    assert "Lower the learning rate" in result.message


def test_burn_in_raises_on_request_and_ignores_on_request():
    with pytest.raises(BurnInError, match=r"1 steps? of SGD|5 steps of SGD"):
        burn_in(_diverging, jnp.ones(2), steps=5, learning_rate=5.0, on_failure="raise")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = burn_in(
            _diverging, jnp.ones(2), steps=5, learning_rate=5.0, on_failure="ignore"
        )
    assert float(jnp.abs(out[0])) > 1.0


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"steps": 0}, ValueError, "`steps` must be an int >= 1, got 0"),
        ({"steps": 3, "learning_rate": -1.0}, ValueError, "`learning_rate`"),
        ({"steps": 3, "optimizer": object()}, TypeError, "GradientTransformation"),
        ({"steps": 3, "on_failure": "shout"}, ValueError, "`on_failure`"),
    ],
)
def test_burn_in_rejects_bad_options(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        burn_in(_diverging, jnp.ones(2), **kwargs)


# --------------------------------------------------------------------------- #
# Loss terms.
# --------------------------------------------------------------------------- #

LAM = 3e-5


@jax.custom_vjp
def l2_missing_factor_two(w):
    return jnp.sum(w**2)


l2_missing_factor_two.defvjp(lambda w: (jnp.sum(w**2), w), lambda w, g: (g * w,))


def _regression():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(8, 3)))
    t = jnp.asarray(3 * rng.normal(size=(8, 2)) + 2)
    w = jnp.asarray(0.5 * rng.normal(size=(3, 2)))
    return w, x, t


def data_loss(w, x, t):
    return jnp.mean((x @ w - t) ** 2)


def reg_loss_buggy(w, x, t):
    return LAM * l2_missing_factor_two(w)


def test_reg_missing_factor_two_is_masked_in_the_sum_but_caught_per_term():
    w, x, t = _regression()
    total = check_grads(
        lambda w, x, t: data_loss(w, x, t) + reg_loss_buggy(w, x, t), w, x, t, rtol=1e-4
    )
    assert total.passed  # masked: the reg gradient is ~1e-5 of the data gradient
    with pytest.warns(DominatedTermWarning, match="'reg'.*times smaller"):
        report = check_loss_terms(
            {"data": data_loss, "reg": reg_loss_buggy}, w, x, t, rtol=1e-4
        )
    assert isinstance(report, LossTermsReport)
    assert not report.passed
    assert report.failed_terms == ("reg",)
    assert report.terms["reg"].max_rel_error == pytest.approx(0.5, rel=1e-6)
    assert report.total.passed
    assert report.dominated == ("reg",)
    assert report.ratio("data") == 1.0
    assert 1e-6 < report.ratio("reg") < 1e-4
    text = str(report)
    assert "ratio to largest" in text and "--- term reg ---" in text
    json.dumps(report.to_dict())
    assert "<table>" in report._repr_html_()


def test_terms_given_as_a_function_returning_a_dict():
    w, x, t = _regression()

    def terms(w, x, t):
        return {"data": data_loss(w, x, t), "reg": 0.1 * jnp.sum(w**2)}

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # balanced terms: no dominance warning
        report = check_loss_terms(terms, w, x, t)
    assert report.passed
    assert list(report.terms) == ["data", "reg"]
    assert report.dominated == ()
    assert set(report.leaf_norms["reg"]) == {""}
    assert is_loss_terms(terms, w, x, t)
    assert is_loss_terms({"a": data_loss}, w, x, t)
    assert not is_loss_terms(data_loss, w, x, t)


def test_hand_written_term_gradient_missing_factor_two():
    w, x, t = _regression()

    def reg(w, x, t):
        return 0.05 * jnp.sum(w**2)

    def reg_grad_bug(w, x, t):
        return 0.05 * w

    report = check_loss_terms(
        {"data": data_loss, "reg": reg}, w, x, t, grad_fns={"reg": reg_grad_bug}
    )
    assert report.failed_terms == ("reg",)
    assert not report.total.passed  # not dominated here: the sum sees it too
    assert "reg_grad_bug" in report.total.grad_source


def test_loss_terms_rejects_bad_input():
    w, x, t = _regression()
    with pytest.raises(TypeError, match="grad_fns"):
        check_loss_terms({"data": data_loss}, w, x, t, grad_fn=data_loss)
    with pytest.raises(ValueError, match=r"\['nope'\]"):
        check_loss_terms({"data": data_loss}, w, x, t, grad_fns={"nope": data_loss})
    with pytest.raises(TypeError, match="dict of scalar losses"):
        check_loss_terms(data_loss, w, x, t)
    with pytest.raises(ValueError, match="`dominance`"):
        check_loss_terms({"data": data_loss}, w, x, t, dominance=0.5)


# --------------------------------------------------------------------------- #
# Few datapoints.
# --------------------------------------------------------------------------- #


def test_take_datapoints_cuts_batches_only():
    x = jnp.arange(128 * 5, dtype=jnp.float32).reshape(128, 5)
    y = jnp.arange(128) % 10
    key = jax.random.key(0)
    raw_key = jax.random.PRNGKey(1)
    mats = {"proj": jnp.ones((5, 5))}
    (x2, y2, k2, rk2, m2), cut = take_datapoints((x, y, key, raw_key, mats), k=2)
    assert x2.shape == (2, 5) and y2.shape == (2,)
    np.testing.assert_array_equal(x2, x[:2])
    assert k2 is key and rk2 is raw_key and m2["proj"].shape == (5, 5)
    assert isinstance(cut, DatapointsCut)
    assert cut.batch_size == 128 and cut.k == 2 and cut.indices == (0, 1)
    assert cut.cut == ("args[0]", "args[1]")
    assert "2 of 128 examples" in cut.describe()


def test_take_datapoints_seed_axis_and_argnums():
    x = jnp.arange(40.0).reshape(4, 10)
    (x2,), cut = take_datapoints((x,), k=3, axis=1, seed=0)
    assert x2.shape == (4, 3)
    assert list(cut.indices) == sorted(cut.indices) and len(set(cut.indices)) == 3
    a, b = jnp.ones((6, 2)), jnp.ones((6, 2))
    (a2, b2), cut = take_datapoints((a, b), k=1, argnums=1)
    assert a2.shape == (6, 2) and b2.shape == (1, 2)
    assert cut.cut == ("args[1]",)
    (small,), cut = take_datapoints((jnp.ones((2, 3)),), k=5)
    assert small.shape == (2, 3) and "nothing was cut" in cut.describe()


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        ((jnp.ones(3),), {"k": 0}, "`k` must be an int >= 1"),
        ((jnp.ones(()),), {}, "No batch array"),
        ((jnp.ones((3, 2)), jnp.ones((4, 2))), {"argnums": (0, 1)}, "different sizes"),
        ((jnp.ones((3, 2)),), {"argnums": 5}, "`argnums` entry 5"),
    ],
)
def test_take_datapoints_errors(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        take_datapoints(args, **kwargs)


def test_check_few_datapoints_records_the_cut():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(64, 3)))

    def loss(w, x):
        return jnp.mean(jnp.tanh(x @ w) ** 2)

    report = check_few_datapoints(loss, jnp.ones(3) * 0.1, x, k=2)
    assert report.passed
    assert report.notes[-1].startswith("few datapoints: checked on 2 of 64 examples")


# --------------------------------------------------------------------------- #
# Randomness: dropout with a fixed key, and non-determinism.
# --------------------------------------------------------------------------- #

KEEP = 0.7


def make_dropout(rescale_in_backward: bool):
    @jax.custom_vjp
    def dropout(x, key):
        mask = jax.random.bernoulli(key, KEEP, x.shape)
        return jnp.where(mask, x / KEEP, 0.0)

    def fwd(x, key):
        mask = jax.random.bernoulli(key, KEEP, x.shape)
        return jnp.where(mask, x / KEEP, 0.0), mask

    def bwd(mask, g):
        scale = 1.0 / KEEP if rescale_in_backward else 1.0  # the bug forgets 1/keep
        return jnp.where(mask, g * scale, 0.0), None

    dropout.defvjp(fwd, bwd)
    return dropout


def _dropout_net(dropout):
    def loss(params, x, key):
        h = dropout(jnp.tanh(x @ params["W"]), key)
        return jnp.sum(jnp.sin(h @ params["v"]))

    rng = np.random.default_rng(0)
    params = {
        "W": jnp.asarray(rng.normal(size=(4, 6)) * 0.5),
        "v": jnp.asarray(rng.normal(size=(6,))),
    }
    return loss, params, jnp.asarray(rng.normal(size=(5, 4)))


@pytest.mark.parametrize("rescale, passes", [(True, True), (False, False)])
def test_dropout_backward_checked_with_key_held_fixed(rescale, passes):
    loss, params, x = _dropout_net(make_dropout(rescale))
    key = jax.random.key(3)
    report = check_grads(loss, params, x, key)
    assert report.passed is passes
    if not passes:
        worst = report.leaf("['W']").worst[0]
        # The bug scales the gradient through the mask by KEEP.
        assert worst.analytic / worst.numeric == pytest.approx(KEEP, rel=1e-6)
    if passes:  # the key is an argument: f is a function of its arguments
        det = assert_deterministic(loss, params, x, key, grad=False)
        assert det.keys == ("args[1]",)


def test_dropout_from_numpy_is_reported_as_not_deterministic():
    def loss(w, x):
        mask = np.random.default_rng().random(x.shape) < KEEP  # key not threaded
        return jnp.sum(jnp.where(mask, x / KEEP, 0.0) @ w)

    x = jnp.asarray(np.random.default_rng(0).normal(size=(40, 3)))
    report = check_determinism(loss, jnp.ones(3), x)
    assert not report.deterministic
    assert report.eager[0] != report.eager[1]
    assert report.jitted[0] == report.jitted[1]  # jit froze one draw
    assert "frozen at trace time" in report.causes[0]
    with pytest.raises(NondeterminismError, match="key not threaded") as err:
        assert_deterministic(loss, jnp.ones(3), x)
    assert "dropout" in str(err.value)
    assert err.value.report is not None and not err.value.report.passed
    json.dumps(report.to_dict())
    assert "cause:" in str(report)


def test_backward_that_redraws_its_mask_is_reported():
    @jax.custom_vjp
    def noisy_identity(x):
        return x

    def bwd(_, g):
        mask = np.random.default_rng().random(g.shape) < KEEP
        return (jnp.where(mask, g, 0.0),)

    noisy_identity.defvjp(lambda x: (x, None), bwd)

    def loss(w):
        return jnp.sum(noisy_identity(w) ** 2)

    report = check_determinism(loss, jnp.arange(1.0, 41.0), jit=False)
    assert not report.deterministic
    assert report.jitted == ()
    assert len(report.causes) == 1 and "backward pass" in report.causes[0]


def test_deterministic_function_passes():
    report = check_determinism(
        lambda w, x: jnp.sum(jnp.tanh(x @ w)), jnp.ones(3), jnp.ones((2, 3))
    )
    assert report.deterministic and report.causes == ()
    assert report.keys == ()
    assert report.grad_difference == 0.0
    assert "PASSED" in report.headline()


# --------------------------------------------------------------------------- #
# The protocol notebook runs end to end.
# --------------------------------------------------------------------------- #

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "03_protocol.ipynb"


@pytest.mark.slow
def test_protocol_notebook_executes_without_outputs_stored():
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)
    nbclient.NotebookClient(
        nb, timeout=120, kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    ).execute()  # fmt: skip
    text = "\n".join(
        out.get("text", "") for c in code for out in c.outputs if "text" in out
    )
    assert "after burn-in: jaxcheck: gradient check FAILED" in text
    assert "loss-term check FAILED: data passed, reg FAILED, sum passed" in text
    assert "order 2: jaxcheck: second-order check FAILED" in text
    assert "['W'][123, 45]" in text


# --------------------------------------------------------------------------- #
# run_protocol: what check_grads' protocol keywords dispatch to.
# --------------------------------------------------------------------------- #


def test_run_protocol_burn_in_and_datapoints_are_recorded():
    w0, x, y = _svm_data()
    plain = run_protocol(svm_loss, w0, x, y, grad_fn=svm_grad_every_margin_violated)
    assert plain.passed and plain.notes == ()
    report = run_protocol(
        svm_loss, w0, x, y, grad_fn=svm_grad_every_margin_violated, burn_in=10,
        burn_in_options={"learning_rate": 0.01}, datapoints=6,
    )  # fmt: skip
    assert not report.passed
    assert report.notes[0].startswith("few datapoints: checked on 6 of 12")
    assert report.notes[1].startswith("burn-in: 10 steps of SGD")


def test_run_protocol_routes_terms_modes_and_order_two():
    w, x, t = _regression()

    def terms(w, x, t):
        return {"data": data_loss(w, x, t), "reg": reg_loss_buggy(w, x, t)}

    with pytest.warns(DominatedTermWarning):
        report = run_protocol(terms, w, x, t, rtol=1e-4, grad_fn=None)
    assert isinstance(report, LossTermsReport) and report.failed_terms == ("reg",)
    both = run_protocol(data_loss, w, x, t, order=2, modes=("rev", "fwd"))
    assert both.title == "protocol" and both.passed
    assert set(both.reports) == {"rev", "fwd", "order 2"}
    with pytest.raises(ValueError, match="`order` must be 1"):
        run_protocol(data_loss, w, x, t, order=3)
    with pytest.raises(ValueError, match="order=1"):
        run_protocol(terms, w, x, t, order=2)
    with pytest.raises(TypeError, match="grad_fns"):
        run_protocol(terms, w, x, t, grad_fn=data_loss)
    with pytest.raises(NondeterminismError):
        run_protocol(
            lambda w, x, t: data_loss(w, x, t) * np.random.default_rng().random(),
            w, x, t, check_determinism=True,
        )  # fmt: skip
