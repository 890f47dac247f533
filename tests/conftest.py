"""Test-session settings."""

import os

# `cli.main` runs in-process in these tests; keep it from turning on JAX's
# process-wide persistent compilation cache (tests/test_cli.py covers the cache
# in a subprocess of its own).
os.environ["JAXCHECK_NO_CACHE"] = "1"

# XLA's older CPU code generator for fused operations: it compiles the many
# small programs of a test session (each eager `jnp` operation, each reference
# gradient, each test's data, in the tests and in the notebook kernels and
# commands they start) about 1.5x as fast. The numbers the tests see are the
# same (the README's printed reports, to the last digit). jaxcheck's own
# programs of small and medium checks use it already
# (`jaxcheck.engine.memory.compile_options`); XLA reads the variable once, when
# JAX starts its first backend.
QUICK_XLA_FLAG = "--xla_cpu_use_fusion_emitters=false"
if QUICK_XLA_FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        f"{os.environ.get('XLA_FLAGS', '')} {QUICK_XLA_FLAG}".strip()
    )


def pytest_collection_modifyitems(config, items):
    """The tests marked ``slow`` (a notebook, a subprocess, a training run:
    several seconds each) run first: with xdist's work stealing the short ones
    then fill in at the end, instead of one worker idling while the other
    finishes a long test. The tests of one ecosystem case (its twins checked,
    strict, buggy, and the registry's own check) run one after another, so
    that they tend to share a worker, its built case and JAX's caches (the
    ecosystem tests alone: 31.7-33.1 s against 34.6-34.7 s)."""
    first: dict[str, int] = {}
    order = {}
    for n, item in enumerate(items):
        spec = getattr(item, "callspec", None)
        case = (
            spec.id if spec is not None and "ecosystem" in item.nodeid else item.nodeid
        )
        order[item.nodeid] = (first.setdefault(case, n), n)
    items.sort(
        key=lambda item: (
            item.get_closest_marker("slow") is None,
            order[item.nodeid],
        )
    )
