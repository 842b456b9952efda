"""Rerankers in the BentoML model store, as the server reads them: what is stored, and which stored model a name means.

A leaf of the runtime: it reads the store and never loads a model. Writing to the store is the importer's job
(`rerank_server.importer`, used by `import_models.py`, never by the server).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import bentoml

from rerank_server.backends import BackendName, CpuPrecision, is_cpu_runtime
from rerank_server.catalog import canonical_id, known_model
from rerank_server.models.calibration import Calibration, stored_calibration
from rerank_server.recipes import RECIPES

# Marks our models among whatever else shares the user's BentoML store.
APP_LABEL = {"app": "rerank-server"}


@dataclass(frozen=True)
class StoredReranker:
    """One reranker version in the BentoML store."""

    model_id: str
    tag: str
    path: Path
    max_length: int
    num_labels: int
    architecture: str
    source: str
    revision: str | None
    created: datetime
    size_bytes: int
    fingerprint: str
    backend: BackendName = "torch"
    recipe: str = "cross-encoder"
    checkpoint_dtype: str | None = None
    parameters: int = 0
    # The model's own Python files, stored with it (`--trust-remote-code`): file name → sha256.
    remote_code: dict[str, str] = field(default_factory=dict)
    # Scored by a sentence-transformers score head after a plain transformer (the Ettin rerankers), not a classifier.
    module_stack: bool = False
    # The model card's license (the catalogue's when the card has none); "" when neither tells.
    license: str = ""
    # What turns its raw scores into relevance scores beyond the recipe's own sigmoid (models/calibration.py), and why
    # a calibration file that is there cannot be used (the model is then refused, not served uncalibrated).
    calibration: Calibration | None = None
    calibration_problem: str | None = None
    # The CPU arithmetic it was stored for, and the class of CPU the import chose it on (rerank_server.cpu): a server
    # on another class still loads it, with float32 where bfloat16 is not native there.
    cpu_precision: CpuPrecision = "float32"
    cpu_class: str = ""
    fidelity: str = ""  # how its rankings compared with float32 at import ("" when not checked)

    @property
    def owned_by(self) -> str:
        return self.model_id.split("/")[0] if "/" in self.model_id else "local"

    @property
    def causal(self) -> bool:
        """A language model scored from its next-token logits, rather than a classifier."""
        return self.architecture.endswith("ForCausalLM")

    @property
    def runs_code(self) -> bool:
        """Whether serving it runs its stored code: a listwise model's (jina-reranker-v3's `rerank()`) is stored with it
        but never run, since this server's recipe and backend score it."""
        recipe = RECIPES.get(self.recipe)
        return bool(self.remote_code) and not (recipe is not None and recipe.listwise)

    @property
    def store_name(self) -> str:
        return self.tag.partition(":")[0]

    def memory_bytes(self, itemsize: int) -> int:
        """What its weights take once loaded with `itemsize`-byte floats (a CPU runtime: its model file)."""
        if is_cpu_runtime(self.backend) or not self.parameters:
            return self.size_bytes
        return self.parameters * itemsize


def as_stored(model: bentoml.Model) -> StoredReranker | None:
    """The reranker a BentoML model holds, or None when it is not one of ours."""
    meta = model.info.metadata
    if model.info.labels.get("app") != APP_LABEL["app"] or "model_id" not in meta:
        return None
    calibration, calibration_problem = stored_calibration(Path(model.path))
    model_id = str(meta["model_id"])
    known = known_model(model_id)
    return StoredReranker(
        model_id=model_id,
        tag=str(model.tag),
        path=Path(model.path),
        max_length=int(meta["max_length"]),
        num_labels=int(meta.get("num_labels", 1)),
        architecture=str(meta.get("architecture", "")),
        source=str(meta.get("source", "")),
        revision=meta.get("revision") or None,
        created=model.info.creation_time,
        size_bytes=int(meta.get("size_bytes", 0)),
        fingerprint=str(meta.get("fingerprint", "")),
        backend=meta.get("backend", "torch"),
        recipe=str(meta.get("recipe", "cross-encoder")),
        checkpoint_dtype=meta.get("checkpoint_dtype") or None,
        parameters=int(meta.get("parameters", 0)),
        remote_code=dict(meta.get("remote_code") or {}),
        module_stack=bool(meta.get("module_stack", False)),
        # Imports before licenses were stored: the catalogue's entry, where it has one.
        license=str(meta.get("license") or (known.license if known else "")),
        calibration=calibration,
        calibration_problem=calibration_problem,
        cpu_precision="bfloat16" if meta.get("cpu_precision") == "bfloat16" else "float32",
        cpu_class=str(meta.get("cpu_class", "")),
        fidelity=str(meta.get("fidelity", "")),
    )


def list_rerankers() -> list[StoredReranker]:
    """The newest stored version of every reranker, sorted by model id."""
    newest: dict[str, StoredReranker] = {}
    for model in bentoml.models.list():
        stored = as_stored(model)
        key = stored.model_id.lower() if stored else ""
        if stored and (key not in newest or stored.created > newest[key].created):
            newest[key] = stored
    return sorted(newest.values(), key=lambda s: s.model_id.lower())


def find_reranker(name: str, stored: Sequence[StoredReranker] | None = None) -> StoredReranker | None:
    """The stored reranker that `name` means, or None. The one place a name becomes a model.

    Accepted, in any case: the model id, a catalogue alias or short name (`bge-reranker-base`), the short name of a
    stored model when only one has it (`mini-reranker`), the store name `/v1/models` shows in `tag`
    (`baai--bge-reranker-base`), and the tag itself or `<store name>:latest`.
    """
    wanted = name.strip()
    if not wanted:
        return None
    candidates = list_rerankers() if stored is None else stored
    store, _, version = wanted.lower().partition(":")
    if version:
        return next(
            (
                r
                for r in candidates
                if r.store_name == store and (version == "latest" or r.tag.lower() == wanted.lower())
            ),
            None,
        )
    canonical = canonical_id(wanted).lower()
    for reranker in candidates:
        if canonical in (reranker.model_id.lower(), reranker.store_name):
            return reranker
    short_matches = [r for r in candidates if r.model_id.split("/")[-1].lower() == canonical]
    return short_matches[0] if len(short_matches) == 1 else None
