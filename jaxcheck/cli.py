"""The ``jaxcheck`` command: ``jaxcheck demo`` and ``jaxcheck check module:function``."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from . import examples
from .check import check_grads
from .compilation import (
    ENV_VAR,
    _prepare_cache_dir,
    default_cache_dir,
    use_compilation_cache,
)
from .report import GradCheckReport


@jax.custom_vjp
def _tanh_wrong_backward(x: jax.Array) -> jax.Array:
    return jnp.tanh(x)


def _tanh_fwd(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    y = jnp.tanh(x)
    return y, y


def _tanh_bwd_bug(y: jax.Array, g: jax.Array) -> tuple[jax.Array]:
    # Planted bug: tanh'(x) = 1 - tanh(x)**2, written here as 1 - tanh(x).
    return (g * (1.0 - y),)


_tanh_wrong_backward.defvjp(_tanh_fwd, _tanh_bwd_bug)


def buggy_mlp_loss(params: Any, x: jax.Array, labels: jax.Array) -> jax.Array:
    """The demo MLP with a custom_vjp tanh whose backward rule is wrong.

    Examples:
      >>> params = examples.mlp_init((4, 3, 2))
      >>> x, y = examples.classification_batch(5, 4, 2)
      >>> bool(buggy_mlp_loss(params, x, y) == examples.mlp_loss(params, x, y))
      True
    """
    h = x
    for layer in params[:-1]:
        h = _tanh_wrong_backward(h @ layer["W"] + layer["b"])
    logits = h @ params[-1]["W"] + params[-1]["b"]
    return examples.softmax_loss(logits, labels)


def demo_problem(buggy: bool = False) -> tuple:
    """``(f, params, x, labels)`` of the demo: a 64-32-10 tanh MLP, batch 16.

    Examples:
      >>> f, params, x, y = demo_problem()
      >>> x.shape
      (16, 64)
    """
    params = examples.mlp_init((64, 32, 10), seed=0)
    x, y = examples.classification_batch(16, 64, 10, seed=1)
    return (buggy_mlp_loss if buggy else examples.mlp_loss), params, x, y


def _demo(args: argparse.Namespace) -> int:
    print("jaxcheck demo: checking every coordinate of a 64-32-10 tanh MLP (2,410")
    print("parameters, softmax loss, batch 16) in float64.\n")
    print("1) The correct model (gradient from jax.grad):")
    correct = check_grads(*demo_problem(buggy=False))
    print(correct, "\n")
    print("2) The same model with a planted bug in a custom_vjp rule (tanh' = 1 - y")
    print("   instead of 1 - y**2):")
    buggy = check_grads(*demo_problem(buggy=True))
    print(buggy, "\n")
    ok = correct.passed and not buggy.passed
    print(
        "Verdicts as expected: the correct gradient passes, the planted bug is caught."
        if ok
        else "UNEXPECTED: the demo's verdicts are wrong; please report this."
    )
    if not args.no_training:
        ok = _demo_training(args.out) and ok
    return 0 if ok else 1


def _demo_training(out: str) -> bool:
    try:
        from .training import demo as sanity
    except ImportError:  # pragma: no cover - the module ships with jaxcheck
        return True
    run_demo = getattr(sanity, "run_demo", None)
    if run_demo is None:
        return True
    print("\n3) Sanity checks and training monitors on scikit-learn's 8x8 digits:")
    try:
        summary = run_demo(out)
    except ImportError as e:
        print(f"   skipped: {e}")
        return True
    print(summary)
    return True


def _load(target: str) -> tuple:
    if ":" not in target:
        raise SystemExit(
            f"jaxcheck check: expected MODULE:FUNCTION, got {target!r} "
            "(e.g. `jaxcheck check mypkg.tests:make_problem`)."
        )
    mod_name, fn_name = target.split(":", 1)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(mod_name)
    except ImportError as e:
        raise SystemExit(
            f"jaxcheck check: cannot import module {mod_name!r}: {e}"
        ) from e
    fn = getattr(module, fn_name, None)
    if fn is None or not callable(fn):
        raise SystemExit(
            f"jaxcheck check: {mod_name!r} has no callable {fn_name!r}; it must be a "
            "zero-argument function returning (f, params, *args)."
        )
    problem = fn()
    if not isinstance(problem, tuple | list) or len(problem) < 2:
        raise SystemExit(
            f"jaxcheck check: {target} must return a tuple (f, params, *args), got "
            f"{type(problem).__name__}."
        )
    return tuple(problem)


def _step(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f'--step must be a number or "auto", got {text!r}'
        ) from None


def _check(args: argparse.Namespace) -> int:
    f, params, *fargs = _load(args.target)
    coords: Any = "all" if args.coords == "all" else int(args.coords)
    report: GradCheckReport = check_grads(
        f, params, *fargs, coords=coords, step=args.step, rtol=args.rtol,
        seed=args.seed, method=args.method, strict=args.strict,
    )  # fmt: skip
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report)
    return 0 if report.passed else 1


#: Set to 1 to keep the command from using the compilation cache.
_NO_CACHE = "JAXCHECK_NO_CACHE"


def _turn_on_cache(args: argparse.Namespace, command: argparse.ArgumentParser) -> None:
    """Turns the compilation cache on in ``args.cache_dir`` or the default one.

    An unusable directory that was asked for (``--cache-dir``,
    ``$JAXCHECK_CACHE_DIR``) is a usage error of ``command`` (exit status 2); an
    unusable default leaves the cache off, with one line on stderr.
    """
    if args.cache_dir is not None:
        source = "--cache-dir"
    elif os.environ.get(ENV_VAR):
        source = f"${ENV_VAR}"
    else:
        source = None
    if args.cache_dir == "":
        command.error(
            "--cache-dir: expected a directory, got an empty string. Pass a "
            "directory, or --no-cache to run without the cache."
        )
    where = os.path.abspath(
        default_cache_dir() if args.cache_dir is None else args.cache_dir
    )
    problem = _prepare_cache_dir(where)
    if problem is None:
        try:
            use_compilation_cache(where)
            return
        except ValueError as err:  # e.g. main() called again in one process
            problem = str(err)
    if source is not None:
        command.error(
            f"{source}: cannot keep the compilation cache in {where}: {problem}. "
            "Pass a writable directory (it is created if missing), or --no-cache "
            "to run without the cache."
        )
    print(
        "jaxcheck: compilation cache off for this run: the default directory "
        f"{where} cannot be used ({problem}). Choose another with --cache-dir DIR "
        f"or ${ENV_VAR}=DIR, or turn the cache off with --no-cache or "
        f"${_NO_CACHE}=1.",
        file=sys.stderr,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``jaxcheck`` command.

    The command owns its process, so it turns on the persistent compilation
    cache (:func:`jaxcheck.use_compilation_cache`) unless ``--no-cache`` or
    ``$JAXCHECK_NO_CACHE=1`` says not to: a second run loads the compiled
    calls instead of compiling them.

    When the default cache directory cannot be used (a read-only home, say),
    the command says so in one line on stderr and runs without the cache; a
    directory asked for with ``--cache-dir`` or ``$JAXCHECK_CACHE_DIR`` that
    cannot be used is a usage error (exit status 2).

    Examples:
      >>> main(["check", "jaxcheck.cli:demo_problem", "--coords", "3", "--no-cache"])
      ... # doctest: +ELLIPSIS
      jaxcheck: gradient check PASSED...
      0
    """
    parser = argparse.ArgumentParser(
        prog="jaxcheck", description="Verify gradients in JAX."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="check built-in examples and print the reports")
    demo.add_argument(
        "--out", default="jaxcheck-figures", help="folder for the demo's figures"
    )
    demo.add_argument(
        "--no-training", action="store_true", help="skip the sanity/monitor part"
    )
    chk = sub.add_parser(
        "check",
        help="check MODULE:FUNCTION, a zero-argument function returning (f, params, *args)",
    )
    chk.add_argument("target", help="MODULE:FUNCTION")
    chk.add_argument("--coords", default="all", help='"all" or coordinates per leaf')
    chk.add_argument(
        "--step", type=_step, default=None, help='finite-difference step h, or "auto"'
    )
    chk.add_argument(
        "--method",
        default="central",
        choices=("central", "forward", "four_point"),
        help="finite-difference stencil",
    )
    chk.add_argument(
        "--strict", action="store_true", help="fail on untestable coordinates too"
    )
    chk.add_argument("--rtol", type=float, default=None, help="relative-error bar")
    chk.add_argument("--seed", type=int, default=0, help="seed of coordinate sampling")
    chk.add_argument("--json", action="store_true", help="print the report as JSON")
    for command in (demo, chk):
        command.add_argument(
            "--cache-dir",
            default=None,
            help="keep compiled programs here, so a later run starts fast "
            f"(default: {default_cache_dir()}; ${_NO_CACHE}=1 or --no-cache: off)",
        )
        command.add_argument(
            "--no-cache", action="store_true", help="do not use the compilation cache"
        )
    args = parser.parse_args(argv)
    if not (args.no_cache or os.environ.get(_NO_CACHE, "") not in ("", "0")):
        _turn_on_cache(args, {"demo": demo, "check": chk}[args.command])
    if args.command == "demo":
        return _demo(args)
    return _check(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
