"""The ecosystem registry itself, checked without jaxcheck.

For every case: the two twins compute the same value; the correct twin's
``jax.grad`` matches a Richardson-extrapolated float64 finite difference of our
own along a random direction of every leaf; and the buggy twin's gradient
differs from the correct one by more than 1% on exactly the bad leaves and not
at all elsewhere. (test_ecosystem.py holds the checks of jaxcheck itself; this
module never changes outcome with jaxcheck, so it can be left out while working
on the checker: ``pytest tests/ecosystem/test_ecosystem.py``.)
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxcheck.engine.memory import compile_options

from . import (  # noqa: F401  (importing a case module registers its cases)
    cases_equinox,
    cases_flax,
    cases_linalg,
    cases_optax,
    cases_solvers,
)
from ._registry import (
    REGISTRY,
    directional_fd,
    leaf_rel_diff,
    on_floats,
    rel,
    to_float64,
)

cases = pytest.mark.parametrize("case", REGISTRY, ids=lambda c: c.name)

# XLA options that compile quickly on a CPU (as jaxcheck compiles small checks):
# these programs run once, on a few hundred numbers.
QUICK = dict(compile_options(jax.default_backend(), 0.0)) or None

# A planted bug must change its leaves' gradient by more than this (relative,
# over the leaf); the smallest registered one changes its leaf by ~4%
# (equinox-gru_cell-f32, bias_n).
MIN_BUG = 1e-2


def test_registry_names_are_unique_and_cover_the_libraries():
    names = [c.name for c in REGISTRY]
    assert len(names) == len(set(names))
    libraries = {n.split("-")[0] for n in names}
    assert {
        "optimistix",
        "lineax",
        "diffrax",
        "optax",
        "flax_linen",
        "flax_nnx",
        "equinox",
        "linalg",
    } <= libraries


@cases
def test_twins_are_what_they_claim(case, built):
    """The registry itself, checked without jaxcheck."""
    f_correct, f_buggy, params, args, bad_leaf_paths = built(case)
    # Where the library computes in float32 inside: float32-sized tolerances and
    # a larger finite-difference step.
    if case.float32_inside:
        fd_tol, same_tol, eps, step = 1e-4, 1e-5, 1.2e-7, 1e-2
    else:
        fd_tol, same_tol, eps, step = 1e-6, 1e-9, 2.2e-16, 1e-3
    with jax.enable_x64(True):
        params, args = to_float64(params), to_float64(args)
        paths, floats, g_correct = on_floats(f_correct, params)
        _, _, g_buggy = on_floats(f_buggy, params)
        assert bad_leaf_paths is None or set(bad_leaf_paths) <= set(paths)
        # One compilation per twin: value and gradient together.
        vg_correct = jax.jit(jax.value_and_grad(g_correct), compiler_options=QUICK)
        value, grad_correct = vg_correct(floats, *args)
        vg_buggy = jax.jit(jax.value_and_grad(g_buggy), compiler_options=QUICK)
        value_buggy, grad_buggy = vg_buggy(floats, *args)
        # On the host: what follows is arithmetic on them, not JAX's to compile.
        grad_correct = [np.asarray(g, np.float64) for g in grad_correct]
        grad_buggy = [np.asarray(g, np.float64) for g in grad_buggy]
        value = float(value)
        assert np.isfinite(value)
        assert rel(value, float(value_buggy)) <= same_tol

        def f_value(floats, *args):
            return vg_correct(floats, *args)[0]

        # Round-off of the finite difference (generous: 100 ulps of f per step).
        noise = 100 * eps * abs(value) / step
        # "Unchanged" is judged against the whole gradient's size, so that a
        # leaf whose true gradient is zero (an attention key bias) is not held to
        # a relative bar on its rounding noise.
        scale = float(np.sqrt(sum(np.sum(np.square(g)) for g in grad_correct)))
        rng = np.random.default_rng(0)
        for i, path in enumerate(paths):
            v = rng.standard_normal(floats[i].shape)
            base = np.asarray(floats[i])

            def point(t, i=i, v=v, base=base):
                return [base + t * v if j == i else x for j, x in enumerate(floats)]

            numeric = directional_fd(f_value, point, args, h=step)
            analytic = float(np.sum(grad_correct[i] * v))
            err = abs(numeric - analytic)
            assert err <= fd_tol * abs(analytic) + noise, (path, analytic, numeric)

            if bad_leaf_paths is None:
                continue
            if path in bad_leaf_paths:
                change = leaf_rel_diff(grad_correct[i], grad_buggy[i])
                assert change > MIN_BUG, (path, change)
            else:
                diff = float(np.linalg.norm(grad_correct[i] - grad_buggy[i]))
                assert diff <= same_tol * scale, (path, diff, scale)
