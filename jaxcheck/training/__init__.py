"""Training diagnostics: sanity checks before learning, monitors while it runs.

The second half of jaxcheck, next to the gradient checker; the checker never
imports it. Modules, each with one job (dependencies flow down this list):

* :mod:`~jaxcheck.training.data`: scikit-learn's 8x8 digits, split and scaled.
* :mod:`~jaxcheck.training.sanity`: the loss at chance, regularization raises
  the loss; :mod:`~jaxcheck.training.overfit`: overfit a tiny subset.
* :mod:`~jaxcheck.training.curves`: the loss curve and train/validation accuracy
  read for the learning rate, the batch size and overfitting.
* :mod:`~jaxcheck.training.updates`: update-to-parameter ratios per leaf.
* :mod:`~jaxcheck.training.activations`: activation and gradient distributions
  per layer (dead ReLUs, saturation), recorded by the interpreter in
  :mod:`~jaxcheck.training._capture`.
* :mod:`~jaxcheck.training.first_layer`: first-layer weights as image tiles.
* :mod:`~jaxcheck.training.monitor`: :class:`TrainingMonitor`, the recorder for
  a training loop.
* :mod:`~jaxcheck.training.plots`: the figures (matplotlib, headless).
* :mod:`~jaxcheck.training.demo`: :func:`run_demo`, the training part of
  ``jaxcheck demo``.

The example models and losses they are shown with live in :mod:`jaxcheck.examples`.
"""

from jaxcheck.training.activations import ActivationReport as ActivationReport
from jaxcheck.training.activations import LayerStats as LayerStats
from jaxcheck.training.activations import activation_stats as activation_stats
from jaxcheck.training.curves import AccuracyDiagnosis as AccuracyDiagnosis
from jaxcheck.training.curves import LossCurveDiagnosis as LossCurveDiagnosis
from jaxcheck.training.curves import diagnose_accuracy as diagnose_accuracy
from jaxcheck.training.curves import diagnose_loss_curve as diagnose_loss_curve
from jaxcheck.training.data import Digits as Digits
from jaxcheck.training.data import load_digits as load_digits
from jaxcheck.training.demo import DemoResult as DemoResult
from jaxcheck.training.demo import DemoVerdict as DemoVerdict
from jaxcheck.training.demo import run_demo as run_demo
from jaxcheck.training.first_layer import FirstLayerReport as FirstLayerReport
from jaxcheck.training.first_layer import first_layer_tiles as first_layer_tiles
from jaxcheck.training.monitor import MonitorSummary as MonitorSummary
from jaxcheck.training.monitor import TrainingMonitor as TrainingMonitor
from jaxcheck.training.overfit import OverfitResult as OverfitResult
from jaxcheck.training.overfit import overfit_small_subset as overfit_small_subset
from jaxcheck.training.plots import plot_accuracy as plot_accuracy
from jaxcheck.training.plots import plot_activation_stats as plot_activation_stats
from jaxcheck.training.plots import plot_first_layer as plot_first_layer
from jaxcheck.training.plots import plot_loss as plot_loss
from jaxcheck.training.plots import plot_monitor as plot_monitor
from jaxcheck.training.plots import plot_overfit as plot_overfit
from jaxcheck.training.plots import plot_regularization as plot_regularization
from jaxcheck.training.plots import plot_update_ratios as plot_update_ratios
from jaxcheck.training.plots import save_figure as save_figure
from jaxcheck.training.plots import to_png as to_png
from jaxcheck.training.sanity import RegularizationResult as RegularizationResult
from jaxcheck.training.sanity import SanityResult as SanityResult
from jaxcheck.training.sanity import chance_loss as chance_loss
from jaxcheck.training.sanity import check_initial_loss as check_initial_loss
from jaxcheck.training.sanity import (
    check_regularization_raises_loss as check_regularization_raises_loss,
)
from jaxcheck.training.updates import LeafRatio as LeafRatio
from jaxcheck.training.updates import UpdateRatioReport as UpdateRatioReport
from jaxcheck.training.updates import check_update_ratios as check_update_ratios
from jaxcheck.training.updates import update_ratios as update_ratios
from jaxcheck.training.updates import (
    update_ratios_from_updates as update_ratios_from_updates,
)

__all__ = (
    "AccuracyDiagnosis",
    "ActivationReport",
    "DemoResult",
    "DemoVerdict",
    "Digits",
    "FirstLayerReport",
    "LayerStats",
    "LeafRatio",
    "LossCurveDiagnosis",
    "MonitorSummary",
    "OverfitResult",
    "RegularizationResult",
    "SanityResult",
    "TrainingMonitor",
    "UpdateRatioReport",
    "activation_stats",
    "chance_loss",
    "check_initial_loss",
    "check_regularization_raises_loss",
    "check_update_ratios",
    "diagnose_accuracy",
    "diagnose_loss_curve",
    "first_layer_tiles",
    "load_digits",
    "overfit_small_subset",
    "plot_accuracy",
    "plot_activation_stats",
    "plot_first_layer",
    "plot_loss",
    "plot_monitor",
    "plot_overfit",
    "plot_regularization",
    "plot_update_ratios",
    "run_demo",
    "save_figure",
    "to_png",
    "update_ratios",
    "update_ratios_from_updates",
)
