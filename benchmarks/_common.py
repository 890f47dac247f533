"""Shared helpers of the benchmark scripts: problems, timers, tables, machine info.

Nothing here is part of the jaxcheck package; the scripts import it by path.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxcheck import examples

BATCH = 16
DIM = 64
NUM_CLASSES = 10
RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


@dataclasses.dataclass(frozen=True)
class Problem:
    """The benchmark model: a one-hidden-layer tanh MLP with a softmax loss."""

    sizes: tuple[int, ...]
    params: Any  # list of {"W", "b"} dicts, float64
    x: jax.Array
    y: jax.Array

    @property
    def n(self) -> int:
        return examples.num_params(self.params)

    @property
    def hidden(self) -> int:
        return self.sizes[1]


def make_problem(target_params: int, *, seed: int = 0) -> Problem:
    """The MLP of about ``target_params`` parameters, in float64.

    Must be called inside ``jax.enable_x64(True)``.
    """
    sizes = examples.mlp_sizes_for(target_params, dim=DIM, num_classes=NUM_CLASSES)
    params = examples.mlp_init(sizes, seed=seed, dtype=jnp.float64)
    x, y = examples.classification_batch(BATCH, DIM, NUM_CLASSES, dtype=jnp.float64)
    return Problem(tuple(sizes), params, x, y)


def block(tree: Any) -> Any:
    """Waits for every array in ``tree``; returns ``tree``."""
    return jax.block_until_ready(tree)


@dataclasses.dataclass(frozen=True)
class Timing:
    """Repeated wall-clock timings of one thing."""

    times: tuple[float, ...]
    estimated: bool = False
    note: str = ""

    @property
    def best(self) -> float:
        return min(self.times)

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def time_once(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Seconds taken by ``fn()`` (its arrays waited for) and its result."""
    t0 = time.perf_counter()
    out = block(fn())
    return time.perf_counter() - t0, out


def time_repeated(fn: Callable[[], Any], repeats: int) -> tuple[Timing, Any]:
    """``repeats`` timings of ``fn()``; returns them and the last result."""
    times = []
    out = None
    for _ in range(max(1, repeats)):
        t, out = time_once(fn)
        times.append(t)
    return Timing(tuple(times)), out


def time_per_call(
    fn: Callable[[], Any], *, max_calls: int, min_seconds: float, repeats: int
) -> tuple[float, int]:
    """Best-of-``repeats`` seconds per call of ``fn()``, each repeat running
    enough calls (at most ``max_calls``) to last about ``min_seconds``.

    Returns the seconds per call and the number of calls per repeat.
    """
    single, _ = time_once(fn)
    calls = int(min(max_calls, max(1, -(-min_seconds // max(single, 1e-9)))))
    best = float("inf")
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        out = None
        for _ in range(calls):
            out = fn()
        block(out)
        best = min(best, (time.perf_counter() - t0) / calls)
    return best, calls


def fmt_s(t: float | None, *, estimated: bool = False) -> str:
    """Seconds with 3 significant digits; ``~`` marks an extrapolated value."""
    if t is None:
        return "n/a"
    if t >= 100:
        s = f"{t:.0f}"
    elif t >= 0.01:
        s = f"{t:.3g}"
    else:
        s = f"{t:.2e}"
    return ("~" + s) if estimated else s


def fmt_ratio(num: float | None, den: float | None, *, estimated: bool = False) -> str:
    if num is None or den is None or den <= 0:
        return "n/a"
    r = num / den
    s = f"{r:.1f}x" if r >= 10 else f"{r:.2f}x"
    return ("~" + s) if estimated else s


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        padded = (c.ljust(w) for c, w in zip(cells, widths, strict=True))
        return "| " + " | ".join(padded) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


def git_revision(short: bool = True) -> tuple[str, bool] | None:
    """``(HEAD, whether jaxcheck/ has local changes)`` of the checkout, or None
    outside git."""
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def git(*cmd: str) -> str:
        return subprocess.run(
            ["git", *cmd], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        head = git("rev-parse", *(["--short"] if short else []), "HEAD")
        dirty = bool(git("status", "--porcelain", "--", "jaxcheck"))
    except (OSError, subprocess.CalledProcessError):
        return None
    return head, dirty


def git_state() -> str:
    """``HEAD`` of the checkout and whether ``jaxcheck/`` has local changes."""
    rev = git_revision()
    if rev is None:
        return "git n/a"
    return f"jaxcheck at {rev[0]}" + (" + local changes" if rev[1] else "")


def machine_info() -> str:
    parts = [
        f"{platform.processor() or platform.machine()}",
        f"{os.cpu_count()} CPUs",
        f"python {platform.python_version()}",
        f"jax {jax.__version__}",
        f"backend {jax.default_backend()}",
    ]
    try:
        import torch

        parts.append(f"torch {torch.__version__} ({torch.get_num_threads()} threads)")
    except ImportError:
        parts.append("torch not installed")
    return ", ".join(parts)


def cpu_busy(interval: float = 1.0) -> float:
    """Fraction of the machine's CPU time that was busy over ``interval`` s."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        idle = values[3] + values[4]  # idle + iowait
        return sum(values), idle

    try:
        total0, idle0 = sample()
        time.sleep(interval)
        total1, idle1 = sample()
    except OSError:
        return float("nan")
    return 1.0 - (idle1 - idle0) / max(total1 - total0, 1)


def wait_for_quiet(max_wait: float, threshold: float = 0.15) -> float:
    """Waits (up to ``max_wait`` s) until the CPUs are idle for 3 s in a row.

    Other processes on a 2-core machine distort every timing; this is the
    cheapest defence. Returns the busy fraction of the last second sampled.
    """
    deadline = time.monotonic() + max_wait
    quiet = 0
    busy = cpu_busy()
    while time.monotonic() < deadline:
        quiet = quiet + 1 if busy < threshold else 0
        if quiet >= 3:
            break
        busy = cpu_busy()
    return busy


def load_note() -> str:
    try:
        one, five, _ = os.getloadavg()
    except OSError:
        return "load n/a"
    return f"load avg {one:.2f} (1 min), {five:.2f} (5 min)"


def write_result(name: str, text: str) -> str:
    """Writes ``text`` to ``benchmarks/results/<name>`` and returns the path."""
    os.makedirs(RESULTS_DIR, exist_ok=True)
    path = os.path.join(RESULTS_DIR, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def parse_sizes(text: str) -> list[int]:
    """``"1e3,11000,1e5"`` -> ``[1000, 11000, 100000]``."""
    return [int(float(s)) for s in text.split(",") if s.strip()]
