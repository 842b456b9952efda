"""Many models: lazy loading, the loaded-model budget (least recently used out, never one in use), broken models."""

from __future__ import annotations

import asyncio
import gc
import shutil
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from rerank_server.api.pairs import score_pairs
from rerank_server.api.wire import PairToScore
from rerank_server.engine.engine import RerankEngine
from rerank_server.importer.sources import import_from_folder
from rerank_server.models.registry import ModelLoadError, ModelRegistry, UnknownModelError
from rerank_server.settings import Settings
from tests.conftest import FIXTURE_MODEL_ID, routes_client, running_server, scoring_engine

EXTRA = ("test-org/extra-a", "test-org/extra-b", "test-org/extra-c")


@pytest.fixture(scope="module")
def extra_models(fixture_model_dir) -> tuple[str, ...]:
    for model_id in EXTRA:
        import_from_folder(model_id, fixture_model_dir)
    return EXTRA


def test_least_recently_used_model_is_unloaded_and_its_memory_released(stored_fixture, extra_models) -> None:
    registry = ModelRegistry(Settings(default_model=FIXTURE_MODEL_ID, max_loaded_models=3))
    registry.preload(FIXTURE_MODEL_ID)
    a = weakref.ref(registry.get(EXTRA[0]).backend.model)
    registry.get(EXTRA[1])
    registry.get(EXTRA[0])  # EXTRA[1] is now the least recently used
    registry.get(EXTRA[2])
    assert sorted(registry.loaded_ids()) == sorted([FIXTURE_MODEL_ID, EXTRA[0], EXTRA[2]])
    registry.get(EXTRA[1])  # EXTRA[0] goes; the default model never does
    assert sorted(registry.loaded_ids()) == sorted([FIXTURE_MODEL_ID, EXTRA[1], EXTRA[2]])
    gc.collect()
    assert a() is None, "an unloaded model's weights must be freed"


def test_a_model_in_use_is_never_unloaded(stored_fixture, extra_models) -> None:
    registry = ModelRegistry(Settings(default_model=FIXTURE_MODEL_ID, max_loaded_models=2))
    registry.preload(FIXTURE_MODEL_ID)
    with registry.using(registry.resolve(EXTRA[0])):
        # No room while EXTRA[0] is busy: a request for a third model waits (here: up to 0.2 s), then 503.
        with pytest.raises(ModelLoadError, match="budget is full of models in use"):
            registry.get(EXTRA[1], timeout=0.2)
        assert set(registry.loaded_ids()) == {FIXTURE_MODEL_ID, EXTRA[0]}
    # once the batch using EXTRA[0] ends, it makes room
    registry.get(EXTRA[1])
    assert set(registry.loaded_ids()) == {FIXTURE_MODEL_ID, EXTRA[1]}


def test_memory_budget(stored_fixture, extra_models) -> None:
    one_model_mib = ModelRegistry(Settings(default_model=FIXTURE_MODEL_ID)).get(FIXTURE_MODEL_ID).weight_bytes / 2**20
    registry = ModelRegistry(Settings(default_model=FIXTURE_MODEL_ID, max_model_memory_mb=int(one_model_mib * 2.5)))
    for model_id in (FIXTURE_MODEL_ID, *EXTRA):
        registry.get(model_id)
    assert len(registry.loaded_ids()) == 2


def test_concurrent_first_use_loads_once(stored_fixture, extra_models) -> None:
    loads: list[str] = []
    registry = ModelRegistry(Settings(default_model=FIXTURE_MODEL_ID))
    original = registry._factory

    def counting(stored):
        loads.append(stored.model_id)
        return original(stored)

    registry._factory = counting
    threads = [threading.Thread(target=registry.get, args=(EXTRA[2],)) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert loads == [EXTRA[2]]


def test_a_broken_model_fails_alone(stored_fixture, fixture_model_dir, tmp_path) -> None:
    folder = tmp_path / "broken"
    shutil.copytree(fixture_model_dir, folder)
    stored = import_from_folder("test-org/broken-weights", folder).stored
    (stored.path / "model.safetensors").write_bytes(b"not a safetensors file")
    registry = ModelRegistry(Settings(default_model=FIXTURE_MODEL_ID))
    with pytest.raises(ModelLoadError, match="test-org/broken-weights"):
        registry.get("test-org/broken-weights")
    engine = RerankEngine(registry.settings, registry=registry)
    mixed = asyncio.run(score_pairs(engine, 
        [PairToScore(model="test-org/broken-weights", query="q", document="d"),
         PairToScore(model=FIXTURE_MODEL_ID, query="q", document="d")]
    ))  # fmt: skip
    assert mixed[0].error and "could not be loaded" in mixed[0].error and mixed[0].score is None
    assert mixed[1].error is None and mixed[1].score is not None
    with routes_client(engine) as client:
        broken = client.post("/v1/rerank", json={"query": "q", "documents": ["d"], "model": "test-org/broken-weights"})
        assert broken.status_code == 503
        assert "test-org/broken-weights" in broken.json()["error"]["message"]
        assert client.post("/v1/rerank", json={"query": "q", "documents": ["d"]}).status_code == 200
    engine.close()


def test_unknown_models_are_reported_with_the_available_ones(stored_fixture) -> None:
    registry = ModelRegistry(Settings(default_model=FIXTURE_MODEL_ID))
    with pytest.raises(UnknownModelError) as caught:
        registry.resolve("../../etc/passwd")
    assert FIXTURE_MODEL_ID in caught.value.available


def test_settings_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("RERANK_DEFAULT_MODEL", "bge-reranker-large")
    monkeypatch.setenv("RERANK_PRELOAD", " bge-reranker-v2-m3, BAAI/bge-reranker-large ,my-org/x,")
    monkeypatch.setenv("RERANK_DTYPE", "bfloat16")
    monkeypatch.setenv("RERANK_API_KEY", "one, two")
    settings = Settings()
    assert settings.default_model == "bge-reranker-large"  # names are resolved by the store, as a request's are
    assert settings.preload_names == ["bge-reranker-v2-m3", "BAAI/bge-reranker-large", "my-org/x"]
    assert settings.dtype == "bfloat16" and settings.api_keys == ["one", "two"]
    monkeypatch.setenv("RERANK_DTYPE", "float8")
    with pytest.raises(ValueError):
        Settings()


def test_the_dtype_setting_reaches_the_model(stored_fixture) -> None:
    import torch

    registry = ModelRegistry(Settings(default_model=FIXTURE_MODEL_ID, device="cpu", dtype="bfloat16"))
    scorer = registry.get(FIXTURE_MODEL_ID)
    assert next(scorer.backend.model.parameters()).dtype == torch.bfloat16
    engine = RerankEngine(registry.settings, registry=registry)
    pair = PairToScore(model=FIXTURE_MODEL_ID, query="q", document="d")
    assert asyncio.run(score_pairs(engine, [pair]))[0].score is not None
    engine.close()


def test_an_unknown_default_stops_start_up_and_an_unknown_preload_is_skipped(stored_fixture) -> None:
    registry = ModelRegistry(Settings(default_model=FIXTURE_MODEL_ID))
    assert registry.preload(FIXTURE_MODEL_ID, ["my-org/not-imported"]) == ["my-org/not-imported"]
    assert registry.loaded_ids() == [FIXTURE_MODEL_ID]
    with pytest.raises(UnknownModelError, match="my-org/not-imported"):
        ModelRegistry(Settings(default_model="my-org/not-imported")).preload("")


def test_the_token_budget_defaults_by_device_and_can_be_set(stored_fixture) -> None:
    from rerank_server.engine.passes import default_token_budget

    assert (default_token_budget("cuda"), default_token_budget("cuda:1"), default_token_budget("cpu")) == (
        16_384, 16_384, 2_048,
    )  # fmt: skip
    with scoring_engine() as engine:  # unset: the device's default, 2,048 on this CPU
        assert engine.batcher.token_budget is None
        assert default_token_budget(engine.registry.get(FIXTURE_MODEL_ID).device) == 2_048
    with scoring_engine(token_budget=4096) as chosen:
        assert chosen.batcher.token_budget == 4096


def test_a_model_named_in_any_spelling_stays_loaded_while_its_work_is_queued(
    stored_fixture, extra_models, reference_encoder, tmp_path
) -> None:
    """`/score_pairs` passes names as clients typed them; a queued job's model must be pinned under its canonical id
    or a request for a third model unloads it under the queued job (which then failed with a 500)."""
    env = {"RERANK_DEFAULT_MODEL": FIXTURE_MODEL_ID, "RERANK_MAX_LOADED_MODELS": "2"}
    long_documents = [" ".join(["word"] * 200) + f" {i}" for i in range(200)]
    pairs = [{"model": "TEST-ORG/Extra-A", "query": "q", "document": d} for d in ("one", "two", "three")]
    with running_server(tmp_path / "serve.log", env) as server:

        async def scenario() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
                busy = asyncio.create_task(client.post("/v1/rerank", json={"query": "q", "documents": long_documents}))
                await asyncio.sleep(0.5)  # the model thread is busy with the default model
                queued = asyncio.create_task(client.post("/score_pairs", json={"pairs": pairs}))
                await asyncio.sleep(2.0)  # extra-a is loaded and its job waits in the queue
                third = await client.post("/v1/rerank", json={"query": "q", "documents": ["x"], "model": EXTRA[1]})
                return [await busy, await queued, third]

        busy, queued, third = asyncio.run(scenario())
    assert (busy.status_code, queued.status_code, third.status_code) == (200, 200, 200), queued.text[:300]
    reference = reference_encoder.predict([("q", pair["document"]) for pair in pairs])
    for result, expected in zip(queued.json(), reference, strict=True):
        assert result["error"] is None and result["score"] == pytest.approx(float(expected), abs=1e-5)


def test_unknown_names_cost_neither_pins_nor_store_scans(stored_fixture, monkeypatch) -> None:
    from rerank_server.models import registry as registry_module

    scans = []
    original = registry_module.list_rerankers
    monkeypatch.setattr(registry_module, "list_rerankers", lambda: scans.append(1) or original())
    with scoring_engine() as engine:
        scans.clear()
        bogus = [PairToScore(model=f"bogus-{i}", query="q", document="d") for i in range(1000)]
        results = asyncio.run(score_pairs(engine, bogus))
        assert all(result.error and "does not exist" in result.error for result in results)
        assert len(scans) <= 2, "an unknown name may rescan the store at most once a second"
        assert engine.registry._in_use == {}, "nothing stays pinned, and no entry per name ever seen"


def test_concurrent_first_loads_stay_within_the_model_budget(stored_fixture, extra_models) -> None:
    registry = ModelRegistry(Settings(default_model=FIXTURE_MODEL_ID, max_loaded_models=2))
    registry.get(FIXTURE_MODEL_ID)
    original = registry._factory

    def slow_load(stored):
        time.sleep(0.5)  # both threads are loading at the same time
        return original(stored)

    registry._factory = slow_load
    threads = [threading.Thread(target=registry.get, args=(model_id,)) for model_id in EXTRA[:2]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    loaded = registry.loaded_ids()
    assert len(loaded) == 2 and FIXTURE_MODEL_ID in loaded, loaded


def test_an_unloaded_models_memory_is_gone_before_the_device_cache_is_emptied(
    stored_fixture, extra_models, monkeypatch
) -> None:
    import torch

    registry = ModelRegistry(Settings(default_model=FIXTURE_MODEL_ID, max_loaded_models=2))
    registry.get(FIXTURE_MODEL_ID)
    # On the CPU too: torch.cuda.empty_cache() is what returns an unloaded model's memory to a GPU.
    weights = weakref.ref(next(iter(registry.get(EXTRA[0]).backend.model.parameters())))
    seen: list[bool] = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: seen.append(weights() is None))
    registry.get(EXTRA[1])  # unloads EXTRA[0]
    assert seen and all(seen), f"empty_cache() ran while the weights were still alive: {seen}"


def test_models_loaded_at_once_leave_transformers_as_they_found_it(fixture_model_dir, qwen3_vl_dir, tmp_path) -> None:
    """`from_pretrained` swaps `PreTrainedModel.tie_weights`, `init_weights` and `torch.nn.init.*` while it runs and
    puts back what it found: two loads that overlap could leave stand-ins for good, and a model with tied embeddings
    loaded after them got a random output layer (Qwen3-Reranker-0.6B and mxbai v2 tie theirs)."""
    import torch
    from transformers import PreTrainedModel

    from rerank_server.models.loaded import load_folder
    from tests.fixture_models import build_mxbai_v2_reranker

    found = (PreTrainedModel.tie_weights, PreTrainedModel.init_weights, torch.nn.init.normal_)
    loads = [(fixture_model_dir, "cross-encoder"), (qwen3_vl_dir, "qwen3-vl")] * 3
    with ThreadPoolExecutor(len(loads)) as pool:
        list(pool.map(lambda load: load_folder(load[0], recipe=load[1], max_length=512), loads))
    assert (PreTrainedModel.tie_weights, PreTrainedModel.init_weights, torch.nn.init.normal_) == found
    tied = load_folder(build_mxbai_v2_reranker(tmp_path / "mxbai"), recipe="mxbai-v2", max_length=512, causal=True)
    head = tied.recipe.last_token_head()
    embedding = tied.backend.body.get_input_embeddings().weight
    assert torch.equal(tied.backend.head, embedding[[head.positive_id, head.negative_id]]), "the head is tied"
