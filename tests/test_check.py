import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcheck
from jaxcheck import examples


def quad(params, a):
    return jnp.sum(a * params["w"] ** 2) + jnp.sum(jnp.sin(params["b"]))


def quad_params():
    return {"w": jnp.arange(1.0, 7.0).reshape(2, 3), "b": jnp.array([0.3, -0.2])}


def test_correct_gradient_passes_with_tight_error():
    report = jaxcheck.check_grads(quad, quad_params(), jnp.float32(0.5))
    assert report.passed
    assert report.num_checked == 8
    assert report.num_wrong == 0
    assert report.max_rel_error < 1e-9
    w = report.leaf("['w']")
    assert w.shape == (2, 3) and w.num_checked == 6 and w.dtype == "float32"
    assert report.leaf("['b']").band_counts["good"] == 2


def test_gradient_off_by_1e4_fails_on_a_smooth_function():
    def grad_fn(params, a):
        g = jax.grad(quad)(params, a)
        return jax.tree_util.tree_map(lambda x: x * (1 + 1e-4), g)

    report = jaxcheck.check_grads(
        quad, quad_params(), jnp.float32(0.5), grad_fn=grad_fn
    )
    assert not report.passed
    assert {leaf.path for leaf in report.failures} == {"['w']", "['b']"}
    assert report.num_wrong == 8
    assert report.max_rel_error == pytest.approx(1e-4, rel=1e-3)


def test_x64_is_scoped_to_the_call():
    before = jax.config.jax_enable_x64
    jaxcheck.check_grads(quad, quad_params(), 0.5)
    assert jax.config.jax_enable_x64 == before
    assert jnp.ones(2).dtype == (jnp.float64 if before else jnp.float32)


def test_float32_params_are_checked_in_float64():
    params = examples.mlp_init((5, 4, 3), seed=3)  # float32 leaves
    x, y = examples.classification_batch(6, 5, 3)
    report = jaxcheck.check_grads(examples.mlp_loss, params, x, y)
    assert report.passed and report.dtype == "float64"
    # The analytic values are float64 gradients at the float32 point.
    with jax.enable_x64(True):
        p64 = jax.tree_util.tree_map(lambda v: jnp.asarray(v, jnp.float64), params)
        g = jax.grad(examples.mlp_loss)(p64, jnp.asarray(x, jnp.float64), y)
    c = report.leaf("[1]['b']").worst[0]
    # (equal to float64 round-off: the check's program may be compiled with
    # other XLA optimizations than eager `jax.grad`; float32 would differ ~1e-8)
    assert c.analytic == pytest.approx(float(np.asarray(g[1]["b"])[c.index]), rel=1e-14)
    # float32 round-off would give relative errors around 1e-3; float64 gives ~1e-9.
    assert report.leaf("[1]['b']").max_rel_error < 1e-7


def test_user_grad_fn_checked_and_named():
    def my_grad(params, a):
        return {"w": 2 * a * params["w"], "b": jnp.cos(params["b"])}

    report = jaxcheck.check_grads(quad, quad_params(), 0.5, grad_fn=my_grad)
    assert report.passed
    assert report.grad_source.endswith("my_grad")


@pytest.mark.parametrize(
    "bad, match",
    [
        (lambda p, a: {"w": p["w"].T, "b": p["b"]}, r"shape \(3, 2\) for leaf \['w'\]"),
        (lambda p, a: {"w": p["w"]}, r"no gradient for leaf \['b'\]"),
        (lambda p, a: {"w": p["w"], "b": p["b"], "c": p["b"]}, r"\['c'\]"),
    ],
)
def test_grad_fn_structure_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        jaxcheck.check_grads(quad, quad_params(), 0.5, grad_fn=bad)


def test_non_scalar_output():
    with pytest.raises(ValueError, match=r"must return a scalar, got shape \(2, 3\)"):
        jaxcheck.check_grads(lambda p: p["w"] ** 2, quad_params())


def test_integer_output():
    with pytest.raises(TypeError, match="real floating-point scalar"):
        jaxcheck.check_grads(lambda p: jnp.sum(p > 0), jnp.ones(3))


def test_no_checkable_leaf_lists_the_leaves():
    with pytest.raises(
        ValueError, match=r"no floating-point array leaf.*\['n'\]: integer"
    ):
        jaxcheck.check_grads(lambda p: jnp.float32(1.0), {"n": jnp.arange(3), "s": "x"})


def test_nan_at_the_point():
    with pytest.raises(ValueError, match="is nan at the given point"):
        jaxcheck.check_grads(lambda p: jnp.sum(jnp.log(p)), jnp.array([1.0, -1.0]))


def test_nan_at_a_perturbed_point_names_the_coordinate():
    # sqrt is finite at 0 but not at 0 - h.
    x = jnp.array([1.0, 0.0, 2.0])
    with pytest.raises(
        ValueError, match=re.escape("not finite at 1 perturbed point(s)")
    ) as e:
        jaxcheck.check_grads(lambda p: jnp.sum(jnp.sqrt(p)), x)
    assert "[1]" in str(e.value) and "smaller `step`" in str(e.value)


@pytest.mark.parametrize(
    "kwargs, err",
    [
        ({"step": 0.0}, "`step` must be a positive"),
        ({"step": float("nan")}, "`step` must be a positive"),
        ({"coords": 0}, "`coords` must be >= 1"),
        ({"coords": "some"}, '`coords` must be "all"'),
        (
            {"coords": {"['w']": 7}},
            r"asks for 7 coordinates of leaf \['w'\], which has only 6",
        ),
        ({"coords": {"['w']": [6]}}, "flat index out of range"),
        ({"memory_budget": -1}, "`memory_budget`"),
        ({"chunk_size": 0}, "`chunk_size`"),
    ],
)
def test_bad_arguments(kwargs, err):
    with pytest.raises(ValueError, match=err):
        jaxcheck.check_grads(quad, quad_params(), 0.5, **kwargs)


def test_sampling_is_per_leaf_and_reproducible():
    params = {"W": jnp.ones((40, 50)) * 0.01, "b": jnp.ones(3)}

    def f(p):
        return jnp.sum(jnp.tanh(p["W"])) + jnp.sum(p["b"] ** 3)

    r1 = jaxcheck.check_grads(f, params, coords=5, seed=1, max_worst=5)
    r2 = jaxcheck.check_grads(f, params, coords=5, seed=1, max_worst=5)
    r3 = jaxcheck.check_grads(f, params, coords=5, seed=2, max_worst=5)
    # every leaf sampled, the small one whole
    assert [leaf.num_checked for leaf in r1.leaves] == [5, 3]
    idx = lambda r: sorted(c.index for c in r.leaf("['W']").worst)  # noqa: E731
    assert idx(r1) == idx(r2)
    assert idx(r1) != idx(r3)


def test_explicit_coordinates():
    r = jaxcheck.check_grads(
        quad, quad_params(), 0.5, coords={"['w']": [(1, 2), (0, 0)], "['b']": "all"}
    )
    assert r.leaf("['w']").num_checked == 2
    assert sorted(c.index for c in r.leaf("['w']").worst) == [(0, 0), (1, 2)]
    assert r.leaf("['b']").num_checked == 2


def test_skipped_leaves_are_listed_and_never_differentiated():
    params = {
        "w": jnp.array([1.0, 2.0]),
        "steps": jnp.array(3, jnp.int32),
        "mask": jnp.array([True, False]),
        "name": "layer",
        "nothing": None,
        "key": jax.random.key(0),
    }

    def f(p):
        return jnp.sum(jnp.where(p["mask"], p["w"] ** 2, p["w"])) * p["steps"]

    report = jaxcheck.check_grads(f, params)
    assert report.passed
    assert [leaf.path for leaf in report.leaves] == ["['w']"]
    reasons = {s.path: s.reason for s in report.skipped}
    assert set(reasons) == {
        "['steps']",
        "['mask']",
        "['name']",
        "['nothing']",
        "['key']",
    }
    assert "integer" in reasons["['steps']"] and "bool" in reasons["['mask']"]
    assert "PRNG key" in reasons["['key']"]
    assert "skipped ['name']" in str(report)


def test_assert_grads_raises_with_failing_leaf_only():
    @jax.custom_vjp
    def double(x):
        return 2 * x

    double.defvjp(lambda x: (2 * x, None), lambda _, g: (g,))  # forgot the 2

    def f(p):
        return jnp.sum(double(p["bad"]) ** 2) + jnp.sum(p["good"] ** 2)

    params = {"bad": jnp.array([1.0, 2.0]), "good": jnp.array([3.0])}
    with pytest.raises(
        jaxcheck.GradientCheckError, match=r"^jaxcheck: gradient check FAILED"
    ) as e:
        jaxcheck.assert_grads(f, params)
    assert isinstance(e.value, AssertionError)
    msg = str(e.value)
    assert "['bad']" in msg and "['good']" not in msg
    assert e.value.report.leaf("['good']").passed
    # and a correct function returns its report
    assert jaxcheck.assert_grads(lambda p: jnp.sum(p["good"] ** 2), params).passed


def test_prng_key_argument_is_held_fixed():
    def dropout_loss(w, key):
        keep = jax.random.bernoulli(key, 0.5, w.shape)
        return jnp.sum(jnp.where(keep, w / 0.5, 0.0) ** 2)

    report = jaxcheck.check_grads(
        dropout_loss, jnp.linspace(-1, 1, 20), jax.random.key(3)
    )
    assert report.passed and report.max_rel_error < 1e-9


def test_custom_jvp_rule_is_exercised():
    @jax.custom_jvp
    def softplus(x):
        return jnp.log1p(jnp.exp(x))

    @softplus.defjvp
    def _(primals, tangents):
        (x,), (t,) = primals, tangents
        return softplus(x), t * jax.nn.sigmoid(x) * 1.01  # 1% off

    r = jaxcheck.check_grads(lambda w: jnp.sum(softplus(w)), jnp.linspace(-2, 2, 7))
    assert not r.passed and r.num_wrong == 7
    assert r.max_rel_error == pytest.approx(0.01 / 1.01, rel=1e-4)


def test_tiny_gradients_are_untestable_not_wrong():
    # f is O(1) but depends on w only through 1e-12 * w: the centered difference
    # sits far below round-off, so no verdict is possible.
    def f(w):
        return 1.0 + 1e-12 * jnp.sum(w**2)

    r = jaxcheck.check_grads(f, jnp.linspace(1, 2, 5))
    # Nothing could be tested: inconclusive, never passed, and nothing wrong.
    assert not r.passed and r.status == "inconclusive"
    assert r.num_untestable == 5 and r.num_wrong == 0
    assert any("EVERY checked coordinate" in n for n in r.notes)
    assert r.leaves[0].verdict == "UNTESTABLE"
    assert "INCONCLUSIVE" in r.headline() and "nothing could be tested" in r.headline()


def test_chunk_size_does_not_change_numbers():
    params = examples.mlp_init((6, 5, 3), seed=2)
    x, y = examples.classification_batch(4, 6, 3)
    r1 = jaxcheck.check_grads(
        examples.mlp_loss, params, x, y, chunk_size=1, max_worst=30
    )
    r2 = jaxcheck.check_grads(
        examples.mlp_loss, params, x, y, chunk_size=16, max_worst=30
    )
    for a, b in zip(r1.leaves, r2.leaves, strict=True):
        na = {c.index: c.numeric for c in a.worst}
        nb = {c.index: c.numeric for c in b.worst}
        common = set(na) & set(nb)
        assert common
        for k in common:
            # Batching may reorder XLA's sums: equal up to round-off eps*|f|/h ~ 1e-10.
            assert na[k] == pytest.approx(nb[k], rel=0, abs=1e-9)


def test_memory_budget_limits_the_chunk():
    params = examples.mlp_init((32, 16, 4))
    x, y = examples.classification_batch(8, 32, 4)
    small = jaxcheck.check_grads(examples.mlp_loss, params, x, y, memory_budget=1)
    assert small.passed
    assert all(leaf.chunk_size == 1 for leaf in small.leaves)
    big = jaxcheck.check_grads(examples.mlp_loss, params, x, y, memory_budget=1 << 30)
    assert big.leaf("[0]['W']").chunk_size > 1


def test_equal_reports_for_numpy_and_jax_inputs():
    # values exactly representable in float32, so both points are the same
    p_np = {"w": np.arange(1.0, 7.0).reshape(2, 3), "b": np.array([0.25, -0.5])}
    p_jx = jax.tree_util.tree_map(lambda v: jnp.asarray(v, jnp.float32), p_np)
    r_np = jaxcheck.check_grads(quad, p_np, 0.5)
    r_jx = jaxcheck.check_grads(quad, p_jx, 0.5)
    assert r_np.max_rel_error == pytest.approx(r_jx.max_rel_error, rel=1e-6, abs=1e-15)
    assert r_np.passed


# --- the verdict machinery keeps the old behaviour where nothing new applies ----


def test_default_step_and_bar_are_unchanged_for_smooth_functions():
    r = jaxcheck.check_grads(quad, quad_params(), 0.5)
    assert r.step == 1e-5 and r.rtol == 1e-7 and r.method == "central"
    assert r.step_rule == "fixed" and r.kink_sites == () and r.num_kink == 0
    assert all(not leaf.tracked for leaf in r.leaves)
    assert r.bar_reason.startswith("smooth:")


def test_tracked_and_plain_estimates_agree_away_from_kinks():
    params = {"W": jnp.array([[0.3, -0.7], [1.1, 0.4]]), "b": jnp.array([0.5, -0.2])}
    x = jnp.array([[1.0, 2.0], [-0.5, 0.3], [0.2, -1.0]])

    def f(p, x):
        return jnp.sum(jax.nn.relu(x @ p["W"] + p["b"]) ** 2)

    tracked = jaxcheck.check_grads(f, params, x, max_worst=8)
    plain = jaxcheck.check_grads(f, params, x, max_worst=8, track_kinks=False)
    assert tracked.passed and plain.passed and tracked.num_kink == 0
    assert all(leaf.tracked for leaf in tracked.leaves)
    for a, b in zip(tracked.leaves, plain.leaves, strict=True):
        na = {c.index: c.numeric for c in a.worst}
        nb = {c.index: c.numeric for c in b.worst}
        for k in na:
            assert na[k] == pytest.approx(nb[k], rel=0, abs=1e-9)


def test_assert_grads_passes_a_correct_relu_at_its_kinks():
    # relu(w) * w is w**2 on one side and 0 on the other: the winners change at
    # 0 and both one-sided derivatives are 0: kinks, excused with evidence.
    r = jaxcheck.assert_grads(lambda w: jnp.sum(jax.nn.relu(w) * w), jnp.zeros(4))
    leaf = r.leaves[0]
    assert r.num_kink == leaf.num_kink_crossed == 4 and r.num_wrong == 0
    assert all("bracket it: a subgradient" in c.resolution for c in leaf.kinks)


def test_protocol_steps_compose():
    # One way to do each thing: second order and forward mode have their own
    # functions; burn-in returns parameters, take_datapoints returns arguments.
    def f(p, x):
        return jnp.sum(jnp.tanh(x @ p["W"]) ** 2) + 1e-3 * jnp.sum(p["W"] ** 2)

    p, x = {"W": jnp.full((3, 2), 0.3)}, jnp.linspace(-1, 1, 12).reshape(4, 3)
    second = jaxcheck.check_second_order(f, p, x)
    assert type(second).__name__ == "BlockCheckReport" and second.passed
    fwd = jaxcheck.check_forward_mode(f, p, x)
    assert type(fwd).__name__ == "GradCheckReport" and fwd.passed
    with pytest.raises(TypeError, match="unexpected keyword argument 'order'"):
        jaxcheck.check_grads(f, p, x, order=2)
    (x2,), cut = jaxcheck.take_datapoints((x,), 2)
    assert x2.shape == (2, 3) and cut.k == 2 and cut.batch_size == 4
    trained = jaxcheck.burn_in(f, p, x2, steps=3)
    assert float(f(trained, x2)) < float(f(p, x2))
    report = jaxcheck.check_grads(f, trained, x2)
    assert report.passed and report.num_checked == 6


def test_loss_terms_dict_catches_reg_bug():
    @jax.custom_vjp
    def l2(w):
        return jnp.sum(w**2)

    l2.defvjp(lambda w: (jnp.sum(w**2), w), lambda w, g: (g * w,))  # forgot the 2
    terms = {
        "data": lambda p, x: jnp.sum(jnp.tanh(x @ p["W"]) ** 2),
        "reg": lambda p, x: 1e-3 * l2(p["W"]),
    }
    p, x = {"W": jnp.full((3, 2), 0.3)}, jnp.linspace(-1, 1, 12).reshape(4, 3)
    with pytest.warns(jaxcheck.protocol.DominatedTermWarning, match="'reg'"):
        # rtol=1e-3, as for a deep or kinked net: the sum's error (~2e-4) hides the bug
        report = jaxcheck.check_loss_terms(terms, p, x, rtol=1e-3)
    assert type(report).__name__ == "LossTermsReport" and not report.passed
    assert not report.terms["reg"].passed and report.terms["data"].passed
    assert report.total.passed  # the sum alone would have hidden the bug
    assert report.dominated == ("reg",)


def test_propagation_used_and_same_verdicts_as_dense(monkeypatch):
    # A first check of a small model compiles the plain path only (propagation
    # does not pay for its compilation below MIN_DENSE_WORK): force it here.
    monkeypatch.setattr(jaxcheck.propagate, "MIN_DENSE_WORK", 0)
    params = examples.mlp_init((200, 32, 10), seed=4)
    x, y = examples.classification_batch(16, 200, 10)
    fast = jaxcheck.check_grads(examples.mlp_loss, params, x, y, max_worst=50)
    dense = jaxcheck.check_grads(
        examples.mlp_loss, params, x, y, propagate=False, max_worst=50
    )
    assert fast.leaf("[0]['W']").propagated
    assert fast.leaf("[0]['W']").propagation.startswith("propagated")
    assert not dense.leaf("[0]['W']").propagated
    assert "propagated through linear consumers for: [0]['W']" in str(fast)
    for a, b in zip(fast.leaves, dense.leaves, strict=True):
        # Propagation sums in another order: a coordinate whose gradient is at
        # the round-off level of f may be ok in one and untestable in the other
        # (benchmarks/README.md: 6 of 79,510 on the 784-100-10 MLP), never wrong.
        assert (a.num_wrong, a.num_inconclusive) == (b.num_wrong, b.num_inconclusive)
        assert a.num_ok + a.num_untestable == b.num_ok + b.num_untestable
        assert abs(a.num_ok - b.num_ok) <= max(1, a.num_checked // 1000)
        nb = {c.index: c.numeric for c in b.worst}
        for c in a.worst:
            if c.index in nb:  # equal up to round-off eps*|f|/h
                assert c.numeric == pytest.approx(nb[c.index], rel=0, abs=1e-9)


def test_follow_ups_of_a_propagated_leaf_go_through_its_block_and_agree(monkeypatch):
    # A bug of 1e-5 relative sits outside the 1e-7 bar: every coordinate of W
    # needs a follow-up ladder; in the propagated check those rows are windows.
    monkeypatch.setattr(jaxcheck.propagate, "MIN_DENSE_WORK", 0)
    params = examples.mlp_init((60, 16, 10), seed=5)
    x, y = examples.classification_batch(8, 60, 10)

    def bad(p, x, y):
        g = jax.grad(examples.mlp_loss)(p, x, y)
        g[0]["W"] = g[0]["W"] * (1 + 1e-5)
        return g

    # Every coordinate followed up (not a sample of them): all go through.
    fast = jaxcheck.check_grads(
        examples.mlp_loss, params, x, y, grad_fn=bad, max_follow_ups=None
    )
    dense = jaxcheck.check_grads(
        examples.mlp_loss, params, x, y, grad_fn=bad, propagate=False,
        max_follow_ups=None,
    )  # fmt: skip
    leaf = fast.leaf("[0]['W']")
    assert leaf.propagated and not dense.leaf("[0]['W']").propagated
    assert [r.path for r in fast.failures] == [r.path for r in dense.failures]
    assert [r.path for r in fast.failures] == ["[0]['W']"]
    assert abs(leaf.num_wrong - dense.leaf("[0]['W']").num_wrong) <= 2
    assert leaf.num_wrong >= 0.9 * leaf.num_checked
    assert all("stable across steps" in c.resolution for c in leaf.worst)


def test_a_small_check_with_a_while_loop_is_not_planned_and_compiles_quickly():
    # A while loop's trip count is unknown before it runs: it is guessed at
    # memory.LOOP_TRIPS_GUESS trips, so a small leaf skips the propagation
    # planner (a whole trace) and the program gets the quick CPU options.
    from jaxcheck.engine import cache, memory

    def f(w):
        def step(c):
            return c[0] + 1, jnp.tanh(c[1] @ w)

        return jax.lax.while_loop(lambda c: c[0] < 3, step, (0, jnp.ones(3)))[1].sum()

    def bad_grad(w):  # planted: the gradient of the first step only
        return jax.grad(lambda w: jnp.tanh(jnp.ones(3) @ w).sum())(w)

    w = np.linspace(-0.5, 0.5, 9).reshape(3, 3)
    # Reverse mode cannot go through a while loop; forward mode can.
    report = jaxcheck.check_grads(f, w, grad_fn=jax.jacfwd(f), seed=0)
    assert report.passed
    text = report.leaves[0].propagation
    assert text.startswith("not propagated: too small: 9 coordinates x about ")
    assert f"({memory.LOOP_TRIPS_GUESS} trips a loop)" in text
    layout = list(cache._PROGRAMS)[-1][1]  # the program last used
    assert dict(layout.options)["xla_backend_optimization_level"] == 0
    assert not jaxcheck.check_grads(f, w, grad_fn=bad_grad, seed=0).passed
