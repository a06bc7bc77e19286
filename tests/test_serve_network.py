"""lnmt-serve facing a network: slow and greedy clients, access control, the standard probes, quiet logs, no 5xx for
any request (Schemathesis against the server's own OpenAPI schema, Hypothesis on the request parser). Each against
a running server (in process, on 127.0.0.1), but the command-line checks and the parser's property test."""

from __future__ import annotations

import http.client
import json
import logging
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("uvicorn", reason="lnmt-serve needs the [serve] extra")
pytest.importorskip("prometheus_client", reason="lnmt-serve needs the [serve] extra (prometheus-client)")

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from lightning_nmt.backends import TorchBackend  # noqa: E402
from lightning_nmt.serve import RequestError, Settings, main, parse_request  # noqa: E402
from tests.test_serve import CHECKPOINTS, LINES, FailingBackend, LiveServer, call  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def backend() -> TorchBackend:
    return TorchBackend.load(CHECKPOINTS / "attention.ckpt")


@pytest.fixture(scope="module", params=["httptools", "h11"])
def server(backend, request):
    """A server with short timeouts and small limits, on each HTTP parser."""
    if request.param == "httptools":
        pytest.importorskip("httptools", reason="httptools is not installed")
    live = LiveServer(backend, Settings(header_timeout=1.0, body_timeout=1.0, max_connections=8,
                                        max_header_bytes=4096, max_response_bytes=200_000,
                                        http_parser=request.param))
    yield live
    live.close()


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def read_all(sock: socket.socket, timeout: float = 10) -> bytes:
    """What the server sends until it closes the connection."""
    sock.settimeout(timeout)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def request(url: str, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection(url.removeprefix("http://"), timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


# ---- slow and greedy clients ---------------------------------------------------------------------------------------

def test_slow_headers_are_closed_at_the_header_timeout(server):
    sock = connect(server.url)
    started = time.monotonic()
    sock.sendall(b"POST /translate HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and nothing more
    answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408 ") and b"request headers not received within 1 s" in answer
    assert time.monotonic() - started < 5
    idle = connect(server.url)  # a connection that sends nothing is closed too
    assert read_all(idle).startswith(b"HTTP/1.1 408 ")


def test_a_slow_body_is_closed_at_the_body_timeout(server):
    sock = connect(server.url)
    sock.sendall(b"POST /translate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 200\r\n\r\n{\"src\": [")
    started = time.monotonic()
    answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408 ") and b"request body not received within 1 s" in answer
    assert time.monotonic() - started < 5


def test_headers_over_the_limit_are_a_431(server):
    status, _, body = request(server.url, "GET", "/health", headers={"X-Big": "a" * 8000})
    assert status == 431 and json.loads(body) == {"error": "request headers larger than 4096 bytes"}


def test_the_connection_cap_gives_503_with_retry_after(server):
    held = [connect(server.url) for _ in range(8)]
    try:
        time.sleep(0.2)
        status, headers, body = request(server.url, "GET", "/health")
        assert status == 503 and headers["retry-after"] == "1" and "too many connections" in json.loads(body)["error"]
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.3)
    assert call(server.url, "/health") == (200, {"status": "ok"})


def test_an_answer_that_could_be_too_large_is_refused_before_translating(server):
    before = server.stats()["sentences"]
    status, answer = call(server.url, "/translate", {"src": LINES[:4], "beam_size": 8, "nbest": 8, "attention": True})
    assert status == 413 and answer["error"].startswith("the answer could reach ")
    assert "4 sentences x nbest 8 x up to" in answer["error"] and "--max-response-bytes" in answer["error"]
    assert server.stats()["sentences"] == before
    assert call(server.url, "/translate", {"src": LINES[:1]})[0] == 200


# ---- access ------------------------------------------------------------------------------------------------------

def test_host_content_type_and_api_key(backend):
    live = LiveServer(backend, Settings(api_key="s3cret"))
    try:
        body = json.dumps({"src": [LINES[0]]}).encode()
        json_type = {"Content-Type": "application/json"}
        status, _, answer = request(live.url, "GET", "/health", headers={"Host": "evil.example"})
        assert status == 400 and json.loads(answer) == {"error": "Host 'evil.example' is not allowed (--allowed-hosts)"}
        status, _, answer = request(live.url, "POST", "/translate", body, {"Content-Type": "text/plain",
                                                                           "Authorization": "Bearer s3cret"})
        assert status == 415 and json.loads(answer) == {
            "error": "Content-Type must be application/json, got text/plain"}
        status, headers, answer = request(live.url, "POST", "/translate", body, json_type)
        assert status == 401 and headers["www-authenticate"] == "Bearer" and b"needs an API key" in answer
        status, _, answer = request(live.url, "POST", "/translate", body, {**json_type, "Authorization": "Bearer nope"})
        assert status == 401 and json.loads(answer) == {"error": "wrong API key"}
        assert request(live.url, "GET", "/stats")[0] == 401
        key = {**json_type, "Authorization": "Bearer s3cret"}
        status, _, answer = request(live.url, "POST", "/translate", body, key)
        assert status == 200 and json.loads(answer)["translations"][0][0]["tgt"]
        for path in ("/health", "/metrics", "/models", "/"):  # probes and the page stay open
            assert request(live.url, "GET", path)[0] == 200, path
    finally:
        live.close()


def test_cors_is_off_unless_origins_are_named(backend, server):
    preflight = {"Origin": "http://page.example", "Access-Control-Request-Method": "POST"}
    _, headers, _ = request(server.url, "OPTIONS", "/translate", headers=preflight)
    assert "access-control-allow-origin" not in headers
    live = LiveServer(backend, Settings(cors_origins=["http://page.example"]))
    try:
        status, headers, _ = request(live.url, "OPTIONS", "/translate", headers=preflight)
        assert status == 200 and headers["access-control-allow-origin"] == "http://page.example"
    finally:
        live.close()


@pytest.mark.parametrize(("args", "message"), [
    (["--host", "0.0.0.0"], "--host 0.0.0.0 is reachable from other machines"),
    (["--api-key-file", "{tmp}/empty"], "is empty"),
    (["--api-key-file", "{tmp}/missing"], "cannot read --api-key-file"),
])
def test_unsafe_or_broken_access_settings_stop_the_server_before_it_starts(args, message, tmp_path, capsys):
    (tmp_path / "empty").write_text("\n")
    assert main([str(CHECKPOINTS / "attention.ckpt"), *[a.format(tmp=tmp_path) for a in args]]) == 2
    assert message in capsys.readouterr().err


# ---- probes, metrics, logs -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/health", "/models", "/stats", "/metrics", "/"])
def test_head_answers_200_on_every_get_route(server, path):
    status, _, body = request(server.url, "HEAD", path)
    assert status == 200 and body == b""


def test_metrics_parse_and_move(server):
    def samples() -> dict[tuple[str, tuple], float]:
        text = request(server.url, "GET", "/metrics")[2].decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    before = samples()
    assert call(server.url, "/translate", {"src": LINES[:3]})[0] == 200
    assert call(server.url, "/translate", {"src": []})[0] == 422
    after = samples()

    def moved(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert moved("lnmt_http_responses_total", route="/translate", status="200") == 1
    assert moved("lnmt_http_responses_total", route="/translate", status="422") == 1
    assert moved("lnmt_sentences_total") == 3 and moved("lnmt_source_pieces_total") > 3
    assert moved("lnmt_batch_sentences_count") >= 1 and moved("lnmt_http_request_seconds_count",
                                                               route="/translate") == 2
    assert server.stats()["requests"] == after[("lnmt_http_responses_total",
                                                (("route", "/translate"), ("status", "200")))]


def test_a_client_that_goes_away_mid_body_is_one_info_line(server, caplog):
    caplog.set_level(logging.INFO, logger="lightning_nmt.serve")
    sock = connect(server.url)
    sock.sendall(b"POST /translate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 100\r\n\r\n{\"src\"")
    time.sleep(0.2)
    sock.close()
    time.sleep(0.5)
    records = [r for r in caplog.records if r.name.startswith(("lightning_nmt", "uvicorn"))]
    assert [r.levelname for r in records] == ["INFO"] and "went away" in records[0].getMessage()
    assert records[0].exc_info is None


class BrokenCounter(FailingBackend):
    """A backend whose piece count raises: a fault of the server."""

    def count_pieces(self, line: str) -> int:
        raise KeyError("a bug")


def test_a_fault_is_one_500_with_a_request_id_logged_once(caplog):
    caplog.set_level(logging.INFO)
    live = LiveServer(BrokenCounter(), Settings())
    try:
        status, answer = call(live.url, "/translate", {"src": ["a"]})
    finally:
        live.close()
    assert status == 500 and answer["error"] == f"internal error: KeyError (request id {answer['request_id']})"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and answer["request_id"] in errors[0].getMessage() and errors[0].exc_info is not None


# ---- no 5xx for any request ------------------------------------------------------------------------------------

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                                  max_size=4), max_leaves=20)
FIELDS = st.fixed_dictionaries({}, optional={
    "src": st.lists(st.text(), max_size=3) | JSON, "beam_size": JSON, "nbest": JSON, "attention": JSON,
    "strategy": st.sampled_from(["beam", "greedy", "sampling", "x"]) | JSON, "top_k": JSON, "top_p": JSON,
    "temperature": JSON, "seed": JSON, "no_repeat_ngram_size": JSON, "length_penalty": JSON})


@settings(max_examples=300, deadline=None)
@given(payload=FIELDS | JSON)
def test_the_parser_answers_any_json_with_a_request_or_a_4xx(payload):
    try:
        parse_request(json.dumps(payload).encode())
    except RequestError as err:
        assert 400 <= err.status < 500 and err.message and "\n" not in err.message


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=200))
def test_the_parser_answers_any_bytes_with_a_request_or_a_4xx(body):
    try:
        parse_request(body)
    except RequestError as err:
        assert 400 <= err.status < 500


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_against_the_openapi_schema(server, tmp_path):
    """Schemathesis, bounded: its examples of every operation of /openapi.json, checked for 5xx and for answers
    that the schema does not describe."""
    st_cli = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or shutil.which("schemathesis")
    if st_cli is None:
        pytest.skip("schemathesis is not installed (pip install -e '.[dev]')")
    proc = subprocess.run(
        [st_cli, "run", f"{server.url}/openapi.json", "--checks", "not_a_server_error,response_schema_conformance",
         "--max-examples", "200", "--seed", "1", "--workers", "1", "--request-timeout", "30",
         "--phases", "examples,coverage,fuzzing", "--suppress-health-check", "all"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "No issues found" in proc.stdout or "passed" in proc.stdout.lower(), proc.stdout[-2000:]


def test_the_three_requests_that_were_500s(server):
    """A lone surrogate, JSON 100,000 deep, a 5,001-digit integer: each a 400, and the server goes on."""
    bodies = [b'{"src": ["\\ud800"]}', b'{"src": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
              b'{"src": ["a"], "beam_size": ' + b"9" * 5001 + b"}"]
    for body in bodies:
        status, _, answer = request(server.url, "POST", "/translate", body, {"Content-Type": "application/json"})
        assert status == 400 and list(json.loads(answer)) == ["error"], answer[:200]
    assert call(server.url, "/translate", {"src": [LINES[0]]})[0] == 200
