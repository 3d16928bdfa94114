"""Timing for chapter 6: the median of a few repeats, and the spread, never a single run."""
import statistics
import time


def median_seconds(fn, repeats=3, setup=None):
    """Run `setup()` (untimed) then `fn()` `repeats` times; return (median, min, max) in seconds."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    times = []
    for _ in range(repeats):
        if setup is not None:
            setup()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times), max(times)
