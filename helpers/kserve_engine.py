"""The book's stand-in for `tensorflow_model_server`: TF Serving's REST API on KServe's Python server.

Used where the real C++ server is not installed (it is not on PyPI or Debian). It takes the real
server's flags and serves the newest version folder of a model base path:

    python -m helpers.kserve_engine --model_name=mobilenet --model_base_path=models/mobilenet --rest_api_port=8501

What it puts together: the model (`helpers.servable.SavedModelServable`, TF Serving's V1 predict
and V2 on one SavedModel), and `serve()`, which binds KServe's REST server to the loopback address
behind `helpers.request_guard` (what every request passes) and `helpers.connection_guard` (what
every connection passes).
"""
import os

_PARENT_PID = os.getppid()  # read first: a parent that dies while TensorFlow imports is noticed too

import argparse  # noqa: E402
import logging  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import kserve  # noqa: E402  (reads sys.argv with parse_known_args: it stores our flags and ignores them)
import kserve.model_server  # noqa: E402
from kserve.protocol.rest.server import RESTServer  # noqa: E402

from helpers.connection_guard import HEADER_TIMEOUT_S, MAX_CONNECTIONS, WRITE_TIMEOUT_S, GuardedHttp  # noqa: E402
from helpers.request_guard import (BODY_TIMEOUT_S, BYTES_PER_BODY_BYTE, DEFAULT_MAX_REQUEST_BYTES,  # noqa: E402
                                   IDLE_TIMEOUT_S, MEMORY_BUDGET_BYTES, MemoryBudget, RequestGuard)
from helpers.request_pool import REQUEST_TIMEOUT_S, REST_THREADS, RequestPool  # noqa: E402
from helpers.servable import SavedModelServable  # noqa: E402
from helpers.warmup import replay, warmup_path  # noqa: E402


LOG_MAX_BYTES = 1024 * 1024  # the server's log lines after this many bytes are dropped (one line says so)


def serve(model, port, host="127.0.0.1", max_request_bytes=DEFAULT_MAX_REQUEST_BYTES, threads=REST_THREADS,
          timeout_s=REQUEST_TIMEOUT_S, header_timeout_s=HEADER_TIMEOUT_S, body_timeout_s=BODY_TIMEOUT_S,
          idle_timeout_s=IDLE_TIMEOUT_S, write_timeout_s=WRITE_TIMEOUT_S, max_connections=MAX_CONNECTIONS,
          memory_budget_bytes=None, management=False, access_log=False, log_max_bytes=LOG_MAX_BYTES):
    """Serve `model` over REST on host:port (this machine only by default) until SIGTERM.

    KServe 0.21 binds 0.0.0.0, runs a synchronous predict on its event loop and has no body, time,
    memory or connection limits; its server builds the class `kserve.model_server.RESTServer`, so we
    put in its place a subclass that binds `host`, uses `GuardedHttp` and adds the `RequestGuard`.
    Like TF Serving, it logs no line per request unless `access_log`."""
    pool = RequestPool(threads, timeout_s)
    budget = MemoryBudget(memory_budget_bytes or max(MEMORY_BUDGET_BYTES, max_request_bytes * BYTES_PER_BODY_BYTE))
    protocol = type("GuardedHttp", (GuardedHttp,), {"header_timeout_s": header_timeout_s,
                                                    "max_connections": max_connections,
                                                    "write_timeout_s": write_timeout_s})

    class LoopbackRESTServer(RESTServer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.config.host = host
            self.config.http = protocol
            self.config.timeout_keep_alive = idle_timeout_s
            # asyncio accepts up to `backlog` queued connections per loop turn, and a connection is
            # capped two turns after it was accepted and closed one turn later: on a slow loop three
            # bursts are open at once (uvicorn's 2048 ran out of the usual 1024 descriptors; 128
            # ran a 200-descriptor test server out on a loaded CI machine). 32 keeps that under 100.
            self.config.backlog = 32
            self._server = type(self._server)(self.config)

        def create_application(self):
            super().create_application()
            kserve.model_server.app.add_middleware(
                RequestGuard, servable=model, port=port, max_bytes=max_request_bytes, pool=pool,
                body_timeout_s=body_timeout_s, management=management, budget=budget)

    kserve.model_server.RESTServer = LoopbackRESTServer
    server = kserve.ModelServer(http_port=port, enable_grpc=False, workers=1)  # configures logging
    if not access_log:  # uvicorn read its own access_log setting when KServe built its Config
        logging.getLogger("uvicorn.access").handlers = []
        logging.getLogger("uvicorn.access").propagate = False
    cap_logs(log_max_bytes)
    server.start([model])


class _LogCap(logging.Filter):
    """Passes log records until their messages add up to `max_bytes`, then one that says so, then none."""

    def __init__(self, max_bytes):
        super().__init__()
        self.left = max_bytes

    def filter(self, record):
        if self.left <= 0:
            return False
        self.left -= len(record.getMessage()) + 80  # the message and its prefix (time, logger, level)
        if self.left <= 0:
            print("log size cap reached: further log lines are dropped", file=sys.stderr, flush=True)
            return False
        return True


def cap_logs(max_bytes):
    """Bound the server's log: uvicorn's and KServe's loggers stop writing after `max_bytes`; their
    per-request lines (KServe's trace, uvicorn's warning per malformed request) are off."""
    logging.getLogger("kserve.trace").setLevel(logging.WARNING)
    cap = _LogCap(max_bytes)
    handlers = set(logging.getLogger().handlers)
    for logger in list(logging.Logger.manager.loggerDict.values()):
        handlers.update(getattr(logger, "handlers", []))
    for handler in handlers:
        handler.addFilter(cap)


def exit_with_parent(parent_pid=_PARENT_PID, interval_s=0.5, model_name=None):
    """Stop this server (SIGTERM, then exit) when the process that started it is gone, so a killed
    notebook kernel leaves no server behind holding its port and memory, nor its log file (the
    temporary file `ModelServer` made for it, found as this process's standard output)."""
    def watch():
        while os.getppid() == parent_pid:
            time.sleep(interval_s)
        if model_name is not None:
            remove_own_log(model_name)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def poll_versions(model, interval_s, warmup=False):
    """Every `interval_s`, serve a newer version folder once it is complete (TF Serving polls its
    base path the same way, --file_system_poll_wait_seconds). A version that fails to load is
    reported once, by its error's type, and tried again at the next poll."""
    log, failed = logging.getLogger("kserve"), set()

    def watch():
        while True:
            time.sleep(interval_s)
            try:
                if model.load_newer(warmup):
                    log.info("now serving version %s of %s", model.version, model.name)
            except Exception as error:  # a half-written or broken folder: try again next time
                newest = sorted(os.listdir(model.base_path))[-1:]
                if tuple(newest) not in failed:
                    failed.add(tuple(newest))
                    log.error("could not load a newer version of %s: %s", model.name, type(error).__name__)

    threading.Thread(target=watch, name="version-poll", daemon=True).start()


def remove_own_log(model_name):
    """Delete this process's standard output if it is the log `ModelServer` made for it: a file named
    `<model_name>-server-*.log` in the temporary folder (never a file the reader redirected to)."""
    try:
        path = Path(os.readlink("/proc/self/fd/1"))
    except OSError:  # no /proc (not Linux), or not a file
        return
    pattern = re.escape(model_name) + r"-server-[A-Za-z0-9_]+\.log"
    if path.parent == Path(tempfile.gettempdir()).resolve() and re.fullmatch(pattern, path.name):
        path.unlink(missing_ok=True)


def main(argv=None):
    """Load the newest version and serve it, taking tensorflow_model_server's flag names."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_name", required=True)
    parser.add_argument("--model_base_path", required=True)
    parser.add_argument("--rest_api_port", type=int, default=8501)
    parser.add_argument("--rest_api_num_threads", type=int, default=REST_THREADS)
    parser.add_argument("--rest_api_timeout_in_ms", type=int, default=int(REQUEST_TIMEOUT_S * 1000))
    parser.add_argument("--max_request_bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES)
    parser.add_argument("--header_timeout_s", type=float, default=HEADER_TIMEOUT_S)
    parser.add_argument("--body_timeout_s", type=float, default=BODY_TIMEOUT_S)
    parser.add_argument("--idle_timeout_s", type=float, default=IDLE_TIMEOUT_S)
    parser.add_argument("--write_timeout_s", type=float, default=WRITE_TIMEOUT_S)
    parser.add_argument("--max_connections", type=int, default=MAX_CONNECTIONS)
    parser.add_argument("--memory_budget_bytes", type=int,
                        help="admit request bodies while their declared sizes x "
                             f"{BYTES_PER_BODY_BYTE} stay within this (default: {MEMORY_BUDGET_BYTES:,})")
    parser.add_argument("--log_requests", action="store_true", help="log one line per request (method, path, status), as uvicorn does")
    parser.add_argument("--log_max_bytes", type=int, default=LOG_MAX_BYTES)
    parser.add_argument("--file_system_poll_wait_seconds", type=float, default=1.0,
                        help="look for a newer version folder this often, load it and stop serving the "
                             "old one, as tensorflow_model_server does (0: load once, at start)")
    parser.add_argument("--warmup", action="store_true",
                        help="call every signature once at start-up: this RUNS the model before any request")
    parser.add_argument("--enable_model_warmup", action="store_true",
                        help="replay <version>/assets.extra/tf_serving_warmup_requests at start-up, as "
                             "tensorflow_model_server does (there on by default): this RUNS the model")
    parser.add_argument("--enable_management", action="store_true",
                        help="answer /v2/repository (unload, load), /metrics, /docs and /openapi.json")
    parser.add_argument("--keep_running_without_parent", action="store_true",
                        help="do not exit when the process that started this server exits")
    args = parser.parse_args(argv)
    # Its output is usually a log file read while it runs: write it line by line (standard error,
    # where KServe and uvicorn log, is line-buffered already; uvicorn's access lines go to stdout).
    sys.stdout.reconfigure(line_buffering=True)
    if not args.keep_running_without_parent:
        exit_with_parent(model_name=args.model_name)
    model = SavedModelServable(args.model_name, args.model_base_path)
    model.load(warmup=args.warmup)
    version_dir = os.path.join(args.model_base_path, str(model.version))
    if args.enable_model_warmup and warmup_path(version_dir).exists():
        replay(model.signatures, version_dir)
    if args.file_system_poll_wait_seconds > 0:
        poll_versions(model, args.file_system_poll_wait_seconds, args.warmup)
    serve(model, args.rest_api_port, max_request_bytes=args.max_request_bytes,
          threads=args.rest_api_num_threads, timeout_s=args.rest_api_timeout_in_ms / 1000,
          header_timeout_s=args.header_timeout_s, body_timeout_s=args.body_timeout_s,
          idle_timeout_s=args.idle_timeout_s, write_timeout_s=args.write_timeout_s,
          max_connections=args.max_connections, memory_budget_bytes=args.memory_budget_bytes,
          management=args.enable_management, access_log=args.log_requests, log_max_bytes=args.log_max_bytes)


if __name__ == "__main__":
    main()
