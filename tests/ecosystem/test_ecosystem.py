"""Trust on real code: correct and planted-bug twins on the ecosystem's libraries.

For every case of the registry (optimistix, lineax, diffrax, optax, flax linen
and nnx, equinox, jnp.linalg / jax.scipy; see _registry.py):

* the correct twin passes ``jaxcheck.check_grads``, and with ``strict=True`` too;
* the buggy twin fails, at exactly the leaves its bug changes;
* no check raises.

The registry itself is validated without jaxcheck in test_registry.py.
"""

from __future__ import annotations

import pytest

import jaxcheck

from . import (  # noqa: F401  (importing a case module registers its cases)
    cases_equinox,
    cases_flax,
    cases_linalg,
    cases_optax,
    cases_solvers,
)
from ._registry import REGISTRY

cases = pytest.mark.parametrize("case", REGISTRY, ids=lambda c: c.name)


@cases
def test_correct_twin_passes(case, built):
    f_correct, _, params, args, _ = built(case)
    report = jaxcheck.check_grads(f_correct, params, *args, coords=case.coords)
    assert report.passed, str(report)


@cases
def test_correct_twin_passes_strict(case, built):
    f_correct, _, params, args, _ = built(case)
    report = jaxcheck.check_grads(
        f_correct, params, *args, coords=case.coords, strict=True
    )
    assert report.passed, str(report)


@cases
def test_buggy_twin_fails_at_its_leaves(case, built):
    _, f_buggy, params, args, bad_leaf_paths = built(case)
    report = jaxcheck.check_grads(f_buggy, params, *args, coords=case.coords)
    assert not report.passed, str(report)
    if bad_leaf_paths is not None:
        failing = [leaf.path for leaf in report.leaves if not leaf.passed]
        assert sorted(failing) == sorted(bad_leaf_paths), str(report)
