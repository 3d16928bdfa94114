"""Where requests run: a bounded thread pool of TF Serving's size with a per-request deadline, and
the `Refused` answer (an HTTP status and a message) every guard raises."""
import asyncio
import concurrent.futures
import os
import time

# TF Serving's defaults (model_servers/server.h): REST runs on 4 threads per CPU, each request
# times out after 30 s (--rest_api_timeout_in_ms=30000).
REST_THREADS = 4 * (os.cpu_count() or 1)
REQUEST_TIMEOUT_S = 30.0


class Refused(Exception):
    """A request answered with `status` and {"error": message}; `close` drops the connection after."""

    def __init__(self, status, message, close=False):
        super().__init__(message)
        self.status, self.message, self.close = status, message, close


class RequestPool:
    """A bounded thread pool (TF Serving's size) with a per-request timeout, and slots: at most
    `threads` requests hold a body in memory or run at a time; the others wait for a slot."""

    def __init__(self, threads=REST_THREADS, timeout_s=REQUEST_TIMEOUT_S):
        self.executor = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="rest")
        self.threads, self.timeout_s = threads, timeout_s
        self._slots = None

    async def acquire(self, deadline):
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.threads)
        try:
            await asyncio.wait_for(self._slots.acquire(), max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            raise Refused(503, f"the server is busy: {self.threads} requests are running and none finished "
                               f"within {self.timeout_s:g} s") from None

    def release(self):
        self._slots.release()

    async def run(self, fn, *args, deadline=None):
        """`fn(*args)` on the pool; 504 if it is not done by `deadline` (it keeps its thread until done)."""
        deadline = deadline or time.monotonic() + self.timeout_s
        future = asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)
        try:
            return await asyncio.wait_for(asyncio.shield(future), max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            raise Refused(504, f"Deadline exceeded: the request did not finish within {self.timeout_s:g} s "
                               "(--rest_api_timeout_in_ms)") from None
