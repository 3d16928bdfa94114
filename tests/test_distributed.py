"""Chapter 12's claims, beyond what the chapter runs: a checkpoint written on N devices restores
bit for bit on M; a multi-worker job whose worker is SIGKILLed resumes at the right step (custom
loop) or epoch (tf_keras's BackupAndRestore) and ends with the weights of a run never killed; and
`run_cluster` leaves no worker process or listening port behind, even when it gives up."""
import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from helpers import _child, distributed
from helpers.distributed import (GLOBAL_BATCH, INTERVAL, STEPS, run_cluster, tf_config,
                                 write_directory)
from helpers.model_server import free_port, port_is_open

ROOT = str(Path(__file__).resolve().parent.parent)
# Logical devices must be configured before TensorFlow initialises its devices, which this test
# process may already have done: the device-count test runs in a fresh Python.
DEVICE_COUNTS = """
import json
import sys

import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 4)
from helpers.distributed import build_model


def strategy(devices):
    if devices == 0:
        return tf.distribute.get_strategy()
    return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(devices)])


def compiled(devices):
    with strategy(devices).scope():
        model = build_model()
        model.compile(tf.keras.optimizers.Adam(0.01), loss="mse")
        model.optimizer.build(model.trainable_variables)
    return model


def values(model):
    return [v.numpy() for v in model.weights + model.optimizer.variables]


x = tf.reshape(tf.range(96, dtype=tf.float32) / 96, (24, 4))
y = tf.reduce_sum(x, 1, keepdims=True)
results = {}
trained_on = int(sys.argv[1])  # one training per process: MirroredStrategy groups of two sizes clash
tf.keras.utils.set_random_seed(trained_on)
model = compiled(trained_on)
model.fit(x, y, epochs=2, batch_size=6, verbose=0)
path = tf.train.Checkpoint(model=model, optimizer=model.optimizer).save(f"ckpt_{trained_on}/ckpt")
for restored_on in (0, 1, 2, 3, 4):
    copy = compiled(restored_on)
    tf.train.Checkpoint(model=copy, optimizer=copy.optimizer).restore(path).assert_consumed()
    mine, theirs = values(copy), values(model)
    results[f"{trained_on}->{restored_on}"] = (
        len(mine) == len(theirs) > 4 and int(copy.optimizer.iterations.numpy()) == 8
        and all(np.array_equal(a, b) for a, b in zip(mine, theirs)))
print(json.dumps(results))
"""


@pytest.mark.parametrize("trained_on", [2, 3])
def test_restore_across_device_counts_is_bit_identical(tmp_path, trained_on):
    """Trained on 2 or 3 devices; restored with no strategy, on 1, 2, 3 and 4 devices."""
    result = subprocess.run([sys.executable, "-c", DEVICE_COUNTS, str(trained_on)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, **_child.QUIET, "PYTHONPATH": ROOT})
    assert result.returncode == 0, _child.last_error(result.stderr)
    results = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(results) == 5 and all(results.values()), results


def test_tf_config_and_write_directory():
    config = json.loads(tf_config(["127.0.0.1:1", "127.0.0.1:2"], 1))
    assert config == {"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]},
                      "task": {"type": "worker", "index": 1}}
    with pytest.raises(ValueError, match="worker index 2"):
        tf_config(["127.0.0.1:1", "127.0.0.1:2"], 2)
    assert write_directory("ckpt", "worker", 0) == "ckpt"
    assert write_directory("ckpt", "chief", 0) == "ckpt"
    assert write_directory("ckpt", "worker", 1).endswith("ckpt/workertemp_1")
    with pytest.raises(ValueError, match="task_type"):
        write_directory("ckpt", "ps", 0)
    with pytest.raises(ValueError, match="worker must be one of"):
        run_cluster("nope", "x")
    with pytest.raises(ValueError, match="kill names worker 2"):
        run_cluster("train", "x", kill=(2, 1))


def _no_trace(run):
    """No process of `run` is alive, and none of its ports accepts connections."""
    alive = [pid for pid in run.pids if psutil.pid_exists(pid)
             and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    listening = [port for port in run.ports if port_is_open(port)]
    return alive == [] and listening == []


def test_killed_worker_resumes_at_the_right_step(tmp_path):
    reference = run_cluster("train", tmp_path / "reference")
    assert reference.exit_codes == [0, 0], reference.reports
    assert _no_trace(reference)
    killed = run_cluster("train", tmp_path / "killed", kill=(1, INTERVAL + 2))
    assert killed.exit_codes[1] == -9 and killed.first(1, "killed") == [INTERVAL + 2]
    assert _no_trace(killed)
    assert sorted(p.name for p in (tmp_path / "killed").iterdir()) == [
        "checkpoint", "ckpt-1.data-00000-of-00001", "ckpt-1.index"]  # the chief's only
    resumed = run_cluster("train", tmp_path / "killed")
    assert resumed.exit_codes == [0, 0], resumed.reports
    assert _no_trace(resumed)
    for worker in (0, 1):
        assert resumed.first(worker, "start") == [INTERVAL, "ckpt-1"]
        assert resumed.first(worker, "done") == reference.first(0, "done")
    assert resumed.first(0, "done")[0] == STEPS


def test_the_custom_loop_runs_under_keras_2_too(tmp_path):
    """Chapter 12: unlike Keras 3's `fit`, the custom loop runs on both Keras versions (it uses
    `apply_gradients`; tf_keras's optimizers have no `apply`)."""
    pytest.importorskip("tf_keras")
    legacy = run_cluster("train", tmp_path, legacy_keras=True)
    assert legacy.exit_codes == [0, 0], legacy.reports
    assert _no_trace(legacy)
    for worker in (0, 1):
        assert legacy.first(worker, "done")[:2] == [STEPS, STEPS * GLOBAL_BATCH]


@pytest.mark.parametrize("save_freq, kill_at, resumes_at", [("epoch", "1.2", "1.0"), (2, "2.3", "2.2")])
def test_keras2_backup_and_restore_resumes_at_the_right_epoch_and_batch(tmp_path, save_freq, kill_at,
                                                                        resumes_at):
    """Saved every epoch: the killed epoch again from its start; every 2 batches (after 2.1): 2.2."""
    pytest.importorskip("tf_keras")
    stopped = run_cluster("keras2_fit", tmp_path, kill=(0, kill_at), legacy_keras=True, save_freq=save_freq)
    assert stopped.exit_codes[0] == -9 and _no_trace(stopped)
    assert (tmp_path / "backup" / "chief" / "checkpoint").exists()
    restarted = run_cluster("keras2_fit", tmp_path, legacy_keras=True, save_freq=save_freq)
    assert restarted.exit_codes == [0, 0], restarted.reports
    assert _no_trace(restarted)
    for worker in (0, 1):
        batches = [values[0] for values in restarted.events(worker, "batch")]
        assert batches[0] == resumes_at and batches[-1] == "3.3"


def test_preemption_saves_the_same_step_on_every_worker(tmp_path):
    warned = run_cluster("preempted", tmp_path, kill=(1, 7))
    assert warned.exit_codes == [42, 42], warned.reports
    assert _no_trace(warned)
    assert warned.events(1, "sigterm") == [[7]] and warned.events(0, "sigterm") == []
    again = run_cluster("preempted", tmp_path)
    assert again.exit_codes == [0, 0], again.reports
    assert _no_trace(again)
    start = again.first(0, "start")
    assert start == again.first(1, "start") and start[0] in (8, 9)  # the step after the warning
    assert again.first(0, "done") == again.first(1, "done") == [STEPS]


def test_no_worker_or_port_survives_a_timeout(tmp_path, monkeypatch):
    ports = []

    def recorded_free_port():
        ports.append(free_port())
        return ports[-1]

    monkeypatch.setattr(distributed, "free_port", recorded_free_port)
    with pytest.raises(RuntimeError, match="did not finish within 3 s"):
        run_cluster("train", tmp_path, timeout=3)  # the workers are still starting
    children = psutil.Process().children(recursive=True)
    assert [c for c in children if "helpers.distributed" in " ".join(c.cmdline())] == []
    assert len(ports) == 2 and [port for port in ports if port_is_open(port)] == []
