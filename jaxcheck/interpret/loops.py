"""Control flow with an interpreted body: ``scan`` and ``while`` re-run as
``lax.scan`` / ``lax.while_loop`` around a function that walks the body's
jaxpr, so that a rule set can instrument what happens inside a loop (extra
outputs per iteration: decision words, recorded activations).

The operand layouts (which inputs are constants, carries, scanned arrays) of
``scan``, ``while`` and ``cond`` live here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax.numpy as jnp
from jax import lax
from jax.extend import core as jcore

#: ``body(*consts, *carry, *xs) -> (outs, extra)``: a loop body, walked.
Body = Callable[..., tuple[Sequence[Any], Any]]


def scan_operands(params: Mapping[str, Any], ins: Sequence[Any]) -> tuple[list, ...]:
    """``(consts, carry, xs)``: a ``scan`` equation's inputs (or anything laid
    out like them, such as per-input flags), split.

    Examples:
      >>> closed = jax.make_jaxpr(
      ...     lambda c, xs: jax.lax.scan(lambda s, x: (s * c + x, s), 0.0, xs)
      ... )(2.0, jnp.ones(3))
      >>> eqn = closed.jaxpr.eqns[0]
      >>> scan_operands(eqn.params, ["c", "init", "xs"])
      (['c'], ['init'], ['xs'])
    """
    nc, nk = params["num_consts"], params["num_carry"]
    return list(ins[:nc]), list(ins[nc : nc + nk]), list(ins[nc + nk :])


def while_operands(
    params: Mapping[str, Any], ins: Sequence[Any]
) -> tuple[list, list, list]:
    """``(cond_consts, body_consts, carry)``: a ``while`` equation's inputs (or
    anything laid out like them), split.

    Examples:
      >>> closed = jax.make_jaxpr(
      ...     lambda n, x: jax.lax.while_loop(lambda s: s < n, lambda s: s * 2.0, x)
      ... )(9.0, 1.0)
      >>> eqn = closed.jaxpr.eqns[0]
      >>> while_operands(eqn.params, ["n", "x"])
      (['n'], [], ['x'])
    """
    cn, bn = params["cond_nconsts"], params["body_nconsts"]
    return list(ins[:cn]), list(ins[cn : cn + bn]), list(ins[cn + bn :])


def run_scan(
    eqn: Any,
    ins: Sequence[Any],
    body: Body,
    *,
    acc: Any = None,
    fold: Callable[[Any, Any], Any] | None = None,
) -> tuple[list[Any], Any]:
    """A ``scan`` equation evaluated with ``body`` in place of its jaxpr.

    ``body(*consts, *carry, *xs)`` returns the body's outputs (new carry, then
    the per-iteration outputs) and an ``extra``. Without ``fold`` the extras are
    stacked over the iterations like the outputs; with ``fold`` they are folded
    into an accumulator carried along: ``acc = fold(acc, extra)`` from ``acc``.

    Args:
      eqn: the ``scan`` equation (its parameters: length, direction, unroll).
      ins: its input values.
      body: the interpreted body.
      acc: the accumulator's initial value (with ``fold``).
      fold: how an iteration's extra joins the accumulator.

    Returns:
      ``(outs, extras)``: the scan's outputs (final carry, stacked outputs) and
      the stacked extras, or the final accumulator.

    Examples:
      >>> closed = jax.make_jaxpr(
      ...     lambda xs: jax.lax.scan(lambda s, x: (s + x, s), 0.0, xs)
      ... )(jnp.ones(3))
      >>> eqn = closed.jaxpr.eqns[0]
      >>> def body(s, x):  # the body, plus the carry seen by each iteration
      ...     return [s + x, s], s
      >>> outs, seen = run_scan(eqn, [0.0, jnp.arange(3.0)], body)
      >>> float(outs[0]), outs[1].tolist(), seen.tolist()
      (3.0, [0.0, 0.0, 1.0], [0.0, 0.0, 1.0])
      >>> _, total = run_scan(eqn, [0.0, jnp.arange(3.0)], body, acc=0.0,
      ...                     fold=lambda a, s: a + s)
      >>> float(total)
      1.0
    """
    p = eqn.params
    consts, init, xs = scan_operands(p, ins)
    nk = p["num_carry"]

    def step(carry: tuple, x: list) -> tuple:
        c, a = carry
        outs, extra = body(*consts, *c, *x)
        if fold is None:
            return (list(outs[:nk]), a), (list(outs[nk:]), extra)
        return (list(outs[:nk]), fold(a, extra)), list(outs[nk:])

    (c_out, a_out), ys = lax.scan(
        step, (list(init), acc), list(xs),
        length=p["length"], reverse=p["reverse"], unroll=p.get("unroll", 1),
    )  # fmt: skip
    if fold is None:
        ys, extras = ys
        return [*c_out, *ys], extras
    return [*c_out, *ys], a_out


def run_while(
    eqn: Any,
    ins: Sequence[Any],
    body: Body,
    *,
    acc: Any,
    fold: Callable[[Any, Any], Any],
) -> tuple[list[Any], Any, Any]:
    """A ``while`` equation evaluated with ``body`` in place of its body jaxpr
    (the predicate is evaluated as it is), folding each iteration's extra into
    an accumulator, and counting the iterations.

    ``body(*body_consts, *carry)`` returns the new carry and an ``extra``;
    ``acc = fold(acc, extra)`` after every iteration.

    Args:
      eqn: the ``while`` equation.
      ins: its input values.
      body: the interpreted body.
      acc: the accumulator's initial value.
      fold: how an iteration's extra joins the accumulator.

    Returns:
      ``(outs, acc, iterations)``: the final carry, the accumulator, and the
      number of iterations (an int32 scalar).

    Examples:
      >>> closed = jax.make_jaxpr(
      ...     lambda x: jax.lax.while_loop(lambda s: s < 10.0, lambda s: s * 2.0, x)
      ... )(1.0)
      >>> eqn = closed.jaxpr.eqns[0]
      >>> outs, biggest, n = run_while(eqn, [1.5], lambda s: ([s * 2.0], s),
      ...                              acc=0.0, fold=jnp.maximum)
      >>> float(outs[0]), float(biggest), int(n)
      (12.0, 6.0, 3)
    """
    p = eqn.params
    cconsts, bconsts, init = while_operands(p, ins)
    cond_plain = jcore.jaxpr_as_fun(p["cond_jaxpr"])

    def cond_fun(carry: tuple) -> Any:
        c, _, _ = carry
        return cond_plain(*cconsts, *c)[0]

    def body_fun(carry: tuple) -> tuple:
        c, a, it = carry
        outs, extra = body(*bconsts, *c)
        return list(outs), fold(a, extra), it + 1

    c_out, a_out, it = lax.while_loop(
        cond_fun, body_fun, (list(init), acc, jnp.int32(0))
    )
    return list(c_out), a_out, it
