import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import pytest

from jaxcheck import engine
from jaxcheck.engine import leaf, memory


def _fn(f, shape):
    return engine.LeafFunction(
        f, jtu.tree_structure(0.0), 1, {}, jtu.tree_structure(()), 0, {}, 0, shape
    )


def square_sum(p):
    return jnp.sum(p**2)


@pytest.mark.parametrize("chunk", [1, 3, 4, 100])
def test_central_differences_exact_on_a_quadratic(chunk):
    with jax.enable_x64(True):
        x = jnp.arange(1.0, 8.0)
        fn = _fn(square_sum, (7,))
        idx = np.array([0, 2, 6, 5])
        fp, fm = engine.central_differences(fn, x, idx, 0.5, [x], [], chunk_size=chunk)
    # for a quadratic the centered difference is exact: (fp - fm) / 2h = 2 x_i
    np.testing.assert_array_equal((fp - fm) / 1.0, 2 * np.asarray(x)[idx])


def test_many_chunks_split_over_calls(monkeypatch):
    monkeypatch.setattr(leaf, "CHUNKS_PER_CALL", 2)
    calls = []
    with jax.enable_x64(True):
        x = jnp.linspace(-1.0, 1.0, 11)
        fn = _fn(square_sum, (11,))
        fp, fm = engine.central_differences(
            fn, x, np.arange(11), 0.25, [x], [], chunk_size=2, on_progress=calls.append
        )
    assert calls == [4, 4, 3]  # 6 chunks of 2 -> calls of 2 chunks; last padded
    np.testing.assert_allclose(
        (fp - fm) / 0.5, 2 * np.asarray(x), rtol=1e-12, atol=1e-15
    )


def test_leaf_function_equality_reuses_compilations():
    a = _fn(square_sum, (3,))
    b = _fn(square_sum, (3,))
    c = _fn(lambda p: jnp.sum(p**2), (3,))
    assert a == b and hash(a) == hash(b)
    assert a != c
    with jax.enable_x64(True):
        x = jnp.ones(3)
        engine.central_differences(a, x, np.arange(3), 1e-3, [x], [], chunk_size=3)
        size = leaf._block_jit._cache_size()
        engine.central_differences(b, x, np.arange(3), 1e-3, [x], [], chunk_size=3)
        assert leaf._block_jit._cache_size() == size


def test_bytes_per_coordinate_grows_with_the_batch():
    def f(w, x):
        return jnp.sum(jnp.tanh(x @ w))

    with jax.enable_x64(True):
        w = jnp.ones((8, 4))
        fn = engine.LeafFunction(
            lambda p, x: f(p, x), jtu.tree_structure(0.0), 1, {},
            jtu.tree_structure((0.0,)), 1, {}, 0, (8, 4),
        )  # fmt: skip
        small = engine.bytes_per_coordinate(fn, w.ravel(), [w], [jnp.ones((2, 8))])
        large = engine.bytes_per_coordinate(fn, w.ravel(), [w], [jnp.ones((200, 8))])
    assert small >= 2 * 8 * 32  # at least the two perturbed copies of the leaf
    assert large > 10 * small // 2


def test_choose_chunk_size():
    assert (
        engine.choose_chunk_size(1000, 10_000, 1 << 30, "cpu") == memory.MAX_CHUNK_CPU
    )
    assert engine.choose_chunk_size(1000, 10_000, 1 << 30, "gpu") == 8192
    assert engine.choose_chunk_size(1 << 20, 10_000, 8 << 20, "gpu") == 8
    assert engine.choose_chunk_size(10, 5, 1 << 30, "gpu") == 4  # power of two <= n
    assert engine.choose_chunk_size(1 << 40, 5, 1 << 20, "cpu") == 1


def test_default_budget_is_positive_and_bounded():
    budget = engine.default_memory_budget()
    assert 0 < budget <= 2 << 30


def test_per_coordinate_steps_match_scalar_steps():
    with jax.enable_x64(True):
        x = jnp.linspace(-1.0, 1.0, 9)
        fn = _fn(lambda p: jnp.sum(jnp.sin(p) * p), (9,))
        idx = np.array([0, 3, 3, 8])
        hs = np.array([1e-3, 1e-4, 1e-2, 1e-3])
        fp, fm = engine.central_differences(fn, x, idx, hs, [x], [], chunk_size=2)
        for j, (i, h) in enumerate(zip(idx, hs, strict=True)):
            p1, m1 = engine.central_differences(
                fn, x, np.array([i]), float(h), [x], [], chunk_size=1
            )
            assert (fp[j], fm[j]) == (p1[0], m1[0])


def test_fixed_call_shape_reuses_one_compilation():
    with jax.enable_x64(True):
        x = jnp.linspace(-1.0, 1.0, 40)
        fn = _fn(lambda p: jnp.sum(jnp.cos(p)), (40,))
        engine.central_differences(fn, x, np.arange(40), 1e-4, [x], [], chunk_size=4,
                                   chunks_per_call=3)  # fmt: skip
        size = leaf._block_jit._cache_size()
        for n in (1, 5, 12, 13):
            fp, _ = engine.central_differences(
                fn, x, np.arange(n), 1e-4, [x], [], chunk_size=4, chunks_per_call=3
            )
            assert len(fp) == n
        assert leaf._block_jit._cache_size() == size
    assert engine.call_shapes(40, 4) == (10,)
    assert engine.call_shapes(1000, 8) == (61, 64)


def test_evaluate_with_a_winner_tracker_returns_words_and_changes():
    from jaxcheck import kinks

    with jax.enable_x64(True):
        x = jnp.array([0.0, 2.0, -1.0, 0.5])
        fn = _fn(lambda p: jnp.sum(jnp.abs(p)) + jnp.max(p), (4,))
        tracker = kinks.winner_tracker(fn, x, [x], [])
        assert [s.primitive for s in tracker.sites] == ["abs", "reduce_max"]
        idx = np.array([0, 1, 2, 3])
        deltas = np.array([[1e-3, -1e-3]] * 3 + [[2.0, -2.0]])
        vals, words, changed = engine.evaluate(
            tracker, x, idx, deltas, [x], [], chunk_size=2
        )
    assert vals.shape == (4, 2) and words.shape == (4, 2, 2) and changed.shape == (4, 2)
    # x[0] = 0 crosses abs' kink; x[3] +- 2 changes its sign, and 2.5 becomes the
    # max (x[1] stops being it: two entries of reduce_max's decision change).
    assert changed.tolist() == [[1, 0], [0, 0], [0, 0], [1, 2]]
    assert (words[0, 0] != words[0, 1]).tolist() == [True, False]
    assert vals[1, 0] == pytest.approx(0.0 + 2.001 + 1.0 + 0.5 + 2.001)
