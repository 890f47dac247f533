"""Solver cases: optimistix (root_find, least_squares), lineax, diffrax.

The correct twins differentiate through the library's own adjoint (implicit
differentiation for optimistix and lineax; diffrax's adjoints). The buggy twins
replace that adjoint with a hand-written ``custom_vjp`` implicit-function rule
with one slip. The relative sizes quoted are ``||g_buggy - g_correct|| /
||g_correct||`` over each bad leaf at the registry's point.
"""

from __future__ import annotations

import diffrax
import jax
import jax.numpy as jnp
import lineax as lx
import optimistix as optx

from ._registry import normal, register, unary_jvp

# ---------------------------------------------------------------------------
# optimistix


def _implicit_root(residual, solve, *, adjoint_sign: float = 1.0):
    """``theta -> y*(theta)`` with ``residual(y*, theta) = 0``, differentiated by
    a hand-written implicit-function rule:

        theta_bar = -(d residual / d theta)^T lam,  (d residual / dy)^T lam = g.

    ``adjoint_sign=-1`` plants the classic slip: the minus sign is dropped.
    """

    @jax.custom_vjp
    def root(theta):
        return solve(theta)

    def fwd(theta):
        y = solve(theta)
        return y, (y, theta)

    def bwd(res, g):
        y, theta = res
        jac_y = jax.jacfwd(residual, argnums=0)(y, theta)
        lam = jnp.linalg.solve(jac_y.T, g)
        _, vjp_theta = jax.vjp(lambda t: residual(y, t), theta)
        (theta_bar,) = vjp_theta(-adjoint_sign * lam)
        return (theta_bar,)

    root.defvjp(fwd, bwd)
    return root


@register("optimistix-root_find-newton")
def _root_find():
    """A 3-d root of ``y + 0.5 tanh(W y + b) - u = 0`` by Newton; loss
    ``sum(c * sin(y*)) + 0.1 sum(u**2)``.

    Tolerance: rtol = atol = 1e-10. Newton converges quadratically: it stops
    after 5 steps with a residual of ~5e-17 (round-off), and step-1e-5
    differences of the loss then agree with the implicit gradient to 5e-11,
    far below the 1e-7 bar. (Here even 1e-4 would reach round-off, since the
    step that meets the tolerance squares the error; a linearly converging
    solver needs the tight tolerance, see the least-squares case.)

    Bug: the implicit rule drops the minus sign of the adjoint (theta_bar =
    +J_theta^T lam). Every parameter of the residual is bad (relative size 2,
    the sign flip; ['u'] too, its direct 0.2 u term is small).
    """
    solver = optx.Newton(rtol=1e-10, atol=1e-10)

    def residual(y, theta):
        return y + 0.5 * jnp.tanh(theta["W"] @ y + theta["b"]) - theta["u"]

    def solve(theta):
        y0 = jnp.zeros_like(theta["u"])
        return optx.root_find(residual, solver, y0, args=theta).value

    root_bad = _implicit_root(residual, solve, adjoint_sign=-1.0)
    c = normal(20, 3)

    def make(root):
        def f(p, c):
            return jnp.sum(c * jnp.sin(root(p))) + 0.1 * jnp.sum(p["u"] ** 2)

        return f

    params = {
        "W": normal(21, 3, 3, scale=0.6),
        "b": normal(22, 3, scale=0.3),
        "u": normal(23, 3),
    }
    f_ok = make(solve)
    f_bad = make(root_bad)
    return f_ok, f_bad, params, (c,), ("['W']", "['b']", "['u']")


@register("optimistix-least_squares-gauss_newton")
def _least_squares():
    """Fit ``m(t) = a exp(-k t) + d`` to noisy data ``obs`` with weights
    ``w`` by Gauss-Newton; loss ``a*^2 + k* + d*`` of the solution.

    Tolerance: Gauss-Newton converges linearly on a fit that leaves residuals,
    and any error left in the solution is divided by the step in a finite
    difference. At rtol = atol = 1e-13 (25 steps, the gradient of 0.5 |r|^2
    ~3e-15) step-1e-5 differences agree with the implicit gradient to 2e-9; at
    1e-8 only to 8e-8 (at the 1e-7 bar), at 1e-6 to 1e-5. (LevenbergMarquardt
    at 1e-13 leaves them 1e-4 apart on this fit, so it is not used here.)

    Bug: the hand-written implicit rule uses the Gauss-Newton Hessian ``J^T J``
    where the optimality condition ``J^T r = 0`` needs the full Hessian ``J^T J
    + sum_i r_i hess(r_i)``: a realistic shortcut, wrong wherever the fit leaves
    residuals. Bad leaves ['obs'] and ['w'] (relative sizes 0.18 each).
    """
    solver = optx.GaussNewton(rtol=1e-13, atol=1e-13)
    t = jnp.linspace(0.0, 3.0, 8)

    def residual(y, theta):
        a, k, d = y
        return theta["w"] * (a * jnp.exp(-k * t) + d - theta["obs"])

    def solve(theta):
        y0 = jnp.array([2.0, 1.0, 0.5])
        return optx.least_squares(residual, solver, y0, args=theta).value

    def grad_y(y, theta):
        # The optimality condition: the gradient of 0.5 ||r||^2 in y.
        r, vjp = jax.vjp(lambda z: residual(z, theta), y)
        return vjp(r)[0]

    @jax.custom_vjp
    def fit(theta):
        return solve(theta)

    def fwd(theta):
        y = solve(theta)
        return y, (y, theta)

    def bwd(res, g):
        y, theta = res
        jac = jax.jacfwd(residual, argnums=0)(y, theta)
        hess_gn = jac.T @ jac  # correct: jax.jacfwd(grad_y)(y, theta)
        lam = jnp.linalg.solve(hess_gn, g)
        _, vjp_theta = jax.vjp(lambda th: grad_y(y, th), theta)
        return vjp_theta(-lam)

    fit.defvjp(fwd, bwd)

    def make(fit):
        def f(p):
            a, k, d = fit(p)
            return a**2 + k + d

        return f

    obs = 2.0 * jnp.exp(-1.3 * t) + 0.5 + normal(28, 8, scale=0.3)
    params = {"obs": obs, "w": 1.0 + normal(25, 8, scale=0.2)}
    return make(solve), make(fit), params, (), ("['obs']", "['w']")


# ---------------------------------------------------------------------------
# lineax


@register("lineax-linear_solve-lu")
def _lineax_lu():
    """``x = A^-1 b`` with ``lx.linear_solve(MatrixLinearOperator(A), b, LU())``;
    loss ``sum(c * sin(x))``.

    Bug: the matrix cotangent is the transposed outer product ``-x lam^T``
    instead of ``-lam x^T`` (lam = A^-T g); the right-hand side's cotangent lam
    is right. Bad leaf ['A'] (relative size 0.48); ['b'] stays correct.
    """

    def lu_solve(a, b):
        return lx.linear_solve(lx.MatrixLinearOperator(a), b, lx.LU()).value

    @jax.custom_vjp
    def solve_bad(a, b):
        return lu_solve(a, b)

    def fwd(a, b):
        x = lu_solve(a, b)
        return x, (a, x)

    def bwd(res, g):
        a, x = res
        lam = lu_solve(a.T, g)
        return -jnp.outer(x, lam), lam  # correct: -jnp.outer(lam, x), lam

    solve_bad.defvjp(fwd, bwd)
    c = normal(30, 4)

    def make(solve):
        def f(p, c):
            return jnp.sum(c * jnp.sin(solve(p["A"], p["b"])))

        return f

    a = 2.0 * jnp.eye(4) + normal(31, 4, 4, scale=0.5)
    params = {"A": a, "b": normal(32, 4)}
    return make(lu_solve), make(solve_bad), params, (c,), ("['A']",)


@register("lineax-linear_solve-cg")
def _lineax_cg():
    """``x = (M M^T + I)^-1 b`` by conjugate gradients on a positive definite
    operator; loss ``sum(c * x) + 0.5 |x|^2``.

    Tolerance: CG at rtol = atol = 1e-12; on this 4x4 system (condition number
    4) it stops after 5 iterations at a residual of ~4e-16, i.e. it solves to
    round-off, so the finite differences see a smooth solution map. A larger
    or worse-conditioned system at a loose tolerance would leave solver error
    that the step of a finite difference amplifies.

    Bug: the operator is wrapped in ``lax.stop_gradient`` (a "constant
    preconditioner" that is not constant): bad leaf ['M'] (relative size 1, its
    gradient is zero); ['b'] stays correct.
    """
    solver = lx.CG(rtol=1e-12, atol=1e-12)

    def make(detach):
        def f(p, c):
            a = p["M"] @ p["M"].T + jnp.eye(4)
            if detach:
                a = jax.lax.stop_gradient(a)
            op = lx.MatrixLinearOperator(a, lx.positive_semidefinite_tag)
            x = lx.linear_solve(op, p["b"], solver).value
            return jnp.sum(c * x) + 0.5 * jnp.sum(x**2)

        return f

    params = {"M": normal(33, 4, 4, scale=0.6), "b": normal(34, 4)}
    c = normal(35, 4)
    return make(False), make(True), params, (c,), ("['M']",)


# ---------------------------------------------------------------------------
# diffrax

# 1 - tanh where 1 - tanh**2 belongs: a custom_jvp with a wrong derivative.
_tanh_bad = unary_jvp(jnp.tanh, lambda x, y: 1 - y)


def _ode_loss(adjoint, act):
    """``y' = 0.8 tanh(W y + b) - k * y`` on [0, 1] from a fixed y0 (Tsit5);
    loss ``exp(s) * sum(c * y(1))``."""

    def vector_field(t, y, p):
        return 0.8 * act(p["W"] @ y + p["b"]) - p["k"] * y

    term = diffrax.ODETerm(vector_field)

    def f(p, y0, c):
        sol = diffrax.diffeqsolve(
            term,
            diffrax.Tsit5(),
            t0=0.0,
            t1=1.0,
            dt0=0.05,
            y0=y0,
            args=p,
            stepsize_controller=diffrax.ConstantStepSize(),
            adjoint=adjoint,
        )
        return jnp.exp(p["s"]) * jnp.sum(c * sol.ys[-1])

    return f


def _ode_case(adjoint):
    params = {
        "W": normal(40, 3, 3, scale=0.7),
        "b": normal(41, 3, scale=0.3),
        "k": 0.5 + 0.1 * normal(42, 3),
        "s": normal(43, scale=0.2),
    }
    args = (normal(44, 3), normal(45, 3))
    bad = ("['W']", "['b']", "['k']")
    return (
        _ode_loss(adjoint, jnp.tanh),
        _ode_loss(adjoint, _tanh_bad),
        params,
        args,
        bad,
    )


@register("diffrax-recursive_checkpoint")
def _ode_recursive():
    """RecursiveCheckpointAdjoint differentiates the discrete solve exactly.

    Tolerance: a constant step (dt = 0.05, Tsit5, 20 steps) makes the solution a
    smooth function of the parameters, and this adjoint's gradient is exact for
    it. An adaptive controller would not do: diffrax stops gradients through
    its step-size factors, so jax.grad would ignore how the steps move while
    the finite differences see them move (and the accepted-step count can
    change between x - h and x + h): the check would compare two different
    things, off by about the controller's tolerance divided by the step.

    Bug: the vector field's tanh has a custom_jvp with derivative ``1 - tanh``
    (not ``1 - tanh**2``). Bad leaves ['W'], ['b'] (relative sizes 0.7) and
    ['k'] (0.38, through the adjoint state); ['s'] stays correct.
    """
    return _ode_case(diffrax.RecursiveCheckpointAdjoint())


@register("diffrax-backsolve")
def _ode_backsolve():
    """BacksolveAdjoint solves the continuous adjoint ODE backwards: its gradient
    is the continuous one, while the finite differences see the discrete forward
    solve, so the two differ by the discretisation error.

    Tolerance: Tsit5 (order 5) at dt = 0.05 on [0, 1] keeps that difference
    below 1e-10 relative per coordinate (measured 7e-11), far under the 1e-7
    bar; dt = 0.1 gives 3e-9 and dt = 0.25 gives 6e-7, which would fail a
    correct gradient. (An adaptive controller is avoided for the reason given
    in the recursive-checkpoint case.)

    Bug: as for the recursive-checkpoint case.
    """
    return _ode_case(diffrax.BacksolveAdjoint())
