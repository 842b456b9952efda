"""Scores that mean the same on every model: `evaluate.py --calibrate` fits a Platt map per model on labelled pairs,
`import_models.py --calibration` attaches it to the stored model, and the server returns the calibrated probability
on every route while raw scores, rankings and the cache stay as they were. Also the load check (a model that scores
every pair alike is not served) and the license shown where users choose.

Two fixture models share one encoder (the MiniLM cross-encoder) with score heads on very different scales: A's raw
score is 2 (z + 1) and B's 8 (z - 1), where z is the base model's standardised score. The labels are drawn with
probability sigmoid(2.5 z). Before calibration, 0.5 cuts A at z = -1 and B at z = 1: very different precisions.
"""

from __future__ import annotations

import importlib.util
import json
import random
import shutil
import time
from pathlib import Path
from types import ModuleType

import httpx
import numpy as np
import pytest
from scipy.optimize import minimize
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss, log_loss
from sklearn.model_selection import GroupKFold

import import_models
from rerank_server.importer.folder import ModelImportError
from rerank_server.importer.sources import import_from_folder
from rerank_server.models.calibration import CALIBRATION_FILE
from rerank_server.models.store import find_reranker
from tests.conftest import REPO_ROOT, routes_client, running_server, scores_by_index, scoring_engine

MODEL_A = "test-org/calib-a"
MODEL_B = "test-org/calib-b"
WORDS = (
    "panda bear China bamboo forest mountain river city capital France Paris London gravity planet Mars red Venus "
    "rings Saturn python data model search answer document query history music bread oven winter summer train"
).split()


def _command_line(name: str) -> ModuleType:
    # Loaded from its path: an installed package called `evaluate` (Hugging Face's) must not stand in for it.
    spec = importlib.util.spec_from_file_location(f"{name}_command_line", REPO_ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


EVALUATE = _command_line("evaluate")


def sigmoid(values):
    return 1.0 / (1.0 + np.exp(-np.asarray(values, dtype=np.float64)))


def _with_head(source: Path, target: Path, scale: float, shift: float, zero: bool = False) -> Path:
    """A copy of the cross-encoder whose raw score is `scale * raw + shift` (or 0 for every pair with `zero`)."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(source, target)
    weights = load_file(target / "model.safetensors")
    if zero:
        weights["classifier.weight"].zero_()
        weights["classifier.bias"].zero_()
    else:
        weights["classifier.weight"] *= scale
        weights["classifier.bias"] = weights["classifier.bias"] * scale + shift
    save_file(weights, target / "model.safetensors", metadata={"format": "pt"})
    return target


@pytest.fixture(scope="module")
def labelled(fixture_model_dir: Path, stored_fixture, tmp_path_factory) -> dict:
    """Both models stored, and a labelled JSONL set (12 queries x 15 documents) drawn from the base model's scores."""
    from rerank_server.engine.passes import score_directly
    from rerank_server.models.loaded import load_folder

    rng = random.Random(7)
    queries = [" ".join(rng.choices(WORDS, k=4)) for _ in range(12)]
    documents = [[" ".join(rng.choices(WORDS, k=rng.randint(5, 14))) for _ in range(15)] for _ in queries]
    base = load_folder(fixture_model_dir)
    raw = [score_directly(base, [q] * len(d), d).logits for q, d in zip(queries, documents, strict=True)]
    flat = np.concatenate(raw)
    median, spread = float(np.median(flat)), float(np.std(flat))
    assert spread > 0.5, "the base model must separate documents for this test to mean anything"
    folder = tmp_path_factory.mktemp("calibration")
    # raw_A = 2 (z + 1), raw_B = 8 (z - 1), with z = (raw - median) / spread.
    a = _with_head(fixture_model_dir, folder / "a", 2 / spread, 2 - 2 * median / spread)
    b = _with_head(fixture_model_dir, folder / "b", 8 / spread, -8 - 8 * median / spread)
    import_from_folder(MODEL_A, a)
    import_from_folder(MODEL_B, b)
    draw = np.random.default_rng(11)
    lines = []
    for query, docs, scores in zip(queries, documents, raw, strict=True):
        z = (np.asarray(scores) - median) / spread
        labels = (draw.random(len(docs)) < sigmoid(2.5 * z)).astype(int).tolist()
        lines.append(json.dumps({"query": query, "documents": docs, "labels": labels}))
    data = folder / "labelled.jsonl"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"path": data, "queries": queries, "documents": documents, "folder": folder}


@pytest.fixture(scope="module")
def server(labelled, tmp_path_factory):
    log = tmp_path_factory.mktemp("calibration-server") / "serve.log"
    with running_server(log, {"RERANK_DEFAULT_MODEL": MODEL_A}) as running:
        yield running


def _rerank(url: str, model: str, query: str, documents: list[str], **extra) -> dict:
    body = {"model": model, "query": query, "documents": documents, **extra}
    response = httpx.post(f"{url}/v1/rerank", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def _card(url: str, model: str) -> dict:
    cards = httpx.get(f"{url}/v1/models", timeout=30).json()["data"]
    return next(card for card in cards if card["id"] == model)


def _wait_for_kind(url: str, model: str, kind: str) -> dict:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if (card := _card(url, model))["score"]["kind"] == kind:
            return card
        time.sleep(0.2)
    raise AssertionError(f"{model} never showed score kind {kind}: {card['score']}")


def _independent_fit(raw: np.ndarray, relevant: np.ndarray) -> tuple[float, float]:
    """Platt's fit written out: his smoothed targets, cross-entropy minimised by scipy over (scale, bias)."""
    positives, negatives = int(relevant.sum()), int((~relevant).sum())
    target = np.where(relevant, (positives + 1) / (positives + 2), 1 / (negatives + 2))

    def loss(parameters: np.ndarray) -> float:
        p = np.clip(sigmoid(parameters[0] * (raw - parameters[1])), 1e-15, 1 - 1e-15)
        return float(-np.sum(target * np.log(p) + (1 - target) * np.log(1 - p)))

    found = minimize(loss, x0=[1.0, float(np.mean(raw))], method="Nelder-Mead", options={"xatol": 1e-9, "fatol": 1e-12,
                     "maxiter": 20000})  # fmt: skip
    return float(found.x[0]), float(found.x[1])


def _independent_ece(predicted: np.ndarray, relevant: np.ndarray) -> float:
    """ECE from sklearn's calibration_curve (10 uniform bins, empty ones dropped) and the bins' pair counts."""
    observed, mean_predicted = calibration_curve(relevant, predicted, n_bins=10, strategy="uniform")
    # calibration_curve bins with np.searchsorted on the inner edges: the same rule gives each bin's count.
    bins = np.searchsorted(np.linspace(0.0, 1.0, 11)[1:-1], predicted)
    counts = np.bincount(bins, minlength=10)
    counts = counts[counts > 0]
    return float(np.sum(counts * np.abs(observed - mean_predicted)) / predicted.size)


def _precision_at_half(predicted: np.ndarray, relevant: np.ndarray) -> float:
    return float(relevant[predicted >= 0.5].mean())


def test_calibrated_models_mean_the_same_at_0_5_and_keep_their_rankings(labelled, server, tmp_path) -> None:
    url = server.url
    out = tmp_path / "calibrations"
    report, summary = tmp_path / "report.html", tmp_path / "summary.json"
    assert EVALUATE.main([str(labelled["path"]), "--base-url", url, "--model", MODEL_A, "--model", MODEL_B,
                          "--calibrate", str(out), "--json", str(summary), "--report", str(report),
                          "--no-progress"]) == 0  # fmt: skip
    files = {model: out / f"{model.replace('/', '--')}.calibration.json" for model in (MODEL_A, MODEL_B)}
    fits = {model: json.loads(path.read_text(encoding="utf-8")) for model, path in files.items()}
    written = json.loads(summary.read_text(encoding="utf-8"))
    for result in written["models"]:
        assert result["calibration"] == fits[result["model"]], "--json carries the file's block under each model"
    html = report.read_text(encoding="utf-8")
    # Ranking, cost and precision-recall figures, a histogram and a reliability diagram per model.
    assert "<h2>Calibration</h2>" in html and html.count("<img") == 3 + 2 + 2

    samples = [json.loads(line) for line in labelled["path"].read_text(encoding="utf-8").splitlines()]
    relevant = np.array([label >= 1 for sample in samples for label in sample["labels"]])
    groups = np.array([i for i, sample in enumerate(samples) for _ in sample["labels"]])
    before: dict[str, list[list[int]]] = {}
    raw: dict[str, np.ndarray] = {}
    for model, fit in fits.items():
        assert set(fit) == {"model", "method", "scale", "bias", "formula", "fitted_on", "heldout"}
        assert fit["model"] == model and fit["method"] == "platt" and fit["formula"] == "sigmoid(scale * (raw - bias))"
        assert fit["fitted_on"]["queries"] == 12 and fit["fitted_on"]["pairs"] == 180
        assert fit["fitted_on"]["relevant"] == int(relevant.sum()) and len(fit["fitted_on"]["data_sha256"]) == 64
        answers = [_rerank(url, model, s["query"], s["documents"], use_activation=False) for s in samples]
        before[model] = [[r["index"] for r in answer["results"]] for answer in answers]
        raw[model] = np.concatenate([scores_by_index(answer["results"]) for answer in answers])
        # The fit, against Platt's fit written out here.
        scale, bias = _independent_fit(raw[model], relevant)
        assert fit["scale"] == pytest.approx(scale, rel=2e-3) and fit["bias"] == pytest.approx(bias, rel=2e-3, abs=2e-3)
        # The held-out report, recomputed: the same folds by query, each fitted independently.
        held = fit["heldout"]
        assert held["folds"] == 5
        after = np.empty(relevant.size)
        for train, test in GroupKFold(n_splits=5).split(raw[model], relevant, groups):
            fold_scale, fold_bias = _independent_fit(raw[model][train], relevant[train])
            after[test] = sigmoid(fold_scale * (raw[model][test] - fold_bias))
        uncalibrated = sigmoid(raw[model])
        assert held["ece_before"] == pytest.approx(_independent_ece(uncalibrated, relevant), abs=1e-6)
        assert held["ece_after"] == pytest.approx(_independent_ece(after, relevant), abs=2e-3)
        assert held["brier_before"] == pytest.approx(brier_score_loss(relevant, uncalibrated), abs=1e-6)
        assert held["brier_after"] == pytest.approx(brier_score_loss(relevant, after), abs=1e-3)
        assert held["log_loss_before"] == pytest.approx(log_loss(relevant, uncalibrated), abs=1e-6)
        assert held["log_loss_after"] == pytest.approx(log_loss(relevant, after), abs=2e-3)
        assert held["precision_at_0_5_before"] == pytest.approx(_precision_at_half(uncalibrated, relevant))
        assert held["ece_after"] < held["ece_before"], f"{model}: held-out ECE must improve"
    precision_before = {model: fit["heldout"]["precision_at_0_5_before"] for model, fit in fits.items()}
    assert abs(precision_before[MODEL_A] - precision_before[MODEL_B]) > 0.2, precision_before

    for model, path in files.items():
        assert import_models.main([model, "--calibration", str(path)]) == 0
        card = _wait_for_kind(url, model, "calibrated")
        assert card["score"]["calibration"]["scale"] == fits[model]["scale"]
        assert card["score"]["calibration"]["heldout"]["ece_after"] == fits[model]["heldout"]["ece_after"]

    precision_after = {}
    for model, fit in fits.items():
        answers = [_rerank(url, model, s["query"], s["documents"]) for s in samples]
        raws = [_rerank(url, model, s["query"], s["documents"], use_activation=False) for s in samples]
        assert [[r["index"] for r in answer["results"]] for answer in answers] == before[model], "rankings kept"
        assert np.concatenate([scores_by_index(a["results"]) for a in raws]) == pytest.approx(raw[model], abs=1e-5)
        calibrated = np.concatenate([scores_by_index(a["results"]) for a in answers])
        assert calibrated == pytest.approx(sigmoid(fit["scale"] * (raw[model] - fit["bias"])), abs=1e-5)
        precision_after[model] = _precision_at_half(calibrated, relevant)
    assert abs(precision_after[MODEL_A] - precision_after[MODEL_B]) < 0.1, precision_after

    # BentoML's batchable API gives the same calibrated number.
    sample = samples[0]
    pairs = [{"query": sample["query"], "document": d, "model": MODEL_B} for d in sample["documents"]]
    answer = httpx.post(f"{url}/score_pairs", json={"pairs": pairs}, timeout=60).json()
    expected = sigmoid(fits[MODEL_B]["scale"] * (raw[MODEL_B][:15] - fits[MODEL_B]["bias"]))
    assert [pair["score"] for pair in answer] == pytest.approx(expected, abs=1e-5)
    assert [pair["logit"] for pair in answer] == pytest.approx(raw[MODEL_B][:15], abs=1e-5)

    assert import_models.main([MODEL_A, "--no-calibration"]) == 0  # the module's other tests start uncalibrated
    assert import_models.main([MODEL_B, "--no-calibration"]) == 0
    card = _wait_for_kind(url, MODEL_B, "sigmoid")
    assert card["score"]["calibration"] is None
    reverted = _rerank(url, MODEL_B, sample["query"], sample["documents"])
    assert scores_by_index(reverted["results"]) == pytest.approx(sigmoid(raw[MODEL_B][:15]), abs=1e-5)


def _route_scores(client, model: str, query: str, documents: list[str]) -> dict[str, list[float]]:
    """The relevance scores of every route and shape, and the raw ones, in document order."""
    rerank = {"model": model, "query": query, "documents": documents}
    found = {
        "vllm": scores_by_index(client.post("/v1/rerank", json=rerank).json()["results"]),
        "cohere-v2": scores_by_index(client.post("/v2/rerank", json=rerank).json()["results"]),
        "jina": scores_by_index(client.post("/rerank", json=rerank).json()["results"]),
        "tei": scores_by_index(
            client.post("/rerank", json={"model": model, "query": query, "texts": documents}).json(), "score"
        ),
        "score": [
            d["score"]
            for d in client.post("/score", json={"model": model, "text_1": query, "text_2": documents}).json()["data"]
        ],
    }
    found["raw-vllm"] = scores_by_index(
        client.post("/v1/rerank", json={**rerank, "use_activation": False}).json()["results"]
    )
    found["raw-tei"] = scores_by_index(
        client.post("/rerank", json={"model": model, "query": query, "texts": documents, "raw_scores": True}).json(),
        "score",
    )
    return found


def test_every_route_applies_the_calibration_after_the_cache_and_raw_scores_stay_raw(labelled) -> None:
    query, documents = labelled["queries"][0], labelled["documents"][0]
    stored = find_reranker(MODEL_A)
    with scoring_engine(cache_size=10_000) as engine, routes_client(engine) as client:
        plain = _route_scores(client, MODEL_A, query, documents)
        raw = np.array(plain["raw-vllm"])
        for route in ("vllm", "cohere-v2", "jina", "tei", "score"):
            assert plain[route] == pytest.approx(sigmoid(raw).tolist(), abs=1e-6), (route, plain[route])
        assert import_models.main([MODEL_A, "--logit-scale", "0.5", "--logit-bias", "1.5"]) == 0
        time.sleep(1.2)  # the registry reads the store again after a second
        hits = engine.metrics.cache_hits._value.get()
        calibrated = _route_scores(client, MODEL_A, query, documents)
        assert engine.metrics.cache_hits._value.get() - hits >= 7 * len(documents), "served from the cache"
        expected = sigmoid(0.5 * (raw - 1.5))
        for route in ("vllm", "cohere-v2", "jina", "tei", "score"):
            assert calibrated[route] == pytest.approx(expected, abs=1e-6), route
        assert calibrated["raw-vllm"] == pytest.approx(raw) and calibrated["raw-tei"] == pytest.approx(raw)
        card = next(c for c in client.get("/v1/models").json()["data"] if c["id"] == MODEL_A)
        assert card["score"]["kind"] == "calibrated"
        assert card["score"]["calibration"] == {"method": "manual", "scale": 0.5, "bias": 1.5,
                                                "formula": "sigmoid(scale * (raw - bias))", "fitted_on": None,
                                                "heldout": None}  # fmt: skip
        assert import_models.main([MODEL_A, "--no-calibration"]) == 0
        time.sleep(1.2)
        reverted = _route_scores(client, MODEL_A, query, documents)
        assert reverted["vllm"] == pytest.approx(sigmoid(raw), abs=1e-6)
    assert not (stored.path / CALIBRATION_FILE).exists()


def test_a_steep_calibration_keeps_the_order_and_the_ties_of_the_raw_scores(labelled) -> None:
    """A scale that saturates float32 must not reorder results: the ranking is by raw score, ties in input order."""
    query = labelled["queries"][1]
    documents = [*labelled["documents"][1][:6], labelled["documents"][1][0]]  # the first document twice: a tie
    with scoring_engine() as engine, routes_client(engine) as client:
        raw_answer = client.post(
            "/v1/rerank", json={"model": MODEL_A, "query": query, "documents": documents, "use_activation": False}
        ).json()["results"]
        assert import_models.main([MODEL_A, "--logit-scale", "1000", "--logit-bias", "0"]) == 0
        try:
            time.sleep(1.2)
            answer = client.post("/v1/rerank", json={"model": MODEL_A, "query": query, "documents": documents})
        finally:
            assert import_models.main([MODEL_A, "--no-calibration"]) == 0
    order = [r["index"] for r in answer.json()["results"]]
    assert order == [r["index"] for r in raw_answer]
    assert order.index(0) < order.index(6), "equal raw scores keep document order"


# --- Bad input: one line each, nothing stored ------------------------------------------------------------------------


def _bad_file(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("another-model", "is the calibration of test-org/calib-b, not of test-org/calib-a"),
        ("malformed", "not JSON"),
        ("nan-scale", "NaN is not a number a calibration can hold"),
        ("negative-scale", "scale must be a finite number above 0"),
        ("scale-without-bias", "--logit-scale and --logit-bias go together"),
        ("nan-by-hand", "scale must be a finite number above 0, not nan"),
        ("not-stored", "is not in the store"),
    ],
)
def test_bad_calibration_input_is_one_line_and_nothing_is_stored(labelled, tmp_path, capsys, case, expected) -> None:
    good = {"model": MODEL_A, "method": "platt", "scale": 1.0, "bias": 0.0}
    arguments = {
        "another-model": [
            MODEL_A,
            "--calibration",
            _bad_file(tmp_path, "b.json", json.dumps({**good, "model": MODEL_B})),
        ],
        "malformed": [
            MODEL_A,
            "--calibration",
            _bad_file(tmp_path, "m.json", '{"model": "test-org/calib-a", "scale":'),
        ],
        "nan-scale": [MODEL_A, "--calibration", _bad_file(tmp_path, "n.json", json.dumps(good).replace("1.0", "NaN"))],
        "negative-scale": [MODEL_A, "--calibration", _bad_file(tmp_path, "s.json", json.dumps({**good, "scale": -2}))],
        "scale-without-bias": [MODEL_A, "--logit-scale", "2"],
        "nan-by-hand": [MODEL_A, "--logit-scale", "nan", "--logit-bias", "0"],
        "not-stored": ["test-org/never-imported", "--logit-scale", "1", "--logit-bias", "0"],
    }[case]
    capsys.readouterr()
    assert import_models.main([str(argument) for argument in arguments]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and expected in err, err
    assert not (find_reranker(MODEL_A).path / CALIBRATION_FILE).exists()


def test_evaluate_refuses_too_little_data_naming_what_is_missing_and_writes_nothing(tmp_path, capsys) -> None:
    few = tmp_path / "few.jsonl"
    few.write_text(
        "\n".join(json.dumps({"query": f"q{i}", "positive": ["a", "b"], "negative": ["c"]}) for i in range(4)) + "\n",
        encoding="utf-8",
    )
    out = tmp_path / "out"
    # No server at that address: the data is refused before anything is asked of one.
    code = EVALUATE.main([str(few), "--base-url", "http://127.0.0.1:9", "--calibrate", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and not out.exists()
    assert err.count("\n") == 0 and err.startswith("error: ")
    assert "8 relevant pairs" in err and "4 non-relevant pairs" in err and "4 queries, at least 5" in err


def test_a_fit_that_would_reverse_the_ranking_is_refused(labelled, server, tmp_path, capsys) -> None:
    samples = [json.loads(line) for line in labelled["path"].read_text(encoding="utf-8").splitlines()]
    flipped = tmp_path / "flipped.jsonl"
    flipped.write_text(
        "\n".join(json.dumps({**s, "labels": [1 - label for label in s["labels"]]}) for s in samples) + "\n",
        encoding="utf-8",
    )
    out = tmp_path / "out"
    code = EVALUATE.main([str(flipped), "--base-url", server.url, "--model", MODEL_A, "--calibrate", str(out),
                          "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 1 and not out.exists()
    assert "the model ranks non-relevant above relevant on this data" in err and "\n" not in err, err


# --- The load check --------------------------------------------------------------------------------------------------


def test_a_model_that_scores_every_pair_alike_is_refused_at_import_and_at_load(
    labelled, fixture_model_dir, tmp_path, caplog
) -> None:
    zeroed = _with_head(fixture_model_dir, tmp_path / "zeroed", 0, 0, zero=True)
    with pytest.raises(ModelImportError, match="gives every pair of the load check the same score"):
        import_from_folder("test-org/zeroed-head", zeroed)
    assert find_reranker("test-org/zeroed-head") is None, "the import's test run stored nothing"
    # Stored without the test run (--no-check), the server's load check refuses it.
    from rerank_server.importer.commit import ImportOptions

    import_from_folder("test-org/zeroed-head", zeroed, ImportOptions(check=False))
    body = {"model": "test-org/zeroed-head", "query": "q", "documents": ["a", "b"]}
    with scoring_engine() as engine, routes_client(engine) as client, caplog.at_level("ERROR", logger="bentoml"):
        refused = client.post("/v1/rerank", json=body)
        assert refused.status_code == 503
        assert "gives every pair of the load check the same score" in refused.json()["error"]["message"]
        assert client.post("/v1/rerank", json={**body, "model": MODEL_A}).status_code == 200, "others keep serving"
        card = next(c for c in client.get("/v1/models").json()["data"] if c["id"] == "test-org/zeroed-head")
        assert card["status"] == "failed" and "same score" in card["error"]
        assert client.get("/", headers={"Accept": "application/json"}).json()["failed_models"].keys() == {
            "test-org/zeroed-head"
        }
    logged = [r for r in caplog.records if r.levelname == "ERROR" and "zeroed-head" in r.getMessage()]
    assert len(logged) == 1, [r.getMessage() for r in logged]


# --- License -------------------------------------------------------------------------------------------------------


def test_the_model_cards_license_is_stored_and_shown(fixture_model_dir, stored_fixture, tmp_path, capsys) -> None:
    folder = shutil.copytree(fixture_model_dir, tmp_path / "nc")
    (folder / "README.md").write_text("---\nlicense: cc-by-nc-4.0\nlanguage: [en]\n---\n# A reranker\n", "utf-8")
    stored = import_from_folder("test-org/nc-reranker", folder).stored
    assert stored.license == "cc-by-nc-4.0"
    with scoring_engine() as engine, routes_client(engine) as client:
        cards = {c["id"]: c for c in client.get("/v1/models").json()["data"]}
    assert (
        cards["test-org/nc-reranker"]["license"] == "cc-by-nc-4.0" and cards["test-org/nc-reranker"]["non_commercial"]
    )
    assert cards[stored_fixture.model_id]["non_commercial"] is False
    import_models.choose_from_menu(ask=lambda _: "1")
    menu = capsys.readouterr().out
    jina = next(line for line in menu.splitlines() if "jina-reranker-v2" in line)
    assert "non-commercial (cc-by-nc-4.0)" in jina
    assert "non-commercial" not in next(line for line in menu.splitlines() if "bge-reranker-base" in line)


def test_the_catalogue_gives_the_license_when_the_card_has_none(fixture_model_dir, tmp_path) -> None:
    from rerank_server.importer.card import card_license

    assert card_license(fixture_model_dir, "jinaai/jina-reranker-v2-base-multilingual") == "cc-by-nc-4.0"
    assert card_license(fixture_model_dir, "test-org/unknown") == ""
    (tmp_path / "README.md").write_text("---\nlicense: other\nlicense_name: acme-research-only\n---\n", "utf-8")
    assert card_license(tmp_path, "BAAI/bge-reranker-base") == "acme-research-only"


def test_an_unusable_calibration_file_refuses_the_model_in_one_line_without_the_store_path(labelled) -> None:
    stored = find_reranker(MODEL_B)
    (stored.path / CALIBRATION_FILE).write_text(
        '{"model": "test-org/calib-b", "method": "platt", "scale": -1, "bias": 0}'
    )
    try:
        with scoring_engine() as engine, routes_client(engine) as client:
            refused = client.post("/v1/rerank", json={"model": MODEL_B, "query": "q", "documents": ["a"]})
            assert refused.status_code == 503
            message = refused.json()["error"]["message"]
            assert "calibration.json: scale" in message and str(stored.path) not in message, message
            card = client.get(f"/v1/models/{MODEL_B}")  # Xinference's look-up of one model
            assert card.status_code == 200 and card.json()["status"] == "failed", card.text
            listed = next(c for c in client.get("/v1/models").json()["data"] if c["id"] == MODEL_B)
            assert listed["status"] == "failed" and "calibration" in listed["error"]
            assert (
                client.post("/v1/rerank", json={"model": MODEL_A, "query": "q", "documents": ["a"]}).status_code == 200
            )
    finally:
        (stored.path / CALIBRATION_FILE).unlink()


def test_an_older_copy_that_keeps_serving_keeps_its_own_calibration(
    labelled, fixture_model_dir, tmp_path, caplog
) -> None:
    """A newer import that fails its load leaves the older weights serving: with the calibration fitted for them,
    not the newer version's (which has none)."""
    from rerank_server.importer.commit import ImportOptions

    query, documents = labelled["queries"][0], labelled["documents"][0][:4]
    folder = shutil.copytree(fixture_model_dir, tmp_path / "model")
    model_id = "test-org/calib-reimport"
    import_from_folder(model_id, folder)
    assert import_models.main([model_id, "--logit-scale", "0.5", "--logit-bias", "1.5"]) == 0
    body = {"model": model_id, "query": query, "documents": documents}
    with scoring_engine() as engine, routes_client(engine) as client:
        raw = scores_by_index(client.post("/v1/rerank", json={**body, "use_activation": False}).json()["results"])
        zeroed = _with_head(fixture_model_dir, tmp_path / "zeroed", 0, 0, zero=True)
        with caplog.at_level("WARNING", logger="bentoml"):
            import_from_folder(model_id, zeroed, ImportOptions(force=True, check=False))  # refused by the load check
        assert any("was not carried over" in record.getMessage() for record in caplog.records), "the import says so"
        time.sleep(1.2)
        answer = client.post("/v1/rerank", json=body)
        assert answer.status_code == 200, answer.text
        assert scores_by_index(answer.json()["results"]) == pytest.approx(sigmoid(0.5 * (np.array(raw) - 1.5)))
