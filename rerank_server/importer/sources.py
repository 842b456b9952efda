"""Where a model comes from, local first: a folder, else the Hugging Face Hub (or the mirror in HF_ENDPOINT), else
ModelScope."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from rerank_server.catalog import canonical_id, model_id_problem
from rerank_server.importer.commit import DEFAULT_IMPORT, ImportOptions, ImportResult, store_folder
from rerank_server.importer.folder import ModelImportError, folder_fingerprint, inspect_folder
from rerank_server.importer.remote_code import other_repositories

logger = logging.getLogger("bentoml")

# What a download takes: configs (a Stanford ColBERT's colbert-ai settings too), tokenizers (vocab.txt, sentencepiece,
# chat templates) and one copy of the weights.
_HUB_FILES = ["*.json", "*.txt", "*.model", "*.jinja", "artifact.metadata"]

Source = Literal["hub", "modelscope"]


def import_from_folder(model_id: str, folder: Path, options: ImportOptions = DEFAULT_IMPORT) -> ImportResult:
    """Register a local model folder under `model_id` (no network)."""
    folder = folder.resolve()
    return store_folder(
        model_id, folder, source=f"dir:{folder}", revision=None, fingerprint=folder_fingerprint(folder), options=options
    )


def import_from_hub(
    model_id: str, options: ImportOptions = DEFAULT_IMPORT, revision: str | None = None
) -> ImportResult:
    """Download `model_id` from the Hugging Face Hub (or the mirror in HF_ENDPOINT) and store it.

    huggingface_hub reads HF_ENDPOINT and HF_TOKEN itself and shows a progress bar per file.
    """
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    model_id = _downloadable_id(model_id, "Hub")
    try:
        info = HfApi().model_info(model_id, revision=revision)
        files = [sibling.rfilename for sibling in info.siblings or []]
        # Prefer safetensors; many BGE repos also carry a pytorch_model.bin copy that would double the download.
        has_safetensors = any(f.endswith(".safetensors") and "/" not in f for f in files)
        patterns = [*_HUB_FILES, "*.safetensors" if has_safetensors else "pytorch_model*.bin"]
        if options.trust_remote_code:
            patterns.append("*.py")  # the model's own code, stored with it
        path = Path(snapshot_download(model_id, revision=info.sha, allow_patterns=patterns))
        # Code another repository holds (gte-multilingual-reranker-base's is in Alibaba-NLP/new-impl).
        code_folders = {
            repo: Path(snapshot_download(repo, allow_patterns=["*.py"]))
            for repo in (other_repositories(path) if options.trust_remote_code else ())
        }
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
    # The snapshot folder of huggingface_hub's cache is named after the commit it holds; the code of another
    # repository is part of what was imported (a new commit of it is a new version).
    resolved = path.name
    fingerprint = f"hub@{resolved}" + "".join(f"+{repo}@{folder.name}" for repo, folder in sorted(code_folders.items()))
    return store_folder(
        model_id, path, source=f"hub:{_hub_endpoint()}", revision=resolved, fingerprint=fingerprint, options=options,
        code_folders=code_folders,
    )  # fmt: skip


def _downloadable_id(model_id: str, site: str) -> str:
    model_id = canonical_id(model_id)
    if model_id_problem(model_id) or "/" not in model_id:
        raise ModelImportError(f"{model_id!r} is not a {site} model id of the form org/name")
    return model_id


def _hub_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def import_from_modelscope(model_id: str, options: ImportOptions = DEFAULT_IMPORT) -> ImportResult:
    """Download `model_id` from ModelScope (for networks that reach neither the Hub nor a mirror) and store it.

    A complete copy already in ModelScope's cache (MODELSCOPE_CACHE) is used without network; MODELSCOPE_ENDPOINT
    selects another ModelScope site.
    """
    try:
        from modelscope.hub.snapshot_download import snapshot_download
    except ImportError as exc:
        raise ModelImportError("--source modelscope needs the modelscope package: pip install modelscope") from exc

    model_id = _downloadable_id(model_id, "ModelScope")
    try:
        path = Path(snapshot_download(model_id, local_files_only=True))
        inspect_folder(path, model_id, options.recipe, trust_remote_code=options.trust_remote_code)
    except Exception:  # noqa: BLE001 - not (completely) in the cache: download it
        path = _download_from_modelscope(snapshot_download, model_id, options.trust_remote_code)
    return store_folder(
        model_id, path, source="modelscope", revision=path.name, fingerprint=folder_fingerprint(path), options=options
    )


def _download_from_modelscope(snapshot_download: Callable[..., str], model_id: str, code: bool) -> Path:
    files = [*_HUB_FILES, *(["*.py"] if code else [])]
    try:
        path = Path(snapshot_download(model_id, allow_patterns=[*files, "*.safetensors"]))
        if not any(path.glob("*.safetensors")):  # an older repository with PyTorch weights only
            path = Path(snapshot_download(model_id, allow_patterns=[*files, "pytorch_model*.bin"]))
    except Exception as exc:  # noqa: BLE001 - any network or repository failure ends in the same advice
        raise ModelImportError(
            f"cannot download {model_id} from ModelScope ({type(exc).__name__}: {str(exc)[:200]}); "
            "use --from-dir DIR with a downloaded copy, or --source hub with HF_ENDPOINT set to a reachable mirror"
        ) from exc
    return path


def import_model(
    model_id: str,
    options: ImportOptions = DEFAULT_IMPORT,
    *,
    from_dir: Path | None = None,
    models_dir: Path = Path("models"),
    source: Source = "hub",
) -> ImportResult:
    """Import one reranker, local first: `from_dir`, else `models_dir/<short name>`, else the Hub or ModelScope."""
    model_id = canonical_id(model_id)
    if from_dir is not None:
        return import_from_folder(model_id, from_dir, options)
    local = models_dir / model_id.split("/")[-1]
    if local.is_dir():
        logger.info("Using the local copy in %s", local)
        return import_from_folder(model_id, local, options)
    if source == "modelscope":
        return import_from_modelscope(model_id, options)
    return import_from_hub(model_id, options)
