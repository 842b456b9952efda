"""What an evaluation found, as written to `--json` and read by the table and the HTML page."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

SCORE_NOTE = (
    "Thresholds and histograms are on relevance_score as the endpoint returns it: by default a 0-1 score (the sigmoid "
    "of the model's logit), the number Dify's and Open WebUI's score thresholds are compared with."
)


class Latency(BaseModel):
    """Milliseconds per request (one query with all its candidates), as the client saw them."""

    p50: float
    p95: float


class Threshold(BaseModel):
    """The lowest score at which precision over all labelled pairs reaches `target_precision`, and the precision and
    recall of keeping the pairs scored at or above it; all None when no score reaches the target. `best_precision` is
    the highest precision any cut reaches (at its lowest score and that cut's recall): what is reachable when the
    target is not."""

    target_precision: float
    score: float | None
    precision: float | None
    recall: float | None
    best_precision: float | None = None
    best_precision_score: float | None = None
    best_precision_recall: float | None = None


class CutPoint(BaseModel):
    """Keeping the pairs scored at or above `score`: their precision (None: nothing kept), the share of relevant pairs
    kept, and how many documents a query keeps on average. `target`: this is the target precision's threshold."""

    score: float
    precision: float | None
    recall: float
    kept_per_query: float
    target: bool = False


class ScoredPair(BaseModel):
    """One labelled pair as scored, for redoing any of the analysis: `doc_id` is `<line>.<index>` for JSONL data (the
    document's position in its sample), the corpus id for BEIR."""

    query_id: str
    doc_id: str
    label: int
    score: float


class ScoreSummary(BaseModel):
    count: int
    mean: float | None
    p10: float | None
    p50: float | None
    p90: float | None


class ScoreDistribution(BaseModel):
    """Scores of relevant (label >= 1) and non-relevant pairs, with a histogram over shared bin edges."""

    relevant: ScoreSummary
    non_relevant: ScoreSummary
    edges: list[float]
    relevant_counts: list[int]
    non_relevant_counts: list[int]


class ReliabilityBin(BaseModel):
    """One bin of a reliability diagram (10 equal-width bins of the predicted probability)."""

    mean_predicted: float
    observed: float  # the share of relevant pairs in the bin
    count: int


class FittedOn(BaseModel):
    queries: int
    pairs: int
    relevant: int
    data_sha256: str = Field(description="sha256 of the labelled pairs as [query, document, label] JSON lines")


class HeldOut(BaseModel):
    """The calibration judged by k-fold cross-validation split by query: each pair's calibrated probability comes from
    a fit that never saw its query. `before` is the relevance_score the endpoint returned (clipped into 0..1)."""

    folds: int
    ece_before: float
    ece_after: float
    brier_before: float
    brier_after: float
    log_loss_before: float
    log_loss_after: float
    precision_at_0_5_before: float | None  # None: no pair scored 0.5 or more
    precision_at_0_5_after: float | None
    recall_at_0_5_before: float
    recall_at_0_5_after: float
    reliability_before: list[ReliabilityBin]
    reliability_after: list[ReliabilityBin]


class CalibrationFit(BaseModel):
    """What `--calibrate` writes per model, and what `import_models.py NAME --calibration FILE` attaches."""

    model: str
    method: Literal["platt"]
    scale: float
    bias: float
    formula: str
    fitted_on: FittedOn
    heldout: HeldOut


class ModelResult(BaseModel):
    model: str
    metrics: dict[str, float]
    latency_ms: Latency
    pairs_per_second: float
    requests: int
    pairs: int
    threshold: Threshold
    trade_off: list[CutPoint] = []
    score_distribution: ScoreDistribution
    calibration: CalibrationFit | None = None
    scored_pairs: list[ScoredPair] = []


class Baseline(BaseModel):
    """The candidates' input order (the retriever's ranking) scored as a run."""

    metrics: dict[str, float]


class Comparison(BaseModel):
    """A two-sided paired t-test on per-query values of one metric: `b` minus `a`."""

    a: str
    b: str
    metric: str
    mean_difference: float
    t: float | None
    p_value: float | None
    # About how many queries a paired t-test needs to find a difference this large (p < 0.05 four times in five),
    # from the spread of the per-query differences; None when they do not vary or do not differ.
    queries_needed: int | None = None


class DataSummary(BaseModel):
    source: str
    kind: str
    queries: int
    evaluated_queries: int
    pairs: int
    most_candidates: int = 0  # the most candidates any query has: recall@K is 1 by construction for K at or above


class Evaluation(BaseModel):
    data: DataSummary
    base_url: str
    concurrency: int
    score_note: str = SCORE_NOTE
    models: list[ModelResult]
    baseline: Baseline | None
    significance: list[Comparison]
    # Why some numbers above mean less than they seem (too few queries or pairs, a metric fixed by the data's shape).
    cautions: list[str] = []
