"""Parameters as every kind of pytree: leaves are found, named and skipped right.

Leaf names are ``jax.tree_util.keystr`` paths. Each container is checked three
ways: with ``jax.grad`` (must pass), with a hand gradient that is 1% off in one
leaf (must fail at exactly that path), and with the expected paths.
"""

from __future__ import annotations

import dataclasses
import re
from typing import NamedTuple

import chex
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcheck import GradientCheckError, assert_grads, check_grads

try:
    import corpus
except ImportError:  # tests/ imported as a package
    from tests import corpus

keystr = jax.tree_util.keystr


def _arrays(seed: int, *shapes: tuple[int, ...]) -> list[jax.Array]:
    rng = np.random.default_rng(seed)
    with jax.enable_x64(True):
        return [jnp.asarray(rng.normal(size=s), jnp.float64) for s in shapes]


def _checked_paths(params) -> list[str]:
    """keystr paths of the floating-point array leaves, in tree order."""
    return [
        keystr(path)
        for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
        if isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jnp.floating)
    ]


def generic_loss(params, x):
    """A smooth loss of every float leaf, coupling the leaves to each other."""
    leaves = [
        leaf
        for leaf in jax.tree.leaves(params)
        if isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jnp.floating)
    ]
    total = sum(jnp.sum(leaf) for leaf in leaves)
    own = sum((k + 1) * jnp.sum(jnp.sin(leaf)) for k, leaf in enumerate(leaves))
    return own + x * total**2


def _corrupt(grads, target: str):
    """``grads`` with the leaf at path ``target`` multiplied by 1.01."""

    def fix(path, g):
        return g * 1.01 if keystr(path) == target else g

    return jax.tree_util.tree_map_with_path(fix, grads)


# ---------------------------------------------------------------------------
# Containers.


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Dense:
    W: jax.Array
    b: jax.Array
    activation: str = dataclasses.field(default="tanh", metadata=dict(static=True))


@chex.dataclass
class ChexDense:
    W: jax.Array
    b: jax.Array


class TupleDense(NamedTuple):
    W: jax.Array
    b: jax.Array


def _containers():
    w1, b1, w2, b2, s = _arrays(0, (3, 4), (4,), (4, 2), (2,), ())
    return {
        "nested_dict": (
            {"layer1": {"W": w1, "b": b1}, "layer2": {"W": w2, "b": b2}, "scale": s},
            [
                "['layer1']['W']",
                "['layer1']['b']",
                "['layer2']['W']",
                "['layer2']['b']",
                "['scale']",
            ],
        ),
        "tuple": ((w1, b1), ["[0]", "[1]"]),
        "nested_tuple": (
            ((w1, b1), (w2, b2)),
            ["[0][0]", "[0][1]", "[1][0]", "[1][1]"],
        ),
        "list": ([w1, b1, w2], ["[0]", "[1]", "[2]"]),
        "list_of_dicts": (
            [{"W": w1, "b": b1}, {"W": w2, "b": b2}],
            ["[0]['W']", "[0]['b']", "[1]['W']", "[1]['b']"],
        ),
        "registered_dataclass": (
            {"enc": Dense(w1, b1), "dec": Dense(w2, b2, activation="id")},
            ["['dec'].W", "['dec'].b", "['enc'].W", "['enc'].b"],
        ),
        "chex_dataclass": (ChexDense(W=w1, b=b1), [".W", ".b"]),
        "namedtuple": ((TupleDense(w1, b1), TupleDense(w2, b2)), None),
        "scalar_leaf": ({"s": s}, ["['s']"]),
    }


CONTAINERS = _containers()
container_names = pytest.mark.parametrize("name", list(CONTAINERS))


@container_names
def test_paths_are_keystr(name):
    params, expected = CONTAINERS[name]
    report = check_grads(generic_loss, params, 0.3)
    paths = [leaf.path for leaf in report.leaves]
    assert paths == _checked_paths(params)
    if expected is not None:
        assert paths == expected
    assert all(isinstance(p, str) for p in paths)
    assert report.skipped == ()
    for leaf, param in zip(report.leaves, jax.tree.leaves(params), strict=True):
        assert leaf.shape == param.shape
        assert leaf.num_checked == param.size
        assert report.leaf(leaf.path) is leaf


def test_namedtuple_paths():
    params, _ = CONTAINERS["namedtuple"]
    report = check_grads(generic_loss, params, 0.3)
    assert [leaf.path for leaf in report.leaves] == ["[0].W", "[0].b", "[1].W", "[1].b"]


@container_names
def test_container_passes_with_jax_grad(name):
    params, _ = CONTAINERS[name]
    report = check_grads(generic_loss, params, 0.3)
    assert report.passed, str(report)
    assert report.max_rel_error < 1e-7


@container_names
def test_container_hand_grad_localises_bad_leaf(name):
    params, _ = CONTAINERS[name]
    paths = _checked_paths(params)
    target = paths[len(paths) // 2]

    def grad_fn(p, x):
        return _corrupt(jax.grad(generic_loss)(p, x), target)

    report = check_grads(generic_loss, params, 0.3, grad_fn=grad_fn)
    assert {leaf.path for leaf in report.failures} == {target}
    with pytest.raises(GradientCheckError, match=re.escape(target)):
        assert_grads(generic_loss, params, 0.3, grad_fn=grad_fn)


def test_registered_dataclass_static_field_is_used_not_checked():
    w1, b1 = _arrays(1, (3, 4), (4,))

    def loss(layer, x):
        z = x @ layer.W + layer.b
        act = jnp.tanh if layer.activation == "tanh" else (lambda v: v)
        return jnp.sum(act(z) ** 2)

    with jax.enable_x64(True):
        x = jnp.linspace(-1.0, 1.0, 6).reshape(2, 3)
    for activation in ("tanh", "id"):
        report = check_grads(loss, Dense(w1, b1, activation=activation), x)
        assert report.passed, str(report)
        assert [leaf.path for leaf in report.leaves] == [".W", ".b"]
        assert report.skipped == ()


# ---------------------------------------------------------------------------
# Leaves that are not checked.


def _mixed_params():
    (w,) = _arrays(2, (3, 2))
    return {
        "w": w,
        "step": jnp.asarray(3, jnp.int32),
        "mask": jnp.asarray([[True, False], [True, True], [False, True]]),
        "name": "encoder",
        "unused": None,
        "count": 7,
    }


def _mixed_loss(params, x):
    w = jnp.where(params["mask"], params["w"], 0.0)
    return jnp.sum(jnp.tanh(x @ w)) * params["step"] + params["count"] * jnp.sum(w**2)


def _mixed_x():
    with jax.enable_x64(True):
        return jnp.linspace(-1.0, 1.0, 12).reshape(4, 3)


MIXED_SKIPPED = ["['count']", "['mask']", "['name']", "['step']", "['unused']"]


def test_int_bool_none_and_string_leaves_are_skipped():
    params = _mixed_params()
    report = check_grads(_mixed_loss, params, _mixed_x())
    assert report.passed, str(report)
    assert [leaf.path for leaf in report.leaves] == ["['w']"]
    assert sorted(s.path for s in report.skipped) == MIXED_SKIPPED
    for skipped in report.skipped:
        assert isinstance(skipped.reason, str) and skipped.reason
    # Masked-out entries have a zero gradient both ways: still checked, and ok.
    assert report.leaf("['w']").num_checked == 6
    text = str(report)
    assert "['name']" in text or "skipped" in text.lower()


@pytest.mark.parametrize("filler", ["none", "junk"])
def test_grad_fn_entries_for_skipped_leaves_are_ignored(filler):
    params = _mixed_params()
    x = _mixed_x()

    def grad_fn(p, x):
        g = jax.grad(lambda w: _mixed_loss({**p, "w": w}, x))(p["w"])
        rest = {k: (None if filler == "none" else "junk") for k in p if k != "w"}
        return {"w": g, **rest}

    report = check_grads(_mixed_loss, params, x, grad_fn=grad_fn)
    assert report.passed, str(report)
    assert sorted(s.path for s in report.skipped) == MIXED_SKIPPED

    def bad_grad_fn(p, x):
        return _corrupt(grad_fn(p, x), "['w']")

    report = check_grads(_mixed_loss, params, x, grad_fn=bad_grad_fn)
    assert {leaf.path for leaf in report.failures} == {"['w']"}


def test_skipped_paths_match_keystr():
    params = {"enc": _mixed_params(), "head": [_arrays(3, (2,))[0], "relu"]}
    report = check_grads(lambda p, x: _mixed_loss(p["enc"], x), params, _mixed_x())
    flat = jax.tree_util.tree_flatten_with_path(params, is_leaf=lambda v: v is None)[0]
    all_paths = {keystr(path) for path, _ in flat}
    checked = {leaf.path for leaf in report.leaves}
    skipped = {s.path for s in report.skipped}
    assert checked == {"['enc']['w']", "['head'][0]"}
    assert skipped == all_paths - checked
    assert "['head'][1]" in skipped


# ---------------------------------------------------------------------------
# A model from a real library: equinox.


def _eqx_model(activation=jnp.tanh):
    return eqx.nn.MLP(
        in_size=3,
        out_size=2,
        width_size=4,
        depth=2,
        activation=activation,
        key=jax.random.key(0),
    )


def _eqx_data():
    rng = np.random.default_rng(5)
    with jax.enable_x64(True):
        return (
            jnp.asarray(rng.normal(size=(6, 3)), jnp.float64),
            jnp.asarray(rng.normal(size=(6, 2)), jnp.float64),
        )


def eqx_loss(model, x, y):
    return jnp.mean((jax.vmap(model)(x) - y) ** 2)


EQX_PATHS = [
    ".layers[0].weight",
    ".layers[0].bias",
    ".layers[1].weight",
    ".layers[1].bias",
    ".layers[2].weight",
    ".layers[2].bias",
]


def test_equinox_model_as_params():
    model = _eqx_model()
    report = check_grads(eqx_loss, model, *_eqx_data())
    assert report.passed, str(report)
    assert report.max_rel_error < 1e-7
    assert [leaf.path for leaf in report.leaves] == EQX_PATHS
    assert [leaf.path for leaf in report.leaves] == _checked_paths(model)
    # The activation functions are leaves of the module: skipped, not crashed on.
    skipped = {s.path: s.reason for s in report.skipped}
    assert set(skipped) == {".activation", ".final_activation"}
    assert all(skipped.values())
    sizes = [leaf.num_checked for leaf in report.leaves]
    assert sizes == [12, 4, 16, 4, 8, 2]


def test_equinox_filtered_params():
    model = _eqx_model()
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def loss(p, static, x, y):
        return eqx_loss(eqx.combine(p, static), x, y)

    report = check_grads(loss, params, static, *_eqx_data())
    assert report.passed, str(report)
    assert [leaf.path for leaf in report.leaves] == EQX_PATHS
    # eqx.partition leaves None where the functions were.
    assert {s.path for s in report.skipped} == {".activation", ".final_activation"}


def test_equinox_wrong_activation_rule_fails_upstream_leaves_only():
    # tanh' written as 1 - tanh in both hidden layers: every leaf before the
    # output layer is wrong, the output layer's are right.
    model = _eqx_model(activation=corpus.tanh_one_minus)
    report = check_grads(eqx_loss, model, *_eqx_data())
    assert {leaf.path for leaf in report.failures} == set(EQX_PATHS[:4])
    assert report.leaf(".layers[2].weight").passed
    assert report.leaf(".layers[2].bias").passed
    with pytest.raises(GradientCheckError, match=re.escape(".layers[0].weight")):
        assert_grads(eqx_loss, model, *_eqx_data())


# ---------------------------------------------------------------------------
# Kinds of leaves.


def _sin_loss(params, x):
    leaves = [
        jnp.asarray(leaf, jnp.float64)
        for leaf in jax.tree.leaves(params)
        if isinstance(leaf, jax.Array | np.ndarray)
    ]
    return sum(jnp.sum(jnp.sin(leaf) * x) for leaf in leaves)


def test_numpy_and_low_precision_leaves_are_checked_in_float64():
    params = {
        "np64": np.linspace(-1.0, 1.0, 4),
        "np32": np.linspace(0.0, 1.0, 3, dtype=np.float32),
        "f16": jnp.linspace(-0.5, 0.5, 5, dtype=jnp.float16),
        "bf16": jnp.linspace(-0.5, 0.5, 2, dtype=jnp.bfloat16),
        "py": 0.5,
    }
    report = check_grads(_sin_loss, params, 0.7)
    assert report.passed, str(report)
    # Differences in float16 could not get near this: the check ran in float64.
    assert report.max_rel_error < 1e-7
    assert [leaf.path for leaf in report.leaves] == [
        "['bf16']",
        "['f16']",
        "['np32']",
        "['np64']",
    ]
    assert [leaf.num_checked for leaf in report.leaves] == [2, 5, 3, 4]
    # A Python float is not an array leaf: skipped, with a reason.
    assert [s.path for s in report.skipped] == ["['py']"]
    assert report.skipped[0].reason


def test_bare_array_and_scalar_params():
    (w,) = _arrays(4, (2, 3))
    report = check_grads(_sin_loss, w, 0.7)
    assert report.passed
    assert [leaf.path for leaf in report.leaves] == [keystr(())] == [""]
    assert report.leaves[0].worst[0].index in {
        (i, j) for i in range(2) for j in range(3)
    }
    with jax.enable_x64(True):
        s = jnp.asarray(0.25)
    report = check_grads(_sin_loss, {"s": s}, 0.7)
    assert report.leaf("['s']").worst[0].index == ()


@pytest.mark.parametrize(
    "params",
    [{}, {"n": jnp.arange(3)}, {"name": "x", "none": None}],
    ids=["empty", "int_only", "str_and_none"],
)
def test_params_without_float_leaves_are_refused(params):
    with pytest.raises(ValueError, match="`params`"):
        check_grads(_sin_loss, params, 0.7)


class GradFnWithAndWithoutJit(chex.TestCase):
    """A user's ``grad_fn`` is judged the same whether it is jitted or not
    (chex runs the test once per variant)."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_a_hand_gradient_is_judged_the_same_jitted_or_not(self):
        (w,) = _arrays(3, (4, 3))

        def loss(p):
            return jnp.sum(jnp.tanh(p["w"]) ** 2)

        good = self.variant(jax.grad(loss))
        report = check_grads(loss, {"w": w}, grad_fn=good)
        assert report.passed and report.leaves[0].num_ok == 12

        def bad(p):
            g = jax.grad(loss)(p)
            return {"w": g["w"].at[1, 2].multiply(1.01)}

        report = check_grads(loss, {"w": w}, grad_fn=self.variant(bad))
        assert not report.passed
        (leaf,) = report.leaves
        assert leaf.num_wrong == 1 and leaf.worst[0].index == (1, 2)
