"""The training part of ``jaxcheck demo``: sanity checks and a babysat run.

:func:`run_demo` runs the sanity checks of :mod:`jaxcheck.training.sanity` and
:mod:`jaxcheck.training.overfit` on scikit-learn's 8x8 digits, trains a small MLP
of :mod:`jaxcheck.examples` under a
:class:`~jaxcheck.training.monitor.TrainingMonitor` and writes the figures of
:mod:`jaxcheck.training.plots`.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcheck.examples import (
    l2_penalty,
    mlp_apply,
    mlp_init_named,
    multiclass_svm_loss,
    softmax_loss,
)
from jaxcheck.training import plots
from jaxcheck.training._optional import require_optax
from jaxcheck.training.activations import ActivationReport, activation_stats
from jaxcheck.training.data import Digits, load_digits
from jaxcheck.training.first_layer import FirstLayerReport, first_layer_tiles
from jaxcheck.training.monitor import TrainingMonitor
from jaxcheck.training.overfit import OverfitResult, overfit_small_subset
from jaxcheck.training.sanity import (
    check_initial_loss,
    check_regularization_raises_loss,
)

__all__ = ["DemoResult", "DemoVerdict", "run_demo"]

PyTree = Any

#: Standard deviation of the planted too-large initialisation.
LARGE_INIT_STD = 1.0


@jax.jit
def _data_loss(p: PyTree, x: jax.Array, y: jax.Array) -> jax.Array:
    return softmax_loss(mlp_apply(p, x), y)


@jax.jit
def _svm_loss(p: PyTree, x: jax.Array, y: jax.Array) -> jax.Array:
    return multiclass_svm_loss(mlp_apply(p, x), y)


@jax.jit
def _total_loss(
    p: PyTree, x: jax.Array, y: jax.Array, *, reg: float = 0.0
) -> jax.Array:
    return _data_loss(p, x, y) + reg * l2_penalty(p)


@jax.jit
def _accuracy(p: PyTree, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean(jnp.argmax(mlp_apply(p, x), -1) == y)


#: Standard deviation of the weights of the model that is trained: small enough
#: that what the first layer learns shows in its weights within a few epochs.
INIT_STD = 0.1
#: Adam's learning rate in the babysat run.
LEARNING_RATE = 3e-3


@dataclasses.dataclass(frozen=True)
class DemoVerdict:
    """One verdict of the demo, and what the demo expected of it.

    Attributes:
        name: What was checked, e.g. ``"initial_loss (small init, softmax)"``.
        passed: The diagnostic's own verdict.
        planted: ``""`` for a correctly set up case, which should pass; else the
            problem planted in it, which should be caught (not pass).

    Examples:
        >>> DemoVerdict("initial_loss (large init)", False, "large init").expected
        True
        >>> DemoVerdict("overfit_small_subset", False).expected
        False
    """

    name: str
    passed: bool
    planted: str = ""

    @property
    def expected(self) -> bool:
        """Whether the verdict is the expected one (planted problems fail)."""
        return self.passed != bool(self.planted)

    @property
    def why_unexpected(self) -> str:
        """``""``, or why the verdict is not the expected one."""
        if self.expected:
            return ""
        if self.planted:
            return f"the planted problem ({self.planted}) was not caught"
        return "a correctly set up case should pass this check"


@dataclasses.dataclass(frozen=True)
class DemoResult:
    """What :func:`run_demo` showed: the printable text and every verdict.

    Attributes:
        text: The summary to print (``str(result)``), each verdict labelled:
            ``[FAIL, planted]`` for a planted problem that was caught,
            ``UNEXPECTED`` for a verdict that is not the expected one.
        verdicts: Every verdict, in the order printed.
        figures: The PNG files written.

    Examples:
        >>> r = DemoResult("text", (DemoVerdict("a", True), DemoVerdict("b", True, "x")), ())
        >>> r.passed, [v.name for v in r.unexpected]
        (False, ['b'])
    """

    text: str
    verdicts: tuple[DemoVerdict, ...]
    figures: tuple[pathlib.Path, ...]

    @property
    def unexpected(self) -> tuple[DemoVerdict, ...]:
        """The verdicts that are not the expected ones."""
        return tuple(v for v in self.verdicts if not v.expected)

    @property
    def passed(self) -> bool:
        """True when every verdict is the expected one."""
        return not self.unexpected

    def __str__(self) -> str:
        return self.text


def run_demo(
    out_dir: str | pathlib.Path, *, seed: int = 0, epochs: int = 6
) -> DemoResult:
    """Runs the sanity checks and a babysat training run on the 8x8 digits.

    On scikit-learn's bundled digits (no download) it checks the loss at chance
    for a softmax and an SVM classifier with small weights, shows that a model with
    large initial weights is flagged (planted), checks that regularization raises
    the loss, overfits 20 examples, then trains a small ReLU MLP for a few epochs
    under a :class:`~jaxcheck.training.TrainingMonitor` (loss curve, train/validation
    accuracy, update-to-parameter ratios, activation and gradient distributions,
    first-layer weights before (planted: noise) and after training) and writes the
    figures as PNG files into ``out_dir``. It takes a few seconds on a laptop CPU.

    Every verdict is compared with what the demo expects: planted problems must
    be caught, the correctly set up cases must pass. ``result.passed`` is False
    when any verdict is unexpected, and the text marks it ``UNEXPECTED``.

    Args:
        out_dir: Folder for the figures; created if missing.
        seed: Seed of the initialisation, the data split and the batches.
        epochs: Epochs of the babysat training run.

    Returns:
        A :class:`DemoResult`: ``print(result)`` gives a multi-line summary that
        ends with the figure paths; ``result.passed`` says whether every verdict
        was the expected one.

    Raises:
        ImportError: If optax, matplotlib or scikit-learn is missing
            (``jaxcheck[demo]``).

    Examples:
        >>> import tempfile
        >>> result = run_demo(tempfile.mkdtemp(), epochs=1)  # doctest: +SKIP
        >>> result.passed, print(result)  # doctest: +SKIP
    """
    require_optax()
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    digits = load_digits(seed=seed)
    k_small, k_large, k_mlp = jax.random.split(jax.random.key(seed), 3)
    sizes = [digits.x_train.shape[1], 64, digits.num_classes]
    init = mlp_init_named(k_mlp, sizes, scale=INIT_STD)
    verdicts: list[DemoVerdict] = []
    lines = [f"jaxcheck demo: sanity checks and babysitting on {digits}"]

    def show(shown: list[tuple[Any, str, str, str]], indent: str) -> None:
        for result, name, tag, planted in shown:
            verdict = DemoVerdict(name, bool(result.passed), planted)
            verdicts.append(verdict)
            text = _labelled(str(result), tag, verdict)
            lines.append("  " + text.replace("\n", "\n" + indent))

    sanity = _sanity_checks(digits, sizes, k_small, k_large, init, seed)
    overfit = sanity[-1][0]
    lines += ["", "Sanity checks before learning:"]
    show(sanity, "    ")

    batch_size = 64
    mon, params, steps = _babysat_run(digits, init, epochs, batch_size, seed)
    x_train, y_train = jnp.asarray(digits.x_train), jnp.asarray(digits.y_train)
    layer_report = activation_stats(
        _data_loss, params, x_train[:256], y_train[:256], gradients=True
    )
    untrained = first_layer_tiles(init["layer0"]["W"], image_shape=(8, 8))
    first = first_layer_tiles(params["layer0"]["W"], image_shape=(8, 8))
    summary = mon.summary()
    lines.append("")
    lines.append(
        f"Babysat training: a {'-'.join(map(str, sizes))} ReLU MLP (weights std "
        f"{INIT_STD:g}), {epochs} epochs, batch {batch_size}, Adam {LEARNING_RATE:g}, {steps} steps"
    )
    at_init = "first-layer weights (at initialisation)"
    show(
        [
            (summary.loss, "loss curve", "", ""),
            (summary.accuracy, "accuracy", "", ""),
            (summary.updates, "update/param ratio", "", ""),
            (layer_report, "activations", "", ""),
            (untrained, at_init, "at initialisation", "untrained weights are noise"),
            (first, "first-layer weights (after training)", "after training", ""),
        ],
        "  ",
    )

    paths = _write_figures(out, mon, layer_report, first, overfit)
    lines.append("")
    bad = [v for v in verdicts if not v.expected]
    planted = [v for v in verdicts if v.planted]
    if bad:
        lines.append(
            f"UNEXPECTED: {len(bad)} of {len(verdicts)} verdicts: "
            + "; ".join(f"{v.name}: {v.why_unexpected}" for v in bad)
            + ". Please report this."
        )
    else:
        lines.append(
            f"Verdicts as expected: {len(planted)} planted problems caught, the "
            f"other {len(verdicts) - len(planted)} checks pass."
        )
    lines.append("")
    lines.append(f"Figures written to {out.resolve()}:")
    lines.extend(f"  {p.name}" for p in paths)
    lines.append(f"(demo took {time.perf_counter() - t_start:.1f} s)")
    return DemoResult("\n".join(lines), tuple(verdicts), tuple(paths))


def _labelled(text: str, tag: str, verdict: DemoVerdict) -> str:
    """``text`` (which starts ``[verdict] name...``) with the demo's label.

    ``tag`` goes after the name (before the first colon), ``planted`` or
    ``UNEXPECTED`` into the brackets, and an unexpected verdict gets a line
    saying why.
    """
    head, sep, rest = text.partition("\n")
    if tag:
        name, colon, tail = head.partition(":")
        head = f"{name} ({tag}){colon}{tail}"
    mark = (
        "UNEXPECTED" if not verdict.expected else "planted" if verdict.planted else ""
    )
    if mark and head.startswith("[") and "]" in head:
        close = head.index("]")
        head = f"{head[:close]}, {mark}{head[close:]}"
    text = head + sep + rest
    if not verdict.expected:
        text += f"\n  UNEXPECTED: {verdict.why_unexpected}."
    return text


def _sanity_checks(
    digits: Digits,
    sizes: list[int],
    k_small: jax.Array,
    k_large: jax.Array,
    init: PyTree,
    seed: int,
) -> list[tuple[Any, str, str, str]]:
    """The checks before learning as ``(result, name, tag, planted)``; the
    overfit result comes last."""
    x_train, y_train = jnp.asarray(digits.x_train), jnp.asarray(digits.y_train)
    c = digits.num_classes
    small = mlp_init_named(k_small, sizes, scale=1e-3)
    large = mlp_init_named(k_large, sizes, scale=LARGE_INIT_STD)
    predict = jax.jit(mlp_apply)
    large_tag = f"large init (std {float(LARGE_INIT_STD)!r})"
    return [
        (
            check_initial_loss(
                _data_loss, small, x_train, y_train, kind="softmax", num_classes=c
            ),
            "initial_loss (small init, softmax)",
            "small init, softmax",
            "",
        ),
        (
            check_initial_loss(
                _svm_loss, small, x_train, y_train, kind="svm", num_classes=c
            ),
            "initial_loss (small init, SVM)",
            "small init, SVM",
            "",
        ),
        (
            check_initial_loss(
                _data_loss,
                large,
                x_train,
                y_train,
                kind="softmax",
                num_classes=c,
                logits=predict(large, x_train),
            ),
            f"initial_loss ({large_tag})",
            large_tag,
            f"{large_tag}: scores far from uniform",
        ),
        (
            check_regularization_raises_loss(
                _total_loss,
                init,
                x_train,
                y_train,
                strengths=(0.0, 1e-3, 1e-2, 1e-1, 1.0),
            ),
            "regularization_raises_loss",
            "",
            "",
        ),
        (
            overfit_small_subset(
                _data_loss,
                init,
                x_train,
                y_train,
                predict_fn=mlp_apply,
                steps=150,
                seed=seed,
            ),
            "overfit_small_subset",
            "",
            "",
        ),
    ]


def _babysat_run(
    digits: Digits, params: PyTree, epochs: int, batch_size: int, seed: int
) -> tuple[TrainingMonitor, PyTree, int]:
    """Minibatch Adam on the full training set under a :class:`TrainingMonitor`."""
    optax = require_optax()
    x_train, y_train = jnp.asarray(digits.x_train), jnp.asarray(digits.y_train)
    x_val, y_val = jnp.asarray(digits.x_val), jnp.asarray(digits.y_val)
    steps_per_epoch = digits.num_train // batch_size
    opt = optax.adam(LEARNING_RATE)
    mon = TrainingMonitor(steps_per_epoch=steps_per_epoch, batch_size=batch_size)
    opt_state = opt.init(params)

    @jax.jit
    def train_step(p, s, xb, yb):
        loss, g = jax.value_and_grad(_data_loss)(p, xb, yb)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    def record_accuracy(step: int, p: PyTree) -> None:
        mon.record_accuracy(
            step,
            train=float(_accuracy(p, x_train, y_train)),
            val=float(_accuracy(p, x_val, y_val)),
        )

    rng = np.random.RandomState(seed)
    step = 0
    record_accuracy(0, params)
    for _ in range(int(epochs)):
        order = rng.permutation(digits.num_train)
        for b in range(steps_per_epoch):
            sel = order[b * batch_size : (b + 1) * batch_size]
            new_params, opt_state, loss = train_step(
                params, opt_state, x_train[sel], y_train[sel]
            )
            mon.record_loss(step, loss)
            if step % 5 == 0:
                mon.record_update(step, params, new_params)
            params = new_params
            step += 1
        record_accuracy(step, params)
    return mon, params, step


def _write_figures(
    out: pathlib.Path,
    mon: TrainingMonitor,
    layer_report: ActivationReport,
    first: FirstLayerReport,
    overfit: OverfitResult,
) -> list[pathlib.Path]:
    """The demo's figures as PNG files in ``out``."""
    figures = {
        "loss_curve.png": plots.plot_loss(mon, log_scale=True),
        "accuracy.png": plots.plot_accuracy(mon),
        "update_ratios.png": plots.plot_update_ratios(mon),
        "activations.png": plots.plot_activation_stats(layer_report),
        "first_layer_weights.png": plots.plot_first_layer(first),
        "overfit_subset.png": plots.plot_overfit(overfit),
    }
    return [plots.save_figure(fig, out / name) for name, fig in figures.items()]
