"""The ``jaxcheck`` command: ``jaxcheck demo`` and ``jaxcheck check module:function``.

Exit status, the same for both commands (see :data:`EXIT_STATUS`):

* 0: passed (``demo``: every verdict was the expected one).
* 1: failed: a gradient is wrong, or nothing could be tested (an inconclusive
  check confirms nothing, so it is not a pass); ``demo``: a verdict that is not
  the expected one (a planted bug not caught, a correct model that fails).
* 2: usage or input error, nothing was checked: a bad option, a target that
  cannot be imported or returns the wrong thing, an ``f`` that is not a scalar
  function, ``f`` raising.
* 130: interrupted (Ctrl-C) before any wrong gradient was found.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
import traceback
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
from .render import strict_json
from .report import GradCheckReport

#: Exit status of a check that passed.
EXIT_PASSED = 0
#: Exit status of a failed check: a wrong gradient, or nothing tested.
EXIT_FAILED = 1
#: Exit status of a usage or input error: nothing was checked.
EXIT_USAGE = 2
#: Exit status after Ctrl-C, when no wrong gradient had been found.
EXIT_INTERRUPTED = 130

#: What each exit status means; ``jaxcheck --help`` prints it.
EXIT_STATUS = f"""\
exit status:
  {EXIT_PASSED}    passed (demo: every verdict was the expected one)
  {EXIT_FAILED}    failed: a gradient is wrong, or the check is inconclusive (nothing
       could be tested, so nothing was confirmed); demo: an unexpected verdict
  {EXIT_USAGE}    usage or input error, nothing was checked: a bad option, a target
       that cannot be imported or returns the wrong thing, f not scalar, f raised
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C) before any wrong gradient was found
"""


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


# ----------------------------------------------------------------------------- demo


def _demo(args: argparse.Namespace) -> int:
    print("jaxcheck demo: checking every coordinate of a 64-32-10 tanh MLP (2,410")
    print("parameters, softmax loss, batch 16) in float64. Each part says which")
    print("failures are planted; any other verdict makes the demo exit with 1.\n")
    print("1) The correct model (gradient from jax.grad); expected: PASSED.")
    correct = check_grads(*demo_problem(buggy=False))
    print(correct, "\n")
    print("2) The same model with a planted bug in a custom_vjp rule (tanh' = 1 - y")
    print("   instead of 1 - y**2); expected: FAILED, planted.")
    buggy = check_grads(*demo_problem(buggy=True))
    print(buggy, "\n")
    unexpected = []
    if correct.status != "passed":
        unexpected.append(f"the correct model's check is {correct.status.upper()}")
    if buggy.status != "failed":
        unexpected.append(
            f"the planted bug was not caught (the check is {buggy.status.upper()})"
        )
    if unexpected:
        print(f"UNEXPECTED: {'; '.join(unexpected)}. Please report this.")
    else:
        print(
            "Verdicts as expected: the correct gradient passes, the planted bug is caught."
        )
    ok = not unexpected
    if not args.no_training:
        ok = _demo_training(args.out) and ok
    print(
        "\njaxcheck demo: every verdict as expected (planted failures caught, "
        "correct models passed)."
        if ok
        else "\njaxcheck demo: UNEXPECTED verdicts (marked UNEXPECTED above); exit 1."
    )
    return EXIT_PASSED if ok else EXIT_FAILED


def _demo_training(out: str) -> bool:
    """Part 3 of the demo; False when a verdict was not the expected one."""
    from .training import demo as training_demo

    print("\n3) Sanity checks and training monitors on scikit-learn's 8x8 digits:")
    try:
        result = training_demo.run_demo(out)
    except ImportError as e:
        print(f"   skipped (not a failure; needs jaxcheck[demo]): {e}")
        return True
    print(result)
    return result.passed


# ---------------------------------------------------------------------------- check


class _InputError(Exception):
    """A usage or input error found after the options were parsed (exit 2)."""


def _load(target: str) -> tuple:
    """``(f, params, *args)`` from the zero-argument function ``target`` names."""
    if ":" not in target:
        raise _InputError(
            f"expected MODULE:FUNCTION, got {target!r} "
            "(e.g. `jaxcheck check mypkg.tests:make_problem`)."
        )
    mod_name, fn_name = target.split(":", 1)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(mod_name)
    except Exception as e:  # ImportError, or whatever the module raised
        raise _InputError(
            f"cannot import module {mod_name!r}: {type(e).__name__}: {e}. The module "
            "must be importable from the current directory or sys.path."
        ) from e
    fn = getattr(module, fn_name, None)
    if fn is None or not callable(fn):
        raise _InputError(
            f"{mod_name!r} has no callable {fn_name!r}; it must be a "
            "zero-argument function returning (f, params, *args)."
        )
    try:
        problem = fn()
    except Exception as e:
        raise _InputError(
            f"{target}() raised {type(e).__name__}: {e}. It must be a zero-argument "
            "function returning (f, params, *args)."
        ) from e
    expected = (
        "a tuple (f, params, *args) of at least 2 elements: the scalar function "
        "f(params, *args), its parameters (a pytree of float arrays), then f's "
        "other arguments, if any"
    )
    if not isinstance(problem, tuple | list):
        raise _InputError(
            f"{target}() must return {expected}; got {type(problem).__name__}."
        )
    if len(problem) < 2:
        raise _InputError(
            f"{target}() must return {expected}; got a {type(problem).__name__} of "
            f"length {len(problem)}."
        )
    if not callable(problem[0]):
        raise _InputError(
            f"{target}() must return {expected}; its first element is "
            f"{type(problem[0]).__name__}, not a function."
        )
    return tuple(problem)


def _positive(text: str, expected: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def _step(text: str) -> float | str:
    if text == "auto":
        return text
    return _positive(text, 'a positive number or "auto"')


def _coords(text: str) -> int | str:
    if text == "all":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(
            f'expected "all" or a whole number >= 1 of coordinates per leaf, got {text!r}'
        )
    return value


def _rtol(text: str) -> float:
    return _positive(text, "a positive relative-error bar such as 1e-6")


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines() or [""]
    more = len(lines) - 1
    return lines[0] + (f" (+{more} more lines: see --traceback)" if more else "")


def _error(args: argparse.Namespace, err: BaseException, message: str) -> int:
    """Prints a usage/input error as one line (and the traceback if asked)."""
    hint = ""
    if args.traceback:
        traceback.print_exception(err)
    elif err.__cause__ is not None or not isinstance(err, _InputError):
        hint = " (--traceback shows where it was raised)"
    print(f"jaxcheck check: error: {message}{hint}", file=sys.stderr)
    if args.json:
        print(json.dumps({"passed": False, "status": "error", "error": message}))
    return EXIT_USAGE


def _check(args: argparse.Namespace) -> int:
    try:
        f, params, *fargs = _load(args.target)
        report: GradCheckReport = check_grads(
            f, params, *fargs, coords=args.coords, step=args.step, rtol=args.rtol,
            seed=args.seed, method=args.method, strict=args.strict,
        )  # fmt: skip
    except _InputError as e:
        return _error(args, e, str(e))
    except KeyboardInterrupt as e:
        message = "interrupted (Ctrl-C) before any coordinate was judged"
        if args.traceback:
            traceback.print_exception(e)
        print(f"jaxcheck check: {message}; nothing to report.", file=sys.stderr)
        if args.json:
            print(json.dumps({"passed": False, "status": "interrupted"}))
        return EXIT_INTERRUPTED
    except Exception as e:  # raised by the checker's validation, or by f
        return _error(args, e, f"{type(e).__name__}: {_first_line(e)}")
    if args.json:
        print(json.dumps(strict_json(report.to_dict()), indent=2, allow_nan=False))
    else:
        print(report)
    status = report.status
    if status == "passed":
        return EXIT_PASSED
    if status == "inconclusive":
        print(
            f"jaxcheck check: exit {EXIT_FAILED}: the check is inconclusive: no "
            "coordinate could be tested, so no gradient was confirmed; an "
            "inconclusive check is not a pass (the report says why).",
            file=sys.stderr,
        )
        return EXIT_FAILED
    if status == "interrupted":
        print(
            f"jaxcheck check: exit {EXIT_INTERRUPTED}: interrupted (Ctrl-C); no wrong "
            "gradient among the coordinates checked so far.",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    return EXIT_FAILED


# ----------------------------------------------------------------------------- main

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
    # jaxcheck's program cache (jaxcheck.engine.cache) lives under the same
    # unusable base directory: off too, for this process only.
    os.environ[_NO_CACHE] = "1"
    print(
        "jaxcheck: compilation cache off for this run: the default directory "
        f"{where} cannot be used ({problem}). Choose another with --cache-dir DIR "
        f"or ${ENV_VAR}=DIR, or turn the cache off with --no-cache or "
        f"${_NO_CACHE}=1.",
        file=sys.stderr,
    )


def _parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The command's parser and its subcommands' parsers by name."""
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="jaxcheck",
        description="Verify gradients in JAX.",
        epilog=EXIT_STATUS,
        formatter_class=raw,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="check built-in examples and print the reports",
        description="Check built-in examples with planted bugs and print the "
        "reports; exit 1 when a verdict is not the expected one.",
        epilog=EXIT_STATUS,
        formatter_class=raw,
    )
    demo.add_argument(
        "--out", default="jaxcheck-figures", help="folder for the demo's figures"
    )
    demo.add_argument(
        "--no-training", action="store_true", help="skip the sanity/monitor part"
    )
    chk = sub.add_parser(
        "check",
        help="check MODULE:FUNCTION, a zero-argument function returning (f, params, *args)",
        description="Check the gradient of f at params, from MODULE:FUNCTION, a "
        "zero-argument function returning (f, params, *args).",
        epilog=EXIT_STATUS,
        formatter_class=raw,
    )
    chk.add_argument("target", help="MODULE:FUNCTION")
    chk.add_argument(
        "--coords",
        type=_coords,
        default="all",
        help='"all" (default) or how many coordinates to sample per leaf',
    )
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
    chk.add_argument(
        "--rtol", type=_rtol, default=None, help="relative-error bar (positive)"
    )
    chk.add_argument("--seed", type=int, default=0, help="seed of coordinate sampling")
    chk.add_argument(
        "--json",
        action="store_true",
        help='print the report as strict JSON (NaN as null, infinities as "inf"; '
        '"non_finite" says what each means); on an error, {"status": "error", ...}',
    )
    chk.add_argument(
        "--traceback",
        action="store_true",
        help="on an error, print the full traceback too (default: one line)",
    )
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
    return parser, {"demo": demo, "check": chk}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``jaxcheck`` command; returns its exit status.

    0: passed; 1: a wrong gradient, or an inconclusive check (nothing could be
    tested), or in ``demo`` a verdict that is not the expected one; 2: a usage
    or input error (nothing was checked); 130: interrupted. Errors print one
    line on stderr (``--traceback`` adds the traceback). Option errors found by
    the parser raise ``SystemExit(2)`` as argparse does.

    The command owns its process, so it turns on the persistent compilation
    cache (:func:`jaxcheck.compilation.use_compilation_cache`) unless ``--no-cache`` or
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
    parser, commands = _parser()
    args = parser.parse_args(argv)
    if not (args.no_cache or os.environ.get(_NO_CACHE, "") not in ("", "0")):
        _turn_on_cache(args, commands[args.command])
    if args.command == "demo":
        return _demo(args)
    return _check(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
