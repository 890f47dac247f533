"""jaxcheck: verify gradients in JAX.

A jit-compiled, vmapped centered-difference engine checks every (or a sample of
every leaf's) coordinate of a pytree of parameters in float64 and reports, leaf
by leaf, where the analytic gradient disagrees.
"""

from . import data as data
from . import examples as examples
from . import monitor as monitor
from . import plots as plots
from . import sanity as sanity
from .check import assert_grads as assert_grads
from .check import check_grads as check_grads
from .compare import band_counts as band_counts
from .compare import relative_error as relative_error
from .engine import default_memory_budget as default_memory_budget
from .report import CoordResult as CoordResult
from .report import GradCheckReport as GradCheckReport
from .report import GradientCheckError as GradientCheckError
from .report import LeafReport as LeafReport
from .report import SkippedLeaf as SkippedLeaf

__version__ = "0.1.0"

__all__ = (
    "CoordResult",
    "GradCheckReport",
    "GradientCheckError",
    "LeafReport",
    "SkippedLeaf",
    "assert_grads",
    "band_counts",
    "check_grads",
    "default_memory_budget",
    "data",
    "examples",
    "monitor",
    "plots",
    "sanity",
    "relative_error",
)
