"""helpers.request_guard in this process: what the RequestGuard refuses before KServe sees a request,
and which failures are the client's (400) or the server's (500)."""
import asyncio
import json
import time

import pytest
from kserve.errors import InvalidInput

from helpers.request_guard import MemoryBudget, RequestGuard, _answer
from helpers.request_pool import Refused, RequestPool


class Echo:
    """A servable that answers every prediction with {}."""
    name, version = "toy", 1

    def predict_v1_body(self, body):
        return b"{}"

    predict_v2_body = predict_v1_body

    def status(self, version=None):
        return {"answered": "status"}

    def metadata(self):
        return {"answered": "metadata"}


def call_gate(headers, body=b"", path="/v2/models/toy/infer", max_bytes=10):
    """One request through the RequestGuard in front of an app that answers 200; (status, JSON body)."""
    sent, events = [], [{"type": "http.request", "body": body, "more_body": False}]

    async def app(scope, receive, send):
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def receive():
        return events.pop(0) if events else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    headers = {"host": "127.0.0.1:8501", **headers}
    scope = {"type": "http", "method": "POST" if body else "GET", "path": path,
             "headers": [(k.encode(), v.encode()) for k, v in headers.items()]}
    asyncio.run(RequestGuard(app, Echo(), 8501, max_bytes, RequestPool(1, 5))(scope, receive, send))
    return sent[0]["status"], json.loads(sent[1]["body"])


def test_gate_lets_a_small_body_through_whatever_its_content_type():
    # TF Serving reads the body whatever the Content-Type (curl -d sends a form type)
    for ctype in ("application/json", "application/x-www-form-urlencoded", None):
        headers = {"content-length": "2", **({"content-type": ctype} if ctype else {})}
        assert call_gate(headers, b"{}") == (200, {})


@pytest.mark.parametrize("headers, path, status, message", [
    ({"content-length": "11"}, "/v2/models/toy/infer", 413, "request body of 11 bytes is over this server's limit of 10 bytes"),
    ({"host": "evil.example:8501"}, "/v1/models/toy", 403, "Host 'evil.example:8501' is not this server's"),
    ({"origin": "http://127.0.0.1:9999"}, "/v1/models/toy", 403, "requests from web pages of other origins"),
    ({}, "/metrics", 403, "/metrics is a management endpoint, off"),
    ({}, "/openapi.json", 403, "/openapi.json is a management endpoint, off"),
    ({}, "/v2/repository/models/toy/unload", 403, "/v2/repository/models/toy/unload is a management endpoint"),
])
def test_gate_refuses_with_a_json_error(headers, path, status, message):
    got_status, body = call_gate(headers, b"x" * 11 if "content-length" in headers else b"", path)
    assert got_status == status and body["error"].startswith(message), body


@pytest.mark.parametrize("path, status, reply", [
    # TF Serving's URL patterns ignore case (http_rest_api_util.cc:31-34), but it compares the
    # method or subresource they capture as written (http_rest_api_handler.cc:85-105)
    ("/V1/MODELS/toy:predict", 200, {}),
    ("/v1/models/toy:PREDICT", 400, {"error": "Malformed request: POST /v1/models/toy:PREDICT"}),
    ("/v1/models/toy:Classify", 400, {"error": "Malformed request: POST /v1/models/toy:Classify"}),
    ("/V1/Models/toy/metadata", 200, {"answered": "metadata"}),
    ("/v1/models/toy/METADATA", 200, {"answered": "status"}),
])
def test_the_url_ignores_case_but_the_method_is_compared_as_written(path, status, reply):
    body = b"{}" if ":" in path else b""  # a POST with a body, else a GET
    assert call_gate({"content-length": str(len(body))}, body, path) == (status, reply)


def test_a_request_that_the_memory_budget_cannot_fit_by_its_deadline_is_a_503():
    budget = MemoryBudget(total=100)

    async def second_request():
        await budget.reserve(80, time.monotonic() + 1)  # a request being answered holds 80 bytes
        with pytest.raises(Refused) as refused:
            await budget.reserve(30, time.monotonic() + 0.05)  # 80 + 30 > 100 until its deadline
        return refused.value

    refused = asyncio.run(second_request())
    assert (refused.status, refused.message) == (
        503, "the server is busy: the requests it holds use its memory budget of 100 bytes")


def test_only_a_server_fault_is_a_500():
    def fault(body):
        raise RuntimeError("disk on fire")

    def bad_input(body):
        raise InvalidInput("JSON Parse error: The document is empty")

    assert _answer(fault, b"{}") == (500, b'{"error":"Internal: RuntimeError: disk on fire"}')
    assert _answer(bad_input, b"") == (400, b'{"error":"JSON Parse error: The document is empty"}')
