"""Forward mode: the ``jax.jvp`` derivative, coordinate by coordinate."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import tree
from ..check import check_grads
from ..report import (
    GradCheckReport,
)
from ._blocks import (
    _jvp_columns_jit,
)
from ._common import (
    PyTree,
    _pow2_floor,
    _prepare,
    _replace,
    _ValueOf,
)


class ForwardModeUnsupportedError(TypeError):
    """Raised by :func:`check_forward_mode` when ``f`` has no forward mode
    (it contains a ``jax.custom_vjp`` function)."""


@dataclasses.dataclass(frozen=True)
class _AsList:
    fn: Callable[..., Any]

    def __call__(self, dyn_params: Sequence[Any], dyn_args: Sequence[Any]) -> list:
        return [self.fn(dyn_params, dyn_args)]


def _mode_support(f: Callable[..., Any], params: PyTree, args: tuple) -> dict[str, str]:
    """``{mode: reason}`` for the modes of autodiff ``f`` does not support.

    Lowers (does not run or compile) a ``jax.jvp`` and a ``jax.grad`` of ``f``.
    """
    out: dict[str, str] = {}
    with jax.enable_x64(True):
        point = _prepare(params, args)
        full = point.fn(f)
        idx = point.checked_dyn
        xs = [point.dyn_params[k] for k in idx]

        def fwd(dp: list, da: list, xs: list) -> Any:
            g = lambda c: full(None, _replace(dp, idx, c), da)  # noqa: E731
            return jax.jvp(g, (xs,), (xs,))

        def rev(dp: list, da: list, xs: list) -> Any:
            return jax.grad(lambda c: full(None, _replace(dp, idx, c), da))(xs)

        for mode, fn in (("fwd", fwd), ("rev", rev)):
            try:
                jax.jit(fn).lower(point.dyn_params, point.dyn_args, xs)
            except (TypeError, ValueError) as e:
                msg = str(e)
                if mode == "fwd" and "custom_vjp" in msg:
                    out[mode] = (
                        "reverse-only: f contains a jax.custom_vjp function, which "
                        "defines no forward mode (jax.jvp raises on it)"
                    )
                elif mode == "rev" and "Reverse-mode differentiation" in msg:
                    out[mode] = f"forward-only: {msg.splitlines()[0]}"
                else:
                    raise
    return out


class _ForwardGrad:
    """A ``grad_fn`` for :func:`jaxcheck.check_grads` computed by ``jax.jvp``.

    Only the coordinates the check selects are computed (one JVP each); the
    other entries are NaN and never read.
    """

    def __init__(self, f: Callable[..., Any], coords: tree.CoordSpec, seed: int):
        self.f = f
        self.coords = coords
        self.seed = seed
        self.__qualname__ = "jax.jvp (forward mode)"

    def __call__(self, params: PyTree, *args: Any) -> PyTree:
        with jax.enable_x64(True):
            point = _prepare(params, args)
            out_fn = _AsList(_ValueOf(point.fn(self.f)))
            _, _, treedef = tree.flatten(params)
            leaves: list[Any] = [None] * point.num_p
            dp, da = point.dyn_params, point.dyn_args
            for info in point.checked:
                idx = tree.select_coords(info, self.coords, self.seed)
                a = point.dyn_pos[info.pos]
                c = _pow2_floor(min(1024, len(idx)))
                vals = []
                for lo in range(0, len(idx), c):
                    part = idx[lo : lo + c]
                    block = np.full(c, part[0], dtype=np.int32)
                    block[: len(part)] = part
                    (col,) = _jvp_columns_jit(
                        out_fn, a, info.shape, jnp.asarray(block), dp, da
                    )
                    vals.append(np.asarray(col, np.float64).reshape(-1)[: len(part)])
                g = np.full(info.size, np.nan)
                g[idx] = np.concatenate(vals)
                leaves[info.pos] = jnp.asarray(g.reshape(info.shape))
            return jax.tree_util.tree_unflatten(treedef, leaves)


def check_forward_mode(
    f: Callable[..., Any],
    params: PyTree,
    *args: Any,
    coords: tree.CoordSpec = "all",
    seed: int = 0,
    **check_kwargs: Any,
) -> GradCheckReport:
    """Checks the forward-mode derivative (``jax.jvp``) of ``f``, coordinate by
    coordinate.

    The analytic derivative of coordinate ``i`` is the JVP of ``f`` with the
    tangent ``e_i`` (a column of ``jax.jacfwd``), which runs ``custom_jvp`` rules
    directly (reverse mode runs their transpose). Otherwise exactly
    :func:`jaxcheck.check_grads`: same coordinates, bar and report.

    Args:
      f: the scalar function, called as ``f(params, *args)``.
      params: any pytree.
      *args: held fixed.
      coords: which coordinates (as in :func:`jaxcheck.check_grads`).
      seed: seed of the coordinate sampling.
      **check_kwargs: passed to :func:`jaxcheck.check_grads` (``step``,
        ``rtol``, ...); ``grad_fn`` is not accepted.

    Returns:
      a :class:`jaxcheck.GradCheckReport` whose ``grad_source`` is
      ``"jax.jvp (forward mode)"``.

    Raises:
      ForwardModeUnsupportedError: (a ``TypeError``) if ``f`` contains a
        ``jax.custom_vjp`` function; use :func:`check_modes`, which reports such
        a function as reverse-only instead.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jaxcheck.derivatives import check_forward_mode
      >>> @jax.custom_jvp
      ... def softplus(x):
      ...     return jnp.log1p(jnp.exp(x))
      >>> @softplus.defjvp
      ... def softplus_jvp(primals, tangents):
      ...     (x,), (t,) = primals, tangents
      ...     return softplus(x), t * jnp.exp(x)  # bug: should be t * sigmoid(x)
      >>> check_forward_mode(lambda p: jnp.sum(softplus(p)), jnp.ones(3)).passed
      False
    """
    if "grad_fn" in check_kwargs:
        raise TypeError(
            "`check_forward_mode` checks jax.jvp of `f` and takes no `grad_fn`; "
            "check a hand-written gradient with `check_grads(..., grad_fn=...)`."
        )
    unsupported = _mode_support(f, params, args).get("fwd")
    if unsupported:
        raise ForwardModeUnsupportedError(
            f"`f` cannot be checked in forward mode: {unsupported}. Use "
            "`check_modes(f, params, ...)`, which reports it as reverse-only, or "
            "check reverse mode alone with `check_grads`."
        )
    return check_grads(
        f, params, *args, grad_fn=_ForwardGrad(f, coords, seed), coords=coords,
        seed=seed, **check_kwargs,
    )  # fmt: skip
