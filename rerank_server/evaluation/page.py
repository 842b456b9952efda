"""The `--report` page: one self-contained HTML file (figures embedded as PNG data, no outside URL) with the table,
each model's threshold trade-off, the cautions, the paired tests, metrics per model, quality against latency, the
precision-recall curves, each model's score histograms with its threshold, and with --calibrate each model's
reliability diagram. A model has one colour in every figure."""

from __future__ import annotations

import base64
import io
from html import escape
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from rerank_server.evaluation.errors import EvaluationError
from rerank_server.evaluation.report import (
    BASELINE,
    HEADLINE,
    TRADE_OFF_HEADER,
    calibration_line,
    describe,
    metric_label,
    rows,
    threshold_line,
    trade_off_rows,
)
from rerank_server.evaluation.results import Evaluation, ModelResult
from rerank_server.evaluation.threshold import precision_recall_curve

# Matplotlib's tab10 without its grey, which is the baseline's.
_PALETTE = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive",
            "tab:cyan"]  # fmt: skip
BASELINE_COLOUR = "tab:gray"

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border-bottom: 1px solid #ddd; padding: .3em .7em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
img { max-width: 100%; }
.note { color: #555; }
"""


def _png(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return f'<img alt="" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode("ascii")}">'


def _legend_below(axes: Axes) -> None:
    # Below the plot: inside it, the legend would hide bars and points near 1.0.
    axes.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.18), ncols=2, frameon=False)


def colours(evaluation: Evaluation) -> dict[str, str]:
    """One colour per model, the same in every figure (matplotlib's cycle restarts in each), grey for the baseline."""
    found = {model.model: _PALETTE[index % len(_PALETTE)] for index, model in enumerate(evaluation.models)}
    return found | {BASELINE: BASELINE_COLOUR}


def _metrics_figure(evaluation: Evaluation) -> Figure:
    colour = colours(evaluation)
    systems = ([(BASELINE, evaluation.baseline.metrics)] if evaluation.baseline else []) + [
        (model.model, model.metrics) for model in evaluation.models
    ]
    names = list(evaluation.models[0].metrics)
    figure = Figure(figsize=(max(6.0, 1.1 * len(names)), 3.5))
    axes = figure.subplots()
    width = 0.8 / len(systems)
    for number, (label, metrics) in enumerate(systems):
        positions = [index + (number - (len(systems) - 1) / 2) * width for index in range(len(names))]
        axes.bar(positions, [metrics[name] for name in names], width, label=label, color=colour[label])
    axes.set_xticks(range(len(names)), [metric_label(name) for name in names])
    axes.set_ylim(0, 1.05)
    axes.set_title("Ranking quality per model")
    _legend_below(axes)
    return figure


def _cost_figure(evaluation: Evaluation) -> Figure:
    figure = Figure(figsize=(6, 4))
    axes = figure.subplots()
    colour = colours(evaluation)
    for model in evaluation.models:
        label = f"{model.model} ({model.pairs_per_second:,.0f} pairs/s)"
        axes.scatter(model.latency_ms.p50, model.metrics[HEADLINE], label=label, color=colour[model.model])
    if evaluation.baseline:
        axes.axhline(
            evaluation.baseline.metrics[HEADLINE], linestyle="--", color=BASELINE_COLOUR, label="baseline (input order)"
        )
    # From zero on both axes, so that distances read as ratios.
    axes.set_xlim(0, 1.1 * max(model.latency_ms.p50 for model in evaluation.models))
    axes.set_ylim(0, 1.05)
    _legend_below(axes)
    axes.set_xlabel("latency p50 per request (ms)")
    axes.set_ylabel(metric_label(HEADLINE))
    axes.set_title("Quality against latency")
    return figure


def _precision_recall_figure(evaluation: Evaluation) -> Figure:
    """Each model's precision against recall over every cut, its threshold marked, and the target precision."""
    figure = Figure(figsize=(6, 4))
    axes = figure.subplots()
    colour = colours(evaluation)
    for model in evaluation.models:
        pairs = model.scored_pairs
        _, precision, recall, _ = precision_recall_curve([p.score for p in pairs], [p.label >= 1 for p in pairs])
        axes.plot(recall, precision, drawstyle="steps-post", color=colour[model.model], label=model.model)
        if model.threshold.score is not None:
            axes.plot(model.threshold.recall, model.threshold.precision, "o", color=colour[model.model])
    if evaluation.models:
        target = evaluation.models[0].threshold.target_precision
        axes.axhline(target, linestyle=":", color="black", label=f"target precision {target:g}")
    axes.set_xlim(0, 1.02)
    axes.set_ylim(0, 1.05)
    axes.set_xlabel("recall (share of relevant pairs kept)")
    axes.set_ylabel("precision of the pairs kept")
    axes.set_title("Precision against recall, one point per threshold (dot: the target's)")
    _legend_below(axes)
    return figure


def _histogram_figure(model: ModelResult) -> Figure:
    figure = Figure(figsize=(6, 3))
    axes = figure.subplots()
    spread = model.score_distribution
    axes.stairs(spread.non_relevant_counts, spread.edges, fill=True, alpha=0.5, label="non-relevant")
    axes.stairs(spread.relevant_counts, spread.edges, fill=True, alpha=0.5, label="relevant")
    threshold = model.threshold
    if threshold.score is not None:
        axes.axvline(threshold.score, color="black", linestyle="--",
                     label=f"threshold {threshold.score:.3f} (P≥{threshold.target_precision:g})")  # fmt: skip
    axes.set_xlabel("relevance_score")
    axes.set_ylabel("pairs")
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))  # pair counts: no 0.5 of a pair on small sets
    axes.set_title(model.model)
    axes.legend(fontsize="small")
    return figure


def _reliability_figure(model: ModelResult) -> Figure:
    """Predicted probability against the observed share of relevant pairs, held out, before and after calibration:
    a calibrated model's points lie on the diagonal."""
    assert model.calibration is not None
    held = model.calibration.heldout
    figure = Figure(figsize=(4.5, 4.5))
    axes = figure.subplots()
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfectly calibrated")
    for label, bins, marker in (
        (f"before (ECE {held.ece_before:.3f})", held.reliability_before, "o"),
        (f"after (ECE {held.ece_after:.3f})", held.reliability_after, "s"),
    ):
        axes.plot([b.mean_predicted for b in bins], [b.observed for b in bins], marker=marker, label=label)
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.set_xlabel("predicted probability of relevance")
    axes.set_ylabel("share of relevant pairs")
    axes.set_title(f"{model.model}: reliability, held out")
    _legend_below(axes)
    return figure


def _table(header: list[str], cells: list[list[str]]) -> str:
    head = "".join(f"<th>{escape(cell)}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>" for row in cells)
    return f"<table><tr>{head}</tr>{body}</table>"


def _threshold_section(model: ModelResult) -> str:
    return f"<h3>{escape(model.model)}</h3><p>{escape(threshold_line(model))}</p>" + _table(
        [*TRADE_OFF_HEADER, ""], trade_off_rows(model)
    )


def render(evaluation: Evaluation) -> str:
    """The report as one HTML document."""
    data = evaluation.data
    significance = [
        [f"{c.b} vs {c.a}", metric_label(c.metric), f"{c.mean_difference:+.4f}", "–" if c.t is None else f"{c.t:.3f}",
         "–" if c.p_value is None else f"{c.p_value:.3g}"]
        for c in evaluation.significance
    ]  # fmt: skip
    parts = [
        "<!DOCTYPE html>",
        '<html><head><meta charset="utf-8"><title>Reranker evaluation</title>',
        f"<style>{_STYLE}</style></head><body>",
        "<h1>Reranker evaluation</h1>",
        f"<p>{escape(data.source)} ({escape(data.kind)}): {data.queries} queries, {data.evaluated_queries} with a "
        f"relevant document (metrics average over these), {data.pairs} pairs; scored by "
        f"<code>{escape(evaluation.base_url)}</code>, {evaluation.concurrency} request(s) at a time.</p>",
        _table(*rows(evaluation)),
        *(
            ["<h2>Caution</h2><ul>" + "".join(f"<li>{escape(text)}</li>" for text in evaluation.cautions) + "</ul>"]
            if evaluation.cautions
            else []
        ),
        '<p class="note">Metrics follow trec_eval (linear-gain nDCG); the baseline is the order the candidates came '
        "in (the retriever's ranking), absent for positive/negative data, which has no order.</p>",
        "<h2>Threshold</h2>",
        *(_threshold_section(model) for model in evaluation.models),
        f'<p class="note">{escape(evaluation.score_note)}</p>',
    ]
    if calibrated := [model for model in evaluation.models if model.calibration is not None]:
        parts += [
            "<h2>Calibration</h2>",
            "<ul>"
            + "".join(f"<li>{escape(calibration_line(m.model, m.calibration))}</li>" for m in calibrated)  # type: ignore[arg-type]
            + "</ul>",
            '<p class="note">Held out: each pair\'s calibrated probability comes from a fit that never saw its query '
            "(k-fold cross-validation split by query); before is the relevance_score the endpoint returned. Attach a "
            "model's file with <code>import_models.py NAME --calibration FILE</code>.</p>",
        ]
        parts += [_png(_reliability_figure(model)) for model in calibrated]
    if significance:
        parts += ["<h2>Paired t-tests (per query, two-sided)</h2>"]
        parts += [f"<p>{escape(describe(c))}</p>" for c in evaluation.significance if c.metric == HEADLINE]
        parts += [_table(["systems", "metric", "mean difference", "t", "p"], significance)]
    parts += ["<h2>Figures</h2>", _png(_metrics_figure(evaluation)), _png(_cost_figure(evaluation))]
    parts += [_png(_precision_recall_figure(evaluation))]
    parts += [_png(_histogram_figure(model)) for model in evaluation.models]
    parts += ["</body></html>"]
    return "\n".join(parts) + "\n"


def write_page(evaluation: Evaluation, path: Path) -> None:
    """The report page at `path`."""
    try:
        path.write_text(render(evaluation), encoding="utf-8")
    except OSError as exc:
        raise EvaluationError(f"cannot write {path}: {exc.strerror or exc}") from None
