"""Hardening, round 3 (issue #23): each defect a code review or a real client package found, reproduced, with its
number. Each test failed before the fix."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from rerank_server.errors import DeadlineExceededError, ModelLoadError, QueueFullError
from tests.conftest import FIXTURE_MODEL_ID, REPO_ROOT, RunningServer, routes_client, running_server, scoring_engine
from tests.test_batcher import GatedScorer, pairs

KEY = "hardening-key"
MAX_DOCUMENTS = 50


@pytest.fixture(scope="module")
def keyed(stored_fixture, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server with an API key, a small document limit and a device that breaks when the test says so."""
    folder = tmp_path_factory.mktemp("keyed")
    env = {
        "RERANK_DEFAULT_MODEL": FIXTURE_MODEL_ID, "RERANK_API_KEY": KEY, "RERANK_MAX_DOCUMENTS": str(MAX_DOCUMENTS),
        "RERANK_TEST_BREAK_FILE": str(folder / "break-the-device"),
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "tests" / "faults"), str(REPO_ROOT)]),
    }  # fmt: skip
    with running_server(folder / "serve.log", env) as running:
        running.break_file = folder / "break-the-device"  # type: ignore[attr-defined]
        yield running


def _auth(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _requests_by_model(url: str) -> dict[str, float]:
    counts: dict[str, float] = {}
    text = httpx.get(f"{url}/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "rerank_requests_total" and sample.labels.get("route") == "/score_pairs":
                counts[sample.labels["model"]] = counts.get(sample.labels["model"], 0) + sample.value
    return counts


# --- 1. Unbounded metric labels from /score_pairs ----------------------------------------------------------------


def test_1_score_pairs_labels_its_metrics_with_resolved_model_ids_only(keyed) -> None:
    for i in range(20):
        pair = {"model": f"random-name-{i}", "query": "q", "document": "d"}
        answer = httpx.post(f"{keyed.url}/score_pairs", json={"pairs": [pair]}, headers=_auth(), timeout=60)
        assert answer.status_code == 200 and "does not exist" in answer.json()[0]["error"]
    long_name = {"model": "m" * 5000, "query": "q", "document": "d"}
    assert httpx.post(f"{keyed.url}/score_pairs", json={"pairs": [long_name]}, headers=_auth()).status_code == 400
    mixed = [
        {"model": "mini-reranker", "query": "q", "document": "d"},
        {"model": "nope", "query": "q", "document": "d"},
    ]
    assert httpx.post(f"{keyed.url}/score_pairs", json={"pairs": mixed}, headers=_auth(), timeout=60).status_code == 200
    labels = set(_requests_by_model(keyed.url))
    assert labels <= {FIXTURE_MODEL_ID, "unknown", "several", ""}, labels


# --- 2. /score_pairs limits, sibling groups, quadratic queue removals -------------------------------------------


def test_2_score_pairs_obeys_the_document_limit(keyed) -> None:
    def call(count: int) -> httpx.Response:
        pairs = [{"model": FIXTURE_MODEL_ID, "query": "q", "document": f"d{i}"} for i in range(count)]
        return httpx.post(f"{keyed.url}/score_pairs", json={"pairs": pairs}, headers=_auth(), timeout=120)

    assert call(MAX_DOCUMENTS * 4).status_code == 400
    assert call(MAX_DOCUMENTS).status_code == 200


def test_2_a_refused_group_cancels_the_other_groups_of_its_call(stored_fixture) -> None:
    from rerank_server.api.pairs import score_pairs
    from rerank_server.api.wire import PairToScore

    scorer = GatedScorer()
    with scoring_engine(max_queue_pairs=4) as engine:
        scorer.gate.clear()
        busy = engine.batcher.submit("busy-model", scorer, pairs(1))
        assert scorer.started.wait(5)
        engine.batcher.submit("busy-model", scorer, pairs(2))  # one pair waits: the queue is not empty
        small = [PairToScore(model=FIXTURE_MODEL_ID, query="q", document="fits")]
        large = [PairToScore(model=FIXTURE_MODEL_ID, query="q", document=f"d{i}", instruction="x") for i in range(5)]

        async def in_a_server() -> int:  # a server's event loop lives on: nothing cancels the siblings but the call
            with pytest.raises(QueueFullError):
                await score_pairs(engine, small + large)
            for _ in range(50):
                if engine.batcher.queued_pairs <= 1:
                    break
                await asyncio.sleep(0.1)
            return engine.batcher.queued_pairs

        assert asyncio.run(in_a_server()) == 1, "the group that fitted left the queue with its refused sibling"
        scorer.gate.set()
        busy.result(10)


def test_2_a_calls_reservation_is_let_go_once_however_its_pairs_leave() -> None:
    """BentoML may hand a call's pairs over in two dispatches, and the call may end in between (its first dispatch
    refused): what it held is let go once, and the queue bound never counts less than what waits."""
    from rerank_server.api.pairs import Held
    from rerank_server.engine.batcher import ContinuousBatcher

    batcher = ContinuousBatcher(max_batch_pairs=256, max_queue_pairs=1000)
    try:
        batcher.reserve(600)
        held = Held(batcher, 600)
        held.hand_over(424)  # the first dispatch
        held.release()  # the call ended (its first dispatch was refused)
        held.hand_over(176)  # the rest, dispatched later for nobody
        held.release()
        batcher.reserve(600)  # nothing but this waits now: it is taken
        with pytest.raises(QueueFullError):
            batcher.reserve(500)  # 600 + 500 > 1,000: the bound holds, it did not drift
        batcher.submit("m", GatedScorer(), pairs(*range(500)))  # the routes see what BentoML's dispatcher holds
    except QueueFullError as refused:
        assert "600 pairs are waiting" in str(refused)
    else:
        raise AssertionError("a route's request must count the pairs BentoML holds")
    finally:
        batcher.close(timeout=10)


def test_2_leaving_the_queue_costs_the_same_however_long_it_is() -> None:
    """Thousands of one-pair requests (one per distinct instruction) leave the queue in linear time."""
    from rerank_server.engine.batcher import ContinuousBatcher

    batcher = ContinuousBatcher(max_batch_pairs=256, max_queue_pairs=100_000)
    scorer = GatedScorer()
    scorer.gate.clear()
    batcher.submit("m", scorer, pairs(1))
    assert scorer.started.wait(5)
    futures = [batcher.submit("m", scorer, pairs(i)) for i in range(40_000)]
    started = time.perf_counter()
    for future in reversed(futures):  # each from the far end of the queue (a deque's remove walks all of it)
        future.cancel()
    elapsed = time.perf_counter() - started
    scorer.gate.set()
    batcher.close(timeout=10)
    assert batcher.queued_pairs == 0
    assert elapsed < 3.0, f"{elapsed:.1f} s to cancel 40,000 queued requests: removals are not O(1)"


# --- 3. Probe paths and large bodies -------------------------------------------------------------------------------


def test_3_probe_paths_answer_other_methods_at_once_without_reading_the_body(keyed) -> None:
    host, port = "127.0.0.1", keyed.port
    for path in ("/healthz", "/readyz", "/metrics"):
        with socket.create_connection((host, port), timeout=5) as sock:
            sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 33000000\r\n\r\n".encode())
            started = time.monotonic()
            answer = sock.recv(4096).decode("latin-1")
            assert time.monotonic() - started < 3
        assert answer.startswith("HTTP/1.1 405"), answer[:200]
        assert "allow: get, head" in answer.lower()
    assert httpx.get(f"{keyed.url}/healthz").status_code == 200
    deadline = time.monotonic() + 5
    while "POST /healthz status=405" not in keyed.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "POST /healthz status=405" in keyed.log.read_text(), "refused probe calls are logged like any request"


# --- 4. The registry loses what it evicts ------------------------------------------------------------------------


class RecordingLoads:
    """Wraps a registry's loader: records each copy it makes and whether it was released."""

    def __init__(self, registry, slow: dict[str, float] | None = None, failing: set[str] | None = None) -> None:
        self.original, self.slow, self.failing = registry._factory, slow or {}, failing or set()
        self.failing_tags: set[str] | None = None  # None: every version of a failing model fails
        self.loaded: list = []
        self.released: list = []
        self.calls: dict[str, int] = {}
        registry._factory = self

    def __call__(self, stored):
        self.calls[stored.model_id] = self.calls.get(stored.model_id, 0) + 1
        time.sleep(self.slow.get(stored.model_id, 0))
        if stored.model_id in self.failing and (self.failing_tags is None or stored.tag in self.failing_tags):
            raise OSError("weights briefly unreadable")
        model = self.original(stored)
        release = model.release

        def recorded_release() -> None:
            self.released.append(model)
            release()

        model.release = recorded_release
        self.loaded.append(model)
        return model


def _loaded_gauge() -> float:
    from prometheus_client import REGISTRY

    return sum(
        sample.value
        for family in REGISTRY.collect()
        if family.name == "rerank_models_loaded"
        for sample in family.samples
    )


def test_4_a_model_replaced_by_its_newer_import_is_released_and_counted_out(stored_fixture, fixture_model_dir) -> None:
    from rerank_server.importer.commit import ImportOptions
    from rerank_server.importer.sources import import_from_folder
    from rerank_server.metrics import get_metrics
    from rerank_server.models.registry import ModelRegistry
    from rerank_server.settings import Settings

    model_id = "test-org/replaced-model"
    import_from_folder(model_id, fixture_model_dir)
    registry = ModelRegistry(Settings(default_model=FIXTURE_MODEL_ID), metrics=get_metrics())
    loads = RecordingLoads(registry)
    registry.get(FIXTURE_MODEL_ID)
    first = registry.get(model_id)
    before = _loaded_gauge()
    import_from_folder(model_id, fixture_model_dir, ImportOptions(force=True))
    registry.refresh()
    second = registry.get(model_id)
    assert second is not first and first in loads.released, "the replaced copy was released"
    assert _loaded_gauge() == before, "rerank_models_loaded counts the replaced copy out"


def test_4_models_a_pass_evicts_without_making_room_stay_loaded(stored_llms, fixture_model_dir) -> None:
    """A pass that unloads idle models and still finds no room must not lose them (not served, never released)."""
    from rerank_server.importer.sources import import_from_folder
    from rerank_server.models.registry import ModelRegistry
    from rerank_server.settings import Settings

    qwen3_id, _ = stored_llms  # a tiny model: unloading it alone cannot make room for a MiniLM
    import_from_folder("test-org/room-needed", fixture_model_dir)
    probe = ModelRegistry(Settings(default_model=FIXTURE_MODEL_ID))
    minilm_bytes = probe._expected_bytes(probe.resolve(FIXTURE_MODEL_ID))
    budget_mb = int(1.5 * minilm_bytes / 2**20)
    registry = ModelRegistry(Settings(default_model=FIXTURE_MODEL_ID, max_model_memory_mb=budget_mb))
    loads = RecordingLoads(registry)
    registry.get(FIXTURE_MODEL_ID)
    registry.get(qwen3_id)  # idle
    with pytest.raises(ModelLoadError):
        registry.get("test-org/room-needed", timeout=0.3)
    kept = [model for model in loads.loaded if any(model is m for m in _loaded(registry))]
    assert all(model in loads.released or model in kept for model in loads.loaded), (
        "every copy the registry made is either still served or was released"
    )


def _loaded(registry) -> list:
    return list(registry._loaded.values())


def test_4_a_newer_import_that_fails_to_load_leaves_the_old_one_serving(stored_fixture, fixture_model_dir) -> None:
    from rerank_server.engine.passes import score_directly
    from rerank_server.importer.commit import ImportOptions
    from rerank_server.importer.sources import import_from_folder
    from rerank_server.models.registry import ModelRegistry
    from rerank_server.settings import Settings

    model_id = "test-org/kept-serving"
    import_from_folder(model_id, fixture_model_dir)
    registry = ModelRegistry(Settings(default_model=FIXTURE_MODEL_ID))
    loads = RecordingLoads(registry)
    registry.get(FIXTURE_MODEL_ID)
    old = registry.get(model_id)
    import_from_folder(model_id, fixture_model_dir, ImportOptions(force=True))
    registry.refresh()
    loads.failing.add(model_id)
    served = registry.get(model_id)
    assert served is old and old not in loads.released
    assert score_directly(served, ["q"], ["d"]).scores, "the old copy still scores"


def test_4_under_a_tight_budget_a_failing_newer_import_brings_the_old_version_back(
    stored_fixture, fixture_model_dir
) -> None:
    """Room for one copy only: the old copy gives way to the newer import, and comes back when that does not load."""
    from rerank_server.engine.passes import score_directly
    from rerank_server.importer.commit import ImportOptions
    from rerank_server.importer.sources import import_from_folder
    from rerank_server.models.registry import ModelRegistry
    from rerank_server.settings import Settings

    model_id = "test-org/tight-budget"
    first = import_from_folder(model_id, fixture_model_dir).stored
    registry = ModelRegistry(Settings(default_model=FIXTURE_MODEL_ID, max_loaded_models=2))
    loads = RecordingLoads(registry)
    registry.get(FIXTURE_MODEL_ID)
    old = registry.get(model_id)
    newer = import_from_folder(model_id, fixture_model_dir, ImportOptions(force=True)).stored
    registry.refresh()
    loads.failing.add(model_id)
    loads.failing_tags = {newer.tag}  # the old version still loads: only the newer one fails
    served = registry.get(model_id)
    assert old in loads.released, "the old copy gave way: the budget holds one copy"
    assert registry.loaded_from(served).tag == first.tag, "the old version is served again"
    assert score_directly(served, ["q"], ["d"]).scores


# --- 5. A passing load failure is remembered forever --------------------------------------------------------------


def test_5_a_failed_load_is_tried_again_after_a_back_off(stored_fixture, fixture_model_dir, monkeypatch) -> None:
    from rerank_server.importer.sources import import_from_folder
    from rerank_server.models import failures as failures_module
    from rerank_server.models.registry import ModelRegistry
    from rerank_server.settings import Settings

    monkeypatch.setattr(failures_module, "LOAD_RETRY_BACKOFF_S", (0.5, 1.0))
    model_id = "test-org/flaky-disk"
    import_from_folder(model_id, fixture_model_dir)
    registry = ModelRegistry(Settings(default_model=FIXTURE_MODEL_ID))
    loads = RecordingLoads(registry, failing={model_id})
    with pytest.raises(ModelLoadError, match=r"next try is in \d+ s"):
        registry.get(model_id)
    with pytest.raises(ModelLoadError):
        registry.get(model_id)
    assert loads.calls[model_id] == 1, "within the back-off, no new load"
    loads.failing.clear()  # the disk is back
    time.sleep(0.6)
    assert registry.get(model_id) is not None
    assert loads.calls[model_id] == 2


# --- 6. The deadline covers preparation -----------------------------------------------------------------------------


def test_6_a_slow_first_load_is_bound_by_the_deadline(stored_fixture, fixture_model_dir) -> None:
    from rerank_server.importer.sources import import_from_folder

    model_id = "test-org/slow-to-load"
    import_from_folder(model_id, fixture_model_dir)
    with scoring_engine(request_timeout_s=1.0) as engine:
        RecordingLoads(engine.registry, slow={model_id: 3.0})
        started = time.monotonic()
        with pytest.raises((DeadlineExceededError, ModelLoadError)):
            asyncio.run(engine.score(model_id, ["q"], ["d"]))
        assert time.monotonic() - started < 2.0


def test_6_requests_waiting_for_a_load_do_not_hold_up_loaded_models(stored_fixture, fixture_model_dir) -> None:
    from rerank_server.importer.sources import import_from_folder

    model_id = "test-org/slow-to-load-b"
    import_from_folder(model_id, fixture_model_dir)
    with scoring_engine() as engine:
        engine.registry.get(FIXTURE_MODEL_ID)
        RecordingLoads(engine.registry, slow={model_id: 4.0})

        async def scenario() -> float:
            waiting = [asyncio.create_task(engine.score(model_id, ["q"], [f"d{i}"])) for i in range(40)]
            await asyncio.sleep(0.3)
            started = time.monotonic()
            await engine.score(FIXTURE_MODEL_ID, ["q"], ["a loaded model answers"])
            elapsed = time.monotonic() - started
            await asyncio.gather(*waiting)
            return elapsed

        assert asyncio.run(scenario()) < 2.0


def test_6_waiting_for_another_callers_load_says_so(stored_fixture, fixture_model_dir) -> None:
    from rerank_server.importer.sources import import_from_folder
    from rerank_server.models.registry import ModelRegistry
    from rerank_server.settings import Settings

    model_id = "test-org/slow-to-load-c"
    import_from_folder(model_id, fixture_model_dir)
    registry = ModelRegistry(Settings(default_model=FIXTURE_MODEL_ID))
    RecordingLoads(registry, slow={model_id: 2.0})
    loading = threading.Thread(target=registry.get, args=(model_id,))
    loading.start()
    time.sleep(0.3)
    with pytest.raises(ModelLoadError, match="still loading"):
        registry.get(model_id, timeout=0.3)
    loading.join(10)


# --- 7. Liveness sees a dead model thread ----------------------------------------------------------------------------


def test_7_liveness_fails_when_the_device_fails_every_call(keyed, tmp_path) -> None:
    assert httpx.get(f"{keyed.url}/livez").status_code == 200
    flag = keyed.break_file
    flag.write_text("broken")
    try:
        answer = httpx.post(f"{keyed.url}/v1/rerank", json={"query": "q", "documents": ["d"]}, headers=_auth())
        assert answer.status_code == 500
        deadline = time.monotonic() + 15
        while httpx.get(f"{keyed.url}/livez").status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.3)
        assert httpx.get(f"{keyed.url}/livez").status_code == 503
        assert httpx.get(f"{keyed.url}/health").status_code == 503
    finally:
        flag.unlink()
    deadline = time.monotonic() + 15
    while httpx.get(f"{keyed.url}/livez").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.3)
    assert httpx.get(f"{keyed.url}/livez").status_code == 200, "a device that works again is alive again"


def test_7_liveness_fails_when_a_model_call_hangs(stored_fixture) -> None:
    scorer = GatedScorer()
    with scoring_engine(stall_timeout_s=0.5) as engine:
        assert engine.liveness.problem() is None
        scorer.gate.clear()
        engine.batcher.submit("hung-model", scorer, pairs(1))
        assert scorer.started.wait(5)
        time.sleep(0.8)
        assert "has run for" in (engine.liveness.problem() or "")
        scorer.gate.set()
        time.sleep(0.2)
        assert engine.liveness.problem() is None


# --- 8. /v1/models drops recipe and backend ------------------------------------------------------------------------


def test_8_models_show_their_recipe_and_backend(client) -> None:
    cards = {card["id"]: card for card in client.get("/v1/models").json()["data"]}
    assert (cards[FIXTURE_MODEL_ID]["recipe"], cards[FIXTURE_MODEL_ID]["backend"]) == ("cross-encoder", "torch")


# --- 9. /score_pairs timeouts and out-of-memory ---------------------------------------------------------------------


def test_9_the_servers_own_timeout_does_not_cut_a_longer_request_deadline() -> None:
    script = "import service; print(service.Reranker.config['traffic']['timeout'])"
    env = {**os.environ, "RERANK_REQUEST_TIMEOUT_S": "400"}
    run = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert float(run.stdout.strip().splitlines()[-1]) > 400


def test_9_out_of_memory_on_score_pairs_is_a_503(stored_fixture, monkeypatch) -> None:
    import torch
    from bentoml.exceptions import BentoMLException

    import service
    from rerank_server.api.wire import PairToScore

    def out_of_memory(*_: object) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory")

    worker = type("Worker", (), {})()  # the service's own method, on a worker holding a test engine
    with scoring_engine() as engine:
        worker.engine = engine
        model = engine.registry.get(FIXTURE_MODEL_ID)
        monkeypatch.setattr(model, "forward", out_of_memory, raising=False)
        pair = PairToScore(model=FIXTURE_MODEL_ID, query="q", document="d")
        with pytest.raises(BentoMLException) as refused:
            asyncio.run(service.Reranker.inner.score_pairs.func(worker, [pair]))
        assert refused.value.error_code == 503


# --- 10. Log noise when a client leaves ------------------------------------------------------------------------------


def test_10_a_client_leaving_during_preparation_logs_no_callback_traceback(stored_fixture, caplog) -> None:
    with scoring_engine() as engine:
        engine.registry.get(FIXTURE_MODEL_ID)
        blocker = threading.Event()
        engine._preparing = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        engine._preparing.submit(blocker.wait, 10)  # the preparation pool is busy: the request waits for a thread

        async def leave() -> None:
            task = asyncio.create_task(engine.score(FIXTURE_MODEL_ID, ["q"], ["d"]))
            await asyncio.sleep(0.2)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

        with caplog.at_level(logging.ERROR, logger="concurrent.futures"):
            asyncio.run(leave())
            blocker.set()
            time.sleep(0.5)
        assert "exception calling callback" not in caplog.text


# --- 11. Temporary files -------------------------------------------------------------------------------------------


def test_11_start_up_reports_never_go_through_a_predictable_path(tmp_path) -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        victim = tmp_path / "victim"
        victim.write_text("untouched")
        predictable = Path(tempfile_dir()) / f"rerank-cannot-serve-{sleeper.pid}"
        predictable.unlink(missing_ok=True)
        predictable.symlink_to(victim)
        script = "from rerank_server.serving.startup import cannot_serve; cannot_serve('no default model')"
        env = {**os.environ, "RERANK_SUPERVISOR_PID": str(sleeper.pid), "PYTHONPATH": str(REPO_ROOT)}
        subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, timeout=60)
        assert victim.read_text() == "untouched"
    finally:
        sleeper.kill()
        predictable.unlink(missing_ok=True)


def tempfile_dir() -> str:
    import tempfile

    return tempfile.gettempdir()


# --- 12. bge-reranker-v2-gemma cuts the end it meant to keep ---------------------------------------------------------


def _passage_text(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids).split("B: ", 1)[1].split("\n", 1)[0]


def test_12_gemma_keeps_the_documents_tail_when_truncating_from_the_left(bge_gemma_dir) -> None:
    from rerank_server.models.loaded import load_folder
    from rerank_server.recipes import TextOptions
    from tests.test_llm_rerankers import long_document

    model = load_folder(bge_gemma_dir, recipe="bge-gemma", max_length=512, causal=True)
    tokenizer = model.recipe.tokenizer
    document = long_document(3000) + " the final words"
    (ids,) = model.encode(["what"], [document], TextOptions(side="left")).input_ids
    assert _passage_text(tokenizer, ids).endswith("the final words")
    document_ids = tokenizer(document, add_special_tokens=False)["input_ids"]
    for count in (40, 511):  # the head it keeps is the head of the document, whole
        (ids,) = model.encode(["what"], [document], TextOptions(max_document_tokens=count)).input_ids
        kept = min(count, 512 - len(tokenizer("B: ", add_special_tokens=False)["input_ids"]))
        assert _passage_text(tokenizer, ids).strip() == tokenizer.decode(document_ids[:kept]).strip()


# --- 13. The Python clients leak other exceptions ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "headers", "body"),
    [
        (503, {"Retry-After": "-1"}, b'{"error": {"message": "busy"}}'),
        (503, {"Retry-After": "nan"}, b'{"error": {"message": "busy"}}'),
        (200, {"Content-Type": "text/html"}, b"<html>captive portal</html>"),
        (200, {}, b'{"data": []}'),
        (200, {}, b'{"results": [{"index": 0}]}'),
    ],
    ids=["Retry-After -1", "Retry-After nan", "a 2xx page that is not JSON", "no results", "a result without a score"],
)
def test_13_every_client_failure_is_a_rerank_error(status: int, headers: dict, body: bytes, monkeypatch) -> None:
    from clients.rerank_client import RerankClient, RerankError, RetryPolicy, SyncRerankClient

    def answer(_: httpx.Request) -> httpx.Response:
        return httpx.Response(status, headers=headers, content=body)

    def sleep(seconds: float) -> None:  # time.sleep's own refusals, without the wait
        if not seconds >= 0:
            raise ValueError(f"sleep length must be non-negative, not {seconds}")

    async def no_sleep(_: float) -> None:
        return None

    monkeypatch.setattr("clients.rerank_client.time.sleep", sleep)
    monkeypatch.setattr("clients.rerank_client.asyncio.sleep", no_sleep)
    policy = RetryPolicy(attempts=2, backoff=0.01)
    sync = SyncRerankClient("http://rerank.test", retry=policy)
    sync._http = httpx.Client(base_url=sync.base_url, transport=httpx.MockTransport(answer))
    with pytest.raises(RerankError):
        sync.rerank("q", ["d"])
    asynchronous = RerankClient("http://rerank.test", retry=policy)
    asynchronous._http = httpx.AsyncClient(base_url=asynchronous.base_url, transport=httpx.MockTransport(answer))
    with pytest.raises(RerankError):
        asyncio.run(asynchronous.rerank("q", ["d"]))


# --- 14. GET / lists the models without a key ----------------------------------------------------------------------


def test_14_the_status_document_needs_the_key_as_v1_models_does(keyed) -> None:
    assert httpx.get(f"{keyed.url}/v1/models").status_code == 401
    assert httpx.get(f"{keyed.url}/", headers={"accept": "application/json"}).status_code == 401
    status = httpx.get(f"{keyed.url}/", headers={"accept": "application/json", **_auth()})
    assert status.status_code == 200 and status.json()["default_model"] == FIXTURE_MODEL_ID
    assert httpx.get(f"{keyed.url}/", headers={"accept": "text/html"}).status_code == 200  # the page holds no list
    # Two Accept headers: the guard and the route decide alike (the page, never the list without a key).
    both = httpx.get(f"{keyed.url}/", headers=[("accept", "application/json"), ("accept", "text/html")])
    assert both.status_code == 200 and both.headers["content-type"].startswith("text/html")


# --- 15. GET /health ----------------------------------------------------------------------------------------------


def test_15_health_answers_as_tei_and_vllm_do(keyed) -> None:
    """AstrBot's TEI provider tests a provider with `GET {base}/health` (with its key, when it has one)."""
    for headers in ({}, _auth()):
        answer = httpx.get(f"{keyed.url}/health", headers=headers)
        assert (answer.status_code, answer.content) == (200, b"")
    assert httpx.head(f"{keyed.url}/health").status_code == 200


def test_15_health_is_503_when_the_server_cannot_serve(engine) -> None:
    from rerank_server.api.app import app
    from rerank_server.api.dependencies import current_health

    with routes_client(engine) as client:
        app.dependency_overrides[current_health] = lambda: lambda: False
        answer = client.get("/health")
    assert answer.status_code == 503 and answer.json()["error_type"] == "Unhealthy"


# --- 16. Jina clients cannot read our errors -----------------------------------------------------------------------


def _jina_clients(url: str, key: str, model: str):
    """LlamaIndex's, LangChain's and Haystack's Jina rerankers, pointed at `url` (docs/integrations.md)."""
    from haystack import Document
    from haystack.utils import Secret
    from haystack_integrations.components.rankers.jina import JinaRanker
    from langchain_community.document_compressors import jina_rerank
    from langchain_core.documents import Document as LangChainDocument
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
    from llama_index.postprocessor.jinaai_rerank import JinaRerank

    texts = ["pandas eat bamboo", "python is a language", "the giant panda lives in China"]

    def llama_index() -> list[float]:
        reranker = JinaRerank(base_url=f"{url}/v1", api_key=key, model=model, top_n=3)
        nodes = [NodeWithScore(node=TextNode(text=text)) for text in texts]
        return [n.score for n in reranker.postprocess_nodes(nodes, query_bundle=QueryBundle("where do pandas live?"))]

    def langchain() -> list[float]:
        jina_rerank.JINA_API_URL = f"{url}/v1/rerank"  # the only way to point it elsewhere: a module constant
        reranker = jina_rerank.JinaRerank(jina_api_key=key, model=model, top_n=3)
        documents = reranker.compress_documents(
            [LangChainDocument(page_content=t) for t in texts], "where do pandas live?"
        )
        return [d.metadata["relevance_score"] for d in documents]

    def haystack() -> list[float]:
        ranker = JinaRanker(model=model, api_key=Secret.from_token(key), top_k=3, base_url=f"{url}/v1/rerank")
        ranked = ranker.run(query="where do pandas live?", documents=[Document(content=t) for t in texts])
        return [d.score for d in ranked["documents"]]

    return {"llama-index": llama_index, "langchain": langchain, "haystack": haystack}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_16_jina_clients_show_the_servers_error_message(keyed) -> None:
    expected = httpx.post(
        f"{keyed.url}/v1/rerank", headers=_auth(), timeout=60,
        json={"query": "where do pandas live?", "documents": ["pandas eat bamboo", "python is a language",
                                                               "the giant panda lives in China"]},
    ).json()["results"]  # fmt: skip
    for name, call in _jina_clients(keyed.url, KEY, FIXTURE_MODEL_ID).items():
        assert call() == pytest.approx([r["relevance_score"] for r in expected], abs=1e-6), name
    for call in _jina_clients(keyed.url, "wrong-key", FIXTURE_MODEL_ID).values():
        with pytest.raises(RuntimeError, match="invalid API key"):
            call()
    for call in _jina_clients(keyed.url, KEY, "no-org/no-such-model").values():
        with pytest.raises(RuntimeError, match="does not exist"):
            call()


def test_2_a_model_failing_on_its_pairs_fails_them_alone_in_a_merged_call(stored_fixture, fixture_model_dir) -> None:
    """BentoML merges calls: a model that raises on its group must not turn every merged caller's answer into a 500."""
    from rerank_server.api.pairs import score_pairs
    from rerank_server.api.wire import PairToScore
    from rerank_server.importer.sources import import_from_folder

    import_from_folder("test-org/failing-model", fixture_model_dir)
    with scoring_engine() as engine:
        broken = engine.registry.get("test-org/failing-model")

        def fails(*_: object) -> None:
            raise RuntimeError("this model cannot take these pairs")

        broken.forward = fails
        pairs = [
            PairToScore(model="test-org/failing-model", query="q", document="d"),
            PairToScore(model=FIXTURE_MODEL_ID, query="q", document="d"),
        ]
        results = asyncio.run(score_pairs(engine, pairs))
    assert results[0].error and "cannot take these pairs" in results[0].error and results[0].score is None
    assert results[1].error is None and results[1].score is not None
