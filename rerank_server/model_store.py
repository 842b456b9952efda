"""Rerankers in the BentoML model store: inspecting a model folder, importing it, and finding stored ones.

`import_models.py` is the command line over this module; the service only reads through it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import bentoml

from rerank_server import onnx_backend
from rerank_server.catalog import canonical_id, is_valid_model_id, known_model, store_name
from rerank_server.onnx_backend import Backend

logger = logging.getLogger("bentoml")

# Marks our models among whatever else shares the user's BentoML store.
APP_LABEL = {"app": "rerank-server"}
# Files a model folder may hold that the server never needs (VCS and huggingface_hub's local-dir bookkeeping).
_IGNORED = shutil.ignore_patterns(".git", ".cache", ".gitattributes", "onnx", "openvino", "*.onnx", "*.h5", "*.msgpack")
_WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin")


class ModelImportError(Exception):
    """An import that cannot go on; the message is meant for the user as it is."""


@dataclass(frozen=True)
class FolderInfo:
    """What a Hugging Face model folder says about itself."""

    architecture: str
    num_labels: int
    max_length: int


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
    backend: Backend = "torch"

    @property
    def owned_by(self) -> str:
        return self.model_id.split("/")[0] if "/" in self.model_id else "local"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelImportError(f"{path} is not readable JSON: {exc}") from exc


def inspect_folder(folder: Path, model_id: str) -> FolderInfo:
    """Check that `folder` holds a single-logit cross-encoder and read its properties.

    Raises ModelImportError saying what is missing, so a wrong folder is caught before anything is stored.
    """
    if not folder.is_dir():
        raise ModelImportError(f"{folder} is not a folder")
    config = _read_json(folder / "config.json")
    if not config:
        raise ModelImportError(f"{folder} is not a Hugging Face model folder (no config.json)")
    architectures = config.get("architectures") or []
    architecture = architectures[0] if architectures else config.get("model_type", "unknown")
    if not str(architecture).endswith("ForSequenceClassification"):
        raise ModelImportError(
            f"{folder} is not a cross-encoder: its architecture is {architecture}, "
            "a reranker needs a *ForSequenceClassification head"
        )
    num_labels = len(config.get("id2label") or {}) or int(config.get("num_labels", 1))
    if num_labels != 1:
        raise ModelImportError(
            f"{folder} is not a reranker cross-encoder: it has {num_labels} output labels, a reranker has 1"
        )
    if not any(next(folder.glob(pattern), None) for pattern in _WEIGHT_FILES):
        raise ModelImportError(f"{folder} holds no model weights (*.safetensors or pytorch_model.bin)")
    if not any((folder / name).exists() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt")):
        raise ModelImportError(f"{folder} holds no tokenizer files")
    return FolderInfo(str(architecture), num_labels, _max_length(folder, model_id, config))


def _max_length(folder: Path, model_id: str, config: dict[str, Any]) -> int:
    """The catalogue's max_length, else what sentence-transformers would use for this folder."""
    known = known_model(model_id)
    if known:
        return known.max_length
    candidates = [
        _read_json(folder / "sentence_bert_config.json").get("max_seq_length"),
        _read_json(folder / "tokenizer_config.json").get("model_max_length"),
    ]
    limit = next((int(c) for c in candidates if isinstance(c, (int, float)) and 0 < c < 1_000_000), 512)
    positions = config.get("max_position_embeddings")
    # RoBERTa-family models reserve two positions for the padding offset, as sentence-transformers accounts for.
    if isinstance(positions, int) and positions > 0:
        offset = 2 if config.get("model_type") in ("roberta", "xlm-roberta", "camembert") else 0
        limit = min(limit, positions - offset)
    return limit


def folder_fingerprint(folder: Path) -> str:
    """A cheap identity of a folder's contents (names, sizes, modification times) to detect re-imports."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and ".git" not in p.parts):
        stat = path.stat()
        digest.update(f"{path.relative_to(folder)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _to_stored(model: bentoml.Model) -> StoredReranker | None:
    meta = model.info.metadata
    if model.info.labels.get("app") != APP_LABEL["app"] or "model_id" not in meta:
        return None
    return StoredReranker(
        model_id=str(meta["model_id"]),
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
    )


def list_rerankers() -> list[StoredReranker]:
    """The newest stored version of every reranker, sorted by model id."""
    newest: dict[str, StoredReranker] = {}
    for model in bentoml.models.list():
        stored = _to_stored(model)
        if stored and (stored.model_id not in newest or stored.created > newest[stored.model_id].created):
            newest[stored.model_id] = stored
    return sorted(newest.values(), key=lambda s: s.model_id.lower())


def find_reranker(name: str, stored: list[StoredReranker] | None = None) -> StoredReranker | None:
    """The stored reranker that `name` (id, short name or catalogue alias, any case) refers to."""
    wanted = canonical_id(name).lower()
    candidates = list_rerankers() if stored is None else stored
    for reranker in candidates:
        if reranker.model_id.lower() == wanted:
            return reranker
    short_matches = [r for r in candidates if r.model_id.split("/")[-1].lower() == wanted]
    return short_matches[0] if len(short_matches) == 1 else None


@dataclass(frozen=True)
class ImportResult:
    stored: StoredReranker
    skipped: bool


def store_folder(
    model_id: str,
    folder: Path,
    *,
    source: str,
    revision: str | None,
    fingerprint: str,
    force: bool = False,
    backend: Backend = "torch",
) -> ImportResult:
    """Copy a checked model folder into the store, or do nothing when the same source is stored already.

    `bentoml.models.create` only commits the model when its block exits cleanly, so a failed copy leaves nothing.
    """
    model_id = canonical_id(model_id)
    if not is_valid_model_id(model_id):
        raise ModelImportError(f"{model_id!r} is not a model id of the form org/name")
    info = inspect_folder(folder, model_id)
    if backend != "torch":
        fingerprint = f"{fingerprint}+{backend}"  # the same source for another backend is a new version
    existing = find_reranker(model_id)
    if existing and existing.fingerprint == fingerprint and not force:
        return ImportResult(existing, skipped=True)
    metadata = {
        "model_id": model_id,
        "source": source,
        "revision": revision or "",
        "fingerprint": fingerprint,
        "max_length": info.max_length,
        "architecture": info.architecture,
        "num_labels": info.num_labels,
        "backend": backend,
    }
    labels = {**APP_LABEL, "model-id": model_id}
    with bentoml.models.create(store_name(model_id), labels=labels, metadata=metadata) as model:
        shutil.copytree(folder, model.path, ignore=_IGNORED, dirs_exist_ok=True)
        if backend != "torch":
            logger.info("Exporting %s to ONNX (%s)", model_id, backend)
            onnx_backend.export(Path(model.path), backend)
        # What was kept, not what the folder held (ONNX exports and other extras are left behind).
        model.info.metadata["size_bytes"] = sum(p.stat().st_size for p in Path(model.path).rglob("*") if p.is_file())
    stored = find_reranker(model_id)
    assert stored is not None  # just created
    logger.info("Stored %s as %s", model_id, stored.tag)
    return ImportResult(stored, skipped=False)


def import_from_folder(model_id: str, folder: Path, *, force: bool = False, backend: Backend = "torch") -> ImportResult:
    """Register a local model folder under `model_id` (no network)."""
    folder = folder.resolve()
    return store_folder(
        model_id, folder, source=f"dir:{folder}", revision=None, fingerprint=folder_fingerprint(folder), force=force,
        backend=backend,
    )  # fmt: skip


def import_from_hub(
    model_id: str, *, revision: str | None = None, force: bool = False, backend: Backend = "torch"
) -> ImportResult:
    """Download `model_id` from the Hugging Face Hub (or the mirror in HF_ENDPOINT) and store it.

    huggingface_hub reads HF_ENDPOINT and HF_TOKEN itself and shows a progress bar per file.
    """
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    model_id = canonical_id(model_id)
    if not is_valid_model_id(model_id) or "/" not in model_id:
        raise ModelImportError(f"{model_id!r} is not a Hub model id of the form org/name")
    try:
        info = HfApi().model_info(model_id, revision=revision)
        files = [sibling.rfilename for sibling in info.siblings or []]
        # Prefer safetensors; many BGE repos also carry a pytorch_model.bin copy that would double the download.
        has_safetensors = any(f.endswith(".safetensors") and "/" not in f for f in files)
        patterns = ["*.json", "*.txt", "*.model", "*.safetensors" if has_safetensors else "pytorch_model*.bin"]
        path = Path(snapshot_download(model_id, revision=info.sha, allow_patterns=patterns))
    except (RepositoryNotFoundError, GatedRepoError, RevisionNotFoundError) as exc:
        raise ModelImportError(
            f"{model_id} is not available on {_hub_endpoint()}: {type(exc).__name__} "
            "(a gated or private model needs HF_TOKEN)"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - any network failure ends in the same advice
        raise ModelImportError(
            f"cannot download {model_id} from {_hub_endpoint()} ({type(exc).__name__}); "
            "use --from-dir DIR with a downloaded copy, or set HF_ENDPOINT to a reachable mirror"
        ) from exc
    # The snapshot folder of huggingface_hub's cache is named after the commit it holds.
    resolved = path.name
    return store_folder(
        model_id, path, source=f"hub:{_hub_endpoint()}", revision=resolved, fingerprint=f"hub@{resolved}", force=force,
        backend=backend,
    )  # fmt: skip


def _hub_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def import_from_modelscope(model_id: str, *, force: bool = False, backend: Backend = "torch") -> ImportResult:
    """Download `model_id` from ModelScope (for networks that reach neither the Hub nor a mirror) and store it.

    A complete copy already in ModelScope's cache (MODELSCOPE_CACHE) is used without network; MODELSCOPE_ENDPOINT
    selects another ModelScope site.
    """
    try:
        from modelscope.hub.snapshot_download import snapshot_download
    except ImportError as exc:
        raise ModelImportError("--source modelscope needs the modelscope package: pip install modelscope") from exc

    model_id = canonical_id(model_id)
    if not is_valid_model_id(model_id) or "/" not in model_id:
        raise ModelImportError(f"{model_id!r} is not a ModelScope model id of the form org/name")
    try:
        path = Path(snapshot_download(model_id, local_files_only=True))
        inspect_folder(path, model_id)
    except Exception:  # noqa: BLE001 - not (completely) in the cache: download it
        path = _download_from_modelscope(snapshot_download, model_id)
    return store_folder(
        model_id, path, source="modelscope", revision=path.name, fingerprint=folder_fingerprint(path), force=force,
        backend=backend,
    )  # fmt: skip


def _download_from_modelscope(snapshot_download: Callable[..., str], model_id: str) -> Path:
    patterns = ["*.json", "*.txt", "*.model", "*.safetensors"]
    try:
        path = Path(snapshot_download(model_id, allow_patterns=patterns))
        if not any(path.glob("*.safetensors")):  # an older repository with PyTorch weights only
            path = Path(snapshot_download(model_id, allow_patterns=[*patterns[:3], "pytorch_model*.bin"]))
    except Exception as exc:  # noqa: BLE001 - any network or repository failure ends in the same advice
        raise ModelImportError(
            f"cannot download {model_id} from ModelScope ({type(exc).__name__}: {str(exc)[:200]}); "
            "use --from-dir DIR with a downloaded copy, or --source hub with HF_ENDPOINT set to a reachable mirror"
        ) from exc
    return path


Source = Literal["hub", "modelscope"]


def import_model(
    model_id: str,
    *,
    from_dir: Path | None = None,
    models_dir: Path = Path("models"),
    source: Source = "hub",
    force: bool = False,
    backend: Backend = "torch",
) -> ImportResult:
    """Import one reranker, local first: `from_dir`, else `models_dir/<short name>`, else the Hub or ModelScope."""
    model_id = canonical_id(model_id)
    if from_dir is not None:
        return import_from_folder(model_id, from_dir, force=force, backend=backend)
    local = models_dir / model_id.split("/")[-1]
    if local.is_dir():
        logger.info("Using the local copy in %s", local)
        return import_from_folder(model_id, local, force=force, backend=backend)
    if source == "modelscope":
        return import_from_modelscope(model_id, force=force, backend=backend)
    return import_from_hub(model_id, force=force, backend=backend)
