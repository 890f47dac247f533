import json

import jax
import jax.numpy as jnp
import pytest

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


# --- kinks, untestable coordinates, strict --------------------------------------


def kinked(p):
    # |w| at exactly 0 (kinks) plus a tiny term that drowns in round-off.
    return jnp.sum(jnp.abs(p["w"])) + 1.0 + 1e-13 * jnp.sum(p["t"] ** 2)


KPARAMS = {"w": jnp.array([0.0, 1.5, -2.0]), "t": jnp.array([1.0, 2.0])}


def test_text_report_shows_kinks_and_untestable_coordinates():
    r = jaxcheck.check_grads(kinked, KPARAMS)
    assert r.passed and r.num_kink == 1 and r.num_untestable == 2
    text = str(r)
    header = next(line for line in text.splitlines() if "max rel err" in line)
    assert "kink" in header.split() and "untestable" in header.split()
    assert "1 at kinks" in r.headline() and "2 untestable" in r.headline()
    assert "kink sites tracked: abs at test_report.py" in text
    assert "kinks of ['w']: 1 coordinate(s) crossed abs at test_report.py" in text
    assert "['w'][0]  analytic=" in text and "[kink: abs at" in text
    assert "untestable coordinates of ['t']:" in text
    assert "f(x+h)=+4.500000e+00" in text


def test_strict_fails_untestable_and_names_the_leaf():
    r = jaxcheck.check_grads(kinked, KPARAMS, strict=True)
    assert not r.passed and r.num_wrong == 0
    assert [leaf.path for leaf in r.failures] == ["['t']"]
    assert r.failure_message().startswith("jaxcheck: gradient check FAILED")
    with pytest.raises(jaxcheck.GradientCheckError, match=r"\['t'\]"):
        jaxcheck.assert_grads(kinked, KPARAMS, strict=True)


def test_to_dict_and_html_carry_the_new_verdicts():
    r = jaxcheck.check_grads(kinked, KPARAMS)
    d = json.loads(json.dumps(r.to_dict()))
    assert d["num_kink"] == 1 and d["num_untestable"] == 2 and d["strict"] is False
    assert d["kink_sites"][0].startswith("abs at") and d["opaque"] == []
    assert d["noise_floor"] is None or d["noise_floor"] > 0
    assert d["step_rule"] == "fixed" and d["depth"] == 0
    w = next(leaf for leaf in d["leaves"] if leaf["path"] == "['w']")
    assert w["num_kink"] == 1 and w["tracked"] is True
    assert w["kinks"][0]["verdict"] == "kink" and w["kinks"][0]["index"] == [0]
    assert "bracket it" in w["kinks"][0]["resolution"]
    html = r._repr_html_()
    # The HTML carries what the text says (one Doc renders both), escaped.
    assert "kink sites tracked: abs at" in html
    assert "kinks of [&#x27;w&#x27;]: 1 coordinate(s) crossed abs" in html
    assert "untestable coordinates of [&#x27;t&#x27;]:" in html
    assert html.count("<table>") == 1 and "<li>[&#x27;w&#x27;][0]  analytic=" in html


# --- the header and the leaf table agree ----------------------------------------


def test_header_and_leaf_table_report_the_same_worst_error():
    # Every coordinate is below round-off: nothing is judged ok or wrong, so
    # neither the table nor the header may show a "max rel err"; the header says
    # that the (untestable) errors are not evidence.
    r = jaxcheck.check_grads(
        lambda w: 1.0 + 1e-12 * jnp.sum(w**2), jnp.arange(1.0, 5.0)
    )
    assert r.status == "inconclusive" and r.num_untestable == 4
    lines = str(r).splitlines()
    row = next(line for line in lines if "UNTESTABLE" in line)
    assert "0.00e+00" not in row and " - " in row
    assert row.split()[0] == "(root)"  # a bare array is named, not left blank
    assert "  untestable coordinates of (root):" in lines
    top = max(c.rel_error for c in r.leaves[0].worst)
    assert f"relative errors up to {top:.2e}" in " ".join(lines)
    assert "within round-off, not evidence" in r.headline()
    assert "worst relative error" not in r.headline()


def test_header_worst_is_the_table_max_over_ok_and_wrong_coordinates():
    # ['t'] is untestable with a large relative error, ['w'] is tested: the
    # header quotes the tested maximum (the table's), not the untestable one.
    r = jaxcheck.check_grads(kinked, KPARAMS)
    untestable = max(c.rel_error for c in r.leaf("['t']").worst)
    tested = r.leaf("['w']").max_rel_error
    assert untestable > tested
    assert f"worst relative error {tested:.2e} at ['w']" in r.headline()
    assert "among the 2 coordinates judged ok or wrong" in r.headline()
    text = str(r)
    row = next(ln for ln in text.splitlines() if ln.strip().startswith("['w']  "))
    assert f"{tested:.2e}" in row
    assert "max rel err: over the coordinates judged ok or wrong" in text
    # A check where every coordinate is ok or wrong says nothing extra.
    assert "judged ok or wrong" not in str(jaxcheck.check_grads(f, PARAMS))


def test_text_fits_the_terminal_and_the_first_line_is_a_summary(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    r = jaxcheck.check_grads(kinked, KPARAMS)
    lines = str(r).splitlines()
    assert lines[0].startswith("jaxcheck: gradient check PASSED: 2 leaves,")
    table = {ln for ln in lines if "max rel err  " in ln or ln.endswith(" ok")}
    table |= {ln for ln in lines if ln.endswith(" UNTESTABLE")}
    assert len(table) == 3
    # Only tables (never wider than needed) may exceed the width; notes wrap.
    assert all(len(ln) <= 80 for ln in lines if ln not in table)
    assert any(ln.startswith("      ") and "note" not in ln for ln in lines)
    assert " ".join(ln.strip() for ln in lines).count("note: ") == len(r.notes)
