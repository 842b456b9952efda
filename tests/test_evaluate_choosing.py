"""Choosing a threshold and judging a run with evaluate.py's findings (no server: scores are made by hand): the whole
trade-off, the best precision reached when the target is missed, each pair's score and label in the JSON, cautions
when the set is too small, and a report whose figures agree on each model's colour."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from matplotlib.colors import to_hex

from rerank_server.evaluation.client import Scores
from rerank_server.evaluation.data import EvalData, Query
from rerank_server.evaluation.page import _cost_figure, _histogram_figure, _metrics_figure, render
from rerank_server.evaluation.report import table, write_json
from rerank_server.evaluation.results import Evaluation
from rerank_server.evaluation.summary import evaluation, model_result
from rerank_server.evaluation.threshold import find_threshold


def _data(labels: list[list[int]]) -> EvalData:
    queries = tuple(
        Query(str(n), f"q{n}", tuple(f"{n}.{i}" for i in range(len(ls))), tuple(f"d{i}" for i in range(len(ls))),
              tuple(ls), f"line {n}")
        for n, ls in enumerate(labels, start=1)
    )  # fmt: skip
    qrels = {q.qid: dict(zip(q.doc_ids, q.labels, strict=True)) for q in queries}
    return EvalData("hand.jsonl", "documents/labels", queries, qrels, ordered=True)


def _evaluated(data: EvalData, scores: dict[str, list[list[float]]], target: float = 0.9) -> Evaluation:
    results = []
    for name, per_query in scores.items():
        by_query = {query.qid: values for query, values in zip(data.queries, per_query, strict=True)}
        found = Scores(name, by_query, [10.0] * len(data.queries), 1.0, data.pairs)
        results.append(model_result(data, found, [], target))
    return evaluation(data, results, [], "http://127.0.0.1:8000", 1)


# Two queries, the second model never above 2/3 precision: the "–" with nothing reachable shown.
TWO = _data([[1, 0, 1, 0], [0, 1, 0]])
TWO_SCORES = {
    "model-a": [[0.9, 0.2, 0.6, 0.4], [0.1, 0.8, 0.3]],
    "model-b": [[0.7, 0.75, 0.6, 0.2], [0.5, 0.4, 0.45]],
}


def test_a_missed_target_reports_the_best_precision_reached() -> None:
    found = find_threshold([0.7, 0.75, 0.6, 0.2, 0.5, 0.4, 0.45], [True, False, True, False, False, True, False], 0.9)
    assert found.score is None
    # Cuts: 0.75 → 0/1, 0.7 → 1/2, 0.6 → 2/3, 0.5 → 2/4, ...: 2/3 is the best, at 0.6 with 2 of 3 relevant kept.
    assert (found.best_precision, found.best_precision_score, found.best_precision_recall) == pytest.approx(
        (2 / 3, 0.6, 2 / 3)
    )
    text = table(_evaluated(TWO, TWO_SCORES))
    assert "model-b: no score reaches precision 0.9; best precision reached: 0.667 at score ≥ 0.6000" in text


def test_the_trade_off_gives_precision_recall_and_documents_kept_at_several_thresholds() -> None:
    result = _evaluated(TWO, TWO_SCORES).models[0]
    by_cut = {point.score: point for point in result.trade_off}
    assert {0.9, 0.7, 0.5, 0.3, 0.1} <= set(by_cut)
    assert [p.score for p in result.trade_off] == sorted(by_cut, reverse=True)
    # model-a at 0.5: keeps 0.9, 0.6 (query 1) and 0.8 (query 2), all relevant: 3 of 3 relevant, 1.5 per query.
    assert (by_cut[0.5].precision, by_cut[0.5].recall, by_cut[0.5].kept_per_query) == (1.0, 1.0, 1.5)
    assert (by_cut[0.3].precision, by_cut[0.3].kept_per_query) == (0.6, 2.5)
    assert by_cut[0.6].target and sum(point.target for point in result.trade_off) == 1  # the target's own cut
    text = table(_evaluated(TWO, TWO_SCORES))
    assert "threshold  precision  recall  docs kept/query" in text and "← P≥0.9" in text


def test_the_json_holds_each_pairs_score_and_label(tmp_path: Path) -> None:
    write_json(_evaluated(TWO, TWO_SCORES), tmp_path / "out.json")
    written = json.loads((tmp_path / "out.json").read_text(encoding="utf-8"))
    pairs = written["models"][1]["scored_pairs"]
    assert pairs[:2] == [
        {"query_id": "1", "doc_id": "1.0", "label": 1, "score": 0.7},
        {"query_id": "1", "doc_id": "1.1", "label": 0, "score": 0.75},
    ]
    assert len(pairs) == TWO.pairs and written["models"][1]["threshold"]["best_precision_score"] == 0.6
    assert written["models"][0]["trade_off"][0] == {
        "score": 0.9, "precision": 1.0, "recall": pytest.approx(1 / 3), "kept_per_query": 0.5, "target": False
    }  # fmt: skip


def test_a_tiny_set_says_it_is_too_small_in_the_terminal_the_json_and_the_report() -> None:
    found = _evaluated(TWO, TWO_SCORES)
    cautions = " ".join(found.cautions)
    assert "only 2 queries have a relevant document" in cautions and "at least 30" in cautions
    assert "keeps only 3 pairs" in cautions and "95% interval" in cautions  # model-a's threshold at 0.6
    assert "Caution:" in table(found)
    assert "only 2 queries have a relevant document" in render(found)


def test_a_difference_names_the_queries_it_would_take() -> None:
    data = _data([[1, 0, 0]] * 6)
    # model-b puts the relevant document second on half of the queries: a real but noisy difference.
    scores = {"model-a": [[0.9, 0.1, 0.2]] * 6, "model-b": [[0.5, 0.6, 0.1], [0.9, 0.1, 0.2]] * 3}
    found = _evaluated(data, scores)
    (test,) = [c for c in found.significance if c.metric == "ndcg@10" and c.a == "model-a"]
    assert test.queries_needed is not None and test.queries_needed > 6
    assert f"needs about {test.queries_needed} queries to show" in " ".join(found.cautions)


def test_recall_at_a_cutoff_beyond_every_querys_candidates_is_flagged() -> None:
    found = _evaluated(TWO, TWO_SCORES)
    assert any("no query has more than 4 candidates, so R@10" in text for text in found.cautions)


def test_a_model_has_one_colour_in_every_figure() -> None:
    found = _evaluated(TWO, TWO_SCORES)
    bars = _metrics_figure(found).axes[0]
    cost = _cost_figure(found).axes[0]
    for model in ("model-a", "model-b"):
        (bars_of_model,) = [c for c in bars.containers if c.get_label() == model]
        (bar_colour,) = {to_hex(p.get_facecolor()) for p in bars_of_model}
        (point,) = [c for c in cost.collections if c.get_label().startswith(model)]
        assert to_hex(point.get_facecolor()[0]) == bar_colour, model


def test_the_histogram_counts_whole_pairs() -> None:
    axes = _histogram_figure(_evaluated(TWO, TWO_SCORES).models[0]).axes[0]
    assert all(float(tick).is_integer() for tick in axes.get_yticks())
