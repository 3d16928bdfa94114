#!/usr/bin/env python
"""Latency and throughput of serving MobileNet over REST, against the in-process call.

    .venv/bin/python scripts/benchmark_serving.py            # 3 rounds, about two minutes
    .venv/bin/python scripts/benchmark_serving.py --rounds 1 --requests 20

Each round starts a fresh server (its start-up time is measured), sends single-image requests one
at a time, then from 4 concurrent clients, and stops it. Reported: medians over rounds of each
round's p50 / p95, and throughput. One extra round runs the server with gc.freeze() made a
no-op (`UnfrozenServer`). Writes benchmarks/serving.json, from which chapter 7 builds its latency
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
from helpers.model_server import ModelServer  # noqa: E402


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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp())
    model = standin()
    model.export(str(work / "mobilenet" / "1"), verbose=False,
                 input_signature=[tf.TensorSpec([None, 224, 224, 3], tf.float32, name="image")])
    x = np.random.default_rng(0).uniform(-1, 1, (1, 224, 224, 3)).astype(np.float32)
    body = json.dumps({"instances": x.tolist()}).encode()
    os.chdir(work)

    loaded = tf.saved_model.load("mobilenet/1")
    fn = loaded.signatures["serving_default"]
    fn(image=tf.constant(x))
    # This process holds TensorFlow too; freeze its objects out of the garbage collector, as the
    # server does, so the client-side numbers are those of a light client, not of TF's GC scans.
    gc.collect()
    gc.freeze()
    in_process = percentiles(timed(lambda: fn(image=tf.constant(x)), args.requests))
    in_process_json = percentiles(timed(
        lambda: json.dumps(fn(image=tf.constant(np.array(json.loads(body)["instances"], np.float32)))
                           ["output_0"].numpy().tolist()), args.requests))
    encode = percentiles(timed(lambda: json.dumps({"instances": x.tolist()}), args.requests))
    in_process_rps = throughput(lambda: fn(image=tf.constant(x)), args.clients, args.requests)

    rounds = [serve_round("mobilenet", x, body, args.requests, args.clients) for _ in range(args.rounds)]
    no_freeze = serve_round("mobilenet", x, body, args.requests, args.clients, UnfrozenServer)

    def median(key, i=None):
        values = [r[key] if i is None else r[key][i] for r in rounds]
        return statistics.median(values)

    result = {
        "machine": f"{os.cpu_count()} CPU cores, {platform.machine()}, Python {platform.python_version()}, "
                   f"TensorFlow {tf.__version__}",
        "body_bytes": len(body), "requests_per_round": args.requests, "rounds": args.rounds,
        "clients": args.clients,
        "server": {"startup_s": median("startup_s"),
                   "pre_serialised_p50_ms": median("pre_serialised_ms", 0),
                   "pre_serialised_p95_ms": median("pre_serialised_ms", 1),
                   "full_client_p50_ms": median("full_client_ms", 0),
                   "full_client_p95_ms": median("full_client_ms", 1),
                   "throughput_rps": median("throughput_rps")},
        "server_without_gc_freeze": {"pre_serialised_p50_ms": no_freeze["pre_serialised_ms"][0],
                                     "pre_serialised_p95_ms": no_freeze["pre_serialised_ms"][1],
                                     "throughput_rps": no_freeze["throughput_rps"]},
        "in_process": {"p50_ms": in_process[0], "p95_ms": in_process[1],
                       "with_json_p50_ms": in_process_json[0], "with_json_p95_ms": in_process_json[1],
                       "client_json_dumps_p50_ms": encode[0], "throughput_calls_per_s": in_process_rps},
        "rounds_raw": rounds, "no_freeze_raw": no_freeze,
    }
    out = ROOT / "benchmarks" / "serving.json"
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
