"""jaxcheck: verify gradients in JAX.

A jit-compiled, vmapped centered-difference engine checks every (or a sample of
every leaf's) coordinate of a pytree of parameters in float64 and reports, leaf
by leaf, where the analytic gradient disagrees.

The top level holds what most users call; everything else lives in its
submodule (``jaxcheck.report``, ``jaxcheck.derivatives``, ``jaxcheck.protocol``,
``jaxcheck.kinks``, ``jaxcheck.steps``, ``jaxcheck.engine``, ``jaxcheck.compare``,
``jaxcheck.compilation``) and the training half is ``jaxcheck.training``.
"""

from . import examples as examples
from . import training as training
from .check import assert_grads as assert_grads
from .check import check_grads as check_grads
from .compare import relative_error as relative_error
from .derivatives import check_directions as check_directions
from .derivatives import check_forward_mode as check_forward_mode
from .derivatives import check_jacobian as check_jacobian
from .derivatives import check_points as check_points
from .derivatives import check_second_order as check_second_order
from .derivatives import check_vjp as check_vjp
from .differential import assert_against_reference as assert_against_reference
from .differential import check_against_reference as check_against_reference
from .engine import this_process_only as this_process_only
from .kinks import inspect_kinks as inspect_kinks
from .protocol import assert_deterministic as assert_deterministic
from .protocol import burn_in as burn_in
from .protocol import check_determinism as check_determinism
from .protocol import check_loss_terms as check_loss_terms
from .protocol import take_datapoints as take_datapoints
from .report import GradCheckReport as GradCheckReport
from .report import GradientCheckError as GradientCheckError
from .sweep import step_sweep as step_sweep

__version__ = "0.1.0"

__all__ = (
    "GradCheckReport",
    "GradientCheckError",
    "assert_against_reference",
    "assert_deterministic",
    "assert_grads",
    "burn_in",
    "check_against_reference",
    "check_determinism",
    "check_directions",
    "check_forward_mode",
    "check_grads",
    "check_jacobian",
    "check_loss_terms",
    "check_points",
    "check_second_order",
    "check_vjp",
    "examples",
    "inspect_kinks",
    "relative_error",
    "step_sweep",
    "take_datapoints",
    "this_process_only",
    "training",
)

#: Names that were top-level before 0.1 and where they live now.
_MOVED = {
    "BlockCheckReport": "jaxcheck.derivatives",
    "DirectionsReport": "jaxcheck.derivatives",
    "ForwardModeUnsupportedError": "jaxcheck.derivatives",
    "MultiPointReport": "jaxcheck.derivatives",
    "directions_for_risk": "jaxcheck.derivatives",
    "miss_probability": "jaxcheck.derivatives",
    "stack_points": "jaxcheck.derivatives",
    "BurnInError": "jaxcheck.protocol",
    "BurnInWarning": "jaxcheck.protocol",
    "DeterminismReport": "jaxcheck.protocol",
    "DominatedTermWarning": "jaxcheck.protocol",
    "LossTermsReport": "jaxcheck.protocol",
    "NondeterminismError": "jaxcheck.protocol",
    "CoordResult": "jaxcheck.report",
    "LeafReport": "jaxcheck.report",
    "SkippedLeaf": "jaxcheck.report",
    "KinkAnalysis": "jaxcheck.kinks",
    "Site": "jaxcheck.kinks",
    "track_winners": "jaxcheck.kinks",
    "LeafSweep": "jaxcheck.steps",
    "StepSweep": "jaxcheck.steps",
    "plot_step_sweep": "jaxcheck.steps",
    "band_counts": "jaxcheck.compare",
    "default_memory_budget": "jaxcheck.engine",
    "use_compilation_cache": "jaxcheck.compilation",
}


def __getattr__(name: str):
    where = _MOVED.get(name)
    if where is None:
        raise AttributeError(f"module 'jaxcheck' has no attribute {name!r}")
    raise AttributeError(
        f"jaxcheck.{name} is not a top-level name: import it from its module, "
        f"`from {where} import {name}`."
    )
