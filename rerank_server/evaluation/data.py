"""Labelled data in the formats users already have, read into one shape: queries, each with its candidates and labels.

- JSONL, one sample a line: `{"query", "positive": [...], "negative": [...]}` (sentence-transformers / MTEB reranking
  sets), `{"query", "pos": [...], "neg": [...]}` (FlagEmbedding's training data) or `{"query", "documents": [...],
  "labels": [...]}` (graded labels, documents in the retriever's order); one file keeps to one shape;
- a BEIR folder (`corpus.jsonl`, `queries.jsonl`, `qrels/<split>.tsv`) with a TREC run giving each query's candidates.

Every error names the file and the line.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, Field, ValidationError

from rerank_server.evaluation.errors import EvaluationError

Label = Annotated[int, Field(ge=0)]
# UTF-8, with or without the byte-order mark that Windows editors write (it would break the first line).
TEXT_ENCODING = "utf-8-sig"
Qrels = dict[str, dict[str, int]]


@dataclass(frozen=True)
class Query:
    """One query and its candidates: `labels[i]` is the graded relevance of `documents[i]` (0: not relevant, or not
    judged). `origin` says where it came from, for messages."""

    qid: str
    text: str
    doc_ids: tuple[str, ...]
    documents: tuple[str, ...]
    labels: tuple[int, ...]
    origin: str


@dataclass(frozen=True)
class EvalData:
    """The whole set. `qrels` holds every judgement, including relevant documents the retriever missed (they count in
    recall and in the ideal ranking); `ordered` tells whether the candidates come in the retriever's order, which is
    then the baseline."""

    source: str
    kind: str
    queries: tuple[Query, ...]
    qrels: Qrels
    ordered: bool
    notes: list[str] = field(default_factory=list)

    @property
    def pairs(self) -> int:
        return sum(len(query.documents) for query in self.queries)


class _PositiveNegative(BaseModel):
    query: str
    positive: list[str] = []
    negative: list[str] = []


class _PosNeg(BaseModel):
    """FlagEmbedding's fine-tuning format; its other keys (`prompt`, `pos_scores`, `type`, ...) are not needed here."""

    query: str
    pos: list[str] = []
    neg: list[str] = []


class _Graded(BaseModel):
    query: str
    documents: list[str]
    labels: list[Label]


# Each shape: the keys that identify it, its model, and its name in messages.
_SHAPES: tuple[tuple[tuple[str, str], type[BaseModel], str], ...] = (
    (("documents", "labels"), _Graded, "documents/labels"),
    (("positive", "negative"), _PositiveNegative, "positive/negative"),
    (("pos", "neg"), _PosNeg, "pos/neg"),
)


def _validation_message(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"])
    return f"{where}: {error['msg']}" if where else error["msg"]


def _json_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) for every non-blank line of a JSON-lines file."""
    try:
        with path.open(encoding=TEXT_ENCODING) as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    # Without its line ending: a line cut short is then reported at its own end, not at "column 1"
                    # of a next line that does not exist.
                    yield number, json.loads(line.rstrip("\r\n"))
                except json.JSONDecodeError as exc:
                    raise EvaluationError(f"{path}:{number}: not JSON ({exc.msg}, column {exc.colno})") from None
    except UnicodeDecodeError:
        raise EvaluationError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise EvaluationError(f"cannot read {path}: {exc.strerror or exc}") from None


def load(path: Path, candidates: Path | None = None, depth: int = 100, split: str = "test") -> EvalData:
    """The data at `path`: a JSONL file, or a BEIR folder with `candidates` (a TREC run) cut at `depth` per query."""
    if path.is_dir():
        if candidates is None:
            raise EvaluationError(f"{path} is a folder: a BEIR folder needs --candidates RUN (a TREC run file)")
        data = _load_beir(path, candidates, depth, split)
    elif candidates is not None:
        raise EvaluationError("--candidates goes with a BEIR folder; a JSONL file brings its own candidates")
    else:
        data = _load_jsonl(path)
    if not any(label >= 1 for query in data.queries for label in query.labels):
        raise EvaluationError(f"{path}: no query has a relevant candidate (label >= 1): there is nothing to measure")
    return data


def read_jsonl(path: Path, limit: int | None = None) -> EvalData:
    """The samples of a JSONL file, each line checked as `load` checks it, without `load`'s demand for a relevant
    candidate: for a caller that needs the queries and their documents only (the importer's fidelity gate). `limit`:
    the first samples only, and the rest of the file is not read."""
    return _load_jsonl(path, limit)


def _load_jsonl(path: Path, limit: int | None = None) -> EvalData:
    queries: list[Query] = []
    kinds: dict[str, int] = {}  # each shape seen → its first line
    for number, value in _json_lines(path):
        where = f"{path}:{number}"
        if not isinstance(value, dict):
            raise EvaluationError(f"{where}: a sample is a JSON object, not {type(value).__name__}")
        shape = next((shape for shape in _SHAPES if any(key in value for key in shape[0])), None)
        if shape is None:
            raise EvaluationError(
                f'{where}: a sample needs "query" with "positive"/"negative" lists, "pos"/"neg" lists '
                '(FlagEmbedding), or "documents" with "labels"'
            )
        keys, model, kind = shape
        try:
            # The line's own problem first: it is what to fix even when the file also mixes shapes.
            sample = model.model_validate(value)
        except ValidationError as exc:
            raise EvaluationError(f"{where}: {_validation_message(exc)}") from None
        if isinstance(sample, _Graded):
            documents, labels = sample.documents, sample.labels
            if len(labels) != len(documents):
                raise EvaluationError(f"{where}: {len(labels)} labels for {len(documents)} documents")
        else:
            positive, negative = (getattr(sample, key) for key in keys)
            pairs = [(text, 1) for text in positive] + [(text, 0) for text in negative]
            # Positives come first in these files: shuffled (the same way on every run), so that no tie between
            # scores is broken in their favour.
            random.Random(number).shuffle(pairs)
            documents, labels = [text for text, _ in pairs], [label for _, label in pairs]
        kinds.setdefault(kind, number)
        if len(kinds) > 1:
            (first, first_line), *_ = kinds.items()
            raise EvaluationError(
                f"{where}: a {kind} sample in a file of {first} samples (line {first_line}): one file takes one shape"
            )
        if not documents:
            raise EvaluationError(f"{where}: a sample with no documents")
        qid = str(number)
        doc_ids = tuple(f"{qid}.{index}" for index in range(len(documents)))
        queries.append(Query(qid, sample.query, doc_ids, tuple(documents), tuple(labels), f"line {number}"))
        if limit is not None and len(queries) >= limit:
            break
    if not queries:
        raise EvaluationError(f"{path}: no samples")
    (kind,) = kinds
    qrels = {q.qid: dict(zip(q.doc_ids, q.labels, strict=True)) for q in queries}
    return EvalData(str(path), kind, tuple(queries), qrels, ordered=kind == "documents/labels")


def _beir_texts(path: Path, wanted: set[str] | None, text_of: Any) -> dict[str, str]:
    texts: dict[str, str] = {}
    for number, value in _json_lines(path):
        if not isinstance(value, dict) or "_id" not in value:
            raise EvaluationError(f'{path}:{number}: a line of a BEIR file is an object with "_id"')
        key = str(value["_id"])
        if wanted is None or key in wanted:
            texts[key] = text_of(value)
    return texts


def _corpus_text(value: dict[str, Any]) -> str:
    # BEIR's own evaluation joins title and text with a space.
    return f"{value.get('title') or ''} {value.get('text') or ''}".strip()


def _read_qrels(path: Path) -> Qrels:
    qrels: Qrels = {}
    try:
        with path.open(encoding=TEXT_ENCODING, newline="") as handle:
            for number, row in enumerate(csv.reader(handle, delimiter="\t"), start=1):
                if number == 1 and row[:1] == ["query-id"] or not any(cell.strip() for cell in row):
                    continue
                try:
                    qid, doc_id, grade = (cell.strip() for cell in row)
                    label = int(grade)
                except ValueError:
                    raise EvaluationError(f"{path}:{number}: expected 'query-id<TAB>corpus-id<TAB>score'") from None
                if label < 0:
                    raise EvaluationError(f"{path}:{number}: a negative score ({label})")
                qrels.setdefault(qid, {})[doc_id] = label
    except UnicodeDecodeError:
        raise EvaluationError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise EvaluationError(f"cannot read {path}: {exc.strerror or exc}") from None
    return qrels


def _read_run(path: Path, query_ids: set[str], depth: int) -> tuple[dict[str, list[str]], dict[str, int]]:
    """Each query's candidates in the retriever's order (by rank, at most `depth`), and where each document was first
    named, for messages."""
    ranked: dict[str, list[tuple[int, float, int, str]]] = {}
    first_seen: dict[str, int] = {}
    listed: set[tuple[str, str]] = set()
    try:
        with path.open(encoding=TEXT_ENCODING) as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                fields = line.split()
                try:
                    qid, _, doc_id, rank, score, _ = fields
                    entry = (int(rank), -float(score), number, doc_id)
                except ValueError:
                    raise EvaluationError(f"{path}:{number}: expected 'qid Q0 docid rank score tag'") from None
                if qid not in query_ids:
                    raise EvaluationError(f"{path}:{number}: query id {qid!r} is not in queries.jsonl")
                if (qid, doc_id) in listed:
                    raise EvaluationError(f"{path}:{number}: document {doc_id!r} is listed twice for query {qid!r}")
                listed.add((qid, doc_id))
                ranked.setdefault(qid, []).append(entry)
                first_seen.setdefault(doc_id, number)
    except UnicodeDecodeError:
        raise EvaluationError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise EvaluationError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not ranked:
        raise EvaluationError(f"{path}: no candidates")
    return {qid: [entry[3] for entry in sorted(entries)[:depth]] for qid, entries in ranked.items()}, first_seen


def _load_beir(folder: Path, run_path: Path, depth: int, split: str) -> EvalData:
    missing = [
        name for name in ("corpus.jsonl", "queries.jsonl", f"qrels/{split}.tsv") if not (folder / name).is_file()
    ]
    if missing:
        raise EvaluationError(f"{folder} is not a BEIR folder: no {', '.join(missing)}")
    texts = _beir_texts(folder / "queries.jsonl", None, lambda value: str(value.get("text") or ""))
    qrels = _read_qrels(folder / "qrels" / f"{split}.tsv")
    run, first_seen = _read_run(run_path, set(texts), depth)
    # The corpus may be millions of documents: only the candidates' texts are kept.
    corpus = _beir_texts(folder / "corpus.jsonl", set(first_seen), _corpus_text)
    for doc_id, number in first_seen.items():
        if doc_id not in corpus:
            raise EvaluationError(f"{run_path}:{number}: document id {doc_id!r} is not in corpus.jsonl")
    queries = []
    for qid, doc_ids in run.items():
        if qid not in qrels:
            continue  # not judged in this split: nothing to learn from it
        labels = tuple(qrels[qid].get(doc_id, 0) for doc_id in doc_ids)
        queries.append(
            Query(qid, texts[qid], tuple(doc_ids), tuple(corpus[d] for d in doc_ids), labels, f"query {qid}")
        )
    if not queries:
        raise EvaluationError(f"{run_path}: no query of the run is judged in qrels/{split}.tsv")
    notes = []
    if unjudged := len(run) - len(queries):
        notes.append(f"{unjudged} queries of the run are not judged in qrels/{split}.tsv: skipped")
    if no_candidates := len(set(qrels) - set(run)):
        notes.append(f"{no_candidates} judged queries have no candidates in the run: skipped")
    kept_qrels = {query.qid: qrels[query.qid] for query in queries}
    return EvalData(str(folder), "beir", tuple(queries), kept_qrels, ordered=True, notes=notes)
