"""evaluate.py against a real `bentoml serve` and against another implementation of `POST /v1/rerank`
(benchmarks/baseline_server.py): its metrics, baseline and threshold are checked against an independent trec_eval-style
computation on scores fetched here, and bad input fails in one line."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType

import httpx
import pytest
from scipy import stats

from rerank_server.evaluation.data import EvalData, Query, load
from rerank_server.evaluation.errors import EvaluationError
from rerank_server.evaluation.metrics import input_order_run, judged_qrels, means, per_query, scored_run
from rerank_server.evaluation.threshold import find_threshold
from tests.conftest import FIXTURE_MODEL_ID, REPO_ROOT, free_port
from tests.fixture_models import build_minilm_cross_encoder

DATA = REPO_ROOT / "tests" / "data" / "evaluate"
SECOND_MODEL = "test-org/mini-reranker-b"
TOLERANCE = 1e-4


def evaluate(*args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "evaluate.py", *map(str, args)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _command_line() -> ModuleType:
    # Loaded from its path: an installed package called `evaluate` (Hugging Face's) must not stand in for it.
    spec = importlib.util.spec_from_file_location("evaluate_command_line", REPO_ROOT / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


COMMAND_LINE = _command_line()


def evaluated(out: Path, *args: str | Path) -> dict:
    """evaluate.py's JSON for `args`, run in this process (bad input is run as a subprocess below)."""
    assert COMMAND_LINE.main([*map(str, args), "--json", str(out)]) == 0
    return json.loads(out.read_text(encoding="utf-8"))


# --- An independent computation, trec_eval's definitions written out -------------------------------------------------


def read_samples(path: Path) -> list[tuple[str, list[str], list[int]]]:
    """(query, documents, labels) per line; positive/negative samples become labels 1/0."""
    samples = []
    for line in path.read_text(encoding="utf-8").splitlines():
        sample = json.loads(line)
        if "documents" in sample:
            samples.append((sample["query"], sample["documents"], sample["labels"]))
        else:
            docs = sample["positive"] + sample["negative"]
            samples.append((sample["query"], docs, [1] * len(sample["positive"]) + [0] * len(sample["negative"])))
    return samples


def fetch_scores(url: str, model: str, samples: list[tuple[str, list[str], list[int]]]) -> list[list[float]]:
    """Each sample's scores in document order, asked here of `/v1/rerank`, not through evaluate.py."""
    scores = []
    with httpx.Client(base_url=url, timeout=60) as http:
        for query, documents, _ in samples:
            body = {"model": model, "query": query, "documents": documents, "return_documents": False}
            results = http.post("/v1/rerank", json=body).json()["results"]
            scores.append([score for _, score in sorted((r["index"], r["relevance_score"]) for r in results)])
    return scores


def query_metrics(ranked: list[int], judged: list[int], k: int = 10) -> dict[str, float]:
    """`ranked`: labels of the candidates best first; `judged`: every label the query has (relevant ones the
    candidates miss included)."""
    relevant = sum(1 for label in judged if label >= 1)
    dcg = sum(label / math.log2(rank + 2) for rank, label in enumerate(ranked[:k]))
    ideal = sum(label / math.log2(rank + 2) for rank, label in enumerate(sorted(judged, reverse=True)[:k]))
    first = next((rank for rank, label in enumerate(ranked[:k]) if label >= 1), None)
    hits, precisions = 0, []
    for rank, label in enumerate(ranked):
        if label >= 1:
            hits += 1
            precisions.append(hits / (rank + 1))
    return {
        f"ndcg@{k}": dcg / ideal,
        f"mrr@{k}": 0.0 if first is None else 1 / (first + 1),
        "map": sum(precisions) / relevant,
        f"recall@{k}": sum(1 for label in ranked[:k] if label >= 1) / relevant,
    }


def by_score(scores: list[float], labels: list[int]) -> list[int]:
    """Labels best score first, equal scores in input order."""
    return [labels[i] for i in sorted(range(len(scores)), key=lambda i: (-scores[i], i))]


def ranked_metrics(
    scores: list[list[float]], samples: list[tuple[str, list[str], list[int]]], k: int = 10
) -> list[dict[str, float]]:
    """Each query's metrics for a model's scores, over the queries with a relevant document."""
    return [
        query_metrics(by_score(query_scores, labels), labels, k)
        for query_scores, (_, _, labels) in zip(scores, samples, strict=True)
        if any(label >= 1 for label in labels)
    ]


def averaged(queries: list[dict[str, float]]) -> dict[str, float]:
    return {name: sum(q[name] for q in queries) / len(queries) for name in queries[0]}


def expected_threshold(scores: list[float], relevant: list[bool], target: float) -> tuple[float, float, float] | None:
    """Every distinct score tried as a cut; the lowest that keeps precision >= target."""
    found = None
    for cut in sorted(set(scores), reverse=True):
        kept = [rel for score, rel in zip(scores, relevant, strict=True) if score >= cut]
        if sum(kept) / len(kept) >= target - 1e-12:
            found = (cut, sum(kept) / len(kept), sum(kept) / sum(relevant))
    return found


def assert_close(found: dict[str, float], expected: dict[str, float]) -> None:
    for name, value in expected.items():
        assert found[name] == pytest.approx(value, abs=TOLERANCE), (name, found[name], value)


# --- Fixtures -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def second_model(stored_fixture, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A second, different cross-encoder (another seed for the head) in the store the session server reads."""
    from rerank_server.importer.commit import ImportOptions
    from rerank_server.importer.sources import import_from_folder

    folder = build_minilm_cross_encoder(tmp_path_factory.mktemp("second") / "mini-reranker-b", seed=1)
    return import_from_folder(SECOND_MODEL, folder, ImportOptions(check=False)).stored.model_id


@pytest.fixture(scope="module")
def english_run(server, second_model: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    work = tmp_path_factory.mktemp("english")
    report = work / "out.html"
    found = evaluated(work / "out.json", DATA / "en.jsonl", "--base-url", server.url, "--model", FIXTURE_MODEL_ID,
                      "--model", second_model, "--report", report, "--concurrency", "2", "--k", "3",
                      "--target-precision", "0.6")  # fmt: skip
    return found, report


@pytest.fixture(scope="module")
def english_scores(server, second_model: str) -> dict[str, list[list[float]]]:
    """The English set's scores per model, fetched independently."""
    samples = read_samples(DATA / "en.jsonl")
    return {model: fetch_scores(server.url, model, samples) for model in (FIXTURE_MODEL_ID, second_model)}


@pytest.fixture(scope="module")
def vendor_url(fixture_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """benchmarks/baseline_server.py (FastAPI calling CrossEncoder.predict) on the fixture model's folder."""
    port = free_port()
    log = (tmp_path_factory.mktemp("vendor") / "vendor.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "benchmarks.baseline_server:app", "--port", str(port)],
        cwd=REPO_ROOT,
        env={**os.environ, "BASELINE_MODEL_DIR": str(fixture_model_dir), "BASELINE_DEVICE": "cpu"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None and time.monotonic() < deadline, "the vendor endpoint did not start"
            try:
                httpx.get(f"{url}/openapi.json", timeout=2)
                break
            except httpx.HTTPError:
                time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


# --- Against the real server ----------------------------------------------------------------------------------------


def test_metrics_baseline_and_threshold_equal_an_independent_computation(english_run, english_scores) -> None:
    found, _ = english_run
    samples = read_samples(DATA / "en.jsonl")
    judged = [(docs, labels) for _, docs, labels in samples if any(label >= 1 for label in labels)]
    assert found["data"]["evaluated_queries"] == len(judged) < len(samples)  # a query with no relevant document
    for result in found["models"]:
        scores = english_scores[result["model"]]
        for k in (10, 3):
            assert_close(result["metrics"], averaged(ranked_metrics(scores, samples, k)))
        flat = [score for query_scores in scores for score in query_scores]
        relevant = [label >= 1 for _, _, labels in samples for label in labels]
        expected = expected_threshold(flat, relevant, 0.6)
        threshold = result["threshold"]
        if expected is None:
            assert threshold["score"] is None
        else:
            assert [threshold["score"], threshold["precision"], threshold["recall"]] == pytest.approx(
                expected, abs=1e-9
            )
        spread = result["score_distribution"]
        assert spread["relevant"]["count"] == sum(relevant) and sum(spread["relevant_counts"]) == sum(relevant)
        assert spread["non_relevant"]["count"] == len(flat) - sum(relevant)
        assert 0 < result["latency_ms"]["p50"] <= result["latency_ms"]["p95"]
        assert result["requests"] == len(samples) and result["pairs"] == len(flat) and result["pairs_per_second"] > 0
        pairs = result["scored_pairs"]  # enough to redo any of it
        assert [p["score"] for p in pairs] == pytest.approx(flat, abs=1e-9)
        assert [p["label"] for p in pairs] == [label for _, _, labels in samples for label in labels]
    assert any(result["threshold"]["score"] is not None for result in found["models"])  # not compared vacuously
    baseline = [query_metrics(labels, labels) for _, labels in judged]
    assert_close(found["baseline"]["metrics"], averaged(baseline))
    assert [m["model"] for m in found["models"]] == [FIXTURE_MODEL_ID, SECOND_MODEL]
    assert found["models"][0]["metrics"] != found["models"][1]["metrics"]  # two different models were asked


def test_paired_tests_pair_each_query_with_itself(english_run, english_scores) -> None:
    found, _ = english_run
    samples = read_samples(DATA / "en.jsonl")
    ndcg = {model: [q["ndcg@10"] for q in ranked_metrics(scores, samples)] for model, scores in english_scores.items()}
    tests = {(c["a"], c["b"]): c for c in found["significance"] if c["metric"] == "ndcg@10"}
    assert set(tests) == {("baseline", FIXTURE_MODEL_ID), ("baseline", SECOND_MODEL), (FIXTURE_MODEL_ID, SECOND_MODEL)}
    expected = stats.ttest_rel(ndcg[SECOND_MODEL], ndcg[FIXTURE_MODEL_ID])
    assert tests[(FIXTURE_MODEL_ID, SECOND_MODEL)]["p_value"] == pytest.approx(expected.pvalue, abs=1e-9)


def test_the_report_is_one_page_with_plots_and_no_outside_url(english_run) -> None:
    found, report = english_run
    page = report.read_text(encoding="utf-8")
    figures = 3 + len(found["models"])  # ranking, cost, precision-recall, and a histogram per model
    assert len(re.findall(r'<img alt="" src="data:image/png;base64,', page)) == figures
    assert not re.findall(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", page, re.I)
    assert "<script" not in page and "<link" not in page
    assert all(m["model"] in page for m in found["models"]) and "relevance_score" in page


def test_chinese_positive_negative_data_has_no_baseline(server, tmp_path: Path) -> None:
    found = evaluated(tmp_path / "zh.json", DATA / "zh.jsonl", "--base-url", server.url, "--target-precision", "0.5")
    assert found["baseline"] is None and found["significance"] == []
    (result,) = found["models"]
    assert result["model"] == FIXTURE_MODEL_ID  # the server's default model, named by its answer
    samples = read_samples(DATA / "zh.jsonl")
    scores = fetch_scores(server.url, FIXTURE_MODEL_ID, samples)
    assert all(len(set(s)) == len(s) for s in scores)  # no tie: the order does not depend on how ties are broken
    assert_close(result["metrics"], averaged(ranked_metrics(scores, samples)))
    assert result["threshold"]["target_precision"] == 0.5


def test_a_beir_folder_with_a_run_counts_relevant_documents_the_run_missed(server, tmp_path: Path, capsys) -> None:
    found = evaluated(tmp_path / "beir.json", DATA / "beir", "--candidates", DATA / "beir" / "run.trec",
                      "--depth", "3", "--base-url", server.url)  # fmt: skip
    assert "note: 1 judged queries have no candidates in the run" in capsys.readouterr().err
    corpus = {
        d["_id"]: f"{d['title']} {d['text']}".strip() for d in map(json.loads, (DATA / "beir/corpus.jsonl").open())
    }
    queries = {q["_id"]: q["text"] for q in map(json.loads, (DATA / "beir/queries.jsonl").open())}
    qrels: dict[str, dict[str, int]] = {}
    for line in (DATA / "beir/qrels/test.tsv").read_text().splitlines()[1:]:
        qid, doc, label = line.split("\t")
        qrels.setdefault(qid, {})[doc] = int(label)
    run: dict[str, list[tuple[int, str]]] = {}
    for line in (DATA / "beir/run.trec").read_text().splitlines():
        qid, _, doc, rank, _, _ = line.split()
        run.setdefault(qid, []).append((int(rank), doc))
    model_metrics, baseline_metrics = [], []
    for qid, ranked in run.items():
        docs = [doc for _, doc in sorted(ranked)[:3]]
        labels = [qrels[qid].get(doc, 0) for doc in docs]
        (scores,) = fetch_scores(server.url, FIXTURE_MODEL_ID, [(queries[qid], [corpus[d] for d in docs], labels)])
        model_metrics.append(query_metrics(by_score(scores, labels), list(qrels[qid].values())))
        baseline_metrics.append(query_metrics(labels, list(qrels[qid].values())))
    assert_close(found["models"][0]["metrics"], averaged(model_metrics))
    assert_close(found["baseline"]["metrics"], averaged(baseline_metrics))
    assert found["models"][0]["metrics"]["recall@10"] < 1  # relevant documents beyond the depth or the run count


def test_another_vendors_endpoint_gives_the_same_metrics_for_the_same_weights(
    english_run, vendor_url, tmp_path
) -> None:
    found, _ = english_run
    theirs = evaluated(tmp_path / "vendor.json", DATA / "en.jsonl", "--base-url", vendor_url, "--model",
                       FIXTURE_MODEL_ID, "--k", "3", "--target-precision", "0.6")  # fmt: skip
    ours = found["models"][0]
    (result,) = theirs["models"]
    assert_close(result["metrics"], ours["metrics"])
    assert result["threshold"]["score"] == pytest.approx(ours["threshold"]["score"], abs=TOLERANCE)
    assert theirs["baseline"] == found["baseline"]


def test_the_newcomer_sample_is_english_and_chinese_graded_data() -> None:
    data = load(REPO_ROOT / "docs" / "eval-sample.jsonl")
    assert len(data.queries) >= 20 and data.ordered
    assert any(re.search(r"[\u4e00-\u9fff]", q.text) for q in data.queries)
    assert any(re.fullmatch(r"[ -~]+", q.text) for q in data.queries)
    assert all(max(q.labels) >= 1 for q in data.queries)


# --- Bad input: one line, no traceback ------------------------------------------------------------------------------


def assert_one_line_error(done: subprocess.CompletedProcess[str], message: str) -> None:
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert re.search(message, lines[0]), lines[0]


def _beir_with_run(tmp_path: Path, run: str) -> Path:
    folder = tmp_path / "beir"
    shutil.copytree(DATA / "beir", folder)
    (folder / "run.trec").write_text(run, encoding="utf-8")
    return folder


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"query": "q", "documents": ["a"], "labels": [1]}\nnot json\n', r"data\.jsonl:2: not JSON"),
        ('{"query": "q", "documents": ["a", "b"], "labels": [1]}\n', r"data\.jsonl:1: 1 labels for 2 documents"),
    ],
)
def test_bad_samples_fail_in_one_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text(content, encoding="utf-8")
    assert_one_line_error(evaluate(path, "--base-url", "http://127.0.0.1:9"), message)


@pytest.mark.parametrize(
    ("run", "message"),
    [
        ("q1 Q0 d1 1 2.0 bm25\nq1 Q0 d99 2 1.0 bm25\n", r"run\.trec:2: document id 'd99' is not in corpus\.jsonl"),
    ],
)
def test_a_run_naming_unknown_ids_fails_in_one_line(tmp_path: Path, run: str, message: str) -> None:
    folder = _beir_with_run(tmp_path, run)
    assert_one_line_error(evaluate(folder, "--candidates", folder / "run.trec"), message)


def test_a_refusing_server_fails_in_one_line_with_its_message(server) -> None:
    done = evaluate(DATA / "en.jsonl", "--base-url", server.url, "--model", "no-org/no-such-model")
    assert_one_line_error(done, r"refused line 1: 404: .*no-org/no-such-model")
    # The cause and the fix, not only the data line that met them.
    assert_one_line_error(done, r"not in the server's store: import it with `\.venv/bin/python import_models\.py "
                                r"no-org/no-such-model`")  # fmt: skip


@pytest.fixture()
def answering_404() -> Iterator[str]:
    """An endpoint that answers every POST with a 404: this server's (and vLLM's) unknown-model error."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            self.rfile.read(int(self.headers["Content-Length"]))
            body = json.dumps(
                {
                    "object": "error",
                    "message": "The model `no-org/no-such-model` does not exist. "
                    "Available models: test-org/mini-reranker",
                    "type": "NotFoundError",
                    "code": 404,
                }
            )
            self.send_response(404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_model_the_store_lacks_gets_the_import_hint(answering_404: str) -> None:
    done = evaluate(DATA / "en.jsonl", "--base-url", answering_404, "--model", "no-org/no-such-model")
    assert_one_line_error(done, r"refused line 1: 404: The model `no-org/no-such-model` does not exist.*import it "
                                r"with `\.venv/bin/python import_models\.py no-org/no-such-model`")  # fmt: skip


def test_an_unreachable_server_fails_in_one_line() -> None:
    done = evaluate(DATA / "en.jsonl", "--base-url", f"http://127.0.0.1:{free_port()}")
    assert_one_line_error(done, r"cannot reach http://127\.0\.0\.1:\d+.*is the server running\? Start it with "
                                r"`make serve`")  # fmt: skip


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"query": "q", "documents": [], "labels": []}\n', r"data\.jsonl:1: a sample with no documents$"),
        ('{"query": "q", "positive": [], "negative": []}\n', r"data\.jsonl:1: a sample with no documents$"),
        ('{"query": "q", "documents": ["a"], "labels": [-1]}\n', r"data\.jsonl:1: labels\.0: .*greater than or equal"),
        ('{"query": 3, "documents": ["a"], "labels": [1]}\n', r"data\.jsonl:1: query: .*string"),
        ('{"query": "q", "positive": "a"}\n', r"data\.jsonl:1: positive: .*list"),
        ('{"text": "q"}\n', r'data\.jsonl:1: a sample needs "query"'),
        ("[1, 2]\n", r"data\.jsonl:1: a sample is a JSON object, not list"),
        ('{"query": "q", "positive": ["a"]}\n{"query": "q", "documents": ["a"], "labels": [1]}\n',
         r"data\.jsonl:2: a documents/labels sample in a file of positive/negative samples \(line 1\): one file takes "
         r"one shape"),
        # The line's own problem comes first, even in a file that also mixes shapes.
        ('{"query": "q", "positive": ["a"]}\n{"query": "q", "documents": ["a", "b"], "labels": [1, 0, 1]}\n',
         r"data\.jsonl:2: 3 labels for 2 documents$"),
        ('{"query": "q", "pos": ["a"], "neg": "b"}\n', r"data\.jsonl:1: neg: .*list"),
        # A line cut short: the column where it ends, not "column 1" of a next line.
        ('{"query": "q", "documents": ["a"], "labels": [1]}\n{"query": "q", "documents": ["a"\n',
         r"data\.jsonl:2: not JSON \(Expecting ',' delimiter, column 33\)"),
        ('{"query": "q", "documents": ["a"], "labels": [0]}\n', r"no query has a relevant candidate"),
        ("\n\n", r"data\.jsonl: no samples"),
        (b"\xff\xfe", r"data\.jsonl: not UTF-8 text"),
    ],
)  # fmt: skip
def test_bad_samples_are_named_by_file_and_line(tmp_path: Path, content: str | bytes, message: str) -> None:
    path = tmp_path / "data.jsonl"
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    with pytest.raises(EvaluationError) as caught:
        load(path)
    assert re.search(message, str(caught.value)), caught.value


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"candidates": None}, r"a BEIR folder needs --candidates RUN"),
        ({"run": "q1 Q0 d1 1 2.0 a\nq7 Q0 d1 1 1.0 a\n"}, r"run\.trec:2: query id 'q7' is not in queries\.jsonl"),
        ({"run": "q1 Q0 d1 one 2.0 bm25\n"}, r"run\.trec:1: expected 'qid Q0 docid rank score tag'"),
        ({"run": "q1 Q0 d1 1 2.0 a\nq1 Q0 d1 2 1.0 a\n"}, r"run\.trec:2: document 'd1' is listed twice for query 'q1'"),
        ({"run": "q4 Q0 d1 1 2.0 a\n", "split": "test"}, r"no query of the run is judged"),
        ({"split": "dev"}, r"not a BEIR folder: no qrels/dev\.tsv"),
    ],
)
def test_bad_beir_input_is_named(tmp_path: Path, args: dict, message: str) -> None:
    folder = _beir_with_run(tmp_path, args.get("run", "q1 Q0 d1 1 2.0 bm25\n"))
    if args.get("run") == "q4 Q0 d1 1 2.0 a\n":
        (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    candidates = args.get("candidates", folder / "run.trec")
    with pytest.raises(EvaluationError) as caught:
        load(folder, candidates, split=args.get("split", "test"))
    assert re.search(message, str(caught.value)), caught.value


def test_flagembeddings_query_pos_neg_format_is_read(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    lines = [
        {"query": "q1", "pos": ["p1"], "neg": ["n1", "n2"], "prompt": "Given a query", "pos_scores": [1.0],
         "neg_scores": [0.1, 0.2], "type": "normal"},
        {"query": "q2", "pos": ["p2", "p3"], "neg": ["n3"]},
    ]  # fmt: skip
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    data = load(path)
    assert data.kind == "pos/neg" and not data.ordered  # like positive/negative: no retriever order, no baseline
    first, second = data.queries
    assert sorted(zip(first.documents, first.labels, strict=True)) == [("n1", 0), ("n2", 0), ("p1", 1)]
    assert sorted(second.labels) == [0, 1, 1] and second.text == "q2"


def test_a_jsonl_file_with_a_run_is_refused(tmp_path: Path) -> None:
    with pytest.raises(EvaluationError, match="--candidates goes with a BEIR folder"):
        load(DATA / "en.jsonl", DATA / "beir" / "run.trec")


# --- The computation's parts on hand-made numbers -------------------------------------------------------------------


def test_the_threshold_is_the_lowest_score_that_keeps_the_precision() -> None:
    scores = [0.9, 0.8, 0.8, 0.7, 0.6, 0.5, 0.4]
    relevant = [True, True, False, True, True, False, False]
    # Cuts: 0.9 → 1/1, 0.8 → 2/3 (the tie is kept whole), 0.7 → 3/4, 0.6 → 4/5, 0.5 → 4/6, 0.4 → 4/7.
    found = find_threshold(scores, relevant, 0.75)
    assert (found.score, found.precision, found.recall) == (0.6, 0.8, 1.0)
    assert find_threshold(scores, relevant, 0.8).score == 0.6
    assert find_threshold(scores, relevant, 0.81).score == 0.9 and find_threshold(scores, relevant, 0.81).recall == 0.25
    assert find_threshold([0.5, 0.5], [True, False], 0.9).score is None  # a tie cannot be cut in half
    assert find_threshold([0.2], [False], 0.5).score is None


def test_ties_are_broken_by_input_position_and_unrelevant_queries_are_left_out() -> None:
    data = EvalData("hand", "documents/labels", (
        Query("a", "qa", ("a0", "a1", "a2"), ("x", "y", "z"), (0, 1, 0), "line 1"),
        Query("b", "qb", ("b0", "b1"), ("x", "y"), (0, 0), "line 2"),
    ), {"a": {"a0": 0, "a1": 1, "a2": 0}, "b": {"b0": 0, "b1": 0}}, ordered=True)  # fmt: skip
    # a0 and a1 tie: a0 came first, so the relevant a1 is second (trec_eval would order them by id, descending).
    values = per_query(judged_qrels(data), scored_run(data, {"a": [0.5, 0.5, 0.1], "b": [0.3, 0.2]}), [10])
    assert set(values["mrr@10"]) == {"a"} and values["mrr@10"]["a"] == 0.5
    assert means(per_query(judged_qrels(data), input_order_run(data), [10]))["ndcg@10"] == pytest.approx(
        1 / math.log2(3)
    )
