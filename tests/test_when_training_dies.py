"""Chapter 10's claims, with more kills than the chapter can afford: a CheckpointManager run
SIGKILLed 20 times (half of them inside save()) ends bit-identical to an uninterrupted run,
redoing at most one checkpoint interval per kill; Keras's in-place writes do not survive."""
import os

import h5py
import pytest
import tensorflow as tf

from helpers.checkpoints import interrupted_saves
from helpers.resumable import (INTERVAL, PHASES, STEPS, TEST_KILLS, Launcher, final_values,
                               kill_plan, run_to_end, train_with_kills)

KILLS = TEST_KILLS


@pytest.fixture(scope="module")
def launcher():
    with Launcher() as launcher:
        yield launcher


def test_kill_plan_is_seeded_and_spread_over_phases():
    plan = kill_plan(KILLS, seed=0)
    assert plan == kill_plan(KILLS, seed=0) != kill_plan(KILLS, seed=1)
    assert len(plan) == KILLS and [s for _, s in plan] == sorted({s for _, s in plan})
    phases = [p for p, _ in plan]
    assert phases.count("step") == KILLS // 2 and {"merge", "state"} <= set(phases)
    assert all(s % INTERVAL == 0 for p, s in plan if p != "step")
    with pytest.raises(ValueError, match="multiple of interval"):
        kill_plan(3, seed=0, steps=12, interval=5)


def test_twenty_kills_end_bit_identical(launcher, tmp_path):
    reference, killed = str(tmp_path / "reference"), str(tmp_path / "killed")
    events = run_to_end(launcher, "helpers.resumable:train", directory=reference)
    assert events[0] == ("start", "0") and events[-1] == ("done", str(STEPS))
    log = train_with_kills(launcher, killed, kill_plan(KILLS, seed=0))
    assert len(log) == KILLS and all(entry["exit code"] == -9 for entry in log)
    assert {entry["phase"] for entry in log} == set(PHASES.values())
    for entry in log:  # nothing lost beyond the last checkpoint, nothing skipped
        assert 0 < entry["steps redone"] <= INTERVAL, entry
        assert entry["resumed from"] % INTERVAL == 0
        if entry["phase"] == PHASES["merge"]:  # the killed save's shards are left behind...
            assert entry["_temp folders"] == 1
    assert interrupted_saves(killed) == []  # ...and removed when that number is saved again
    latest = tf.train.latest_checkpoint(killed)
    assert latest.endswith(f"ckpt-{STEPS // INTERVAL}")
    expected = final_values(tf.train.latest_checkpoint(reference))
    got = final_values(latest)
    assert len(expected) > 10 and got.keys() == expected.keys()
    assert [key for key in expected if got[key] != expected[key]] == []


def _run_until(launcher, stop, **kwargs):
    """Runs keras_fit, SIGKILLing it at event `stop` (or letting it finish); returns the events."""
    run = launcher.start("helpers.resumable:keras_fit", **kwargs)
    events = []
    while (event := run.next_event())[0] != "exit":
        events.append(event)
        if event == stop:
            assert run.kill() == -9
            return events
        run.go()
    assert run.exit_code == 0, launcher.log_tail()
    return events


def test_model_checkpoint_killed_mid_write_leaves_a_broken_file(launcher, tmp_path):
    _run_until(launcher, ("write", "2"), directory=str(tmp_path), callback="model_checkpoint")
    path = tmp_path / "model.weights.h5"
    assert path.stat().st_size < 1000  # epoch 1's complete file was truncated when epoch 2's began
    model = tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Dense(8), tf.keras.layers.Dense(1)])
    with pytest.raises(OSError, match="truncated file"):
        model.load_weights(str(path))


def _weights(path):
    values = []
    with h5py.File(path) as f:
        f.visititems(lambda name, item: values.append((name, item[()].tobytes()))
                     if isinstance(item, h5py.Dataset) else None)
    return values


@pytest.mark.parametrize("callback, identical", [("backup", True), ("backup_batches", False)])
def test_backup_and_restore_resumes_at_the_killed_epoch(launcher, tmp_path, callback, identical):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    reference.mkdir(), killed.mkdir()
    _run_until(launcher, None, directory=str(reference), callback=callback)
    _run_until(launcher, ("batch", "2.2"), directory=str(killed), callback=callback)
    assert os.path.exists(killed / "backup" / "latest.weights.h5")
    events = _run_until(launcher, None, directory=str(killed), callback=callback)
    assert [v for e, v in events if e == "epoch"] == ["2", "3"] and events[-1] == ("done", "2")
    assert ("batch", "2.0") in events  # the epoch starts again at its first batch
    same = _weights(reference / "final.weights.h5") == _weights(killed / "final.weights.h5")
    assert same is identical  # per-batch backups: batches 0-1 of epoch 2 are trained twice


def test_async_save_killed_before_its_write_finished(launcher, tmp_path):
    """save() returned, but the state file follows the finished write: nothing is named yet."""
    killed, reference = str(tmp_path / "killed"), str(tmp_path / "reference")
    run = launcher.start("helpers.resumable:async_train", directory=killed)
    seen = []
    while (event := run.next_event())[0] != "merge":  # the first save's background write, paused
        seen.append(event)
        run.go()
    assert run.kill() == -9
    assert sorted(os.listdir(killed)) == ["ckpt-1_temp"] and tf.train.latest_checkpoint(killed) is None
    events = run_to_end(launcher, "helpers.resumable:async_train", directory=killed)
    assert events[0] == ("start", "0")
    run_to_end(launcher, "helpers.resumable:async_train", directory=reference)
    assert final_values(tf.train.latest_checkpoint(killed)) == final_values(tf.train.latest_checkpoint(reference))


def test_bad_arguments_are_named(launcher, tmp_path):
    with pytest.raises(ValueError, match="func must be 'module:function'"):
        launcher.start("helpers.resumable.train")
    with pytest.raises(ValueError, match=r"finished before reaching the kill points \[\('during', 3\)\]"):
        train_with_kills(launcher, str(tmp_path / "run"), [("during", 3)], steps=5, interval=5)
