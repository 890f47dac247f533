"""Test-session settings."""

import os

# `cli.main` runs in-process in these tests; keep it from turning on JAX's
# process-wide persistent compilation cache (tests/test_cli.py covers the cache
# in a subprocess of its own).
os.environ["JAXCHECK_NO_CACHE"] = "1"


def pytest_collection_modifyitems(config, items):
    """The tests marked ``slow`` (a notebook, a subprocess, a training run:
    several seconds each) run first: with xdist's work stealing the short ones
    then fill in at the end, instead of one worker idling while the other
    finishes a long test."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
