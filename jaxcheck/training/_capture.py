"""The recording jaxpr interpreter behind :func:`~jaxcheck.training.activation_stats`.

It evaluates a function's jaxpr equation by equation and records the output of
every nonlinearity (``tanh``, ``logistic``, ``max(x, 0)`` and the named
``jax.nn`` activations), looking inside ``jit``, ``checkpoint``, custom-derivative
calls and ``scan`` bodies. With probes (zeros added to each recorded output) the
gradient of a loss with respect to every recorded activation comes out of one
``jax.grad``.

Internal to :mod:`jaxcheck.training` and kept apart on purpose: it is to be
replaced by the package's shared interpreter. Import the module by name; its
interface is :class:`Recorder` and :func:`eval_jaxpr`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jex_core

__all__ = ["Recorder", "eval_jaxpr"]

# Higher-order primitives whose sub-jaxpr computes exactly what the primitive does:
# evaluating the sub-jaxpr instead changes nothing but what we can see.
_TRANSPARENT_CALLS = frozenset(
    {"jit", "pjit", "closed_call", "core_call", "remat", "remat2", "checkpoint"}
)
# Primitives with user-defined derivatives: bound as they are (so their rules are
# used), and their sub-jaxpr is evaluated a second time only to record what is inside.
_CUSTOM_CALLS = frozenset(
    {"custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr"}
)


def _sub_jaxpr(eqn: Any) -> tuple[Any, Sequence[Any]] | None:
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        sub = eqn.params.get(key)
        if sub is None:
            continue
        if hasattr(sub, "jaxpr") and hasattr(sub, "consts"):
            return sub.jaxpr, sub.consts
        if hasattr(sub, "eqns"):
            return sub, ()
    return None


def _is_zero_literal(atom: Any) -> bool:
    if not isinstance(atom, jex_core.Literal):
        return False
    try:
        return bool(np.all(np.asarray(atom.val) == 0))
    except (TypeError, ValueError):
        return False


#: Activations that jax.nn wraps in a named ``jit``: recorded as one layer by
#: that name (not by the tanh/logistic/max inside them).
_NAMED_ACTIVATIONS = frozenset(
    {"leaky_relu", "elu", "selu", "celu", "silu", "mish", "softplus"}
)


def _named_activation(eqn: Any) -> str | None:
    name = eqn.params.get("name") if eqn.primitive.name in _TRANSPARENT_CALLS else None
    if name not in _NAMED_ACTIVATIONS:
        return None
    dtype = getattr(getattr(eqn.outvars[0], "aval", None), "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        return None
    return str(name)


def _site_kind(eqn: Any) -> str | None:
    name = eqn.primitive.name
    dtype = getattr(getattr(eqn.outvars[0], "aval", None), "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        return None  # integer max(i, 0) is bookkeeping, not an activation
    if name == "tanh":
        return "tanh"
    if name == "logistic":
        return "sigmoid"
    if (
        name == "max"
        and len(eqn.invars) == 2
        and any(_is_zero_literal(v) for v in eqn.invars)
    ):
        return "relu"
    return None


class Recorder:
    """Collects the outputs of nonlinearities while a jaxpr is evaluated."""

    def __init__(self, probes: Sequence[jax.Array] | None):
        self.probes = probes
        self.values: list[jax.Array] = []
        self.kinds: list[str] = []
        self.has_grad: list[bool] = []

    def add(self, kind: str, value: jax.Array, probing: bool) -> tuple[int, jax.Array]:
        idx = len(self.values)
        self.kinds.append(kind)
        self.has_grad.append(probing)
        self.values.append(value)
        if probing and self.probes is not None:
            value = value + self.probes[idx]
        return idx, value

    def attach(self, idx: int, value: jax.Array, probing: bool) -> jax.Array:
        """Re-attributes site ``idx`` to ``value`` (the output of a custom call)."""
        self.values[idx] = value
        self.has_grad[idx] = probing
        if probing and self.probes is not None:
            value = value + self.probes[idx]
        return value


def eval_jaxpr(
    jaxpr: Any,
    consts: Sequence[Any],
    args: Sequence[Any],
    rec: Recorder,
    probing: bool,
) -> tuple[list[Any], list[int | None]]:
    """Evaluates ``jaxpr``, recording nonlinearities; returns outputs and site ids.

    Examples:
        >>> closed = jax.make_jaxpr(lambda x: jnp.tanh(jax.nn.relu(x)))(jnp.ones(3))
        >>> rec = Recorder(None)
        >>> outs, _ = eval_jaxpr(closed.jaxpr, closed.consts, [jnp.ones(3)], rec, True)
        >>> rec.kinds, outs[0].shape
        (['relu', 'tanh'], (3,))
    """
    env: dict[Any, Any] = {}
    site_of: dict[Any, int] = {}

    def read(atom):
        return atom.val if isinstance(atom, jex_core.Literal) else env[atom]

    for var, val in zip(jaxpr.constvars, consts, strict=True):
        env[var] = val
    for var, val in zip(jaxpr.invars, args, strict=True):
        env[var] = val

    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        name = eqn.primitive.name
        sub = _sub_jaxpr(eqn)
        manager = getattr(getattr(eqn, "ctx", None), "manager", None)
        named = _named_activation(eqn)
        with manager if manager is not None else contextlib.nullcontext():
            if named is not None:
                # One layer, evaluated as it is (its insides are not recorded).
                bind_params = eqn.primitive.get_bind_params(eqn.params)
                outs = list(eqn.primitive.bind(*invals, **bind_params))
                ids = [None] * len(outs)
                ids[0], outs[0] = rec.add(named, outs[0], probing)
            elif name == "scan" and sub is not None:
                outs, ids = _eval_scan(eqn, sub, invals, rec)
            elif name in _TRANSPARENT_CALLS and sub is not None:
                outs, ids = eval_jaxpr(sub[0], sub[1], invals, rec, probing)
            elif name in _CUSTOM_CALLS and sub is not None:
                bind_params = eqn.primitive.get_bind_params(eqn.params)
                outs = eqn.primitive.bind(*invals, **bind_params)
                outs = list(outs) if eqn.primitive.multiple_results else [outs]
                frozen = [jax.lax.stop_gradient(v) for v in invals]
                _, ids = eval_jaxpr(sub[0], sub[1], frozen, rec, False)
                for i, idx in enumerate(ids):
                    if idx is not None:
                        outs[i] = rec.attach(idx, outs[i], probing)
            else:
                bind_params = eqn.primitive.get_bind_params(eqn.params)
                ans = eqn.primitive.bind(*invals, **bind_params)
                outs = list(ans) if eqn.primitive.multiple_results else [ans]
                kind = _site_kind(eqn)
                ids = [None] * len(outs)
                if kind is not None:
                    ids[0], outs[0] = rec.add(kind, outs[0], probing)
        for var, val, idx in zip(eqn.outvars, outs, ids, strict=True):
            env[var] = val
            if idx is not None:
                site_of[var] = idx
    outs = [read(v) for v in jaxpr.outvars]
    out_ids = [
        None if isinstance(v, jex_core.Literal) else site_of.get(v)
        for v in jaxpr.outvars
    ]
    return outs, out_ids


def _eval_scan(
    eqn: Any, sub: tuple[Any, Sequence[Any]], invals: list[Any], rec: Recorder
) -> tuple[list[Any], list[int | None]]:
    """Runs a ``scan`` with its body evaluated by the recording interpreter: the
    nonlinearities inside come out as extra outputs, stacked over the steps, and
    are recorded as layers of shape ``(length, ...)`` (without gradients)."""
    body, body_consts = sub
    num_consts, num_carry = eqn.params["num_consts"], eqn.params["num_carry"]
    consts = invals[:num_consts]
    init = invals[num_consts : num_consts + num_carry]
    xs = invals[num_consts + num_carry :]
    inner_kinds: list[str] = []

    def step(carry: list[Any], x: list[Any]) -> tuple[list[Any], tuple]:
        inner = Recorder(None)
        outs, _ = eval_jaxpr(body, body_consts, [*consts, *carry, *x], inner, False)
        inner_kinds[:] = inner.kinds
        return outs[:num_carry], (outs[num_carry:], inner.values)

    carry, (ys, recorded) = jax.lax.scan(
        step,
        list(init),
        list(xs),
        length=eqn.params["length"],
        reverse=eqn.params["reverse"],
        unroll=eqn.params.get("unroll", 1),
    )
    for kind, value in zip(inner_kinds, recorded, strict=True):
        rec.add(kind, value, False)
    outs = [*carry, *ys]
    return outs, [None] * len(outs)
