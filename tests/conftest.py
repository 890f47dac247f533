"""Test-session settings."""

import os

# `cli.main` runs in-process in these tests; keep it from turning on JAX's
# process-wide persistent compilation cache (tests/test_cli.py covers the cache
# in a subprocess of its own).
os.environ["JAXCHECK_NO_CACHE"] = "1"
