"""The recording jaxpr interpreter behind :func:`~jaxcheck.training.activation_stats`.

It evaluates a function's jaxpr equation by equation and records the output of
every nonlinearity (``tanh``, ``logistic``, ``max(x, 0)`` and the named
``jax.nn`` activations), looking inside ``jit``, ``checkpoint``, custom-derivative
calls and ``scan`` bodies. With probes (zeros added to each recorded output) the
gradient of a loss with respect to every recorded activation comes out of one
``jax.grad``.

A rule set on jaxcheck's one interpreter (:mod:`jaxcheck.interpret`): the
calls it enters and the ``scan`` layout come from there. Import the module by
name; its interface is :class:`Recorder` and :func:`eval_jaxpr`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcheck.interpret import (
    CALLS,
    Walker,
    bind_eqn,
    call_jaxpr,
    is_literal,
    run_scan,
)

__all__ = ["Recorder", "eval_jaxpr"]


def _is_zero_literal(atom: Any) -> bool:
    if not is_literal(atom):
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


def _is_float_out(eqn: Any) -> bool:
    dtype = getattr(getattr(eqn.outvars[0], "aval", None), "dtype", None)
    return dtype is not None and jnp.issubdtype(dtype, jnp.floating)


def _named_activation(eqn: Any) -> str | None:
    call = CALLS.get(eqn.primitive.name)
    name = eqn.params.get("name") if call is not None and not call.custom else None
    if name not in _NAMED_ACTIVATIONS or not _is_float_out(eqn):
        return None
    return str(name)


def _site_kind(eqn: Any) -> str | None:
    if not _is_float_out(eqn):
        return None  # integer max(i, 0) is bookkeeping, not an activation
    name = eqn.primitive.name
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


class _Capture(Walker):
    """The recording rule set: values are ``(array, site id or None)``."""

    def __init__(self, rec: Recorder, probing: bool) -> None:
        self.rec = rec
        self.probing = probing

    def literal(self, value: Any) -> tuple[Any, None]:
        return (value, None)

    def constant(self, value: Any) -> tuple[Any, None]:
        return (value, None)

    def equation(self, eqn: Any, ins: list, frame: Any) -> list:
        manager = getattr(getattr(eqn, "ctx", None), "manager", None)
        with manager if manager is not None else contextlib.nullcontext():
            named = _named_activation(eqn)
            if named is None:
                return super().equation(eqn, ins, frame)
            # One layer, evaluated as it is (its insides are not recorded).
            outs = bind_eqn(eqn, [v for v, _ in ins])
            idx, outs[0] = self.rec.add(named, outs[0], self.probing)
            return [(outs[0], idx), *((o, None) for o in outs[1:])]

    def call(self, eqn: Any, ins: list, frame: Any) -> list:
        if not CALLS[eqn.primitive.name].custom:
            # Entered afresh: a site is an output of the equation that made it.
            return super().call(eqn, [(v, None) for v, _ in ins], frame)
        # User-defined derivatives: bound as they are (so their rules are used),
        # the called jaxpr evaluated a second time only to record what is inside.
        vals = [v for v, _ in ins]
        outs = bind_eqn(eqn, vals)
        inner, consts = call_jaxpr(eqn)
        frozen = [jax.lax.stop_gradient(v) for v in vals]
        _, ids = eval_jaxpr(inner, consts, frozen, self.rec, False)
        for i, idx in enumerate(ids):
            if idx is not None:
                outs[i] = self.rec.attach(idx, outs[i], self.probing)
        return list(zip(outs, ids, strict=True))

    def default(self, eqn: Any, ins: list, frame: Any) -> list:
        outs = bind_eqn(eqn, [v for v, _ in ins])
        kind = _site_kind(eqn)
        if kind is None:
            return [(o, None) for o in outs]
        idx, outs[0] = self.rec.add(kind, outs[0], self.probing)
        return [(outs[0], idx), *((o, None) for o in outs[1:])]

    def _scan(self, eqn: Any, ins: list, frame: Any) -> list:
        """A ``scan`` with its body evaluated by the recording interpreter: the
        nonlinearities inside come out as extra outputs, stacked over the steps,
        and are recorded as layers of shape ``(length, ...)`` (without
        gradients)."""
        body = eqn.params["jaxpr"]
        inner_kinds: list[str] = []

        def step(*args: Any) -> tuple[list, list]:
            inner = Recorder(None)
            outs, _ = eval_jaxpr(body.jaxpr, body.consts, list(args), inner, False)
            inner_kinds[:] = inner.kinds
            return outs, inner.values

        outs, recorded = run_scan(eqn, [v for v, _ in ins], step)
        for kind, value in zip(inner_kinds, recorded, strict=True):
            self.rec.add(kind, value, False)
        return [(o, None) for o in outs]

    rules = {"scan": _scan}


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
    outs = _Capture(rec, probing).run(jaxpr, consts, [(a, None) for a in args])
    return [v for v, _ in outs], [i for _, i in outs]
