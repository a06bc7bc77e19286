"""lnmt-serve: translations equal `Translator`'s, bad requests are one-line 4xx errors, concurrent requests are
batched, SIGTERM answers the requests in flight, and the page draws the attention in a real (headless) browser.

Servers run in-process (uvicorn in a thread, on a socket bound to a free port) except for the SIGTERM test, which
needs a process of its own; every wait is bounded, and every server and browser is stopped in a `finally`."""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi", reason="lnmt-serve needs the [serve] extra: pip install fastapi uvicorn")
uvicorn = pytest.importorskip("uvicorn", reason="lnmt-serve needs the [serve] extra: pip install fastapi uvicorn")

from lightning_nmt.backends import Backend, Hypothesis, TorchBackend  # noqa: E402
from lightning_nmt.search import DecodingConfig  # noqa: E402
from lightning_nmt.serve import MAX_BODY_BYTES, Settings, create_app, main, make_server  # noqa: E402
from tests.browser import chromium_binary, headless_page  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINTS = ROOT / "tests" / "fixtures" / "checkpoints"
REFERENCE = json.loads((CHECKPOINTS / "translations.json").read_text())
LINES: list[str] = REFERENCE["lines"]  # 8 test sentences, an empty line, one longer than max_input_len=60
MODELS = ("basic", "attention", "transformer")
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# ---- helpers ---------------------------------------------------------------------------------------------------

def call(url: str, path: str, body: Any = None, method: str | None = None,
         timeout: float = 120) -> tuple[int, dict[str, Any]]:
    """(status, JSON answer) of one request; `body`: an object sent as JSON, or raw bytes."""
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, method=method or ("GET" if data is None else "POST"),
                                     headers={"Content-Type": "application/json"})
    try:
        with NO_PROXY.open(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


class LiveServer:
    """`create_app(backend, settings)` served by uvicorn in a thread, on 127.0.0.1 and a free port."""

    def __init__(self, backend: Backend, settings: Settings) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = make_server(create_app(backend, settings), settings, log_level="warning")
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.close()
                raise RuntimeError("the in-process server did not start within 30 s")
            time.sleep(0.02)

    def stats(self) -> dict[str, Any]:
        return call(self.url, "/stats")[1]

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


@pytest.fixture(scope="module")
def backends() -> dict[str, TorchBackend]:
    return {name: TorchBackend.load(CHECKPOINTS / f"{name}.ckpt") for name in MODELS}


@pytest.fixture(scope="module")
def serve(backends):
    """serve(model, **settings) -> a running LiveServer (one per model and settings, for the whole module)."""
    servers: dict[tuple, LiveServer] = {}

    def start(model: str, **settings: Any) -> LiveServer:
        key = (model, tuple(sorted(settings.items())))
        if key not in servers:
            servers[key] = LiveServer(backends[model], Settings(**settings))
        return servers[key]

    try:
        yield start
    finally:
        for server in servers.values():
            server.close()


@pytest.fixture(scope="module")
def translators():
    from lightning_nmt.translate import Translator

    return {(name, beam): Translator.from_checkpoint(CHECKPOINTS / f"{name}.ckpt", beam_size=beam)
            for name in MODELS for beam in (None, 1, 3)}


def expected(translators, model: str, lines: list[str], beam: int | None = None) -> list[str]:
    return translators[model, beam].translate(lines)


# ---- translations -----------------------------------------------------------------------------------------------

def test_torch_backend_is_a_backend(backends):
    backend = backends["attention"]
    assert isinstance(backend, Backend)
    assert (backend.name, backend.model_type, backend.max_input_len) == ("attention.ckpt", "attention", 60)
    line = LINES[0]
    assert backend.count_pieces(line) == len(backend.tokenizer.src_pieces(line))


@pytest.mark.parametrize("model", MODELS)
def test_translations_equal_the_translator(serve, backends, translators, model):
    server = serve(model)
    status, answer = call(server.url, "/translate", {"src": LINES})
    assert status == 200, answer
    got = answer["translations"]
    assert [hyps[0]["tgt"] for hyps in got] == expected(translators, model, LINES)
    assert all(set(hyp) <= {"tgt", "score", "note"} for hyps in got for hyp in hyps)  # no attention unless asked
    # the empty line is not translated; the lines over max_input_len=60 pieces (4 of 10) have a note
    assert got[LINES.index("")] == [{"tgt": "", "score": 0.0}]
    long = [backends[model].count_pieces(line) > 60 for line in LINES]
    assert [("note" in hyps[0]) for hyps in got] == long and 0 < sum(long) < len(LINES)
    for (hyp,), line in zip(got, LINES):
        if "note" in hyp:
            assert hyp["note"] == (f"longer than max_input_len=60 pieces ({backends[model].count_pieces(line)}): "
                                   "translated in segments")

    status, answer = call(server.url, "/translate", {"src": LINES, "beam_size": 3, "nbest": 2})
    assert status == 200, answer
    reference = translators[model, 3].translate_nbest(LINES, nbest=2)
    for hyps, ref in zip(answer["translations"], reference, strict=True):
        assert [hyp["tgt"] for hyp in hyps] == [text for text, _ in ref]
        assert [hyp["score"] for hyp in hyps] == pytest.approx([score for _, score in ref], abs=1e-4)


def test_attention_weights_and_pieces(serve, backends):
    server = serve("attention")
    status, answer = call(server.url, "/translate", {"src": LINES[:2], "beam_size": 3, "attention": True})
    assert status == 200, answer
    tokenizer = backends["attention"].tokenizer
    for i, (hyp,) in enumerate(answer["translations"]):
        assert hyp["src_pieces"] == tokenizer.src_pieces(LINES[i]) and hyp["src_pieces"][-1] == "</s>"
        assert hyp["tgt_pieces"][-1] == "</s>"
        assert "".join(hyp["tgt_pieces"][:-1]).replace("\u2581", " ").strip() == hyp["tgt"]
        weights = hyp["attention"]
        assert len(weights) == len(hyp["tgt_pieces"]) and {len(row) for row in weights} == {len(hyp["src_pieces"])}
        assert all(abs(sum(row) - 1) < 2e-3 for row in weights)
        reference = REFERENCE["models"]["attention"]["auto"]["attention"][i]  # the same sentence, beam 3
        assert len(reference) == len(weights)
        assert all(abs(a - b) < 2e-3 for ra, rb in zip(weights, reference) for a, b in zip(ra, rb))

    status, answer = call(serve("basic").url, "/translate", {"src": LINES[:1], "attention": True})
    assert status == 200
    (hyp,) = answer["translations"][0]
    assert hyp["attention"] is None and hyp["src_pieces"][-1] == "</s>"  # a model without attention


def test_health_models_stats_and_page(serve):
    server = serve("transformer")
    assert call(server.url, "/health") == (200, {"status": "ok"})
    status, answer = call(server.url, "/models")
    assert status == 200
    (model,) = answer["models"]
    assert (model["name"], model["type"], model["backend"]) == ("transformer.ckpt", "transformer", "torch")
    assert model["decoding"]["beam_size"] == 5
    assert model["limits"]["max_input_len"] == 60 and model["limits"]["max_sentences"] == Settings.max_sentences
    assert {"requests", "sentences", "batches", "queued"} <= set(server.stats())
    with NO_PROXY.open(server.url + "/", timeout=30) as page:
        html = page.read().decode()
    assert "<textarea" in html and "static/app.js" in html and "http" not in html.split("<footer")[0].lower()
    for name in ("app.js", "style.css"):
        with NO_PROXY.open(f"{server.url}/static/{name}", timeout=30) as response:
            assert response.status == 200 and b"http://" not in response.read()  # nothing fetched from elsewhere


def test_a_ctranslate2_directory_is_served(tmp_path):
    """MODEL a directory: an `lnmt-export`ed CTranslate2 model, served through `lightning_nmt.ct2`."""
    pytest.importorskip("ctranslate2", reason="the CTranslate2 backend needs ctranslate2")
    ct2 = pytest.importorskip("lightning_nmt.ct2", reason="no CTranslate2 backend (lightning_nmt.ct2) yet")
    export = pytest.importorskip("lightning_nmt.export", reason="no lnmt-export (lightning_nmt.export) yet")
    from lightning_nmt.backends import load_backend

    directory = export.export(CHECKPOINTS / "transformer.ckpt", tmp_path / "ct2")
    backend = load_backend(str(directory))
    assert isinstance(backend, Backend) and backend.max_input_len == 60
    server = LiveServer(backend, Settings(beam_size=3))
    try:
        status, answer = call(server.url, "/models")
        assert answer["models"][0]["backend"] == "ctranslate2" and answer["models"][0]["type"] == "transformer"
        status, answer = call(server.url, "/translate", {"src": LINES[:3], "nbest": 2, "attention": True})
        assert status == 200, answer
        reference = ct2.CTranslate2Model(directory).translate_batch(LINES[:3], beam_size=3, nbest=2)
        for hyps, ref in zip(answer["translations"], reference, strict=True):
            assert [hyp["tgt"] for hyp in hyps] == [r.tgt for r in ref]
            for hyp in hyps:
                assert len(hyp["attention"]) == len(hyp["tgt_pieces"]) and hyp["tgt_pieces"][-1] == "</s>"
                assert {len(row) for row in hyp["attention"]} == {len(hyp["src_pieces"])}
        # sampling maps onto CTranslate2's; a per-request seed is refused (its random numbers are per process)
        status, answer = call(server.url, "/translate", {"src": LINES[:2], "strategy": "sampling", "top_k": 5})
        assert status == 200 and len(answer["translations"]) == 2
        status, answer = call(server.url, "/translate", {"src": LINES[:2], "strategy": "sampling", "seed": 1})
        assert status == 400 and answer["error"].startswith("seed=1 does not run on the ctranslate2 backend")
        # attention weights are rounded as on the PyTorch backend
        status, answer = call(server.url, "/translate", {"src": LINES[:1], "attention": True})
        assert all(round(w, 4) == w for row in answer["translations"][0][0]["attention"] for w in row)
    finally:
        server.close()


def test_a_seeded_request_gets_the_same_samples_whatever_is_batched_with_it(serve):
    """The PyTorch backend gives each sampled sentence its own generator: a request with a seed, alone or batched
    with 7 concurrent requests of the same settings, gets the same translations; another seed gets others."""
    server = serve("attention", max_wait_ms=300)
    body = {"src": LINES[:2], "strategy": "sampling", "seed": 11, "nbest": 2, "temperature": 1.5}
    status, alone = call(server.url, "/translate", body)
    assert status == 200
    others = [{**body, "src": [LINES[(i + 3) % 8]]} for i in range(7)]
    answers: list[Any] = [None] * 8
    start = threading.Barrier(8)

    def send(i: int, request: dict) -> None:
        start.wait(timeout=30)
        answers[i] = call(server.url, "/translate", request)

    before = server.stats()["batches"]
    threads = [threading.Thread(target=send, args=(i, r)) for i, r in enumerate([body, *others])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    def texts(answer: dict) -> list[list[str]]:
        return [[hyp["tgt"] for hyp in hyps] for hyps in answer["translations"]]

    assert answers[0][0] == 200 and texts(answers[0][1]) == texts(alone)  # scores: within float error of a batch
    assert server.stats()["batches"] - before < 8  # it was batched with others
    assert texts(call(server.url, "/translate", {**body, "seed": 12})[1]) != texts(alone)


# ---- bad requests -----------------------------------------------------------------------------------------------

LIMITS = {"max_sentences": 4, "max_request_tokens": 50}
BAD = [
    ("malformed JSON", b'{"src": ["a man ."', 400, "malformed JSON: Expecting ',' delimiter at line 1 column 19"),
    ("invalid UTF-8", b'{"src": ["caf\xe9 ."]}', 400, "request body is not valid UTF-8 (byte 13)"),
    ("empty body", b"", 400, 'empty request body: send a JSON object {"src": ["a sentence", ...]}'),
    ("not an object", b'["a man ."]', 422, 'request body must be a JSON object {"src": [...]}, got a JSON array'),
    ("src missing", {"beam_size": 2}, 422, "src: field required"),
    ("src a string", {"src": "a man ."}, 422, "src: input should be a valid list"),
    ("src item a number", {"src": ["a man .", 3]}, 422, "src[1]: input should be a valid string"),
    ("beam_size a string", {"src": ["a"], "beam_size": "5"}, 422, "beam_size: input should be a valid integer"),
    ("nbest a float", {"src": ["a"], "nbest": 1.5}, 422, "nbest: input should be a valid integer"),
    ("attention a string", {"src": ["a"], "attention": "yes"}, 422, "attention: input should be a valid boolean"),
    ("unknown field", {"src": ["a"], "beam": 3}, 422, "beam: extra inputs are not permitted"),
    ("empty list", {"src": []}, 422, "src: list should have at least 1 item after validation, not 0"),
    ("too many sentences", {"src": ["a man ."] * 5}, 413, "5 sentences in one request: at most 4 (--max-sentences)"),
    ("too many pieces", {"src": ["a man . " * 20]}, 413, r"\d+ source pieces in one request: at most 50 "
                                                          r"\(--max-request-tokens\)"),
    ("beam_size 0", {"src": ["a"], "beam_size": 0}, 422, "beam_size: input should be greater than or equal to 1"),
    ("beam_size too large", {"src": ["a"], "beam_size": 17}, 400,
     "beam_size must be between 1 and 16 (--max-beam-size), got 17"),
    ("nbest 0", {"src": ["a"], "nbest": 0}, 422, "nbest: input should be greater than or equal to 1"),
    ("nbest over beam_size", {"src": ["a"], "beam_size": 2, "nbest": 3}, 400,
     "nbest=3 is more than strategy beam gives (at most 2 = beam_size)"),
    ("nbest of sampling too large", {"src": ["a"], "strategy": "sampling", "nbest": 17}, 400,
     "nbest must be between 1 and 16 (--max-beam-size), got 17"),
    ("top_k with beam search", {"src": ["a"], "top_k": 5}, 400,
     "top_k is an option of strategy sampling, not of beam (set strategy=sampling)"),
    ("negative temperature", {"src": ["a"], "strategy": "sampling", "temperature": -1}, 422,
     "temperature: input should be greater than 0"),
    ("top_p above 1", {"src": ["a"], "strategy": "sampling", "top_p": 1.5}, 422,
     "top_p: input should be less than or equal to 1"),
    ("top_p 0", {"src": ["a"], "strategy": "sampling", "top_p": 0}, 422, "top_p: input should be greater than 0"),
    ("unknown strategy", {"src": ["a"], "strategy": "magic"}, 422,
     "strategy: input should be 'greedy', 'beam' or 'sampling'"),
    ("length limits are the server's", {"src": ["a"], "max_len_ratio": 9}, 422,
     "max_len_ratio: extra inputs are not permitted"),
    ("negative n-gram size", {"src": ["a"], "no_repeat_ngram_size": -1}, 422,
     "no_repeat_ngram_size: input should be greater than or equal to 0"),
    ("repetition_penalty 0", {"src": ["a"], "repetition_penalty": 0}, 422,
     "repetition_penalty: input should be greater than 0"),
    ("a lone surrogate", b'{"src": ["\\ud800"]}', 400,
     "src[0] is not valid Unicode: surrogates not allowed at character 0"),
    ("JSON nested 100,000 deep", b'{"src": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400,
     "JSON nested deeper than 32 levels"),
    ("a 5,001-digit integer", b'{"src": ["a"], "beam_size": ' + b"9" * 5001 + b"}", 400,
     r"malformed JSON: Exceeds the limit \(4300 digits\) for integer string conversion.*"),
    ("NaN", b'{"src": ["a"], "length_penalty": NaN}', 400, "malformed JSON: NaN is not JSON"),
]


@pytest.mark.parametrize(("body", "status", "message"), [case[1:] for case in BAD], ids=[case[0] for case in BAD])
def test_bad_request_is_a_one_line_error(serve, body, status, message):
    server = serve("attention", **LIMITS)
    rejected = server.stats()["rejected"]
    got_status, answer = call(server.url, "/translate", body)
    assert (got_status, list(answer)) == (status, ["error"]), answer
    pattern = message if message.startswith(r"\d") or message.endswith(".*") else re.escape(message)
    assert re.fullmatch(pattern, answer["error"]), answer
    assert server.stats()["rejected"] == rejected + 1
    assert call(server.url, "/health") == (200, {"status": "ok"})


def test_other_bad_requests_and_the_server_goes_on(serve):
    server = serve("attention", **LIMITS)
    assert call(server.url, "/translate") == (405, {"error": "method not allowed"})
    assert call(server.url, "/nowhere") == (404, {"error": "not found"})
    # a body larger than MAX_BODY_BYTES is refused on its Content-Length, before it is read
    connection = http.client.HTTPConnection(server.url.removeprefix("http://"), timeout=30)
    try:
        connection.putrequest("POST", "/translate")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(MAX_BODY_BYTES + 1))
        connection.endheaders(b'{"src": ["a"]')
        response = connection.getresponse()
        assert (response.status, json.loads(response.read())) == (
            413, {"error": f"request body of {MAX_BODY_BYTES + 1} bytes: at most {MAX_BODY_BYTES}"})
    finally:
        connection.close()
    status, answer = call(server.url, "/translate", {"src": [LINES[2]]})
    assert status == 200 and answer["translations"][0][0]["tgt"]


class FailingBackend:
    """A backend that fails on the line "boom", and upper-cases the others."""

    name, backend, model_type, max_input_len, parallel_calls = "failing", "test", "test", None, 1
    per_request_seed = True
    decoding = DecodingConfig(beam_size=2)

    def check(self, decoding: DecodingConfig) -> None:
        decoding.check()

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    def count_pieces(self, line: str) -> int:
        return len(line.split()) + 1

    def translate_batch(self, lines: list[str], decoding: DecodingConfig) -> list[list[Hypothesis]]:
        self.batches.append(list(lines))
        if "boom" in lines:
            raise ValueError("the model broke")
        return [[Hypothesis(line.upper(), -1.0, [], [])] * decoding.nbest for line in lines]


def test_a_failing_batch_is_a_500_and_the_server_goes_on():
    backend = FailingBackend()
    assert isinstance(backend, Backend)
    server = LiveServer(backend, Settings(max_wait_ms=0))
    try:
        status, answer = call(server.url, "/translate", {"src": ["boom"]})
        assert status == 500 and answer["error"] == (f"translation failed: ValueError: the model broke (request id "
                                                     f"{answer['request_id']})")
        assert call(server.url, "/translate", {"src": ["a b", "c"], "nbest": 2}) == (
            200, {"translations": [[{"tgt": "A B", "score": -1.0}] * 2, [{"tgt": "C", "score": -1.0}] * 2]})
        assert server.stats()["failed_batches"] == 1
    finally:
        server.close()


# ---- batching ---------------------------------------------------------------------------------------------------

def test_concurrent_requests_are_batched_and_each_gets_its_own_results(serve, translators):
    """16 requests at once (two sentences each; half greedy, half beam 5): each is answered with its own
    translations in its order, and they ran in fewer batches than requests (at least two: a batch has one beam)."""
    server = serve("attention", max_wait_ms=500)
    before = server.stats()
    requests = [{"src": [LINES[i % 8], LINES[(i + 3) % 8]], "beam_size": 1 if i % 2 else 5} for i in range(16)]
    answers: list[Any] = [None] * len(requests)
    start = threading.Barrier(len(requests))

    def send(i: int) -> None:
        start.wait(timeout=30)
        answers[i] = call(server.url, "/translate", requests[i])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    greedy, beam = (dict(zip(LINES[:8], expected(translators, "attention", LINES[:8], b))) for b in (1, None))
    for request, (status, answer) in zip(requests, answers, strict=True):
        assert status == 200, answer
        table = greedy if request["beam_size"] == 1 else beam
        assert [hyps[0]["tgt"] for hyps in answer["translations"]] == [table[line] for line in request["src"]]
    after = server.stats()
    requests_done, batches = after["requests"] - before["requests"], after["batches"] - before["batches"]
    assert requests_done == 16 and after["sentences"] - before["sentences"] == 32
    assert 2 <= batches < requests_done, (before, after)
    assert after["largest_batch"] >= 8


class SlowBackend(FailingBackend):
    """Upper-cases, taking `seconds` per call; records how many calls ran at once."""

    def __init__(self, parallel_calls: int, seconds: float = 0.3) -> None:
        super().__init__()
        self.parallel_calls, self.seconds = parallel_calls, seconds
        self.lock, self.running, self.most = threading.Lock(), 0, 0

    def translate_batch(self, lines: list[str], decoding: DecodingConfig) -> list[list[Hypothesis]]:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(self.seconds)
        with self.lock:
            self.running -= 1
        return super().translate_batch(lines, decoding)


@pytest.mark.parametrize("parallel_calls", [1, 2])
def test_batches_run_side_by_side_up_to_the_backends_parallel_calls(parallel_calls):
    """A backend that takes calls from several threads (CTranslate2's workers) gets up to `parallel_calls` batches
    at once, never more; each request still gets its own results."""
    backend = SlowBackend(parallel_calls)
    server = LiveServer(backend, Settings(max_wait_ms=0, max_batch_tokens=8))  # at most 4 two-piece lines a batch
    answers: list[Any] = [None] * 12
    try:
        threads = [threading.Thread(target=lambda i=i: answers.__setitem__(
            i, call(server.url, "/translate", {"src": [f"w{i}", f"x{i} y"]}))) for i in range(len(answers))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        server.close()
    for i, (status, answer) in enumerate(answers):
        assert status == 200, answer
        assert [hyps[0]["tgt"] for hyps in answer["translations"]] == [f"W{i}", f"X{i} Y"]
    assert backend.most == parallel_calls


def test_a_request_that_fails_while_its_other_sentences_wait_leaves_the_batcher_running():
    """"boom" fails in its own batch while "x" of the same request waits for more sentences: the request is a 500,
    the batcher drops "x" and goes on serving."""
    backend = FailingBackend()
    backend.parallel_calls = 2
    server = LiveServer(backend, Settings(max_wait_ms=300, max_batch_tokens=3))  # "boom" and "x" in two batches
    try:
        assert call(server.url, "/translate", {"src": ["boom", "x"]})[0] == 500
        assert call(server.url, "/translate", {"src": ["a"]}) == (200, {"translations": [[{"tgt": "A",
                                                                                             "score": -1.0}]]})
    finally:
        server.close()
    assert ["x"] not in backend.batches


# ---- command line and SIGTERM -----------------------------------------------------------------------------------

def test_command_line_errors(tmp_path, capsys):
    assert main([str(tmp_path / "missing.ckpt")]) == 2
    assert "error: checkpoint not found" in capsys.readouterr().err
    (tmp_path / "model").mkdir()
    try:
        import lightning_nmt.ct2  # noqa: F401
    except ModuleNotFoundError:
        assert main([str(tmp_path / "model")]) == 2
        assert "this installation has no CTranslate2 backend" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main([str(CHECKPOINTS / "basic.ckpt"), "--max-batch-tokens", "0"])
    assert exit_info.value.code == 2 and "expected a positive integer" in capsys.readouterr().err
    assert main([str(CHECKPOINTS / "basic.ckpt"), "--beam-size", "20"]) == 2
    assert "larger than --max-beam-size 16" in capsys.readouterr().err


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return False
    except ConnectionRefusedError:
        return True


def test_sigterm_answers_the_requests_in_flight_then_exits_0(translators):
    """... and a client trickling its body is cut at --shutdown-timeout: the server exits 0 within it."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "lightning_nmt.serve", str(CHECKPOINTS / "attention.ckpt"), "--port", str(port),
         "--max-wait-ms", "5000", "--shutdown-timeout", "6", "--body-timeout", "120"], stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    trickler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    trickling = threading.Event()

    def trickle() -> None:  # a body of 10,000 bytes, one byte every 0.2 s
        try:
            trickler.connect(("127.0.0.1", port))
            trickler.sendall(b"POST /translate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                             b"Content-Length: 10000\r\n\r\n")
            trickling.set()
            while True:
                trickler.sendall(b" ")
                time.sleep(0.2)
        except OSError:  # the server cut it
            pass

    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.communicate()[0]
            try:
                if call(url, "/health", timeout=5)[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the server did not start within 120 s"
            time.sleep(0.2)
        assert call(url, "/translate", {"src": [LINES[0]], "beam_size": 1})[0] == 200  # warm: the first call is slow
        requests = [{"src": [LINES[i], LINES[i + 4]]} for i in range(4)]
        answers: list[Any] = [None] * 4
        threads = [threading.Thread(target=lambda i=i: answers.__setitem__(i, call(url, "/translate", requests[i])))
                   for i in range(4)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while call(url, "/stats")[1]["queued"] < 8:  # all in the queue, waiting up to 5 s for a fuller batch
            assert time.monotonic() < deadline, "the requests did not reach the queue within 30 s"
            time.sleep(0.05)
        threading.Thread(target=trickle, daemon=True).start()
        assert trickling.wait(timeout=30)
        server.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        deadline = time.monotonic() + 3
        while not refused(port):  # no new connections, while the requests in flight are translated at once
            assert time.monotonic() < deadline, "still accepting connections 3 s after SIGTERM"
            time.sleep(0.05)
        for thread in threads:
            thread.join(timeout=120)
        for request, (status, answer) in zip(requests, answers, strict=True):
            assert status == 200, answer
            assert [hyps[0]["tgt"] for hyps in answer["translations"]] == expected(translators, "attention",
                                                                                   request["src"])
        assert server.wait(timeout=60) == 0
        assert time.monotonic() - signalled < 6 + 5, "the trickling client held the shutdown past its deadline"
        log = server.stdout.read()
        assert "stopped: 5 requests, 9 sentences in 2 batches" in log and "stopped by SIGTERM" in log
    finally:
        trickler.close()
        if server.poll() is None:
            server.kill()
            server.wait(timeout=30)


# ---- the page, in a headless browser -----------------------------------------------------------------------------
@pytest.mark.slow
def test_page_translates_typed_text_and_draws_the_heatmap(serve, translators, tmp_path):
    binary = chromium_binary()
    if binary is None:
        pytest.skip("no chromium binary found (apt-get install -y chromium)")
    pytest.importorskip("websockets", reason="the browser test drives chromium over websockets: pip install websockets")
    from PIL import Image

    server = serve("attention")
    sentence = LINES[2]
    with headless_page(binary, tmp_path / "profile") as devtools:
        devtools("Page.navigate", url=server.url + "/")
        devtools.wait_for("document.readyState === 'complete' && "
                          "document.getElementById('model').textContent.includes('attention model')")
        devtools.js("document.getElementById('src').focus()")
        for char in sentence:  # typed key by key
            devtools("Input.dispatchKeyEvent", type="keyDown", text=char, unmodifiedText=char, key=char)
            devtools("Input.dispatchKeyEvent", type="keyUp", key=char)
        assert devtools.js("document.getElementById('src').value") == sentence
        box = devtools.js("JSON.stringify(document.getElementById('translate').getBoundingClientRect())")
        box = json.loads(box)
        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        for kind in ("mousePressed", "mouseReleased"):
            devtools("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)
        devtools.wait_for("document.body.dataset.state === 'done' && document.querySelector('canvas.heatmap') "
                          "&& document.querySelector('canvas.heatmap').dataset.drawn")
        assert devtools.js("document.querySelector('.sentence .tgt').textContent") == expected(
            translators, "attention", [sentence])[0]
        status, answer = call(server.url, "/translate", {"src": [sentence], "attention": True})
        hyp = answer["translations"][0][0]
        drawn = devtools.js("document.querySelector('canvas.heatmap').dataset.drawn")
        assert drawn == f"{len(hyp['tgt_pieces'])}x{len(hyp['src_pieces'])}"

        shot = devtools("Page.captureScreenshot", format="png")["data"]
        (tmp_path / "page.png").write_bytes(base64.b64decode(shot))
        image = Image.open(io.BytesIO(base64.b64decode(shot))).convert("RGB")
        pixels = list(image.getdata())
        non_white = sum(1 for p in pixels if min(p) < 235)
        colourful = sum(1 for r, g, b in pixels if max(r, g, b) - min(r, g, b) > 60)  # viridis cells, not text
        assert non_white > 0.02 * len(pixels), f"the screenshot is (nearly) blank: {non_white} non-white pixels"
        cells = len(hyp["tgt_pieces"]) * len(hyp["src_pieces"])
        assert colourful > cells * 100, f"no heatmap in the screenshot: {colourful} coloured pixels"
        if os.environ.get("LNMT_SCREENSHOT"):
            Path(os.environ["LNMT_SCREENSHOT"]).write_bytes(base64.b64decode(shot))
