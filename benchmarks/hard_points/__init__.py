"""Hard-but-valid points of real JAX functions, with 50-digit reference gradients.

The registry behind ``benchmarks/bench_hard_points.py``: each case is a scalar
float64 function of a small array (special functions, elementwise ``jnp``
functions, ``jax.nn`` activations, ``jax.scipy.stats`` densities, ``jnp.linalg``
and ``jax.scipy.linalg``), the same function written with mpmath, and the points
where finite differences are hard: tiny and huge magnitudes, poles and domain
edges within a step, ill-conditioned matrices, near-degenerate spectra. Nothing
here is part of the jaxcheck package.
"""

from __future__ import annotations

from hard_points.cases import Case, Point, all_cases

__all__ = ["Case", "Point", "all_cases"]
