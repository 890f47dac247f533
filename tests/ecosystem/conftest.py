"""Shared fixture of the ecosystem tests: every case is built once per session."""

from __future__ import annotations

import jax
import pytest

from ._registry import Case, Made


@pytest.fixture(scope="session")
def built():
    """``built(case)`` -> ``case.make()``, built once per session (inside
    ``jax.enable_x64``, so that float64 parameters stay float64) and shared by
    the tests of that case."""
    cache: dict[str, Made] = {}

    def get(case: Case) -> Made:
        if case.name not in cache:
            with jax.enable_x64(True):
                cache[case.name] = case.make()
        return cache[case.name]

    return get
