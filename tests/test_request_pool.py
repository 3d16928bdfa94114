"""helpers.request_pool: at most `threads` requests hold a slot; a request that waits too long for a
slot is 503, one that runs past the deadline is 504, and either way the pool keeps serving."""
import asyncio
import threading
import time

import pytest

from helpers.request_pool import Refused, RequestPool


def test_a_call_runs_on_the_pool_and_returns_its_value():
    pool = RequestPool(threads=2, timeout_s=5)
    name = asyncio.run(pool.run(lambda: threading.current_thread().name))
    assert name.startswith("rest")  # the pool's thread, not the event loop's


def test_a_call_past_the_deadline_is_a_504_and_the_pool_still_serves():
    pool = RequestPool(threads=1, timeout_s=0.2)
    with pytest.raises(Refused) as refused:
        asyncio.run(pool.run(time.sleep, 0.5))
    assert refused.value.status == 504 and "did not finish within 0.2 s" in refused.value.message
    # the sleeping call keeps its only thread; the next call runs once that thread is free
    assert asyncio.run(pool.run(lambda: 42, deadline=time.monotonic() + 30)) == 42


def test_with_every_slot_taken_the_next_request_is_a_503():
    pool = RequestPool(threads=2, timeout_s=0.2)

    async def three_at_once():
        await pool.acquire(time.monotonic() + 1)
        await pool.acquire(time.monotonic() + 1)
        try:
            await pool.acquire(time.monotonic() + 0.2)
        finally:
            pool.release()
            pool.release()
        return "third got a slot"

    with pytest.raises(Refused) as refused:
        asyncio.run(three_at_once())
    assert refused.value.status == 503 and "2 requests are running" in refused.value.message


def test_a_released_slot_is_taken_by_the_waiting_request():
    pool = RequestPool(threads=1, timeout_s=5)

    async def hand_over():
        await pool.acquire(time.monotonic() + 1)
        asyncio.get_running_loop().call_later(0.1, pool.release)
        await pool.acquire(time.monotonic() + 5)  # waits for the release, does not fail
        pool.release()
        return "handed over"

    assert asyncio.run(hand_over()) == "handed over"
