"""Timing for chapter 6: the median of a few repeats and their spread, never a single run."""
import statistics
import time
from typing import Any, NamedTuple


class Timing(NamedTuple):
    """Seconds over the repeats, and what the last timed call returned (to check it)."""
    median: float
    min: float
    max: float
    result: Any


def time_calls(fn, repeats=3, setup=None):
    """Call `fn` `repeats` times and time each call; return a `Timing`.

    With `setup`, each call is `fn(setup())`: the setup runs before the clock starts and its
    result (a fresh model to load into, a path) is passed on, so nothing has to go through globals.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    times = []
    for _ in range(repeats):
        args = () if setup is None else (setup(),)
        start = time.perf_counter()
        result = fn(*args)
        times.append(time.perf_counter() - start)
    return Timing(statistics.median(times), min(times), max(times), result)
