"""Hardening, round 4 (issue #28): what real RAG applications' client code and a fresh review found, each with its
number in the issue. Each test failed before its fix."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from tests.conftest import (
    FIXTURE_MODEL_ID,
    REPO_ROOT,
    RunningServer,
    free_port,
    routes_client,
    running_server,
    scoring_engine,
)

KEY = "round-4-key"
QUERY = "where do pandas live?"
DOCUMENTS = ["pandas eat bamboo", "python is a language", "the giant panda lives in China"]


@pytest.fixture(scope="module")
def keyed(stored_fixture, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A real `bentoml serve` with an API key, as the clients below meet it."""
    folder = tmp_path_factory.mktemp("round-4")
    env = {"RERANK_DEFAULT_MODEL": FIXTURE_MODEL_ID, "RERANK_API_KEY": KEY}
    with running_server(folder / "serve.log", env) as running:
        yield running


def _auth(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# --- 2. null for an optional field ------------------------------------------------------------------------------

# The least body of each request schema the routes take; a new schema gets a body here, or the walk below fails.
LEAST_BODIES = {
    "RerankRequest": {"query": QUERY, "documents": DOCUMENTS},
    "ScoreRequest": {"queries": QUERY, "documents": DOCUMENTS},
}


def _optional_fields(client, schema_name: str) -> list[str]:
    schema = client.get("/openapi.json").json()["components"]["schemas"][schema_name]
    return sorted(set(schema["properties"]) - set(schema.get("required", [])))


def test_2_null_for_any_optional_field_is_the_default_on_every_route(client) -> None:
    """Xinference's client sends `"return_documents": null` (and other nulls) on every call its caller left unset."""
    walked: list[tuple[str, str]] = []
    for path, item in client.get("/openapi.json").json()["paths"].items():
        body = item.get("post", {}).get("requestBody", {}).get("content", {}).get("application/json", {})
        ref = body.get("schema", {}).get("$ref", "")
        if not ref:
            continue
        name = ref.rsplit("/", 1)[-1]
        assert name in LEAST_BODIES, f"{path} takes {name}: add its least body to LEAST_BODIES"
        for field in _optional_fields(client, name):
            if field in LEAST_BODIES[name]:
                continue
            answer = client.post(path, json={**LEAST_BODIES[name], field: None})
            assert answer.status_code == 200, (path, field, answer.text)
            walked.append((path, field))
    assert ("/v1/rerank", "return_documents") in walked and ("/score", "use_activation") in walked
    # /rerank takes either body (its schema is open): both formats, each optional field null.
    tei = {"query": QUERY, "texts": DOCUMENTS}
    for field in ("raw_scores", "return_text", "truncate", "truncation_direction", "model", "instruction"):
        answer = client.post("/rerank", json={**tei, field: None})
        assert answer.status_code == 200 and isinstance(answer.json(), list), (field, answer.text)
    for field in _optional_fields(client, "RerankRequest"):
        answer = client.post("/rerank", json={**LEAST_BODIES["RerankRequest"], field: None})
        assert answer.status_code == 200, (field, answer.text)
    cohere = client.post("/v1/rerank", json={"query": QUERY, "documents": [{"text": "d", "image": None}]})
    assert cohere.status_code == 200, cohere.text


def test_2_null_is_still_refused_for_a_required_field(client) -> None:
    answer = client.post("/v1/rerank", json={"query": None, "documents": DOCUMENTS})
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "query"


def test_2_the_batchable_api_takes_null_options_too(keyed) -> None:
    pair = {"model": FIXTURE_MODEL_ID, "query": "q", "document": "d", "max_length": None, "truncation_side": None}
    answer = httpx.post(f"{keyed.url}/score_pairs", json={"pairs": [pair]}, headers=_auth(), timeout=60)
    assert answer.status_code == 200 and answer.json()[0]["score"] is not None, answer.text


# --- 1. vLLM's /score fields ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("first", "second"), [("queries", "documents"), ("queries", "items"), ("data_1", "data_2")])
def test_1_score_takes_each_pair_of_names_vllm_takes(client, first: str, second: str) -> None:
    expected = client.post("/score", json={"text_1": QUERY, "text_2": DOCUMENTS}).json()["data"]
    one_to_many = client.post("/score", json={first: QUERY, second: DOCUMENTS})
    assert one_to_many.status_code == 200, one_to_many.text
    assert [d["score"] for d in one_to_many.json()["data"]] == pytest.approx([d["score"] for d in expected])
    single = client.post("/v1/score", json={first: QUERY, second: DOCUMENTS[2]}).json()["data"]
    assert [d["score"] for d in single] == pytest.approx([expected[2]["score"]])
    pairwise = client.post("/score", json={first: [QUERY, "a language"], second: DOCUMENTS[1:]}).json()["data"]
    assert pairwise[0]["score"] == pytest.approx(expected[1]["score"]) and len(pairwise) == 2


def test_1_score_refusals_are_worded_for_the_score_body(client) -> None:
    for body in ({"query": QUERY, "documents": DOCUMENTS}, {"queries": QUERY}, {}):
        answer = client.post("/score", json=body)
        message = answer.json()["error"]["message"]
        assert answer.status_code == 400 and '"queries"' in message and 'query": ' not in message, message
    only_first = client.post("/score", json={"queries": QUERY}).json()["error"]
    assert only_first["param"] == "documents"
    unequal = client.post("/score", json={"queries": ["a", "b"], "items": ["c", "d", "e"]}).json()["error"]
    assert unequal["param"] == "queries" and "`items`" in unequal["message"]
    malformed = client.post("/score", content=b"{", headers={"Content-Type": "application/json"}).json()["error"]
    assert '"queries"' in malformed["message"]


# --- 5. Ollama's /api/rerank --------------------------------------------------------------------------------------


def test_5_ollama_clients_rerank_path_answers_like_v1_rerank_sorted(keyed) -> None:
    """Dify's Ollama plugin and LangChain's OllamaRerank POST this body to `{base}/api/rerank`."""
    body = {"model": FIXTURE_MODEL_ID, "query": QUERY, "documents": DOCUMENTS, "top_n": 2, "return_documents": True}
    ollama = httpx.post(f"{keyed.url}/api/rerank", json=body, headers=_auth(), timeout=60)
    assert ollama.status_code == 200, ollama.text
    reference = httpx.post(f"{keyed.url}/v1/rerank", json=body, headers=_auth(), timeout=60).json()
    results = ollama.json()["results"]
    assert [r["index"] for r in results] == [r["index"] for r in reference["results"]]
    assert results[0]["relevance_score"] >= results[1]["relevance_score"]
    assert results[0]["document"]["text"] == DOCUMENTS[results[0]["index"]]
    assert httpx.post(f"{keyed.url}/api/rerank", json=body).status_code == 401


# --- 4. TEI's GET /info ---------------------------------------------------------------------------------------------


def test_4_tei_info_answers_as_tei_does_for_a_reranker_without_a_key(keyed) -> None:
    """Dify's HuggingFace-TEI plugin reads `model_type`'s one key ("reranker") and `max_input_length` before it saves
    a model; RAGFlow's TEI provider sends no key."""
    answer = httpx.get(f"{keyed.url}/info")
    assert answer.status_code == 200, answer.text
    info = answer.json()
    assert info["model_id"] == FIXTURE_MODEL_ID and list(info["model_type"]) == ["reranker"]
    assert info["model_type"]["reranker"]["id2label"] == {"0": "LABEL_0"}
    cards = httpx.get(f"{keyed.url}/v1/models", headers=_auth()).json()["data"]
    assert info["max_input_length"] == next(c["max_length"] for c in cards if c["id"] == FIXTURE_MODEL_ID)
    assert info["max_client_batch_size"] > 0 and isinstance(info["version"], str)


# --- 3. Xinference's model and auth routes --------------------------------------------------------------------------


def test_3_xinference_clients_find_the_model_by_its_short_name_with_keys_on(keyed) -> None:
    """What xinference-client's `RESTfulClient(url, api_key).get_model(uid).rerank(...)` sends, with Dify's
    Xinference provider's Model UID: the short name (Dify refuses a "/" there)."""
    auth = httpx.get(f"{keyed.url}/v1/cluster/auth")  # asked first, without the key
    assert (auth.status_code, auth.json()) == (200, {"auth": True})
    short = FIXTURE_MODEL_ID.rsplit("/", 1)[-1]
    for uid in (short, FIXTURE_MODEL_ID):
        described = httpx.get(f"{keyed.url}/v1/models/{uid}", headers=_auth())
        assert described.status_code == 200, described.text
        assert described.json()["model_type"] == "rerank" and described.json()["id"] == FIXTURE_MODEL_ID
    assert httpx.get(f"{keyed.url}/v1/models/{short}").status_code == 401
    unknown = httpx.get(f"{keyed.url}/v1/models/no-such-reranker", headers=_auth())
    assert unknown.status_code == 404 and "does not exist" in unknown.json()["detail"]
    body = {
        "model": short, "documents": DOCUMENTS, "query": QUERY, "top_n": None, "max_chunks_per_doc": None,
        "return_documents": None, "return_len": None, "kwargs": "{}",
    }  # fmt: skip
    ranked = httpx.post(f"{keyed.url}/v1/rerank", json=body, headers=_auth(), timeout=60)
    assert ranked.status_code == 200, ranked.text
    results = ranked.json()["results"]
    assert len(results) == 3 and results[0]["relevance_score"] >= results[-1]["relevance_score"]


def test_3_the_docs_tell_dify_users_to_type_the_short_name() -> None:
    text = (REPO_ROOT / "docs" / "integrations.md").read_text(encoding="utf-8")
    xinference = text[text.index("The Xinference provider") :].split("\n\n", 1)[0]
    assert "short name\n`bge-reranker-base`" in xinference and "`BAAI/" not in xinference


# --- 10. Retry-After and the back-off -------------------------------------------------------------------------------


def test_10_a_model_in_its_load_back_off_says_the_real_wait_and_no_server_path(
    stored_fixture, fixture_model_dir, monkeypatch, caplog
) -> None:
    from rerank_server.importer.sources import import_from_folder
    from rerank_server.models import failures as failures_module

    monkeypatch.setattr(failures_module, "LOAD_RETRY_BACKOFF_S", (15.0,))
    model_id = "test-org/unreadable-weights"
    stored = import_from_folder(model_id, fixture_model_dir).stored
    with scoring_engine() as engine:
        load = engine.registry._factory

        def unreadable(stored_model):
            if stored_model.model_id == model_id:
                raise OSError(f"[Errno 5] Input/output error: '{stored_model.path}/model.safetensors'")
            return load(stored_model)

        engine.registry._factory = unreadable
        with routes_client(engine) as client, caplog.at_level(logging.ERROR, logger="bentoml"):
            for _ in range(2):  # the failed load, then a refusal within its back-off
                answer = client.post("/v1/rerank", json={"model": model_id, "query": "q", "documents": ["d"]})
                assert answer.status_code == 503
                assert answer.headers["retry-after"] == "15", answer.headers
                assert "next try is in 15 s" in answer.json()["error"]["message"]
                assert str(stored.path) not in answer.text and os.environ["BENTOML_HOME"] not in answer.text
        assert str(stored.path) in caplog.text, "the log keeps where the model is"


# --- 11. Clickjacking and caching headers ---------------------------------------------------------------------------


def test_11_no_page_can_be_framed_and_the_root_varies_by_accept(client) -> None:
    for path in ("/docs", "/bentoml", "/playground"):
        page = client.get(path)
        assert page.status_code == 200, path
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"], path
        assert page.headers["x-frame-options"] == "DENY", path
    for accept in ("text/html", "application/json"):
        root = client.get("/", headers={"accept": accept})
        assert root.status_code == 200 and "accept" in root.headers.get("vary", "").lower(), accept


# --- 12. evaluate.py's input --------------------------------------------------------------------------------------


def _beir_folder(tmp_path: Path) -> Path:
    from tests.test_evaluate import DATA

    folder = tmp_path / "beir"
    shutil.copytree(DATA / "beir", folder)
    (folder / "run.trec").write_text("q1 Q0 d1 1 2.0 bm25\n", encoding="utf-8")
    return folder


def test_12_qrels_that_are_not_utf8_fail_in_one_line(tmp_path: Path) -> None:
    from tests.test_evaluate import assert_one_line_error, evaluate

    folder = _beir_folder(tmp_path)
    (folder / "qrels" / "test.tsv").write_bytes("query-id\tcorpus-id\tscore\nq1\td1\t1\n# é\n".encode("latin-1"))
    done = evaluate(folder, "--candidates", folder / "run.trec", "--base-url", "http://127.0.0.1:9")
    assert_one_line_error(done, r"test\.tsv: not UTF-8 text")


def test_12_files_saved_with_a_byte_order_mark_read_as_without(tmp_path: Path) -> None:
    from rerank_server.evaluation.data import load
    from tests.test_evaluate import DATA

    jsonl = tmp_path / "data.jsonl"
    jsonl.write_bytes(b"\xef\xbb\xbf" + (DATA / "en.jsonl").read_bytes())
    assert len(load(jsonl).queries) == len(load(DATA / "en.jsonl").queries)
    folder = _beir_folder(tmp_path)
    for name in ("qrels/test.tsv", "queries.jsonl", "corpus.jsonl", "run.trec"):
        (folder / name).write_bytes(b"\xef\xbb\xbf" + (folder / name).read_bytes())
    assert load(folder, folder / "run.trec").queries[0].qid == "q1"


def test_12_evaluate_honours_rerank_base_url_as_the_clients_do() -> None:
    from tests.test_evaluate import DATA, assert_one_line_error

    port = free_port()
    env = {**os.environ, "RERANK_BASE_URL": f"http://127.0.0.1:{port}"}
    done = subprocess.run(
        [sys.executable, "evaluate.py", str(DATA / "en.jsonl")], cwd=REPO_ROOT, env=env, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert_one_line_error(done, rf"cannot reach http://127\.0\.0\.1:{port}")


# --- 8. A catalogue entry and the folder's own limit ------------------------------------------------------------


def test_8_a_smaller_copy_under_a_catalogue_id_keeps_its_own_limit_and_long_documents_work(
    stored_fixture, fixture_model_dir
) -> None:
    """A MiniLM folder (512 positions) under bge-reranker-v2-m3's id (8,192 in the catalogue): a fine-tune or a
    distilled copy. A long document is truncated to what the folder takes, not a 500 from the forward pass."""
    from rerank_server.importer.sources import import_from_folder

    stored = import_from_folder("BAAI/bge-reranker-v2-m3", fixture_model_dir).stored
    assert stored.max_length == 512
    with scoring_engine() as engine, routes_client(engine, raise_server_exceptions=False) as client:
        long_document = " ".join(["pandas live in the bamboo forests of China"] * 400)
        body = {"model": stored.model_id, "query": QUERY, "documents": [long_document, "short"]}
        answer = client.post("/v1/rerank", json=body)
        assert answer.status_code == 200, answer.text
        assert answer.json()["usage"]["total_tokens"] <= 512 + 20


# --- 9. An internal error ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def breakable(stored_fixture, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server whose model forward fails while the test's flag file exists (tests/faults)."""
    folder = tmp_path_factory.mktemp("breakable")
    env = {
        "RERANK_DEFAULT_MODEL": FIXTURE_MODEL_ID, "RERANK_TEST_BREAK_FILE": str(folder / "break-the-device"),
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "tests" / "faults"), str(REPO_ROOT)]),
    }  # fmt: skip
    with running_server(folder / "serve.log", env) as running:
        running.break_file = folder / "break-the-device"  # type: ignore[attr-defined]
        yield running


def _exchange(sock: socket.socket, body: bytes) -> tuple[int, dict[str, str], bytes]:
    """One POST /v1/rerank on an open keep-alive connection: status, headers, body."""
    sock.sendall(
        b"POST /v1/rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    while len(rest) < int(headers["content-length"]):
        rest += sock.recv(65536)
    return int(lines[0].split()[1]), headers, rest


def test_9_an_internal_error_is_one_log_line_and_a_500_on_a_connection_kept_open(breakable) -> None:
    breakable.break_file.write_text("broken")
    with socket.create_connection(("127.0.0.1", breakable.port), timeout=60) as sock:
        try:
            status, headers, body = _exchange(sock, b'{"query": "q", "documents": ["broken device"]}')
        finally:
            breakable.break_file.unlink()
        assert status == 500 and json.loads(body)["error"]["type"] == "InternalServerError", body
        assert headers.get("connection", "").lower() != "close"
        status, _, body = _exchange(sock, b'{"query": "q", "documents": ["the device works again"]}')
        assert status == 200, body  # the same connection
    request_id = headers["x-request-id"]
    log = breakable.log.read_text()
    assert "Exception in ASGI application" not in log and "Traceback" not in log, log[-3000:]
    lines = [line for line in log.splitlines() if "Internal error" in line]
    assert len(lines) == 1 and request_id in lines[0] and "RuntimeError" in lines[0], lines


# --- 6. A model load and BentoML's dispatcher ---------------------------------------------------------------------

SLOW_MODEL = "test-org/slow-storage"


@pytest.fixture(scope="module")
def slow_storage(
    stored_fixture, fixture_model_dir, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """A server on which every load of SLOW_MODEL takes 6 s longer (tests/faults)."""
    from rerank_server.importer.sources import import_from_folder

    import_from_folder(SLOW_MODEL, fixture_model_dir)
    folder = tmp_path_factory.mktemp("slow-storage")
    env = {
        "RERANK_DEFAULT_MODEL": FIXTURE_MODEL_ID, "RERANK_TEST_SLOW_LOAD": f"{SLOW_MODEL}=6",
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "tests" / "faults"), str(REPO_ROOT)]),
    }  # fmt: skip
    with running_server(folder / "serve.log", env) as running:
        yield running


def test_6_a_model_load_does_not_hold_up_score_pairs_calls_for_loaded_models(slow_storage) -> None:
    url = f"{slow_storage.url}/score_pairs"

    def call(model: str) -> tuple[float, httpx.Response]:
        started = time.monotonic()
        pair = {"model": model, "query": "q", "document": "d"}
        answer = httpx.post(url, json={"pairs": [pair]}, timeout=60)
        return time.monotonic() - started, answer

    for _ in range(12):  # past BentoML's training dispatches, one at a time
        assert call(FIXTURE_MODEL_ID)[1].status_code == 200
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        loading = pool.submit(call, SLOW_MODEL)
        time.sleep(0.5)
        elapsed, answer = call(FIXTURE_MODEL_ID)
        assert answer.status_code == 200 and answer.json()[0]["score"] is not None
        assert elapsed < 2.0, f"a one-pair call for a loaded model took {elapsed:.1f} s behind another model's load"
        slow_elapsed, slow_answer = loading.result()
    assert slow_answer.status_code == 200 and slow_elapsed > 5


def test_6_time_in_bentomls_dispatcher_counts_against_the_deadline(stored_fixture) -> None:
    from rerank_server.api.pairs import CallerPair, score_pairs
    from rerank_server.errors import DeadlineExceededError

    with scoring_engine(request_timeout_s=5.0) as engine:
        engine.registry.get(FIXTURE_MODEL_ID)
        pair = CallerPair(model=FIXTURE_MODEL_ID, query="q", document="d")
        pair._arrived = time.monotonic() - 5.0  # it waited its whole deadline for a dispatch
        with pytest.raises(DeadlineExceededError):
            asyncio.run(score_pairs(engine, [pair]))


# --- 7. Image URL fetches ---------------------------------------------------------------------------------------


class _CountedImages(BaseHTTPRequestHandler):
    """An image host that counts the fetches it gets; `/slow-*` answers after a second."""

    hits: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.hits.append(self.path)
        if self.path.startswith("/slow-"):
            time.sleep(1.0)
        from tests.fixture_images import GOOD

        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(GOOD)))
        self.end_headers()
        self.wfile.write(GOOD)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture()
def counted_images() -> Iterator[str]:
    _CountedImages.hits = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _CountedImages)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


URL_SETTINGS = {"image_urls": True, "image_urls_allow_private": "127.0.0.0/8", "image_url_timeout_s": 5.0}


def test_7_an_unknown_or_text_only_model_is_refused_before_any_image_is_fetched(stored_fixture, counted_images) -> None:
    documents = [{"image": f"{counted_images}/{i}.png"} for i in range(6)]
    with scoring_engine(**URL_SETTINGS) as engine, routes_client(engine) as client:
        unknown = client.post("/v1/rerank", json={"model": "no-org/no-model", "query": "q", "documents": documents})
        assert unknown.status_code == 404, unknown.text
        text_only = client.post("/v1/rerank", json={"model": FIXTURE_MODEL_ID, "query": "q", "documents": documents})
        assert text_only.status_code == 400 and "ranks text only" in text_only.json()["error"]["message"]
        score = client.post("/score", json={"model": FIXTURE_MODEL_ID, "queries": "q", "documents": documents})
        assert score.status_code == 400
    assert _CountedImages.hits == [], "no image was fetched for a model that cannot take it"


def test_7_image_fetches_stop_when_the_client_leaves(stored_vl, counted_images) -> None:
    from rerank_server.api.app import app
    from rerank_server.api.dependencies import current_engine
    from tests.conftest import QWEN3_VL_ID

    documents = [{"image": f"{counted_images}/slow-{i}.png"} for i in range(24)]
    body = json.dumps({"model": QWEN3_VL_ID, "query": "q", "documents": documents}).encode()
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/v1/rerank", "raw_path": b"/v1/rerank", "root_path": "", "query_string": b"",
        "headers": [(b"content-type", b"application/json")], "client": ("127.0.0.1", 1), "server": ("test", 80),
    }  # fmt: skip
    statuses: list[int] = []

    async def leaving_client() -> None:
        sent = False

        async def receive() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.sleep(0.5)  # the client gives up
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        await app(scope, receive, send)

    with scoring_engine(**URL_SETTINGS) as engine:
        app.dependency_overrides[current_engine] = lambda: engine
        try:
            asyncio.run(leaving_client())
        finally:
            app.dependency_overrides.clear()
    time.sleep(1.5)  # what would start after the client left has had time to
    assert statuses == [499]
    assert len(_CountedImages.hits) <= 8, f"{len(_CountedImages.hits)} fetches: they went on after the client left"


# --- 14. Image files and the image-memory bound -----------------------------------------------------------------


def _image_memory_refusals() -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("rerank_rejected_total", {"reason": "image_memory"}) or 0.0


def test_14_image_files_are_reserved_before_they_are_read_and_refusals_are_counted(stored_vl, counted_images) -> None:
    from tests.conftest import QWEN3_VL_ID
    from tests.fixture_images import GOOD, b64

    with scoring_engine(**URL_SETTINGS, max_image_memory_mb=1) as engine, routes_client(engine) as client:
        holding = engine.image_memory.reserve(2**20 - 1024)  # another request's images
        before = _image_memory_refusals()
        documents = [{"image": f"{counted_images}/{i}.png"} for i in range(4)]
        answer = client.post("/v1/rerank", json={"model": QWEN3_VL_ID, "query": "q", "documents": documents})
        assert answer.status_code == 429 and "RERANK_MAX_IMAGE_MEMORY_MB" in answer.text, answer.text
        assert _CountedImages.hits == [], "refused before any file was fetched"
        inline = client.post(
            "/v1/rerank", json={"model": QWEN3_VL_ID, "query": "q", "documents": [{"image": b64(GOOD)}]}
        )
        assert inline.status_code == 429
        assert _image_memory_refusals() == before + 2, "the bound's refusals count in rerank_rejected_total"
        holding()
        answer = client.post("/v1/rerank", json={"model": QWEN3_VL_ID, "query": "q", "documents": documents})
        assert answer.status_code == 200, answer.text
        assert engine.image_memory.held == 0, "the files' reservation is given back when the request ends"


# --- 13. Qwen3-VL names the real cause of an overlong text ------------------------------------------------------


def test_13_a_text_of_special_tokens_is_not_blamed_on_images(stored_vl) -> None:
    from tests.conftest import QWEN3_VL_ID

    with scoring_engine() as engine, routes_client(engine) as client:
        document = "<|im_start|>" * 9000  # the truncation keeps every special token, as the reference's does
        answer = client.post("/v1/rerank", json={"model": QWEN3_VL_ID, "query": "q", "documents": ["fine", document]})
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert "images take" not in error["message"] and "fewer or smaller images" not in error["message"], error
        assert "special tokens" in error["message"] and error["param"] == "documents", error
        fine = client.post("/v1/rerank", json={"model": QWEN3_VL_ID, "query": "q", "documents": ["a <|im_start|> b"]})
        assert fine.status_code == 200, fine.text
