"""jaxcheck: verify gradients in JAX.

A jit-compiled, vmapped centered-difference engine checks every (or a sample of
every leaf's) coordinate of a pytree of parameters in float64 and reports, leaf
by leaf, where the analytic gradient disagrees.
"""

from . import examples as examples
from . import training as training
from .check import assert_grads as assert_grads
from .check import check_grads as check_grads
from .compare import band_counts as band_counts
from .compare import relative_error as relative_error
from .compilation import use_compilation_cache as use_compilation_cache
from .derivatives import BlockCheckReport as BlockCheckReport
from .derivatives import DirectionsReport as DirectionsReport
from .derivatives import ForwardModeUnsupportedError as ForwardModeUnsupportedError
from .derivatives import MultiPointReport as MultiPointReport
from .derivatives import check_directions as check_directions
from .derivatives import check_forward_mode as check_forward_mode
from .derivatives import check_jacobian as check_jacobian
from .derivatives import check_points as check_points
from .derivatives import check_second_order as check_second_order
from .derivatives import check_vjp as check_vjp
from .derivatives import directions_for_risk as directions_for_risk
from .derivatives import miss_probability as miss_probability
from .derivatives import stack_points as stack_points
from .engine import default_memory_budget as default_memory_budget
from .engine import this_process_only as this_process_only
from .kinks import KinkAnalysis as KinkAnalysis
from .kinks import Site as Site
from .kinks import inspect_kinks as inspect_kinks
from .kinks import track_winners as track_winners
from .protocol import BurnInError as BurnInError
from .protocol import BurnInWarning as BurnInWarning
from .protocol import DeterminismReport as DeterminismReport
from .protocol import DominatedTermWarning as DominatedTermWarning
from .protocol import LossTermsReport as LossTermsReport
from .protocol import NondeterminismError as NondeterminismError
from .protocol import assert_deterministic as assert_deterministic
from .protocol import burn_in as burn_in
from .protocol import check_determinism as check_determinism
from .protocol import check_loss_terms as check_loss_terms
from .protocol import take_datapoints as take_datapoints
from .report import CoordResult as CoordResult
from .report import GradCheckReport as GradCheckReport
from .report import GradientCheckError as GradientCheckError
from .report import LeafReport as LeafReport
from .report import SkippedLeaf as SkippedLeaf
from .steps import LeafSweep as LeafSweep
from .steps import StepSweep as StepSweep
from .steps import plot_step_sweep as plot_step_sweep
from .sweep import step_sweep as step_sweep

__version__ = "0.1.0"

__all__ = (
    "BlockCheckReport",
    "BurnInError",
    "BurnInWarning",
    "CoordResult",
    "DeterminismReport",
    "DirectionsReport",
    "DominatedTermWarning",
    "ForwardModeUnsupportedError",
    "GradCheckReport",
    "GradientCheckError",
    "KinkAnalysis",
    "LeafReport",
    "LeafSweep",
    "LossTermsReport",
    "MultiPointReport",
    "NondeterminismError",
    "Site",
    "SkippedLeaf",
    "StepSweep",
    "assert_deterministic",
    "assert_grads",
    "band_counts",
    "burn_in",
    "check_determinism",
    "check_directions",
    "check_forward_mode",
    "check_grads",
    "check_jacobian",
    "check_loss_terms",
    "check_points",
    "check_second_order",
    "check_vjp",
    "default_memory_budget",
    "directions_for_risk",
    "examples",
    "inspect_kinks",
    "miss_probability",
    "plot_step_sweep",
    "relative_error",
    "stack_points",
    "step_sweep",
    "take_datapoints",
    "this_process_only",
    "track_winners",
    "training",
    "use_compilation_cache",
)
