"""The engine: where and how ``f`` is evaluated at perturbed points.

* :mod:`.program` builds one compiled program per check (value, analytic
  gradient, and every perturbed evaluation), cached by the structure of ``f``;
* :mod:`.rows` feeds it rows (padding, chunks, calls, Ctrl-C, progress);
* :mod:`.cluster` spreads rows over devices and processes;
* :mod:`.memory` sizes batches from a memory budget;
* :mod:`.cache` keeps compiled programs (in memory and on disk);
* :mod:`.leaf` holds the per-leaf evaluations the other checks build on.
"""

from .cache import avals_of as avals_of
from .cache import cached as cached
from .cluster import Interrupted as Interrupted
from .cluster import from_process_zero as from_process_zero
from .cluster import num_processes as num_processes
from .cluster import num_shards as num_shards
from .cluster import require_same_inputs as require_same_inputs
from .cluster import rows_per_process as rows_per_process
from .cluster import this_process_only as this_process_only
from .leaf import LeafFunction as LeafFunction
from .leaf import _eval_block as _eval_block
from .leaf import call_shapes as call_shapes
from .leaf import central_differences as central_differences
from .leaf import evaluate as evaluate
from .memory import CHUNKS_PER_CALL as CHUNKS_PER_CALL
from .memory import bytes_per_coordinate as bytes_per_coordinate
from .memory import choose_chunk_size as choose_chunk_size
from .memory import default_memory_budget as default_memory_budget
