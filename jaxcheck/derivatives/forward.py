"""Forward mode: the ``jax.jvp`` derivative, coordinate by coordinate."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import tree
from ..check import check_grads
from ..report import GradCheckReport
from ._blocks import _jvp_columns, _jvp_columns_jit
from ._common import PyTree, _pow2_floor, _prepare, _ValueOf


class ForwardModeUnsupportedError(TypeError):
    """Raised when forward-mode autodiff (``jax.jvp``) of ``f`` is impossible.

    :func:`check_forward_mode` raises it for a function that contains a
    ``jax.custom_vjp`` function (which defines no forward mode) or a primitive
    without a JVP rule; ``check_second_order(..., method="fwd_over_rev")`` raises
    it when the gradient of ``f`` has no forward mode.
    """


@dataclasses.dataclass(frozen=True)
class _AsList:
    fn: Callable[..., Any]

    def __call__(self, dyn_params: Sequence[Any], dyn_args: Sequence[Any]) -> list:
        return [self.fn(dyn_params, dyn_args)]


def forward_mode_problem(fn: Callable[..., Any], *args: Any) -> str | None:
    """Why ``fn(*args)``, a function that applies ``jax.jvp``, cannot be traced.

    Lowers ``fn`` (``jax.jit(fn).lower``: nothing runs or compiles). Tracing
    alone is not enough: ``jax.jvp`` of a ``custom_vjp`` function traces to a
    ``custom_lin`` that raises only when lowered (or batched).

    Returns:
      ``None`` when it traces; else one sentence naming the cause: a
      ``jax.custom_vjp`` function (it defines no forward mode), or a primitive
      without a JVP rule.

    Raises:
      Exception: any other error of the trace, unchanged (not ours to diagnose).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> @jax.custom_vjp
      ... def sq(x):
      ...     return x ** 2
      >>> sq.defvjp(lambda x: (x ** 2, x), lambda x, g: (2 * x * g,))
      >>> jvp = lambda x: jax.jvp(sq, (x,), (x,))
      >>> forward_mode_problem(jvp, jnp.ones(2))[:40]
      'f contains a jax.custom_vjp function, wh'
      >>> forward_mode_problem(lambda x: jax.jvp(jnp.sin, (x,), (x,)), 1.0) is None
      True
    """
    try:
        jax.jit(fn).lower(*args)
    except TypeError as e:
        msg = str(e)
        if "custom_vjp" not in msg or "jvp" not in msg:
            raise
        return (
            "f contains a jax.custom_vjp function, which defines no forward mode "
            f"(jax.jvp raises: {msg.splitlines()[0]})"
        )
    except NotImplementedError as e:
        msg = str(e)
        if "Differentiation rule" not in msg and "jvp" not in msg.lower():
            raise
        return f"f contains a primitive without a JVP rule ({msg.splitlines()[0]})"
    return None


def jvp_columns_problem(out_fn: Callable[..., list], point: Any) -> str | None:
    """Why the forward-mode columns of ``out_fn`` (as the block engine computes
    them, vmapped over one-hot tangents) cannot be traced, for any checked leaf.

    Lowers exactly what runs (for one coordinate per leaf): whether ``jax.jvp``
    of a ``custom_vjp`` function fails depends on how it is traced (a
    ``custom_vjp`` whose ``fwd`` calls the custom function itself fails only
    vmapped), so no cheaper stand-in is reliable.
    """
    one = jnp.zeros(1, jnp.int32)
    for info in point.checked:
        a = point.dyn_pos[info.pos]
        columns = functools.partial(_jvp_columns, out_fn, a, info.shape)
        problem = forward_mode_problem(columns, one, point.dyn_params, point.dyn_args)
        if problem is not None:
            return problem
    return None


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
                    (col,) = _jvp_columns_jit(())(
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
    :func:`jaxcheck.check_grads`: same coordinates, bar and report. Check both
    modes by calling both: ``check_grads`` for reverse mode, this for forward
    mode (a wrong ``custom_jvp`` rule fails in both; reverse mode transposes it).

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
      ForwardModeUnsupportedError: (a ``TypeError``) if ``f`` has no forward
        mode: it contains a ``jax.custom_vjp`` function or a primitive without a
        JVP rule. Such an ``f`` is reverse-only: check it with
        :func:`jaxcheck.check_grads`.
      TypeError: if ``grad_fn`` is passed.

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
    with jax.enable_x64(True):
        point = _prepare(params, args)
        problem = jvp_columns_problem(_AsList(_ValueOf(point.fn(f))), point)
    if problem:
        raise ForwardModeUnsupportedError(
            f"`f` cannot be checked in forward mode: {problem}. It is reverse-only: "
            "check it with `check_grads(f, params, *args)` (reverse mode), and its "
            "second derivatives with `check_second_order`, which falls back to "
            "reverse-over-reverse."
        )
    return check_grads(
        f, params, *args, grad_fn=_ForwardGrad(f, coords, seed), coords=coords,
        seed=seed, **check_kwargs,
    )  # fmt: skip
