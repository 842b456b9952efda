"""Where to cut: the lowest score that keeps precision at a target over all labelled pairs, and how the scores of
relevant and non-relevant pairs are spread."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rerank_server.evaluation.results import ScoreDistribution, ScoreSummary, Threshold

HISTOGRAM_BINS = 20


def find_threshold(scores: Sequence[float], relevant: Sequence[bool], target_precision: float) -> Threshold:
    """The lowest score s such that the pairs scored >= s have precision >= target_precision, with that precision and
    the recall of relevant pairs kept. Precision is not monotone in s: every distinct score is tried, and the lowest
    that meets the target (the most recall at that precision) wins."""
    values = np.asarray(scores, dtype=float)
    hits = np.asarray(relevant, dtype=bool)
    total_relevant = int(hits.sum())
    none = Threshold(target_precision=target_precision, score=None, precision=None, recall=None)
    if not values.size or not total_relevant:
        return none
    order = np.argsort(-values, kind="stable")
    values, hits = values[order], hits[order]
    kept_relevant = np.cumsum(hits)
    kept = np.arange(1, values.size + 1)
    # A cut keeps every pair with an equal score: only the last position of each run of equal scores is a cut.
    last_of_tie = np.append(values[1:] != values[:-1], True)
    precision = kept_relevant / kept
    # The tolerance keeps 9/10 from missing 0.9 by a rounding error.
    meets = np.flatnonzero(last_of_tie & (precision >= target_precision - 1e-12))
    if not meets.size:
        return none
    cut = int(meets[-1])
    return Threshold(
        target_precision=target_precision,
        score=float(values[cut]),
        precision=float(precision[cut]),
        recall=float(kept_relevant[cut] / total_relevant),
    )


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
