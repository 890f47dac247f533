"""The one table of primitives that carry jaxprs, and how to reach them.

Every interpreter in jaxcheck (kink tracking and analysis, perturbation
propagation, activation capture) enters the primitives of :data:`CALLS` the
same way, through :func:`call_jaxpr`, and treats the control flow of
:data:`CONTROL_FLOW` with the helpers of :mod:`jaxcheck.interpret.loops`. A JAX
release that renames a call primitive or moves its jaxpr is fixed here, once.

Not in the table, on purpose:

* ``custom_lin`` (between ``jax.linearize`` and transposition) carries a
  backward *function*, no primal jaxpr: there is nothing to enter.
* ``custom_linear_solve``, ``linear_call``, ``custom_vmap_call``,
  ``shard_map``, ``xla_pmap``, ``pallas_call`` carry jaxprs whose evaluation is
  not the primitive's plain result (solver pieces, transposes, batching rules,
  kernels, per-device bodies): each rule set decides what to do with them
  (:func:`carries_jaxpr` finds them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from jax.extend import core as jcore


@dataclasses.dataclass(frozen=True)
class Call:
    """How to enter a call-like primitive: its result is its jaxpr's.

    Attributes:
      param: the parameter holding the called jaxpr (closed or open).
      custom: ``"jvp"`` or ``"vjp"`` when the primitive carries user-defined
        derivative rules (``jax.custom_jvp`` / ``jax.custom_vjp``), else
        ``""``: evaluating the jaxpr in its place computes the same value but
        drops the rules (an interpreter that is differentiated binds the
        primitive itself).

    Examples:
      >>> CALLS["custom_jvp_call"]
      Call(param='call_jaxpr', custom='jvp')
      >>> [name for name, call in CALLS.items() if call.custom]
      ['custom_jvp_call', 'custom_vjp_call', 'custom_vjp_call_jaxpr']
    """

    param: str
    custom: str = ""


#: Call-like primitives, by name: the called jaxpr computes exactly the
#: primitive's outputs from its inputs (same number, same order). Old names
#: (``pjit``, ``remat``, ``custom_vjp_call_jaxpr``) stay for older JAX releases.
CALLS: Mapping[str, Call] = MappingProxyType(
    {
        "jit": Call("jaxpr"),
        "pjit": Call("jaxpr"),
        "closed_call": Call("call_jaxpr"),
        "core_call": Call("call_jaxpr"),
        "checkpoint": Call("jaxpr"),
        "remat": Call("jaxpr"),
        "remat2": Call("jaxpr"),
        "custom_jvp_call": Call("call_jaxpr", custom="jvp"),
        "custom_vjp_call": Call("call_jaxpr", custom="vjp"),
        "custom_vjp_call_jaxpr": Call("fun_jaxpr", custom="vjp"),
    }
)

#: Control flow, by name: the parameters holding its jaxprs (``branches`` is a
#: tuple of closed jaxprs). See :mod:`jaxcheck.interpret.loops`.
CONTROL_FLOW: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "cond": ("branches",),
        "scan": ("jaxpr",),
        "while": ("cond_jaxpr", "body_jaxpr"),
    }
)


def is_call(eqn: Any) -> bool:
    """Whether ``eqn`` applies a call-like primitive of :data:`CALLS`.

    Examples:
      >>> closed = jax.make_jaxpr(jax.jit(jnp.sin))(1.0)
      >>> is_call(closed.jaxpr.eqns[0])
      True
    """
    return eqn.primitive.name in CALLS


def call_jaxpr(eqn: Any) -> tuple[Any, list[Any]]:
    """``(jaxpr, consts)`` that a call-like equation evaluates.

    Args:
      eqn: an equation whose primitive is in :data:`CALLS`.

    Returns:
      the open jaxpr and the values of its constvars (none for an open jaxpr
      in the parameters, as ``checkpoint`` holds it).

    Raises:
      KeyError: if the primitive is not in :data:`CALLS`; use :func:`is_call`
        first.

    Examples:
      >>> closed = jax.make_jaxpr(jax.jit(jnp.sin))(1.0)
      >>> inner, consts = call_jaxpr(closed.jaxpr.eqns[0])
      >>> [e.primitive.name for e in inner.eqns], consts
      (['sin'], [])
    """
    inner = eqn.params[CALLS[eqn.primitive.name].param]
    if isinstance(inner, jcore.ClosedJaxpr):
        return inner.jaxpr, list(inner.consts)
    return inner, []


def call_name(eqn: Any) -> str:
    """The user-facing name of a call-like equation (``"relu"``, ``"clip"``), or
    ``""``: its ``name`` parameter, else the called function's name.

    Examples:
      >>> closed = jax.make_jaxpr(jax.nn.relu)(1.0)
      >>> call_name(closed.jaxpr.eqns[0])
      'relu'
    """
    name = eqn.params.get("name")
    if not name:
        call = CALLS.get(eqn.primitive.name)
        inner = eqn.params.get(call.param) if call is not None else None
        info = getattr(getattr(inner, "jaxpr", inner), "debug_info", None)
        name = getattr(info, "func_name", None) or ""
        if not name:
            src = getattr(info, "func_src_info", None) or ""
            name = src.split(" ")[0]
    name = str(name)
    return "" if name.startswith("<") else name


def carries_jaxpr(eqn: Any) -> bool:
    """Whether ``eqn``'s parameters hold a jaxpr (a call, control flow, or a
    primitive whose insides an interpreter may not be able to follow).

    Examples:
      >>> closed = jax.make_jaxpr(lambda x: jax.lax.cond(x > 0, jnp.sin, jnp.cos, x))(1.0)
      >>> [carries_jaxpr(e) for e in closed.jaxpr.eqns]
      [False, False, True]
    """
    return any(True for _ in jcore.jaxprs_in_params(eqn.params))
