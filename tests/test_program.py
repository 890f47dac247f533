"""One compiled program per check, shared by look-alike functions, never stale."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcheck
from jaxcheck import examples
from jaxcheck.engine import cache


class _Compiles:
    """Counts XLA compilations (JAX's own monitoring events)."""

    def __init__(self):
        self.count = 0
        jax.monitoring.register_event_duration_secs_listener(self._listen)

    def _listen(self, name, duration, **kwargs):
        if name == "/jax/core/compile/backend_compile_duration":
            self.count += 1


COMPILES = _Compiles()


def _mlp_problem(width=7, seed=0):
    params = examples.mlp_init((5, width, 3), seed=seed)
    x, y = examples.classification_batch(4, 5, 3, seed=1)
    return params, x, y


def _fresh_loss():
    # A fresh closure, as every pytest parametrisation or re-run notebook cell
    # makes: not the same Python function, the same computation.
    def loss(p, x, y):
        return examples.mlp_loss(p, x, y)

    return loss


def test_a_smooth_check_compiles_one_program_and_a_look_alike_none():
    params, x, y = _mlp_problem(width=9)
    before = COMPILES.count
    first = jaxcheck.check_grads(_fresh_loss(), params, x, y)
    compiled = COMPILES.count - before
    assert first.passed
    assert first.compilation["programs"] == 1 and not first.compilation["reused"]
    assert compiled <= 2  # the program itself (and at most one small helper)
    before = COMPILES.count
    second = jaxcheck.check_grads(_fresh_loss(), params, x, y)
    assert COMPILES.count - before == 0
    assert second.compilation == {**second.compilation, "programs": 0, "reused": 1}
    assert second.f_value == first.f_value
    assert [c.numeric for c in second.leaves[0].worst] == [
        c.numeric for c in first.leaves[0].worst
    ]


def test_new_values_of_the_same_shapes_reuse_the_program():
    params, x, y = _mlp_problem(width=11, seed=0)
    jaxcheck.check_grads(_fresh_loss(), params, x, y)
    other, x2, y2 = _mlp_problem(width=11, seed=5)
    x2 = np.asarray(x2) * 2.0
    before = COMPILES.count
    report = jaxcheck.check_grads(_fresh_loss(), other, x2, y2)
    assert COMPILES.count - before == 0 and report.compilation["reused"] == 1
    with jax.enable_x64(True):
        want = float(_fresh_loss()(jax.tree.map(jnp.float64, other), x2, y2))
    assert report.f_value == pytest.approx(want, rel=1e-12)


def test_a_changed_closed_over_scalar_is_never_stale():
    # The reproducer: caching by Python function identity reused the
    # finite differences of K = 1 while jax.grad saw K = 3 (relative error 0.67).
    params, x, y = _mlp_problem(width=6)
    state = {"K": 1.0}

    def f(p, x, y):
        return state["K"] * examples.mlp_loss(p, x, y)

    one = jaxcheck.check_grads(f, params, x, y)
    state["K"] = 3.0
    three = jaxcheck.check_grads(f, params, x, y)
    assert one.passed and three.passed
    assert three.f_value == pytest.approx(3.0 * one.f_value, rel=1e-12)
    assert three.max_rel_error < 1e-6


def test_a_changed_closed_over_array_is_seen_without_recompiling():
    params, x, y = _mlp_problem(width=8)
    box = {"scale": jnp.ones(3)}

    def f(p, x, y):
        return jnp.sum(box["scale"] * jax.nn.log_softmax(examples.mlp_apply(p, x)))

    first = jaxcheck.check_grads(f, params, x, y)
    box["scale"] = jnp.asarray(np.array([1.0, -2.0, 0.5], np.float32))
    before = COMPILES.count
    second = jaxcheck.check_grads(f, params, x, y)
    assert COMPILES.count - before == 0 and second.compilation["reused"] == 1
    assert first.passed and second.passed
    assert second.f_value != pytest.approx(first.f_value)
    with jax.enable_x64(True):
        want = float(f(jax.tree.map(jnp.float64, params), jnp.float64(x), y))
    assert second.f_value == pytest.approx(want, rel=1e-12)


def test_a_bound_method_whose_object_changed_is_never_stale():
    class Model:
        def __init__(self):
            self.temperature = 1.0

        def loss(self, p, x, y):
            logits = examples.mlp_apply(p, x) / self.temperature
            return examples.softmax_loss(logits, y)

    params, x, y = _mlp_problem(width=5)
    model = Model()
    first = jaxcheck.check_grads(model.loss, params, x, y)
    model.temperature = 0.25
    second = jaxcheck.check_grads(model.loss, params, x, y)
    assert first.passed and second.passed and second.max_rel_error < 1e-6
    assert second.f_value != pytest.approx(first.f_value)


def test_a_custom_rule_changed_behind_the_same_primal_is_seen():
    # The primal jaxpr of a custom_vjp does not show its backward rule: the
    # program is keyed by the jaxpr of value_and_grad too.
    factor = {"v": 2.0}

    @jax.custom_vjp
    def square(w):
        return w**2

    square.defvjp(lambda w: (w**2, w), lambda w, g: (factor["v"] * w * g,))

    def f(w):
        return jnp.sum(square(w))

    w = jnp.linspace(0.5, 1.5, 4)
    assert jaxcheck.check_grads(f, w).passed
    factor["v"] = 2.5  # now the rule is wrong
    assert not jaxcheck.check_grads(f, w).passed


def _conv_sum(w):
    x = jnp.linspace(-1.0, 1.0, 2 * 6 * 6).reshape(1, 2, 6, 6)
    out = jax.lax.conv_general_dilated(x, w.reshape(1, 2, 1, 1), (1, 1), "SAME")
    return jnp.sum(jnp.sin(out) * out)


@pytest.mark.parametrize("kind", ["smooth", "kinked", "convolution"])
def test_f_runs_once_per_check_and_is_compiled_once_for_both_points_of_a_row(kind):
    # The analytic gradient differentiates the traced jaxpr (custom rules
    # included, as under jax.jit), so `f`'s Python runs once; f(x + h) and
    # f(x - h) are one batched evaluation (with a kink, one instrumented
    # evaluation; with a convolution, a loop over the two points), so the
    # program holds one copy of f for its rows next to the value and gradient.
    import re

    calls = []

    def f(w):
        calls.append(1)
        if kind == "convolution":
            return _conv_sum(w)
        out = jnp.sin(w) * w
        return jnp.sum(jnp.maximum(out, 0.5) if kind == "kinked" else out)

    w = jnp.linspace(0.1, 1.0, 2 if kind == "convolution" else 5)
    before = set(cache._PROGRAMS)
    report = jaxcheck.check_grads(f, w)
    assert report.passed and len(calls) == 1
    (program,) = [cache._PROGRAMS[k] for k in cache._PROGRAMS if k not in before]
    assert program.layout.tracked is (kind == "kinked")
    name = "conv_general_dilated" if kind == "convolution" else "sin"

    def count(jaxpr):  # equations, nested jaxprs included
        return len(re.findall(rf"= {name}\b", str(jaxpr)))

    with jax.enable_x64(True):
        w64 = w.astype(jnp.float64)
        rows = jax.make_jaxpr(program._fn)(*program._example_args([], [], [w64]))
        alone = jax.make_jaxpr(jax.value_and_grad(f))(w64)
    assert count(alone) >= 1
    assert count(rows) == count(alone) + 1
    calls.clear()
    planted = jaxcheck.check_grads(f, w, grad_fn=lambda w: jnp.full_like(w, 7.0))
    assert not planted.passed and len(calls) == 1


def test_a_program_on_disk_is_not_reused_under_other_xla_flags(monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    plain = cache.program_key("abc", ("layout",), np.float64)
    assert cache.program_key("abc", ("layout",), np.float64) == plain
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=true")
    assert cache.program_key("abc", ("layout",), np.float64) != plain


def test_the_disk_cache_keeps_its_newest_programs_under_its_bound(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(cache, "MAX_DISK_BYTES", 350)
    monkeypatch.setattr(cache, "_USAGE", {})

    def program(n: int, size: int) -> None:
        path = tmp_path / f"p{n}.jxc"
        path.write_bytes(b"x" * size)
        os.utime(path, (1000 + n, 1000 + n))

    def kept() -> list[str]:
        return sorted(p.stem for p in tmp_path.glob("*.jxc"))

    for n in range(5):
        program(n, 100)
    (tmp_path / "notes.txt").write_bytes(b"y" * 1000)  # not a program
    cache._trim(tmp_path, 100)
    assert kept() == ["p2", "p3", "p4"]
    assert (tmp_path / "notes.txt").exists()
    # Under the bound by this process's count: the directory is not listed.
    program(5, 40)
    cache._trim(tmp_path, 40)
    assert kept() == ["p2", "p3", "p4", "p5"]
    # Over it: listed, and the oldest go.
    program(6, 100)
    cache._trim(tmp_path, 100)
    assert kept() == ["p3", "p4", "p5", "p6"]
    # Another process's programs are found at the next listing.
    monkeypatch.setattr(cache, "SCAN_EVERY", 2)
    program(7, 200)
    cache._trim(tmp_path, 0)
    assert kept() == ["p3", "p4", "p5", "p6", "p7"]
    cache._trim(tmp_path, 0)
    assert kept() == ["p5", "p6", "p7"]


def test_the_cache_is_bounded():
    assert cache.MAX_PROGRAMS >= 8
    assert len(cache._PROGRAMS) <= cache.MAX_PROGRAMS


SCRIPT = textwrap.dedent(
    """
    import json, jax, numpy as np, jaxcheck
    from jaxcheck import examples
    # First in the process: a program that calls LAPACK, loaded from disk
    # before anything else has lowered a LAPACK call.
    a = np.random.default_rng(0).standard_normal((3, 3)) + 3 * np.eye(3)
    s = jaxcheck.check_grads(lambda a: jax.numpy.linalg.solve(a, a[0]).sum(), a)
    params = examples.mlp_init((4, 6, 3), seed=2)
    x, y = examples.classification_batch(4, 4, 3, seed=1)
    r = jaxcheck.check_grads(lambda p, x, y: examples.mlp_loss(p, x, y), params, x, y)
    @jax.custom_jvp
    def host_sin(w):
        return jax.pure_callback(np.sin, jax.ShapeDtypeStruct(w.shape, w.dtype), w,
                                 vmap_method="sequential")
    host_sin.defjvp(lambda p, t: (host_sin(p[0]), jax.numpy.cos(p[0]) * t[0]))
    cb = jaxcheck.check_grads(lambda w: jax.numpy.sum(host_sin(w)),
                              np.linspace(0.1, 1.0, 3))
    print(json.dumps({"mlp": r.compilation, "mlp_passed": r.passed,
                      "callback": cb.compilation, "callback_passed": cb.passed,
                      "solve": s.compilation, "solve_passed": s.passed}))
    """
)


@pytest.mark.slow
def test_programs_are_kept_on_disk_for_the_next_process(tmp_path):
    env = {**os.environ, "JAXCHECK_CACHE_DIR": str(tmp_path)}
    env.pop("JAXCHECK_NO_CACHE", None)

    def run():
        out = subprocess.run(
            [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    first, second = run(), run()
    assert first["mlp_passed"] and second["mlp_passed"]
    assert first["mlp"]["programs"] == 1 and first["mlp"]["loaded"] == 0
    assert second["mlp"]["programs"] == 0 and second["mlp"]["loaded"] == 1
    # A program that calls back into Python refers to this process's
    # callbacks: compiled again in every process, never loaded.
    assert first["callback_passed"] and second["callback_passed"]
    assert second["callback"]["loaded"] == 0
    # Its compilation is timed as compiling, not as evaluating.
    assert first["callback"]["programs"] == 1 and first["callback"]["compiling"] > 0
    # A loaded program that calls LAPACK runs (its kernels are readied first;
    # without that, this process died of a segmentation fault).
    assert first["solve_passed"] and second["solve_passed"]
    assert second["solve"]["loaded"] == 1
    assert len(list(tmp_path.glob("*.jxc"))) == 2
    assert np.all([p.stat().st_size > 0 for p in tmp_path.glob("*.jxc")])


def test_host_callbacks_see_float64_on_any_thread_and_the_setting_is_restored():
    # XLA may run a program with host callbacks on a thread of its own, where
    # the caller's thread-local float64 setting does not hold; the callback
    # must still receive float64 arguments, and afterwards JAX's process-wide
    # default must be what it was.
    seen = []

    def host(w):
        seen.append(np.asarray(w).dtype)
        return np.sin(w)

    @jax.custom_jvp
    def host_sin(w):
        return jax.pure_callback(
            host, jax.ShapeDtypeStruct(w.shape, w.dtype), w, vmap_method="sequential"
        )

    host_sin.defjvp(lambda p, t: (host_sin(p[0]), jnp.cos(p[0]) * t[0]))
    report = jaxcheck.check_grads(
        lambda w: jnp.sum(host_sin(w)), np.linspace(0.1, 1, 3)
    )
    assert report.passed
    assert seen and set(seen) == {np.dtype(np.float64)}
    assert jnp.ones(2).dtype == jnp.float32  # the default was not changed for good
