"""Tracing time of jaxcheck's jaxpr interpreters (no compilation, no runs).

Run from the root of each tree to compare (alternate them on a busy machine)::

    python benchmarks/bench_interpret.py             # 7 repeats
    python benchmarks/bench_interpret.py --repeats 3

For every model of ``tests/test_propagate.py`` (MLP, CNNs, attention,
embedding, ...) it times, in float64:

* ``analyze``: the static kink analysis ``kinks.analyze_jaxpr``;
* ``pair``: tracing ``kinks.evaluate_pair`` (winner tracking of two points);
* ``capture``: tracing the activation capture of the training monitors;
* ``plan``: ``propagate.propagation_plan`` for every floating leaf (its plan
  cache emptied first);
* ``block``: tracing ``propagate.propagated_block`` for every floating leaf.

Each item is the best of ``--repeats``; the line printed sums them per kind.
The numbers only compare interpreters: tracing JAX itself dominates them.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import jax.tree_util as jtu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, ROOT)
jax.config.update("jax_enable_x64", True)

import test_propagate  # noqa: E402

import jaxcheck  # noqa: E402
from jaxcheck import engine, kinks, propagate  # noqa: E402
from jaxcheck.training import _capture  # noqa: E402


def _items() -> list[tuple[tuple, Callable[[], Any]]]:
    """(label, thunk) for every timed item."""
    items = []
    for name, make in test_propagate.MODELS.items():
        f, params, args = make()
        leaves, ptree = jtu.tree_flatten(params)
        a_leaves, atree = jtu.tree_flatten(args)

        def whole(p, a, f=f, ptree=ptree, atree=atree):
            return f(jtu.tree_unflatten(ptree, p), *jtu.tree_unflatten(atree, a))

        closed = jax.make_jaxpr(whole)(leaves, a_leaves)
        jaxpr, consts = closed.jaxpr, closed.consts
        flat, sources = [*leaves, *a_leaves], list(range(len(leaves)))

        def pair(jaxpr=jaxpr, consts=consts, flat=flat, sources=sources):
            # A new function each time: JAX caches traces by function.
            return jax.make_jaxpr(
                lambda a, b: kinks.evaluate_pair(jaxpr, consts, a, b, sources)[:3]
            )(flat, flat)

        def capture(jaxpr=jaxpr, consts=consts, flat=flat):
            return jax.make_jaxpr(
                lambda fl: _capture.eval_jaxpr(
                    jaxpr, consts, fl, _capture.Recorder(None), True
                )[0]
            )(flat)

        items += [
            (
                ("analyze", name),
                functools.partial(kinks.analyze_jaxpr, closed, sources),
            ),
            (("pair", name), pair),
            (("capture", name), capture),
        ]
        for pos, leaf in enumerate(leaves):
            if not jnp.issubdtype(leaf.dtype, jnp.floating):
                continue
            fn = engine.LeafFunction(
                f, ptree, len(leaves), {}, atree, len(a_leaves), {}, pos, leaf.shape
            )
            x, idx = leaf.reshape(-1), jnp.zeros((1, 2), jnp.int32)

            def plan(fn=fn, x=x, leaves=leaves, a_leaves=a_leaves):
                propagate._PLANS.clear()
                return propagate.propagation_plan(fn, x, leaves, a_leaves)

            def block(fn=fn, x=x, idx=idx, leaves=leaves, a_leaves=a_leaves):
                traced = functools.partial(propagate.propagated_block, fn)
                return jax.make_jaxpr(traced)(x, idx, 1e-3, leaves, a_leaves)

            items += [(("plan", name, pos), plan), (("block", name, pos), block)]
    return items


def main() -> None:
    """Times every item ``--repeats`` times and prints the best, summed per kind."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    repeats = parser.parse_args().repeats
    items, best = _items(), {}
    for _ in range(repeats):
        for label, thunk in items:
            t0 = time.perf_counter()
            thunk()
            best[label] = min(best.get(label, float("inf")), time.perf_counter() - t0)
    kinds: dict[str, float] = {}
    for label, seconds in best.items():
        kinds[label[0]] = kinds.get(label[0], 0.0) + seconds
    parts = " ".join(f"{k} {v * 1e3:.0f} ms" for k, v in kinds.items())
    total = sum(kinds.values()) * 1e3
    print(f"{os.path.dirname(jaxcheck.__file__)}: {parts}; total {total:.0f} ms")


if __name__ == "__main__":
    main()
