"""TEMPORARY: removed in the next commit."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax

from ..check import check_grads
from ..report import GradCheckReport
from ._common import OnFailure, PyTree
from .burn_in import run_burn_in
from .datapoints import take_datapoints
from .determinism import assert_deterministic
from .loss_terms import _resolve_terms, _SumOf, check_loss_terms


def _with_note(report: Any, note: str) -> Any:
    return dataclasses.replace(report, notes=tuple(report.notes) + (note,))


def check_after_burn_in(
    f: Callable[..., Any],
    params: PyTree,
    *args: Any,
    steps: int,
    learning_rate: float = 1e-2,
    optimizer: Any = None,
    on_failure: OnFailure = "warn",
    **check_kwargs: Any,
) -> GradCheckReport:
    """Burns in, then checks the gradient at the point reached.

    The burn-in follows ``check_kwargs["grad_fn"]`` when one is given (the
    gradient under test, as your training would), else ``jax.grad(f)``.

    Args:
      f: the scalar loss, called as ``f(params, *args)``.
      params: the initial parameters.
      *args: held fixed.
      steps: burn-in steps.
      learning_rate: SGD step size (ignored with ``optimizer``).
      optimizer: an optax ``GradientTransformation``; default plain SGD.
      on_failure: what :func:`burn_in` does when the loss did not go down.
      **check_kwargs: passed to :func:`jaxcheck.check_grads`.

    Returns:
      the :class:`jaxcheck.GradCheckReport` at the burned-in point; a note
      records the burn-in and its losses.

    Raises:
      BurnInError: with ``on_failure="raise"``, when the loss did not go down.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxcheck.protocol import check_after_burn_in
      >>> loss = lambda w: jnp.sum(jnp.log1p(jnp.exp(w)) - 0.5 * w)
      >>> report = check_after_burn_in(loss, jnp.ones(3), steps=5, learning_rate=0.5)
      >>> report.passed, report.notes[-1].startswith("burn-in: 5 steps of SGD")
      (True, True)
    """
    result = run_burn_in(
        f, params, *args, steps=steps, learning_rate=learning_rate,
        optimizer=optimizer, grad_fn=check_kwargs.get("grad_fn"), on_failure=on_failure,
        _stacklevel=3,
    )  # fmt: skip
    report = check_grads(f, result.params, *args, **check_kwargs)
    return _with_note(report, result.summary())


def is_loss_terms(f: Any, params: PyTree, *args: Any) -> bool:
    """Whether ``f`` is a dict of loss terms or a function returning one.

    For ``check_grads`` to route such an ``f`` to :func:`check_loss_terms`; it
    traces ``f`` abstractly (``jax.eval_shape``) without running it.

    Args:
      f: a mapping of loss functions, or a function called as ``f(params, *args)``.
      params: the parameters ``f`` takes.
      *args: the other arguments of ``f``.

    Returns:
      True for a mapping, or a function whose output is a mapping; False
      otherwise (including when tracing ``f`` fails: ``check_grads`` then
      reports the error itself).

    Examples:
      >>> import jax.numpy as jnp
      >>> is_loss_terms(lambda p: {"data": jnp.sum(p), "reg": jnp.sum(p**2)}, jnp.ones(2))
      True
      >>> is_loss_terms(lambda p: jnp.sum(p), jnp.ones(2))
      False
    """
    if isinstance(f, Mapping):
        return True
    if not callable(f):
        return False
    try:
        with jax.enable_x64(True):
            out = jax.eval_shape(f, params, *args)
    except Exception:  # noqa: BLE001 - not ours to diagnose: check_grads will
        return False
    return isinstance(out, Mapping)


def check_few_datapoints(
    f: Callable[..., Any],
    params: PyTree,
    *args: Any,
    k: int = 3,
    axis: int = 0,
    argnums: Sequence[int] | int | None = None,
    datapoint_seed: int | None = None,
    **check_kwargs: Any,
) -> GradCheckReport:
    """Checks the gradient on ``k`` examples of the batch; the report records it.

    Args:
      f: the scalar loss, called as ``f(params, *args)``.
      params: any pytree.
      *args: the arguments, batches among them.
      k: examples to keep.
      axis: the batch axis.
      argnums: which arguments are batches (see :func:`take_datapoints`).
      datapoint_seed: ``None`` keeps the first ``k`` examples, a seed random ones.
      **check_kwargs: passed to :func:`jaxcheck.check_grads`.

    Returns:
      the :class:`jaxcheck.GradCheckReport` on the cut batch, with a note that
      says which examples of which arguments were kept.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxcheck.protocol import check_few_datapoints
      >>> loss = lambda w, x: jnp.mean(jnp.tanh(x @ w) ** 2)
      >>> report = check_few_datapoints(loss, jnp.ones(3) * 0.1, jnp.ones((64, 3)), k=2)
      >>> report.passed, report.notes[-1][:42]
      (True, 'few datapoints: checked on 2 of 64 example')
    """
    new_args, cut = take_datapoints(
        args, k, axis=axis, argnums=argnums, seed=datapoint_seed
    )
    report = check_grads(f, params, *new_args, **check_kwargs)
    return _with_note(report, cut.describe())


#: Keywords of :func:`jaxcheck.check_grads` that :func:`check_second_order`
#: also takes.
_SECOND_ORDER_KEYS = (
    "grad_fn", "coords", "step", "seed", "rtol", "noise_factor", "chunk_size",
    "max_worst",
)  # fmt: skip


def _add_notes(report: Any, notes: Sequence[str]) -> Any:
    if not notes:
        return report
    return dataclasses.replace(report, notes=tuple(notes) + tuple(report.notes))


def run_protocol(
    f: Any,
    params: PyTree,
    *args: Any,
    burn_in: int = 0,
    burn_in_options: Mapping[str, Any] | None = None,
    datapoints: int | None = None,
    datapoints_options: Mapping[str, Any] | None = None,
    check_determinism: bool = False,
    order: int = 1,
    modes: Sequence[str] = ("rev",),
    **check_kwargs: Any,
) -> Any:
    """The notes' protocol in one call; ``check_grads``'s protocol keywords.

    In order: cut the batch to ``datapoints`` examples
    (:func:`take_datapoints`); make sure ``f`` is deterministic
    (:func:`assert_deterministic`); run ``burn_in`` optimisation steps
    (:func:`run_burn_in`, following ``grad_fn`` when given); then check: the
    loss terms separately when ``f`` is a dict of terms or returns one
    (:func:`check_loss_terms`); else every requested mode
    (:func:`jaxcheck.derivatives.check_modes`) and, with ``order=2``, second
    derivatives (:func:`jaxcheck.derivatives.check_second_order`). Every step
    taken is recorded in the report's notes.

    Args:
      f: the scalar function ``f(params, *args)``, a dict of loss terms, or a
        function returning one.
      params: any pytree.
      *args: held fixed.
      burn_in: optimisation steps before the check (0: none).
      burn_in_options: keywords of :func:`run_burn_in` (``learning_rate``,
        ``optimizer``, ``on_failure``).
      datapoints: keep this many examples of the batch arguments (None: all).
      datapoints_options: keywords of :func:`take_datapoints` (``axis``,
        ``argnums``, ``seed``).
      check_determinism: evaluate ``f`` twice first and raise
        :class:`NondeterminismError` if the values differ.
      order: 1, or 2 to check second derivatives too.
      modes: a subset of ``("rev", "fwd")``.
      **check_kwargs: the other keywords of :func:`jaxcheck.check_grads`.

    Returns:
      a :class:`jaxcheck.GradCheckReport` when one check runs (``order=1``,
      ``modes=("rev",)``); a :class:`LossTermsReport` for loss terms; else a
      :class:`jaxcheck.derivatives.ModesReport` with one report per check
      (``"rev"``, ``"fwd"``, ``"order 2"``).

    Raises:
      NondeterminismError: with ``check_determinism=True``, when ``f`` is not
        deterministic.
      BurnInError: when the burn-in fails and ``burn_in_options`` says
        ``on_failure="raise"``.
      ValueError: for ``order`` not 1 or 2, or loss terms combined with
        ``order=2`` or forward mode.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxcheck.protocol import run_protocol
      >>> loss = lambda w, x: jnp.mean(jnp.tanh(x @ w) ** 2)
      >>> report = run_protocol(loss, jnp.ones(3) * 0.1, jnp.ones((32, 3)),
      ...                       datapoints=2, burn_in=3, order=2)
      >>> report.headline()
      'jaxcheck: protocol check PASSED: rev passed, order 2 passed.'
      >>> report.notes[0][:43], report.notes[1][:31]
      ('few datapoints: checked on 2 of 32 examples', 'burn-in: 3 steps of SGD (learni')
    """
    from .. import derivatives

    if order not in (1, 2) or isinstance(order, bool):
        raise ValueError(
            f"`order` must be 1 (gradients) or 2 (second derivatives too), got "
            f"{order!r}."
        )
    if isinstance(modes, str):
        modes = (modes,)
    modes = tuple(modes)
    if isinstance(burn_in, bool) or not isinstance(burn_in, int) or burn_in < 0:
        raise ValueError(f"`burn_in` must be an int >= 0 steps, got {burn_in!r}.")
    notes: list[str] = []
    if datapoints is not None:
        args, cut = take_datapoints(args, datapoints, **dict(datapoints_options or {}))
        notes.append(cut.describe())
    terms = isinstance(f, Mapping) or is_loss_terms(f, params, *args)
    if terms and (order != 1 or modes != ("rev",)):
        raise ValueError(
            "Loss terms are checked with `order=1` and `modes=('rev',)` only; got "
            f"order={order!r}, modes={modes!r}. Check the sum of the terms with the "
            "other options separately."
        )
    if check_kwargs.get("grad_fn", 0) is None:
        del check_kwargs["grad_fn"]  # check_grads passes its default along
    grad_fn = check_kwargs.get("grad_fn")
    if terms and grad_fn is not None:
        raise TypeError(
            "Loss terms take hand-written gradients per term; call "
            "`check_loss_terms(terms, params, *args, grad_fns={name: grad_fn})`."
        )
    loss = _SumOf(tuple(_resolve_terms(f, params, args).values())) if terms else f
    if check_determinism:
        det = assert_deterministic(loss, params, *args, grad_fn=grad_fn)
        notes.append(
            "determinism: f and its gradient agreed over repeated evaluations"
            + (f"; PRNG keys held fixed: {', '.join(det.keys)}" if det.keys else "")
        )
    if burn_in:
        options = dict(burn_in_options or {})
        result = run_burn_in(
            loss, params, *args, steps=burn_in, grad_fn=None if terms else grad_fn,
            _stacklevel=3, **options,
        )  # fmt: skip
        params = result.params
        notes.append(result.summary())
    if terms:
        return _add_notes(check_loss_terms(f, params, *args, **check_kwargs), notes)
    if order == 1 and modes == ("rev",):
        return _add_notes(check_grads(f, params, *args, **check_kwargs), notes)
    by_modes = derivatives.check_modes(f, params, *args, modes=modes, **check_kwargs)
    reports = dict(by_modes.reports)
    if order == 2:
        second = {
            k: v
            for k, v in check_kwargs.items()
            if k in _SECOND_ORDER_KEYS and v is not None  # None: its own default
        }
        reports["order 2"] = derivatives.check_second_order(f, params, *args, **second)
    return derivatives.ModesReport(
        reports=reports,
        unsupported=dict(by_modes.unsupported),
        title="protocol" if order == 2 else "modes",
        notes=tuple(notes),
    )
