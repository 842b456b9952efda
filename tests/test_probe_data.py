"""`import_models.py --probe-data FILE`: the fidelity gate scores the user's own queries and documents (evaluate.py's
JSONL) instead of lists generated from the model's vocabulary, within bounds, and says so; a bad file stops the command
as a bad argument does, and the flag is refused where no gate runs. The conversions and the gate's scores are real."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import import_models
from rerank_server.importer import cpu_path
from rerank_server.importer.commit import ImportOptions
from rerank_server.importer.folder import ModelImportError
from rerank_server.importer.probe_data import MAX_DOCUMENTS, MAX_QUERIES, read_probe_data
from rerank_server.importer.sources import import_from_folder
from rerank_server.models.store import find_reranker

# Each query with one document on its subject and one far from it: an order int8 arithmetic has no reason to change.
CLEAR_PAIRS = [
    ("where is the river", "The river runs through the city.", "Tax forms are due in April with the year's receipts."),
    ("how do engines work", "An engine burns fuel to turn a shaft.", "My cat sleeps all day on the sofa."),
    ("winter weather", "Snow and cold winds come in winter.", "The museum opens at nine."),
]


def _write(path: Path, samples: list[dict]) -> Path:
    path.write_text("".join(json.dumps(sample) + "\n" for sample in samples), encoding="utf-8")
    return path


def _graded(query: str, documents: list[str]) -> dict:
    return {"query": query, "documents": documents, "labels": [0] * len(documents)}


def test_the_gate_scores_the_files_queries_and_documents_and_says_so(
    monkeypatch, fixture_model_dir: Path, tmp_path: Path
) -> None:
    long_list = [f"document {n} about rivers and bridges" for n in range(MAX_DOCUMENTS + 8)]
    short_list = ["a garden in summer", "an engine in winter", "a letter from a friend"]
    probes = _write(
        tmp_path / "probes.jsonl",
        [_graded("rivers", long_list), _graded("a single answer", ["only one"]), _graded("seasons", short_list)],
    )
    scored: list[list[tuple[str, list[str]]]] = []
    real_scores_of = cpu_path.scores_of

    def spy(model, lists):
        scored.append([(probe.query, probe.documents) for probe in lists])
        return real_scores_of(model, lists)

    monkeypatch.setattr(cpu_path, "scores_of", spy)
    # A floor this test's subject (what is scored) does not hinge on.
    options = ImportOptions(backend="openvino-int8", min_spearman=0.5, probe_data=read_probe_data(probes))
    result = import_from_folder("test-org/probed", fixture_model_dir, options)
    # float32 and the candidate, each on the file's lists: cut to MAX_DOCUMENTS, the one-document sample skipped.
    expected = [("rivers", long_list[:MAX_DOCUMENTS]), ("seasons", short_list)]
    assert scored == [expected, expected]
    said = f"on 2 queries of {MAX_DOCUMENTS + 3} documents from probes.jsonl"
    assert result.stored.fidelity.endswith(said) and said in result.cpu_choice
    assert "generated" not in result.stored.fidelity


def test_the_gates_decision_follows_the_file(fixture_model_dir: Path, tmp_path: Path) -> None:
    # onnx-int8 reorders the generated lists' near ties on this fixture (worst query about 0.92): refused.
    with pytest.raises(ModelImportError, match="onnx-int8 changes its rankings against float32"):
        import_from_folder("test-org/decided", fixture_model_dir, ImportOptions(backend="onnx-int8"))
    # On data whose documents it tells apart as float32 does, the same path at the same floor is stored.
    probes = _write(tmp_path / "clear.jsonl", [_graded(q, [near, far]) for q, near, far in CLEAR_PAIRS])
    options = ImportOptions(backend="onnx-int8", probe_data=read_probe_data(probes))
    stored = import_from_folder("test-org/decided", fixture_model_dir, options).stored
    assert stored.backend == "onnx-int8"
    assert stored.fidelity.endswith("on 3 queries of 6 documents from clear.jsonl")


def test_only_the_first_samples_are_read(tmp_path: Path) -> None:
    probes = _write(tmp_path / "long.jsonl", [_graded(f"query {n}", ["a", "b"]) for n in range(MAX_QUERIES)])
    with probes.open("a", encoding="utf-8") as more:
        more.write("{not json, and never read\n")
    assert [probe.query for probe in read_probe_data(probes).lists] == [f"query {n}" for n in range(MAX_QUERIES)]


@pytest.mark.parametrize(
    ("lines", "error"),
    [
        (None, r"--probe-data: cannot read .*missing\.jsonl: No such file"),
        (['{"query": "q", "documents": ["a", "b"], "labels": [0, 0]}', '{"query": "q", "documents": '],
         r"--probe-data: .*bad\.jsonl:2: not JSON"),
        (['{"query": "q", "documents": [], "labels": []}'], r"bad\.jsonl:1: a sample with no documents"),
        (['{"query": "q", "positive": ["only one"]}'], r"bad\.jsonl: no sample with two documents or more"),
    ],
)  # fmt: skip
def test_a_bad_file_is_one_error_line_exit_2_and_nothing_stored(
    capsys, fixture_model_dir: Path, tmp_path: Path, lines: list[str] | None, error: str
) -> None:
    probes = tmp_path / ("missing.jsonl" if lines is None else "bad.jsonl")
    if lines is not None:
        probes.write_text("\n".join(lines) + "\n", encoding="utf-8")
    model_id = "test-org/bad-probes"
    arguments = [model_id, "--from-dir", str(fixture_model_dir), "--backend", "onnx-int8", "--probe-data", str(probes)]
    with pytest.raises(SystemExit) as stopped:
        import_models.main(arguments)
    assert stopped.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert ": error: --probe-data: " in last and re.search(error, last)
    assert find_reranker(model_id) is None


@pytest.mark.parametrize(
    ("options", "refusal"),
    [
        ({"backend": "torch"}, "--backend torch in float32 is that reference"),
        ({"backend": "openvino-int8", "min_spearman": 0}, "--min-spearman 0 turns the gate off"),
    ],
)
def test_probe_data_is_refused_where_no_gate_runs(
    fixture_model_dir: Path, tmp_path: Path, options: dict, refusal: str
) -> None:
    probes = read_probe_data(_write(tmp_path / "p.jsonl", [_graded(q, [a, b]) for q, a, b in CLEAR_PAIRS]))
    with pytest.raises(ModelImportError, match=refusal):
        import_from_folder("test-org/no-gate", fixture_model_dir, ImportOptions(probe_data=probes, **options))
    assert find_reranker("test-org/no-gate") is None
