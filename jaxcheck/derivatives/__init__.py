"""Every kind of derivative: second order, forward mode, VJPs, Jacobians,
random directions with localisation, and checks at several points at once.

The checks here build on :func:`jaxcheck.check_grads` (whose report types they
reuse) for everything that is the gradient of a scalar, and add a small
"block" engine (:mod:`._blocks`) for derivatives that are matrices:

* :func:`check_second_order` (:mod:`.second_order`) compares centered
  differences of the *gradient function* with forward-over-reverse
  Hessian-vector products (``jax.jvp`` of ``jax.grad``, the columns of
  ``jax.hessian``), or reverse-over-reverse ones where ``f`` has no forward
  mode. A backward rule that is right at first order but not differentiable (a
  ``stop_gradient`` inside a ``custom_vjp`` bwd) passes :func:`check_grads` and
  fails here.
* :func:`check_forward_mode` (:mod:`.forward`) checks the ``jax.jvp``
  derivative; a ``custom_vjp`` function has none and is refused.
* :func:`check_vjp` (:mod:`.vjp`) checks a vector-valued function (a layer)
  with an upstream gradient; :func:`check_jacobian` (:mod:`.jacobian`) checks
  its whole Jacobian, block by block.
* :func:`check_directions` (:mod:`.directions`) checks ``K`` random directions
  per leaf (cheap), and localises the wrong coordinates of a failing leaf by
  bisecting over groups of coordinates; :func:`miss_probability` and
  :func:`directions_for_risk` say how likely a wrong gradient is to pass with
  ``K`` directions.
* :func:`check_points` (:mod:`.points`) checks a batch of parameter points at
  once (vmapped).

Everything runs in float64 inside ``jax.enable_x64(True)`` (never the global
flag), and no check raises on a mismatch: each returns a report.
"""

from ._blocks import BlockCheckReport as BlockCheckReport
from ._common import DEFAULT_MAX_ENTRIES as DEFAULT_MAX_ENTRIES
from .directions import check_directions as check_directions
from .directions import directions_for_risk as directions_for_risk
from .directions import miss_probability as miss_probability
from .directions_report import DirectionLeafReport as DirectionLeafReport
from .directions_report import DirectionResult as DirectionResult
from .directions_report import DirectionsReport as DirectionsReport
from .forward import ForwardModeUnsupportedError as ForwardModeUnsupportedError
from .forward import check_forward_mode as check_forward_mode
from .jacobian import JacobianMode as JacobianMode
from .jacobian import check_jacobian as check_jacobian
from .points import MultiPointReport as MultiPointReport
from .points import check_points as check_points
from .points import stack_points as stack_points
from .second_order import SecondOrderMethod as SecondOrderMethod
from .second_order import check_second_order as check_second_order
from .vjp import check_vjp as check_vjp

__all__ = (
    "DEFAULT_MAX_ENTRIES",
    "BlockCheckReport",
    "DirectionLeafReport",
    "DirectionResult",
    "DirectionsReport",
    "ForwardModeUnsupportedError",
    "JacobianMode",
    "MultiPointReport",
    "SecondOrderMethod",
    "check_directions",
    "check_forward_mode",
    "check_jacobian",
    "check_points",
    "check_second_order",
    "check_vjp",
    "directions_for_risk",
    "miss_probability",
    "stack_points",
)
