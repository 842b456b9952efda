"""Where to cut: the lowest score that keeps precision at a target over all labelled pairs, the best precision any
cut reaches, the trade-off at a handful of cuts, the precision-recall curve, and how the scores of relevant and
non-relevant pairs are spread."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rerank_server.evaluation.results import CutPoint, ScoreDistribution, ScoreSummary, Threshold

HISTOGRAM_BINS = 20


# The thresholds people type into Dify's or Open WebUI's box, for 0-1 scores; 0.5 reads directly once calibrated.
_SCORE_CUTS = (0.9, 0.7, 0.5, 0.3, 0.1, 0.05, 0.01)
# For scores beyond 0-1 (an endpoint returning logits): the scores at these percentiles.
_PERCENTILE_CUTS = (90, 70, 50, 30, 10)


def precision_recall_curve(
    scores: Sequence[float], relevant: Sequence[bool]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every cut a threshold can make, highest score first: (score, precision, recall, pairs kept) of keeping the pairs
    scored at or above it. A cut keeps every pair with an equal score, so each distinct score is one cut."""
    values = np.asarray(scores, dtype=float)
    hits = np.asarray(relevant, dtype=bool)
    order = np.argsort(-values, kind="stable")
    values, hits = values[order], hits[order]
    kept_relevant = np.cumsum(hits)
    kept = np.arange(1, values.size + 1)
    last_of_tie = np.append(values[1:] != values[:-1], True) if values.size else np.zeros(0, dtype=bool)
    total = max(int(hits.sum()), 1)
    return (
        values[last_of_tie],
        (kept_relevant / np.maximum(kept, 1))[last_of_tie],
        (kept_relevant / total)[last_of_tie],
        kept[last_of_tie],
    )


def find_threshold(scores: Sequence[float], relevant: Sequence[bool], target_precision: float) -> Threshold:
    """The lowest score s such that the pairs scored >= s have precision >= target_precision, with that precision and
    the recall of relevant pairs kept; and, reached or not, the best precision any cut reaches (at its lowest score,
    the most recall at that precision). Precision is not monotone in s: every distinct score is tried."""
    none = Threshold(target_precision=target_precision, score=None, precision=None, recall=None)
    if not len(scores) or not any(relevant):
        return none
    cuts, precision, recall, _ = precision_recall_curve(scores, relevant)
    best = int(np.flatnonzero(precision >= precision.max() - 1e-12)[-1])
    found = none.model_copy(
        update={
            "best_precision": float(precision[best]),
            "best_precision_score": float(cuts[best]),
            "best_precision_recall": float(recall[best]),
        }
    )
    # The tolerance keeps 9/10 from missing 0.9 by a rounding error.
    meets = np.flatnonzero(precision >= target_precision - 1e-12)
    if not meets.size:
        return found
    cut = int(meets[-1])
    return found.model_copy(
        update={"score": float(cuts[cut]), "precision": float(precision[cut]), "recall": float(recall[cut])}
    )


def trade_off(scores: Sequence[float], relevant: Sequence[bool], queries: int, threshold: Threshold) -> list[CutPoint]:
    """Precision, recall and documents kept per query at a handful of thresholds, highest first: fixed ones for 0-1
    scores (else the scores' percentiles), the target's threshold, or the best precision's when none reaches it."""
    values = np.asarray(scores, dtype=float)
    hits = np.asarray(relevant, dtype=bool)
    if not values.size:
        return []
    if values.min() >= 0 and values.max() <= 1:
        chosen = set(_SCORE_CUTS)
    else:
        chosen = {float(f"{v:.3g}") for v in np.percentile(values, _PERCENTILE_CUTS)}
    chosen |= {threshold.best_precision_score if threshold.score is None else threshold.score} - {None}
    total = max(int(hits.sum()), 1)
    points = []
    for cut in sorted(chosen, reverse=True):
        kept = values >= cut
        count = int(kept.sum())
        points.append(
            CutPoint(
                score=cut,
                precision=float(hits[kept].sum() / count) if count else None,
                recall=float(hits[kept].sum() / total),
                kept_per_query=count / max(queries, 1),
                target=cut == threshold.score,
            )
        )
    return points


def _summary(values: np.ndarray) -> ScoreSummary:
    if not values.size:
        return ScoreSummary(count=0, mean=None, p10=None, p50=None, p90=None)
    p10, p50, p90 = (float(v) for v in np.percentile(values, [10, 50, 90]))
    return ScoreSummary(count=int(values.size), mean=float(values.mean()), p10=p10, p50=p50, p90=p90)


def distribution(scores: Sequence[float], relevant: Sequence[bool]) -> ScoreDistribution:
    """Summaries and histograms of the relevant and the non-relevant pairs' scores: bins over 0-1 for 0-1 scores,
    else over the scores' range (an endpoint that returns logits)."""
    values = np.asarray(scores, dtype=float)
    hits = np.asarray(relevant, dtype=bool)
    within_0_1 = not values.size or (values.min() >= 0 and values.max() <= 1)
    low, high = (0.0, 1.0) if within_0_1 else (values.min(), values.max())
    edges = np.histogram_bin_edges(values, bins=HISTOGRAM_BINS, range=(float(low), float(high)))
    return ScoreDistribution(
        relevant=_summary(values[hits]),
        non_relevant=_summary(values[~hits]),
        edges=[float(edge) for edge in edges],
        relevant_counts=[int(count) for count in np.histogram(values[hits], bins=edges)[0]],
        non_relevant_counts=[int(count) for count in np.histogram(values[~hits], bins=edges)[0]],
    )
