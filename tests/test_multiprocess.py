"""A multi-process JAX cluster (``jax.distributed``) checks with no code change.

Two CPU processes, two forced devices each, started on this machine with
``jax.distributed.initialize`` and gloo collectives: every process runs the same
check, the rows of every evaluation are split between them, and both end with
the numbers a single process computes, bit for bit.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax
    num_procs, pid, port = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    if num_procs > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=f"localhost:{port}",
                                   num_processes=num_procs, process_id=pid)
    import jax.numpy as jnp
    import jaxcheck
    from jaxcheck import engine, examples as ex

    def relu_loss(p, x, y):
        h = jax.nn.relu(x @ p["W1"] + p["b1"])
        logits = h @ p["W2"]
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(len(y)), y])

    @jax.custom_vjp
    def bad_tanh(z):
        return jnp.tanh(z)

    def bad_fwd(z):
        return jnp.tanh(z), z

    def bad_bwd(z, g):  # planted bug: the derivative of tanh is 1 - tanh**2
        return (g * (1 - jnp.tanh(z)),)

    bad_tanh.defvjp(bad_fwd, bad_bwd)

    def bad_loss(p, x, y):
        h = bad_tanh(x @ p[0]["W"] + p[0]["b"])
        logits = h @ p[1]["W"] + p[1]["b"]
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(len(y)), y])

    # Count the rows asked for and the rows this process evaluated itself.
    from jaxcheck.engine import rows as engine_rows
    rows = {"asked": 0, "own": 0}
    def count(streams):
        dense, prop = streams
        return len(dense[0]) + sum(len(p[0]) for p in prop)
    real_run, real_local = engine_rows.run, engine_rows._run_local
    def run(program, fixed, dense, prop=(), **kw):
        rows["asked"] += count((dense, prop))
        return real_run(program, fixed, dense, prop, **kw)
    def local(program, fixed, dense, prop, *a, **kw):
        rows["own"] += count((dense, prop))
        return real_local(program, fixed, dense, prop, *a, **kw)
    engine_rows.run, engine_rows._run_local = run, local

    params = ex.mlp_init((20, 12, 5), seed=3)
    x, y = ex.classification_batch(8, 20, 5)
    rp = {"W1": params[0]["W"], "b1": params[0]["b"], "W2": params[1]["W"]}
    out = {"processes": jax.process_count(), "local": len(jax.local_devices()),
           "engine_processes": engine.num_processes()}
    runs = {
        "mlp_propagated": (ex.mlp_loss, params, {}),
        "mlp_dense": (ex.mlp_loss, params, {"propagate": False}),
        "relu_tracked": (relu_loss, rp, {}),
        "bug": (bad_loss, params, {}),
        "auto_step_sample": (ex.mlp_loss, params, {"step": "auto", "coords": 30}),
    }
    for name, (f, p, kw) in runs.items():
        r = jaxcheck.check_grads(f, p, x, y, max_worst=400, **kw)
        out[name] = {
            "passed": r.passed,
            "leaves": {
                leaf.path: [leaf.num_ok, leaf.num_wrong, leaf.num_untestable,
                            leaf.num_kink, leaf.step,
                            sorted([list(c.index), c.numeric, c.verdict]
                                   for c in leaf.worst)]
                for leaf in r.leaves
            },
        }
    out["rows"] = rows
    # Each process passes its own batch (a data-parallel habit): refused.
    try:
        jaxcheck.check_grads(ex.mlp_loss, params, x + jax.process_index(), y)
        out["shard_error"] = ""
    except ValueError as err:
        out["shard_error"] = str(err)
    # Only process 0 checks, on its own: no waiting for the others.
    if jax.process_index() == 0:
        with jaxcheck.this_process_only():
            r = jaxcheck.check_grads(ex.mlp_loss, params, x, y, max_worst=400)
        out["alone"] = {leaf.path: sorted([list(c.index), c.numeric]
                                          for c in leaf.worst) for leaf in r.leaves}
    print("RESULT " + json.dumps(out))
    """
)

# Two processes and a cluster to start (several seconds): run early (conftest).
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _start(num_procs: int, pid: int, port: int, devices: int, logs) -> tuple:
    env = dict(
        os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}"
    )
    # Output to files: a full pipe nobody reads would stall one process and
    # leave the others waiting for it in a collective.
    out = open(logs / f"p{num_procs}-{pid}.out", "w+")  # noqa: SIM115
    err = open(logs / f"p{num_procs}-{pid}.err", "w+")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(num_procs), str(pid), str(port)],
        env=env,
        stdout=out,
        stderr=err,
        text=True,
    )
    return proc, out, err


def _result(started: tuple) -> dict:
    proc, out, err = started
    try:
        proc.wait(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        err.seek(0)
        pytest.fail(f"a process hung; its stderr ends with:\n{err.read()[-3000:]}")
    out.seek(0)
    err.seek(0)
    lines = [ln for ln in out.read().splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"process failed:\n{err.read()[-3000:]}"
    return json.loads(lines[-1][len("RESULT ") :])


def _cluster(logs) -> tuple[dict, list[dict]]:
    port = _free_port()
    started = [_start(2, pid, port, 2, logs) for pid in range(2)]
    try:
        started.append(_start(1, 0, 0, 1, logs))
        single = _result(started[-1])
        return single, [_result(p) for p in started[:2]]
    finally:
        for proc, out, err in started:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            out.close()
            err.close()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[dict, list[dict]]:
    try:
        return _cluster(tmp_path_factory.mktemp("cluster"))
    except AssertionError:
        # The free port may have been taken before the coordinator bound it:
        # one more try on another port (a hang is not retried; a real failure
        # fails again).
        return _cluster(tmp_path_factory.mktemp("cluster-retry"))


def test_cluster_has_two_processes_of_two_devices(runs):
    single, cluster = runs
    assert single["processes"] == 1 and single["engine_processes"] == 1
    for out in cluster:
        assert out["processes"] == 2 and out["local"] == 2
        assert out["engine_processes"] == 2


@pytest.mark.parametrize(
    "name", ["mlp_propagated", "mlp_dense", "relu_tracked", "bug", "auto_step_sample"]
)
def test_every_process_gets_the_single_process_numbers(runs, name):
    single, cluster = runs
    for out in cluster:
        # Verdicts, counts, steps and every finite difference, bit for bit.
        assert out[name] == single[name]


def test_the_rows_are_split_between_the_processes(runs):
    single, cluster = runs
    assert single["rows"]["own"] == single["rows"]["asked"] > 1000
    for out in cluster:
        # Each process evaluates its half; shares are padded to equal length,
        # which adds up over the small follow-up calls (a call of 1 row is 1
        # row on each process). Without the split the share would be 1.
        share = out["rows"]["own"] / out["rows"]["asked"]
        assert 0.5 <= share < 0.6, share


def test_the_planted_bug_fails_and_correct_gradients_pass(runs):
    single, cluster = runs
    for out in [single, *cluster]:
        assert out["mlp_propagated"]["passed"] and out["mlp_dense"]["passed"]
        assert out["relu_tracked"]["passed"]
        assert not out["bug"]["passed"]
        wrong = {path: leaf[1] for path, leaf in out["bug"]["leaves"].items()}
        # Every entry of the first layer's gradients is wrong, nothing else is.
        assert wrong == {"[0]['W']": 240, "[0]['b']": 12, "[1]['W']": 0, "[1]['b']": 0}


def test_different_inputs_on_different_processes_are_refused(runs):
    single, cluster = runs
    assert single["shard_error"] == ""  # one process: nothing to compare
    for out in cluster:
        assert (
            "process(es) [1] passed different ones than process 0"
            in (out["shard_error"])
        )
        assert "this_process_only" in out["shard_error"]


def test_a_check_on_one_process_alone_does_not_wait_for_the_others(runs):
    single, cluster = runs
    assert "alone" in cluster[0] and "alone" not in cluster[1]
    expected = {
        path: leaf[-1] for path, leaf in single["mlp_propagated"]["leaves"].items()
    }
    got = {path: [row[:2] for row in rows] for path, rows in expected.items()}
    assert cluster[0]["alone"] == got
