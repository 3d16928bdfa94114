#!/usr/bin/env python
"""First-request latency with and without warm-up, and one batched request against single requests,
on the book's offline engine (chapter 13).

    .venv/bin/python scripts/benchmark_production.py              # 3 rounds, a few minutes
    .venv/bin/python scripts/benchmark_production.py --rounds 1 --models toy

Warm-up: each round starts a fresh server per mode (no warm-up; `--warmup`, one call on zeros;
`--enable_model_warmup`, replaying the recorded tf_serving_warmup_requests), then times its first
request and the median of the next ones. Batching: one request of 32 examples against 32 requests
of one, sent one after another on one connection (bodies serialised beforehand), and the same two
in-process (one signature call against 32). Reported: medians over rounds, and their ratios.
Writes benchmarks/production.json.
"""
import argparse
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
from helpers.model_server import ModelServer  # noqa: E402
from helpers.warmup import write_warmup  # noqa: E402

MODES = {"none": [], "zeros": ["--warmup"], "recorded": ["--enable_model_warmup"]}
BATCH = 32


def export_models(work, names):
    """A toy model (the layer of chapter 13's `Net`, one Dense(5) on an input `x`, built functionally) and
    chapter 7's MobileNet stand-in, each as version 1 with a warm-up file."""
    models = {}
    if "toy" in names:
        tf.keras.utils.set_random_seed(0)
        x = tf.keras.Input((1,), name="x")
        model = tf.keras.Model(x, tf.keras.layers.Dense(5)(x))
        model.export(str(work / "toy" / "1"), verbose=False)
        models["toy"] = ("x", np.linspace(0, 1, BATCH, dtype=np.float32).reshape(BATCH, 1), None)
    if "mobilenet" in names:
        from helpers.imagenet import standin
        standin().export(str(work / "mobilenet" / "1"), verbose=False,
                         input_signature=[tf.TensorSpec([None, 224, 224, 3], tf.float32, name="image")])
        images = np.random.default_rng(0).uniform(-1, 1, (BATCH, 224, 224, 3)).astype(np.float32)
        models["mobilenet"] = ("image", images, 128 * 2 ** 20)  # 32 images are a 103 MB JSON body
    for name, (input_name, data, _) in models.items():
        write_warmup(work / name / "1", name, [{input_name: data[:1]}])
    return models


def first_requests(name, base, body, mode, n):
    """Start a server in `mode`; the first request's latency and the median of the next `n` (ms)."""
    start = time.perf_counter()
    server = ModelServer(name, base, engine="kserve", extra_flags=MODES[mode]).start()
    startup = time.perf_counter() - start
    try:
        session, url = requests.Session(), f"{server.url}/v1/models/{name}:predict"
        times = []
        for _ in range(n + 1):
            t = time.perf_counter()
            reply = session.post(url, data=body, headers={"Content-Type": "application/json"})
            times.append(1000 * (time.perf_counter() - t))
            assert reply.status_code == 200, reply.text[:200]
    finally:
        server.stop()
    return {"startup_s": startup, "first_ms": times[0], "next_median_ms": statistics.median(times[1:])}


def batching(name, base, input_name, data, limit, repeats):
    """One request of BATCH examples against BATCH single requests, over REST and in-process (ms)."""
    server = ModelServer(name, base, engine="kserve", max_request_bytes=limit).start()
    result = {"batched_ms": [], "singles_ms": []}
    try:
        session, url = requests.Session(), f"{server.url}/v1/models/{name}:predict"
        one = json.dumps({"instances": data.tolist()}).encode()
        singles = [json.dumps({"instances": data[i:i + 1].tolist()}).encode() for i in range(BATCH)]
        post = lambda body: session.post(url, data=body, headers={"Content-Type": "application/json"})  # noqa: E731
        batched = np.array(post(one).json()["predictions"], np.float32)  # also opens the connection
        separate = np.concatenate([np.array(post(b).json()["predictions"], np.float32) for b in singles])
        result["max_abs_difference"] = float(np.abs(batched - separate).max())
        for _ in range(repeats):
            t = time.perf_counter()
            assert post(one).status_code == 200
            result["batched_ms"].append(1000 * (time.perf_counter() - t))
            t = time.perf_counter()
            assert all(post(b).status_code == 200 for b in singles)
            result["singles_ms"].append(1000 * (time.perf_counter() - t))
    finally:
        server.stop()
    fn = tf.saved_model.load(str(Path(base) / "1")).signatures["serving_default"]
    fn(**{input_name: tf.constant(data)})
    result["in_process_batched_ms"], result["in_process_singles_ms"] = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(**{input_name: tf.constant(data)})
        result["in_process_batched_ms"].append(1000 * (time.perf_counter() - t))
        t = time.perf_counter()
        for i in range(BATCH):
            fn(**{input_name: tf.constant(data[i:i + 1])})
        result["in_process_singles_ms"].append(1000 * (time.perf_counter() - t))
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=20, help="requests after the first, per server")
    parser.add_argument("--models", nargs="+", default=["toy", "mobilenet"])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "production.json"))
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp())
    models = export_models(work, args.models)
    os.chdir(work)
    result = {"machine": f"{os.cpu_count()} CPU cores, {platform.machine()}, Python {platform.python_version()}, "
                         f"TensorFlow {tf.__version__}", "rounds": args.rounds, "requests_after_first": args.requests,
              "batch": BATCH, "load_1min_at_start": os.getloadavg()[0], "models": {}}
    for name, (input_name, data, limit) in models.items():
        body = json.dumps({"instances": data[:1].tolist()}).encode()
        rounds = {mode: [] for mode in MODES}
        for _ in range(args.rounds):  # modes alternate within a round, so a busy spell hits all of them
            for mode in MODES:
                rounds[mode].append(first_requests(name, name, body, mode, args.requests))
        warm = {mode: {key: statistics.median(r[key] for r in runs) for key in runs[0]} for mode, runs in rounds.items()}
        for mode in MODES:
            warm[mode]["first_over_next"] = warm[mode]["first_ms"] / warm[mode]["next_median_ms"]
        batch = batching(name, name, input_name, data, limit, max(3, args.rounds))
        summary = {key: statistics.median(v) for key, v in batch.items() if isinstance(v, list)}
        summary["singles_over_batched"] = summary["singles_ms"] / summary["batched_ms"]
        summary["in_process_singles_over_batched"] = summary["in_process_singles_ms"] / summary["in_process_batched_ms"]
        summary["max_abs_difference"] = batch["max_abs_difference"]
        result["models"][name] = {"warmup": warm, "warmup_raw": rounds, "batching": summary, "batching_raw": batch}
        print(name, json.dumps({"warmup": warm, "batching": summary}, indent=1))
    result["load_1min_at_end"] = os.getloadavg()[0]
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
