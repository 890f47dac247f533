"""What the kink interpreters report on: the tables of kink-capable
primitives, :class:`Site` and :class:`KinkAnalysis`."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax.numpy as jnp

from ..render import Doc, Rendered

#: Kink-capable primitives whose decisions are tracked, and what is tracked.
TRACKED: dict[str, str] = {
    "max": "which operand wins",
    "min": "which operand wins",
    "abs": "the sign of the operand",
    "sign": "the sign of the operand",
    "clamp": "below, inside or above the range",
    "select_n": "which case is selected",
    "gt": "the outcome of the comparison",
    "ge": "the outcome of the comparison",
    "lt": "the outcome of the comparison",
    "le": "the outcome of the comparison",
    "eq": "the outcome of the comparison",
    "ne": "the outcome of the comparison",
    "floor": "the integer part",
    "ceil": "the integer part",
    "round": "the integer part",
    "convert_element_type": "the integer after a float-to-int cast",
    "rem": "the quotient",
    "argmax": "the index of the maximum",
    "argmin": "the index of the minimum",
    "top_k": "the indices of the top k",
    "reduce_max": "which entries are the maximum",
    "reduce_min": "which entries are the minimum",
    "cummax": "which entries are running maxima",
    "cummin": "which entries are running minima",
    "reduce_window_max": "the winner of every window (max pooling)",
    "reduce_window_min": "the winner of every window (min pooling)",
    "sort": "the permutation",
    "cond": "the branch taken",
    "while": "the number of iterations",
}

#: Kink-capable primitives whose winners are not tracked (listed in reports).
UNTRACKED: frozenset[str] = frozenset(
    {
        "scatter_max",
        "scatter_min",
        "reduce",
        "reduce_window",
        "select_and_scatter_add",
        "select_and_gather_add",
        "approx_top_k",
        "pmax",
        "pmin",
        "bitcast_convert_type",
    }
)

#: Primitives the interpreter cannot see into: kinks inside them are not
#: detected (listed in reports). Any other primitive that carries a jaxpr the
#: interpreter does not know how to enter is treated the same way.
OPAQUE: frozenset[str] = frozenset(
    {
        "pure_callback",
        "io_callback",
        "callback",
        "pallas_call",
        "custom_call",
        "ffi_call",
        "shard_map",
        "xla_pmap",
        "custom_transpose_call",
        "custom_lin",
    }
)

#: Primitives that carry jaxprs but whose result is a smooth function of their
#: operands (a linear solve; its pivoting only changes round-off): they are
#: neither entered nor listed as opaque.
SMOOTH_CALLS: frozenset[str] = frozenset({"custom_linear_solve"})

#: ``custom_jvp`` functions of JAX whose value is smooth although their
#: implementation uses kink-capable primitives (``logaddexp`` is
#: ``max(a, b) + log1p(exp(-|a - b|))``): not entered.
SMOOTH_CUSTOM_JVP: frozenset[str] = frozenset({"logaddexp", "logaddexp2"})


@dataclasses.dataclass(frozen=True)
class Site(Rendered):
    """One primitive application in ``f`` that jaxcheck reports on.

    Attributes:
      primitive: the primitive's name, e.g. ``"max"``.
      context: the innermost named function around it (``"relu"`` for the
        ``max`` inside ``jax.nn.relu``), or ``""``.
      location: the user's source line that created it, e.g.
        ``"model.py:12 (loss)"``, or ``""`` when unknown.
      shape: the shape of the value it decides on.
      within: ``"scan"``, ``"while"`` or ``"cond branch k"`` when it sits in a
        loop or branch body (its word then folds every iteration), else ``""``.
      dtype: the dtype of its output.
    """

    primitive: str
    context: str = ""
    location: str = ""
    shape: tuple[int, ...] = ()
    within: str = ""
    dtype: str = ""

    @property
    def label(self) -> str:
        """``"max in relu at model.py:12 (loss)"``: how reports name the site."""
        text = self.primitive
        if self.context and self.context != self.primitive:
            text += f" in {self.context}"
        if self.within:
            text += f" ({self.within})"
        if self.location:
            text += f" at {self.location}"
        return text

    def _doc(self) -> Doc:
        return Doc(self.label)


@dataclasses.dataclass(frozen=True)
class KinkAnalysis(Rendered):
    """What the jaxpr of ``f`` says about kinks, precision and depth.

    Attributes:
      sites: the kink-capable primitives whose inputs depend on the checked
        parameters and whose result reaches the output (not only through
        ``stop_gradient``): their winners are tracked.
      untracked: kink-capable primitives that depend on the parameters but whose
        winners jaxcheck does not track (``scatter_max``, generic ``reduce``).
      opaque: primitives jaxcheck cannot see into (callbacks, Pallas kernels,
        custom calls) that depend on the parameters: kinks inside them are not
        detected.
      low_precision: operations on the parameters' path to the output that
        compute in a floating type narrower than the check's (``float32``
        inside a ``float64`` check).
      depth: the longest chain of matrix products / convolutions from the
        parameters to the output (errors accumulate with depth).
      leaf_sites: for each checked leaf (by position in ``params``'s leaves),
        how many tracked sites depend on it.
      leaf_blind: for each checked leaf, how many untracked or opaque sites
        depend on it (their kinks cannot be seen).
    """

    sites: tuple[Site, ...] = ()
    untracked: tuple[Site, ...] = ()
    opaque: tuple[Site, ...] = ()
    low_precision: tuple[Site, ...] = ()
    depth: int = 0
    leaf_sites: dict[int, int] = dataclasses.field(default_factory=dict)
    leaf_blind: dict[int, int] = dataclasses.field(default_factory=dict)

    @property
    def has_kinks(self) -> bool:
        """True when ``f`` has a kink-capable primitive on the parameters' path
        (tracked or not) or calls something jaxcheck cannot see into."""
        return bool(self.sites or self.untracked or self.opaque)

    @property
    def low_precision_dtypes(self) -> tuple[str, ...]:
        return tuple(sorted({s.dtype for s in self.low_precision}))

    @property
    def low_precision_eps(self) -> float | None:
        """Machine epsilon of the narrowest float type inside, or None."""
        eps = [float(jnp.finfo(jnp.dtype(d)).eps) for d in self.low_precision_dtypes]
        return max(eps) if eps else None

    def summary(self, limit: int = 4) -> str:
        """A short text: the kink-capable primitives, grouped and counted."""
        return _summarise(self.sites + self.untracked + self.opaque, limit)

    _dict_extra = ("has_kinks",)

    def _doc(self) -> Doc:
        lines = [
            f"  {title}: {s.label}" + (f" [{s.dtype}]" if title[0] == "l" else "")
            for title, group in (
                ("tracked", self.sites),
                ("untracked", self.untracked),
                ("opaque (not seen into)", self.opaque),
                ("lower precision", self.low_precision),
            )
            for s in group
        ]
        return Doc(
            f"kink analysis: {len(self.sites)} tracked site(s), "
            f"{len(self.untracked)} untracked, {len(self.opaque)} opaque, "
            f"depth {self.depth}",
            lines,
        )


def _summarise(sites: Sequence[Site], limit: int = 4) -> str:
    counts: dict[str, int] = {}
    for s in sites:
        key = s.primitive + (
            f" in {s.context}" if s.context and s.context != s.primitive else ""
        )
        counts[key] = counts.get(key, 0) + 1
    parts = [f"{k} x{n}" if n > 1 else k for k, n in counts.items()]
    if len(parts) > limit:
        parts = parts[:limit] + [f"{len(parts) - limit} more"]
    return ", ".join(parts)
