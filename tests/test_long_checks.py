"""Long checks behave: several devices give the same numbers, Ctrl-C keeps a report."""

import json
import os
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import pytest

import jaxcheck
from jaxcheck import check, examples

SCRIPT = textwrap.dedent(
    """
    import json, jax, jaxcheck
    from jaxcheck import engine, examples as ex
    params = ex.mlp_init((20, 12, 5), seed=3)
    x, y = ex.classification_batch(8, 20, 5)
    out = {"devices": len(jax.devices())}
    idx, hs = engine._place(jax.numpy.zeros((2, 8), int), jax.numpy.zeros((2, 8)))
    out["placed_on"] = len(idx.sharding.device_set)
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


def test_sharded_over_four_cpu_devices_gives_identical_numbers():
    one, four = _run(1), _run(4)
    assert one["devices"] == 1 and four["devices"] == 4
    assert one["placed_on"] == 1 and four["placed_on"] == 4
    for prop in ("True", "False"):
        assert one[prop + "_passed"] and four[prop + "_passed"]
        assert one[prop] == four[prop]  # every numeric value bit for bit


def test_ctrl_c_returns_a_partial_report(monkeypatch):
    real_run = check._Leaf.run
    calls = []

    def run(self, on_progress):
        calls.append(self.info.path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_run(self, on_progress)

    monkeypatch.setattr(check._Leaf, "run", run)
    params = examples.mlp_init((4, 3, 2))
    x, y = examples.classification_batch(5, 4, 2)
    report = jaxcheck.check_grads(examples.mlp_loss, params, x, y)
    assert [leaf.path for leaf in report.leaves] == ["[0]['W']", "[0]['b']"]
    assert report.interrupted == ("[1]['W']", "[1]['b']")
    assert not report.passed
    assert str(report).startswith("jaxcheck: gradient check INTERRUPTED")
    assert "interrupted (Ctrl-C)" in str(report)
    assert report.to_dict()["interrupted"] == ["[1]['W']", "[1]['b']"]


def test_ctrl_c_before_any_leaf_propagates(monkeypatch):
    def run(self, on_progress):
        raise KeyboardInterrupt

    monkeypatch.setattr(check._Leaf, "run", run)
    with pytest.raises(KeyboardInterrupt):
        jaxcheck.check_grads(lambda w: jnp.sum(w**2), jnp.ones(3))


def test_progress_bar_counts_coordinates(capsys):
    report = jaxcheck.check_grads(
        lambda w: jnp.sum(jnp.sin(w)), jnp.ones(40), progress=True
    )
    assert report.passed
    err = capsys.readouterr().err
    assert "jaxcheck" in err and "40/40" in err and "coord" in err
