"""The terminal table and the `--json` file of an evaluation."""

from __future__ import annotations

import textwrap
from pathlib import Path

from rerank_server.evaluation.errors import EvaluationError
from rerank_server.evaluation.results import CalibrationFit, Comparison, Evaluation, ModelResult

BASELINE = "baseline"
HEADLINE = "ndcg@10"
_NAMES = {"ndcg": "nDCG", "mrr": "MRR", "map": "MAP", "recall": "R"}


def metric_label(name: str) -> str:
    """`ndcg@10` → `nDCG@10`, `map` → `MAP`."""
    base, at, cutoff = name.partition("@")
    return f"{_NAMES.get(base, base)}{at}{cutoff}"


def _number(value: float | None, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def rows(evaluation: Evaluation) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the summary table, baseline first: what the terminal and the HTML page both show."""
    names = list(evaluation.models[0].metrics) if evaluation.models else []
    target = evaluation.models[0].threshold.target_precision if evaluation.models else 0.0
    header = ["model", *map(metric_label, names), "p50 ms", "p95 ms", "pairs/s", f"score at P≥{target:g}", "recall"]
    cells = []
    if evaluation.baseline is not None:
        cells.append(["baseline (input order)", *(_number(evaluation.baseline.metrics[n]) for n in names)] + ["–"] * 5)
    for model in evaluation.models:
        cells.append(
            [model.model, *(_number(model.metrics[n]) for n in names)]
            + [_number(model.latency_ms.p50, 1), _number(model.latency_ms.p95, 1), f"{model.pairs_per_second:,.0f}"]
            + [_number(model.threshold.score), _number(model.threshold.recall, 3)]
        )
    return header, cells


def calibration_line(model: str, fit: CalibrationFit) -> str:
    """One model's calibration in a line: the map, and ECE, Brier score and precision at 0.5 before and after."""
    held = fit.heldout
    return (
        f"{model}: sigmoid({fit.scale:.4g} * (raw {'-' if fit.bias >= 0 else '+'} {abs(fit.bias):.4g}));  "
        f"ECE {held.ece_before:.3f} → {held.ece_after:.3f}, "
        f"Brier {held.brier_before:.3f} → {held.brier_after:.3f}, log loss {held.log_loss_before:.3f} → "
        f"{held.log_loss_after:.3f}, precision at 0.5 {_number(held.precision_at_0_5_before, 3)} → "
        f"{_number(held.precision_at_0_5_after, 3)}, recall at 0.5 {held.recall_at_0_5_before:.3f} → "
        f"{held.recall_at_0_5_after:.3f}"
    )


def threshold_line(model: ModelResult) -> str:
    """The threshold in words; when no score reaches the target, the best precision that one does reach."""
    found = model.threshold
    if found.score is not None:
        return (
            f"keep documents scored ≥ {found.score:.4f}: precision {found.precision:.3f}, recall {found.recall:.3f} "
            "of the relevant pairs"
        )
    if found.best_precision is None:
        return f"no score reaches precision {found.target_precision:g} (no relevant pair)"
    return (
        f"no score reaches precision {found.target_precision:g}; best precision reached: {found.best_precision:.3f} "
        f"at score ≥ {found.best_precision_score:.4f} (recall {found.best_precision_recall:.3f})"
    )


TRADE_OFF_HEADER = ["threshold", "precision", "recall", "docs kept/query"]


def trade_off_rows(model: ModelResult) -> list[list[str]]:
    """The model's trade-off table: a row per threshold, the target's marked."""
    target = model.threshold.target_precision
    return [
        [f"{point.score:.4g}", _number(point.precision, 3), f"{point.recall:.3f}", f"{point.kept_per_query:.2f}"]
        + ([f"← P≥{target:g}"] if point.target else [""])
        for point in model.trade_off
    ]


def _aligned(header: list[str], cells: list[list[str]], indent: str = "") -> list[str]:
    widths = [max(len(row[column]) for row in [header, *cells]) for column in range(len(header))]
    lines = []
    for index, row in enumerate([header, *cells]):
        lines.append(indent + "  ".join(cell.ljust(width) if i == 0 else cell.rjust(width) for i, (cell, width) in
                                        enumerate(zip(row, widths, strict=True))).rstrip())  # fmt: skip
        if index == 0:
            lines.append(
                indent
                + "  ".join("-" * width if name else "" for name, width in zip(header, widths, strict=True)).rstrip()
            )
    return lines


def headline_tests(evaluation: Evaluation) -> list[Comparison]:
    """The paired tests on nDCG@10, the ones the table's reader wants first."""
    return [comparison for comparison in evaluation.significance if comparison.metric == HEADLINE]


def describe(comparison: Comparison) -> str:
    p = "p = n/a (no variation)" if comparison.p_value is None else f"p = {comparison.p_value:.3g}"
    return f"{comparison.b} vs {comparison.a}: {comparison.mean_difference:+.4f} ({p})"


def table(evaluation: Evaluation) -> str:
    """The summary as fixed-width text: data, the table, the paired tests on nDCG@10, and what the scores are."""
    header, cells = rows(evaluation)
    lines = [
        f"{evaluation.data.source}: {evaluation.data.queries} queries ({evaluation.data.evaluated_queries} with a "
        f"relevant document), {evaluation.data.pairs} pairs, scored by {evaluation.base_url} "
        f"(concurrency {evaluation.concurrency})",
        "",
    ]
    lines += _aligned(header, cells)
    lines += ["", "Thresholds (documents scored at or above one are kept; precision and recall over all pairs):"]
    for model in evaluation.models:
        lines += [f"  {model.model}: {threshold_line(model)}"]
        lines += _aligned([*TRADE_OFF_HEADER, ""], trade_off_rows(model), indent="    ")
    if calibrated := [model for model in evaluation.models if model.calibration is not None]:
        folds = calibrated[0].calibration.heldout.folds  # type: ignore[union-attr]
        lines += ["", f"Calibration, held out ({folds}-fold cross-validation split by query), before → after:"]
        lines += [f"  {calibration_line(model.model, model.calibration)}" for model in calibrated]  # type: ignore[arg-type]
    if tests := headline_tests(evaluation):
        lines += ["", "Paired t-test on nDCG@10 per query (two-sided):", *(f"  {describe(c)}" for c in tests)]
    if evaluation.cautions:
        lines += ["", "Caution:"]
        for text in evaluation.cautions:
            lines += textwrap.wrap(text, 110, initial_indent="  ! ", subsequent_indent="    ")
    lines += ["", *textwrap.wrap(evaluation.score_note, 100)]
    return "\n".join(lines)


def write_json(evaluation: Evaluation, path: Path) -> None:
    """The evaluation as JSON at `path`."""
    try:
        path.write_text(evaluation.model_dump_json(indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        raise EvaluationError(f"cannot write {path}: {exc.strerror or exc}") from None
