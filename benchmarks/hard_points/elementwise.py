"""Cases of elementwise ``jnp`` functions, small ``jnp`` reductions and ``jax.nn``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import mpmath as mp

from hard_points.cases import Case, pt, unary

PI_2_M_1E8 = 1.5707963167948966  # float64(pi/2 - 1e-8)


def _std(x):
    m = mp.fsum(x) / len(x)
    return mp.sqrt(mp.fsum((v - m) ** 2 for v in x) / len(x))


def _gelu_tanh(x):
    c = mp.sqrt(2 / mp.pi)
    return x / 2 * (1 + mp.tanh(c * (x + mp.mpf("0.044715") * x**3)))


def _selu(x):
    alpha = mp.mpf("1.6732632423543772848170429916717")
    scale = mp.mpf("1.0507009873554804934193349852946")
    return scale * (x if x > 0 else alpha * mp.expm1(x))


def cases() -> list[Case]:
    """The elementwise cases."""
    g = "jnp"
    out = [
        unary(
            "jnp.sinc",
            g,
            jnp.sinc,
            mp.sincpi,
            [
                ("tiny", 1e-12),
                ("tiny", 1e-8),
                ("tiny", 1e-6),
                ("tiny", 1e-4),
                ("huge", 1234.25),
                ("control", 2.3),
            ],
        ),
        unary(
            "jnp.cbrt",
            g,
            jnp.cbrt,
            lambda x: mp.cbrt(x) if x >= 0 else -mp.cbrt(-x),
            [
                ("pole", 1e-12),
                ("pole", 1e-8),
                ("pole", -1e-8),
                ("pole", 1e-300),
                ("huge", 1e200),
                ("control", 2.0),
            ],
        ),
        unary(
            "jnp.sqrt",
            g,
            jnp.sqrt,
            mp.sqrt,
            [("pole", 1e-8), ("pole", 1e-300), ("huge", 1e200), ("control", 2.0)],
        ),
        unary(
            "jnp.log",
            g,
            jnp.log,
            mp.log,
            [("pole", 1e-8), ("pole", 1e-300), ("huge", 1e200), ("control", 2.0)],
        ),
        unary(
            "jnp.log1p",
            g,
            jnp.log1p,
            mp.log1p,
            [
                ("tiny", 1e-8),
                ("tiny", 1e-300),
                ("pole", -1 + 1e-8, "x=-1+1e-8"),
                ("huge", 1e200),
                ("control", 0.5),
            ],
        ),
        unary(
            "jnp.log2",
            g,
            jnp.log2,
            lambda x: mp.log(x, 2),
            [("pole", 1e-8), ("huge", 1e200), ("control", 3.0)],
        ),
        unary(
            "jnp.log10",
            g,
            jnp.log10,
            mp.log10,
            [("pole", 1e-8), ("huge", 1e200), ("control", 3.0)],
        ),
        unary(
            "jnp.exp",
            g,
            jnp.exp,
            mp.exp,
            [("tail", -700.0), ("huge", 700.0), ("tiny", 1e-8), ("control", 0.5)],
        ),
        unary(
            "jnp.exp2",
            g,
            jnp.exp2,
            lambda x: mp.power(2, x),
            [("huge", 1000.0), ("tail", -1000.0), ("control", 0.5)],
        ),
        unary(
            "jnp.expm1",
            g,
            jnp.expm1,
            mp.expm1,
            [
                ("tiny", 1e-8),
                ("tiny", 1e-300),
                ("huge", 700.0),
                ("tail", -40.0),
                ("control", 0.5),
            ],
        ),
        unary(
            "jnp.sin",
            g,
            jnp.sin,
            mp.sin,
            [
                ("huge", 1e8),
                ("huge", 1e200),
                ("tiny", 1e-8),
                ("tiny", 1e-300),
                ("control", 0.5),
            ],
        ),
        unary(
            "jnp.cos",
            g,
            jnp.cos,
            mp.cos,
            [("huge", 1e200), ("tiny", 1e-8), ("control", 0.5)],
        ),
        unary(
            "jnp.tan",
            g,
            jnp.tan,
            mp.tan,
            [
                ("pole", PI_2_M_1E8, "x=pi/2-1e-8"),
                ("huge", 1e8),
                ("tiny", 1e-8),
                ("control", 0.5),
            ],
        ),
        unary(
            "jnp.arcsin",
            g,
            jnp.arcsin,
            mp.asin,
            [("pole", 1 - 1e-8, "x=1-1e-8"), ("tiny", 1e-8), ("control", 0.5)],
        ),
        unary(
            "jnp.arccos",
            g,
            jnp.arccos,
            mp.acos,
            [
                ("pole", 1 - 1e-8, "x=1-1e-8"),
                ("pole", -1 + 1e-8, "x=-1+1e-8"),
                ("control", 0.3),
            ],
        ),
        unary(
            "jnp.arctan",
            g,
            jnp.arctan,
            mp.atan,
            [("tiny", 1e-8), ("huge", 1e8), ("huge", 1e200), ("control", 1.5)],
        ),
        unary(
            "jnp.arcsinh",
            g,
            jnp.arcsinh,
            mp.asinh,
            [("tiny", 1e-8), ("huge", 1e200), ("huge", -1e8), ("control", 0.7)],
        ),
        unary(
            "jnp.arccosh",
            g,
            jnp.arccosh,
            mp.acosh,
            [("pole", 1 + 1e-8, "x=1+1e-8"), ("huge", 1e200), ("control", 2.0)],
        ),
        unary(
            "jnp.arctanh",
            g,
            jnp.arctanh,
            mp.atanh,
            [
                ("tiny", 1e-8),
                ("pole", 1 - 1e-8, "x=1-1e-8"),
                ("pole", 1 - 1e-12, "x=1-1e-12"),
                ("pole", -1 + 1e-12, "x=-1+1e-12"),
                ("control", 0.5),
            ],
        ),
        unary(
            "jnp.sinh",
            g,
            jnp.sinh,
            mp.sinh,
            [("huge", 710.0), ("tiny", 1e-8), ("control", 1.2)],
        ),
        unary(
            "jnp.cosh",
            g,
            jnp.cosh,
            mp.cosh,
            [("huge", 710.0), ("tiny", 1e-8), ("control", 1.2)],
        ),
        unary(
            "jnp.tanh",
            g,
            jnp.tanh,
            mp.tanh,
            [
                ("tiny", 1e-8),
                ("tail", 20.0),
                ("huge", 1e8),
                ("huge", 1e200),
                ("control", 0.8),
            ],
        ),
        Case(
            "jnp.hypot",
            g,
            lambda x: jnp.hypot(x[0], x[1]),
            lambda x: mp.hypot(x[0], x[1]),
            (
                pt("edge", 1e-8, 1e-8),
                pt("huge", 1e200, 1e200),
                pt("tiny", 1e-200, 1.0),
                pt("control", 0.3, 0.4),
            ),
        ),
        Case(
            "jnp.arctan2",
            g,
            lambda x: jnp.arctan2(x[0], x[1]),
            lambda x: mp.atan2(x[0], x[1]),
            (
                pt("edge", 1e-8, -1.0),
                pt("pole", 1e-8, 1e-8),
                pt("huge", 1e200, 1e200),
                pt("control", 0.3, 0.7),
            ),
        ),
        Case(
            "jnp.logaddexp",
            g,
            lambda x: jnp.logaddexp(x[0], x[1]),
            lambda x: mp.log(mp.exp(x[0]) + mp.exp(x[1])),
            (
                pt("tiny", 1e-8, -1e-8),
                pt("tail", 1000.0, -1000.0),
                pt("huge", 1e200, -1e200),
                pt("control", 0.3, -0.7),
            ),
        ),
        Case(
            "jnp.logaddexp2",
            g,
            lambda x: jnp.logaddexp2(x[0], x[1]),
            lambda x: mp.log(mp.power(2, x[0]) + mp.power(2, x[1]), 2),
            (pt("tail", 1000.0, -1000.0), pt("control", 0.3, -0.7)),
        ),
        Case(
            "jnp.power",
            g,
            lambda x: jnp.power(x[0], x[1]),
            lambda x: mp.power(x[0], x[1]),
            (
                pt("pole", 1e-8, 0.5),
                pt("huge", 1e200, 1.01),
                pt("curvature", 0.5, 1000.0),
                pt("control", 1.3, 2.7),
            ),
        ),
        unary(
            "jnp.reciprocal",
            g,
            jnp.reciprocal,
            lambda x: 1 / x,
            [("pole", 1e-8), ("huge", 1e200), ("control", 0.7)],
        ),
        unary(
            "jnp.square",
            g,
            jnp.square,
            lambda x: x * x,
            [("huge", 1e150), ("tiny", 1e-8), ("control", 0.7)],
        ),
        Case(
            "jnp.std",
            g,
            lambda x: jnp.std(x),
            _std,
            (
                pt("edge", 1.0, 1 + 1e-8, 1 - 1e-8, label="x=(1, 1+1e-8, 1-1e-8)"),
                pt("huge", 1e150, 2e150, 3e150),
                pt("control", 0.3, 1.2, -0.5),
            ),
            floor=1e-3,
        ),
        Case(
            "jnp.linalg.norm[vector]",
            g,
            lambda x: jnp.linalg.norm(x),
            lambda x: mp.sqrt(mp.fsum(v**2 for v in x)),
            (
                pt("edge", 1e-8, 2e-8, -1e-8),
                pt("huge", 1e150, 2e150, -1e150),
                pt("control", 0.3, 1.2, -0.5),
            ),
            floor=1e-3,
        ),
        # jax.nn
        unary(
            "nn.softplus",
            "nn",
            jax.nn.softplus,
            lambda x: mp.log1p(mp.exp(x)),
            [
                ("tail", -40.0),
                ("tail", 40.0),
                ("huge", 1e8),
                ("huge", -1e200),
                ("tiny", 1e-8),
                ("control", 0.5),
            ],
        ),
        unary(
            "nn.log_sigmoid",
            "nn",
            jax.nn.log_sigmoid,
            lambda x: -mp.log1p(mp.exp(-x)),
            [("tail", -40.0), ("tail", 40.0), ("huge", -1e8), ("control", 0.5)],
        ),
        unary(
            "nn.gelu[erf]",
            "nn",
            lambda x: jax.nn.gelu(x, approximate=False),
            lambda x: x * mp.ncdf(x),
            [
                ("tiny", 1e-8),
                ("tail", -10.0),
                ("tail", -30.0),
                ("huge", 1e8),
                ("control", 0.5),
            ],
        ),
        unary(
            "nn.gelu[tanh]",
            "nn",
            lambda x: jax.nn.gelu(x, approximate=True),
            _gelu_tanh,
            [("tiny", 1e-8), ("tail", -10.0), ("control", 0.5)],
        ),
        unary(
            "nn.silu",
            "nn",
            jax.nn.silu,
            lambda x: x / (1 + mp.exp(-x)),
            [("tail", -40.0), ("huge", 1e8), ("control", 0.5)],
        ),
        unary(
            "nn.mish",
            "nn",
            jax.nn.mish,
            lambda x: x * mp.tanh(mp.log1p(mp.exp(x))),
            [("tail", -40.0), ("tiny", 1e-8), ("control", 0.5)],
        ),
        unary(
            "nn.elu",
            "nn",
            jax.nn.elu,
            lambda x: x if x > 0 else mp.expm1(x),
            [("edge", 1e-8), ("edge", -1e-8), ("control", -0.5)],
        ),
        unary(
            "nn.selu",
            "nn",
            jax.nn.selu,
            _selu,
            [("edge", 1e-8), ("control", -0.5)],
        ),
        unary(
            "nn.relu",
            "nn",
            jax.nn.relu,
            lambda x: x if x > 0 else mp.mpf(0),
            [("edge", 1e-8), ("control", 0.5)],
        ),
        unary(
            "nn.hard_tanh",
            "nn",
            jax.nn.hard_tanh,
            lambda x: max(-1, min(1, x)),
            [("edge", 1 - 1e-8, "x=1-1e-8"), ("control", 0.5)],
        ),
        unary(
            "nn.soft_sign",
            "nn",
            jax.nn.soft_sign,
            lambda x: x / (1 + abs(x)),
            [("edge", 1e-8), ("huge", 1e200), ("control", -0.5)],
        ),
        unary(
            "nn.squareplus",
            "nn",
            jax.nn.squareplus,
            lambda x: (x + mp.sqrt(x**2 + 4)) / 2,
            [("tiny", 1e-8), ("huge", 1e100), ("huge", -1e100), ("control", 0.5)],
        ),
        unary(
            "nn.log1mexp",
            "nn",
            jax.nn.log1mexp,
            lambda x: mp.log(-mp.expm1(-x)),
            [("pole", 1e-8), ("tail", 40.0), ("control", 0.5)],
        ),
    ]
    return out
