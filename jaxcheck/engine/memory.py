"""Memory: the budget of a check and how many rows fit in one batch."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from .cache import avals_of, cached
from .cluster import num_shards

PyTree = Any

#: Largest chunk (coordinates per vmapped batch). On a CPU, larger chunks only
#: add memory traffic (every perturbed copy of the leaf is written and read).
MAX_CHUNK_CPU = 256
#: ... but batches below this size pay per-batch overhead (fewer, larger copies
#: were still faster at 1e5 parameters: chunks of 8 beat chunks of 1 and 4).
MIN_CHUNK_CPU = 8
MAX_CHUNK_ACCELERATOR = 8192
#: On a CPU, keep one chunk's working set around this size: it then stays in
#: cache (measured on a 2-core CPU: chunks of 8 perturbed copies of a 75 kB leaf
#: ran 2.3x faster than chunks of 128).
CPU_CHUNK_TARGET_BYTES = 2 << 20
#: At most this many chunks per compiled call; longer leaves take several calls
#: (this bounds the padding wasted on the last call and lets progress show).
CHUNKS_PER_CALL = 64


def _nbytes(aval: Any) -> int:
    shape = getattr(aval, "shape", None)
    dtype = getattr(aval, "dtype", None)
    if shape is None or dtype is None:
        return 0
    try:
        itemsize = np.dtype(dtype).itemsize
    except TypeError:
        itemsize = 8
    return int(math.prod(shape)) * itemsize


def jaxpr_bytes(jaxpr: Any) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        total += sum(_nbytes(v.aval) for v in eqn.outvars)
        for param in eqn.params.values():
            inner = getattr(param, "jaxpr", param)
            if hasattr(inner, "eqns"):
                total += jaxpr_bytes(inner)
    return total


#: Elementwise primitives that cost far more per element than a multiply-add:
#: on a CPU (float64, XLA level 1) sin takes 10x the time of ``x * c``, cos 9x,
#: pow 11x, atan 12x, exp 5.5x, log 6x, erf 6x, lgamma 26x (tanh 1.6x and the
#: logistic 2.3x are vectorized, and not in the set).
TRANSCENDENTAL = frozenset(
    {"sin", "cos", "tan", "asin", "acos", "atan", "atan2", "sinh", "cosh", "asinh",
     "acosh", "atanh", "exp", "exp2", "expm1", "log", "log1p", "pow", "erf", "erfc",
     "erf_inv", "lgamma", "digamma", "igamma", "igammac", "polygamma", "zeta",
     "bessel_i0e", "bessel_i1e", "regularized_incomplete_beta", "cbrt"}
)  # fmt: skip
#: The weight of :data:`TRANSCENDENTAL` elements in the dense work that decides
#: whether a leaf is large enough for propagation to pay (``check_grads``'
#: planning and :data:`jaxcheck.propagate.MIN_DENSE_WORK`); not in the compile
#: tiers, which were measured in plain element counts. In dense rows, ``sin(w) * w``
#: of 8,000 coordinates took 12 ns per element of sin; the dots of a tanh MLP
#: 0.12 ns per multiply-add. Checks of ``sum(sin(w) * w)`` in fresh processes,
#: dense against propagated: 0.29 s / 0.32 s at 2,000 coordinates, 0.84 s /
#: 0.37 s at 4,000; this weight puts the crossover between the two.
TRANSCENDENTAL_COST = 100


def _eqn_work(eqn: Any, transcendental: int = 1) -> int:
    """Multiply-adds of a contraction, else the number of elements produced
    (times ``transcendental`` for the primitives of :data:`TRANSCENDENTAL`)."""
    out = sum(math.prod(getattr(v.aval, "shape", ())) for v in eqn.outvars)
    name = eqn.primitive.name
    if name in TRANSCENDENTAL:
        return out * transcendental
    if name == "dot_general":
        (lc, _), _ = eqn.params["dimension_numbers"]
        lhs = eqn.invars[0].aval.shape
        return out * max(1, math.prod(lhs[a] for a in lc))
    if name == "conv_general_dilated":
        rhs_spec = eqn.params["dimension_numbers"][1]
        w = eqn.invars[1].aval.shape
        return out * max(1, math.prod(w[a] for a in rhs_spec[1:]))
    return out


#: The trip count guessed for a ``while`` loop, whose trip count is unknown
#: until it runs, where a cost must be estimated before (see
#: :func:`work_estimate`).
LOOP_TRIPS_GUESS = 100


def work_estimate(work: int, bounded: bool) -> float:
    """What :func:`jaxpr_work` returned, with a ``while`` loop guessed to run
    :data:`LOOP_TRIPS_GUESS` times: the cost that decides how to plan and
    compile a check.

    Examples:
      >>> def f(x):
      ...     step = lambda c: (c[0] + 1, c[1] * 2)
      ...     return jax.lax.while_loop(lambda c: c[0] < 5, step, (0, x))[1]
      >>> found = jaxpr_work(jax.make_jaxpr(f)(jnp.ones(8)).jaxpr)
      >>> found, work_estimate(*found)
      ((10, False), 1000.0)
    """
    return float(work if bounded else work * LOOP_TRIPS_GUESS)


def jaxpr_work(jaxpr: Any, transcendental: int = 1) -> tuple[int, bool]:
    """Estimated work of one evaluation of ``jaxpr`` (multiply-adds of dots and
    convolutions, elements produced by everything else, ``transcendental``
    each for those of :data:`TRANSCENDENTAL`) and whether it is an upper bound
    (no ``while`` loop, whose trip count is unknown, counted once).

    Examples:
      >>> jx = jax.make_jaxpr(lambda a, b: jnp.sum(jnp.tanh(a @ b)))
      >>> jaxpr_work(jx(jnp.ones((4, 8)), jnp.ones((8, 3))).jaxpr)
      (109, True)
      >>> jx = jax.make_jaxpr(lambda a: jnp.sum(jnp.sin(a)))(jnp.ones(8)).jaxpr
      >>> jaxpr_work(jx), jaxpr_work(jx, transcendental=30)
      ((9, True), (241, True))
    """
    total, bounded = 0, True
    for eqn in jaxpr.eqns:
        inner = [getattr(p, "jaxpr", p) for p in eqn.params.values()]
        inner += [
            getattr(b, "jaxpr", b)
            for p in eqn.params.values()
            if isinstance(p, tuple)
            for b in p
        ]
        subs = [j for j in inner if hasattr(j, "eqns")]
        if not subs:
            total += _eqn_work(eqn, transcendental)
            continue
        works = [jaxpr_work(j, transcendental) for j in subs]
        bounded = bounded and all(b for _, b in works)
        name = eqn.primitive.name
        if name == "cond":
            total += max(w for w, _ in works)
        elif name == "scan":
            total += int(eqn.params.get("length", 1)) * sum(w for w, _ in works)
        else:
            total += sum(w for w, _ in works)
            bounded = bounded and name != "while"
    return total, bounded


def bytes_per_coordinate(
    fn: Callable[..., Any],
    x_flat: jax.Array,
    dyn_params: Sequence[Any],
    dyn_args: Sequence[Any],
) -> int:
    """Estimated bytes that one perturbed coordinate (two evaluations) needs.

    Sums the sizes of every intermediate value in the jaxpr of ``fn`` (an upper
    bound on what is live at once) plus the perturbed copy of the leaf, for
    ``f(x + h e_i)`` and ``f(x - h e_i)``.

    Args:
      fn: the function of the flattened leaf.
      x_flat: the leaf, flattened.
      dyn_params: the dynamic parameter leaves.
      dyn_args: the dynamic argument leaves.

    Returns:
      bytes, at least 16.

    Examples:
      >>> from jaxcheck.engine.leaf import LeafFunction
      >>> fn = LeafFunction(lambda p: jnp.sum(p ** 2), jax.tree_util.tree_structure(0.0),
      ...                   1, {}, jax.tree_util.tree_structure(()), 0, {}, 0, (3,))
      >>> bytes_per_coordinate(fn, jnp.ones(3), [jnp.ones(3)], []) > 0
      True
    """

    def compute() -> int:
        closed = jax.make_jaxpr(fn)(x_flat, dyn_params, dyn_args)
        per_eval = jaxpr_bytes(closed.jaxpr) + _nbytes(x_flat)
        return 2 * max(per_eval, 8)

    return cached(("bytes", fn, avals_of((x_flat, dyn_params, dyn_args))), compute)


_CACHE: dict[Any, Any] = {}


def default_memory_budget(device: Any | None = None) -> int:
    """The default memory budget of a check, in bytes, for ``device``.

    On an accelerator: a quarter of the memory the device has free. On a CPU:
    an eighth of the machine's physical memory, at most 2 GiB.

    Args:
      device: a JAX device; default the first one.

    Returns:
      bytes.

    Examples:
      >>> default_memory_budget() > 0
      True
    """
    device = jax.local_devices()[0] if device is None else device
    stats = None
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - some backends do not implement it
        stats = None
    if stats and "bytes_limit" in stats:
        free = int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
        return max(free // 4, 1 << 20)
    try:
        phys = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        phys = 8 << 30
    return int(min(2 << 30, phys // 8))


def choose_chunk_size(
    per_coordinate_bytes: int,
    num_coords: int,
    memory_budget: int,
    platform: str,
) -> int:
    """Coordinates per vmapped batch: as many as fit in the budget, capped.

    Args:
      per_coordinate_bytes: from :func:`bytes_per_coordinate`.
      num_coords: how many coordinates the leaf has to check.
      memory_budget: bytes one batch may use.
      platform: ``"cpu"``, ``"gpu"``, ``"tpu"``.

    Returns:
      a power of two.

    Examples:
      >>> choose_chunk_size(1_000, 10_000, 1 << 30, "cpu")
      256
      >>> choose_chunk_size(1 << 20, 10_000, 1 << 30, "cpu")
      8
      >>> choose_chunk_size(1 << 20, 10_000, 2 << 20, "cpu")  # the budget wins
      2
    """
    fit = max(1, memory_budget // max(per_coordinate_bytes, 1))
    if platform == "cpu":
        cap = min(MAX_CHUNK_CPU, CPU_CHUNK_TARGET_BYTES // per_coordinate_bytes)
        cap = max(cap, MIN_CHUNK_CPU)
    else:
        cap = MAX_CHUNK_ACCELERATOR
    chunk = int(min(fit, cap, max(num_coords, 1)))
    # Round down to a power of two so that similar leaves share compilations;
    # spread over several devices, every device gets a chunk of that size (the
    # same computation, and the same numbers bit for bit, as on one device).
    chunk = 1 << (chunk.bit_length() - 1)
    return chunk * num_shards()


#: On a CPU, a check whose main pass does less work than this (multiply-adds,
#: see :func:`memory.jaxpr_work`) is compiled with LLVM's optimizations off and
#: without XLA's fusion emitters: compiling takes about 3x less time, running
#: 3-5x more, and below this size the run is a small part of the cold call.
QUICK_COMPILE_WORK = 2.5e8
#: Up to this much work, LLVM optimizes at level 1 (fusion emitters off):
#: compiling takes ~0.15 s less than at the default level and the program runs
#: as fast. Measured on tanh MLPs (64, w, 10), batch 16, in fresh processes
#: (check s, quick / level 1 / default): w=16 (4.9e7 work) 0.23 / 0.41 / 0.54;
#: w=40 (3.0e8) 0.50 / 0.45 / 0.58; w=64 (7.6e8) 0.58 / 0.51 / 0.64;
#: w=96 (1.7e9) 1.29 / 0.63 / 0.81; w=400 (8.3e9) - / 2.04 / 2.49.
LIGHT_COMPILE_WORK = 1e11


class tiered_jit:  # noqa: N801 - used like jax.jit
    """``tiered_jit(fun, **jit_kwargs)(options)``: ``fun`` jitted with the XLA
    ``options`` of :func:`compile_options`, one jitted function (and cache of
    compilations) per set of options, kept in ``variants``.

    Examples:
      >>> square = tiered_jit(lambda x: x * x)
      >>> float(square(compile_options("cpu", 1e3))(3.0)), square(()) is square(())
      (9.0, True)
      >>> len(square.variants)
      2
    """

    def __init__(self, fun: Callable[..., Any], **jit_kwargs: Any):
        self.fun, self.jit_kwargs = fun, jit_kwargs
        self.variants: dict[tuple, Any] = {}

    def __call__(self, options: tuple) -> Any:
        if options not in self.variants:
            self.variants[options] = jax.jit(
                self.fun, compiler_options=dict(options) or None, **self.jit_kwargs
            )
        return self.variants[options]


def compile_options(platform: str, work: float) -> tuple:
    """XLA options for a check program: quicker compilation for CPU checks
    whose (estimated, see :func:`work_estimate`) work is small enough.

    With ``while`` loops (the optimistix and diffrax cases of ``tests/ecosystem``:
    6e4-1.2e5 work guessed per evaluation) the check program compiled and ran
    0.6-1.2 s faster at level 0 than at XLA's defaults, and ran as fast warm.

    Examples:
      >>> compile_options("cpu", 1e6)
      (('xla_backend_optimization_level', 0), ('xla_cpu_use_fusion_emitters', False))
      >>> compile_options("cpu", 1e9)
      (('xla_backend_optimization_level', 1), ('xla_cpu_use_fusion_emitters', False))
      >>> compile_options("cpu", 1e12), compile_options("gpu", 1e6)
      ((), ())
    """
    if platform != "cpu" or work >= LIGHT_COMPILE_WORK:
        return ()
    level = 0 if work < QUICK_COMPILE_WORK else 1
    return (
        ("xla_backend_optimization_level", level),
        ("xla_cpu_use_fusion_emitters", False),
    )
