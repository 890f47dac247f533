"""Long checks behave: several devices give the same numbers, Ctrl-C keeps a report."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import pytest

import jaxcheck
from jaxcheck import check
from jaxcheck.engine.program import Program

SCRIPT = textwrap.dedent(
    """
    import json, jax, jaxcheck
    import numpy as np
    from jaxcheck import examples as ex
    from jaxcheck.engine import cluster
    params = ex.mlp_init((20, 12, 5), seed=3)
    x, y = ex.classification_batch(8, 20, 5)
    out = {"devices": len(jax.devices())}
    idx, hs = cluster.place_rows(np.zeros((2, 8), np.int32), np.zeros((2, 8)))
    out["placed_on"] = len(idx.sharding.device_set) if hasattr(idx, "sharding") else 1
    for prop in (True, False):
        r = jaxcheck.check_grads(ex.mlp_loss, params, x, y, propagate=prop,
                                 max_worst=400)
        out[str(prop)] = {
            leaf.path: sorted([list(c.index), c.numeric] for c in leaf.worst)
            for leaf in r.leaves
        }
        out[str(prop) + "_passed"] = r.passed
    print(json.dumps(out))
    """
)


def _run(devices: int) -> dict:
    env = dict(
        os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}"
    )
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_sharded_over_four_cpu_devices_gives_identical_numbers():
    one, four = _run(1), _run(4)
    assert one["devices"] == 1 and four["devices"] == 4
    assert one["placed_on"] == 1 and four["placed_on"] == 4
    for prop in ("True", "False"):
        assert one[prop + "_passed"] and four[prop + "_passed"]
        assert one[prop] == four[prop]  # every numeric value bit for bit


def _interrupt_call(monkeypatch, at_call: int) -> list:
    """Makes the check program's call ``at_call`` raise Ctrl-C."""
    real = Program.run
    calls = []

    def interrupted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == at_call:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Program, "run", interrupted)
    return calls


def test_ctrl_c_returns_a_partial_report(monkeypatch):
    # Calls hold 64 chunks of 8 rows: the point itself and 511 coordinates, then
    # 512 coordinates each. Stopped in the third call, leaf ['a'] is finished,
    # ['b'] is cut after 462 of its 1,000 coordinates and ['c'] never started.
    params = {"a": jnp.linspace(-1, 1, 561), "b": jnp.ones(1000), "c": jnp.ones(5)}

    def f(p):
        return jnp.sum(jnp.sin(p["a"])) + jnp.sum(p["b"] ** 2) + jnp.sum(p["c"] ** 3)

    _interrupt_call(monkeypatch, at_call=3)
    report = jaxcheck.check_grads(f, params, chunk_size=8, propagate=False)
    assert [leaf.path for leaf in report.leaves] == ["['a']", "['b']"]
    assert report.leaf("['b']").num_checked == 1023 - 561
    assert report.interrupted == ("['b']", "['c']")
    assert not report.passed
    assert str(report).startswith("jaxcheck: gradient check INTERRUPTED")
    text = " ".join(str(report).split())  # the text wraps to the terminal
    assert "interrupted (Ctrl-C)" in text
    assert "['b'] was stopped after 462 of its 1,000 coordinates" in text
    assert report.to_dict()["interrupted"] == ["['b']", "['c']"]


def test_ctrl_c_before_any_leaf_propagates(monkeypatch):
    _interrupt_call(monkeypatch, at_call=1)
    with pytest.raises(KeyboardInterrupt):
        jaxcheck.check_grads(lambda w: jnp.sum(w**2), jnp.ones(3))


def test_progress_bar_counts_coordinates(capsys):
    report = jaxcheck.check_grads(
        lambda w: jnp.sum(jnp.sin(w)), jnp.ones(40), progress=True
    )
    assert report.passed
    err = capsys.readouterr().err
    assert "jaxcheck" in err and "40/40" in err and "coord" in err


def _bad_scale(w):
    return jnp.sum(jnp.sin(w))


def _bad_scale_grad(w):  # planted bug: the last 100 entries are 1% off
    g = jnp.cos(w)
    return g.at[-100:].multiply(1.01)


def test_ctrl_c_inside_a_leaf_keeps_its_finished_coordinates(monkeypatch):
    w = jnp.linspace(-1.0, 1.0, 2000)
    # chunk 8 x 64 chunks per call: calls of 512 rows; stop in the third.
    calls = _interrupt_call(monkeypatch, at_call=3)
    report = jaxcheck.check_grads(
        _bad_scale, w, chunk_size=8, propagate=False, grad_fn=lambda w: jnp.cos(w)
    )
    assert len(calls) == 3
    (leaf,) = report.leaves
    assert (leaf.num_checked, leaf.num_selected) == (1023, 2000)
    assert leaf.interrupted and leaf.verdict == "INTERRUPTED"
    assert leaf.num_ok == 1023 and leaf.num_wrong == 0
    assert report.interrupted == (leaf.path,)
    assert not report.passed
    assert "stopped after 1,023 of its 2,000 coordinates" in str(report)
    assert report.to_dict()["leaves"][0]["interrupted"] is True


def test_ctrl_c_inside_a_leaf_still_reports_the_bugs_it_reached(monkeypatch):
    w = jnp.linspace(-1.0, 1.0, 2000)
    _interrupt_call(monkeypatch, at_call=4)  # 1535 finished
    bad = jaxcheck.check_grads(
        _bad_scale, w, chunk_size=8, propagate=False, grad_fn=_bad_scale_grad
    )
    (leaf,) = bad.leaves
    assert leaf.num_checked == 1535 and leaf.num_wrong == 0  # bug not reached
    monkeypatch.undo()
    flipped = lambda w: _bad_scale_grad(w[::-1])[::-1]  # noqa: E731 - bug at the front
    _interrupt_call(monkeypatch, at_call=2)  # 511 finished
    report = jaxcheck.check_grads(
        _bad_scale, w, chunk_size=8, propagate=False, grad_fn=flipped, max_worst=200
    )
    (leaf,) = report.leaves
    assert leaf.num_checked == 511 and leaf.num_wrong == 100
    assert leaf.verdict == "FAIL" and not report.passed
    assert {c.index for c in leaf.worst if c.verdict == "wrong"} == {
        (i,) for i in range(100)
    }


def test_ctrl_c_inside_a_tracked_leaf_keeps_its_finished_coordinates(monkeypatch):
    w = jnp.linspace(-1.0, 1.0, 2000) + 1e-3  # no entry exactly at the kink

    def f(w):
        return jnp.sum(jax.nn.relu(w) ** 2 + jnp.sin(w))

    calls = _interrupt_call(monkeypatch, at_call=2)
    report = jaxcheck.check_grads(f, w, chunk_size=8, propagate=False)
    assert len(calls) >= 2
    (leaf,) = report.leaves
    assert leaf.tracked
    assert (leaf.num_checked, leaf.num_selected) == (511, 2000)
    assert leaf.num_ok + leaf.num_kink == 511 and leaf.num_wrong == 0
    assert not report.passed and report.interrupted


def test_ctrl_c_after_the_last_call_still_stops_the_check(monkeypatch):
    # The interrupt lands in the progress bar's update after the main pass's
    # only call: every coordinate was evaluated and nothing is lost, but the
    # check must stop there and not pass.
    class Bar:
        def update(self, k):
            raise KeyboardInterrupt

        def close(self):
            pass

    monkeypatch.setattr(check, "_progress_bar", lambda total, progress: Bar())
    params = {"a": jnp.linspace(-1.0, 1.0, 60), "b": jnp.ones(5)}
    report = jaxcheck.check_grads(
        lambda p: jnp.sum(jnp.sin(p["a"])) + jnp.sum(p["b"] ** 2),
        params,
        propagate=False,
    )
    assert [leaf.num_checked for leaf in report.leaves] == [60, 5]
    assert report.interrupted == ("['a']", "['b']")
    assert report.status == "interrupted" and not report.passed
    assert "every coordinate was evaluated" in " ".join(str(report).split())
