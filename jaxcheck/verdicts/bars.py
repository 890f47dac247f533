"""The bar a check judges by: from the precision ``f`` and its gradient have,
the kinks ``f`` can cross and the finite-difference formula.

:func:`choose_precision` reads the static analysis of ``f``
(:func:`jaxcheck.kinks.analyze_jaxpr`) and the options of the check and returns
a :class:`Precision`: the round-off ``f`` really has (the lowest precision it
computes or returns in), the bar of the whole check and of every leaf, and the
notes that explain them.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax.numpy as jnp
import numpy as np

from .. import compare

#: The loosest default bar of forward differences (their error is ``O(h)``).
FORWARD_RTOL = 1e-5


@dataclasses.dataclass(frozen=True)
class Precision:
    """What a check knows about precision before it evaluates anything.

    Attributes:
      eps_f: the machine epsilon of the lowest precision ``f`` computes in.
      text: a short label for the report ("" for a plain float64 check).
      bar: the bar of the whole check (the loosest leaf's).
      leaf_bars: the relative-error bar of each checked leaf, in order.
      notes: sentences for the report that explain a raised bar.

    Examples:
      >>> p = Precision(2.0**-52, "", compare.Bar(1e-7, "smooth"), (1e-7,), ())
      >>> p.leaf_bars
      (1e-07,)
    """

    eps_f: float
    text: str
    bar: compare.Bar
    leaf_bars: tuple[float, ...]
    notes: tuple[str, ...]


def _eps(dtypes: list[Any], floor: float) -> float:
    return max([floor] + [float(jnp.finfo(np.dtype(d)).eps) for d in dtypes])


def choose_precision(
    point: Any, analysis: Any, opts: Any, grad_dtypes: list[Any]
) -> Precision:
    """The eps of ``f`` and of the gradient, and the bars they and the kinks set.

    Args:
      point: the traced point (:func:`jaxcheck.point.prepare`).
      analysis: the static analysis of ``f`` (:func:`jaxcheck.kinks.analyze_jaxpr`).
      opts: the validated options (:class:`jaxcheck.options.CheckOptions`).
      grad_dtypes: the dtypes of the user's ``grad_fn`` leaves ([] for jax.grad).

    Returns:
      a :class:`Precision`.

    Examples:
      >>> import jaxcheck
      >>> from jaxcheck.kinks import analyze_jaxpr
      >>> from jaxcheck.options import check_options
      >>> from jaxcheck.point import prepare
      >>> point = prepare(lambda w: jnp.sum(w.astype(jnp.float32) ** 2),
      ...                 jnp.ones(3), (), np.float64)
      >>> opts = check_options()
      >>> analysis = analyze_jaxpr(point.primal, [0], check_dtype=np.float64)
      >>> p = choose_precision(point, analysis, opts, [])
      >>> p.text, p.eps_f == float(jnp.finfo(jnp.float32).eps)
      ('float32 inside', True)
    """
    eps = float(jnp.finfo(point.dtype).eps)
    low = list(analysis.low_precision_dtypes)
    if np.dtype(point.out_dtype).itemsize < point.dtype.itemsize:
        low.append(str(point.out_dtype))
    eps_f = _eps(low, eps)
    narrow_g = [
        str(d) for d in grad_dtypes if np.dtype(d).itemsize < point.dtype.itemsize
    ]
    eps_g = _eps(narrow_g, eps)
    notes, text, low_info = [], "", None
    if low:
        names = "/".join(sorted(set(low)))
        low_info, text = (names, eps_f), f"{names} inside"
        where = "; ".join(s.label for s in analysis.low_precision[:3])
        notes.append(
            f"f computes in {names} inside even though the check runs in "
            f"{point.dtype.name}"
            + (f" ({where})" if where else " (it returns that dtype)")
            + f": its round-off is about {eps_f:.0e} relative, so errors "
            f"near {10 * math.sqrt(eps_f):.0e} are expected in a correct "
            "gradient and the bar and step are set for it. Remove the cast to "
            "see a float64 check."
        )
    elif point.dtype != np.float64:
        low_info = (f"{point.dtype.name} (the check's dtype)", eps_f)
        text = f"check in {point.dtype.name}"
    if narrow_g and eps_g > eps_f:
        names = "/".join(sorted(set(narrow_g)))
        low_info = (f"{names} (the gradient from grad_fn)", eps_g)
        text = text or f"gradient in {names}"
        notes.append(
            f"`grad_fn` returns {names}: its own round-off is about {eps_g:.0e} "
            f"relative, so the bar is set for {names}."
        )
    bar = _kink_bar(_base_bar(analysis, opts, low_info), analysis, opts)
    leaf_bars = tuple(
        _leaf_bar(bar.rtol, k, analysis, opts) for k in range(len(point.leaves))
    )
    loose = [
        leaf.path
        for leaf, b in zip(point.leaves, leaf_bars, strict=True)
        if b > bar.rtol
    ]
    if loose:
        why = "tracking is off" if not opts.track_kinks else "jaxcheck cannot see"
        bar = compare.Bar(
            max(leaf_bars),
            bar.reason + f"; {', '.join(loose)}: the bar for objectives with kinks "
            f"({compare.KINK_RTOL:g}), since they feed kink-capable "
            f"primitives whose winners {why} ({analysis.summary()})",
            bar.noise_factor,
        )
    return Precision(eps_f, text, bar, leaf_bars, tuple(notes))


def _base_bar(
    analysis: Any, opts: Any, low_info: tuple[str, float] | None
) -> compare.Bar:
    kinks_text = analysis.summary() if (analysis.has_kinks and opts.rtol) else None
    bar = compare.choose_bar(
        opts.rtol, opts.noise_factor, kinks=kinks_text, low_precision=low_info,
        depth=analysis.depth,
    )  # fmt: skip
    if opts.method == "forward" and opts.rtol is None and bar.rtol < FORWARD_RTOL:
        bar = compare.Bar(
            FORWARD_RTOL,
            "forward differences have an O(h) truncation error, so the bar is "
            f"{FORWARD_RTOL:g} (use the default centered differences for a "
            "tighter check)",
            bar.noise_factor,
        )
    return bar


def _kink_bar(bar: compare.Bar, analysis: Any, opts: Any) -> compare.Bar:
    if not (analysis.sites and opts.track_kinks and opts.rtol is None):
        return bar
    return compare.Bar(
        bar.rtol,
        bar.reason + "; a coordinate whose step crosses a kink (a "
        f"winner of {analysis.summary()} changes) is judged at "
        f"{max(bar.rtol, compare.KINK_RTOL):g}, the bar for "
        "objectives with kinks",
        bar.noise_factor,
    )


def _leaf_bar(base: float, k: int, analysis: Any, opts: Any) -> float:
    """A leaf whose kinks cannot be seen (untracked or opaque primitives, or
    tracking off) gets the bar for kinked objectives."""
    if opts.rtol is not None:
        return base
    blind = analysis.leaf_blind.get(k, 0)
    if not opts.track_kinks:
        blind += analysis.leaf_sites.get(k, 0)
    return max(base, compare.KINK_RTOL) if blind else base
