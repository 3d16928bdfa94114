#!/usr/bin/env python
"""Latency and throughput of serving MobileNet over REST, against the in-process call.

    .venv/bin/python scripts/benchmark_serving.py            # 3 rounds, about three minutes
    .venv/bin/python scripts/benchmark_serving.py --rounds 1 --requests 20
    .venv/bin/python scripts/benchmark_serving.py --robustness   # the figures under attack, a few minutes

Each round starts a fresh server (its start-up time is measured), sends single-image requests one
at a time, then from 4 concurrent clients, and stops it. Reported: medians over rounds of each
round's p50 / p95, and throughput. Each round also times the in-process signature call and runs
the server once more with gc.freeze() made a no-op (`UnfrozenServer`), so every figure is a median
over the same rounds. Writes benchmarks/serving.json, from which chapter 7 builds its latency
table, and prints the same numbers as a Markdown table.
"""
import argparse
import concurrent.futures
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests
import tensorflow as tf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from helpers.imagenet import standin  # noqa: E402
from helpers.model_server import ModelServer, inet_connections  # noqa: E402


class UnfrozenServer(ModelServer):
    """The KServe engine with `gc.freeze()` made a no-op, to measure what freezing saves."""

    def command(self):
        python, _, module, *flags = super().command()
        return [python, "-c", "import gc, runpy; gc.freeze = lambda: None; "
                f"runpy.run_module({module!r}, run_name='__main__')", *flags]


def percentiles(seconds):
    ms = np.array(seconds) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 95))


def timed(fn, n):
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def throughput(fn, clients, per_client):
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(lambda: [fn() for _ in range(per_client)]) for _ in range(clients)]:
            future.result()
    return clients * per_client / (time.perf_counter() - start)


def serve_round(base, x, body_bytes, n, clients, server_class=ModelServer):
    start = time.perf_counter()
    server = server_class("mobilenet", base, engine="kserve").start()
    startup = time.perf_counter() - start
    url = f"{server.url}/v1/models/mobilenet:predict"
    session = requests.Session()
    headers = {"Content-Type": "application/json"}

    def pre_serialised():
        reply = session.post(url, data=body_bytes, headers=headers)
        assert reply.status_code == 200, reply.text[:200]

    def full_client():  # what a plain client does: encode the image, post, decode the reply
        reply = session.post(url, data=json.dumps({"instances": x.tolist()}), headers=headers)
        np.array(reply.json()["predictions"], np.float32)

    def one_client_session():
        own = requests.Session()
        reply = own.post(url, data=body_bytes, headers=headers)
        assert reply.status_code == 200

    try:
        pre_serialised()  # first request: connection set-up
        result = {"startup_s": startup,
                  "pre_serialised_ms": percentiles(timed(pre_serialised, n)),
                  "full_client_ms": percentiles(timed(full_client, n)),
                  "throughput_rps": throughput(one_client_session, clients, max(5, n // 4))}
    finally:
        server.stop()
    return result


def _peak_rss_during(process, fn):
    """(fn's result, the process's peak RSS while fn ran, health-check latencies meanwhile)."""
    import threading
    peak, done, out = [process.memory_info().rss], threading.Event(), {}

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.01)

    def run():
        out["result"] = fn()
        done.set()

    threads = [threading.Thread(target=watch), threading.Thread(target=run)]
    for t in threads:
        t.start()
    return threads, peak, done, out


def robustness(base, x, clients=200, idle_sockets=1100, limit=None, at_once=8, non_readers=257):
    """The server under the attacks of issues 12 and 20: a health check's latency and the server's
    peak RSS during one, then `at_once`, maximum-size bodies (and from it the RSS per body byte);
    idle sockets held; `non_readers` clients that never read a 3.3 MiB reply; log bytes per 1,000
    bad requests; and requests/s at `clients`."""
    import socket

    import psutil
    from helpers.request_guard import DEFAULT_MAX_REQUEST_BYTES

    limit = limit or DEFAULT_MAX_REQUEST_BYTES
    server = ModelServer("mobilenet", base, engine="kserve", max_request_bytes=limit).start()
    url, status_url = f"{server.url}/v1/models/mobilenet:predict", f"{server.url}/v1/models/mobilenet"
    image = json.dumps(x[0].tolist())
    n_images = (limit - 40) // (len(image) + 1)
    big = ('{"instances": [' + ",".join([image] * n_images) + "]}").encode()
    assert len(big) <= limit
    process = psutil.Process(server.pid)
    result = {"limit_bytes": limit, "max_body_bytes": len(big), "images": n_images}

    def under_load(n):
        """n maximum-size bodies at once: statuses, seconds, peak RSS rise, health latencies."""
        rss_before = process.memory_info().rss
        start = time.perf_counter()

        def send_all():
            with concurrent.futures.ThreadPoolExecutor(n) as pool:
                return [f.result() for f in [pool.submit(lambda: requests.post(url, data=big, timeout=600).status_code)
                                             for _ in range(n)]]

        threads, peak, done, out = _peak_rss_during(process, send_all)
        health = []
        time.sleep(0.3)
        while not done.is_set():
            t0 = time.perf_counter()
            requests.get(status_url, timeout=600)
            health.append(time.perf_counter() - t0)
            time.sleep(0.05)
        for t in threads:
            t.join()
        return {"statuses": {str(c): out["result"].count(c) for c in set(out["result"])},
                "seconds": time.perf_counter() - start, "rss_before_gb": rss_before / 1e9,
                "rss_peak_gb": peak[0] / 1e9, "rss_rise_gb": (peak[0] - rss_before) / 1e9,
                "health_ms_max": 1000 * max(health or [0]), "health_ms_p50": 1000 * float(np.median(health or [0]))}

    try:
        one = under_load(1)
        result["one_max_body"] = one
        result["rss_bytes_per_body_byte"] = one["rss_rise_gb"] * 1e9 / len(big)
        result[f"{at_once}_max_bodies"] = under_load(at_once)

        # the usual soft limit on open files (this machine's may be higher), as a reader's server has
        process.rlimit(psutil.RLIMIT_NOFILE, (1024, 1024))
        log_before = os.path.getsize(server.log_path)
        socks = []
        for _ in range(idle_sockets):
            s = socket.socket()
            s.settimeout(2)
            try:
                s.connect(("127.0.0.1", server.port))
            except OSError:
                s.close()
                break
            socks.append(s)
        time.sleep(1)
        held = [c for c in inet_connections(process) if c.status == psutil.CONN_ESTABLISHED]
        result["idle_sockets_opened"], result["idle_sockets_held_after_1s"] = len(socks), len(held)
        start = time.perf_counter()
        try:
            reply = requests.post(url, data=json.dumps({"instances": x.tolist()}), timeout=30)
            result["predict_while_idle_sockets"] = reply.status_code
        except requests.RequestException as error:
            result["predict_while_idle_sockets"] = type(error).__name__
        result["predict_while_idle_sockets_s"] = time.perf_counter() - start
        result["log_bytes_during_idle_sockets"] = os.path.getsize(server.log_path) - log_before
        for s in socks:
            s.close()
        time.sleep(1)

        log_before = os.path.getsize(server.log_path)
        session = requests.Session()
        for _ in range(1000):
            session.post(url, data=b'{"instances": [[1, 2', timeout=30)
        result["log_bytes_per_1000_bad_requests"] = os.path.getsize(server.log_path) - log_before

        body = json.dumps({"instances": x.tolist()}).encode()
        codes = []

        def client():
            try:
                codes.append(requests.post(url, data=body, timeout=120).status_code)
            except requests.RequestException as error:
                codes.append(type(error).__name__)

        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            for future in [pool.submit(client) for _ in range(clients)]:
                future.result()
        seconds = time.perf_counter() - start
        result[f"clients_{clients}_ok_per_s"] = codes.count(200) / seconds
        result[f"clients_{clients}_codes"] = {str(c): codes.count(c) for c in set(codes)}
    finally:
        server.stop()
    result[f"non_readers_{non_readers}"] = non_readers_hold_no_sockets(non_readers)
    return result


class _BigReply(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.int32, name="n")])
    def big(self, n):
        return {"text": tf.strings.reduce_join(tf.fill([n[0]], "abcdefgh"), keepdims=True)}


def non_readers_hold_no_sockets(n, reply_bytes=int(3.3 * 2 ** 20), probes=50):
    """`n` clients each ask for a `reply_bytes` reply and never read it; then `probes` new clients
    ask for the model's status, once at once and once after the write timeout: how many got a 200."""
    import socket

    module = _BigReply()
    tf.saved_model.save(module, "bigreply/1", signatures={"serving_default": module.big})
    server = ModelServer("bigreply", "bigreply", engine="kserve").start()
    body = json.dumps({"instances": [reply_bytes // 8]}).encode()
    request = (f"POST /v1/models/bigreply:predict HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.settimeout(5)
            try:
                s.connect(("127.0.0.1", server.port))
                s.sendall(request)
            except OSError:
                s.close()
                continue
            socks.append(s)
        time.sleep(2)  # the replies are computed and stuck

        def accepted():
            ok = 0
            for _ in range(probes):
                try:
                    ok += requests.get(f"{server.url}/v1/models/bigreply", timeout=2).status_code == 200
                except requests.RequestException:
                    pass
            return ok

        from helpers.connection_guard import WRITE_TIMEOUT_S
        first = accepted()
        time.sleep(WRITE_TIMEOUT_S + 1)
        return {"clients_sending": len(socks), "reply_bytes": reply_bytes, "probes": probes,
                "accepted_while_held": first, f"accepted_after_{WRITE_TIMEOUT_S + 1:g}_s_more": accepted()}
    finally:
        for s in socks:
            s.close()
        server.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--robustness", action="store_true",
                        help="measure only the attack figures; update their key of serving.json")
    parser.add_argument("--max_request_bytes", type=int,
                        help="with --robustness: the body limit to test (default: the engine's)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp())
    model = standin()
    model.export(str(work / "mobilenet" / "1"), verbose=False,
                 input_signature=[tf.TensorSpec([None, 224, 224, 3], tf.float32, name="image")])
    x = np.random.default_rng(0).uniform(-1, 1, (1, 224, 224, 3)).astype(np.float32)
    body = json.dumps({"instances": x.tolist()}).encode()
    os.chdir(work)
    out = ROOT / "benchmarks" / "serving.json"
    if args.robustness:
        figures = robustness("mobilenet", x, limit=args.max_request_bytes)
        print(json.dumps(figures, indent=2))
        stored = json.loads(out.read_text())
        stored.setdefault("robustness", {})[f"limit_{figures['limit_bytes'] // 2 ** 20}MiB"] = figures
        out.write_text(json.dumps(stored, indent=2) + "\n")
        return

    loaded = tf.saved_model.load("mobilenet/1")
    fn = loaded.signatures["serving_default"]
    fn(image=tf.constant(x))
    # This process holds TensorFlow too; freeze its objects out of the garbage collector, as the
    # server does, so the client-side numbers are those of a light client, not of TF's GC scans.
    gc.collect()
    gc.freeze()

    def in_process_round():
        call = percentiles(timed(lambda: fn(image=tf.constant(x)), args.requests))
        with_json = percentiles(timed(
            lambda: json.dumps(fn(image=tf.constant(np.array(json.loads(body)["instances"], np.float32)))
                               ["output_0"].numpy().tolist()), args.requests))
        encode = percentiles(timed(lambda: json.dumps({"instances": x.tolist()}), args.requests))
        return {"p50_ms": call[0], "p95_ms": call[1], "with_json_p50_ms": with_json[0],
                "with_json_p95_ms": with_json[1], "client_json_dumps_p50_ms": encode[0],
                "throughput_calls_per_s": throughput(lambda: fn(image=tf.constant(x)), args.clients,
                                                     args.requests)}

    # Every figure over the same rounds, taken in turn so that a busy spell of the machine hits all
    # three kinds alike: the in-process call, the server, the server without gc.freeze().
    local, rounds, no_freeze = [], [], []
    for _ in range(args.rounds):
        local.append(in_process_round())
        rounds.append(serve_round("mobilenet", x, body, args.requests, args.clients))
        no_freeze.append(serve_round("mobilenet", x, body, args.requests, args.clients, UnfrozenServer))

    def median(runs, key, i=None):
        return statistics.median(r[key] if i is None else r[key][i] for r in runs)

    def served(runs):
        return {"startup_s": median(runs, "startup_s"),
                "pre_serialised_p50_ms": median(runs, "pre_serialised_ms", 0),
                "pre_serialised_p95_ms": median(runs, "pre_serialised_ms", 1),
                "full_client_p50_ms": median(runs, "full_client_ms", 0),
                "full_client_p95_ms": median(runs, "full_client_ms", 1),
                "throughput_rps": median(runs, "throughput_rps")}

    result = {
        "machine": f"{os.cpu_count()} CPU cores, {platform.machine()}, Python {platform.python_version()}, "
                   f"TensorFlow {tf.__version__}",
        "body_bytes": len(body), "requests_per_round": args.requests, "rounds": args.rounds,
        "clients": args.clients,
        "note": "every figure is the median over the rounds of that round's figure (p50, p95 or "
                "throughput); each round runs the in-process calls, the server and the server "
                "without gc.freeze() in turn",
        "server": served(rounds),
        "server_without_gc_freeze": served(no_freeze),
        "in_process": {key: median(local, key) for key in local[0]},
        "rounds_raw": rounds, "no_freeze_raw": no_freeze, "in_process_raw": local,
    }
    if out.exists() and "robustness" in json.loads(out.read_text()):
        result["robustness"] = json.loads(out.read_text())["robustness"]
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")

    s, i, nf = result["server"], result["in_process"], result["server_without_gc_freeze"]
    ratio = s["pre_serialised_p50_ms"] / i["p50_ms"]
    print(f"| measure | served over REST (KServe engine) | in-process |\n|---|---|---|\n"
          f"| single image, body pre-serialised: p50 / p95 | {s['pre_serialised_p50_ms']:.0f} / "
          f"{s['pre_serialised_p95_ms']:.0f} ms | signature call {i['p50_ms']:.0f} / {i['p95_ms']:.0f} ms "
          f"(REST ≈ {ratio:.1f}×) |\n"
          f"| single image incl. client `json.dumps` and reply parsing: p50 / p95 | "
          f"{s['full_client_p50_ms']:.0f} / {s['full_client_p95_ms']:.0f} ms | JSON decode + call + "
          f"encode {i['with_json_p50_ms']:.0f} / {i['with_json_p95_ms']:.0f} ms |\n"
          f"| {args.clients} concurrent clients | {s['throughput_rps']:.1f} requests/s | "
          f"{i['throughput_calls_per_s']:.0f} calls/s ({args.clients} threads, no JSON) |\n"
          f"| same server without `gc.freeze()`: p50 / p95, throughput | {nf['pre_serialised_p50_ms']:.0f} / "
          f"{nf['pre_serialised_p95_ms']:.0f} ms, {nf['throughput_rps']:.1f} requests/s | – |\n"
          f"| server start-up to first ready answer | {s['startup_s']:.1f} s | – |\n"
          f"| client `json.dumps(x.tolist())` alone | {i['client_json_dumps_p50_ms']:.0f} ms "
          f"({len(body) / 1e6:.1f} MB body) | – |\n\n"
          f"{result['machine']}; medians over {args.rounds} rounds of {args.requests} requests.")


if __name__ == "__main__":
    main()
