"""Cases of ``jax.scipy.stats`` log-densities and distribution functions."""

from __future__ import annotations

import jax.numpy as jnp
import jax.scipy.stats as st
import mpmath as mp
import numpy as np

from hard_points.cases import Case, Point, pt
from hard_points.special import mp_ndtri

G = "stats"


def _log_sqrt_2pi():
    return mp.log(2 * mp.pi) / 2


def _norm_logpdf(x):
    z = (x[0] - x[1]) / x[2]
    return -(z**2) / 2 - mp.log(x[2]) - _log_sqrt_2pi()


def _t_logpdf(x):
    v, df = x
    return (
        mp.loggamma((df + 1) / 2)
        - mp.loggamma(df / 2)
        - mp.log(df * mp.pi) / 2
        - (df + 1) / 2 * mp.log1p(v**2 / df)
    )


def _beta_logpdf(x):
    v, a, b = x
    return (a - 1) * mp.log(v) + (b - 1) * mp.log1p(-v) - mp.log(mp.beta(a, b))


def _chi2_logpdf(x):
    v, k = x
    return (k / 2 - 1) * mp.log(v) - v / 2 - k / 2 * mp.log(2) - mp.loggamma(k / 2)


def _gennorm_logpdf(x):
    v, b = x
    return mp.log(b) - mp.log(2) - mp.loggamma(1 / b) - abs(v) ** b


def _truncnorm_logpdf(x):
    v, a, b = x
    return -(v**2) / 2 - _log_sqrt_2pi() - mp.log(mp.ncdf(b) - mp.ncdf(a))


MVN_X = np.array([0.7, -0.4])
MVN_MEAN = np.array([0.1, 0.2])


def _mvn_logpdf(c):
    c = (c + c.T) / 2
    d = mp.matrix([mp.mpf(float(a - b)) for a, b in zip(MVN_X, MVN_MEAN, strict=True)])
    q = (d.T * mp.lu_solve(c, d))[0, 0]
    return -q / 2 - mp.log(mp.det(c)) / 2 - 2 * _log_sqrt_2pi()


def _spd2(eigs: tuple[float, float], angle: float = 0.6) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    q = np.array([[c, -s], [s, c]])
    a = q @ np.diag(eigs) @ q.T
    return (a + a.T) / 2


DIRICHLET_X = np.array([0.2, 0.3, 0.5])


def _dirichlet_logpdf(al):
    xs = [mp.mpf(float(v)) for v in DIRICHLET_X]
    return (
        mp.fsum((a - 1) * mp.log(v) for a, v in zip(al, xs, strict=True))
        + mp.loggamma(mp.fsum(al))
        - mp.fsum(mp.loggamma(a) for a in al)
    )


def _lbeta(a, b):
    return mp.loggamma(a) + mp.loggamma(b) - mp.loggamma(a + b)


def cases() -> list[Case]:
    """The statistics cases."""
    out = [
        Case(
            "stats.norm.logpdf",
            G,
            lambda x: st.norm.logpdf(x[0], x[1], x[2]),
            _norm_logpdf,
            (
                pt("huge", 1e8, 0.0, 1.0),
                pt("huge", 1e100, 0.0, 1.0),
                pt("pole", 0.3, 0.0, 1e-8),
                pt("control", 0.3, -0.2, 1.5),
            ),
        ),
        Case(
            "stats.norm.cdf",
            G,
            lambda x: st.norm.cdf(x[0], x[1], x[2]),
            lambda x: mp.ncdf((x[0] - x[1]) / x[2]),
            (
                pt("tail", -30.0, 0.0, 1.0),
                pt("curvature", 0.3, 0.3 - 1e-8, 1e-6),
                pt("control", 0.3, -0.2, 1.5),
            ),
        ),
        Case(
            "stats.norm.logsf",
            G,
            lambda x: st.norm.logsf(x[0]),
            lambda x: mp.log(mp.ncdf(-x[0])),
            (pt("tail", 40.0), pt("huge", 1e8), pt("control", 0.3)),
        ),
        Case(
            "stats.norm.ppf",
            G,
            lambda x: st.norm.ppf(x[0]),
            lambda x: mp_ndtri(x[0]),
            (
                pt("pole", 1e-300),
                pt("pole", 1 - 1e-8, label="x=1-1e-8"),
                pt("control", 0.3),
            ),
            mp_grad=lambda x: [1 / mp.npdf(mp_ndtri(x[0]))],
        ),
        Case(
            "stats.t.logpdf",
            G,
            lambda x: st.t.logpdf(x[0], x[1]),
            _t_logpdf,
            (
                pt("huge", 1e8, 3.0),
                pt("tiny", 1e-8, 3.0),
                pt("huge", 0.5, 1e8),
                pt("pole", 0.5, 1e-8),
                pt("control", 0.7, 4.5),
            ),
        ),
        Case(
            "stats.gamma.logpdf",
            G,
            lambda x: st.gamma.logpdf(x[0], x[1]),
            lambda x: (x[1] - 1) * mp.log(x[0]) - x[0] - mp.loggamma(x[1]),
            (
                pt("pole", 1e-8, 0.5),
                pt("huge", 1e8, 2.0),
                pt("huge", 1e200, 2.0),
                pt("pole", 1.5, 1e-8),
                pt("control", 2.5, 3.0),
            ),
        ),
        Case(
            "stats.gamma.cdf",
            G,
            lambda x: st.gamma.cdf(x[0], x[1]),
            lambda x: mp.gammainc(x[1], 0, x[0], regularized=True),
            (
                pt("pole", 1e-8, 0.5),
                pt("curvature", 100.0, 100.0),
                pt("control", 2.5, 3.0),
            ),
        ),
        Case(
            "stats.beta.logpdf",
            G,
            lambda x: st.beta.logpdf(x[0], x[1], x[2]),
            _beta_logpdf,
            (
                pt("pole", 1e-8, 0.5, 2.0),
                pt("pole", 1 - 1e-8, 2.0, 0.5, label="x=(1-1e-8, 2.0, 0.5)"),
                pt("pole", 0.3, 1e-8, 2.0),
                pt("control", 0.3, 2.0, 3.0),
            ),
        ),
        Case(
            "stats.beta.cdf[x]",
            G,
            lambda x, a, b: st.beta.cdf(x[0], a, b),
            lambda x, a, b: mp.betainc(a, b, 0, x[0], regularized=True),
            (
                pt("pole", 1e-8, args=(0.5, 2.0)),
                pt("curvature", 0.01, args=(1.5, 200.0)),
                pt("control", 0.3, args=(2.0, 3.0)),
            ),
        ),
        Case(
            "stats.poisson.logpmf[mu]",
            G,
            lambda x: st.poisson.logpmf(3, x[0]),
            lambda x: 3 * mp.log(x[0]) - x[0] - mp.log(6),
            (pt("pole", 1e-8), pt("huge", 1e8), pt("control", 2.5)),
        ),
        Case(
            "stats.poisson.cdf[mu]",
            G,
            lambda x: st.poisson.cdf(3, x[0]),
            lambda x: mp.gammainc(4, x[0], mp.inf, regularized=True),
            (pt("tiny", 1e-8), pt("tail", 100.0), pt("control", 2.5)),
        ),
        Case(
            "stats.expon.cdf",
            G,
            lambda x: st.expon.cdf(x[0]),
            lambda x: -mp.expm1(-x[0]),
            (pt("tiny", 1e-8), pt("tail", 40.0), pt("control", 0.7)),
        ),
        Case(
            "stats.laplace.logpdf",
            G,
            lambda x: st.laplace.logpdf(x[0]),
            lambda x: -abs(x[0]) - mp.log(2),
            (pt("edge", 1e-8), pt("control", 0.7)),
        ),
        Case(
            "stats.logistic.logpdf",
            G,
            lambda x: st.logistic.logpdf(x[0]),
            lambda x: -x[0] - 2 * mp.log1p(mp.exp(-x[0])),
            (
                pt("tail", 40.0),
                pt("tail", -40.0),
                pt("huge", 1e8),
                pt("huge", -1e200),
                pt("control", 0.7),
            ),
        ),
        Case(
            "stats.logistic.cdf",
            G,
            lambda x: st.logistic.cdf(x[0]),
            lambda x: 1 / (1 + mp.exp(-x[0])),
            (pt("tail", -700.0), pt("control", 0.7)),
        ),
        Case(
            "stats.cauchy.logpdf",
            G,
            lambda x: st.cauchy.logpdf(x[0], x[1], x[2]),
            lambda x: -mp.log(mp.pi * x[2]) - mp.log1p(((x[0] - x[1]) / x[2]) ** 2),
            (
                pt("huge", 1e8, 0.0, 1.0),
                pt("pole", 3e-8, 0.0, 1e-8),
                pt("control", 0.3, 0.1, 2.0),
            ),
        ),
        Case(
            "stats.cauchy.ppf",
            G,
            lambda x: st.cauchy.ppf(x[0]),
            lambda x: mp.tan(mp.pi * (x[0] - mp.mpf(1) / 2)),
            (pt("pole", 1 - 1e-8, label="x=1-1e-8"), pt("control", 0.3)),
        ),
        Case(
            "stats.chi2.logpdf",
            G,
            lambda x: st.chi2.logpdf(x[0], x[1]),
            _chi2_logpdf,
            (
                pt("pole", 1e-8, 3.0),
                pt("huge", 1e3, 1e3),
                pt("control", 2.0, 3.0),
            ),
        ),
        Case(
            "stats.chi2.cdf",
            G,
            lambda x: st.chi2.cdf(x[0], x[1]),
            lambda x: mp.gammainc(x[1] / 2, 0, x[0] / 2, regularized=True),
            (pt("pole", 1e-8, 1.0), pt("control", 2.0, 3.0)),
        ),
        Case(
            "stats.pareto.logpdf",
            G,
            lambda x: st.pareto.logpdf(x[0], x[1]),
            lambda x: mp.log(x[1]) - (x[1] + 1) * mp.log(x[0]),
            (
                pt("edge", 1 + 1e-8, 2.0, label="x=(1+1e-8, 2.0)"),
                pt("huge", 1e200, 2.0),
                pt("control", 2.5, 3.0),
            ),
        ),
        Case(
            "stats.gennorm.logpdf",
            G,
            lambda x: st.gennorm.logpdf(x[0], x[1]),
            _gennorm_logpdf,
            (pt("edge", 1e-8, 1.5), pt("pole", 0.7, 1e-8), pt("control", 0.7, 1.5)),
        ),
        Case(
            "stats.vonmises.logpdf",
            G,
            lambda x: st.vonmises.logpdf(x[0], x[1]),
            lambda x: x[1] * mp.cos(x[0]) - mp.log(2 * mp.pi * mp.besseli(0, x[1])),
            (pt("tiny", 0.3, 1e-8), pt("tail", 0.3, 700.0), pt("control", 0.3, 2.0)),
        ),
        Case(
            "stats.truncnorm.logpdf",
            G,
            lambda x: st.truncnorm.logpdf(x[0], x[1], x[2]),
            _truncnorm_logpdf,
            (
                pt("edge", 0.5, 0.5 - 1e-8, 2.0, label="x=(0.5, 0.5-1e-8, 2.0)"),
                pt("tail", -30.5, -31.0, -30.0),
                pt("control", 0.3, -1.0, 2.0),
            ),
        ),
        Case(
            "stats.multivariate_normal.logpdf[cov]",
            G,
            lambda c: st.multivariate_normal.logpdf(
                jnp.asarray(MVN_X), jnp.asarray(MVN_MEAN), c
            ),
            _mvn_logpdf,
            (
                Point(_spd2((2.0, 0.7)), "control", "cov eig (2, 0.7)", cond=2.0 / 0.7),
                Point(
                    _spd2((1.0, 1e-8)), "ill-conditioned", "cov eig (1, 1e-8)", cond=1e8
                ),
                Point(
                    _spd2((1.0, 1e-12)),
                    "ill-conditioned",
                    "cov eig (1, 1e-12)",
                    cond=1e12,
                ),
            ),
            cond_sensitive=True,
        ),
        Case(
            "stats.dirichlet.logpdf[alpha]",
            G,
            lambda a: st.dirichlet.logpdf(jnp.asarray(DIRICHLET_X), a),
            _dirichlet_logpdf,
            (
                pt("pole", 1e-8, 1.0, 2.0),
                pt("huge", 1e8, 1e8, 1e8),
                pt("control", 0.5, 1.5, 2.5),
            ),
            floor=1e-3,
        ),
        Case(
            "stats.nbinom.logpmf[n,p]",
            G,
            lambda x: st.nbinom.logpmf(3, x[0], x[1]),
            lambda x: (
                mp.loggamma(3 + x[0])
                - mp.loggamma(x[0])
                - mp.log(6)
                + x[0] * mp.log(x[1])
                + 3 * mp.log1p(-x[1])
            ),
            (
                pt("pole", 1e-8, 0.5),
                pt("pole", 2.0, 1 - 1e-8, label="x=(2.0, 1-1e-8)"),
                pt("control", 2.5, 0.3),
            ),
        ),
        Case(
            "stats.binom.logpmf[p]",
            G,
            lambda x: st.binom.logpmf(3, 10, x[0]),
            lambda x: (
                mp.log(mp.binomial(10, 3)) + 3 * mp.log(x[0]) + 7 * mp.log1p(-x[0])
            ),
            (
                pt("pole", 1e-8),
                pt("pole", 1 - 1e-8, label="x=1-1e-8"),
                pt("control", 0.4),
            ),
        ),
        Case(
            "stats.geom.logpmf[p]",
            G,
            lambda x: st.geom.logpmf(3, x[0]),
            lambda x: 2 * mp.log1p(-x[0]) + mp.log(x[0]),
            (
                pt("pole", 1e-8),
                pt("pole", 1 - 1e-8, label="x=1-1e-8"),
                pt("control", 0.3),
            ),
        ),
        Case(
            "stats.betabinom.logpmf[a,b]",
            G,
            lambda x: st.betabinom.logpmf(3, 10, x[0], x[1]),
            lambda x: (
                mp.log(mp.binomial(10, 3))
                + _lbeta(3 + x[0], 7 + x[1])
                - _lbeta(x[0], x[1])
            ),
            (pt("pole", 1e-8, 2.0), pt("huge", 1e8, 1e8), pt("control", 1.5, 2.5)),
        ),
        Case(
            "stats.gumbel_r.logpdf",
            G,
            lambda x: st.gumbel_r.logpdf(x[0]),
            lambda x: -(x[0] + mp.exp(-x[0])),
            (pt("tail", -700.0), pt("huge", 1e8), pt("control", 0.4)),
        ),
        Case(
            "stats.wrapcauchy.logpdf",
            G,
            lambda x: st.wrapcauchy.logpdf(x[0], x[1]),
            lambda x: (
                mp.log(1 - x[1] ** 2)
                - mp.log(2 * mp.pi)
                - mp.log(1 + x[1] ** 2 - 2 * x[1] * mp.cos(x[0]))
            ),
            (
                pt("pole", 0.3, 1 - 1e-8, label="x=(0.3, 1-1e-8)"),
                pt("control", 0.3, 0.5),
            ),
        ),
    ]
    return out
