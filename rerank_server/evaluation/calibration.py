"""Calibration: a monotone map from a model's raw score to the probability that a pair is relevant, fitted on the
user's labelled pairs, judged on pairs it did not see, and written as the file `import_models.py --calibration`
attaches to the stored model.

The map is Platt scaling in vLLM's form, `p = sigmoid(scale * (raw - bias))`. The fit is scikit-learn's logistic
regression (no penalty) on Platt's smoothed targets, (N+ + 1) / (N+ + 2) for relevant pairs and 1 / (N- + 2) for the
others, given as sample weights: Platt's own recipe, which keeps the fit finite on data that one cut separates. The
report is held out: k-fold cross-validation split by query, so a query's pairs are never on both sides.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, log_loss
from sklearn.model_selection import GroupKFold

from rerank_server.evaluation.data import EvalData
from rerank_server.evaluation.errors import EvaluationError
from rerank_server.evaluation.results import CalibrationFit, FittedOn, HeldOut, ReliabilityBin

FORMULA = "sigmoid(scale * (raw - bias))"
MIN_RELEVANT = 20
MIN_NON_RELEVANT = 20
MIN_QUERIES = 5
FOLDS = 5
ECE_BINS = 10
THRESHOLD = 0.5


def check_enough(data: EvalData, relevant_from: int) -> None:
    """Refuse, in one line naming what is missing, data too small to fit and judge a calibration on."""
    labels = [label >= relevant_from for query in data.queries for label in query.labels]
    relevant, queries = sum(labels), len(data.queries)
    missing = []
    if relevant < MIN_RELEVANT:
        missing.append(f"{relevant} relevant pairs (label >= {relevant_from}), at least {MIN_RELEVANT} needed")
    if len(labels) - relevant < MIN_NON_RELEVANT:
        missing.append(f"{len(labels) - relevant} non-relevant pairs, at least {MIN_NON_RELEVANT} needed")
    if queries < MIN_QUERIES:
        missing.append(f"{queries} queries, at least {MIN_QUERIES} needed")
    if missing:
        raise EvaluationError(f"{data.source}: too little data to calibrate on: {'; '.join(missing)}")


def sigmoid(values: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-values))


def fit_platt(raw: np.ndarray, relevant: np.ndarray) -> tuple[float, float]:
    """(scale, bias) of `sigmoid(scale * (raw - bias))` fitted to the labels, with Platt's smoothed targets."""
    positives = int(relevant.sum())
    negatives = relevant.size - positives
    target = np.where(relevant, (positives + 1) / (positives + 2), 1 / (negatives + 2))
    # Each pair twice, once per class, weighted by its target: the cross-entropy with soft targets.
    features = np.concatenate([raw, raw]).reshape(-1, 1)
    classes = np.concatenate([np.ones(raw.size), np.zeros(raw.size)])
    weights = np.concatenate([target, 1 - target])
    model = LogisticRegression(C=np.inf, max_iter=1000).fit(features, classes, sample_weight=weights)
    scale = float(model.coef_[0][0])
    bias = -float(model.intercept_[0]) / scale if scale else 0.0
    return scale, bias


def expected_calibration_error(predicted: np.ndarray, relevant: np.ndarray) -> float:
    """ECE over 10 equal-width bins of the predicted probability: the pair-weighted gap between the mean prediction
    and the share of relevant pairs in each bin."""
    return sum(b.count * abs(b.mean_predicted - b.observed) for b in reliability(predicted, relevant)) / predicted.size


def reliability(predicted: np.ndarray, relevant: np.ndarray) -> list[ReliabilityBin]:
    """The non-empty bins of a reliability diagram: mean prediction, observed share of relevant pairs, pairs."""
    bins = np.minimum((predicted * ECE_BINS).astype(int), ECE_BINS - 1)
    return [
        ReliabilityBin(
            mean_predicted=float(predicted[bins == b].mean()),
            observed=float(relevant[bins == b].mean()),
            count=int((bins == b).sum()),
        )
        for b in range(ECE_BINS)
        if (bins == b).any()
    ]


def _precision_recall(predicted: np.ndarray, relevant: np.ndarray) -> tuple[float | None, float]:
    kept = predicted >= THRESHOLD
    precision = float(relevant[kept].mean()) if kept.any() else None
    return precision, float(relevant[kept].sum() / relevant.sum())


def _held_out(raw: np.ndarray, served: np.ndarray, relevant: np.ndarray, groups: np.ndarray) -> HeldOut:
    folds = min(FOLDS, len(set(groups.tolist())))
    after = np.empty_like(raw)
    for train, test in GroupKFold(n_splits=folds).split(raw, relevant, groups):
        if relevant[train].all() or not relevant[train].any():
            raise EvaluationError(
                "a cross-validation fold has only one kind of pair to learn from: label more queries with both "
                "relevant and non-relevant documents"
            )
        scale, bias = fit_platt(raw[train], relevant[train])
        after[test] = sigmoid(scale * (raw[test] - bias))
    # What the endpoint returns as relevance_score now (a sigmoid, p(yes), ColBERT's mean cosine, or an earlier
    # calibration's probability), read as a probability: clipped into 0..1.
    before = np.clip(served, 0.0, 1.0)
    precision_before, recall_before = _precision_recall(before, relevant)
    precision_after, recall_after = _precision_recall(after, relevant)
    return HeldOut(
        folds=folds,
        ece_before=expected_calibration_error(before, relevant),
        ece_after=expected_calibration_error(after, relevant),
        brier_before=float(brier_score_loss(relevant, before)),
        brier_after=float(brier_score_loss(relevant, after)),
        log_loss_before=float(log_loss(relevant, before, labels=[False, True])),
        log_loss_after=float(log_loss(relevant, after, labels=[False, True])),
        precision_at_0_5_before=precision_before,
        precision_at_0_5_after=precision_after,
        recall_at_0_5_before=recall_before,
        recall_at_0_5_after=recall_after,
        reliability_before=reliability(before, relevant),
        reliability_after=reliability(after, relevant),
    )


def data_digest(data: EvalData) -> str:
    """sha256 of the labelled pairs (query, document, label), in order: the same pairs give the same digest whatever
    file format brought them."""
    digest = hashlib.sha256()
    for query in data.queries:
        for document, label in zip(query.documents, query.labels, strict=True):
            digest.update(json.dumps([query.text, document, label], ensure_ascii=False).encode("utf-8") + b"\n")
    return digest.hexdigest()


def calibrate(
    model_id: str,
    data: EvalData,
    raw_by_query: dict[str, list[float]],
    served_by_query: dict[str, list[float]],
    relevant_from: int,
) -> CalibrationFit:
    """The Platt map of `model_id`'s raw scores fitted on every labelled pair, with its held-out report against the
    relevance scores the endpoint served (`served_by_query`); refuses a fit that would reverse the model's ranking."""
    raw = np.array([s for query in data.queries for s in raw_by_query[query.qid]], dtype=np.float64)
    served = np.array([s for query in data.queries for s in served_by_query[query.qid]], dtype=np.float64)
    relevant = np.array([label >= relevant_from for query in data.queries for label in query.labels])
    groups = np.array([index for index, query in enumerate(data.queries) for _ in query.labels])
    scale, bias = fit_platt(raw, relevant)
    if scale <= 0:
        raise EvaluationError(
            f"{model_id}: the calibration's scale comes out negative ({scale:.4g}): the model ranks non-relevant "
            "above relevant on this data"
        )
    return CalibrationFit(
        model=model_id,
        method="platt",
        scale=scale,
        bias=bias,
        formula=FORMULA,
        fitted_on=FittedOn(
            queries=len(data.queries), pairs=int(raw.size), relevant=int(relevant.sum()), data_sha256=data_digest(data)
        ),
        heldout=_held_out(raw, served, relevant, groups),
    )


def file_name(store_name: str) -> str:
    """`<store name>.calibration.json`, the store name made safe as a file name whatever the endpoint said."""
    return f"{re.sub(r'[^a-z0-9._-]+', '-', store_name.lower()).strip('-.') or 'model'}.calibration.json"


def write_calibrations(fits: Sequence[tuple[str, CalibrationFit]], folder: Path) -> list[Path]:
    """Each fit as `folder/<store name>.calibration.json`; the paths written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for store_name, fit in fits:
            path = folder / file_name(store_name)
            path.write_text(fit.model_dump_json(indent=2) + "\n", encoding="utf-8")
            written.append(path)
    except OSError as exc:
        raise EvaluationError(f"cannot write the calibration to {folder}: {exc.strerror or exc}") from None
    return written
