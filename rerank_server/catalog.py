"""The one place that knows the rerankers we ship defaults for, and how public model ids map to store names.

Users only ever see Hugging Face style ids (``BAAI/bge-reranker-base``); the BentoML store cannot hold ``/`` or
upper case in a name, so every conversion between the two goes through :func:`store_name`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

DEFAULT_MODEL_ID = "BAAI/bge-reranker-base"


@dataclass(frozen=True)
class KnownModel:
    """A reranker with known properties: what the import menu offers and what `--all` imports."""

    model_id: str
    max_length: int
    size: str
    good_for: str
    aliases: tuple[str, ...] = field(default_factory=tuple)

    @property
    def short_name(self) -> str:
        return self.model_id.split("/")[-1]


KNOWN_MODELS: tuple[KnownModel, ...] = (
    KnownModel("BAAI/bge-reranker-base", 512, "~1.1 GB", "fast, balanced: production, low latency"),
    KnownModel("BAAI/bge-reranker-large", 512, "~2.2 GB", "highest accuracy (Chinese and English)"),
    KnownModel("BAAI/bge-reranker-v2-m3", 8192, "~2.3 GB", "multilingual, long documents"),
)

_STORE_NAME_INVALID = re.compile(r"[^a-z0-9._-]+")


def known_model(name: str) -> KnownModel | None:
    """The catalogue entry that `name` (full id, short name or alias, any case) refers to, if any."""
    wanted = name.strip().lower()
    for model in KNOWN_MODELS:
        names = (model.model_id, model.short_name, *model.aliases)
        if wanted in (n.lower() for n in names):
            return model
    return None


def canonical_id(name: str) -> str:
    """The public id for `name`: catalogue aliases and short names become the full id, anything else is kept."""
    model = known_model(name)
    return model.model_id if model else name.strip()


def is_valid_model_id(model_id: str) -> bool:
    """Whether `model_id` has the Hub form ``org/name`` (or a bare ``name``) with no path tricks in it."""
    parts = model_id.split("/")
    return (
        1 <= len(parts) <= 2
        and all(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}", part) for part in parts)
        and ".." not in model_id
    )


def store_name(model_id: str) -> str:
    """The BentoML store name for a public model id (``BAAI/bge-reranker-base`` → ``baai--bge-reranker-base``)."""
    name = canonical_id(model_id).lower().replace("/", "--")
    return _STORE_NAME_INVALID.sub("-", name).strip("-._")
