"""Chapter 10's claims at more kill points than the chapter's five: a CheckpointManager run
SIGKILLed at each point of `TEST_PLAN` (twice in its first save, in its last save, twice between the
same two saves) ends bit-identical to an uninterrupted run, redoing at most one checkpoint interval
per kill. Chapter 10's own cells assert what Keras's in-place writes, `BackupAndRestore` and an
async save leave after a kill."""
import pytest
import tensorflow as tf

from helpers.checkpoints import interrupted_saves
from helpers.resumable import (INTERVAL, PHASES, STEPS, TEST_PLAN, Launcher, final_values,
                               kill_plan, run_to_end, train_with_kills)

KILLS = 20  # kill_plan's own test: a plan of this size fits, is seeded and spread over phases


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


def test_a_run_killed_at_every_kind_of_moment_ends_bit_identical(launcher, tmp_path):
    reference, killed = str(tmp_path / "reference"), str(tmp_path / "killed")
    events = run_to_end(launcher, "helpers.resumable:train", directory=reference)
    assert events[0] == ("start", "0") and events[-1] == ("done", str(STEPS))
    log = train_with_kills(launcher, killed, TEST_PLAN)
    assert len(log) == len(TEST_PLAN) and all(entry["exit code"] == -9 for entry in log)
    assert {entry["phase"] for entry in log} == set(PHASES.values())
    for entry in log:  # nothing lost beyond the last checkpoint, nothing skipped
        assert 0 < entry["steps redone"] <= INTERVAL, entry
        assert entry["resumed from"] % INTERVAL == 0
        if entry["phase"] == PHASES["merge"]:  # the killed save's shards are left behind...
            assert entry["_temp folders"] == 1
    assert log[0]["resumed from"] == log[1]["resumed from"] == 0  # the first save, killed twice
    assert interrupted_saves(killed) == []  # ...and removed when that number is saved again
    latest = tf.train.latest_checkpoint(killed)
    assert latest.endswith(f"ckpt-{STEPS // INTERVAL}")
    expected = final_values(tf.train.latest_checkpoint(reference))
    got = final_values(latest)
    assert len(expected) > 10 and got.keys() == expected.keys()
    assert [key for key in expected if got[key] != expected[key]] == []


def test_bad_arguments_are_named(launcher, tmp_path):
    with pytest.raises(ValueError, match="func must be 'module:function'"):
        launcher.start("helpers.resumable.train")
    with pytest.raises(ValueError, match=r"finished before reaching the kill points \[\('during', 3\)\]"):
        train_with_kills(launcher, str(tmp_path / "run"), [("during", 3)], steps=5, interval=5)


def test_async_reports_come_in_the_order_of_the_events(tmp_path):
    """Chapter 10 kills the async run at the background write's "merge" and asserts that `save()`
    had returned by then: the two reports come from two threads, so a slow "returned" report must
    still arrive before the "merge" it precedes."""
    import threading
    import time

    from helpers.resumable import async_train
    order, lock = [], threading.Lock()

    def slow_returned(event, value):
        if event == "returned":
            time.sleep(0.5)  # the training thread delayed, as a loaded machine may delay it
        with lock:
            order.append(event)

    async_train(str(tmp_path / "async"), steps=10, interval=5, report=slow_returned)
    saves = [event for event in order if event in ("returned", "merge")]
    assert saves == ["returned", "merge"] * 2, order
