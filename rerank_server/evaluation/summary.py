"""From scores to findings: each model's metrics, cost, threshold and score spread, the baseline, and the paired tests
between them."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats

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
from rerank_server.evaluation.report import BASELINE, HEADLINE, metric_label
from rerank_server.evaluation.results import (
    Baseline,
    Comparison,
    DataSummary,
    Evaluation,
    Latency,
    ModelResult,
    ScoredPair,
)
from rerank_server.evaluation.threshold import distribution, find_threshold, trade_off

# Below this many queries a paired t-test's p-value and a difference in the means are mostly noise.
MIN_QUERIES = 30
# A threshold whose precision rests on fewer kept pairs than this gets its 95% interval printed.
MIN_KEPT_PAIRS = 100


def model_result(
    data: EvalData, scores: Scores, cutoffs: Sequence[int], target_precision: float, relevant_from: int = 1
) -> tuple[ModelResult, PerQuery]:
    """One model's findings, and its per-query metric values for the paired tests."""
    values = per_query(judged_qrels(data), scored_run(data, scores.by_query), cutoffs)
    flat = [score for query in data.queries for score in scores.by_query[query.qid]]
    relevant = [label >= relevant_from for query in data.queries for label in query.labels]
    p50, p95 = (float(value) for value in np.percentile(scores.latencies_ms, [50, 95]))
    threshold = find_threshold(flat, relevant, target_precision)
    result = ModelResult(
        model=scores.model,
        metrics=means(values),
        latency_ms=Latency(p50=p50, p95=p95),
        pairs_per_second=scores.pairs / scores.seconds if scores.seconds > 0 else 0.0,
        requests=len(scores.latencies_ms),
        pairs=scores.pairs,
        threshold=threshold,
        trade_off=trade_off(flat, relevant, len(data.queries), threshold),
        score_distribution=distribution(flat, relevant),
        scored_pairs=[
            ScoredPair(query_id=query.qid, doc_id=doc_id, label=label, score=score)
            for query in data.queries
            for doc_id, label, score in zip(query.doc_ids, query.labels, scores.by_query[query.qid], strict=True)
        ],
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
    significance = paired_tests(systems) if len(systems) > 1 else []
    most_candidates = max(len(query.documents) for query in data.queries)
    models = [result for result, _ in results]
    return Evaluation(
        data=DataSummary(
            source=data.source,
            kind=data.kind,
            queries=len(data.queries),
            evaluated_queries=len(qrels),
            pairs=data.pairs,
            most_candidates=most_candidates,
        ),
        base_url=base_url,
        concurrency=concurrency,
        models=models,
        baseline=baseline,
        significance=significance,
        cautions=cautions(len(qrels), most_candidates, models, significance),
    )


def _threshold_caution(model: ModelResult) -> str | None:
    """The 95% interval of a threshold's precision when it rests on few pairs."""
    threshold = model.threshold
    if threshold.score is None or threshold.precision is None:
        return None
    kept = sum(1 for pair in model.scored_pairs if pair.score >= threshold.score)
    if kept >= MIN_KEPT_PAIRS:
        return None
    hits = round(threshold.precision * kept)
    interval = stats.binomtest(hits, kept).proportion_ci(method="wilson")
    # Pairs kept for a ±0.05 interval around this precision (the normal approximation).
    wanted = max(MIN_KEPT_PAIRS, int(np.ceil(1.96**2 * max(threshold.precision * (1 - threshold.precision), 0.05)
                                             / 0.05**2)))  # fmt: skip
    return (
        f"{model.model}: the threshold {threshold.score:.4f} keeps only {kept} pairs, so its precision "
        f"{threshold.precision:.2f} could be anywhere from {interval.low:.2f} to {interval.high:.2f} (95% interval); "
        f"about {wanted} pairs kept above it would pin it to ±0.05"
    )


def cautions(
    evaluated: int, most_candidates: int, models: Sequence[ModelResult], significance: Sequence[Comparison]
) -> list[str]:
    """What makes the numbers mean less than they seem: too few queries for the differences and p-values, too few
    pairs behind a threshold, a recall@K that the data's shape fixes at the same value for every row."""
    found = []
    if evaluated < MIN_QUERIES:
        found.append(
            f"only {evaluated} queries have a relevant document: too few for the differences between rows or their "
            f"p-values to mean much (at least {MIN_QUERIES}, and hundreds for small differences)"
        )
    for comparison in significance:
        needed = comparison.queries_needed
        if comparison.metric == HEADLINE and needed is not None and needed > evaluated:
            found.append(
                f"{comparison.b} vs {comparison.a}: a difference of {comparison.mean_difference:+.4f} in "
                f"{metric_label(HEADLINE)} needs about {needed} queries to show (p < 0.05 four times in five); "
                f"this set has {evaluated}"
            )
    found += [text for model in models if (text := _threshold_caution(model))]
    recalls = [name for name in (models[0].metrics if models else {}) if name.startswith("recall@")]
    if fixed := [name for name in recalls if int(name.partition("@")[2]) >= most_candidates]:
        found.append(
            f"no query has more than {most_candidates} candidates, so {', '.join(map(metric_label, fixed))} counts "
            f"every candidate and is the same for every row; --k {max(1, most_candidates // 2)} gives a recall that "
            "can tell models apart"
        )
    return found
