"""Update-to-parameter ratios: how far each optimiser step moves each leaf.

* :func:`update_ratios` (from the parameters before and after a step) and
  :func:`update_ratios_from_updates` (from optax's ``updates``): per leaf, the norm
  of the update over the norm of the parameter.
* :func:`check_update_ratios` judges them against the ~1e-3 rule of thumb: well
  below suggests the learning rate is too low, well above, too high.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcheck.training._render import (
    count,
    dataclass_to_dict,
    fmt,
    html_card,
    html_table,
)

__all__ = [
    "LeafRatio",
    "UpdateRatioReport",
    "check_update_ratios",
    "update_ratios",
    "update_ratios_from_updates",
]

PyTree = Any


# --------------------------------------------------------------------------------------
# Update-to-parameter ratios.
# --------------------------------------------------------------------------------------


def _norm(x: jax.Array) -> jax.Array:
    x = jnp.ravel(x)
    if x.size == 0:
        return jnp.zeros((), jnp.float32)
    return jnp.linalg.norm(x.astype(jnp.promote_types(x.dtype, jnp.float32)))


# One compiled function per tree structure and leaf shapes (jit's own cache), instead
# of a few eager ops per leaf.
@jax.jit
def _diff_norms(old: PyTree, new: PyTree) -> tuple[list[jax.Array], list[jax.Array]]:
    old_l, new_l = jax.tree.leaves(old), jax.tree.leaves(new)
    return (
        [_norm(a) for a in old_l],
        [_norm(b - a) for a, b in zip(old_l, new_l, strict=True)],
    )


@jax.jit
def _pair_norms(params: PyTree, updates: PyTree) -> tuple[list[jax.Array], ...]:
    return (
        [_norm(a) for a in jax.tree.leaves(params)],
        [_norm(u) for u in jax.tree.leaves(updates)],
    )


def _paths(tree: PyTree) -> list[str]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [jax.tree_util.keystr(path) for path, _ in flat]


def _ratios(paths: Sequence[str], norms: Any) -> dict[str, float]:
    pn, un = jax.device_get(norms)
    out = {}
    for k, p, u in zip(paths, pn, un, strict=True):
        p, u = float(p), float(u)
        out[k] = u / p if p > 0 else (0.0 if u == 0 else math.nan)
    return out


def _as_arrays(tree: PyTree) -> PyTree:
    return jax.tree.map(jnp.asarray, tree)


def _check_same_structure(a: PyTree, b: PyTree, name_a: str, name_b: str) -> None:
    sa, sb = jax.tree.structure(a), jax.tree.structure(b)
    if sa != sb:
        raise ValueError(
            f"`{name_a}` and `{name_b}` must have the same pytree structure, got "
            f"{sa} and {sb}."
        )


def update_ratios(params: PyTree, new_params: PyTree) -> dict[str, float]:
    """Per leaf, the norm of the update over the norm of the parameter.

    The update is ``new_params - params``: what the optimiser actually did (for
    plain SGD, ``learning_rate * gradient``), not the raw gradient. A zero
    parameter (e.g. a bias at initialisation) has no meaningful ratio: NaN, or 0
    if the update is zero too.

    Args:
        params: Parameters before the step.
        new_params: Parameters after the step, same structure.

    Returns:
        ``{keystr path: ||new - old|| / ||old||}``, e.g. ``{"['W']": 1e-3}``.

    Raises:
        ValueError: If the two pytrees differ in structure.

    Examples:
        >>> import jax.numpy as jnp
        >>> update_ratios({"W": jnp.ones(4)}, {"W": 1.001 * jnp.ones(4)})
        {"['W']": 0.00100...}
    """
    _check_same_structure(params, new_params, "params", "new_params")
    norms = _diff_norms(_as_arrays(params), _as_arrays(new_params))
    return _ratios(_paths(params), norms)


def update_ratios_from_updates(params: PyTree, updates: PyTree) -> dict[str, float]:
    """Like :func:`update_ratios`, from the updates (e.g. optax's ``updates``).

    Args:
        params: Parameters the updates are applied to.
        updates: The updates, same structure (``new = params + updates``).

    Returns:
        ``{keystr path: ||update|| / ||param||}``.

    Raises:
        ValueError: If the two pytrees differ in structure.

    Examples:
        >>> import jax.numpy as jnp
        >>> update_ratios_from_updates({"b": 2 * jnp.ones(4)}, {"b": jnp.ones(4)})
        {"['b']": 0.5}
    """
    _check_same_structure(params, updates, "params", "updates")
    norms = _pair_norms(_as_arrays(params), _as_arrays(updates))
    return _ratios(_paths(params), norms)


@dataclasses.dataclass(frozen=True)
class LeafRatio:
    """The update-to-parameter ratio of one leaf and its verdict.

    Attributes:
        path: The leaf's ``keystr`` path.
        ratio: Typical ratio (median over the records judged).
        verdict: ``"ok"``, ``"too_high"``, ``"too_low"``, ``"frozen"`` (the leaf
            does not change) or ``"undefined"`` (zero parameter, e.g. a bias at
            initialisation).
        message: One line for the person reading it.
    """

    path: str
    ratio: float
    verdict: str
    message: str


@dataclasses.dataclass(frozen=True)
class UpdateRatioReport:
    """Update-to-parameter ratios of all leaves against the rule of thumb.

    Attributes:
        passed: No leaf too high, too low or frozen.
        verdict: ``"ok"``, ``"lr_too_high"``, ``"lr_too_low"`` (all judged leaves
            agree), ``"mixed"`` (some high, some low: per-leaf scales differ) or
            ``"frozen"``.
        reason: Why, with the numbers.
        leaves: One :class:`LeafRatio` per leaf.
        target: The rule-of-thumb ratio (1e-3).
        low: Ratios below it are too low.
        high: Ratios above it are too high.
    """

    passed: bool
    verdict: str
    reason: str
    leaves: tuple[LeafRatio, ...]
    target: float
    low: float
    high: float

    name = "update_ratios"

    @property
    def warnings(self) -> tuple[str, ...]:
        """The per-leaf messages of leaves that are not ok."""
        return tuple(
            f"{leaf.path}: {leaf.message}"
            for leaf in self.leaves
            if leaf.verdict not in ("ok", "undefined")
        )

    def as_dict(self) -> dict[str, float]:
        """``{path: ratio}``."""
        return {leaf.path: leaf.ratio for leaf in self.leaves}

    def __str__(self) -> str:
        width = max([len(leaf.path) for leaf in self.leaves] + [4])
        lines = [
            f"[{self.verdict}] update/param ratio (target ~{self.target:.0e}, ok in "
            f"[{self.low:.0e}, {self.high:.0e}])",
            f"  {self.reason}",
        ]
        for leaf in self.leaves:
            # Every verdict but "ok" says why (an undefined ratio is not judged).
            why = "" if leaf.verdict == "ok" else f": {leaf.message}"
            lines.append(
                f"    {leaf.path:<{width}}  {fmt(leaf.ratio, '.2e'):>9}  "
                f"{leaf.verdict}{why}"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """The report as plain Python types (JSON-serialisable)."""
        return {"name": self.name, **dataclass_to_dict(self)}

    def _repr_html_(self) -> str:
        rows = [
            (lf.path, fmt(lf.ratio, ".2e"), lf.verdict, lf.message)
            for lf in self.leaves
        ]
        return html_card(
            "update/param ratio", self.passed, self.reason, self.verdict
        ) + (html_table(["leaf", "ratio", "verdict", "message"], rows))


def check_update_ratios(
    ratios: Mapping[str, float | Sequence[float]],
    *,
    target: float = 1e-3,
    low: float | None = None,
    high: float | None = None,
    exclude: Sequence[str] | Mapping[str, str] = (),
) -> UpdateRatioReport:
    """Judges update-to-parameter ratios against the ~1e-3 rule of thumb.

    A ratio well below ``target`` suggests the learning rate is too low; well above
    it, too high. Each leaf is judged on its median ratio, so a history of ratios
    (a list per leaf) smooths out single noisy steps. NaN (zero parameter) is
    reported as ``"undefined"`` and not judged.

    Args:
        ratios: ``{path: ratio}`` or ``{path: [ratio at each recorded step]}``, as
            from :func:`update_ratios` or :meth:`~jaxcheck.training.TrainingMonitor.update_history`.
        target: The ratio to aim for.
        low: Ratios below are too low; default ``target / 10``.
        high: Ratios above are too high; default ``target * 10``.
        exclude: Paths not to judge (reported as ``"undefined"``), or a mapping
            from such paths to why they are not judged (shown in the report).

    Returns:
        An :class:`UpdateRatioReport`.

    Raises:
        ValueError: If ``ratios`` is empty or the band is not ``0 < low < high``.

    Examples:
        >>> r = check_update_ratios({"['W']": 0.3, "['b']": 0.2})
        >>> r.verdict, r.passed
        ('lr_too_high', False)
    """
    lo = target / 10 if low is None else float(low)
    hi = target * 10 if high is None else float(high)
    if not 0 < lo < hi:
        raise ValueError(f"Need 0 < low < high, got low={lo!r}, high={hi!r}.")
    if not ratios:
        raise ValueError(
            "`ratios` is empty; record updates with update_ratios(params, "
            "new_params) first."
        )
    excluded = (
        {str(k): str(v) for k, v in exclude.items()}
        if isinstance(exclude, Mapping)
        else dict.fromkeys(exclude, "excluded by the caller")
    )
    leaves = tuple(
        _judge_leaf(path, value, excluded.get(path, ""), lo, hi)
        for path, value in ratios.items()
    )
    verdict, reason = _overall_verdict(leaves, lo, hi)
    passed = all(leaf.verdict in ("ok", "undefined") for leaf in leaves)
    return UpdateRatioReport(passed, verdict, reason, leaves, target, lo, hi)


def _judge_leaf(
    path: str, value: float | Sequence[float], excluded: str, lo: float, hi: float
) -> LeafRatio:
    """The verdict on one leaf's median ratio (``excluded``: why it is not
    judged, or ``""``)."""
    arr = np.asarray(value, dtype=np.float64).reshape(-1)
    finite = arr[np.isfinite(arr)]
    if excluded or finite.size == 0:
        shown = float(np.median(finite)) if finite.size else math.nan
        why = (
            f"{excluded}, so it is not judged"
            if excluded
            else "the parameter is all zeros at every recorded update, so "
            "update/parameter has no denominator; not judged"
        )
        return LeafRatio(path, shown, "undefined", why)
    r = float(np.median(finite))
    if r == 0.0:
        return LeafRatio(
            path,
            r,
            "frozen",
            "no update: zero gradient, stop_gradient, or the leaf is left out of "
            "the optimiser",
        )
    if r > hi:
        return LeafRatio(
            path,
            r,
            "too_high",
            f"ratio {r:.1e} > {hi:.0e}: updates are large against the weights; the "
            "learning rate is likely too high for this leaf",
        )
    if r < lo:
        return LeafRatio(
            path,
            r,
            "too_low",
            f"ratio {r:.1e} < {lo:.0e}: updates barely move the weights; the "
            "learning rate is likely too low for this leaf",
        )
    return LeafRatio(path, r, "ok", f"ratio {r:.1e} is in range")


def _overall_verdict(
    leaves: Sequence[LeafRatio], lo: float, hi: float
) -> tuple[str, str]:
    """The verdict over all leaves, and why."""
    counts = {
        v: sum(leaf.verdict == v for leaf in leaves)
        for v in ("ok", "too_high", "too_low", "frozen", "undefined")
    }
    judged = len(leaves) - counts["undefined"]
    if judged == 0:
        verdict, reason = "undefined", "No leaf could be judged (all zero or excluded)."
    elif counts["too_high"] and counts["too_low"]:
        verdict = "mixed"
        reason = (
            f"{count(counts['too_high'], 'leaf', 'leaves')} "
            f"update{'s' if counts['too_high'] == 1 else ''} too fast and "
            f"{counts['too_low']} too slowly: their scales differ; consider "
            "per-leaf learning rates, a different initialisation, or an adaptive "
            "optimiser."
        )
    elif counts["too_high"]:
        verdict = "lr_too_high"
        reason = (
            f"{_some_of(counts['too_high'], judged)} above {hi:.0e}: lower the "
            "learning rate."
        )
    elif counts["too_low"]:
        verdict = "lr_too_low"
        reason = (
            f"{_some_of(counts['too_low'], judged)} below {lo:.0e}: raise the "
            "learning rate."
        )
    elif counts["frozen"]:
        verdict = "frozen"
        reason = f"{_frozen(counts['frozen'])}."
    else:
        verdict = "ok"
        reason = (
            f"{'The' if judged == 1 else 'All'} "
            f"{count(judged, 'judged leaf', 'judged leaves')} "
            f"{'is' if judged == 1 else 'are'} within [{lo:.0e}, {hi:.0e}]."
        )
    if counts["frozen"] and verdict != "frozen":
        reason += f" {_frozen(counts['frozen'])}."
    return verdict, reason


def _frozen(n: int) -> str:
    return (
        f"{count(n, 'leaf', 'leaves')} {'does' if n == 1 else 'do'} not change at all"
    )


def _some_of(n: int, judged: int) -> str:
    """E.g. ``"2 of 3 judged leaves have ratios"``."""
    leaves = "leaf" if judged == 1 else "leaves"
    return (
        f"{n} of {judged} judged {leaves} {'has a ratio' if n == 1 else 'have ratios'}"
    )
