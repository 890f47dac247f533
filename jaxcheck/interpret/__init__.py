"""jaxcheck's one jaxpr interpreter.

Everything in jaxcheck that reads a jaxpr equation by equation goes through
this package:

* :mod:`~jaxcheck.interpret.calls`: THE table of call-like primitives
  (``jit``, ``checkpoint``, ``custom_jvp_call``, ``custom_vjp_call``, ...) and
  of control flow, and how to get at their jaxprs;
* :mod:`~jaxcheck.interpret.walk`: :class:`Walker`, which walks a jaxpr,
  enters the calls, and hands each equation to a per-primitive rule;
* :mod:`~jaxcheck.interpret.loops`: ``scan`` / ``while`` re-run around an
  interpreted body, and the operand layouts of ``scan``, ``while``.

The rule sets on top of it:

* kink tracking and the static kink analysis (:mod:`jaxcheck.kinks`: a
  :class:`Walker` whose values are arrays with a dependence flag, one whose
  values are bit masks and depths);
* perturbation propagation (:mod:`jaxcheck.propagate`: a :class:`Walker`
  that flattens the jaxpr into a list of equations, then per-primitive window
  rules);
* activation capture (:mod:`jaxcheck.training._capture`: a :class:`Walker`
  that records nonlinearities).

Examples:
  >>> from jaxcheck import interpret
  >>> closed = jax.make_jaxpr(jax.nn.relu)(1.0)
  >>> interpret.is_call(closed.jaxpr.eqns[0]), interpret.call_name(closed.jaxpr.eqns[0])
  (True, 'relu')
  >>> float(interpret.Walker().run(closed.jaxpr, closed.consts, [-2.0])[0])
  0.0
"""

from .calls import CALLS as CALLS
from .calls import CONTROL_FLOW as CONTROL_FLOW
from .calls import Call as Call
from .calls import call_jaxpr as call_jaxpr
from .calls import call_name as call_name
from .calls import carries_jaxpr as carries_jaxpr
from .calls import is_call as is_call
from .loops import run_scan as run_scan
from .loops import run_while as run_while
from .loops import scan_operands as scan_operands
from .loops import while_operands as while_operands
from .walk import Walker as Walker
from .walk import bind as bind
from .walk import bind_eqn as bind_eqn
from .walk import is_literal as is_literal
from .walk import location as location

__all__ = [
    "CALLS",
    "CONTROL_FLOW",
    "Call",
    "Walker",
    "bind",
    "bind_eqn",
    "call_jaxpr",
    "call_name",
    "carries_jaxpr",
    "is_call",
    "is_literal",
    "location",
    "run_scan",
    "run_while",
    "scan_operands",
    "while_operands",
]
