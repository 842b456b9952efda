"""The rerankers we ship defaults for, and how public model ids map to store names.

Users only ever see Hugging Face style ids (``BAAI/bge-reranker-base``); the BentoML store cannot hold ``/`` or
upper case in a name, so every conversion between the two goes through :func:`store_name`. Which stored model a
request's name means is decided in one place, `model_store.find_reranker`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

DEFAULT_MODEL_ID = "BAAI/bge-reranker-base"


@dataclass(frozen=True)
class KnownModel:
    """A reranker with known properties: what the import menu offers and how it is scored."""

    model_id: str
    max_length: int
    size: str
    good_for: str
    recipe: str = "cross-encoder"
    aliases: tuple[str, ...] = field(default_factory=tuple)
    remote_code: bool = False  # ships its own modelling code: imported only with --trust-remote-code
    # The model card's `license:`; a model's own card, read at import, wins over this (a fine-tune may differ).
    license: str = ""
    # config.json's `architectures[0]`, where one is known: a folder imported under this id with another family (the
    # part before "For") is most likely the wrong folder.
    architecture: str = ""
    # A ColBERT model's arguments to PyLate's `models.ColBERT(...)` as its model card passes them (query_prefix,
    # attend_to_expansion_tokens, ...): as in PyLate, they win over what the folder says.
    pylate_arguments: tuple[tuple[str, str | int | bool], ...] = ()

    @property
    def size_bytes(self) -> float | None:
        """`size` ("~1.1 GB", "~70 MB") in bytes; None when it does not read as one."""
        match = re.fullmatch(r"~?\s*([\d.]+)\s*(MB|GB)", self.size.strip())
        if not match:
            return None
        return float(match.group(1)) * (1e9 if match.group(2) == "GB" else 1e6)

    @property
    def short_name(self) -> str:
        return self.model_id.split("/")[-1]


_XLMR = "XLMRobertaForSequenceClassification"

KNOWN_MODELS: tuple[KnownModel, ...] = (
    KnownModel(
        "BAAI/bge-reranker-base",
        512,
        "~1.1 GB",
        "fast, balanced: production, low latency",
        license="mit",
        architecture=_XLMR,
    ),
    KnownModel(
        "BAAI/bge-reranker-large",
        512,
        "~2.2 GB",
        "highest accuracy (Chinese and English)",
        license="mit",
        architecture=_XLMR,
    ),
    KnownModel(
        "BAAI/bge-reranker-v2-m3",
        8192,
        "~2.3 GB",
        "multilingual, long documents",
        license="apache-2.0",
        architecture=_XLMR,
    ),
    # max_length is FlagEmbedding's passage cap (its default); the prompt's ~35 tokens come on top.
    KnownModel(
        "BAAI/bge-reranker-v2-gemma",
        512,
        "~10 GB",
        "LLM reranker (Gemma 2B), multilingual",
        "bge-gemma",
        license="apache-2.0",
        architecture="GemmaForCausalLM",
    ),
    KnownModel(
        "Qwen/Qwen3-Reranker-0.6B",
        8192,
        "~1.2 GB",
        "LLM reranker, instructions, 100+ languages",
        "qwen3",
        license="apache-2.0",
        architecture="Qwen3ForCausalLM",
    ),
    KnownModel("Qwen/Qwen3-Reranker-4B", 8192, "~8 GB", "LLM reranker, higher accuracy", "qwen3", license="apache-2.0"),
    KnownModel("Qwen/Qwen3-Reranker-8B", 8192, "~16 GB", "LLM reranker, best accuracy", "qwen3", license="apache-2.0"),
    # Multimodal: text and images (screenshots, slides, scanned pages) on either side of a pair. max_length is the
    # reference's truncation before its 5-token answer prompt; images are never cut.
    KnownModel(
        "Qwen/Qwen3-VL-Reranker-2B",
        8192,
        "~4.3 GB",
        "multimodal: text, images, screenshots",
        "qwen3-vl",
        license="apache-2.0",
    ),
    KnownModel(
        "Qwen/Qwen3-VL-Reranker-8B", 8192, "~17 GB", "multimodal, higher accuracy", "qwen3-vl", license="apache-2.0"
    ),
    # max_length is mixedbread's package default for query and document; its ~90-token prompt comes on top.
    KnownModel(
        "mixedbread-ai/mxbai-rerank-base-v2",
        8192,
        "~1.0 GB",
        "LLM reranker (Qwen2 0.5B), English",
        "mxbai-v2",
        license="apache-2.0",
        architecture="Qwen2ForCausalLM",
    ),
    KnownModel(
        "mixedbread-ai/mxbai-rerank-large-v2",
        8192,
        "~3.1 GB",
        "LLM reranker (Qwen2 1.5B), strong",
        "mxbai-v2",
        license="apache-2.0",
    ),
    KnownModel(
        "Alibaba-NLP/gte-reranker-modernbert-base",
        8192,
        "~0.6 GB",
        "ModernBERT 149M, long documents, English",
        license="apache-2.0",
        architecture="ModernBertForSequenceClassification",
    ),
    # The Ettin rerankers: ModernBERT-style encoders with a sentence-transformers score head (raw scores).
    KnownModel("cross-encoder/ettin-reranker-17m-v1", 7999, "~70 MB", "Ettin 17M: the smallest, fast on a CPU"),
    KnownModel("cross-encoder/ettin-reranker-32m-v1", 7999, "~130 MB", "Ettin 32M"),
    KnownModel("cross-encoder/ettin-reranker-68m-v1", 7999, "~0.3 GB", "Ettin 68M"),
    KnownModel("cross-encoder/ettin-reranker-150m-v1", 7999, "~0.6 GB", "Ettin 150M, long documents"),
    KnownModel("cross-encoder/ettin-reranker-400m-v1", 7999, "~1.6 GB", "Ettin 400M"),
    KnownModel("cross-encoder/ettin-reranker-1b-v1", 7999, "~4 GB", "Ettin 1B: near mxbai-rerank-large-v2"),
    # Late interaction (ColBERT, PyLate or Stanford folders): max_length is the query length plus the document length
    # of its published config, which the import reads from the folder itself.
    KnownModel(
        "lightonai/GTE-ModernColBERT-v1",
        332,
        "~0.6 GB",
        "late interaction (ColBERT), English, long documents",
        "colbert",
        license="apache-2.0",
    ),  # fmt: skip
    KnownModel(
        "answerdotai/answerai-colbert-small-v1",
        332,
        "~130 MB",
        "late interaction (BERT, 33M), English, small and fast on a CPU",
        "colbert",
        license="apache-2.0",
    ),
    KnownModel(
        "jinaai/jina-colbert-v2",
        8224,
        "~1.1 GB",
        "late interaction (XLM-RoBERTa 560M), multilingual, long documents; non-commercial",
        "colbert",
        remote_code=True,
        license="cc-by-nc-4.0",
        pylate_arguments=(
            ("query_prefix", "[QueryMarker]"),
            ("document_prefix", "[DocumentMarker]"),
            ("attend_to_expansion_tokens", True),
        ),
    ),
    # Listwise: the query and all documents in one context (up to 125 a pass, passes fused). max_length is the
    # context of the published tokenizer (model_max_length; one pass is bounded lower by RERANK_MAX_LIST_PASS_TOKENS);
    # each document is cut at 2,048 tokens (v3.5: 8,192).
    KnownModel(
        "jinaai/jina-reranker-v3",
        131_072,
        "~1.2 GB",
        "listwise (Qwen3 0.6B), multilingual; non-commercial",
        "jina-v3",
        remote_code=True,
        license="cc-by-nc-4.0",
        architecture="JinaForRanking",
    ),
    KnownModel(
        "jinaai/jina-reranker-v3.5",
        131_072,
        "~1.2 GB",
        "listwise, sliding-window layers, long documents; non-commercial",
        "jina-v3.5",
        remote_code=True,
        license="cc-by-nc-4.0",
        architecture="JinaForRanking",
    ),
    KnownModel(
        "jinaai/jina-reranker-v2-base-multilingual",
        1024,
        "~0.6 GB",
        "multilingual",
        remote_code=True,
        license="cc-by-nc-4.0",
    ),  # fmt: skip
    KnownModel(
        "Alibaba-NLP/gte-multilingual-reranker-base",
        8192,
        "~0.6 GB",
        "multilingual, long documents",
        remote_code=True,
        license="apache-2.0",
    ),
)
# `--all` and the menu's "all of them": the BGE cross-encoders, which every deployment can run.
BGE_MODELS = tuple(
    model for model in KNOWN_MODELS if model.model_id.startswith("BAAI/") and model.recipe == "cross-encoder"
)

_STORE_NAME_INVALID = re.compile(r"[^a-z0-9._-]+")
# The Hub's own rules for a repository name part: letters, digits, '-', '_', '.'; no '--' or '..'; no '-' or '.'
# at either end. They also make store_name() collision-free: '--' can only come from the '/'.
_ID_PART = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?")


def known_model(name: str) -> KnownModel | None:
    """The catalogue entry that `name` (full id, short name or alias, any case) refers to, if any."""
    wanted = name.strip().lower()
    for model in KNOWN_MODELS:
        names = (model.model_id, model.short_name, *model.aliases)
        if wanted in (n.lower() for n in names):
            return model
    return None


def non_commercial(license_id: str) -> bool:
    """Whether a model card's license forbids commercial use (Creative Commons NC: the jina rerankers)."""
    lowered = license_id.lower()
    return "-nc" in lowered or "noncommercial" in lowered or "non-commercial" in lowered


def canonical_id(name: str) -> str:
    """The public id for `name`: catalogue aliases and short names become the full id, anything else is kept."""
    model = known_model(name)
    return model.model_id if model else name.strip()


def model_id_problem(model_id: str) -> str | None:
    """Why `model_id` cannot name a model (None when it can): the Hub's `org/name` form, no path tricks."""
    parts = model_id.split("/")
    if not 1 <= len(parts) <= 2 or not all(_ID_PART.fullmatch(part) for part in parts):
        return (
            "a model id is `org/name` (or `name`): letters, digits, '-', '_' and '.', not starting or ending in '-' "
            "or '.'"
        )
    if "--" in model_id or ".." in model_id:
        return "'--' and '..' are not allowed in a model id (as on the Hugging Face Hub)"
    return None


def is_valid_model_id(model_id: str) -> bool:
    """Whether `model_id` has the Hub form ``org/name`` (or a bare ``name``) with no path tricks in it."""
    return model_id_problem(model_id) is None


def store_name(model_id: str) -> str:
    """The BentoML store name for a public model id (``BAAI/bge-reranker-base`` → ``baai--bge-reranker-base``)."""
    name = canonical_id(model_id).lower().replace("/", "--")
    return _STORE_NAME_INVALID.sub("-", name).strip("-._")
