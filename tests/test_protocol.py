"""Tests of jaxcheck.protocol: burn-in, loss terms, few datapoints, determinism,
and the steps composed with check_grads (each returns what the next takes)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcheck import check_forward_mode, check_grads, check_second_order
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
    check_determinism,
    check_loss_terms,
    run_burn_in,
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
    trained = burn_in(
        svm_loss, w0, x, y, steps=10, learning_rate=0.01,
        grad_fn=svm_grad_every_margin_violated,
    )  # fmt: skip
    after = check_grads(svm_loss, trained, x, y, grad_fn=svm_grad_every_margin_violated)
    assert not after.passed
    assert after.num_wrong >= 6


def test_correct_svm_gradient_passes_after_burn_in():
    w0, x, y = _svm_data()
    trained = burn_in(
        svm_loss, w0, x, y, steps=10, learning_rate=0.01, grad_fn=svm_grad_correct
    )
    report = check_grads(svm_loss, trained, x, y, grad_fn=svm_grad_correct)
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
    assert result.summary().startswith("burn-in: 20 steps of SGD (learning rate 0.1)")
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


def test_balanced_terms_pass_without_a_warning():
    w, x, t = _regression()
    terms = {"data": data_loss, "reg": lambda w, x, t: 0.1 * jnp.sum(w**2)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # balanced terms: no dominance warning
        report = check_loss_terms(terms, w, x, t)
    assert report.passed
    assert list(report.terms) == ["data", "reg"]
    assert report.dominated == ()
    assert set(report.leaf_norms["reg"]) == {""}


def test_loss_terms_are_a_dict_and_only_check_loss_terms_takes_one():
    # One way to do it: no function returning a dict, no dict given to check_grads.
    w, x, t = _regression()

    def terms(w, x, t):
        return {"data": data_loss(w, x, t), "reg": 0.1 * jnp.sum(w**2)}

    with pytest.raises(TypeError, match="must be a dict.*lambda p, \\*a, n=n"):
        check_loss_terms(terms, w, x, t)
    with pytest.raises(TypeError, match="`f` must be callable"):
        check_grads({"data": data_loss}, w, x, t)
    fixed = {n: (lambda p, *a, n=n: terms(p, *a)[n]) for n in ("data", "reg")}
    assert check_loss_terms(fixed, w, x, t).passed


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
    with pytest.raises(TypeError, match="must be a dict"):
        check_loss_terms(data_loss, w, x, t)
    with pytest.raises(ValueError, match="empty dict"):
        check_loss_terms({}, w, x, t)
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


def test_check_on_few_datapoints():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(64, 3)))

    def loss(w, x):
        return jnp.mean(jnp.tanh(x @ w) ** 2)

    (x2,), cut = take_datapoints((x,), k=2)
    report = check_grads(loss, jnp.ones(3) * 0.1, x2)
    assert report.passed and report.num_checked == 3
    assert cut.describe().startswith("few datapoints: checked on 2 of 64 examples")


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
def test_protocol_notebook_executes_and_prints_each_step():
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    for cell in code:  # stored outputs are not evidence: execute afresh
        cell.outputs, cell.execution_count = [], None
    nbclient.NotebookClient(
        nb, timeout=120, kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    ).execute()  # fmt: skip
    # One print may come back in several stream outputs (the kernel flushes on
    # a timer, also between the pieces of a print): a cell's pieces are joined
    # as written, cells with newlines.
    text = "\n".join("".join(out.get("text", "") for out in c.outputs) for c in code)
    assert "after burn-in: jaxcheck: gradient check FAILED" in text
    assert "loss-term check FAILED: data passed, reg FAILED, sum passed" in text
    assert "order 2: jaxcheck: second-order check FAILED" in text
    assert "rev: jaxcheck: gradient check FAILED" in text
    assert "fwd: jaxcheck: gradient check FAILED" in text
    assert "custom_vjp cube: `f` cannot be checked in forward mode" in text
    assert "['W'][123, 45]" in text


# --------------------------------------------------------------------------- #
# The whole protocol, composed: each step returns what the next one takes.
# --------------------------------------------------------------------------- #


def test_datapoints_then_burn_in_then_check():
    w0, x, y = _svm_data()
    bug = svm_grad_every_margin_violated
    (x6, y6), cut = take_datapoints((x, y), 6)
    assert cut.describe().startswith("few datapoints: checked on 6 of 12")
    assert check_grads(svm_loss, w0, x6, y6, grad_fn=bug).passed  # at the init
    result = run_burn_in(
        svm_loss, w0, x6, y6, steps=10, learning_rate=0.01, grad_fn=bug
    )  # follows the gradient under test, as training would
    assert result.summary().startswith("burn-in: 10 steps of SGD")
    report = check_grads(svm_loss, result.params, x6, y6, grad_fn=bug)
    assert not report.passed


def test_every_check_of_the_protocol_is_its_own_function():
    w, x, t = _regression()
    terms = {"data": data_loss, "reg": reg_loss_buggy}
    with pytest.warns(DominatedTermWarning):
        report = check_loss_terms(terms, w, x, t, rtol=1e-4)
    assert isinstance(report, LossTermsReport) and report.failed_terms == ("reg",)
    assert check_grads(data_loss, w, x, t).passed
    assert check_forward_mode(data_loss, w, x, t).passed
    assert check_second_order(data_loss, w, x, t).passed
    with pytest.raises(TypeError, match="order"):
        check_grads(data_loss, w, x, t, order=2)
    with pytest.raises(TypeError, match="`f` must be callable"):
        check_second_order(terms, w, x, t)  # terms: check_loss_terms only
    with pytest.raises(TypeError, match="grad_fns"):
        check_loss_terms(terms, w, x, t, grad_fn=data_loss)
    with pytest.raises(NondeterminismError):
        assert_deterministic(
            lambda w, x, t: data_loss(w, x, t) * np.random.default_rng().random(),
            w, x, t,
        )  # fmt: skip
