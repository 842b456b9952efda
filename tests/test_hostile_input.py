"""Hostile input against a real `bentoml serve` with an API key: every row gets its documented status and a JSON
error, the server keeps serving, and its memory does not grow when the table is sent again and again."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import psutil
import pytest

from tests.conftest import FIXTURE_MODEL_ID, QWEN3_VL_ID, RunningServer, running_server
from tests.fixture_images import GOOD, b64, bomb, png, png_claiming

KEY = "hostile-input-key"
AUTH = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
AUTH_LINE = f"Authorization: Bearer {KEY}"


@dataclass(frozen=True)
class Case:
    name: str
    body: bytes
    status: int
    path: str = "/v1/rerank"
    headers: dict[str, str] = field(default_factory=lambda: dict(AUTH))
    error: str | None = None  # a fragment of the error message
    seconds: float = 10.0  # the answer must come this fast


def _json(value: object) -> bytes:
    return json.dumps(value).encode()


def _tei_shape(body: object) -> bool:
    return isinstance(body, dict) and isinstance(body.get("error"), str) and "error_type" in body


def _vllm_shape(body: object) -> bool:
    return isinstance(body, dict) and {"message", "type", "code"} <= set(body.get("error", {}))


OK = {"query": "q", "documents": ["a", "b"]}
CASES = [
    Case("malformed JSON", b'{"query": "q", "documents": [', 400, error="JSON"),
    Case("not JSON at all", b"query=q&documents=a", 400),
    Case("documents is a string", _json({"query": "q", "documents": "abc"}), 400, error="documents"),
    Case("numbers in documents", _json({"query": "q", "documents": [1, 2.5]}), 400, error="documents"),
    Case("top_n a string", _json({**OK, "top_n": "three"}), 400, error="top_n"),
    Case("top_n negative", _json({**OK, "top_n": -1}), 400, error="top_n"),
    Case("query missing", _json({"documents": ["a"]}), 400, error="query"),
    Case("query null", _json({"query": None, "documents": ["a"]}), 400, error="query"),
    Case("documents empty", _json({"query": "q", "documents": []}), 400, error="must not be empty"),
    Case("100,000 documents", _json({"query": "q", "documents": ["d"] * 100_000}), 400, error="limit of 1000"),
    Case("a 10 MB document", _json({"query": "q", "documents": ["word " * 2_000_000, "b"]}), 200, seconds=20),
    Case("a 5 MB query", _json({"query": "q " * 2_500_000, "documents": ["a"]}), 200, seconds=20),
    Case("invalid UTF-8", b'{"query": "q\xff\xfe", "documents": ["\xc3\x28"]}', 400),
    Case("NUL bytes", _json({"query": "q\u0000q", "documents": ["a\u0000b", "\u0000"]}), 200),
    Case("lone surrogate escape", b'{"query": "\\ud800", "documents": ["a"]}', 200),
    Case("model path traversal", _json({**OK, "model": "../../etc/passwd"}), 404, error="does not exist"),
    Case("model absolute path", _json({**OK, "model": "/etc/passwd"}), 404, error="does not exist"),
    Case("model URL", _json({**OK, "model": "http://127.0.0.1:9/evil"}), 404, error="does not exist"),
    Case(
        "model tag of no stored version",
        _json({**OK, "model": "test-org--mini-reranker:0f0f0f0f0f0f0f0f"}),
        404,
        error="does not exist",
    ),  # fmt: skip
    Case("a 50 MB body", b'{"query": "' + b"x" * (50 * 2**20) + b'"}', 413, error="larger than"),
    Case("no Authorization", _json(OK), 401, headers={"Content-Type": "application/json"}),
    Case("wrong key", _json(OK), 401, headers={**AUTH, "Authorization": "Bearer wrong"}),
    Case("malformed Authorization", _json(OK), 401, headers={**AUTH, "Authorization": "Basic Og=="}),
    Case("key without scheme", _json(OK), 401, headers={**AUTH, "Authorization": KEY}),
    Case(
        "batchable API without a key", _json({"pairs": []}), 401, "/score_pairs", {"Content-Type": "application/json"}
    ),
    Case("TEI texts a number", _json({"query": "q", "texts": 5}), 422, "/rerank", error="texts"),
    Case("TEI texts empty", _json({"query": "q", "texts": []}), 422, "/rerank"),
    # A TEI client gets TEI's error shape even when the request is refused before it is parsed.
    Case(
        "TEI without a key", _json({"query": "q", "texts": ["a"]}), 401, "/rerank", {"Content-Type": "application/json"}
    ),
    Case("TEI malformed JSON", b'{"query": "q", "texts": ["a",', 422, "/rerank", error="not valid JSON"),
    Case("TEI 50 MB body", b'{"query": "q", "texts": ["' + b"x" * (50 * 2**20) + b'"]}', 413, "/rerank"),
    Case("score lists of unequal length", _json({"text_1": ["a", "b"], "text_2": ["c", "d", "e"]}), 400, "/score"),
    Case("truncate_prompt_tokens above max_length", _json({**OK, "truncate_prompt_tokens": 10**6}), 400),
    Case("unknown route", _json(OK), 404, "/v1/nothing-here"),
]
# Images: to a text model, and bad or hostile ones to a multimodal reranker.
VL = {"model": QWEN3_VL_ID, "query": "q"}
_IMAGE_PART = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + b64(png(1100, 1400))}}
CASES += [
    Case("an image for a text model", _json({"query": "q", "documents": [{"image": b64(GOOD)}]}), 400,
         error=FIXTURE_MODEL_ID),
    Case("an image", _json({**VL, "documents": ["a", {"text": "b", "image": b64(GOOD)}]}), 200),
    Case("undecodable image", _json({**VL, "documents": [{"image": b64(b"\x89PNG not really")}]}), 400,
         error="documents.0.image"),
    Case("decompression bomb", _json({**VL, "documents": [{"image": b64(bomb())}]}), 400,
         error="RERANK_MAX_IMAGE_PIXELS"),
    Case("header of 10 billion pixels", _json({**VL, "documents": [{"image": b64(png_claiming(10**5, 10**5))}]}), 400,
         error="documents.0.image"),
    Case("a 1:5000 image", _json({**VL, "documents": [{"image": b64(png_claiming(5000, 1))}]}), 400, error="ratio"),
    Case("an 11 MB image", _json({**VL, "documents": [{"image": "A" * (15 * 2**20)}]}), 400,
         error="RERANK_MAX_IMAGE_BYTES"),
    Case("33 images", _json({**VL, "documents": [{"image": b64(GOOD)}] * 33}), 400,
         error="RERANK_MAX_IMAGES_PER_REQUEST"),
    Case("an image URL", _json({**VL, "documents": [{"image": "http://169.254.169.254/latest"}]}), 400,
         error="RERANK_IMAGE_URLS"),
    Case("a pair of 7 images of 1,280 tokens", _json({**VL, "documents": [{"content": [_IMAGE_PART] * 7}]}), 400,
         error="over the model's limit of 8,197"),
]  # fmt: skip


@pytest.fixture(scope="module")
def guarded(stored_fixture, stored_vl, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    env = {"RERANK_DEFAULT_MODEL": FIXTURE_MODEL_ID, "RERANK_API_KEY": KEY}
    with running_server(tmp_path_factory.mktemp("hostile") / "serve.log", env) as running:
        yield running


def send(server: RunningServer, case: Case) -> httpx.Response:
    return httpx.post(f"{server.url}{case.path}", content=case.body, headers=case.headers, timeout=120)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_hostile_input_gets_its_documented_answer(guarded, case: Case) -> None:
    started = time.perf_counter()
    response = send(guarded, case)
    assert time.perf_counter() - started < case.seconds
    assert response.status_code == case.status, response.text[:500]
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    if case.status >= 400:
        assert _tei_shape(body) if case.path == "/rerank" else _vllm_shape(body), body
        if case.error:
            assert case.error in json.dumps(body), body
    # ... and the server keeps serving.
    after = httpx.post(f"{guarded.url}/v1/rerank", json=OK, headers=AUTH, timeout=60)
    assert after.status_code == 200 and len(after.json()["results"]) == 2


def _raw_post(server: RunningServer, headers: list[str], body: bytes) -> tuple[int, bytes]:
    """A request written byte by byte (httpx will not send conflicting framing): its status and body."""
    head = "".join(f"{line}\r\n" for line in ["POST /v1/rerank HTTP/1.1", f"Host: 127.0.0.1:{server.port}", *headers])
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as connection:
        connection.sendall(head.encode() + b"\r\n" + body)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
            head_end = answer.find(b"\r\n\r\n")
            if head_end > 0:
                length = re.search(rb"content-length: (\d+)", answer[:head_end].lower())
                if length and len(answer) >= head_end + 4 + int(length.group(1)):
                    break
    status = int(answer.split(b" ", 2)[1])
    return status, answer[answer.find(b"\r\n\r\n") + 4 :]


def test_a_body_declaring_a_length_and_chunked_framing_is_refused(guarded) -> None:
    """h11 reads such a body as chunked, whatever length it declares: the guard must not trust either header."""
    payload = _json({"query": "q", "documents": ["word " * 4000]})
    chunked = f"{len(payload):x}\r\n".encode() + payload + b"\r\n0\r\n\r\n"
    headers = ["Content-Length: 5", "Transfer-Encoding: chunked", "Content-Type: application/json", AUTH_LINE]
    status, body = _raw_post(guarded, headers, chunked)
    assert status == 400, body[:300]
    assert b"both Content-Length and Transfer-Encoding" in body


def _server_memory(server: RunningServer) -> int:
    process = psutil.Process(server.process.pid)
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)])


def test_memory_does_not_grow_under_repeated_hostile_input(guarded) -> None:
    for case in CASES:  # warm-up: first-time allocations (tokenizer caches, arenas) are not growth
        send(guarded, case)
    baseline = _server_memory(guarded)
    for _ in range(3):
        for case in CASES:
            send(guarded, case)
    grown = _server_memory(guarded) - baseline
    assert grown < 64 * 2**20, f"resident memory grew by {grown / 2**20:.0f} MiB over 3 rounds"
