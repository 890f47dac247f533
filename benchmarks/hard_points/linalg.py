"""Cases of ``jnp.linalg`` and ``jax.scipy.linalg`` on 3x3 (and 3x2) matrices.

Matrices with prescribed singular values or eigenvalues are built as
``U diag(s) V^T`` with fixed random orthogonal factors, in float64; the point is
the float64 matrix itself (its exact spectrum differs from ``s`` by ~1e-16).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import jax.scipy.linalg as SL
import mpmath as mp
import numpy as np

from hard_points.cases import Case, Point, mp_weighted, weights

G = "linalg"
EPS = float(np.finfo(np.float64).eps)


def _orth(n: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def from_svals(s, seed: int = 1, shape: tuple[int, int] = (3, 3)) -> np.ndarray:
    """A matrix with singular values ``s`` (descending or not)."""
    m, n = shape
    u = _orth(m, seed)[:, : len(s)]
    v = _orth(n, seed + 100)[:, : len(s)]
    return (u * np.asarray(s, dtype=np.float64)) @ v.T


def from_eigs(e, seed: int = 2) -> np.ndarray:
    """A symmetric matrix with eigenvalues ``e`` (exactly symmetric in float64)."""
    q = _orth(len(e), seed)
    a = (q * np.asarray(e, dtype=np.float64)) @ q.T
    return (a + a.T) / 2


def _cond(a: np.ndarray) -> float:
    s = np.linalg.svd(a, compute_uv=False)
    return float(s[0] / s[-1])


def _gap_cond(values) -> float:
    """``max |value| / min gap``: the conditioning of eigen/singular vectors."""
    v = np.sort(np.asarray(values, dtype=np.float64))
    return float(np.max(np.abs(v)) / np.min(np.diff(v)))


def mpt(a: np.ndarray, kind: str, label: str, cond: float | None = None) -> Point:
    """A matrix point; ``cond`` defaults to the 2-norm condition number."""
    return Point(np.asarray(a, dtype=np.float64), kind, label, (), cond or _cond(a))


# ---- the standard points ---------------------------------------------------------

GENERAL = {
    "control": lambda: mpt(
        from_svals([3.0, 1.5, 0.7]), "control", "svals (3, 1.5, 0.7)"
    ),
    "ill8": lambda: mpt(
        from_svals([1.0, 1e-4, 1e-8]), "ill-conditioned", "svals (1, 1e-4, 1e-8)"
    ),
    "ill12": lambda: mpt(
        from_svals([1.0, 1e-6, 1e-12]), "ill-conditioned", "svals (1, 1e-6, 1e-12)"
    ),
    "smallsv": lambda: mpt(
        from_svals([2.0, 1.0, 1e-7]), "small-sv", "svals (2, 1, 1e-7)"
    ),
    "huge": lambda: mpt(
        1e100 * from_svals([3.0, 1.5, 0.7]), "huge", "1e100 * svals (3, 1.5, 0.7)"
    ),
    "tiny": lambda: mpt(
        1e-100 * from_svals([3.0, 1.5, 0.7]), "tiny", "1e-100 * svals (3, 1.5, 0.7)"
    ),
    "degsv": lambda: mpt(
        from_svals([2.0, 1.0 + 1e-6, 1.0]),
        "degenerate",
        "svals (2, 1+1e-6, 1)",
        cond=_gap_cond([2.0, 1.0 + 1e-6, 1.0]),
    ),
    "degsv3": lambda: mpt(
        from_svals([2.0, 1.0 + 1e-3, 1.0]),
        "degenerate",
        "svals (2, 1+1e-3, 1)",
        cond=_gap_cond([2.0, 1.0 + 1e-3, 1.0]),
    ),
    "degtop": lambda: mpt(
        from_svals([1.0 + 1e-6, 1.0, 0.5]),
        "degenerate",
        "svals (1+1e-6, 1, 0.5)",
        cond=_gap_cond([1.0 + 1e-6, 1.0, 0.5]),
    ),
}

SYM = {
    "control": lambda: mpt(from_eigs([-1.0, 0.5, 2.0]), "control", "eigs (-1, 0.5, 2)"),
    "deg6": lambda: mpt(
        from_eigs([1.0, 1.0 + 1e-6, 3.0]),
        "degenerate",
        "eigs (1, 1+1e-6, 3)",
        cond=_gap_cond([1.0, 1.0 + 1e-6, 3.0]),
    ),
    "deg3": lambda: mpt(
        from_eigs([1.0, 1.0 + 1e-3, 3.0]),
        "degenerate",
        "eigs (1, 1+1e-3, 3)",
        cond=_gap_cond([1.0, 1.0 + 1e-3, 3.0]),
    ),
    "ill12": lambda: mpt(
        from_eigs([1.0, 1e-6, 1e-12]), "ill-conditioned", "eigs (1, 1e-6, 1e-12)"
    ),
    "huge": lambda: mpt(
        1e100 * from_eigs([-1.0, 0.5, 2.0]), "huge", "1e100 * eigs (-1, 0.5, 2)"
    ),
}

SPD = {
    "control": lambda: mpt(from_eigs([3.0, 1.5, 0.7]), "control", "eigs (3, 1.5, 0.7)"),
    "ill8": lambda: mpt(
        from_eigs([1.0, 1e-4, 1e-8]), "ill-conditioned", "eigs (1, 1e-4, 1e-8)"
    ),
    "ill12": lambda: mpt(
        from_eigs([1.0, 1e-6, 1e-12]), "ill-conditioned", "eigs (1, 1e-6, 1e-12)"
    ),
    "smallsv": lambda: mpt(
        from_eigs([2.0, 1.0, 1e-7]), "small-sv", "eigs (2, 1, 1e-7)"
    ),
}

TALL = {
    "control": lambda: mpt(
        from_svals([2.0, 0.8], shape=(3, 2)), "control", "3x2, svals (2, 0.8)"
    ),
    "ill8": lambda: mpt(
        from_svals([1.0, 1e-8], shape=(3, 2)), "ill-conditioned", "3x2, svals (1, 1e-8)"
    ),
    "smallsv": lambda: mpt(
        from_svals([1.0, 1e-7], shape=(3, 2)), "small-sv", "3x2, svals (1, 1e-7)"
    ),
}


def _points(table: dict, *keys: str, **kinds: str) -> tuple[Point, ...]:
    """The named points of ``table``; ``kinds`` re-labels some (``ill12="small-sv"``)
    where the hard part for this function is not the one the table names."""
    out = []
    for k in keys:
        p = table[k]()
        if k in kinds:
            p = dataclasses.replace(p, kind=kinds[k])
        out.append(p)
    return tuple(out)


def _lower(a: np.ndarray) -> np.ndarray:
    return np.tril(a)


LOWER = {
    "control": lambda: mpt(
        _lower(from_svals([3.0, 1.5, 0.7])) + np.diag([2.0, 1.5, 1.0]),
        "control",
        "lower triangular, diag ~ (2, 1.5, 1)",
    ),
    "ill8": lambda: mpt(
        np.tril(np.full((3, 3), 0.5))
        - np.diag([0.5, 0.5, 0.5])
        + np.diag([1, 1e-4, 1e-8]),
        "ill-conditioned",
        "lower triangular, diag (1, 1e-4, 1e-8)",
    ),
}

# ---- mpmath helpers ----------------------------------------------------------------


def _sym(a):
    return (a + a.T) / 2


def _mat(rows) -> mp.matrix:
    return mp.matrix([[mp.mpf(float(v)) for v in r] for r in np.atleast_2d(rows)])


def _eigh(a):
    """Eigenvalues ascending and eigenvectors (columns) of the symmetrized ``a``."""
    e, q = mp.eigsy(_sym(a))
    order = sorted(range(len(e)), key=lambda i: e[i])
    return [e[i] for i in order], [q[:, i] for i in order]


def _svd(a):
    """Singular values descending with their left/right vectors (as columns)."""
    u, s, v = mp.svd_r(a)
    order = sorted(range(len(s)), key=lambda i: -s[i])
    return [s[i] for i in order], [u[:, i] for i in order], [v[i, :].T for i in order]


def _dot(a, b):
    return mp.fsum(a[i] * b[i] for i in range(len(a)))


def _entries(m) -> list:
    return [m[i, j] for i in range(m.rows) for j in range(m.cols)]


def cases() -> list[Case]:
    """The linear-algebra cases."""
    w33 = weights((3, 3), "linalg33")
    w23 = weights((2, 3), "linalg23")
    w3 = weights((3,), "linalg3")
    w2 = weights((2,), "linalg2")
    b3 = np.array([0.3, -1.1, 0.7])
    c3 = np.array([0.48, -0.6, 0.64])
    bmat = np.array([[0.9, -0.2, 0.4], [0.1, 0.7, -0.5], [-0.3, 0.6, 0.8]])
    mb3, mc3, mbm = _mat([b3]).T, _mat([c3]).T, _mat(bmat)
    general = ("control", "ill8", "ill12", "smallsv", "huge", "tiny")

    def mp_solve(a, b):
        return mp.lu_solve(a, b)

    out = [
        Case(
            "linalg.det",
            G,
            lambda a: jnp.linalg.det(a),
            lambda a: mp.det(a),
            _points(GENERAL, *general),
            cond_sensitive=True,
        ),
        Case(
            "linalg.slogdet",
            G,
            lambda a: jnp.linalg.slogdet(a)[1],
            lambda a: mp.log(abs(mp.det(a))),
            _points(GENERAL, *general),
            cond_sensitive=True,
        ),
        Case(
            "linalg.inv[weighted]",
            G,
            lambda a: jnp.sum(w33 * jnp.linalg.inv(a)),
            lambda a: mp_weighted(w33, mp.inverse(a)),
            _points(GENERAL, *general),
            cond_sensitive=True,
        ),
        Case(
            "linalg.solve[weighted, wrt A]",
            G,
            lambda a: jnp.sum(w3 * jnp.linalg.solve(a, jnp.asarray(b3))),
            lambda a: mp_weighted(w3, _entries(mp_solve(a, mb3))),
            _points(GENERAL, "control", "ill8", "ill12", "smallsv"),
            cond_sensitive=True,
        ),
        Case(
            "linalg.cholesky[weighted]",
            G,
            lambda a: jnp.sum(w33 * jnp.linalg.cholesky(a)),
            lambda a: mp_weighted(w33, mp.cholesky(_sym(a))),
            _points(SPD, "control", "ill8", "ill12", "smallsv"),
            cond_sensitive=True,
        ),
        Case(
            "linalg.eigh[eigenvalues, weighted]",
            G,
            lambda a: jnp.sum(w3 * jnp.linalg.eigh(a)[0]),
            lambda a: mp_weighted(w3, _eigh(a)[0]),
            _points(SYM, "control", "deg6", "ill12", "huge", ill12="degenerate"),
        ),
        Case(
            "linalg.eigh[eigenvectors, sum w_i (c.v_i)^2]",
            G,
            lambda a: jnp.sum(w3 * (jnp.asarray(c3) @ jnp.linalg.eigh(a)[1]) ** 2),
            lambda a: mp_weighted(w3, [_dot(mc3, v) ** 2 for v in _eigh(a)[1]]),
            _points(SYM, "control", "deg3", "deg6"),
            cond_sensitive=True,
        ),
        Case(
            "linalg.svdvals[weighted]",
            G,
            lambda a: jnp.sum(w3 * jnp.linalg.svd(a, compute_uv=False)),
            lambda a: mp_weighted(w3, _svd(a)[0]),
            _points(
                GENERAL,
                "control",
                "degsv",
                "smallsv",
                "ill12",
                "huge",
                "tiny",
                ill12="small-sv",
            ),
        ),
        Case(
            "linalg.svd[vectors, sum w_i u_i^T B v_i]",
            G,
            lambda a: (
                lambda usv: jnp.sum(
                    w3 * jnp.einsum("ji,jk,ik->i", usv[0], jnp.asarray(bmat), usv[2])
                )
            )(jnp.linalg.svd(a, full_matrices=False)),
            lambda a: (
                lambda s_u_v: mp_weighted(
                    w3,
                    [
                        (u.T * mbm * v)[0, 0]
                        for u, v in zip(s_u_v[1], s_u_v[2], strict=True)
                    ],
                )
            )(_svd(a)),
            _points(GENERAL, "control", "degsv3", "degsv", "smallsv"),
            cond_sensitive=True,
        ),
        Case(
            "linalg.norm[2]",
            G,
            lambda a: jnp.linalg.norm(a, 2),
            lambda a: _svd(a)[0][0],
            _points(GENERAL, "control", "degtop", "huge"),
        ),
        Case(
            "linalg.norm[fro]",
            G,
            lambda a: jnp.linalg.norm(a, "fro"),
            lambda a: mp.sqrt(mp.fsum(v**2 for v in _entries(a))),
            (
                GENERAL["control"](),
                mpt(1e150 * from_svals([3.0, 1.5, 0.7]), "huge", "1e150 * svals"),
                mpt(1e-150 * from_svals([3.0, 1.5, 0.7]), "tiny", "1e-150 * svals"),
            ),
        ),
        Case(
            "linalg.norm[nuc]",
            G,
            lambda a: jnp.linalg.norm(a, "nuc"),
            lambda a: mp.fsum(_svd(a)[0]),
            _points(GENERAL, "control", "smallsv", "degsv"),
        ),
        Case(
            "linalg.pinv[weighted, 3x2]",
            G,
            lambda a: jnp.sum(w23 * jnp.linalg.pinv(a)),
            lambda a: mp_weighted(w23, mp.inverse(a.T * a) * a.T),
            _points(TALL, "control", "ill8", "smallsv"),
            cond_sensitive=True,
        ),
        Case(
            "linalg.lstsq[weighted, 3x2]",
            G,
            lambda a: jnp.sum(w2 * jnp.linalg.lstsq(a, jnp.asarray(b3))[0]),
            lambda a: mp_weighted(w2, _entries(mp.lu_solve(a.T * a, a.T * mb3))),
            _points(TALL, "control", "ill8"),
            cond_sensitive=True,
        ),
        Case(
            "linalg.matrix_power[3, weighted]",
            G,
            lambda a: jnp.sum(w33 * jnp.linalg.matrix_power(a, 3)),
            lambda a: mp_weighted(w33, a * a * a),
            (
                GENERAL["control"](),
                mpt(1e90 * from_svals([3.0, 1.5, 0.7]), "huge", "1e90 * svals"),
                GENERAL["ill12"](),
            ),
        ),
        Case(
            "linalg.expm[weighted]",
            G,
            lambda a: jnp.sum(w33 * SL.expm(a)),
            lambda a: mp_weighted(w33, mp.expm(a)),
            (
                GENERAL["control"](),
                mpt(1e-8 * from_svals([3.0, 1.5, 0.7]), "tiny", "1e-8 * svals"),
                mpt(10 * from_svals([3.0, 1.5, 0.7]), "huge", "10 * svals (norm 30)"),
                SYM["deg6"](),
            ),
        ),
        Case(
            "linalg.qr[sum W R^2]",
            G,
            lambda a: jnp.sum(w33 * jnp.linalg.qr(a)[1] ** 2),
            lambda a: mp_weighted(w33, [v**2 for v in _entries(mp.qr(a)[1])]),
            _points(GENERAL, "control", "ill8", "smallsv"),
            cond_sensitive=True,
        ),
        Case(
            "linalg.cond",
            G,
            lambda a: jnp.linalg.cond(a),
            lambda a: (lambda s: s[0] / s[-1])(_svd(a)[0]),
            _points(GENERAL, "control", "smallsv", "degsv"),
            cond_sensitive=True,
        ),
        Case(
            "linalg.solve_triangular[weighted, lower]",
            G,
            lambda a: jnp.sum(w3 * SL.solve_triangular(a, jnp.asarray(b3), lower=True)),
            lambda a: mp_weighted(
                w3,
                _entries(
                    mp.lu_solve(
                        mp.matrix(
                            [
                                [a[i, j] if j <= i else 0 for j in range(3)]
                                for i in range(3)
                            ]
                        ),
                        mb3,
                    )
                ),
            ),
            _points(LOWER, "control", "ill8"),
            cond_sensitive=True,
        ),
        Case(
            "linalg.polar[U, svd method, weighted]",
            G,
            lambda a: jnp.sum(w33 * SL.polar(a, method="svd")[0]),
            lambda a: mp_weighted(w33, _polar_u(_svd(a))),
            _points(GENERAL, "control", "smallsv", "degsv"),
            cond_sensitive=True,
        ),
    ]
    return out


def _polar_u(s_u_v):
    _, us, vs = s_u_v
    n = us[0].rows
    m = vs[0].rows
    out = mp.matrix(n, m)
    for u, v in zip(us, vs, strict=True):
        out += u * v.T
    return out
