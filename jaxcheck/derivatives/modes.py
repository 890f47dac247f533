"""TEMPORARY: check_modes (removed in the next commit)."""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Callable, Sequence
from typing import Any

from ..check import check_grads
from ..report import (
    GradCheckReport,
    html_headline,
)
from ._common import (
    PyTree,
)
from .forward import _mode_support, check_forward_mode


@dataclasses.dataclass(frozen=True)
class ModesReport:
    """The result of :func:`check_modes`: one gradient check per mode of autodiff.

    Also the result of ``check_grads`` when it runs several kinds of check at
    once (e.g. ``modes=("rev", "fwd"), order=2``): then ``reports`` holds
    ``"order 2"`` too, and ``title`` says so.

    Attributes:
      reports: ``{mode: GradCheckReport}`` for the modes that were checked
        (``"rev"``: ``jax.grad``; ``"fwd"``: ``jax.jvp``; ``"order 2"``: the
        :class:`BlockCheckReport` of :func:`check_second_order`).
      unsupported: ``{mode: reason}`` for requested modes ``f`` does not have
        (a ``custom_vjp`` function is reverse-only). Not a failure.
      title: what the headline calls the check.
      notes: remarks about the whole check (burn-in, datapoints, ...).
    """

    reports: dict[str, GradCheckReport]
    unsupported: dict[str, str]
    title: str = "modes"
    notes: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        """True when every checked mode passed (unsupported modes do not fail)."""
        return all(r.passed for r in self.reports.values())

    @property
    def reverse_only(self) -> bool:
        """True when forward mode was requested but ``f`` has none."""
        return "fwd" in self.unsupported

    def report(self, mode: str) -> GradCheckReport:
        """The report of one mode (``"rev"`` or ``"fwd"``).

        Raises:
          KeyError: if that mode was not checked; the message says why.
        """
        if mode in self.reports:
            return self.reports[mode]
        why = self.unsupported.get(mode, "it was not requested")
        raise KeyError(f"Mode {mode!r} was not checked: {why}.")

    def headline(self) -> str:
        """One line: the verdict of every mode."""
        parts = [
            f"{m} {'passed' if r.passed else 'FAILED'}" for m, r in self.reports.items()
        ]
        parts += [
            f"{m} unsupported ({why.split(':')[0]})"
            for m, why in self.unsupported.items()
        ]
        status = "PASSED" if self.passed else "FAILED"
        return f"jaxcheck: {self.title} check {status}: " + ", ".join(parts) + "."

    def __str__(self) -> str:
        lines = [self.headline()]
        for mode, why in self.unsupported.items():
            lines.append(f"  {mode}: {why}")
        lines.extend(f"  note: {n}" for n in self.notes)
        for mode, r in self.reports.items():
            lines.append(f"--- {mode} ---")
            lines.append(str(r))
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        parts = ["<div>" + html_headline(self.headline(), self.passed)]
        for mode, why in self.unsupported.items():
            parts.append(f"<p><b>{html.escape(mode)}</b>: {html.escape(why)}</p>")
        parts.extend(f"<p>Note: {html.escape(n)}</p>" for n in self.notes)
        for mode, r in self.reports.items():
            parts.append(f"<h4>{html.escape(mode)}</h4>{r._repr_html_()}")
        parts.append("</div>")
        return "".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of the whole report."""
        return {
            "passed": self.passed,
            "reports": {m: r.to_dict() for m, r in self.reports.items()},
            "unsupported": dict(self.unsupported),
            "title": self.title,
            "notes": list(self.notes),
        }


def check_modes(
    f: Callable[..., Any],
    params: PyTree,
    *args: Any,
    modes: Sequence[str] = ("rev", "fwd"),
    **check_kwargs: Any,
) -> ModesReport:
    """Checks the derivative of ``f`` in reverse mode, forward mode, or both.

    ``"rev"`` is :func:`jaxcheck.check_grads` (``jax.grad``, or ``grad_fn`` when
    given); ``"fwd"`` is :func:`check_forward_mode` (``jax.jvp``). A mode ``f``
    does not have is reported, not raised: a function containing a
    ``jax.custom_vjp`` is reverse-only. A wrong ``custom_jvp`` rule fails in both
    modes (reverse mode transposes it). This is what
    ``check_grads(..., modes=("rev", "fwd"))`` runs.

    Args:
      f: the scalar function, called as ``f(params, *args)``.
      params: any pytree.
      *args: held fixed.
      modes: a non-empty subset of ``("rev", "fwd")``.
      **check_kwargs: passed to each check (``coords``, ``step``, ``rtol``, ...);
        ``grad_fn`` applies to ``"rev"`` only.

    Returns:
      a :class:`ModesReport`.

    Raises:
      ValueError: if ``modes`` is empty or names an unknown mode.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jaxcheck.derivatives import check_modes
      >>> @jax.custom_vjp
      ... def square(x):
      ...     return x ** 2
      >>> square.defvjp(lambda x: (x ** 2, x), lambda x, g: (2 * x * g,))
      >>> report = check_modes(lambda p: jnp.sum(square(p)), jnp.ones(3))
      >>> report.passed, report.reverse_only
      (True, True)
    """
    if isinstance(modes, str):
        modes = (modes,)
    modes = tuple(modes)
    if (
        not modes
        or any(m not in ("rev", "fwd") for m in modes)
        or len(set(modes)) != len(modes)
    ):
        raise ValueError(
            f'`modes` must be a non-empty subset of ("rev", "fwd") without repeats, '
            f'got {modes!r}. E.g. modes=("rev", "fwd").'
        )
    support = _mode_support(f, params, args)
    reports: dict[str, GradCheckReport] = {}
    unsupported: dict[str, str] = {}
    fwd_kwargs = {k: v for k, v in check_kwargs.items() if k != "grad_fn"}
    for mode in modes:
        if mode == "rev" and "grad_fn" in check_kwargs:
            reports[mode] = check_grads(f, params, *args, **check_kwargs)
        elif mode in support:
            unsupported[mode] = support[mode]
        elif mode == "rev":
            reports[mode] = check_grads(f, params, *args, **check_kwargs)
        else:
            reports[mode] = check_forward_mode(f, params, *args, **fwd_kwargs)
    return ModesReport(reports=reports, unsupported=unsupported)
