"""helpers.measure: repeats, untimed setup whose result reaches the timed call."""
import time

import pytest

from helpers.measure import Timing, time_calls


def test_setup_runs_untimed_and_its_result_is_passed_on():
    calls = []

    def setup():
        calls.append("setup")
        time.sleep(0.05)  # not counted
        return len(calls)

    timing = time_calls(lambda n: calls.append(f"run {n}") or n * 10, repeats=3, setup=setup)
    assert calls == ["setup", "run 1", "setup", "run 3", "setup", "run 5"]
    assert isinstance(timing, Timing) and timing.result == 50
    assert 0 <= timing.min <= timing.median <= timing.max < 0.05


def test_without_setup_fn_takes_no_argument():
    assert time_calls(lambda: "done", repeats=1).result == "done"


def test_repeats_must_be_positive():
    with pytest.raises(ValueError, match="repeats must be at least 1, got 0"):
        time_calls(lambda: None, repeats=0)
