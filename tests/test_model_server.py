"""helpers.model_server and the KServe engine as a real server process over HTTP: start, answer,
refuse, hold under slow and hostile clients, stop, and die with its parent."""
import http.client
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import requests

from helpers.model_server import ModelServer, inet_connections, port_is_open, server_command
from test_connection_guard import closed_by_server
from test_servable import ATTACKS_V1, ATTACKS_V2, X, expected, toy_models

ROOT = Path(__file__).resolve().parent.parent
LIMIT = 1_000_000  # a small body limit, so the "very large request" case is cheap to send
TIMEOUT_S = 1.5  # --rest_api_timeout_in_ms of the test server
BUDGET = int(1.5 * LIMIT * 12)  # the memory budget: one maximum-size body at a time (12 bytes per body byte)
LOG_MAX = 50_000
FLAGS = ["--rest_api_num_threads=2", f"--rest_api_timeout_in_ms={int(TIMEOUT_S * 1000)}",
         "--header_timeout_s=1", "--body_timeout_s=1", "--idle_timeout_s=2", "--max_connections=20",
         "--write_timeout_s=1", f"--memory_budget_bytes={BUDGET}", f"--log_max_bytes={LOG_MAX}", "--log_requests",
         "--file_system_poll_wait_seconds=0.2"]
PARENT = """
import sys, time
from helpers.model_server import ModelServer
server = ModelServer("toy", sys.argv[1], engine="kserve").launch()
print(server.pid, server.log_path, flush=True)
server.wait_ready()
print("ready", flush=True)
time.sleep(600)
"""


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return toy_models(tmp_path_factory)  # this module adds a version 3 to it


@pytest.fixture(scope="module")
def parent(model_dir):
    """A Python process that starts a server of its own (launched now, so both load in parallel)."""
    process = subprocess.Popen([sys.executable, "-c", PARENT, str(model_dir)], cwd=ROOT,
                               stdout=subprocess.PIPE, text=True)
    yield process
    process.kill()
    process.wait()


@pytest.fixture(scope="module")
def server(model_dir, parent):
    with ModelServer("toy", model_dir, max_request_bytes=LIMIT, engine="kserve", extra_flags=FLAGS,
                     keep_log=True) as running:
        yield running
    Path(running.log_path).unlink(missing_ok=True)


def predict(server, model="toy", **kwargs):
    return requests.post(f"{server.url}/v1/models/{model}:predict", timeout=30, **kwargs)


def test_v1_predict_over_http(server):
    reply = predict(server, json={"instances": X})
    assert reply.status_code == 200 and reply.headers["content-type"] == "application/json"
    np.testing.assert_allclose(reply.json()["predictions"], expected(X), rtol=1e-6)


def test_v2_open_inference_protocol(server):
    body = {"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": sum(X, [])}]}
    reply = requests.post(f"{server.url}/v2/models/toy/infer", json=body, timeout=30).json()
    (output,) = reply["outputs"]
    assert output["name"] == "output_0" and output["shape"] == [2, 2] and reply["model_version"] == "2"
    np.testing.assert_allclose(np.reshape(output["data"], (2, 2)), expected(X), rtol=1e-6)


@pytest.mark.parametrize("ctype", [None, "application/x-www-form-urlencoded", "text/plain"])
def test_any_content_type_is_read_as_json_like_tf_serving(server, ctype):
    # TF Serving's REST handler reads the body whatever its Content-Type; api_rest.md's own
    # example is `curl -d '...' -X POST`, which sends application/x-www-form-urlencoded
    headers = {"content-type": ctype} if ctype else {}
    reply = predict(server, data=json.dumps({"instances": X}).encode(), headers=headers)
    assert reply.status_code == 200, reply.text
    np.testing.assert_allclose(reply.json()["predictions"], expected(X), rtol=1e-6)


def test_nan_and_infinity_literals_in_and_out(server):
    # TF Serving parses with kParseNanAndInfFlag and writes NaN/Infinity (json_tensor.cc)
    reply = predict(server, data=b'{"signature_name": "reciprocal", "inputs": [NaN, Infinity, 0.0]}')
    assert reply.status_code == 200 and reply.text == '{"outputs":[NaN,0.0,Infinity]}'


BAD_REQUESTS = {  # request: (status, start of the error); each is sent on one kept-alive connection
    "malformed JSON": (b'{"instances": [[1, 2', 400, "JSON Parse error: Expecting ',' delimiter at offset: 20"),
    "empty body": (b"", 400, "JSON Parse error: The document is empty"),
    "wrong shape": (json.dumps({"instances": [[1.0, 2.0]]}), 400, "instances: shape [1, 2]"),
    "top-level array": (b"[1, 2, 3]", 400, "JSON Value: [1, 2, 3] Is not object"),
    "null": (b'{"instances": [[1.0, null, 3.0]]}', 400, "instances: JSON Value: null Type: Null"),
    "true": (b'{"instances": [[1.0, true, 3.0]]}', 400, "instances: JSON Value: true Type: True"),
    "int32 overflow": (b'{"signature_name": "double", "inputs": [2147483648]}', 400,
                       "inputs: JSON Value: 2147483648 Type: Number is not of expected type: int32"),
    "1.7 to int32": (b'{"signature_name": "double", "inputs": [1.7]}', 400,
                     "inputs: JSON Value: 1.7 Type: Number is not of expected type: int32"),
    "number to a string input": (b'{"signature_name": "length", "inputs": [3]}', 400,
                                 "inputs: JSON Value: 3 Type: Number is not of expected type: string"),
    "b64 to a float input": (b'{"inputs": [[{"b64": "AAAA"}, 1, 2]]}', 400,
                             'inputs: JSON Value: {\n    "b64": "AAAA"\n} Type: Object is not of expected type: float'),
    "missing key": (b'{"instances": [{"x": [1, 2, 3]}, {}]}', 400,
                    "Failed to process element: 1 of 'instances' list. JSON object: {} keys must be equal to: x"),
}


def request_on(conn, method, path, body=None, headers=None):
    conn.request(method, path, body=body, headers={"Host": f"127.0.0.1:{conn.port}", **(headers or {})})
    reply = conn.getresponse()
    return reply.status, reply.getheader("content-type"), reply.read()


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=list(BAD_REQUESTS))
def test_bad_request_is_a_4xx_json_error_and_the_connection_survives(server, case):
    body, status, message = BAD_REQUESTS[case]
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.connect()
    sock = conn.sock
    got = request_on(conn, "POST", "/v1/models/toy:predict", body.encode() if isinstance(body, str) else body)
    assert got[0] == status and got[1] == "application/json", got
    assert json.loads(got[2])["error"].startswith(message), got[2][:300]
    assert conn.sock is sock  # http.client drops its socket after a "Connection: close" reply
    status, _, reply = request_on(conn, "POST", "/v1/models/toy:predict", json.dumps({"instances": X}))
    assert status == 200 and conn.sock is sock  # same connection: it was kept alive
    conn.close()


@pytest.mark.parametrize("path, status, message", [
    ("/v1/models/nosuchmodel:predict", 404, "Servable not found for request: Latest(nosuchmodel)"),
    ("/v1/models/toy/versions/1:predict", 404, "Servable not found for request: Specific(toy, 1)"),
    ("/v1/models/toy/labels/stable:predict", 400, "Unrecognized servable version label: stable"),
])
def test_unknown_model_version_or_label_in_tf_servings_words(server, path, status, message):
    reply = requests.post(server.url + path, json={"instances": X}, timeout=30)
    assert (reply.status_code, reply.json()) == (status, {"error": message})
    assert requests.post(server.url + "/v1/models/toy/versions/2:predict", json={"instances": X}).status_code == 200


def test_kserves_own_errors_use_the_error_key(server):
    reply = requests.get(f"{server.url}/v2/nope", timeout=30)
    assert reply.status_code == 404 and reply.json() == {"error": "Not Found"}  # FastAPI says {"detail": ...}


# TF Serving's status and metadata answers, as its tests expect them (http_rest_api_handler_test.cc:455-531,
# servables/tensorflow/testdata/saved_model_half_plus_two_2_versions_metadata.json)
def test_status_in_tf_servings_format(server):
    ok = {"error_code": "OK", "error_message": ""}
    for path in ("/v1/models/toy", "/v1/models/toy/versions/2", "/V1/Models/toy"):
        reply = requests.get(server.url + path, timeout=30)
        assert reply.json() == {"model_version_status": [{"version": "2", "state": "AVAILABLE", "status": ok}]}, path


@pytest.mark.parametrize("path, status, message", [
    ("/v1/models/toy/versions/1", 404, "Could not find version 1 of model toy"),
    ("/v1/models/nosuch", 404, "Could not find any versions of model nosuch"),
    ("/v1/models", 400, "Missing model name in request."),
    ("/v1/models/toy:metadata", 400, "Malformed request: GET /v1/models/toy:metadata"),
    ("/v1/models/toy/labels/stable", 400, "Unrecognized servable version label: stable"),
])
def test_status_errors_in_tf_servings_words(server, path, status, message):
    reply = requests.get(server.url + path, timeout=30)
    assert (reply.status_code, reply.json()) == (status, {"error": message})


def test_metadata_in_tf_servings_format(server):
    reply = requests.get(f"{server.url}/v1/models/toy/metadata", timeout=30).json()
    assert reply["model_spec"] == {"name": "toy", "signature_name": "", "version": "2"}
    signatures = reply["metadata"]["signature_def"]["signature_def"]  # a SignatureDefMap inside the metadata map
    assert {"serving_default", "double", "__saved_model_init_op"} <= set(signatures)
    x = signatures["serving_default"]["inputs"]["x"]
    assert (x["dtype"], x["tensor_shape"]) == ("DT_FLOAT", {"dim": [{"size": "-1", "name": ""}, {"size": "3", "name": ""}],
                                                            "unknown_rank": False})
    assert signatures["serving_default"]["method_name"] == "tensorflow/serving/predict"


def test_a_body_over_the_limit_is_refused_before_it_is_read(server):
    rows = [[0.5, 0.25, 0.125]] * (LIMIT // 20)  # a valid request: without the limit it gets 200
    body = json.dumps({"instances": rows}).encode()
    assert len(body) > LIMIT
    reply = predict(server, data=body)
    assert reply.status_code == 413, reply.text[:200]
    assert reply.json()["error"] == f"request body of {len(body):,} bytes is over this server's limit of {LIMIT:,} bytes"


def test_a_declared_body_that_never_comes_is_cut_off(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(f"POST /v1/models/toy:predict HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
                  f"Content-Length: 1000\r\n\r\n{{\"instances".encode())
        start = time.monotonic()
        reply = read_until_closed(s)
        assert b"408" in reply.split(b"\r\n")[0] and b"did not arrive within 1 s" in reply
        assert time.monotonic() - start < 3
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(f"POST /v1/models/toy:predict HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
                  f"Content-Length: {10 ** 12}\r\n\r\n0123456789".encode())
        assert b"413" in read_until_closed(s).split(b"\r\n")[0]


def read_until_closed(sock):
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def connect_at_once(port, attempt_s=0.1):
    """A connected socket, as soon as the server's accept queue has room: an attempt whose SYN the
    full queue dropped is abandoned after `attempt_s` and made again at once, where connect() would
    wait out the kernel's 1 s SYN retransmission (a burst of 300 spent ~6 s in those waits)."""
    deadline = time.monotonic() + 30
    while True:
        sock = socket.socket()
        sock.settimeout(attempt_s)
        try:
            sock.connect(("127.0.0.1", port))
            sock.settimeout(5)
            return sock
        except (socket.timeout, ConnectionRefusedError):
            sock.close()
            assert time.monotonic() < deadline, "the server accepted no connection for 30 s"


def test_idle_and_slow_connections_are_closed_and_capped(server):
    process = psutil.Process(server.pid)
    limit = process.rlimit(psutil.RLIMIT_NOFILE)
    process.rlimit(psutil.RLIMIT_NOFILE, (200, limit[1]))  # a burst of 300 must not exhaust descriptors
    log_size = Path(server.log_path).stat().st_size
    try:
        socks = [connect_at_once(server.port) for _ in range(300)]
        socks[0].sendall(b"POST /v1/models/toy:predict HTTP/1.1\r\nHost: 127.0")  # headers never finished
        time.sleep(0.3)
    finally:
        process.rlimit(psutil.RLIMIT_NOFILE, limit)
    assert "Too many open files" not in Path(server.log_path).read_text()[log_size:]
    held = [c for c in inet_connections(psutil.Process(server.pid)) if c.status == psutil.CONN_ESTABLISHED]
    assert len(held) <= 20  # --max_connections=20: the oldest idle ones were closed
    assert predict(server, json={"instances": X}).status_code == 200  # a client still gets in
    # --header_timeout_s=1 closes the rest, 1 s after each was accepted; --idle_timeout_s=2 does
    # not start before a first request, so without the header timeout they would stay open
    assert all(closed_by_server(s, wait_s=3) for s in socks)
    for s in socks:
        s.close()
    assert predict(server, json={"instances": X}).status_code == 200


def test_a_slow_request_times_out_and_the_pool_is_bounded(server):
    # Placed before the health test below, whose timed-out call may still hold a thread for a while
    # on a loaded machine: this test needs both of the pool's threads free when it starts.
    # --rest_api_num_threads=2, --rest_api_timeout_in_ms=1500: two 3 s requests get 504; a third
    # waits for a thread and gets 503 when the timeout passes first
    body = json.dumps({"signature_name": "busy", "inputs": [3.0]})
    replies = {}

    def send(i):
        replies[i] = predict(server, data=body)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(3)]
    start = time.monotonic()
    for t in threads:
        t.start()
        time.sleep(0.1)
    for t in threads:
        t.join()
    assert time.monotonic() - start < 2.9
    statuses = sorted(r.status_code for r in replies.values())
    assert statuses == [503, 504, 504], [r.text for r in replies.values()]
    assert all("error" in r.json() for r in replies.values())
    time.sleep(3.2 - (time.monotonic() - start))  # the two threads are free again
    assert predict(server, json={"instances": X}).status_code == 200


def test_health_answers_while_a_max_size_request_runs(server):
    # The busy signature keeps the model running for BUSY_S; the body is as large as the limit
    # allows. Were parsing or predict on the event loop, each health check would wait for all of
    # it (over BUSY_S); off the loop, each answers in milliseconds. The bound sits far from both,
    # so a loaded machine does not decide the outcome. Whether the big request itself finishes
    # (200) or hits the server's TIMEOUT_S (504) depends on the machine's load, not on the guard.
    busy_s = 1.2
    head, tail = f'{{"signature_name": "busy", "inputs": [{busy_s}', "]}"
    body = (head + ", 0.0" * ((LIMIT - len(head) - len(tail)) // 5) + tail).encode()
    assert LIMIT - 5 < len(body) <= LIMIT
    result = {}
    worker = threading.Thread(target=lambda: result.update(reply=predict(server, data=body)))
    started = time.perf_counter()
    worker.start()
    time.sleep(0.2)
    latencies = []
    while worker.is_alive():
        start = time.perf_counter()
        assert requests.get(f"{server.url}/v1/models/toy", timeout=30).status_code == 200
        latencies.append(time.perf_counter() - start)
        time.sleep(0.05)
    worker.join()
    assert result["reply"].status_code in (200, 504), result["reply"].text
    assert len(latencies) >= 5 and max(latencies) < busy_s / 2, latencies
    time.sleep(max(0.0, busy_s + 0.3 - (time.perf_counter() - started)))  # a 504'd call still holds its thread


@pytest.mark.parametrize("method, path", [("GET", "/metrics"), ("GET", "/openapi.json"), ("GET", "/docs"),
                                          ("POST", "/v2/repository/models/toy/unload")])
def test_management_endpoints_are_off(server, method, path):
    reply = requests.request(method, server.url + path, timeout=30)
    assert reply.status_code == 403 and "management endpoint" in reply.json()["error"]
    assert requests.get(f"{server.url}/v1/models/toy", timeout=30).status_code == 200  # still loaded


@pytest.mark.parametrize("headers", [{"Host": "evil.example"}, {"Host": f"evil.example:{{port}}"},
                                     {"Origin": "http://evil.example"}, {"Origin": "null"},
                                     {"Origin": "http://127.0.0.1:{other}"}])
def test_foreign_host_or_origin_is_refused(server, headers):
    headers = {k: v.format(port=server.port, other=server.port + 1) for k, v in headers.items()}
    reply = predict(server, json={"instances": X}, headers=headers)
    assert reply.status_code == 403 and "refused" in reply.json()["error"], reply.text
    same = {"Origin": server.url, "Host": f"localhost:{server.port}"}
    assert predict(server, json={"instances": X}, headers=same).status_code == 200


def test_a_web_page_of_another_origin_gets_no_prediction(server):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs it with apt-get")
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    from test_browser import FLAGS as BROWSER_FLAGS
    page_server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), type("Page", (http.server.BaseHTTPRequestHandler,), {
        "do_GET": lambda self: (self.send_response(200), self.send_header("content-type", "text/html"),
                                self.end_headers(), self.wfile.write(b"<html><body>elsewhere</body></html>")),
        "log_message": lambda self, *args: None}))
    threading.Thread(target=page_server.serve_forever, daemon=True).start()
    url = f"{server.url}/v1/models/toy:predict"
    script = """async ([url, body]) => {
        const out = {};
        try {  // JSON: the browser asks first with an OPTIONS preflight
            const r = await fetch(url, {method: "POST", headers: {"Content-Type": "application/json"}, body});
            out.cors = r.status;
        } catch (e) { out.cors = e.name; }
        try {  // a "simple" request: no preflight, the reply is opaque, but the server runs it
            const r = await fetch(url, {method: "POST", mode: "no-cors", headers: {"Content-Type": "text/plain"}, body});
            out.simple = r.type;
        } catch (e) { out.simple = e.name; }
        return out;
    }"""
    lines_before = len(Path(server.log_path).read_text().splitlines())
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True, args=BROWSER_FLAGS)
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{page_server.server_address[1]}/")
            result = page.evaluate(script, [url, json.dumps({"instances": X})])
            browser.close()
    finally:
        page_server.shutdown()
        page_server.server_close()
    assert result == {"cors": "TypeError", "simple": "opaque"}, result
    time.sleep(0.2)
    access = [line.replace("%3A", ":") for line in Path(server.log_path).read_text().splitlines()[lines_before:]
              if "uvicorn.access" in line]  # Chromium sends the ':' of ':predict' as %3A
    assert any('"OPTIONS /v1/models/toy:predict' in line and '" 403' in line for line in access), access
    assert any('"POST /v1/models/toy:predict' in line and '" 403' in line for line in access), access
    assert not any('" 200' in line for line in access), access  # no request from the page got a prediction


def test_listens_on_loopback_only_and_on_one_port(server):
    listening = [c.laddr for c in inet_connections(psutil.Process(server.pid))
                 if c.status == psutil.CONN_LISTEN]
    assert listening == [("127.0.0.1", server.port)]  # no 0.0.0.0, no gRPC port


def test_start_does_not_take_another_programs_answer_as_its_own(tmp_path, server):
    # another program answers 200 on the port; our process fails to bind, as the engine does
    # (its log line quoted as the engine writes it)
    fake = ModelServer("toy", tmp_path, port=server.port, engine="kserve")
    fake.command = lambda: [sys.executable, "-c", "import time; time.sleep(0.6); print("
                            "'2026-11-26 01:00:00.000 7 uvicorn.error INFO:     Started server process [7]'); print("
                            "'2026-11-26 01:00:00.001 7 uvicorn.error ERROR:    [Errno 98] error while attempting to bind"
                            " on address (\\'127.0.0.1\\', 8501): address already in use'); print("
                            "'2026-11-26 01:00:00.002 7 uvicorn.error INFO:     Waiting for application shutdown.'); exit(3)"]
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=r"exited with status 3: .*\[Errno 98\] .*address already in use$"):
        fake.start(timeout=30)
    assert time.monotonic() - start > 0.5  # it waited for its own process, not the other's 200 (polled every 0.2 s)
    assert not Path(fake.log_path).exists()  # the log went with the failed server


def test_a_server_that_exits_is_reported_with_its_last_error(tmp_path):
    server = ModelServer("toy", tmp_path, engine="kserve")
    server.command = lambda: [sys.executable, "-c", "print('INFO loading'); "
                              "print('FileNotFoundError: No versions of servable toy'); exit(1)"]
    with pytest.raises(RuntimeError, match="^the kserve server exited with status 1: FileNotFoundError: No versions"):
        server.start(timeout=30)


def test_missing_base_path_is_refused_before_starting(tmp_path):
    with pytest.raises(FileNotFoundError, match="model base path '.*nope' is not a directory"):
        ModelServer("m", tmp_path / "nope")


def test_building_a_command_leaves_no_file_or_descriptor(tmp_path):
    before = set(os.listdir("/proc/self/fd"))
    for _ in range(3):
        assert ModelServer("m", tmp_path).log_path is None
    assert set(os.listdir("/proc/self/fd")) == before


def test_both_engines_take_tf_servings_flags(tmp_path):
    real = server_command("tensorflow_model_server", "m", "models/m", 8501)
    ours = server_command("kserve", "m", "models/m", 8501)
    assert real[0] == "tensorflow_model_server" and ours[1:3] == ["-m", "helpers.kserve_engine"]
    assert real[1:] == ["--model_name=m", f"--model_base_path={os.path.abspath('models/m')}", "--rest_api_port=8501"]
    assert ours[3:] == ["--model_name=m", "--model_base_path=models/m", "--rest_api_port=8501"]
    assert server_command("kserve", "m", "models/m", 8501, warmup=True)[-1] == "--warmup"
    with pytest.raises(ValueError, match="engine must be 'tensorflow_model_server' or 'kserve', got 'tfs'"):
        server_command("tfs", "m", "models/m", 8501)


def has_exited(process):
    """True if a psutil.Process has ended: gone, or a zombie that its (new) parent has not reaped yet."""
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_the_server_dies_with_its_parent(parent):
    pid, log_path = parent.stdout.readline().split()
    assert parent.stdout.readline().strip() == "ready"
    child = psutil.Process(int(pid))
    port = next(c.laddr.port for c in inet_connections(child) if c.status == psutil.CONN_LISTEN)
    parent.send_signal(signal.SIGKILL)  # as a notebook kernel killed by the OS or "Restart"
    parent.wait()
    # exited: gone, or a zombie until the machine's init reaps the orphan (here ~1.7 s after it
    # exited, which child.wait() would count as running)
    deadline = time.monotonic() + 15
    while not has_exited(child):
        if time.monotonic() > deadline:
            child.kill()
            pytest.fail("the server outlived its parent")
        time.sleep(0.05)
    assert not port_is_open(port)
    assert not Path(log_path).exists()  # issue 20, attack 15: the log goes with the orphaned server


# Issue 20: what got through before, each against the running server.

@pytest.mark.parametrize("case", [*ATTACKS_V1, *ATTACKS_V2])
def test_attack_bodies_1_to_8_get_a_400_over_http(server, case):
    body, message = ATTACKS_V1[case] if case in ATTACKS_V1 else ATTACKS_V2[case]
    path = "/v1/models/toy:predict" if case in ATTACKS_V1 else "/v2/models/toy/infer"
    reply = requests.post(server.url + path, data=body, timeout=30, headers={"content-type": "application/json"})
    assert reply.status_code == 400 and reply.json()["error"].startswith(message), reply.text[:300]


@pytest.mark.parametrize("path, status, message", [
    ("/v1/models/toy/versions/" + "9" * 5000 + ":predict", 400, "Failed to convert version: 99999"),
    ("/v1/models/toy/versions/\u0662:predict", 400, "Malformed request: POST /v1/models/toy/versions/"),
    ("/v1/models/toy:classify", 501, "this engine answers :predict only"),
])
def test_attack_4_versions_are_ascii_digits_that_fit_an_int64(server, path, status, message):
    reply = requests.post(server.url + path, json={"instances": X}, timeout=30)
    assert reply.status_code == status and reply.json()["error"].startswith(message), reply.text[:300]


def test_attack_7_v2_binary_data_is_refused(server):
    # KServe's binary extension: a JSON header of the declared length, then the raw float32 bytes
    header = json.dumps({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32",
                                     "parameters": {"binary_data_size": 12}}]}).encode()
    reply = requests.post(f"{server.url}/v2/models/toy/infer", data=header + np.float32([1, 2, 3]).tobytes(),
                          timeout=30, headers={"content-type": "application/octet-stream",
                                               "inference-header-content-length": str(len(header))})
    assert reply.status_code == 400 and "error" in reply.json(), reply.text[:300]


def test_v2_server_metadata_does_not_name_kserve(server):
    reply = requests.get(f"{server.url}/v2", timeout=30)
    assert reply.status_code == 403 and "kserve" not in reply.text.lower()


def big_reply_request(port, n=1_000_000):
    """A predict whose reply is 8 * n bytes, sent on a socket whose owner never reads."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    body = json.dumps({"signature_name": "big", "inputs": [n]}).encode()
    sock.sendall(f"POST /v1/models/toy:predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    return sock


def test_attack_9_clients_that_never_read_their_reply_cannot_lock_others_out(server):
    socks = [big_reply_request(server.port) for _ in range(25)]  # over --max_connections=20
    try:
        time.sleep(1.0)  # their 8 MB replies are computed and stuck in the buffers
        start = time.monotonic()
        assert predict(server, json={"instances": X}).status_code == 200  # a new client gets in
        assert time.monotonic() - start < 5
        deadline = time.monotonic() + 10  # --write_timeout_s=1: the stuck ones are dropped
        while len([c for c in inet_connections(psutil.Process(server.pid))
                   if c.status == psutil.CONN_ESTABLISHED]) > 2:
            assert time.monotonic() < deadline, "connections with unread replies were not dropped"
            time.sleep(0.2)
    finally:
        for s in socks:
            s.close()


def test_attack_10_refusals_do_not_wait_for_a_body(server):
    socks = []
    for _ in range(25):  # over --max_connections=20, each refused request declaring a body it never sends
        s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        s.sendall(f"POST /metrics HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nContent-Length: 1000\r\n\r\nx".encode())
        socks.append(s)
    try:
        assert predict(server, json={"instances": X}).status_code == 200  # well within --body_timeout_s
        # each was answered 403 and closed at once (or dropped when over the cap), not held for its body
        replies = []
        for s in socks:
            s.settimeout(0.5)
            replies.append(read_until_closed_or_reset(s))  # socket.timeout if the server holds it open
        assert replies[-1].startswith(b"HTTP/1.1 403") and b"connection: close" in replies[-1], replies[-1]
    finally:
        for s in socks:
            s.close()


def test_attack_11_slow_bodies_hold_no_pool_slot(server):
    slow = []
    for _ in range(2):  # --rest_api_num_threads=2
        s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        s.sendall(f"POST /v1/models/toy:predict HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
                  f"Content-Length: 100\r\n\r\n{{\"inst".encode())
        slow.append(s)
    try:
        time.sleep(0.2)
        assert predict(server, json={"instances": X}).status_code == 200
        for s in slow:  # answered while the slow ones still wait for their body (no 408 yet)
            s.setblocking(False)
            with pytest.raises(BlockingIOError):
                s.recv(100)
    finally:
        for s in slow:
            s.close()


@pytest.mark.parametrize("headers", [b"X-a: b\r\n" * 8192, b"".join(b"X-%d: b\r\n" % i for i in range(150)) + b"\r\n"],
                         ids=["64 KiB of headers, never finished", "150 headers"])
def test_attack_12_headers_are_limited_in_size_and_count(server, headers):
    rss = psutil.Process(server.pid).memory_info().rss
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        try:
            s.sendall(f"GET /v1/models/toy HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n".encode())
            for _ in range(100):  # 6.4 MB in all, unless the server stops it
                s.sendall(headers)
        except (BrokenPipeError, ConnectionResetError):
            pass
        reply = read_until_closed_or_reset(s)
    assert reply.startswith(b"HTTP/1.1 431"), reply[:200]
    assert psutil.Process(server.pid).memory_info().rss - rss < 20e6
    assert predict(server, json={"instances": X}).status_code == 200


def read_until_closed_or_reset(sock):
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def test_attack_13_large_bodies_are_admitted_within_the_memory_budget(server):
    # --memory_budget_bytes admits one maximum-size body at a time: while the first runs (past the
    # 1.5 s deadline: 504), the second waits for memory, its body unread, and gets 503 at its deadline
    # (without the budget both would be read, parsed and run on the two threads: 504 and 504)
    busy_s = 1.8
    head, tail = f'{{"signature_name": "busy", "inputs": [{busy_s}', "]}"
    body = (head + ", 0.0" * ((LIMIT - len(head) - len(tail)) // 5) + tail).encode()
    replies = []
    threads = [threading.Thread(target=lambda: replies.append(predict(server, data=body))) for _ in range(2)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.status_code for r in replies) == [503, 504], [r.text for r in replies]
    assert "memory budget" in min(replies, key=lambda r: r.status_code).json()["error"]
    time.sleep(max(0.0, busy_s + 0.5 - (time.monotonic() - start)))  # the 504'd call still holds its thread


def test_attack_14_and_15_logs_hold_no_values_no_tracebacks_and_are_capped(server):
    log = Path(server.log_path)
    before = log.stat().st_size
    secret = "SECRET-4711"
    for body in (json.dumps({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [secret, 1, 2]}]}),
                 json.dumps({"inputs": [{"name": secret, "shape": [1], "datatype": "FP32", "data": [1]}]})):
        assert requests.post(f"{server.url}/v2/models/toy/infer", data=body, timeout=30).status_code == 400
    session = requests.Session()
    for _ in range(600):  # a flood of bad requests, each logged as one access line at most
        assert session.post(f"{server.url}/v1/models/toy:predict", data=b'{"instances": [[1, 2', timeout=30).status_code == 400
    text = log.read_bytes()[before:].decode(errors="replace")  # what these requests logged
    assert secret not in text and "Traceback" not in text, text[-2000:]
    assert len(text) < LOG_MAX + 1000 and "log size cap reached" in log.read_text(errors="replace")


def test_a_newer_version_folder_is_served_as_tf_serving_polls_for_it(server, model_dir):
    shutil.copytree(model_dir / "2", model_dir / "3")  # version 3 = version 2's weights
    deadline = time.monotonic() + 30  # --file_system_poll_wait_seconds=0.2 (1 s by default)
    while requests.get(f"{server.url}/v1/models/toy", timeout=30).json()["model_version_status"][0]["version"] != "3":
        assert time.monotonic() < deadline, "version 3 was not loaded"
        time.sleep(0.2)
    states = [(v["version"], v["state"]) for v in requests.get(f"{server.url}/v1/models/toy").json()["model_version_status"]]
    assert states == [("3", "AVAILABLE"), ("2", "END")]
    assert predict(server, json={"instances": X}).status_code == 200
    reply = requests.post(f"{server.url}/v1/models/toy/versions/2:predict", json={"instances": X}, timeout=30)
    assert (reply.status_code, reply.json()) == (404, {"error": "Servable not found for request: Specific(toy, 2)"})


def test_stop_ends_the_process_closes_the_port_and_removes_the_log(server):  # last: it stops the server
    server.keep_log = False
    assert server.stop() == 0
    assert not port_is_open(server.port)
    assert not psutil.pid_exists(server.pid) or psutil.Process(server.pid).status() == "zombie"
    assert not Path(server.log_path).exists()
    assert server.stop() == 0  # stopping twice is harmless (atexit stops it again)
