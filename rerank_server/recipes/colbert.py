"""Late-interaction rerankers (ColBERT): the query and each document are encoded apart, one vector per token, and the
score is MaxSim, the sum over the query's tokens of its best cosine against the document's tokens. Two folder layouts:
PyLate's (GTE-ModernColBERT, mxbai-edge-colbert: `config_sentence_transformers.json`, the encoder and a Dense module)
and Stanford's (colbert-ai and RAGatouille: answerai-colbert-small-v1, jina-colbert-v2: `config.json` with
`HF_ColBERT`, the backbone and the projection `linear.weight` in one checkpoint, colbert-ai's `artifact.metadata`).

The reference is PyLate's `models.ColBERT.encode(..., is_query=True/False)` and `scores.colbert_scores`: each text
truncated to its length less one (`query_length`, `document_length`), the prefix token (`[Q] ` / `[D] `, or
`[unused0]` / `[unused1]`) inserted after the first token; a query padded to its length with the mask token (query
expansion), attended or not per `attend_to_expansion_tokens` and always kept in MaxSim; a document's skiplist tokens
(punctuation) dropped after encoding; the projection and L2 normalisation are the backend's. PyLate's `rank.rerank`
pads a list's documents together; here each document gets the score it gets alone.

A document's token embeddings do not depend on the query: the loaded model keeps them (`models/embedding_cache.py`),
so a document seen before costs no encoder pass.
"""

from __future__ import annotations

import json
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rerank_server.errors import InputTooLongError
from rerank_server.recipes.base import EncodedPairs, LatePair, Recipe, RecipeError, Side, TextOptions

CONFIG_FILE = "config_sentence_transformers.json"
# A Stanford folder: config.json's first architecture, colbert-ai's ColBERTConfig (JSON) beside the weights, and the
# projection's key in them (next to the backbone's `bert.*` / `roberta.*`).
STANFORD_ARCHITECTURE = "HF_ColBERT"
STANFORD_METADATA = "artifact.metadata"
PROJECTION = "linear.weight"
# What a PyLate caller passes to `models.ColBERT(...)` for a model (a catalogue entry's, as its model card passes them),
# kept with the stored model by its import.
ARGUMENTS_FILE = "pylate_arguments.json"


@dataclass(frozen=True)
class ColbertSettings:
    """How a ColBERT model encodes; the defaults are PyLate's for what neither its caller nor the folder says."""

    query_prefix: str = "[Q] "
    document_prefix: str = "[D] "
    query_length: int = 32
    document_length: int = 180
    do_query_expansion: bool = True
    attend_to_expansion_tokens: bool = False
    skiplist_words: tuple[str, ...] = tuple(string.punctuation)


def _resolved(arguments: Mapping[str, Any], found: Mapping[str, Any], defaults: ColbertSettings) -> ColbertSettings:
    """Each setting as PyLate settles it: the caller's argument, else what the folder says, else the default (a
    missing or null value is unsaid; an empty prefix or skiplist is said)."""

    def value(name: str) -> Any:
        for source in (arguments, found):
            if source.get(name) is not None:
                return source[name]
        return getattr(defaults, name)

    def length(name: str) -> int:
        found = value(name)
        if isinstance(found, bool) or not isinstance(found, int) or found < 1:
            raise ValueError(f"{name} must be a whole number of tokens above 0, not {found!r}")
        return found

    skiplist = value("skiplist_words")
    if isinstance(skiplist, str) or not isinstance(skiplist, (list, tuple)):
        raise ValueError(f"skiplist_words must be a list of words, not {skiplist!r}")
    expansion = bool(value("do_query_expansion"))
    return ColbertSettings(
        query_prefix=str(value("query_prefix")),
        document_prefix=str(value("document_prefix")),
        query_length=length("query_length"),
        document_length=length("document_length"),
        do_query_expansion=expansion,
        # PyLate never attends to expansion tokens it does not make.
        attend_to_expansion_tokens=expansion and bool(value("attend_to_expansion_tokens")),
        skiplist_words=tuple(str(word) for word in skiplist),
    )


# PyLate's defaults for a Stanford folder whose metadata does not name its prefixes: colbert-ai's marker tokens.
_STANFORD_DEFAULTS = ColbertSettings(query_prefix="[unused0]", document_prefix="[unused1]")


def _json(path: Path) -> Any:
    """A JSON file's value, None when there is no such file; ValueError when it is not readable JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} is not readable JSON ({exc})") from exc


def _is_pylate(folder: Path) -> bool:
    try:
        config = _json(folder / CONFIG_FILE)
    except ValueError:
        return False
    return isinstance(config, dict) and config.get("model_type") == "ColBERT"


def is_stanford(folder: Path) -> bool:
    """Whether `folder` is a Stanford ColBERT checkpoint: config.json's first architecture is HF_ColBERT, as PyLate
    checks it."""
    try:
        config = _json(folder / "config.json")
    except ValueError:
        return False
    architectures = config.get("architectures") if isinstance(config, dict) else None
    return isinstance(architectures, list) and architectures[:1] == [STANFORD_ARCHITECTURE]


def _stanford_settings(folder: Path, arguments: Mapping[str, Any]) -> ColbertSettings:
    """What PyLate reads of colbert-ai's artifact.metadata (colbert-ai's prefix tokens where it names none)."""
    metadata = _json(folder / STANFORD_METADATA) or {}
    if not isinstance(metadata, dict):
        raise ValueError(f"{folder / STANFORD_METADATA} is not a JSON object")
    found = {
        "query_prefix": metadata.get("query_token_id"),
        "document_prefix": metadata.get("doc_token_id"),
        "query_length": metadata.get("query_maxlen"),
        "document_length": metadata.get("doc_maxlen"),
        "attend_to_expansion_tokens": metadata.get("attend_to_mask_tokens"),
    }
    return _resolved(arguments, found, _STANFORD_DEFAULTS)


def colbert_settings(folder: Path, arguments: Mapping[str, Any] | None = None) -> ColbertSettings | None:
    """The ColBERT settings of a PyLate folder (its config's `model_type` is ColBERT) or of a Stanford one
    (HF_ColBERT), None when the folder is neither; a folder with both is PyLate's, as PyLate reads its modules first.
    `arguments`: PyLate's keyword arguments, which win over what the folder says as they do in PyLate (None: those
    its import stored with the model, if any). ValueError when artifact.metadata or the arguments are not readable."""
    if arguments is None:
        arguments = _json(folder / ARGUMENTS_FILE) or {}
        if not isinstance(arguments, dict):
            raise ValueError(f"{folder / ARGUMENTS_FILE} is not a JSON object")
    if _is_pylate(folder):
        return _resolved(arguments, _json(folder / CONFIG_FILE), ColbertSettings())
    return _stanford_settings(folder, arguments) if is_stanford(folder) else None


def store_arguments(folder: Path, arguments: Mapping[str, Any]) -> None:
    """Keep PyLate's keyword arguments for a model with its stored copy, where `colbert_settings` reads them."""
    (folder / ARGUMENTS_FILE).write_text(json.dumps(dict(arguments), indent=2) + "\n", encoding="utf-8")


def module_folders(folder: Path) -> tuple[Path, Path] | None:
    """Where a ColBERT folder keeps its transformer and its Dense projection (modules.json: the transformer first,
    often at the top, in `0_Transformer/` in some uploads; the Dense module in `1_Dense/`), or None when modules.json
    does not list both."""
    try:
        modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(modules, list) or not modules or not all(isinstance(m, dict) for m in modules):
        return None
    dense = next((m for m in modules if str(m.get("type", "")).endswith("Dense")), None)
    if not str(modules[0].get("type", "")).endswith("Transformer") or dense is None:
        return None
    return folder / str(modules[0].get("path") or ""), folder / str(dense.get("path") or "1_Dense")


def _stanford_weights(folder: Path) -> Path:
    """The one weights file of a Stanford folder, as PyLate reads the projection from it: model.safetensors (its
    header checked for the projection), else pytorch_model.bin (a pickle: the backend finds out once it loads it)."""
    safetensors = folder / "model.safetensors"
    if safetensors.is_file():
        from safetensors import safe_open

        try:
            with safe_open(str(safetensors), framework="numpy") as weights:  # the header only: no tensor is read
                keys = set(weights.keys())
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own types for a corrupt header
            raise ValueError(f"{safetensors} is not a readable safetensors file ({exc})") from exc
        if PROJECTION not in keys:
            raise ValueError(
                f"{safetensors} holds no ColBERT projection ({PROJECTION}), which a Stanford ColBERT checkpoint "
                "(HF_ColBERT) keeps beside its backbone"
            )
        return safetensors
    if (folder / "pytorch_model.bin").is_file():
        return folder / "pytorch_model.bin"
    if any(folder.glob("*.index.json")):
        raise ValueError(
            f"{folder}: sharded weights; a Stanford ColBERT checkpoint is read from one model.safetensors or "
            "pytorch_model.bin, where PyLate finds its projection"
        )
    raise ValueError(f"{folder} holds no model.safetensors or pytorch_model.bin")


def colbert_files(folder: Path) -> tuple[Path, Path]:
    """Where a ColBERT folder keeps its encoder (the folder the transformer loads from) and its projection (the weights
    file holding `linear.weight`): a PyLate folder's modules, or a Stanford folder itself and its one checkpoint.
    ValueError saying what is missing."""
    if not _is_pylate(folder) and is_stanford(folder):
        return folder, _stanford_weights(folder)
    if (folders := module_folders(folder)) is None:
        raise ValueError(f"{folder}: a ColBERT folder lists its transformer and Dense projection in modules.json")
    encoder, dense = folders
    found = [dense / name for name in ("model.safetensors", "pytorch_model.bin") if (dense / name).is_file()]
    if not found:
        raise ValueError(f"{dense} holds no weights of the Dense projection")
    return encoder, found[0]


def maxsim(query: torch.Tensor, document: torch.Tensor) -> torch.Tensor:
    """MaxSim of one pair of L2-normalised token embeddings: each query token's best cosine over the document's
    tokens, summed (a document with no kept token scores 0)."""
    if not len(document):
        return torch.zeros((), dtype=torch.float32)
    return (query.float() @ document.float().T).max(dim=1).values.sum()


class ColbertRecipe(Recipe):
    name = "colbert"
    description = "late interaction (ColBERT): query and document encoded apart, MaxSim of their token vectors"
    score_kind = "mean-maxsim"
    raw_score = (
        "MaxSim: over the query's tokens (expansion included), the sum of each one's best cosine in the document"
    )
    late_interaction = True

    @classmethod
    def load_extras(cls, path: Path) -> dict[str, Any]:
        try:
            settings = colbert_settings(path)
        except ValueError as exc:
            raise RecipeError(str(exc), "model") from exc
        if settings is None:
            raise RecipeError(
                f"{path} is not a ColBERT folder (PyLate's {CONFIG_FILE} with model_type ColBERT, or "
                f"{STANFORD_ARCHITECTURE} in config.json)",
                "model",
            )
        return {"settings": settings}

    def __init__(self, tokenizer: Any, max_length: int, settings: ColbertSettings) -> None:
        super().__init__(tokenizer, max_length)
        self.settings = settings
        self.query_prefix_id = self._token_id(settings.query_prefix)
        self.document_prefix_id = self._token_id(settings.document_prefix)
        # PyLate pads queries with the mask token (an encoder's), else the end token (a decoder's).
        pad = tokenizer.mask_token_id if tokenizer.mask_token_id is not None else tokenizer.eos_token_id
        self.expansion_id = pad if pad is not None else self.pad_id
        self.skiplist = {self.tokenizer.convert_tokens_to_ids(word) for word in settings.skiplist_words}

    def _token_id(self, prefix: str) -> int | None:
        if not prefix:
            return None
        token = self.tokenizer.convert_tokens_to_ids(prefix)
        if token is None or token == self.tokenizer.unk_token_id:
            raise RecipeError(f"the ColBERT prefix {prefix!r} is not a token of the model's tokenizer", "model")
        return token

    def _ids(self, texts: Sequence[str], length: int, prefix: int | None, side: Side = "right") -> list[list[int]]:
        """Each text as PyLate tokenizes it: cut to `length` tokens less the prefix, the prefix after the first."""
        room = length - 1 if prefix is not None else length
        cut = [self.long_text.cut(text, room + 1, side)[0] for text in texts]  # (it sets the tokenizer's truncation)
        backend = self.tokenizer.backend_tokenizer
        backend.no_padding()
        backend.enable_truncation(room, direction=side)
        rows = [encoding.ids for encoding in backend.encode_batch(cut, add_special_tokens=True)]
        return [[row[0], prefix, *row[1:]] if prefix is not None else row for row in rows]

    def relevance(self, raw: list[float]) -> list[float]:
        """MaxSim over the query length: the mean best cosine of a query token, at most 1 (a sigmoid of a sum of up to
        32 cosines would say ~1.0 for every document)."""
        return [value / self.settings.query_length for value in raw]

    def limit(self, options: TextOptions) -> int:
        """The model's max_length; truncate_prompt_tokens is refused (query and document are cut apart)."""
        caps = (
            f"a document is cut to its document_length ({self.settings.document_length}) and a query to its "
            f"query_length ({self.settings.query_length})"
        )
        return self.whole_prompt_limit(options, "ColBERT", caps)

    def encode(self, queries: Sequence[str], documents: Sequence[str], options: TextOptions) -> EncodedPairs:
        self.limit(options)
        if options.max_document_tokens:
            documents = self.cut_documents(documents, options.max_document_tokens, options.side)
        distinct = list(dict.fromkeys(queries))
        expanded = {}
        for query, ids in zip(
            distinct, self._ids(distinct, self.settings.query_length, self.query_prefix_id), strict=True
        ):
            attended = len(ids)
            if self.settings.do_query_expansion:
                ids = ids + [self.expansion_id] * (self.settings.query_length - len(ids))
                if self.settings.attend_to_expansion_tokens:
                    attended = len(ids)
            expanded[query] = (tuple(ids), attended)
        if not options.truncate:
            self._refuse_truncation(documents)
        document_ids = self._ids(documents, self.settings.document_length, self.document_prefix_id, options.side)
        late = []
        for query, ids in zip(queries, document_ids, strict=True):
            query_ids, attended = expanded[query]
            late.append(LatePair(query_ids, attended, tuple(ids), tuple(token not in self.skiplist for token in ids)))
        return EncodedPairs([[*pair.query, *pair.document] for pair in late], late=late)

    def _refuse_truncation(self, documents: Sequence[str]) -> None:
        """TEI's `truncate: false`: a document over the document length is refused, not cut."""
        for document in documents:
            tokens = self.long_text.count(document) + self.tokenizer.num_special_tokens_to_add()
            tokens += self.document_prefix_id is not None
            if tokens > self.settings.document_length:
                raise InputTooLongError(
                    f"`inputs` must have less than {self.settings.document_length} tokens. Given: {tokens}", "texts"
                )

    def document_room(self, query: str, options: TextOptions) -> int:
        # The query never shares a document's room: a window is as long as a whole document may be.
        room = self.settings.document_length - self.tokenizer.num_special_tokens_to_add()
        room -= self.document_prefix_id is not None
        return min(room, options.max_document_tokens or room)
