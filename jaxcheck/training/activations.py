"""Per-layer activation and gradient statistics, captured from the jaxpr.

:func:`activation_stats` records the output of every nonlinearity of a function
(and, for a loss, the gradient there) by evaluating its jaxpr with the recording
interpreter of :mod:`jaxcheck.training._capture`, and flags dead ReLUs, saturated or
collapsed tanh/sigmoid units and vanishing gradients.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcheck.training import _capture as _capture_mod
from jaxcheck.training._render import (
    count,
    dataclass_to_dict,
    fmt,
    html_card,
    html_table,
)

__all__ = [
    "RECTIFIERS",
    "SQUASHERS",
    "ActivationReport",
    "LayerStats",
    "activation_stats",
]

#: Kinds whose units can die: flat (or nearly so) on the negative side. A unit
#: is dead when its output is <= 0 for every example.
RECTIFIERS = ("relu", "leaky_relu", "elu", "selu", "celu", "silu", "mish")
#: Kinds that saturate at both tails.
SQUASHERS = ("tanh", "sigmoid")


@dataclasses.dataclass(frozen=True)
class LayerStats:
    """The distribution of one nonlinearity's output (and of the gradient there).

    Attributes:
        name: ``"<index>:<kind>"`` in order of evaluation, e.g. ``"0:relu"``.
        kind: ``"relu"``, ``"tanh"``, ``"sigmoid"``, or the name of a ``jax.nn``
            activation: ``"leaky_relu"``, ``"elu"``, ``"selu"``, ``"celu"``,
            ``"silu"``, ``"mish"``, ``"softplus"``.
        shape: Shape of the output.
        mean: Mean of the activations.
        std: Standard deviation of the activations.
        min: Smallest activation.
        max: Largest activation.
        fraction_zero: Fraction of activations exactly zero (ReLU).
        fraction_dead: Fraction of units (last axis) that are zero for every
            example (ReLU): dead units pass no gradient.
        fraction_saturated: Fraction of activations in the flat tails (tanh/sigmoid
            beyond ``saturation_level``), where the gradient vanishes.
        fraction_collapsed: Fraction of tanh/sigmoid activations stuck at the
            centre (``|tanh| < 0.01``), a sign of too-small weights.
        hist_counts: Histogram of the activations.
        hist_edges: Its bin edges.
        grad_mean: Mean of d(output)/d(activation), or ``None``.
        grad_std: Standard deviation of that gradient, or ``None``.
        grad_rms: Root mean square of that gradient, or ``None``.
        grad_hist_counts: Histogram of the gradient (empty without gradients).
        grad_hist_edges: Its bin edges.
        warnings: What looks wrong with this layer.
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    mean: float
    std: float
    min: float
    max: float
    fraction_zero: float
    fraction_dead: float
    fraction_saturated: float
    fraction_collapsed: float
    hist_counts: tuple[int, ...]
    hist_edges: tuple[float, ...]
    grad_mean: float | None = None
    grad_std: float | None = None
    grad_rms: float | None = None
    grad_hist_counts: tuple[int, ...] = ()
    grad_hist_edges: tuple[float, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def key_stat(self) -> str:
        """The figure that matters for this kind of layer: dead units for a
        rectifier (``"dead 12%"``), saturation for tanh/sigmoid (``"sat 3%"``);
        empty for others (softplus).

        Examples:
          >>> import jax, jax.numpy as jnp
          >>> report = activation_stats(lambda x: jax.nn.relu(x - 9.0), jnp.ones((4, 2)))
          >>> report.layers[0].key_stat
          'dead 100%'
        """
        if self.kind in RECTIFIERS:
            return f"dead {self.fraction_dead:.0%}"
        if self.kind in SQUASHERS:
            return f"sat {self.fraction_saturated:.0%}"
        return ""

    def __str__(self) -> str:
        special = self.key_stat.replace("sat ", "saturated ") or self.kind
        grad = "" if self.grad_rms is None else f", grad rms {self.grad_rms:.2e}"
        status = "; ".join(self.warnings) or "ok"
        return (
            f"{self.name} {'x'.join(map(str, self.shape))}: mean {self.mean:.3g}, "
            f"std {self.std:.3g}, {special}{grad}: {status}"
        )

    def to_dict(self) -> dict[str, Any]:
        """The stats as plain Python types (JSON-serialisable)."""
        return dataclass_to_dict(self)


@dataclasses.dataclass(frozen=True)
class ActivationReport:
    """Per-layer activation (and gradient) statistics with warnings.

    Attributes:
        layers: One :class:`LayerStats` per recorded nonlinearity, in order.
        passed: No layer has warnings.
        reason: Summary of what was found.
    """

    layers: tuple[LayerStats, ...]
    passed: bool
    reason: str

    name = "activation_stats"

    @property
    def warnings(self) -> tuple[str, ...]:
        """All layer warnings, each prefixed with the layer name."""
        return tuple(f"{lay.name}: {w}" for lay in self.layers for w in lay.warnings)

    def layer(self, name: str) -> LayerStats:
        """The stats of the layer called ``name`` (e.g. ``"0:relu"``)."""
        for lay in self.layers:
            if lay.name == name:
                return lay
        raise KeyError(
            f"No layer named {name!r}; layers are {[lay.name for lay in self.layers]}."
        )

    def _rows(self) -> list[tuple[str, ...]]:
        rows = []
        for lay in self.layers:
            special = lay.key_stat or "-"
            rows.append(
                (
                    lay.name,
                    "x".join(map(str, lay.shape)),
                    fmt(lay.mean, ".3f"),
                    fmt(lay.std, ".3f"),
                    special,
                    fmt(lay.grad_rms, ".2e"),
                    "; ".join(lay.warnings) or "ok",
                )
            )
        return rows

    _HEADERS = ("layer", "shape", "mean", "std", "dead/saturated", "grad rms", "status")

    def __str__(self) -> str:
        verdict = "ok" if self.passed else "WARN"
        lines = [f"[{verdict}] activations: {self.reason}"]
        rows = [self._HEADERS] + self._rows()
        widths = [max(len(r[i]) for r in rows) for i in range(len(self._HEADERS) - 1)]
        for r in rows:
            cells = [c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)]
            lines.append("    " + "  ".join(cells) + "  " + r[-1])
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """The report as plain Python types (JSON-serialisable)."""
        return {"name": self.name, **dataclass_to_dict(self)}

    def _repr_html_(self) -> str:
        label = "ok" if self.passed else "WARN"
        return html_card("activations", self.passed, self.reason, label) + html_table(
            self._HEADERS, self._rows()
        )


def _histogram(
    values: np.ndarray, bins: int
) -> tuple[tuple[int, ...], tuple[float, ...]]:
    if values.size == 0:
        return (), ()
    lo, hi = float(values.min()), float(values.max())
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    counts, edges = np.histogram(values, bins=bins, range=(lo, hi))
    return tuple(int(c) for c in counts), tuple(float(e) for e in edges)


def activation_stats(
    f: Callable[..., Any],
    *args: Any,
    gradients: bool = False,
    bins: int = 30,
    dead_threshold: float = 0.25,
    saturation_level: float = 0.99,
    saturation_threshold: float = 0.25,
    collapse_threshold: float = 0.9,
    vanishing_ratio: float = 1e-3,
) -> ActivationReport:
    """Records every nonlinearity's output inside ``f``, without changing ``f``.

    ``f`` is traced with ``jax.make_jaxpr`` and its jaxpr evaluated by a small
    interpreter that records the output of every ``tanh``, ``logistic`` (sigmoid)
    and ``max(x, 0)`` (ReLU, including ``jax.nn.relu``), and of ``jax.nn``'s
    ``leaky_relu``, ``elu``, ``selu``, ``celu``, ``silu``/``swish``, ``mish`` and
    ``softplus`` (recognised by name, each one layer), looking inside ``jit``,
    ``checkpoint`` and ``custom_jvp``/``custom_vjp`` calls. Custom calls are still
    evaluated by their own rules. ``jax.nn.gelu`` is inlined by JAX, so its inner
    ``tanh`` shows up as a tanh layer. With ``gradients=True`` and a scalar ``f`` (a
    loss), it also records the gradient of ``f`` with respect to each recorded
    output. Nonlinearities inside a ``scan`` (an RNN, scanned layers) are
    recorded stacked over its steps, shape ``(length, ...)``, without their
    gradients; those inside ``while`` and ``cond`` are not recorded.

    Warnings per layer: ReLU layers with more than ``dead_threshold`` of their units
    dead (zero for every example: a large negative bias, too high a learning rate;
    for leaky ReLU, ELU, SiLU and the like: negative for every example);
    tanh/sigmoid layers with more than ``saturation_threshold`` of activations in
    the tails (weights too large, gradients vanish) or more than
    ``collapse_threshold`` near the centre (weights too small); layers whose
    gradient RMS is below ``vanishing_ratio`` times the largest layer's.

    Args:
        f: The model or loss, ``f(*args)``.
        *args: Its arguments, pytrees of arrays, e.g. ``params, x`` or ``params, x,
            y`` (bind anything else with ``functools.partial``). Use a batch of
            examples: "dead" means zero for every example in it.
        gradients: Also record the gradient of ``f`` (must return a scalar) with
            respect to each recorded activation.
        bins: Number of histogram bins.
        dead_threshold: Fraction of dead ReLU units that triggers a warning.
        saturation_level: ``|tanh| >= level`` (sigmoid: ``y <= 1 - level`` or
            ``y >= level``) counts as saturated.
        saturation_threshold: Fraction of saturated activations that triggers a
            warning.
        collapse_threshold: Fraction of tanh/sigmoid activations at the centre that
            triggers a warning.
        vanishing_ratio: Gradient RMS ratio to the largest layer's that triggers a
            warning.

    Returns:
        An :class:`ActivationReport`; ``report.layers`` lists the layers in order
        of evaluation.

    Raises:
        ValueError: If ``gradients=True`` and ``f`` does not return a scalar float.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> def model(p, x):
        ...     return jnp.tanh(jax.nn.relu(x @ p["W1"] + p["b1"]) @ p["W2"])
        >>> p = {"W1": jnp.ones((3, 4)), "b1": -100.0 * jnp.ones(4),
        ...      "W2": jnp.ones((4, 2))}
        >>> report = activation_stats(model, p, jnp.ones((8, 3)))
        >>> [lay.name for lay in report.layers], report.layer("0:relu").fraction_dead
        (['0:relu', '1:tanh'], 1.0)
    """
    kinds, values, grads = _capture(f, args, gradients)
    layers = [
        _layer_stats(
            f"{i}:{kind}",
            kind,
            np.asarray(val, dtype=np.float64),
            grad,
            bins=bins,
            dead_threshold=dead_threshold,
            saturation_level=saturation_level,
            saturation_threshold=saturation_threshold,
            collapse_threshold=collapse_threshold,
        )
        for i, (kind, val, grad) in enumerate(zip(kinds, values, grads, strict=True))
    ]
    _flag_vanishing(layers, vanishing_ratio)
    stats = tuple(
        LayerStats(**{**lay, "warnings": tuple(lay["warnings"])}) for lay in layers
    )
    flagged = [lay.name for lay in stats if lay.warnings]
    if not stats:
        reason = "No tanh, sigmoid or ReLU (max(x, 0)) found in f; nothing to record."
    elif flagged:
        needs = "needs" if len(flagged) == 1 else "need"
        reason = (
            f"{len(flagged)} of {count(len(stats), 'layer')} {needs} a look: "
            f"{', '.join(flagged)}."
        )
    else:
        reason = (
            f"{count(len(stats), 'layer')} recorded; no dead, saturated or "
            "collapsed layer."
        )
    return ActivationReport(stats, not flagged, reason)


def _capture(
    f: Callable[..., Any], args: tuple[Any, ...], gradients: bool
) -> tuple[list[str], list[Any], list[Any]]:
    """Runs ``f`` through the recording interpreter: the kind and value of every
    recorded nonlinearity, and the gradient of ``f`` there (or ``None``)."""
    closed = jax.make_jaxpr(f)(*args)
    flat_args = jax.tree.leaves(args)
    meta: dict[str, Any] = {}

    def run(probes, flat):
        rec = _capture_mod.Recorder(probes)
        outs, _ = _capture_mod.eval_jaxpr(closed.jaxpr, closed.consts, flat, rec, True)
        meta["kinds"] = list(rec.kinds)
        meta["has_grad"] = list(rec.has_grad)
        return outs, rec.values

    if gradients:
        out_avals = closed.out_avals
        if (
            len(out_avals) != 1
            or out_avals[0].shape != ()
            or not jnp.issubdtype(out_avals[0].dtype, jnp.floating)
        ):
            raise ValueError(
                "`gradients=True` needs `f` to return one scalar float (a loss), got "
                f"{[str(a) for a in out_avals]}; pass the loss, or gradients=False."
            )
        shapes = jax.eval_shape(lambda flat: run(None, flat)[1], flat_args)
        probes = [jnp.zeros(s.shape, s.dtype) for s in shapes]

        def loss_of_probes(pr, flat):
            outs, values = run(pr, flat)
            return outs[0], values

        grads, values = jax.jit(jax.grad(loss_of_probes, has_aux=True))(
            probes, flat_args
        )
        grads = [g if meta["has_grad"][i] else None for i, g in enumerate(grads)]
    else:
        _, values = jax.jit(lambda flat: run(None, flat))(flat_args)
        grads = [None] * len(values)
    return meta["kinds"], jax.device_get(values), jax.device_get(grads)


def _unit_health(
    kind: str,
    a: np.ndarray,
    *,
    dead_threshold: float,
    saturation_level: float,
    saturation_threshold: float,
    collapse_threshold: float,
) -> tuple[float, float, float, list[str]]:
    """Fractions of dead, saturated and collapsed units, and the warnings."""
    flat = a.reshape(-1)
    warnings = []
    frac_dead = frac_sat = frac_col = 0.0
    if kind in RECTIFIERS:
        units = a.reshape(-1, a.shape[-1]) if a.ndim >= 1 else a.reshape(1, 1)
        dead = np.all(units <= 0, axis=0)
        frac_dead = float(np.mean(dead))
        if frac_dead > dead_threshold and kind == "relu":
            warnings.append(
                f"{frac_dead:.0%} of {dead.size} units are dead (zero for every "
                "example): a large negative bias or too high a learning rate "
                "knocked them out; they pass no gradient"
            )
        elif frac_dead > dead_threshold:
            warnings.append(
                f"{frac_dead:.0%} of {dead.size} units are dead (negative for "
                f"every example): on the flat side of {kind} they pass only a "
                "weak gradient; a large negative bias or too high a learning "
                "rate pushed them there"
            )
    elif kind in SQUASHERS:
        centred = flat if kind == "tanh" else 2.0 * flat - 1.0
        frac_sat = float(np.mean(np.abs(centred) >= saturation_level))
        frac_col = float(np.mean(np.abs(centred) < 0.01))
        if frac_sat > saturation_threshold:
            warnings.append(
                f"{frac_sat:.0%} of activations are saturated at the tails: "
                "initial weights too large or inputs not normalised; "
                "gradients vanish there"
            )
        if frac_col > collapse_threshold:
            warnings.append(
                f"{frac_col:.0%} of activations sit at the centre: weights too "
                "small, the signal is collapsing"
            )
    return frac_dead, frac_sat, frac_col, warnings


def _layer_stats(
    name: str, kind: str, a: np.ndarray, grad: Any, *, bins: int, **thresholds: float
) -> dict[str, Any]:
    """The fields of one :class:`LayerStats` (``warnings`` still a list)."""
    flat = a.reshape(-1)
    frac_dead, frac_sat, frac_col, warnings = _unit_health(kind, a, **thresholds)
    counts, edges = _histogram(flat, bins)
    g_mean = g_std = g_rms = None
    g_counts: tuple[int, ...] = ()
    g_edges: tuple[float, ...] = ()
    if grad is not None:
        g = np.asarray(grad, dtype=np.float64).reshape(-1)
        g_mean, g_std = float(g.mean()), float(g.std())
        g_rms = float(np.sqrt(np.mean(g**2)))
        g_counts, g_edges = _histogram(g, bins)
    return dict(
        name=name,
        kind=kind,
        shape=tuple(int(s) for s in a.shape),
        mean=float(flat.mean()) if flat.size else 0.0,
        std=float(flat.std()) if flat.size else 0.0,
        min=float(flat.min()) if flat.size else 0.0,
        max=float(flat.max()) if flat.size else 0.0,
        fraction_zero=float(np.mean(flat == 0)) if flat.size else 0.0,
        fraction_dead=frac_dead,
        fraction_saturated=frac_sat,
        fraction_collapsed=frac_col,
        hist_counts=counts,
        hist_edges=edges,
        grad_mean=g_mean,
        grad_std=g_std,
        grad_rms=g_rms,
        grad_hist_counts=g_counts,
        grad_hist_edges=g_edges,
        warnings=warnings,
    )


def _flag_vanishing(layers: list[dict[str, Any]], vanishing_ratio: float) -> None:
    """Warns on layers whose gradient RMS is tiny next to the largest layer's."""
    rms = [lay["grad_rms"] for lay in layers if lay["grad_rms"] is not None]
    top = max(rms) if rms else 0.0
    for lay in layers:
        if top > 0 and lay["grad_rms"] is not None:
            if lay["grad_rms"] < vanishing_ratio * top:
                lay["warnings"].append(
                    f"gradient RMS {lay['grad_rms']:.1e} is below {vanishing_ratio:g}"
                    f" x the largest layer's ({top:.1e}): gradients vanish here"
                )
