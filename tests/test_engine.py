import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import pytest

from jaxcheck import engine


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
    monkeypatch.setattr(engine, "CHUNKS_PER_CALL", 2)
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
        size = engine._block_jit._cache_size()
        engine.central_differences(b, x, np.arange(3), 1e-3, [x], [], chunk_size=3)
        assert engine._block_jit._cache_size() == size


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
        engine.choose_chunk_size(1000, 10_000, 1 << 30, "cpu") == engine.MAX_CHUNK_CPU
    )
    assert engine.choose_chunk_size(1000, 10_000, 1 << 30, "gpu") == 8192
    assert engine.choose_chunk_size(1 << 20, 10_000, 8 << 20, "gpu") == 8
    assert engine.choose_chunk_size(10, 5, 1 << 30, "gpu") == 4  # power of two <= n
    assert engine.choose_chunk_size(1 << 40, 5, 1 << 20, "cpu") == 1


def test_default_budget_is_positive_and_bounded():
    budget = engine.default_memory_budget()
    assert 0 < budget <= 2 << 30
