"""The one jaxpr interpreter: its table of call-like primitives matches what
this JAX emits, every rule set (kink analysis, kink tracking, propagation's
flattening, activation capture) enters every call in the table, and no other
module keeps a table of its own."""

from __future__ import annotations

import ast
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.extend import core as jex

from jaxcheck import interpret, kinks
from jaxcheck.propagate import program as prop_program
from jaxcheck.training import _capture

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "jaxcheck"


def _body(x):
    return jnp.sum(jnp.maximum(x, 0.0) * jnp.tanh(x))


X = jnp.array([-1.0, 0.5, 2.0])


# --- the table matches this JAX --------------------------------------------------


@jax.custom_jvp
def _cjvp(x):
    return _body(x)


_cjvp.defjvp(lambda p, t: (_cjvp(p[0]), jnp.sum(t[0])))


@jax.custom_vjp
def _cvjp(x):
    return _body(x)


_cvjp.defvjp(lambda x: (_cvjp(x), x), lambda x, g: (g * jnp.ones_like(x),))

#: What JAX's call-like APIs emit here, and the kind of call it must be.
WRAPPERS = {
    "jit": (jax.jit(_body), ""),
    "checkpoint": (jax.checkpoint(_body), ""),
    "custom_jvp": (_cjvp, "jvp"),
    "custom_vjp": (_cvjp, "vjp"),
}


@pytest.mark.parametrize("api", sorted(WRAPPERS))
def test_the_table_knows_what_this_jax_emits(api):
    fn, custom = WRAPPERS[api]
    (eqn,) = jax.make_jaxpr(fn)(X).jaxpr.eqns
    name = eqn.primitive.name
    assert interpret.is_call(eqn), f"{api} emits `{name}`: add it to CALLS"
    assert interpret.CALLS[name].custom == custom
    inner, consts = interpret.call_jaxpr(eqn)
    assert float(jax.core.eval_jaxpr(inner, consts, X)[0]) == pytest.approx(
        float(_body(X))
    )


def test_control_flow_parameters_hold_the_jaxprs():
    closed = jax.make_jaxpr(
        lambda x: (
            lax.cond(x[0] > 0, _body, lambda v: jnp.sum(v), x)
            + lax.scan(lambda c, v: (c + v, c), 0.0, x)[0]
            + lax.while_loop(lambda s: s < 5.0, lambda s: s * 2.0, x[1])
        )
    )(X)
    seen = {}
    for eqn in closed.jaxpr.eqns:
        if eqn.primitive.name in interpret.CONTROL_FLOW:
            assert interpret.carries_jaxpr(eqn)
            seen[eqn.primitive.name] = [
                k
                for k, v in eqn.params.items()
                if isinstance(v, jex.ClosedJaxpr | tuple) and k != "linear"
                if not isinstance(v, tuple) or isinstance(v[0], jex.ClosedJaxpr)
            ]
    assert {k: sorted(v) for k, v in seen.items()} == {
        k: sorted(v) for k, v in interpret.CONTROL_FLOW.items()
    }


# --- every rule set enters every call of the table ----------------------------


def _wrapped(name: str, param: str, open_jaxpr: bool):
    """``_body`` inside one equation of a primitive called ``name`` that holds
    the body's jaxpr in ``param`` (open or closed), as JAX's calls do."""
    inner = jax.make_jaxpr(_body)(X)
    outer = jax.make_jaxpr(jax.jit(_body))(X)
    prim = jex.Primitive(name)
    prim.multiple_results = True
    prim.def_impl(
        lambda *args, **_: jax.core.eval_jaxpr(inner.jaxpr, inner.consts, *args)
    )
    prim.def_abstract_eval(lambda *avals, **_: [v.aval for v in inner.jaxpr.outvars])
    (eqn,) = outer.jaxpr.eqns
    held = inner.jaxpr if open_jaxpr else inner
    eqn = eqn.replace(primitive=prim, params={param: held})
    return outer.replace(jaxpr=outer.jaxpr.replace(eqns=[eqn]))


#: Every call of the table, holding its jaxpr closed and open (``checkpoint``
#: holds an open one, ``jit`` a closed one; either is entered).
CALL_CASES = [
    (name, call.param, open_jaxpr)
    for name, call in interpret.CALLS.items()
    for open_jaxpr in (False, True)
]


def _rule_sets(closed):
    """What each rule set makes of ``closed`` (one input: X)."""
    analysis = kinks.analyze_jaxpr(closed, [0])
    outs, words, sites = kinks.eval_with_winners(closed, [X], [0])
    _, w_neg, _ = kinks.eval_with_winners(closed, [-X], [0])
    flat = prop_program._flatten(closed)
    rec = _capture.Recorder(None)
    cap_outs, _ = _capture.eval_jaxpr(closed.jaxpr, closed.consts, [X], rec, True)
    return {
        "analysis": [s.primitive for s in analysis.sites],
        "opaque": [s.primitive for s in analysis.opaque],
        "tracked": [s.primitive for s in sites],
        "value": float(outs[0]),
        "words_change": bool(jnp.any(words != w_neg)),
        "flat": [e.name for e in flat.eqns],
        "captured": rec.kinds,
        "captured_grads": rec.has_grad,
        "capture_value": float(cap_outs[0]),
    }


@pytest.mark.parametrize("name, param, open_jaxpr", CALL_CASES)
def test_every_rule_set_enters_every_call(name, param, open_jaxpr):
    custom = bool(interpret.CALLS[name].custom)
    got = _rule_sets(_wrapped(name, param, open_jaxpr))
    inside = [e.primitive.name for e in jax.make_jaxpr(_body)(X).jaxpr.eqns]
    assert got == {
        "analysis": ["max"],
        "opaque": [],
        "tracked": ["max"],
        "value": pytest.approx(float(_body(X))),
        "words_change": True,
        "flat": inside,  # inlined: the call itself is gone
        "captured": ["relu", "tanh"],
        # a custom rule is kept: its insides are recorded without gradients
        "captured_grads": [not custom, not custom],
        "capture_value": pytest.approx(float(_body(X))),
    }


def test_a_call_not_in_the_table_is_not_entered():
    got = _rule_sets(_wrapped("my_call", "call_jaxpr", False))
    assert got["analysis"] == [] and got["tracked"] == []
    assert got["opaque"] == ["my_call"]  # it holds a jaxpr: listed, not ignored
    assert got["flat"] == ["my_call"] and got["captured"] == []
    assert got["value"] == pytest.approx(float(_body(X)))


# --- the walker -----------------------------------------------------------------


def test_rules_replace_primitives_inside_calls():
    class SinIsCos(interpret.Walker):
        rules = {"sin": lambda w, eqn, ins, frame: [jnp.cos(ins[0])]}

    closed = jax.make_jaxpr(lambda x: jax.jit(jax.checkpoint(jnp.sin))(x) + 1.0)(0.3)
    (out,) = SinIsCos().run(closed.jaxpr, closed.consts, [0.3])
    assert float(out) == pytest.approx(float(jnp.cos(0.3)) + 1.0)
    (plain,) = interpret.Walker().run(closed.jaxpr, closed.consts, [0.3])
    assert float(plain) == pytest.approx(float(jnp.sin(0.3)) + 1.0)


def test_run_scan_follows_the_operand_layout():
    c = jnp.array(3.0)

    def f(xs, init):
        return lax.scan(lambda s, x: (s * c + x, s - x), init, xs, reverse=True)

    xs, init = jnp.arange(4.0), jnp.array(1.0)
    closed = jax.make_jaxpr(f)(xs, init)
    (eqn,) = [e for e in closed.jaxpr.eqns if e.primitive.name == "scan"]
    body = eqn.params["jaxpr"]
    ins = [
        closed.consts[closed.jaxpr.constvars.index(a)]
        if a in closed.jaxpr.constvars
        else {closed.jaxpr.invars[0]: xs, closed.jaxpr.invars[1]: init}.get(a, a)
        for a in eqn.invars
    ]
    ins = [a.val if interpret.is_literal(a) else a for a in ins]

    def plain(*args):
        outs = jax.core.eval_jaxpr(body.jaxpr, body.consts, *args)
        return outs, args[-1]  # the scanned input, stacked back

    outs, seen = interpret.run_scan(eqn, ins, plain)
    want_c, want_ys = f(xs, init)
    np.testing.assert_allclose(outs[0], want_c)
    np.testing.assert_allclose(outs[1], want_ys)
    np.testing.assert_array_equal(seen, xs)


# --- one table ------------------------------------------------------------------


def _tabled_call_names(source: str) -> list[str]:
    """Call primitive names that ``source`` lists in a table (a set, list,
    tuple, dict key or whitespace-split string) or compares a ``.name`` with."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Set | ast.List | ast.Tuple):
            items = node.elts
        elif isinstance(node, ast.Dict):
            items = [k for k in node.keys if k is not None]
        elif isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if not any(
                isinstance(x, ast.Attribute) and x.attr == "name" for x in sides
            ):
                continue
            items = sides
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "split"
            and isinstance(node.func.value, ast.Constant)
            and isinstance(node.func.value.value, str)
        ):
            items = [ast.Constant(t) for t in node.func.value.value.split()]
        else:
            continue
        found.update(
            x.value
            for x in items
            if isinstance(x, ast.Constant) and x.value in interpret.CALLS
        )
    return sorted(found)


def _modules_naming_calls(root: pathlib.Path) -> dict[str, list[str]]:
    """Modules under ``root`` that keep a table of call primitives."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        names = _tabled_call_names(path.read_text())
        if names:
            found[path.relative_to(root).as_posix()] = names
    return found


def test_a_second_table_is_found(tmp_path):
    files = {
        "a.py": '"""jit, pjit."""\n_INLINE = {"pjit", "remat2"}\n',
        "b.py": 'def f(e):\n    """closed_call"""\n    return e.primitive.name == "jit"\n',
        "c.py": '_CALLS = frozenset("jit core_call".split())\nmode = "jit"\n',
        "d.py": 'mode = "jit"\nok = mode == "checkpoint"\n',  # not primitives
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    assert _modules_naming_calls(tmp_path) == {
        "a.py": ["pjit", "remat2"],
        "b.py": ["jit"],
        "c.py": ["core_call", "jit"],
    }


def test_call_primitives_are_named_in_one_table_only():
    assert _modules_naming_calls(PACKAGE) == {
        "interpret/calls.py": sorted(interpret.CALLS)
    }
