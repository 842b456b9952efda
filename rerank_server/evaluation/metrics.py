"""Ranking quality with ir-measures (trec_eval's definitions: linear-gain nDCG, AP, recall, and RR with a cutoff),
averaged over the queries that have a relevant document, and paired t-tests between systems."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from statistics import fmean, stdev

import ir_measures
from ir_measures import AP, RR, R, nDCG
from scipy import stats

from rerank_server.evaluation.data import EvalData, Qrels
from rerank_server.evaluation.results import Comparison

Run = dict[str, dict[str, float]]
PerQuery = dict[str, dict[str, float]]  # metric name → query id → value
DEFAULT_CUTOFF = 10


def measures(cutoffs: Sequence[int]) -> dict[str, ir_measures.Measure]:
    """The reported metrics by their JSON names: nDCG, MRR and recall at each cutoff (10 always), and MAP."""
    ks = sorted({DEFAULT_CUTOFF, *cutoffs})
    chosen: dict[str, ir_measures.Measure] = {f"ndcg@{k}": nDCG @ k for k in ks}
    chosen |= {f"mrr@{k}": RR @ k for k in ks}
    chosen["map"] = AP
    chosen |= {f"recall@{k}": R @ k for k in ks}
    return chosen


def _strict(order: Sequence[int]) -> dict[int, float]:
    """Strictly decreasing run scores for candidates listed best first. Libraries break ties in their own ways
    (trec_eval by document id, descending), so no tie is left for them to break."""
    return {index: float(len(order) - rank) for rank, index in enumerate(order)}


def scored_run(data: EvalData, scores: dict[str, list[float]]) -> Run:
    """The run a model's scores make: candidates by score, equal scores in input order."""
    run: Run = {}
    for query in data.queries:
        values = scores[query.qid]
        order = sorted(range(len(values)), key=lambda index: (-values[index], index))
        run[query.qid] = {query.doc_ids[index]: value for index, value in _strict(order).items()}
    return run


def input_order_run(data: EvalData) -> Run:
    """The run of the candidates' input order: the retriever's ranking, the baseline."""
    return {q.qid: {q.doc_ids[i]: value for i, value in _strict(range(len(q.doc_ids))).items()} for q in data.queries}


def judged_qrels(data: EvalData) -> Qrels:
    """The judgements of the queries that have at least one relevant document (label >= 1): the ones averaged over.
    ir-measures averages over every query of the qrels, so the others are left out here."""
    return {qid: labels for qid, labels in data.qrels.items() if any(label >= 1 for label in labels.values())}


def per_query(qrels: Qrels, run: Run, cutoffs: Sequence[int]) -> PerQuery:
    """Each metric's value on each query of `qrels` (a query missing from `run` scores 0, as in trec_eval -c)."""
    by_measure = {measure: name for name, measure in measures(cutoffs).items()}
    values: PerQuery = {name: dict.fromkeys(qrels, 0.0) for name in by_measure.values()}
    kept_run = {qid: docs for qid, docs in run.items() if qid in qrels}
    for metric in ir_measures.iter_calc(list(by_measure), qrels, kept_run):
        values[by_measure[metric.measure]][metric.query_id] = float(metric.value)
    return values


def means(values: PerQuery) -> dict[str, float]:
    """Each metric averaged over queries."""
    return {name: fmean(by_query.values()) for name, by_query in values.items()}


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


# A paired t-test at two-sided p < 0.05 finds a true difference four times in five with about
# ((z(0.975) + z(0.8)) * sd / difference)^2 queries (the normal approximation, close enough beyond a dozen).
_POWER_Z = float(stats.norm.ppf(0.975) + stats.norm.ppf(0.8))


def queries_needed(differences: Sequence[float]) -> int | None:
    """About how many queries a paired t-test needs to find a mean difference as large as these per-query differences'
    (p < 0.05, 80% power); None when they never vary or average to nothing."""
    if len(differences) < 2:
        return None
    spread, mean = stdev(differences), fmean(differences)
    if spread < 1e-12 or abs(mean) < 1e-12:
        return None
    return max(2, math.ceil((_POWER_Z * spread / abs(mean)) ** 2))


def paired_tests(systems: dict[str, PerQuery]) -> list[Comparison]:
    """A two-sided paired t-test (scipy's ttest_rel) on every metric between every two systems, in the order given."""
    comparisons = []
    for (a, values_a), (b, values_b) in itertools.combinations(systems.items(), 2):
        for metric, by_query in values_a.items():
            queries = sorted(by_query)
            first = [by_query[qid] for qid in queries]
            second = [values_b[metric][qid] for qid in queries]
            difference = fmean(second) - fmean(first)
            differences = [y - x for x, y in zip(first, second, strict=True)]
            if len(queries) < 2 or max(differences) - min(differences) < 1e-12:
                t = p = math.nan  # differences that never vary leave nothing to test: scipy would warn
            else:
                result = stats.ttest_rel(second, first)
                t, p = float(result.statistic), float(result.pvalue)
            comparisons.append(
                Comparison(
                    a=a,
                    b=b,
                    metric=metric,
                    mean_difference=difference,
                    t=_finite(t),
                    p_value=_finite(p),
                    queries_needed=queries_needed(differences),
                )  # fmt: skip
            )
    return comparisons
