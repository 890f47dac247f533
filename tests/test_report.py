import json

import jax
import jax.numpy as jnp

import jaxcheck


@jax.custom_vjp
def cube(x):
    return x**3


cube.defvjp(lambda x: (x**3, x), lambda x, g: (g * 3 * x,))  # should be 3 x**2


def f(p):
    return jnp.sum(cube(p["layer<1>"]["W"])) + jnp.sum(p["b"] ** 2)


PARAMS = {"layer<1>": {"W": jnp.array([[1.5, 2.0], [0.5, 3.0]])}, "b": jnp.ones(3)}


def test_text_report_is_a_readable_table():
    r = jaxcheck.check_grads(f, PARAMS)
    text = str(r)
    lines = text.splitlines()
    assert lines[0].startswith(
        "jaxcheck: gradient check FAILED: 2 leaves, 7 coordinates"
    )
    assert "wrong in 1 leaf" in lines[0]
    header = next(line for line in lines if "max rel err" in line)
    for col in ["leaf", "shape", "checked", "<1e-7", ">1e-2", "untestable", "verdict"]:
        assert col in header
    row = next(line for line in lines if line.strip().startswith("['layer<1>']['W']"))
    assert "FAIL" in row and "4/4" in row
    # the worst coordinate is shown with raw values: W[1, 1] = 3 -> a = 9, n = 27
    assert (
        "['layer<1>']['W'][1, 1]  analytic=+9.000000e+00  numeric=+2.700000e+01" in text
    )


def test_failure_message_has_only_failing_leaves():
    r = jaxcheck.check_grads(f, PARAMS)
    msg = r.failure_message()
    assert "['layer<1>']['W']" in msg and "['b']  " not in msg


def test_html_escapes_and_marks_failures():
    html = jaxcheck.check_grads(f, PARAMS)._repr_html_()
    assert "<table>" in html and "</table>" in html
    assert "[&#x27;layer&lt;1&gt;&#x27;]" in html  # escaped path
    assert "background:#ffebee" in html
    assert "<layer" not in html


def test_to_dict_is_json():
    r = jaxcheck.check_grads(f, PARAMS)
    d = json.loads(json.dumps(r.to_dict()))
    assert d["passed"] is False and d["num_wrong"] == 4 and d["num_checked"] == 7
    # dict keys flatten in sorted order: ['b'] first
    assert [leaf["path"] for leaf in d["leaves"]] == ["['b']", "['layer<1>']['W']"]
    leaf = d["leaves"][1]
    assert leaf["shape"] == [2, 2]
    assert leaf["worst"][0]["index"] == [1, 1]
    assert abs(leaf["worst"][0]["rel_error"] - 2 / 3) < 1e-9
    assert d["leaves"][0]["passed"] is True


def test_worst_overall_and_leaf_lookup():
    r = jaxcheck.check_grads(f, PARAMS)
    path, coord = r.worst
    assert path == "['layer<1>']['W']" and coord.verdict == "wrong"
    try:
        r.leaf("['nope']")
    except KeyError as e:
        assert "['b']" in e.args[0]
    else:
        raise AssertionError("leaf() must raise KeyError for an unknown path")
