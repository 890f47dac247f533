"""The checking protocol of the notes: burn-in, loss terms, few datapoints and
fixed randomness, as steps that compose with :func:`jaxcheck.check_grads`.

A gradient check at one random point can pass a wrong gradient. The notes'
protocol, each step a function that returns what the next step takes:

* **Characteristic mode** (:mod:`.burn_in`). :func:`burn_in` runs a short
  optimisation (plain SGD or any optax ``GradientTransformation``), warns when
  the loss did not go down, and returns the parameters it reached, for
  ``check_grads(f, burn_in(f, params, *args, steps=20), *args)``. A multiclass
  SVM gradient that treats every margin as violated is exact at a tiny
  initialisation (every margin *is* violated there) and wrong after a few
  steps.
* **Loss terms separately** (:mod:`.loss_terms`). :func:`check_loss_terms`
  checks the data loss, the regularization and their sum, reports the ratio of
  their gradient norms, and warns (:class:`DominatedTermWarning`) when one
  term's gradient is so small next to another's that a bug in it would be
  masked in the sum.
* **Few datapoints** (:mod:`.datapoints`). :func:`take_datapoints` cuts the
  batch arguments to ``k`` examples and returns them, for
  ``check_grads(f, params, *new_args)``.
* **Fixed randomness** (:mod:`.determinism`). PRNG keys among ``args`` are
  passed unchanged to every evaluation of a check; :func:`check_determinism` /
  :func:`assert_deterministic` evaluate ``f`` twice (eagerly and under
  ``jax.jit``) and name the likely cause when the values differ (a key not
  threaded through, dropout not fixed).
"""

from ._common import OnFailure as OnFailure
from .burn_in import BurnInError as BurnInError
from .burn_in import BurnInResult as BurnInResult
from .burn_in import BurnInWarning as BurnInWarning
from .burn_in import burn_in as burn_in
from .burn_in import run_burn_in as run_burn_in
from .datapoints import DatapointsCut as DatapointsCut
from .datapoints import take_datapoints as take_datapoints
from .determinism import DeterminismReport as DeterminismReport
from .determinism import NondeterminismError as NondeterminismError
from .determinism import assert_deterministic as assert_deterministic
from .determinism import check_determinism as check_determinism
from .loss_terms import DominatedTermWarning as DominatedTermWarning
from .loss_terms import LossTermsReport as LossTermsReport
from .loss_terms import check_loss_terms as check_loss_terms

__all__ = (
    "BurnInError",
    "BurnInResult",
    "BurnInWarning",
    "DatapointsCut",
    "DeterminismReport",
    "DominatedTermWarning",
    "LossTermsReport",
    "NondeterminismError",
    "OnFailure",
    "assert_deterministic",
    "burn_in",
    "check_determinism",
    "check_loss_terms",
    "run_burn_in",
    "take_datapoints",
)
