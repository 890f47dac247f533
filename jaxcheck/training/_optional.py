"""Optional dependencies of the training diagnostics, imported when first needed.

Internal to :mod:`jaxcheck.training`: import the module by name.
"""

from __future__ import annotations

import types

__all__ = ["TRAIN_HINT", "require_optax"]

#: What to install for the optimisers of the training diagnostics.
TRAIN_HINT = (
    "this needs optax for its optimisers; install jaxcheck[train] "
    "(or `pip install optax`)."
)


def require_optax() -> types.ModuleType:
    """Imports optax, or raises an ImportError that names ``jaxcheck[train]``.

    Examples:
        >>> require_optax().__name__
        'optax'
    """
    try:
        import optax
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(f"jaxcheck: {TRAIN_HINT}") from err
    return optax
