"""The options of a check, validated once, with errors that say how to fix them."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from . import compare, steps

#: The dtypes a check can run in.
DTYPES: dict[str, Any] = {"float64": np.float64, "float32": np.float32}


def validate_callables(f: Any, grad_fn: Any = None) -> None:
    """Raises a TypeError naming ``f`` or ``grad_fn`` when it is not callable.

    Examples:
      >>> validate_callables(len)
      >>> validate_callables(3)
      Traceback (most recent call last):
      TypeError: `f` must be callable as f(params, *args), got int.
    """
    if not callable(f):
        raise TypeError(
            f"`f` must be callable as f(params, *args), got {type(f).__name__}."
        )
    if grad_fn is not None and not callable(grad_fn):
        raise TypeError(
            f"`grad_fn` must be callable as grad_fn(params, *args) or None, got "
            f"{type(grad_fn).__name__}."
        )


def validate_step(step: Any) -> None:
    """Raises unless ``step`` is None, ``"auto"`` or a positive finite number.

    Examples:
      >>> validate_step(1e-5); validate_step("auto"); validate_step(None)
      >>> validate_step(0.0)
      Traceback (most recent call last):
      ValueError: `step` must be a positive finite number, "auto" or None, got 0.0. ...
    """
    if step is None or step == "auto":
        return
    if (
        isinstance(step, int | float | np.floating)
        and not isinstance(step, bool)
        and math.isfinite(step)
        and step > 0
    ):
        return
    raise ValueError(
        f'`step` must be a positive finite number, "auto" or None, got {step!r}. A '
        "typical value in float64 is 1e-5 (about the cube root of machine "
        "epsilon; jaxcheck scales it by max(1, |x_i|) per coordinate)."
    )


def _positive_int(name: str, value: Any, *, minimum: int = 1, what: str = "") -> None:
    if value is None:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, int | np.integer)
        or value < minimum
    ):
        raise ValueError(f"`{name}` must be an int >= {minimum}{what}, got {value!r}.")


@dataclasses.dataclass(frozen=True)
class CheckOptions:
    """The keyword options of :func:`jaxcheck.check_grads`, validated.

    See :func:`jaxcheck.check_grads` for what each one means.
    """

    coords: Any = "all"
    step: float | str | None = None
    seed: int | None = 0
    rtol: float | None = None
    noise_factor: float | None = None
    memory_budget: int | None = None
    chunk_size: int | None = None
    max_worst: int = 5
    progress: bool | None = None
    method: str = "central"
    track_kinks: bool = True
    strict: bool = False
    dtype: str = "float64"
    propagate: bool = True
    max_follow_ups: int | None = 256

    @property
    def np_dtype(self) -> Any:
        return DTYPES[self.dtype]


def check_options(**kwargs: Any) -> CheckOptions:
    """Validates the options of a check and returns them.

    Raises:
      ValueError: for a bad ``step``, ``rtol``, ``noise_factor``, ``method``,
        ``dtype``, ``seed``, ``max_worst``, ``memory_budget``, ``chunk_size`` or
        ``max_follow_ups``; each message names the argument and a valid value.

    Examples:
      >>> check_options(method="richardson").method
      'four_point'
      >>> check_options(seed="a")
      Traceback (most recent call last):
      ValueError: `seed` must be an int or None (a fresh random seed, recorded ...
    """
    opts = CheckOptions(**kwargs)
    validate_step(opts.step)
    compare.default_bar(opts.rtol, opts.noise_factor)  # validates both
    method = steps.canonical_method(opts.method)
    if opts.dtype not in DTYPES:
        raise ValueError(
            f"`dtype` must be one of {sorted(DTYPES)}, got {opts.dtype!r}. The check "
            'runs in float64 by default; "float32" shows what a single-precision '
            "check would say."
        )
    if opts.seed is not None and (
        isinstance(opts.seed, bool) or not isinstance(opts.seed, int | np.integer)
    ):
        raise ValueError(
            "`seed` must be an int or None (a fresh random seed, recorded in the "
            f"report), got {opts.seed!r}."
        )
    _positive_int("max_worst", opts.max_worst, minimum=0)
    _positive_int("chunk_size", opts.chunk_size)
    _positive_int(
        "max_follow_ups", opts.max_follow_ups,
        what=" (coordinates of a leaf followed up before the rest are left once "
        "the leaf has failed) or None (follow up every one)",
    )  # fmt: skip
    if opts.memory_budget is not None and (
        isinstance(opts.memory_budget, bool)
        or not isinstance(opts.memory_budget, int | np.integer)
        or opts.memory_budget <= 0
    ):
        raise ValueError(
            "`memory_budget` must be a positive number of bytes, got "
            f"{opts.memory_budget!r}."
        )
    if isinstance(opts.coords, Mapping):
        for key in opts.coords:
            if not isinstance(key, str):
                raise TypeError(
                    "`coords` keys must be leaf paths such as \"['W']\" (as "
                    f"jax.tree_util.keystr writes them), got {key!r}."
                )
    return dataclasses.replace(opts, method=method)


def check_coord_paths(coords: Any, paths: list[str], skipped: list[str]) -> None:
    """Raises when ``coords`` (a mapping) names a path that is not a checked leaf.

    Examples:
      >>> check_coord_paths({"['Wx']": 2}, ["['W']", "['b']"], [])
      Traceback (most recent call last):
      ValueError: `coords` names ['Wx'], which is not a checked leaf of `params` ...
    """
    if not isinstance(coords, Mapping):
        return
    unknown = [k for k in coords if k not in paths]
    if unknown:
        extra = f"; not checked: {skipped}" if skipped else ""
        raise ValueError(
            f"`coords` names {', '.join(unknown)}, which is not a checked leaf of "
            f"`params` (checked leaves: {paths}{extra}). Use the paths exactly as "
            "jax.tree_util.keystr writes them, e.g. \"['layer1']['W']\"."
        )


def callable_name(fn: Callable[..., Any]) -> str:
    """A readable name of a function.

    Examples:
      >>> callable_name(len)
      'len'
    """
    return (
        getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
    )
