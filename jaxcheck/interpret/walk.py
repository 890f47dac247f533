"""The jaxpr walker: one equation after another, with pluggable rules.

:class:`Walker` keeps the environment (variables to values), reads literals
and constants, enters the call-like primitives of
:data:`~jaxcheck.interpret.calls.CALLS`, and hands every other equation to a
rule for its primitive or to :meth:`Walker.default` (which binds it). What a
*value* is belongs to the subclass: an array (evaluation), a pair of an array
and a flag, a bit mask (static analysis), a variable id (flattening).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from jax.extend import core as jcore
from jax.extend import source_info_util

from .calls import CALLS, call_jaxpr

#: A rule: ``rule(walker, eqn, ins, frame) -> outs`` (one value per outvar).
Rule = Callable[[Any, Any, list, Any], list]


def bind(primitive: Any, params: Mapping[str, Any], args: Sequence[Any]) -> Any:
    """``primitive`` applied to ``args`` with an equation's ``params`` (its
    jaxpr parameters turned into what ``bind`` takes): the raw result.

    Examples:
      >>> eqn = jax.make_jaxpr(jnp.sin)(1.0).jaxpr.eqns[0]
      >>> float(bind(eqn.primitive, eqn.params, [0.0]))
      0.0
    """
    return primitive.bind(*args, **primitive.get_bind_params(params))


def bind_eqn(eqn: Any, args: Sequence[Any]) -> list[Any]:
    """The outputs of ``eqn`` on ``args``, as a list (one per outvar).

    Examples:
      >>> eqn = jax.make_jaxpr(jnp.sin)(1.0).jaxpr.eqns[0]
      >>> [float(v) for v in bind_eqn(eqn, [0.0])]
      [0.0]
    """
    out = bind(eqn.primitive, eqn.params, args)
    return list(out) if eqn.primitive.multiple_results else [out]


def is_literal(atom: Any) -> bool:
    """Whether an equation input is a literal (else a variable).

    Examples:
      >>> eqn = jax.make_jaxpr(lambda x: x + 2.0)(1.0).jaxpr.eqns[0]
      >>> [is_literal(a) for a in eqn.invars]
      [False, True]
    """
    return isinstance(atom, jcore.Literal)


def location(eqn: Any, default: str) -> str:
    """The user's source line that created ``eqn``, as ``"model.py:12 (loss)"``,
    or ``default`` when unknown.

    Examples:
      >>> def loss(x):
      ...     return jnp.sin(x)
      >>> location(jax.make_jaxpr(loss)(1.0).jaxpr.eqns[0], "?")
      '...(loss)'
      >>> location(jax.make_jaxpr(loss)(1.0).jaxpr.eqns[0].replace(
      ...     source_info=source_info_util.new_source_info()), "?")
      '?'

    """
    try:
        text = source_info_util.summarize(eqn.source_info)
    except Exception:  # noqa: BLE001 - source info is best effort
        return default
    text = text.strip()
    if not text or text.startswith("<unknown"):
        return default
    # "path/to/model.py:12:4 (loss)" -> "model.py:12 (loss)"
    head, _, tail = text.partition(" ")
    parts = head.split(":")
    if len(parts) >= 2:
        head = f"{os.path.basename(parts[0])}:{parts[1]}"
    return f"{head} {tail}".strip()


class Walker:
    """Walks a jaxpr equation by equation; subclasses say what values are and
    what equations do.

    :meth:`run` binds the jaxpr's constvars (through :meth:`constant`) and
    invars, reads literals through :meth:`literal`, and calls
    :meth:`equation` for each equation, which dispatches: a rule of
    :attr:`rules` for the primitive, else the call-like primitives of
    :data:`~jaxcheck.interpret.calls.CALLS` are entered (:meth:`call`, when
    :meth:`enters` agrees), else :meth:`default`. ``frame`` is the
    subclass's per-jaxpr state, passed along untouched.

    The plain walker evaluates (``jax.core.eval_jaxpr`` with calls inlined).

    Examples:
      >>> closed = jax.make_jaxpr(lambda x: jax.jit(jnp.sin)(x) * 2.0)(1.0)
      >>> round(float(Walker().run(closed.jaxpr, closed.consts, [0.5])[0]), 6)
      0.958851

      A walker that counts the primitives it evaluates, inside calls too:

      >>> class Counter(Walker):
      ...     def __init__(self):
      ...         self.seen = []
      ...     def default(self, eqn, ins, frame):
      ...         self.seen.append(eqn.primitive.name)
      ...         return super().default(eqn, ins, frame)
      >>> c = Counter()
      >>> _ = c.run(closed.jaxpr, closed.consts, [0.5])
      >>> c.seen
      ['sin', 'mul']
    """

    #: Rules by primitive name, ``rule(walker, eqn, ins, frame) -> outs``;
    #: they take precedence over entering calls and over :meth:`default`.
    rules: ClassVar[Mapping[str, Rule]] = {}

    def literal(self, value: Any) -> Any:
        """The walker's value of a literal whose constant is ``value``."""
        return value

    def constant(self, value: Any) -> Any:
        """The walker's value of a constvar bound to ``value``."""
        return value

    def run(
        self, jaxpr: Any, consts: Sequence[Any], args: Sequence[Any], frame: Any = None
    ) -> list[Any]:
        """The values of ``jaxpr``'s outvars, given its constvars' ``consts``
        (raw, turned into values by :meth:`constant`) and its invars' values
        ``args``."""
        env: dict[Any, Any] = {}
        for v, c in zip(jaxpr.constvars, consts, strict=True):
            env[v] = self.constant(c)
        for v, a in zip(jaxpr.invars, args, strict=True):
            env[v] = a
        literal, literal_type = self.literal, jcore.Literal
        for eqn in jaxpr.eqns:
            ins = [
                literal(a.val) if isinstance(a, literal_type) else env[a]
                for a in eqn.invars
            ]
            outs = self.equation(eqn, ins, frame)
            for v, o in zip(eqn.outvars, outs, strict=True):
                env[v] = o
        return [
            literal(a.val) if isinstance(a, literal_type) else env[a]
            for a in jaxpr.outvars
        ]

    def equation(self, eqn: Any, ins: list[Any], frame: Any) -> list[Any]:
        """The values of ``eqn``'s outvars: its primitive's rule, else the call
        entered, else :meth:`default`."""
        name = eqn.primitive.name
        rule = self.rules.get(name)
        if rule is not None:
            return rule(self, eqn, ins, frame)
        if name in CALLS and self.enters(eqn, ins, frame):
            return self.call(eqn, ins, frame)
        return self.default(eqn, ins, frame)

    def enters(self, eqn: Any, ins: list[Any], frame: Any) -> bool:
        """Whether to walk into this call-like equation (else :meth:`default`)."""
        return True

    def call(self, eqn: Any, ins: list[Any], frame: Any) -> list[Any]:
        """A call-like equation: its jaxpr walked in place, same frame."""
        inner, consts = call_jaxpr(eqn)
        return self.run(inner, consts, ins, frame)

    def default(self, eqn: Any, ins: list[Any], frame: Any) -> list[Any]:
        """Any other equation: bound to the inputs' values."""
        return bind_eqn(eqn, ins)
