"""Cases of ``jax.scipy.special``."""

from __future__ import annotations

import jax.numpy as jnp
import jax.scipy.special as S
import mpmath as mp

from hard_points.cases import Case, mp_weighted, pt, unary, weights


def _loggamma_abs(x):
    """log|Gamma(x)| (what ``gammaln`` computes, also for negative x)."""
    if x > 0:
        return mp.loggamma(x)
    return mp.log(abs(mp.gamma(x)))


def mp_ndtri(p):
    """The inverse of the normal CDF, accurate in both tails."""
    if p > 0.5:
        return -mp_ndtri(1 - p)
    # Newton on log(ncdf(q)) = log(p), from the tail asymptote.
    q0 = -mp.sqrt(-2 * mp.log(p)) if p < mp.mpf("0.1") else mp.mpf(0)
    return mp.findroot(lambda q: mp.log(mp.ncdf(q)) - mp.log(p), q0)


def _ndtri_grad(x, *a):
    return [1 / mp.npdf(mp_ndtri(x[0]))]


def _owens_t(h, a):
    f = lambda t: mp.exp(-(h**2) * (1 + t**2) / 2) / (1 + t**2)  # noqa: E731
    return mp.quad(f, [0, a]) / (2 * mp.pi)


def _owens_t_grad(x, *a):
    h, b = x
    dh = -mp.npdf(h) * mp.erf(b * h / mp.sqrt(2)) / 2
    db = mp.exp(-(h**2) * (1 + b**2) / 2) / (2 * mp.pi * (1 + b**2))
    return [dh, db]


def _lse(xs):
    m = max(xs)
    return m + mp.log(mp.fsum(mp.exp(v - m) for v in xs))


def cases() -> list[Case]:
    """The special-function cases."""
    w3 = weights((3,), "softmax")
    w4 = weights((4,), "bessel_jn")
    out = [
        unary(
            "special.gammaln",
            "special",
            S.gammaln,
            _loggamma_abs,
            [
                ("pole", 1e-8),
                ("pole", 1e-12),
                ("pole", 1e-300),
                ("pole", -3 + 1e-8, "x=-3+1e-8"),
                ("huge", 1e8),
                ("huge", 1e200),
                ("control", 2.5),
                ("control", -2.5),
            ],
        ),
        unary(
            "special.gamma",
            "special",
            S.gamma,
            mp.gamma,
            [
                ("pole", 1e-8),
                ("pole", -1e-8),
                ("huge", 171.0),
                ("control", 3.3),
                ("control", -2.5),
            ],
        ),
        unary(
            "special.digamma",
            "special",
            S.digamma,
            mp.digamma,
            [
                ("pole", 1e-8),
                ("pole", 1e-12),
                ("pole", -1 + 1e-8, "x=-1+1e-8"),
                ("huge", 1e8),
                ("huge", 1e200),
                ("control", 0.5),
            ],
        ),
        unary(
            "special.polygamma[n=1]",
            "special",
            lambda x: S.polygamma(1, x),
            lambda x: mp.psi(1, x),
            [("pole", 1e-8), ("huge", 1e8), ("control", 2.0), ("control", -1.5)],
        ),
        unary(
            "special.polygamma[n=2]",
            "special",
            lambda x: S.polygamma(2, x),
            lambda x: mp.psi(2, x),
            [("pole", 1e-5), ("huge", 1e8), ("control", 3.0)],
        ),
        unary(
            "special.zeta[s]",
            "special",
            lambda x: S.zeta(x, 1.0),
            mp.zeta,
            [
                ("pole", 1.0001),
                ("pole", 1.01),
                ("pole", 1 + 1e-8, "s=1+1e-8"),
                ("tail", 50.0),
                ("control", 2.0),
                ("control", 4.5),
            ],
        ),
        unary(
            "special.zeta[q]",
            "special",
            lambda q: S.zeta(3.0, q),
            lambda q: mp.zeta(3, q),
            [("pole", 1e-8), ("huge", 1e8), ("control", 2.0)],
        ),
        Case(
            "special.betainc[x]",
            "special",
            lambda x, a, b: S.betainc(a, b, x[0]),
            lambda x, a, b: mp.betainc(a, b, 0, x[0], regularized=True),
            (
                pt("curvature", 0.01, args=(1.5, 200.0)),
                pt("curvature", 0.005, args=(2.0, 500.0)),
                pt("pole", 1e-8, args=(0.5, 0.5)),
                pt("pole", 1 - 1e-8, args=(2.0, 0.5)),
                pt("tiny", 1e-8, args=(2.0, 3.0)),
                pt("control", 0.4, args=(2.0, 3.0)),
                pt("control", 0.5, args=(50.0, 50.0)),
            ),
        ),
        Case(
            "special.betaln",
            "special",
            lambda x: S.betaln(x[0], x[1]),
            lambda x: mp.log(mp.beta(x[0], x[1])),
            (
                pt("pole", 1e-8, 1.0),
                pt("huge", 1e8, 1e8),
                pt("huge", 1e200, 2.0),
                pt("tail", 1e-3, 1e3),
                pt("control", 2.5, 3.5),
            ),
        ),
        Case(
            "special.beta",
            "special",
            lambda x: S.beta(x[0], x[1]),
            lambda x: mp.beta(x[0], x[1]),
            (pt("pole", 1e-8, 2.0), pt("tail", 50.0, 60.0), pt("control", 2.0, 3.0)),
        ),
        unary(
            "special.erf",
            "special",
            S.erf,
            mp.erf,
            [
                ("tiny", 1e-8),
                ("tiny", 1e-300),
                ("tail", 5.9),
                ("tail", 26.0),
                ("huge", 1e8),
                ("control", 0.7),
            ],
        ),
        unary(
            "special.erfc",
            "special",
            S.erfc,
            mp.erfc,
            [("tiny", 1e-8), ("tail", 26.0), ("tail", -5.0), ("control", 1.3)],
        ),
        unary(
            "special.erfinv",
            "special",
            S.erfinv,
            mp.erfinv,
            [
                ("tiny", 1e-8),
                ("tiny", 1e-300),
                ("pole", 1 - 1e-8, "x=1-1e-8"),
                ("pole", -1 + 1e-12, "x=-1+1e-12"),
                ("control", 0.5),
            ],
        ),
        unary(
            "special.erfcx",
            "special",
            S.erfcx,
            lambda x: mp.exp(x**2) * mp.erfc(x),
            [
                ("tiny", 1e-8),
                ("huge", 1e8),
                ("tail", 30.0),
                ("tail", -5.0),
                ("control", 1.0),
            ],
        ),
        unary(
            "special.expit",
            "special",
            S.expit,
            lambda x: 1 / (1 + mp.exp(-x)),
            [
                ("tiny", 1e-8),
                ("tail", 40.0),
                ("tail", -40.0),
                ("tail", -700.0),
                ("huge", 1e8),
                ("control", 0.3),
            ],
        ),
        unary(
            "special.logit",
            "special",
            S.logit,
            lambda x: mp.log(x / (1 - x)),
            [
                ("pole", 1e-8),
                ("pole", 1e-12),
                ("pole", 1 - 1e-8, "x=1-1e-8"),
                ("pole", 1e-300),
                ("control", 0.3),
            ],
        ),
        Case(
            "special.xlogy",
            "special",
            lambda x: S.xlogy(x[0], x[1]),
            lambda x: x[0] * mp.log(x[1]),
            (
                pt("pole", 1e-8, 1e-8),
                pt("pole", 2.0, 1e-200),
                pt("huge", 1e200, 3.0),
                pt("control", 0.7, 2.3),
            ),
        ),
        Case(
            "special.xlog1py",
            "special",
            lambda x: S.xlog1py(x[0], x[1]),
            lambda x: x[0] * mp.log1p(x[1]),
            (
                pt("pole", 2.0, -1 + 1e-8, label="x=(2.0, -1+1e-8)"),
                pt("tiny", 1e-8, 1e-8),
                pt("control", 0.7, 0.3),
            ),
        ),
        unary(
            "special.entr",
            "special",
            S.entr,
            lambda x: -x * mp.log(x),
            [("pole", 1e-8), ("pole", 1e-300), ("huge", 1e200), ("control", 0.5)],
        ),
        Case(
            "special.rel_entr",
            "special",
            lambda x: S.rel_entr(x[0], x[1]),
            lambda x: x[0] * mp.log(x[0] / x[1]),
            (pt("pole", 1e-8, 1e-8), pt("huge", 1e200, 1e199), pt("control", 2.0, 3.0)),
        ),
        Case(
            "special.kl_div",
            "special",
            lambda x: S.kl_div(x[0], x[1]),
            lambda x: x[0] * mp.log(x[0] / x[1]) - x[0] + x[1],
            (pt("pole", 1e-8, 2e-8), pt("control", 2.0, 3.0)),
        ),
        unary(
            "special.i0",
            "special",
            S.i0,
            lambda x: mp.besseli(0, x),
            [("tiny", 1e-8), ("tail", 700.0), ("control", 3.0)],
        ),
        unary(
            "special.i0e",
            "special",
            S.i0e,
            lambda x: mp.besseli(0, x) * mp.exp(-abs(x)),
            [("edge", 1e-8), ("huge", 1e8), ("huge", 1e200), ("control", -3.0)],
        ),
        unary(
            "special.i1",
            "special",
            S.i1,
            lambda x: mp.besseli(1, x),
            [("tiny", 1e-8), ("tail", 700.0), ("control", 2.0)],
        ),
        unary(
            "special.i1e",
            "special",
            S.i1e,
            lambda x: mp.besseli(1, x) * mp.exp(-abs(x)),
            [("edge", 1e-8), ("huge", 1e8), ("huge", 1e200), ("control", 2.0)],
        ),
        unary(
            "special.bessel_jn[J1]",
            "special",
            lambda z: S.bessel_jn(z, v=1)[1],
            lambda z: mp.besselj(1, z),
            [("tiny", 1e-3), ("tiny", 1e-8), ("control", 1.7), ("control", 7.3)],
        ),
        unary(
            "special.bessel_jn[J2]",
            "special",
            lambda z: S.bessel_jn(z, v=2)[2],
            lambda z: mp.besselj(2, z),
            [("tiny", 1e-3), ("tiny", 1e-8), ("tail", 50.0), ("control", 1.7)],
        ),
        unary(
            "special.bessel_jn[weighted J0..J3]",
            "special",
            lambda z: jnp.sum(w4 * S.bessel_jn(z, v=3)),
            lambda z: mp_weighted(w4, [mp.besselj(n, z) for n in range(4)]),
            [("tiny", 1e-3), ("tiny", 1e-8), ("control", 2.4048)],
        ),
        unary(
            "special.spence",
            "special",
            S.spence,
            lambda x: mp.polylog(2, 1 - x),
            [
                ("pole", 1e-8),
                ("edge", 1 - 1e-8, "x=1-1e-8"),
                ("huge", 1e8),
                ("control", 2.0),
                ("control", 0.5),
            ],
        ),
        unary(
            "special.ndtr",
            "special",
            S.ndtr,
            mp.ncdf,
            [("tiny", 1e-8), ("tail", -30.0), ("tail", 8.5), ("control", 0.3)],
        ),
        Case(
            "special.ndtri",
            "special",
            lambda x: S.ndtri(x[0]),
            lambda x: mp_ndtri(x[0]),
            (
                pt("pole", 1e-8),
                pt("pole", 1 - 1e-8, label="x=1-1e-8"),
                pt("pole", 1e-300),
                pt("control", 0.3),
            ),
            mp_grad=_ndtri_grad,
        ),
        unary(
            "special.log_ndtr",
            "special",
            S.log_ndtr,
            lambda x: mp.log(mp.ncdf(x)),
            [
                ("tail", -40.0),
                ("tail", -300.0),
                ("huge", -1e8),
                ("tail", 10.0),
                ("tiny", 1e-8),
                ("control", 0.3),
            ],
        ),
        Case(
            "special.gammainc",
            "special",
            lambda x: S.gammainc(x[0], x[1]),
            lambda x: mp.gammainc(x[0], 0, x[1], regularized=True),
            (
                pt("pole", 1e-8, 1.0),
                pt("tiny", 1.0, 1e-8),
                pt("curvature", 100.0, 100.0),
                pt("huge", 1e3, 1e3),
                pt("tail", 0.5, 30.0),
                pt("control", 2.5, 1.7),
            ),
        ),
        Case(
            "special.gammaincc",
            "special",
            lambda x: S.gammaincc(x[0], x[1]),
            lambda x: mp.gammainc(x[0], x[1], mp.inf, regularized=True),
            (
                pt("pole", 1e-8, 1.0),
                pt("tiny", 1.0, 1e-8),
                pt("curvature", 100.0, 100.0),
                pt("tail", 0.5, 30.0),
                pt("control", 2.5, 1.7),
            ),
        ),
        unary(
            "special.expi",
            "special",
            S.expi,
            mp.ei,
            [
                ("pole", 1e-8),
                ("pole", -1e-8),
                ("tail", 700.0),
                ("control", 1.0),
                ("control", -2.0),
            ],
        ),
        unary(
            "special.exp1",
            "special",
            S.exp1,
            mp.e1,
            [("pole", 1e-8), ("tail", 700.0), ("tail", 50.0), ("control", 1.0)],
        ),
        unary(
            "special.expn[n=3]",
            "special",
            lambda x: S.expn(3, x),
            lambda x: mp.expint(3, x),
            [("tiny", 1e-8), ("tail", 50.0), ("control", 1.0)],
        ),
        unary(
            "special.dawsn",
            "special",
            S.dawsn,
            lambda x: mp.sqrt(mp.pi) / 2 * mp.exp(-(x**2)) * mp.erfi(x),
            [("tiny", 1e-8), ("huge", 1e8), ("control", 1.0)],
        ),
        unary(
            "special.fresnel[S+2C]",
            "special",
            lambda x: (lambda sc: sc[0] + 2 * sc[1])(S.fresnel(x)),
            lambda x: mp.fresnels(x) + 2 * mp.fresnelc(x),
            [("tiny", 1e-8), ("huge", 1e4), ("huge", 1e8), ("control", 1.3)],
        ),
        unary(
            "special.sici[Si+2Ci]",
            "special",
            lambda x: (lambda sc: sc[0] + 2 * sc[1])(S.sici(x)),
            lambda x: mp.si(x) + 2 * mp.ci(x),
            [("pole", 1e-8), ("huge", 1e8), ("control", 1.0)],
        ),
        Case(
            "special.hyp1f1",
            "special",
            lambda x: S.hyp1f1(x[0], x[1], x[2]),
            lambda x: mp.hyp1f1(x[0], x[1], x[2]),
            (
                pt("tiny", 1.0, 2.0, 1e-8),
                pt("tail", 0.5, 1.5, -30.0),
                pt("tail", 1.0, 2.0, 700.0),
                pt("control", 1.0, 2.0, 0.5),
            ),
        ),
        Case(
            "special.hyp2f1",
            "special",
            lambda x: S.hyp2f1(x[0], x[1], x[2], x[3]),
            lambda x: mp.hyp2f1(x[0], x[1], x[2], x[3]),
            (
                pt("pole", 1.0, 1.0, 2.0, 1 - 1e-8, label="x=(1, 1, 2, 1-1e-8)"),
                pt("tiny", 1.0, 2.0, 3.0, 1e-8),
                pt("control", 0.5, 0.5, 1.5, 0.3),
            ),
        ),
        Case(
            "special.owens_t",
            "special",
            lambda x: S.owens_t(x[0], x[1]),
            lambda x: _owens_t(x[0], x[1]),
            (
                pt("tiny", 1e-8, 1.0),
                pt("tail", 5.0, 0.5),
                pt("huge", 1.0, 1e8),
                pt("control", 1.0, 0.5),
            ),
            mp_grad=_owens_t_grad,
        ),
        unary(
            "special.multigammaln[d=3]",
            "special",
            lambda a: S.multigammaln(a, 3),
            lambda a: (
                3 * 2 / 4 * mp.log(mp.pi)
                + mp.fsum(_loggamma_abs(a - mp.mpf(j) / 2) for j in range(3))
            ),
            [("pole", 1 + 1e-8, "a=1+1e-8"), ("huge", 1e8), ("control", 3.0)],
        ),
        Case(
            "special.poch",
            "special",
            lambda x: S.poch(x[0], x[1]),
            lambda x: mp.rf(x[0], x[1]),
            (pt("edge", 1e-8, 2.5), pt("huge", 1e8, 0.5), pt("control", 1.5, 2.5)),
        ),
        Case(
            "special.logsumexp",
            "special",
            lambda x: S.logsumexp(x),
            lambda x: _lse(x),
            (
                pt("tiny", 1e-8, -1e-8, 0.0),
                pt("tail", 1000.0, -1000.0, 0.0),
                pt("huge", 1e200, 0.0, 1.0),
                pt("control", 0.3, -1.2, 0.8),
            ),
            floor=1e-3,
        ),
        Case(
            "special.log_softmax[weighted]",
            "special",
            lambda x: jnp.sum(w3 * S.log_softmax(x)),
            lambda x: mp_weighted(w3, [v - _lse(x) for v in x]),
            (
                pt("tail", 0.0, -800.0, 800.0),
                pt("huge", 1e200, 0.0, 1.0),
                pt("control", 0.3, -1.2, 0.8),
            ),
            floor=1e-3,
        ),
        Case(
            "special.softmax[weighted]",
            "special",
            lambda x: jnp.sum(w3 * S.softmax(x)),
            lambda x: mp_weighted(w3, [mp.exp(v - _lse(x)) for v in x]),
            (
                pt("tail", 0.0, -800.0, 800.0),
                pt("tiny", 1e-8, -1e-8, 0.0),
                pt("control", 0.3, -1.2, 0.8),
            ),
            floor=1e-3,
        ),
        Case(
            "special.boxcox",
            "special",
            lambda x: S.boxcox(x[0], x[1]),
            lambda x: mp.expm1(x[1] * mp.log(x[0])) / x[1],
            (
                pt("pole", 1e-8, 0.5),
                pt("edge", 2.0, 1e-8),
                pt("huge", 1e200, 0.5),
                pt("control", 2.0, 0.5),
            ),
        ),
        Case(
            "special.boxcox1p",
            "special",
            lambda x: S.boxcox1p(x[0], x[1]),
            lambda x: mp.expm1(x[1] * mp.log1p(x[0])) / x[1],
            (pt("edge", 2.0, 1e-8), pt("tiny", 1e-8, 0.5), pt("control", 0.7, 0.3)),
        ),
    ]
    return out
