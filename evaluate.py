"""Choose a reranker, a backend and a score threshold on your own labelled data, side by side.

    python evaluate.py data.jsonl                                   # the server's default model
    python evaluate.py data.jsonl --model BAAI/bge-reranker-base --model BAAI/bge-reranker-v2-m3 \\
        --json out.json --report out.html
    python evaluate.py beir/scifact --candidates bm25.trec --depth 100 --model my-reranker
    python evaluate.py data.jsonl --base-url http://vllm-host:8000 --model BAAI/bge-reranker-v2-m3
    python evaluate.py data.jsonl --model BAAI/bge-reranker-base --calibrate calibrations/

DATA is a JSONL file of {"query", "positive": [...], "negative": [...]} or {"query", "documents": [...], "labels":
[...]} samples (documents in the retriever's order), or a BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv)
with --candidates, a TREC run. Each query is sent with its candidates as one `POST /v1/rerank` to --base-url (this
server, or any vLLM / Jina / Cohere compatible endpoint). Reported per model: nDCG@10, MRR@10, MAP and recall@10
(trec_eval's definitions, averaged over queries with a relevant document), latency p50/p95 per request and pairs/s,
and the lowest relevance_score that keeps precision at --target-precision, with the recall kept there; the input
order's metrics as the baseline when the data has an order, and paired t-tests between the models and the baseline.

With --calibrate OUT_DIR, each model's raw scores (`use_activation: false`) are also fitted to the labels (Platt
scaling, `sigmoid(scale * (raw - bias))`), judged held out by 5-fold cross-validation split by query, and written as
OUT_DIR/<store name>.calibration.json for `import_models.py NAME --calibration FILE`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

try:
    from rerank_server.evaluation.calibration import calibrate, check_enough, write_calibrations
    from rerank_server.evaluation.client import DEFAULT_TIMEOUT_S, Endpoint, score, store_name
    from rerank_server.evaluation.data import load
    from rerank_server.evaluation.errors import EvaluationError
    from rerank_server.evaluation.report import BASELINE, table, write_json
    from rerank_server.evaluation.summary import evaluation, model_result
except ModuleNotFoundError as missing:  # run by a Python without the project's packages (not the venv's)
    sys.exit(
        f"error: evaluate.py needs the project's packages ({missing.name} is not installed for {sys.executable}): "
        "run it from the repository root as .venv/bin/python evaluate.py ... (make setup creates .venv)"
    )

DEFAULT_BASE_URL = "http://localhost:8000"


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, not {text!r}")
    return int(text)


def _precision(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a precision above 0 and at most 1, not {text!r}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Evaluate rerankers on labelled data through POST /v1/rerank: quality, cost and threshold.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Scores are relevance_score as the endpoint returns it (0-1 by default here):\nthe number a RAG "
        "front-end's score threshold (Dify, Open WebUI) is compared with.\nSee the README, \"Which reranker "
        'for my data?"',
    )
    parser.add_argument("data", type=Path, metavar="DATA", help="a JSONL file, or a BEIR folder with --candidates")
    parser.add_argument("--candidates", type=Path, metavar="RUN", help="a TREC run (qid Q0 docid rank score tag)")
    parser.add_argument("--depth", type=_positive_int, default=100, help="candidates per query from RUN (100)")
    parser.add_argument("--split", default="test", help="the BEIR qrels split: qrels/<split>.tsv (test)")
    parser.add_argument(
        "--model", action="append", default=[], metavar="NAME",
        help="a model to evaluate; repeat it to compare several (default: the endpoint's default model)",
    )  # fmt: skip
    parser.add_argument(
        "--base-url", default=os.environ.get("RERANK_BASE_URL") or DEFAULT_BASE_URL,
        help=f"where POST /v1/rerank is (RERANK_BASE_URL, as the Python clients read it, else {DEFAULT_BASE_URL})",
    )  # fmt: skip
    parser.add_argument("--api-key", default=os.environ.get("RERANK_API_KEY"), help="bearer key (RERANK_API_KEY)")
    parser.add_argument("--instruction", help="the instruction for LLM rerankers (Qwen3-Reranker)")
    parser.add_argument("--concurrency", type=_positive_int, default=1, help="requests in flight (1)")
    parser.add_argument(
        "--timeout", type=_positive_int, default=int(DEFAULT_TIMEOUT_S), metavar="S",
        help=f"seconds to wait for one answer ({DEFAULT_TIMEOUT_S:g})",
    )  # fmt: skip
    parser.add_argument(
        "--k", type=_positive_int, action="append", default=[], metavar="K",
        help="also report nDCG, MRR and recall at K (repeatable; @10 always)",
    )  # fmt: skip
    parser.add_argument(
        "--target-precision", type=_precision, default=0.9, metavar="P",
        help="the precision the threshold must keep (0.9)",
    )  # fmt: skip
    parser.add_argument(
        "--relevant-from", type=_positive_int, default=1, metavar="LABEL",
        help="graded labels: a pair is relevant when its label is at least this (1)",
    )  # fmt: skip
    parser.add_argument(
        "--calibrate", type=Path, metavar="OUT_DIR",
        help="fit each model's raw scores to the labels and write OUT_DIR/<store name>.calibration.json",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the results as JSON")
    parser.add_argument("--report", type=Path, metavar="PATH.html", help="write a self-contained HTML report")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    repeated = {name for name in args.model if args.model.count(name) > 1}
    if repeated or BASELINE in args.model:
        parser.error(f"--model names each model once and none is called {BASELINE!r}: {sorted(repeated)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    endpoint = Endpoint(args.base_url.rstrip("/"), args.api_key, args.instruction, args.concurrency, args.timeout)
    try:
        data = load(args.data, args.candidates, args.depth, args.split)
        if args.calibrate:
            check_enough(data, args.relevant_from)  # before any scoring: nothing is written for too little data
        for note in data.notes:
            print(f"note: {note}", file=sys.stderr)
        results, fits = [], []
        for model in args.model or [None]:
            scores = score(data, endpoint, model, progress=not args.no_progress)
            result, values = model_result(data, scores, args.k, args.target_precision, args.relevant_from)
            if args.calibrate:
                raw = score(data, endpoint, model, progress=not args.no_progress, raw=True)
                model_id = raw.served_as or scores.served_as or model or "default-model"
                fit = calibrate(model_id, data, raw.by_query, scores.by_query, args.relevant_from)
                result = result.model_copy(update={"calibration": fit})
                fits.append((store_name(endpoint, model_id), fit))
            results.append((result, values))
        found = evaluation(data, results, args.k, endpoint.base_url, args.concurrency)
        print(table(found))
        if fits:
            print("")
            for path, (_, fit) in zip(write_calibrations(fits, args.calibrate), fits, strict=True):
                print(f"Calibration of {fit.model}: {path}\n  attach it: python import_models.py {fit.model} "
                      f"--calibration {path}")  # fmt: skip
        if args.json:
            write_json(found, args.json)
            print(f"\nJSON: {args.json}")
        if args.report:
            from rerank_server.evaluation.page import write_page  # matplotlib: only when a page is wanted

            write_page(found, args.report)
            print(f"HTML report: {args.report}")
    except EvaluationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
