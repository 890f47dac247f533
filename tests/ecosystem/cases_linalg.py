"""jnp.linalg / jax.scipy cases: det, inv, solve, slogdet, norm, eigh, expm.

Each buggy twin routes one library call through a hand-written ``custom_vjp``
whose backward makes a classic matrix-calculus slip. The relative sizes quoted
are ``||g_buggy - g_correct|| / ||g_correct||`` over the bad leaf, measured at
the registry's point (tests/ecosystem/test_ecosystem.py re-measures them).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.scipy as jsp

from ._registry import normal, register, vjp_rule

# A well-conditioned, clearly non-symmetric 3x3 matrix (singular values 1..4),
# so that a missing transpose changes the gradient by O(1).
_A = [[3.0, 1.2, -0.4], [-0.7, 2.1, 0.9], [0.5, -1.3, 2.6]]


def _mat():
    with jax.enable_x64(True):
        return jnp.asarray(_A, jnp.float64)


@register("linalg-det")
def _det():
    """det(A) * exp(s); bug: dA = g det(A) inv(A) (the transpose is missing).

    Bad leaf ['A'], relative size 0.87; ['s'] (its gradient uses the forward
    value only) stays correct.
    """
    det_bad = vjp_rule(
        jnp.linalg.det,
        lambda xs, out, g: (g * out * jnp.linalg.inv(xs[0]),),
    )

    def make(det):
        def f(p):
            return det(p["A"]) * jnp.exp(p["s"])

        return f

    params = {"A": _mat(), "s": normal(1, scale=0.3)}
    return make(jnp.linalg.det), make(det_bad), params, (), ("['A']",)


@register("linalg-inv")
def _inv():
    """<inv(A), C>; bug: dA = -inv(A) G inv(A) (both transposes missing).

    Bad leaf ['A'], relative size 1.0.
    """

    def inv_bwd(xs, out, g):
        return (-out @ g @ out,)  # correct: -out.T @ g @ out.T

    inv_bad = vjp_rule(jnp.linalg.inv, inv_bwd)
    c = normal(2, 3, 3)

    def make(inv):
        def f(p, c):
            return jnp.sum(inv(p["A"]) * c) + jnp.sum(p["b"] ** 2)

        return f

    params = {"A": _mat(), "b": normal(3, 3)}
    return make(jnp.linalg.inv), make(inv_bad), params, (c,), ("['A']",)


@register("linalg-solve")
def _solve():
    """sum(c * sin(solve(A, b))); bug: the adjoint solve uses A, not A.T.

    Both leaves depend on the adjoint ``lam = A^-T g``: bad leaves ['A'] and
    ['b'], relative sizes 1.1 each.
    """

    def solve_bwd(xs, out, g):
        a, _ = xs
        lam = jnp.linalg.solve(a, g)  # correct: jnp.linalg.solve(a.T, g)
        return -jnp.outer(lam, out), lam

    solve_bad = vjp_rule(jnp.linalg.solve, solve_bwd)
    c = normal(4, 3)

    def make(solve):
        def f(p, c):
            return jnp.sum(c * jnp.sin(solve(p["A"], p["b"])))

        return f

    params = {"A": _mat(), "b": normal(5, 3)}
    return make(jnp.linalg.solve), make(solve_bad), params, (c,), ("['A']", "['b']")


@register("linalg-slogdet")
def _slogdet():
    """log|det(A)| + logdet(M M^T + I) via slogdet; bug: the SPD log-determinant's
    backward forgets the 2 of ``2 sum(log(diag(chol)))`` (a x0.5 factor).

    Bad leaf ['M'] (relative size 0.5 exactly); ['A'] goes through plain slogdet.
    """

    def logdet_spd(s):
        return 2.0 * jnp.sum(jnp.log(jnp.diag(jnp.linalg.cholesky(s))))

    logdet_bad = vjp_rule(
        logdet_spd,
        lambda xs, out, g: (0.5 * g * jnp.linalg.inv(xs[0]),),  # correct: g inv(S)
    )

    def make(logdet):
        def f(p):
            s = p["M"] @ p["M"].T + jnp.eye(3)
            return jnp.linalg.slogdet(p["A"])[1] + logdet(s)

        return f

    params = {"A": _mat(), "M": normal(6, 3, 3, scale=0.7)}
    return (
        make(lambda s: jnp.linalg.slogdet(s)[1]),
        make(logdet_bad),
        params,
        (),
        ("['M']",),
    )


@register("linalg-norm")
def _norm():
    """exp(s) ||W x + b - y||_2 + 0.3 ||W||_2 (spectral norm, through an SVD);
    bug: the vector norm's backward is ``0.5 g r / ||r||`` (a dropped factor 2).

    Bad leaves ['W'] (relative size 0.32) and ['b'] (0.5); ['s'] is correct.
    """
    norm_bad = vjp_rule(
        jnp.linalg.norm,
        lambda xs, out, g: (0.5 * g * xs[0] / out,),  # correct: g * r / ||r||
    )
    x, y = normal(7, 3), normal(8, 4)

    def make(norm):
        def f(p, x, y):
            r = p["W"] @ x + p["b"] - y
            return jnp.exp(p["s"]) * norm(r) + 0.3 * jnp.linalg.norm(p["W"], ord=2)

        return f

    params = {
        "W": normal(9, 4, 3, scale=0.8),
        "b": normal(10, 4, scale=0.5),
        "s": normal(11, scale=0.2),
    }
    return make(jnp.linalg.norm), make(norm_bad), params, (x, y), ("['W']", "['b']")


@register("linalg-eigh")
def _eigh():
    """Eigenvalues and eigenvectors of sym(S) + diag(0, 2, 5) (a well separated
    spectrum, so that the eigenvector derivatives, which divide by eigenvalue
    gaps, are tame). Loss: sum(c * w) + sum_i d_i v_i^T B v_i (sign-invariant).

    Bug: the eigenvalues' backward is ``V^T diag(g) V`` (rows for columns)
    instead of ``V diag(g) V^T``: bad leaf ['S'], relative size 0.06 (the
    eigenvector term, which is right, carries most of its gradient); ['c'] stays
    correct.
    """

    def eigvals_bwd(xs, out, g):
        _, v = jnp.linalg.eigh(xs[0])
        return (v.T @ jnp.diag(g) @ v,)  # correct: v @ jnp.diag(g) @ v.T

    eigvals_bad = vjp_rule(lambda a: jnp.linalg.eigh(a)[0], eigvals_bwd)
    b = normal(12, 3, 3)
    b = b + b.T
    d = normal(13, 3)

    def make(eigvals):
        def f(p, b, d):
            a = 0.5 * (p["S"] + p["S"].T) + jnp.diag(jnp.array([0.0, 2.0, 5.0]))
            w = eigvals(a)
            _, v = jnp.linalg.eigh(a)
            quad = jnp.einsum("ji,jk,ki->i", v, b, v)
            return jnp.sum(p["c"] * w) + jnp.sum(d * quad)

        return f

    params = {"S": normal(14, 3, 3, scale=0.3), "c": normal(15, 3)}
    return (
        make(lambda a: jnp.linalg.eigh(a)[0]),
        make(eigvals_bad),
        params,
        (b, d),
        ("['S']",),
    )


@register("jsp-expm")
def _expm():
    """sum(C * expm(A / 2)) with jax.scipy.linalg.expm (Pade approximant with
    scaling and squaring: the number of squarings is picked from ||A||_1, a
    piecewise choice; at this point ||A/2||_1 ~ 2.3 stays well inside one piece).

    Bug: the backward returns ``expm(A)^T G`` (the first-order term of the
    Frechet derivative only, a realistic shortcut): bad leaf ['A'], relative size
    0.64.
    """

    def expm_bwd(xs, out, g):
        return (out.T @ g,)

    expm_bad = vjp_rule(jsp.linalg.expm, expm_bwd)
    c = normal(16, 3, 3)

    def make(expm):
        def f(p, c):
            return jnp.sum(c * expm(p["A"] / 2))

        return f

    return make(jsp.linalg.expm), make(expm_bad), {"A": _mat()}, (c,), ("['A']",)
