"""From scores to findings: each model's metrics, cost, threshold and score spread, the baseline, and the paired tests
between them."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rerank_server.evaluation.client import Scores
from rerank_server.evaluation.data import EvalData
from rerank_server.evaluation.metrics import (
    PerQuery,
    input_order_run,
    judged_qrels,
    means,
    paired_tests,
    per_query,
    scored_run,
)
from rerank_server.evaluation.report import BASELINE
from rerank_server.evaluation.results import Baseline, DataSummary, Evaluation, Latency, ModelResult
from rerank_server.evaluation.threshold import distribution, find_threshold


def model_result(
    data: EvalData, scores: Scores, cutoffs: Sequence[int], target_precision: float, relevant_from: int = 1
) -> tuple[ModelResult, PerQuery]:
    """One model's findings, and its per-query metric values for the paired tests."""
    values = per_query(judged_qrels(data), scored_run(data, scores.by_query), cutoffs)
    flat = [score for query in data.queries for score in scores.by_query[query.qid]]
    relevant = [label >= relevant_from for query in data.queries for label in query.labels]
    p50, p95 = (float(value) for value in np.percentile(scores.latencies_ms, [50, 95]))
    result = ModelResult(
        model=scores.model,
        metrics=means(values),
        latency_ms=Latency(p50=p50, p95=p95),
        pairs_per_second=scores.pairs / scores.seconds if scores.seconds > 0 else 0.0,
        requests=len(scores.latencies_ms),
        pairs=scores.pairs,
        threshold=find_threshold(flat, relevant, target_precision),
        score_distribution=distribution(flat, relevant),
    )
    return result, values


def evaluation(
    data: EvalData,
    results: Sequence[tuple[ModelResult, PerQuery]],
    cutoffs: Sequence[int],
    base_url: str,
    concurrency: int,
) -> Evaluation:
    """Everything found: the models, the baseline when the data has an order, and the paired tests between every two
    of them (baseline first) when there are several."""
    qrels = judged_qrels(data)
    systems: dict[str, PerQuery] = {}
    baseline = None
    if data.ordered:
        systems[BASELINE] = per_query(qrels, input_order_run(data), cutoffs)
        baseline = Baseline(metrics=means(systems[BASELINE]))
    systems |= {result.model: values for result, values in results}
    return Evaluation(
        data=DataSummary(
            source=data.source,
            kind=data.kind,
            queries=len(data.queries),
            evaluated_queries=len(qrels),
            pairs=data.pairs,
        ),
        base_url=base_url,
        concurrency=concurrency,
        models=[result for result, _ in results],
        baseline=baseline,
        significance=paired_tests(systems) if len(systems) > 1 else [],
    )
