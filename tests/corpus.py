"""A corpus of planted gradient bugs, and of correct gradients, for jaxcheck.

Every entry is a :class:`Case`: a scalar function ``f(params, *args)``, its
parameters and fixed arguments, and either ``grad_fn=None`` (the analytic gradient
is ``jax.grad(f)``, which runs a ``jax.custom_vjp`` / ``jax.custom_jvp`` rule
planted inside ``f``) or a hand-written backward pass ``grad_fn(params, *args)``.

Each planted bug exists twice, once as a custom rule inside ``f`` (``-custom_vjp``)
and once as a hand-written gradient (``-hand``), and each of those has a correct
twin (same function, same parameters, the rule or backward pass fixed: name ends
in ``-fixed``). A buggy case corrupts exactly one leaf, ``bad_leaf`` (a
``jax.tree_util.keystr`` path); every other leaf of the same case is correct, so a
checker must localise the bug, not just notice it.

The bugs:

- ``wrong_sign``: the derivative has the wrong sign.
- ``missing_factor``: forgets the 2 of ``d(x**2)`` or the ``1/N`` of a mean.
- ``transposed_matmul``: ``dW`` is the transpose of the right matrix (``W`` is
  square so the shapes still agree).
- ``missing_bias_grad``: the gradient of a 3-entry bias is zeros, next to weight
  leaves of thousands of entries (checked with sampled coordinates).
- ``single_wrong_entry``: one entry of a 2000-entry leaf is 1% off
  (``bad_index`` says which; checked with ``coords="all"``).
- ``wrong_tanh_derivative`` / ``wrong_sigmoid_derivative`` /
  ``wrong_relu_derivative``: ``1 - tanh`` for ``1 - tanh**2``, ``s`` for
  ``s * (1 - s)``, ``relu(x)`` for ``1[x > 0]``.
- ``subtle_factor``: a smooth gradient off by a factor ``1 + 1e-4``.

and some extra cases: a wrong ``jax.custom_jvp`` rule, a ``stop_gradient`` that
detaches a normaliser, plus plain correct functions (softplus, logsumexp, a tanh
MLP) and a correct ``jax.custom_jvp``.

Parameters are float64 (built under ``jax.enable_x64``); every function is written
in ``jax.numpy`` and keeps the dtype of its inputs, so the cases also run in
float32. Everything is small: a full check of any case takes well under a second
on a laptop CPU.

Use::

    from corpus import CASES, BUGGY, CORRECT, case_by_name
    report = jaxcheck.check_grads(case.f, case.params, *case.args, **case.kwargs)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcheck.engine.memory import compile_options
from jaxcheck.examples import mlp_loss, softmax_loss

# The ground truth's own programs (not jaxcheck's) are compiled with the XLA
# options jaxcheck gives a check this small on a CPU: they run once.
QUICK = dict(compile_options(jax.default_backend(), 0.0)) or None

PyTree = Any

# Where `single_wrong_entry` plants its 1% error.
VJP_BAD_INDEX = (17, 23)
HAND_BAD_INDEX = (0, 49)

# Relative size of the `subtle_factor` bug.
SUBTLE = 1e-4


@dataclasses.dataclass(frozen=True, eq=False)
class Case:
    """One function with a correct or planted-bug gradient.

    Attributes:
      name: unique id, ``<bug>-<custom_vjp|hand|...>[-fixed]``.
      f: the scalar function ``f(params, *args)``.
      params: the pytree checked.
      args: extra arguments held fixed (batches, labels, constants).
      grad_fn: hand-written ``grad_fn(params, *args)``, or None for ``jax.grad(f)``.
      buggy: whether the analytic gradient is wrong.
      bad_leaf: keystr path of the one wrong leaf, None for correct cases.
      note: what is planted, in words.
      reference: the same function as ``f`` without custom rules;
        ``jax.grad(reference)`` is the true gradient (None: ``f`` has no custom
        rule, so ``jax.grad(f)`` is the truth).
      coords: ``"all"`` or the number of coordinates to sample per leaf.
      bad_index: for a bug in a single entry, its multi-index in ``bad_leaf``.
    """

    name: str
    f: Callable[..., jax.Array]
    params: PyTree
    args: tuple[Any, ...]
    grad_fn: Callable[..., PyTree] | None
    buggy: bool
    bad_leaf: str | None
    note: str
    reference: Callable[..., jax.Array] | None = None
    coords: str | int = "all"
    bad_index: tuple[int, ...] | None = None

    @property
    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``check_grads`` / ``assert_grads``."""
        return {"grad_fn": self.grad_fn, "coords": self.coords}

    def analytic_grad(self) -> PyTree:
        """The gradient under test (the hand-written one, or ``jax.grad(f)``),
        computed once (call it inside ``jax.enable_x64(True)``)."""
        if "_analytic" not in self.__dict__:  # frozen: no attribute assignment
            fn = jax.grad(self.f) if self.grad_fn is None else self.grad_fn
            grads = jax.jit(fn, compiler_options=QUICK)(self.params, *self.args)
            self.__dict__["_analytic"] = grads
        return self.__dict__["_analytic"]

    def true_grad(self) -> PyTree:
        """The correct gradient: ``jax.grad`` of the rule-free reference."""
        ref = self.f if self.reference is None else self.reference
        return jax.jit(jax.grad(ref), compiler_options=QUICK)(self.params, *self.args)


# ---------------------------------------------------------------------------
# Custom rules, correct and planted.


def unary_vjp(
    fun: Callable[[jax.Array], jax.Array],
    deriv: Callable[[jax.Array, jax.Array], jax.Array],
) -> Callable[[jax.Array], jax.Array]:
    """``fun`` with a ``jax.custom_vjp`` whose backward is ``g * deriv(x, fun(x))``."""

    @jax.custom_vjp
    def op(x):
        return fun(x)

    def fwd(x):
        y = fun(x)
        return y, (x, y)

    def bwd(res, g):
        x, y = res
        return (g * deriv(x, y),)

    op.defvjp(fwd, bwd)
    return op


def unary_jvp(
    fun: Callable[[jax.Array], jax.Array],
    deriv: Callable[[jax.Array, jax.Array], jax.Array],
) -> Callable[[jax.Array], jax.Array]:
    """``fun`` with a ``jax.custom_jvp`` whose tangent is ``deriv(x, fun(x)) * t``."""

    @jax.custom_jvp
    def op(x):
        return fun(x)

    @op.defjvp
    def op_jvp(primals, tangents):
        (x,), (t,) = primals, tangents
        y = fun(x)
        return y, deriv(x, y) * t

    return op


def _relu(x):
    return jnp.maximum(x, 0.0)


def _step(x, y):
    del y
    return (x > 0).astype(x.dtype)


exp_ok = unary_vjp(jnp.exp, lambda x, y: y)
exp_wrong_sign = unary_vjp(jnp.exp, lambda x, y: -y)
square_ok = unary_vjp(jnp.square, lambda x, y: 2 * x)
square_missing_2 = unary_vjp(jnp.square, lambda x, y: x)
tanh_ok = unary_vjp(jnp.tanh, lambda x, y: 1 - y * y)
tanh_one_minus = unary_vjp(jnp.tanh, lambda x, y: 1 - y)
sigmoid_ok = unary_vjp(jax.nn.sigmoid, lambda x, y: y * (1 - y))
sigmoid_s = unary_vjp(jax.nn.sigmoid, lambda x, y: y)
relu_ok = unary_vjp(_relu, _step)
relu_x = unary_vjp(_relu, lambda x, y: y)
softplus_ok = unary_vjp(jax.nn.softplus, lambda x, y: jax.nn.sigmoid(x))
softplus_subtle = unary_vjp(
    jax.nn.softplus, lambda x, y: jax.nn.sigmoid(x) * (1 + SUBTLE)
)
tanh_entry_ok = tanh_ok
tanh_entry_bad = unary_vjp(
    jnp.tanh, lambda x, y: (1 - y * y).at[VJP_BAD_INDEX].multiply(1.01)
)
softplus_jvp_ok = unary_jvp(jax.nn.softplus, lambda x, y: jax.nn.sigmoid(x))
# 1 - sigmoid(x) = sigmoid(-x): a sign slip inside the tangent rule.
softplus_jvp_bad = unary_jvp(jax.nn.softplus, lambda x, y: jax.nn.sigmoid(-x))


def matmul_vjp(transposed_dw: bool) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """``x @ W`` with a custom_vjp; ``transposed_dw`` plants ``dW = g.T @ x``."""

    @jax.custom_vjp
    def matmul(x, w):
        return x @ w

    def fwd(x, w):
        return x @ w, (x, w)

    def bwd(res, g):
        x, w = res
        dw = g.T @ x if transposed_dw else x.T @ g
        return g @ w.T, dw

    matmul.defvjp(fwd, bwd)
    return matmul


def add_bias_vjp(drop_db: bool) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """``z + b`` (b broadcast over the batch) with a custom_vjp; ``drop_db``
    plants a zero bias gradient."""

    @jax.custom_vjp
    def add_bias(z, b):
        return z + b

    def fwd(z, b):
        return z + b, None

    def bwd(res, g):
        del res
        db = jnp.zeros(g.shape[1:], g.dtype) if drop_db else g.sum(0)
        return g, db

    add_bias.defvjp(fwd, bwd)
    return add_bias


# ---------------------------------------------------------------------------
# Data.


class _Draw:
    """Deterministic float64 draws (NumPy generator, converted under x64)."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def normal(self, *shape: int, scale: float = 1.0) -> jax.Array:
        return jnp.asarray(scale * self.rng.normal(size=shape), jnp.float64)

    def uniform(self, *shape: int, low: float, high: float) -> jax.Array:
        return jnp.asarray(self.rng.uniform(low, high, size=shape), jnp.float64)

    def signed(self, *shape: int, low: float, high: float) -> jax.Array:
        """Magnitudes in ``[low, high]`` with random signs."""
        mag = self.rng.uniform(low, high, size=shape)
        sign = self.rng.choice([-1.0, 1.0], size=shape)
        return jnp.asarray(mag * sign, jnp.float64)

    def labels(self, n: int, num_classes: int) -> jax.Array:
        return jnp.asarray(self.rng.integers(0, num_classes, size=n), jnp.int32)


def _one_hot(labels, num_classes, dtype):
    return jax.nn.one_hot(labels, num_classes, dtype=dtype)


# ---------------------------------------------------------------------------
# Models, their reference losses and hand-written backward passes.


# Scaled linear regression: r = exp(log_scale) * (x @ W + b) - y,
# L = 0.5 * mean_n sum_k r**2.
def scaled_linear_loss(exp_fn=jnp.exp):
    def loss(params, x, y):
        z = x @ params["W"] + params["b"]
        r = exp_fn(params["log_scale"]) * z - y
        return 0.5 * jnp.mean(jnp.sum(r * r, axis=-1))

    return loss


def scaled_linear_grad(*, flip_db: bool = False):
    def grad_fn(params, x, y):
        n = x.shape[0]
        s = jnp.exp(params["log_scale"])
        z = x @ params["W"] + params["b"]
        dp = (s * z - y) / n
        dz = dp * s
        db = dz.sum(0)
        return {
            "W": x.T @ dz,
            "b": -db if flip_db else db,
            "log_scale": (dp * z).sum(0) * s,
        }

    return grad_fn


# Ridge regression: 0.5 * mean_n |x @ W + b - y|**2 + lam * sum(W**2).
RIDGE_LAMBDA = 0.3


def ridge_loss(square_fn=jnp.square):
    def loss(params, x, y):
        r = x @ params["W"] + params["b"] - y
        data = 0.5 * jnp.mean(jnp.sum(r * r, axis=-1))
        return data + RIDGE_LAMBDA * jnp.sum(square_fn(params["W"]))

    return loss


# Softmax regression with integer labels (mean cross-entropy).
def softreg_loss(params, x, labels):
    return softmax_loss(x @ params["W"] + params["b"], labels)


def softreg_grad(*, bug: str | None = None):
    def grad_fn(params, x, labels):
        logits = x @ params["W"] + params["b"]
        n, c = logits.shape
        err = jax.nn.softmax(logits, axis=-1) - _one_hot(labels, c, logits.dtype)
        dlogits = err / n
        dw = x.T @ dlogits
        if bug == "missing_mean":
            dw = x.T @ err  # forgot the 1/N of the mean
        elif bug == "subtle":
            dw = dw * (1 + SUBTLE)
        return {"W": dw, "b": dlogits.sum(0)}

    return grad_fn


# The tanh MLP of jaxcheck.examples (list of {"W", "b"}), softmax loss.
def mlp_backprop(*, bug: str | None = None):
    """Hand-written backward pass of ``jaxcheck.examples.mlp_loss``, 2 layers."""

    def grad_fn(params, x, labels):
        (l1, l2) = params
        h = jnp.tanh(x @ l1["W"] + l1["b"])
        logits = h @ l2["W"] + l2["b"]
        n, c = logits.shape
        p = jax.nn.softmax(logits, axis=-1)
        dlogits = (p - _one_hot(labels, c, logits.dtype)) / n
        dw2 = h.T @ dlogits
        if bug == "transposed_dw2":
            dw2 = dlogits.T @ h  # square W2: same shape, transposed
        db2 = dlogits.sum(0)
        if bug == "missing_db2":
            db2 = jnp.zeros_like(db2)
        dh = dlogits @ l2["W"].T
        dz1 = dh * (1 - h * h)
        return [{"W": x.T @ dz1, "b": dz1.sum(0)}, {"W": dw2, "b": db2}]

    return grad_fn


# A 2-layer MLP whose hidden layer has no bias, so that a wrong activation
# derivative corrupts exactly one leaf, W1.
def act_mlp_loss(act):
    def loss(params, x, labels):
        h = act(x @ params["W1"])
        return softmax_loss(h @ params["W2"] + params["b2"], labels)

    return loss


def act_mlp_grad(act, deriv):
    """Backward pass of :func:`act_mlp_loss`; ``deriv(z, h)`` is act'."""

    def grad_fn(params, x, labels):
        z = x @ params["W1"]
        h = act(z)
        logits = h @ params["W2"] + params["b2"]
        n, c = logits.shape
        p = jax.nn.softmax(logits, axis=-1)
        dlogits = (p - _one_hot(labels, c, logits.dtype)) / n
        dz = (dlogits @ params["W2"].T) * deriv(z, h)
        return {"W1": x.T @ dz, "W2": h.T @ dlogits, "b2": dlogits.sum(0)}

    return grad_fn


# A first layer through a custom matmul: tanh(matmul(x, W1) + b1) @ W2 + b2.
def first_matmul_mlp_loss(matmul=jnp.matmul):
    def loss(params, x, labels):
        (l1, l2) = params
        h = jnp.tanh(matmul(x, l1["W"]) + l1["b"])
        return softmax_loss(h @ l2["W"] + l2["b"], labels)

    return loss


# tanh(x @ W1) @ W2 + b with a 3-entry bias b added by `add_bias`.
def wide_loss(add_bias=jnp.add):
    def loss(params, x, labels):
        h = jnp.tanh(x @ params["W1"])
        return softmax_loss(add_bias(h @ params["W2"], params["b"]), labels)

    return loss


# Soft-clipped table: sum(A * tanh(table)) + sum(v * softplus(c)).
def table_loss(tanh_fn=jnp.tanh):
    def loss(params, a, v):
        return jnp.sum(a * tanh_fn(params["table"])) + jnp.sum(
            v * jax.nn.softplus(params["c"])
        )

    return loss


def table_grad(*, bad_index: tuple[int, ...] | None = None):
    def grad_fn(params, a, v):
        t = jnp.tanh(params["table"])
        dtable = a * (1 - t * t)
        if bad_index is not None:
            dtable = dtable.at[bad_index].multiply(1.01)
        return {"table": dtable, "c": v * jax.nn.sigmoid(params["c"])}

    return grad_fn


# Gaussian regression with a learned per-output precision softplus(raw_prec):
# mean_n sum_k 0.5 * prec * r**2 - 0.5 * log(prec).
def precision_nll(softplus_fn=jax.nn.softplus):
    def loss(params, x, y):
        r = x @ params["W"] + params["b"] - y
        prec = softplus_fn(params["raw_prec"])
        return jnp.mean(jnp.sum(0.5 * prec * r * r - 0.5 * jnp.log(prec), axis=-1))

    return loss


# Weight normalisation: u = w / |w|; 0.5 * mean_n (x @ u + b - t)**2.
def weightnorm_loss(detach: bool):
    def loss(params, x, t):
        w = params["w"]
        norm = jnp.sqrt(jnp.sum(w * w))
        if detach:
            norm = jax.lax.stop_gradient(norm)
        r = x @ (w / norm) + params["b"] - t
        return 0.5 * jnp.mean(r * r)

    return loss


def logsumexp_loss(params, x):
    z = x @ params["W"] + params["b"]
    return jnp.mean(jax.nn.logsumexp(z, axis=-1)) + 0.1 * jnp.sum(
        params["W"] * params["W"]
    )


def softplus_loss(params, x, y):
    z = x @ params["w"] + params["b"]
    return jnp.mean(jax.nn.softplus(z) - y * z)


# ---------------------------------------------------------------------------
# The corpus.


def _mlp_params(draw: _Draw, sizes: tuple[int, ...]) -> list[dict[str, jax.Array]]:
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
        params.append(
            {
                "W": draw.normal(fan_in, fan_out, scale=fan_in**-0.5),
                "b": draw.normal(fan_out, scale=0.3),
            }
        )
    return params


def _pairs(
    bug: str,
    *,
    f_bad: Callable,
    f_ok: Callable,
    reference: Callable | None,
    params: PyTree,
    args: tuple,
    bad_leaf: str,
    note: str,
    grad_bad: Callable | None = None,
    grad_ok: Callable | None = None,
    impl: str = "custom_vjp",
    **extra: Any,
) -> list[Case]:
    """A buggy case and its fixed twin."""
    return [
        Case(
            name=f"{bug}-{impl}",
            f=f_bad,
            params=params,
            args=args,
            grad_fn=grad_bad,
            buggy=True,
            bad_leaf=bad_leaf,
            note=note,
            reference=reference,
            **extra,
        ),
        Case(
            name=f"{bug}-{impl}-fixed",
            f=f_ok,
            params=params,
            args=args,
            grad_fn=grad_ok,
            buggy=False,
            bad_leaf=None,
            note=f"the correct twin of {bug}-{impl}",
            reference=reference,
            coords=extra.get("coords", "all"),
        ),
    ]


def build_corpus() -> tuple[Case, ...]:
    """Builds every case (float64 parameters); deterministic."""
    with jax.enable_x64(True):
        return tuple(_build())


def _build() -> list[Case]:
    cases: list[Case] = []
    draw = _Draw(0)

    # -- wrong_sign ---------------------------------------------------------
    params = {
        "W": draw.normal(5, 3, scale=0.5),
        "b": draw.normal(3, scale=0.5),
        "log_scale": draw.normal(3, scale=0.3),
    }
    args = (draw.normal(8, 5), draw.normal(8, 3))
    cases += _pairs(
        "wrong_sign",
        f_bad=scaled_linear_loss(exp_wrong_sign),
        f_ok=scaled_linear_loss(exp_ok),
        reference=scaled_linear_loss(),
        params=params,
        args=args,
        bad_leaf="['log_scale']",
        note="custom_vjp of exp returns -exp(x) * g",
    )
    cases += _pairs(
        "wrong_sign",
        impl="hand",
        f_bad=scaled_linear_loss(),
        f_ok=scaled_linear_loss(),
        reference=None,
        grad_bad=scaled_linear_grad(flip_db=True),
        grad_ok=scaled_linear_grad(),
        params=params,
        args=args,
        bad_leaf="['b']",
        note="hand-written backward returns -db",
    )

    # -- missing_factor -----------------------------------------------------
    params = {"W": draw.normal(5, 3, scale=0.5), "b": draw.normal(3, scale=0.5)}
    args = (draw.normal(8, 5), draw.normal(8, 3))
    cases += _pairs(
        "missing_factor",
        f_bad=ridge_loss(square_missing_2),
        f_ok=ridge_loss(square_ok),
        reference=ridge_loss(),
        params=params,
        args=args,
        bad_leaf="['W']",
        note="custom_vjp of x**2 in the L2 penalty returns x * g (forgot the 2)",
    )
    params = {"W": draw.normal(5, 4, scale=0.5), "b": draw.normal(4, scale=0.5)}
    args = (draw.normal(8, 5), draw.labels(8, 4))
    cases += _pairs(
        "missing_factor",
        impl="hand",
        f_bad=softreg_loss,
        f_ok=softreg_loss,
        reference=None,
        grad_bad=softreg_grad(bug="missing_mean"),
        grad_ok=softreg_grad(),
        params=params,
        args=args,
        bad_leaf="['W']",
        note="hand-written softmax-regression dW forgets the 1/N of the mean",
    )

    # -- transposed_matmul --------------------------------------------------
    params = _mlp_params(draw, (4, 4, 3))
    args = (draw.normal(8, 4), draw.labels(8, 3))
    cases += _pairs(
        "transposed_matmul",
        f_bad=first_matmul_mlp_loss(matmul_vjp(transposed_dw=True)),
        f_ok=first_matmul_mlp_loss(matmul_vjp(transposed_dw=False)),
        reference=first_matmul_mlp_loss(),
        params=params,
        args=args,
        bad_leaf="[0]['W']",
        note="custom_vjp of x @ W returns dW = g.T @ x (square W)",
    )
    params = _mlp_params(draw, (5, 4, 4))
    args = (draw.normal(8, 5), draw.labels(8, 4))
    cases += _pairs(
        "transposed_matmul",
        impl="hand",
        f_bad=mlp_loss,
        f_ok=mlp_loss,
        reference=None,
        grad_bad=mlp_backprop(bug="transposed_dw2"),
        grad_ok=mlp_backprop(),
        params=params,
        args=args,
        bad_leaf="[1]['W']",
        note="hand-written MLP backprop: dW2 = dlogits.T @ h (square W2)",
    )

    # -- missing_bias_grad: a 3-entry bias among leaves of thousands --------
    params = {
        "W1": draw.normal(64, 128, scale=64**-0.5),
        "W2": draw.normal(128, 3, scale=128**-0.5),
        "b": draw.normal(3, scale=0.3),
    }
    args = (draw.normal(8, 64), jnp.array([0, 1, 2, 0, 0, 1, 0, 0], jnp.int32))
    cases += _pairs(
        "missing_bias_grad",
        f_bad=wide_loss(add_bias_vjp(drop_db=True)),
        f_ok=wide_loss(add_bias_vjp(drop_db=False)),
        reference=wide_loss(),
        params=params,
        args=args,
        bad_leaf="['b']",
        note="custom_vjp of z + b returns db = 0 (b: 3 entries; W1: 8192)",
        coords=24,
    )
    params = _mlp_params(draw, (64, 128, 3))
    args = (draw.normal(8, 64), jnp.array([2, 1, 2, 2, 0, 2, 2, 1], jnp.int32))
    cases += _pairs(
        "missing_bias_grad",
        impl="hand",
        f_bad=mlp_loss,
        f_ok=mlp_loss,
        reference=None,
        grad_bad=mlp_backprop(bug="missing_db2"),
        grad_ok=mlp_backprop(),
        params=params,
        args=args,
        bad_leaf="[1]['b']",
        note="hand-written MLP backprop returns zeros for the 3-entry output bias",
        coords=24,
    )

    # -- single_wrong_entry: 1% off in one entry of 2000 --------------------
    params = {"table": draw.normal(40, 50, scale=0.5), "c": draw.normal(50)}
    args = (draw.signed(40, 50, low=0.5, high=1.5), draw.signed(50, low=0.5, high=1.5))
    cases += _pairs(
        "single_wrong_entry",
        f_bad=table_loss(tanh_entry_bad),
        f_ok=table_loss(tanh_entry_ok),
        reference=table_loss(),
        params=params,
        args=args,
        bad_leaf="['table']",
        note=f"custom_vjp of tanh is 1% off at table{list(VJP_BAD_INDEX)} only",
        bad_index=VJP_BAD_INDEX,
    )
    cases += _pairs(
        "single_wrong_entry",
        impl="hand",
        f_bad=table_loss(),
        f_ok=table_loss(),
        reference=None,
        grad_bad=table_grad(bad_index=HAND_BAD_INDEX),
        grad_ok=table_grad(),
        params=params,
        args=args,
        bad_leaf="['table']",
        note=f"hand-written gradient 1% off at table{list(HAND_BAD_INDEX)} only",
        bad_index=HAND_BAD_INDEX,
    )

    # -- wrong activation derivatives (hidden layer without bias) -----------
    acts = {
        "tanh": (jnp.tanh, tanh_one_minus, tanh_ok, "1 - tanh for 1 - tanh**2"),
        "sigmoid": (jax.nn.sigmoid, sigmoid_s, sigmoid_ok, "s for s * (1 - s)"),
        "relu": (_relu, relu_x, relu_ok, "relu(x) for 1[x > 0]"),
    }
    hand_derivs = {
        "tanh": (lambda z, h: 1 - h, lambda z, h: 1 - h * h),
        "sigmoid": (lambda z, h: h, lambda z, h: h * (1 - h)),
        "relu": (lambda z, h: h, _step),
    }
    for act_name, (act, bad_op, ok_op, what) in acts.items():
        params = {
            "W1": draw.normal(5, 6, scale=5**-0.5),
            "W2": draw.normal(6, 3, scale=6**-0.5),
            "b2": draw.normal(3, scale=0.3),
        }
        args = (draw.normal(8, 5), draw.labels(8, 3))
        bug = f"wrong_{act_name}_derivative"
        cases += _pairs(
            bug,
            f_bad=act_mlp_loss(bad_op),
            f_ok=act_mlp_loss(ok_op),
            reference=act_mlp_loss(act),
            params=params,
            args=args,
            bad_leaf="['W1']",
            note=f"custom_vjp of {act_name}: {what}",
        )
        bad_deriv, ok_deriv = hand_derivs[act_name]
        cases += _pairs(
            bug,
            impl="hand",
            f_bad=act_mlp_loss(act),
            f_ok=act_mlp_loss(act),
            reference=None,
            grad_bad=act_mlp_grad(act, bad_deriv),
            grad_ok=act_mlp_grad(act, ok_deriv),
            params=params,
            args=args,
            bad_leaf="['W1']",
            note=f"hand-written backprop of a {act_name} MLP: {what}",
        )

    # -- subtle_factor: 1 + 1e-4 on a smooth function ------------------------
    params = {
        "W": draw.normal(5, 3, scale=0.5),
        "b": draw.normal(3, scale=0.5),
        "raw_prec": draw.uniform(3, low=1.5, high=3.0),
    }
    args = (draw.normal(8, 5), draw.normal(8, 3))
    cases += _pairs(
        "subtle_factor",
        f_bad=precision_nll(softplus_subtle),
        f_ok=precision_nll(softplus_ok),
        reference=precision_nll(),
        params=params,
        args=args,
        bad_leaf="['raw_prec']",
        note="custom_vjp of softplus is (1 + 1e-4) * sigmoid(x) * g",
    )
    params = {"W": draw.normal(5, 4, scale=0.5), "b": draw.normal(4, scale=0.5)}
    args = (draw.normal(8, 5), draw.labels(8, 4))
    cases += _pairs(
        "subtle_factor",
        impl="hand",
        f_bad=softreg_loss,
        f_ok=softreg_loss,
        reference=None,
        grad_bad=softreg_grad(bug="subtle"),
        grad_ok=softreg_grad(),
        params=params,
        args=args,
        bad_leaf="['W']",
        note="hand-written softmax-regression dW is (1 + 1e-4) times too large",
    )

    # -- extras -------------------------------------------------------------
    params = {
        "W": draw.normal(5, 3, scale=0.5),
        "b": draw.normal(3, scale=0.5),
        "raw_prec": draw.uniform(3, low=1.5, high=3.0),
    }
    args = (draw.normal(8, 5), draw.normal(8, 3))
    cases += _pairs(
        "wrong_jvp_rule",
        impl="custom_jvp",
        f_bad=precision_nll(softplus_jvp_bad),
        f_ok=precision_nll(softplus_jvp_ok),
        reference=precision_nll(),
        params=params,
        args=args,
        bad_leaf="['raw_prec']",
        note="custom_jvp of softplus with tangent sigmoid(-x) * t (sign slip)",
    )
    params = {"w": draw.normal(6, scale=0.7), "b": draw.normal(scale=0.5)}
    args = (draw.normal(10, 6), draw.normal(10))
    cases += _pairs(
        "detached_normalizer",
        impl="plain",
        f_bad=weightnorm_loss(detach=True),
        f_ok=weightnorm_loss(detach=False),
        reference=weightnorm_loss(detach=False),
        params=params,
        args=args,
        bad_leaf="['w']",
        note="weight norm w / stop_gradient(|w|): jax.grad misses the norm's term",
    )
    cases.append(
        Case(
            name="logsumexp-plain",
            f=logsumexp_loss,
            params={"W": draw.normal(6, 5, scale=0.5), "b": draw.normal(5)},
            args=(draw.normal(7, 6),),
            grad_fn=None,
            buggy=False,
            bad_leaf=None,
            note="mean logsumexp plus an L2 penalty, plain jax.grad",
        )
    )
    cases.append(
        Case(
            name="softplus-plain",
            f=softplus_loss,
            params={"w": draw.normal(6, scale=0.5), "b": draw.normal(scale=0.5)},
            args=(draw.normal(9, 6), draw.uniform(9, low=0.0, high=1.0)),
            grad_fn=None,
            buggy=False,
            bad_leaf=None,
            note="logistic loss through jax.nn.softplus, plain jax.grad",
        )
    )
    cases.append(
        Case(
            name="mlp_tanh_softmax-plain",
            f=mlp_loss,
            params=_mlp_params(draw, (6, 5, 4)),
            args=(draw.normal(8, 6), draw.labels(8, 4)),
            grad_fn=None,
            buggy=False,
            bad_leaf=None,
            note="jaxcheck.examples.mlp_loss, plain jax.grad",
        )
    )
    return cases


CASES: tuple[Case, ...] = build_corpus()
BUGGY: tuple[Case, ...] = tuple(c for c in CASES if c.buggy)
CORRECT: tuple[Case, ...] = tuple(c for c in CASES if not c.buggy)


def case_by_name(name: str) -> Case:
    """The case called ``name``."""
    for case in CASES:
        if case.name == name:
            return case
    raise KeyError(f"no corpus case named {name!r}; known: {[c.name for c in CASES]}")
