"""Kink detection by tracking winners.

The notes: "keep track of the identities of all winners in a function of form
max(x, y) ... If the identity of at least one winner changes when evaluating
f(x+h) and then f(x-h), then a kink was crossed and the numerical gradient will
not be exact."

This module traces ``f`` to a jaxpr and evaluates it with an interpreter that
also returns every branch decision it makes, folded into one ``uint32`` word
per *decision site*:

* which operand won a ``max`` / ``min`` (ReLU, hinge, maxout; also inside a
  ``custom_jvp`` such as ``jax.nn.relu`` or a ``custom_vjp``);
* the outcome of a floating-point comparison and the case a ``select_n``
  (``jnp.where``) picks;
* the sign at ``abs`` / ``sign``, the region at ``clamp``;
* the integer part at ``floor`` / ``ceil`` / ``round`` / float-to-int casts;
* the index at ``argmax`` / ``argmin`` / ``top_k``, the winners of
  ``reduce_max`` / ``reduce_min`` / ``cummax`` / ``cummin``, of every window of
  ``reduce_window_max`` (max pooling) and the permutation of ``sort``;
* the branch of ``cond`` and the number of iterations of ``while``;

recursing into the call-like primitives of :data:`jaxcheck.interpret.CALLS`
(``jit``, ``custom_jvp_call``, ``custom_vjp_call``, ``checkpoint``, ...) and
into ``cond``, ``scan`` and ``while`` bodies. The instrumented function is an
ordinary JAX function: it is jit- and vmap-able, so the engine evaluates it at
``x + h e_i`` and ``x - h e_i`` in the same batches as the plain one, and a
coordinate whose words differ between the two crossed a kink.

Only decisions that matter are tracked: their inputs must depend on the
perturbed parameters, and their result must reach the output other than through
``stop_gradient`` (so the max that ``jax.nn.log_softmax`` subtracts for
stability is not a kink), and guards against NaN (``x != x``, ``is_finite``)
are not decisions. Primitives the interpreter cannot see into (callbacks,
Pallas kernels, custom calls) are listed, never silently ignored.

Two rule sets on :mod:`jaxcheck.interpret` do this: the evaluating one
(:mod:`~jaxcheck.kinks.winners`, with :mod:`~jaxcheck.kinks.tracker` on top)
and the static analysis (:mod:`~jaxcheck.kinks.analysis`); they share the
tables and reports of :mod:`~jaxcheck.kinks.sites` and the facts of
:mod:`~jaxcheck.kinks.facts`.
"""

from .analysis import analyze_jaxpr as analyze_jaxpr
from .analysis import inspect_kinks as inspect_kinks
from .sites import OPAQUE as OPAQUE
from .sites import SMOOTH_CALLS as SMOOTH_CALLS
from .sites import SMOOTH_CUSTOM_JVP as SMOOTH_CUSTOM_JVP
from .sites import TRACKED as TRACKED
from .sites import UNTRACKED as UNTRACKED
from .sites import KinkAnalysis as KinkAnalysis
from .sites import Site as Site
from .tracker import WinnerTracker as WinnerTracker
from .tracker import track_winners as track_winners
from .tracker import winner_tracker as winner_tracker
from .winners import changed_decisions as changed_decisions
from .winners import eval_with_winners as eval_with_winners
from .winners import evaluate_pair as evaluate_pair
from .winners import fold as fold

__all__ = [
    "OPAQUE",
    "SMOOTH_CALLS",
    "SMOOTH_CUSTOM_JVP",
    "TRACKED",
    "UNTRACKED",
    "KinkAnalysis",
    "Site",
    "WinnerTracker",
    "analyze_jaxpr",
    "changed_decisions",
    "eval_with_winners",
    "evaluate_pair",
    "fold",
    "inspect_kinks",
    "track_winners",
    "winner_tracker",
]
