"""``check_grads`` and ``assert_grads``: the orchestration of a gradient check.

Data flows one way: :mod:`jaxcheck.tree` says what to perturb,
:mod:`jaxcheck.engine` evaluates, :mod:`jaxcheck.compare` judges and
:mod:`jaxcheck.report` presents.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import compare, engine, tree
from .report import (
    CoordResult,
    GradCheckReport,
    GradientCheckError,
    LeafReport,
    SkippedLeaf,
)

PyTree = Any

#: Show a progress bar (when ``progress=None``) for checks of at least this
#: many coordinates, if standard error is a terminal and tqdm is installed.
PROGRESS_MIN_COORDS = 200_000


def _is_array(x: Any) -> bool:
    return isinstance(x, jax.Array | np.ndarray | np.generic)


def _to_x64(x: Any) -> Any:
    """Floating arrays to float64; every other leaf unchanged."""
    if _is_array(x):
        dtype = x.dtype
        if jnp.issubdtype(dtype, jax.dtypes.prng_key):
            return x
        if jnp.issubdtype(dtype, jnp.floating):
            return jnp.asarray(x, dtype=jnp.float64)
        return jnp.asarray(x)
    return x


def _value(fn: engine.LeafFunction, dyn_params: list, dyn_args: list) -> jax.Array:
    return fn(None, dyn_params, dyn_args)


_value_jit = jax.jit(_value, static_argnums=0)


def _grad(
    fn: engine.LeafFunction, idx: tuple[int, ...], dyn_params: list, dyn_args: list
) -> list[jax.Array]:
    def g(checked: list) -> jax.Array:
        dp = list(dyn_params)
        for k, v in zip(idx, checked, strict=True):
            dp[k] = v
        return fn(None, dp, dyn_args)

    return jax.grad(g)([dyn_params[k] for k in idx])


_grad_jit = jax.jit(_grad, static_argnums=(0, 1))


def _callable_name(fn: Callable[..., Any]) -> str:
    return (
        getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
    )


def _validate_output(out: Any) -> None:
    shape = getattr(out, "shape", None)
    dtype = getattr(out, "dtype", None)
    if shape is None or dtype is None:
        raise TypeError(
            f"`f(params, *args)` must return a scalar array, got a "
            f"{type(out).__name__}. Return a jnp scalar, e.g. `jnp.mean(losses)`."
        )
    if tuple(shape) != ():
        raise ValueError(
            f"`f(params, *args)` must return a scalar, got shape {tuple(shape)} "
            f"({dtype}). Reduce it to a scalar (e.g. `jnp.sum(out)` or "
            "`jnp.mean(out)`), or check a vector-valued function one output at a "
            "time."
        )
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"`f(params, *args)` must return a real floating-point scalar, got "
            f"dtype {dtype}. An integer or boolean output has no gradient; a complex "
            "one needs its real part taken (e.g. `jnp.real(out)`)."
        )


def _match_grads(
    grads: PyTree, infos: list[tree.LeafInfo], grad_name: str
) -> dict[int, jax.Array]:
    """The user's gradient entries for the checked leaves, keyed by leaf position."""
    g_leaves, g_paths, _ = tree.flatten(grads)
    by_path: dict[str, Any] = {}
    for path, value in zip(g_paths, g_leaves, strict=True):
        by_path[path] = value
    known = {info.path for info in infos}
    extra = [p for p in by_path if p not in known and by_path[p] is not None]
    if extra:
        raise ValueError(
            f"`grad_fn` ({grad_name}) returned entries at paths {extra} that are not "
            f"leaves of `params` (leaves: {sorted(known)}). It must return a pytree "
            "with the same structure as `params`."
        )
    out = {}
    for info in infos:
        if not info.checked:
            continue
        if info.path not in by_path or by_path[info.path] is None:
            raise ValueError(
                f"`grad_fn` ({grad_name}) returned no gradient for leaf {info.path} "
                f"(shape {info.shape}). It must return a pytree with the same "
                "structure as `params`, one array per floating-point leaf."
            )
        value = by_path[info.path]
        shape = tuple(np.shape(value))
        if shape != info.shape:
            raise ValueError(
                f"`grad_fn` ({grad_name}) returned shape {shape} for leaf "
                f"{info.path}, but the leaf has shape {info.shape}. A gradient has "
                "the shape of its parameter (a transposed gradient is a common cause)."
            )
        if not jnp.issubdtype(np.asarray(value).dtype, jnp.inexact):
            raise TypeError(
                f"`grad_fn` ({grad_name}) returned dtype {np.asarray(value).dtype} "
                f"for leaf {info.path}; a gradient must be floating point."
            )
        out[info.pos] = value
    return out


def _progress_bar(total: int, progress: bool | None) -> Any:
    show = progress
    if show is None:
        show = total >= PROGRESS_MIN_COORDS and sys.stderr.isatty()
    if not show:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        if progress:
            raise ImportError(
                "`progress=True` needs tqdm: install it with "
                "`pip install 'jaxcheck[progress]'`."
            ) from None
        return None
    return tqdm(total=total, unit="coord", desc="jaxcheck", leave=False)


def check_grads(
    f: Callable[..., Any],
    params: PyTree,
    *args: Any,
    grad_fn: Callable[..., PyTree] | None = None,
    coords: tree.CoordSpec = "all",
    step: float = 1e-5,
    seed: int = 0,
    rtol: float | None = None,
    noise_factor: float | None = None,
    memory_budget: int | None = None,
    chunk_size: int | None = None,
    max_worst: int = 5,
    progress: bool | None = None,
) -> GradCheckReport:
    """Checks the gradient of ``f`` with respect to ``params`` against centered
    differences, coordinate by coordinate, in float64.

    For every checked coordinate ``i`` of every floating-point leaf, the numeric
    derivative ``(f(x + h e_i) - f(x - h e_i)) / 2h`` is compared with the
    analytic gradient by the relative error ``|a - n| / max(|a|, |n|)``. The
    perturbed evaluations are batched with ``jax.vmap`` and compiled with
    ``jax.jit``, one leaf at a time, in chunks sized from ``memory_budget``.

    Unlike ``jax.test_util.check_grads``, this function never raises on a
    mismatch: it returns a report. Use :func:`assert_grads` in tests.

    Args:
      f: the scalar function, called as ``f(params, *args)``.
      params: any pytree. Floating-point array leaves are checked (in float64,
        whatever their dtype); integer, bool, complex, PRNG-key and non-array
        leaves and ``None`` are left alone and listed in ``report.skipped``.
      *args: held fixed (batches, labels, PRNG keys). Floating-point arrays among
        them are cast to float64 too.
      grad_fn: the analytic gradient to check, called as
        ``grad_fn(params, *args)`` and returning a pytree shaped like ``params``.
        Default: ``jax.grad(f)`` over the checked leaves, which exercises every
        ``custom_vjp`` / ``custom_jvp`` rule inside ``f``.
      coords: ``"all"`` checks every coordinate; an int ``k`` checks ``k``
        coordinates sampled from every leaf (biases too; a leaf with at most
        ``k`` entries is checked whole); a dict maps leaf paths to ``"all"``, an
        int, or explicit indices.
      step: the step ``h`` of the centered differences.
      seed: seed of the coordinate sampling.
      rtol: the relative-error bar; default the notes' bar for smooth functions
        (``1e-7``). Use ``1e-4`` for functions with kinks.
      noise_factor: the round-off allowance in units of ``eps * |f| / h``; a
        coordinate outside ``rtol`` but within this allowance is reported as
        untestable, not wrong.
      memory_budget: bytes one batch of perturbed evaluations may use; default
        from the device (see :func:`jaxcheck.engine.default_memory_budget`).
      chunk_size: coordinates per batch; overrides the budget-derived size.
      max_worst: how many worst coordinates each leaf report keeps.
      progress: show a progress bar (needs tqdm); ``None`` shows one for long
        checks when standard error is a terminal.

    Returns:
      a :class:`GradCheckReport`: ``report.passed``, a table per leaf in
      ``str(report)``, HTML in Jupyter, ``report.to_dict()`` for JSON.

    Raises:
      TypeError: if ``f`` does not return a real floating-point scalar, or
        ``grad_fn`` returns non-floating entries.
      ValueError: if no leaf can be checked, ``f`` is not finite at the point or
        at a perturbed point, ``grad_fn`` returns a differently shaped tree, or
        ``coords``/``step``/``rtol`` are invalid.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxcheck
      >>> def loss(params, x):
      ...     return jnp.sum(jnp.tanh(x @ params["W"] + params["b"]) ** 2)
      >>> params = {"W": jnp.ones((3, 2)) * 0.1, "b": jnp.zeros(2)}
      >>> report = jaxcheck.check_grads(loss, params, jnp.ones((4, 3)))
      >>> report.passed
      True
      >>> [leaf.path for leaf in report.leaves]
      ["['W']", "['b']"]
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
    if not (
        isinstance(step, int | float | np.floating) and math.isfinite(step) and step > 0
    ):
        raise ValueError(
            f"`step` must be a positive finite number, got {step!r}. A typical "
            "value in float64 is 1e-5 (cube root of machine epsilon, times the "
            "scale of the parameters)."
        )
    if not isinstance(max_worst, int) or max_worst < 0:
        raise ValueError(f"`max_worst` must be an int >= 0, got {max_worst!r}.")
    bar = compare.default_bar(rtol, noise_factor)
    if memory_budget is not None and (
        not isinstance(memory_budget, int) or memory_budget <= 0
    ):
        raise ValueError(
            f"`memory_budget` must be a positive number of bytes, got {memory_budget!r}."
        )
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"`chunk_size` must be an int >= 1, got {chunk_size!r}.")

    t_start = time.perf_counter()
    with jax.enable_x64(True):
        return _check(
            f, params, args, grad_fn, coords, float(step), seed, bar,
            memory_budget, chunk_size, max_worst, progress, t_start,
        )  # fmt: skip


def _check(
    f: Callable[..., Any],
    params: PyTree,
    args: tuple,
    grad_fn: Callable[..., PyTree] | None,
    coords: tree.CoordSpec,
    step: float,
    seed: int,
    bar: compare.Bar,
    memory_budget: int | None,
    chunk_size: int | None,
    max_worst: int,
    progress: bool | None,
    t_start: float,
) -> GradCheckReport:
    p_leaves, infos, p_treedef = tree.leaf_infos(params)
    checked = [info for info in infos if info.checked]
    skipped = tuple(
        SkippedLeaf(i.path, i.reason, i.dtype, i.shape) for i in infos if not i.checked
    )
    if not checked:
        listing = "; ".join(f"{s.path}: {s.reason}" for s in skipped) or "none"
        raise ValueError(
            "`params` has no floating-point array leaf to check (leaves: "
            f"{listing}). Pass the parameters as float arrays, e.g. "
            "`jnp.asarray(w, jnp.float32)`."
        )
    # Dynamic (traced) leaves are arrays; everything else is closed over.
    p_leaves = [
        _to_x64(v) if info.checked else v
        for v, info in zip(p_leaves, infos, strict=True)
    ]
    static_params = {i: v for i, v in enumerate(p_leaves) if not _is_array(v)}
    dyn_params = [v for v in p_leaves if _is_array(v)]
    a_leaves, a_treedef = jax.tree_util.tree_flatten(args, is_leaf=lambda x: x is None)
    a_leaves = [_to_x64(v) for v in a_leaves]
    static_args = {i: v for i, v in enumerate(a_leaves) if not _is_array(v)}
    dyn_args = [v for v in a_leaves if _is_array(v)]
    dyn_pos = {}  # leaf position -> index among dynamic params
    for i in range(len(p_leaves)):
        if i not in static_params:
            dyn_pos[i] = len(dyn_pos)

    def leaf_fn(pos: int | None, shape: tuple[int, ...] = ()) -> engine.LeafFunction:
        return engine.LeafFunction(
            f, p_treedef, len(p_leaves), static_params,
            a_treedef, len(a_leaves), static_args, pos, shape,
        )  # fmt: skip

    full = leaf_fn(None)
    _validate_output(jax.eval_shape(full, None, dyn_params, dyn_args))
    f0 = float(_value_jit(full, dyn_params, dyn_args))
    if not math.isfinite(f0):
        raise ValueError(
            f"`f(params, *args)` is {f0} at the given point, so nothing can be "
            "checked. Check the inputs (a log of 0, a division by 0, an overflow) "
            "or move to a point where f is finite."
        )
    out_dtype = jax.eval_shape(full, None, dyn_params, dyn_args).dtype
    eps = float(jnp.finfo(out_dtype).eps)

    # Analytic gradient.
    if grad_fn is None:
        grad_name = "jax.grad"
        idx = tuple(dyn_pos[i.pos] for i in checked)
        g_list = _grad_jit(full, idx, dyn_params, dyn_args)
        analytic = {info.pos: g for info, g in zip(checked, g_list, strict=True)}
    else:
        grad_name = _callable_name(grad_fn)
        user_params, user_args = full.rebuild(dyn_params, dyn_args)
        grads = grad_fn(user_params, *user_args)
        analytic = _match_grads(grads, infos, grad_name)
    analytic = {
        k: np.asarray(jnp.asarray(v, jnp.float64)).reshape(-1)
        for k, v in analytic.items()
    }

    # Which coordinates.
    selections = {info.pos: tree.select_coords(info, coords, seed) for info in checked}
    total = int(sum(len(s) for s in selections.values()))
    platform = jax.devices()[0].platform
    device = jax.devices()[0]
    budget = (
        memory_budget
        if memory_budget is not None
        else engine.default_memory_budget(device)
    )
    bar_ui = _progress_bar(total, progress)
    notes: list[str] = []
    if out_dtype != jnp.float64:
        notes.append(
            f"f returns {out_dtype} even though the check runs in float64: it "
            "computes in lower precision inside, so round-off is larger and many "
            "coordinates may be untestable. Remove the explicit cast to see a "
            "float64 check."
        )

    leaf_reports = []
    try:
        for info in checked:
            t0 = time.perf_counter()
            x_flat = dyn_params[dyn_pos[info.pos]].reshape(-1)
            fn = leaf_fn(info.pos, info.shape)
            indices = selections[info.pos]
            if chunk_size is not None:
                chunk = chunk_size
            else:
                per = engine.bytes_per_coordinate(fn, x_flat, dyn_params, dyn_args)
                chunk = engine.choose_chunk_size(per, len(indices), budget, platform)
            fp, fm = engine.central_differences(
                fn, x_flat, indices, step, dyn_params, dyn_args, chunk_size=chunk,
                on_progress=None if bar_ui is None else bar_ui.update,
            )  # fmt: skip
            bad = ~(np.isfinite(fp) & np.isfinite(fm))
            if bad.any():
                where = [
                    f"{info.path}{list(tree.unravel(i, info.shape))}"
                    for i in indices[bad][:10]
                ]
                raise ValueError(
                    f"`f` is not finite at {int(bad.sum())} perturbed point(s) "
                    f"x ± h·e_i with h={step:g}, e.g. at {', '.join(where)} (f = "
                    f"{f0:.6g} at the point itself). The point is within h of the "
                    "edge of f's domain (log, sqrt, division): pass a smaller `step` "
                    "or move the point away from the edge."
                )
            x_host = np.asarray(x_flat)[indices]
            h_real = (x_host + step) - (x_host - step)
            numeric = (fp - fm) / h_real
            a = analytic[info.pos][indices]
            rel = compare.relative_error(a, numeric)
            scale = np.maximum(np.maximum(np.abs(fp), np.abs(fm)), abs(f0))
            noise = bar.noise_factor * eps * scale / h_real
            codes = compare.verdicts(a, numeric, noise, bar.rtol)
            order = np.lexsort((-rel, -(codes == compare.WRONG).astype(np.int8)))
            worst = tuple(
                CoordResult(
                    index=tree.unravel(indices[j], info.shape),
                    analytic=float(a[j]),
                    numeric=float(numeric[j]),
                    rel_error=float(rel[j]),
                    verdict=compare.VERDICT_NAMES[codes[j]],
                    f_plus=float(fp[j]),
                    f_minus=float(fm[j]),
                )
                for j in order[:max_worst]
            )
            leaf_reports.append(
                LeafReport(
                    path=info.path,
                    shape=info.shape,
                    dtype=info.dtype,
                    num_checked=len(indices),
                    max_rel_error=float(rel.max()) if len(rel) else 0.0,
                    band_counts=compare.band_counts(rel),
                    num_ok=int((codes == compare.OK).sum()),
                    num_wrong=int((codes == compare.WRONG).sum()),
                    num_untestable=int((codes == compare.UNTESTABLE).sum()),
                    worst=worst,
                    step=step,
                    chunk_size=int(chunk),
                    seconds=time.perf_counter() - t0,
                )
            )
    finally:
        if bar_ui is not None:
            bar_ui.close()

    n_untestable = sum(r.num_untestable for r in leaf_reports)
    if n_untestable:
        all_untestable = n_untestable == total
        notes.append(
            (
                "EVERY checked coordinate"
                if all_untestable
                else f"{n_untestable:,} coordinates"
            )
            + " had a difference within round-off noise of the finite difference "
            f"(|a - n| <= {bar.noise_factor:g}·eps·|f|/h): they are neither confirmed "
            "nor refuted. Their gradients are tiny compared with |f|; scale the loss up "
            "or try a larger `step` to resolve them."
        )
    return GradCheckReport(
        leaves=tuple(leaf_reports),
        skipped=skipped,
        rtol=bar.rtol,
        bar_reason=bar.reason,
        step=step,
        method="central",
        dtype="float64",
        grad_source=grad_name,
        f_value=f0,
        device=f"{device.platform}:{device.id}",
        seconds=time.perf_counter() - t_start,
        notes=tuple(notes),
    )


def assert_grads(
    f: Callable[..., Any],
    params: PyTree,
    *args: Any,
    **kwargs: Any,
) -> GradCheckReport:
    """Like :func:`check_grads`, but raises when the check fails.

    Takes exactly the arguments of :func:`check_grads` and returns its report
    when the check passes, so it can be used in pytest.

    Raises:
      GradientCheckError: (an ``AssertionError``) when a coordinate is wrong; its
        message is the report of the failing leaves and ``.report`` holds the full
        report.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import jaxcheck
      >>> @jax.custom_vjp
      ... def square(x):
      ...     return x ** 2
      >>> square.defvjp(lambda x: (x ** 2, x), lambda x, g: (g * x,))  # forgot the 2
      >>> try:
      ...     jaxcheck.assert_grads(lambda p: jnp.sum(square(p)), jnp.arange(1.0, 4.0))
      ... except jaxcheck.GradientCheckError as e:
      ...     print(str(e).splitlines()[0][:57])
      jaxcheck: gradient check FAILED: 1 leaf, 3 coordinates, 3
    """
    report = check_grads(f, params, *args, **kwargs)
    if not report.passed:
        raise GradientCheckError(report.failure_message(), report)
    return report
