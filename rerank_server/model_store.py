"""Rerankers in the BentoML model store: inspecting a model folder, importing it, and finding stored ones.

`import_models.py` is the command line over this module; the service only reads through it. `find_reranker` is the
one place where a name (id, short name, catalogue alias, store name or tag, any case) becomes a stored model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import bentoml

from rerank_server import backends
from rerank_server.backends import BackendName
from rerank_server.catalog import canonical_id, known_model, model_id_problem, store_name
from rerank_server.recipes import RECIPES, recipe_from_id, recipe_from_prompt

logger = logging.getLogger("bentoml")

# Marks our models among whatever else shares the user's BentoML store.
APP_LABEL = {"app": "rerank-server"}
# Files a model folder may hold that the server never needs (VCS and huggingface_hub's local-dir bookkeeping).
_IGNORED = shutil.ignore_patterns(
    ".git", ".cache", ".gitattributes", "onnx", "openvino", "*.onnx", "*.h5", "*.msgpack", "*.ot", "*.gguf"
)
_WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin")
# Rerankers whose scoring lives only in their repository's own Python code (`trust_remote_code`), which this server
# does not run: what they need, in one line each.
_CUSTOM_CODE = {
    "minicpm": "per-layer score heads and a `cutoff_layers` argument that exist only in the repository's own code",
    "cost_wise_gemma": "token compression and layer-wise heads that exist only in the repository's own code",
}


class ModelImportError(Exception):
    """An import that cannot go on; the message is meant for the user as it is."""


@dataclass(frozen=True)
class FolderInfo:
    """What a Hugging Face model folder says about itself."""

    architecture: str
    num_labels: int
    max_length: int
    recipe: str
    checkpoint_dtype: str | None
    parameters: int


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

    @property
    def owned_by(self) -> str:
        return self.model_id.split("/")[0] if "/" in self.model_id else "local"

    @property
    def causal(self) -> bool:
        """A language model scored from its next-token logits, rather than a classifier."""
        return self.architecture.endswith("ForCausalLM")

    @property
    def store_name(self) -> str:
        return self.tag.partition(":")[0]

    def memory_bytes(self, itemsize: int) -> int:
        """What its weights take once loaded with `itemsize`-byte floats (a CPU runtime: its model file)."""
        if backends.is_cpu_runtime(self.backend) or not self.parameters:
            return self.size_bytes
        return self.parameters * itemsize


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelImportError(f"{path} is not readable JSON: {exc}") from exc


def _chat_template(folder: Path) -> str:
    template = (
        (folder / "chat_template.jinja").read_text(encoding="utf-8", errors="replace")
        if (folder / "chat_template.jinja").is_file()
        else ""
    )
    configured = _read_json(folder / "tokenizer_config.json").get("chat_template") or ""
    return template + (configured if isinstance(configured, str) else json.dumps(configured))


def _recipe_for(folder: Path, model_id: str, architecture: str, chosen: str | None) -> str:
    """The recipe `--recipe` names, else the catalogue's, else one the id or the folder's prompt shows."""
    if chosen:
        if chosen not in RECIPES:
            raise ModelImportError(f"{model_id}: unknown recipe {chosen!r}; recipes: {', '.join(RECIPES)}")
        return chosen
    known = known_model(model_id)
    found = (known.recipe if known else None) or recipe_from_id(model_id) or recipe_from_prompt(_chat_template(folder))
    if found:
        return found
    if architecture.endswith("ForSequenceClassification"):
        return "cross-encoder"
    llm_recipes = ", ".join(name for name in RECIPES if name != "cross-encoder")
    raise ModelImportError(
        f"{model_id}: a {architecture} is scored from its next-token logits with a prompt of its own, and none is "
        f"known for it; name one with --recipe ({llm_recipes})"
    )


def _parameters(folder: Path) -> int:
    """Parameter count from the safetensors headers (0 when the weights are pickles, whose size is read instead)."""
    from safetensors import safe_open

    total = 0
    for path in folder.glob("*.safetensors"):
        try:
            with safe_open(str(path), framework="numpy") as weights:
                for key in weights.keys():  # noqa: SIM118 - safe_open is not a mapping
                    shape = weights.get_slice(key).get_shape()
                    count = 1
                    for dim in shape:
                        count *= dim
                    total += count
        except Exception as exc:  # noqa: BLE001 - a corrupt header is one clear line, not a traceback
            raise ModelImportError(f"{path} is not a readable safetensors file ({exc})") from exc
    return total


def inspect_folder(folder: Path, model_id: str, recipe: str | None = None) -> FolderInfo:
    """Check that `folder` holds a reranker we can run and read its properties.

    A reranker is a one-logit `*ForSequenceClassification` (a cross-encoder, or a converted LLM reranker) or a
    `*ForCausalLM` with a known scoring recipe. Raises ModelImportError saying what is missing, so a wrong folder is
    caught before anything is stored.
    """
    from transformers import CONFIG_MAPPING

    if not folder.is_dir():
        raise ModelImportError(f"{folder} is not a folder")
    config = _read_json(folder / "config.json")
    if not config:
        raise ModelImportError(f"{folder} is not a Hugging Face model folder (no config.json)")
    architectures = config.get("architectures") or []
    architecture = str(architectures[0] if architectures else config.get("model_type", "unknown"))
    model_type = str(config.get("model_type", ""))
    if model_type in _CUSTOM_CODE or (config.get("auto_map") and model_type not in CONFIG_MAPPING):
        why = _CUSTOM_CODE.get(model_type, "modelling code that only its repository ships")
        raise ModelImportError(
            f"{model_id} ({architecture}) needs {why} (trust_remote_code), which this server does not run; use a "
            "reranker that stock transformers loads"
        )
    if not architecture.endswith(("ForSequenceClassification", "ForCausalLM")):
        raise ModelImportError(
            f"{folder} is not a reranker: its architecture is {architecture}, a reranker is a "
            "*ForSequenceClassification cross-encoder or a *ForCausalLM LLM reranker"
        )
    num_labels = len(config.get("id2label") or {}) or int(config.get("num_labels", 1))
    if architecture.endswith("ForSequenceClassification") and num_labels != 1:
        raise ModelImportError(
            f"{folder} is not a reranker cross-encoder: it has {num_labels} output labels, a reranker has 1"
        )
    if not any(next(folder.glob(pattern), None) for pattern in _WEIGHT_FILES):
        raise ModelImportError(f"{folder} holds no model weights (*.safetensors or pytorch_model.bin)")
    if not any((folder / name).exists() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt")):
        raise ModelImportError(f"{folder} holds no tokenizer files")
    chosen = _recipe_for(folder, model_id, architecture, recipe)
    if chosen == "cross-encoder" and architecture.endswith("ForCausalLM"):
        raise ModelImportError(f"{model_id}: the cross-encoder recipe needs a *ForSequenceClassification model")
    dtype = config.get("dtype") or config.get("torch_dtype")
    return FolderInfo(
        architecture, num_labels, _max_length(folder, model_id, config, chosen), chosen,
        str(dtype) if dtype else None, _parameters(folder),
    )  # fmt: skip


def _max_length(folder: Path, model_id: str, config: dict[str, Any], recipe: str) -> int:
    """The catalogue's max_length, else the recipe's reference value, else what sentence-transformers would use."""
    known = known_model(model_id)
    if known:
        return known.max_length
    positions = config.get("max_position_embeddings")
    if recipe != "cross-encoder":
        default = {"qwen3": 8192, "bge-gemma": 512}[recipe]  # the reference code's max_length
        return min(default, positions) if isinstance(positions, int) and positions > 0 else default
    candidates = [
        _read_json(folder / "sentence_bert_config.json").get("max_seq_length"),
        _read_json(folder / "tokenizer_config.json").get("model_max_length"),
    ]
    limit = next((int(c) for c in candidates if isinstance(c, (int, float)) and 0 < c < 1_000_000), 512)
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
        recipe=str(meta.get("recipe", "cross-encoder")),
        checkpoint_dtype=meta.get("checkpoint_dtype") or None,
        parameters=int(meta.get("parameters", 0)),
    )


def list_rerankers() -> list[StoredReranker]:
    """The newest stored version of every reranker, sorted by model id."""
    newest: dict[str, StoredReranker] = {}
    for model in bentoml.models.list():
        stored = _to_stored(model)
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


@dataclass(frozen=True)
class ImportResult:
    stored: StoredReranker
    skipped: bool


@dataclass(frozen=True)
class ImportOptions:
    """How a model is imported, whatever its source."""

    force: bool = False  # store a new version even when the same source is stored
    backend: BackendName = "torch"
    recipe: str | None = None  # the scoring recipe, when neither the catalogue, the id nor the folder tells it
    check: bool = True  # load the stored copy and score a pair before committing it


DEFAULT_IMPORT = ImportOptions()


def _check_vocabulary(folder: Path, model_id: str) -> None:
    """Refuse a tokenizer that makes token ids the model has no embedding for (they would crash every request)."""
    from transformers import AutoConfig

    from rerank_server.scorer import load_tokenizer

    try:
        vocabulary = AutoConfig.from_pretrained(folder).get_text_config().vocab_size
        tokens = len(load_tokenizer(folder))
    except Exception as exc:  # noqa: BLE001 - an unreadable tokenizer or config is one clear line
        raise ModelImportError(f"{model_id}: its tokenizer or config cannot be read ({_first_line(exc)})") from exc
    if vocabulary and tokens > vocabulary:
        raise ModelImportError(
            f"{model_id}: its tokenizer has {tokens} tokens but the model only {vocabulary} embeddings: the "
            "tokenizer does not belong to these weights (put the model's own tokenizer files in the folder)"
        )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


def check_runs(stored: StoredReranker) -> float:
    """Load `stored` the way the server does and score one pair; the score, or ModelImportError saying why not."""
    import gc

    import torch

    from rerank_server.backends.torch_backend import resolve_device
    from rerank_server.scorer import load_scorer

    try:
        scorer = load_scorer(stored, device=resolve_device("auto"))
        score = scorer.score(["what is a panda?"], ["The giant panda is a bear species endemic to China."]).scores[0]
        scorer.release()
    except Exception as exc:  # noqa: BLE001 - every kind of broken model ends in the same advice
        raise ModelImportError(
            f"{stored.model_id}: the model could not score a test pair ({_first_line(exc)}); check that the folder's "
            "weights, config and tokenizer belong together and are complete (--no-check skips this test)"
        ) from exc
    finally:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    if not 0.0 <= score <= 1.0:
        raise ModelImportError(f"{stored.model_id}: the model scored a test pair {score}, not a number in 0..1")
    return score


def store_folder(
    model_id: str,
    folder: Path,
    *,
    source: str,
    revision: str | None,
    fingerprint: str,
    options: ImportOptions = DEFAULT_IMPORT,
) -> ImportResult:
    """Copy a checked model folder into the store (converted for `backend`), or do nothing when the same source is
    stored already. With `check`, the stored copy must load and score a pair before it is committed.

    `bentoml.models.create` only commits the model when its block exits cleanly, so a failed import leaves nothing.
    """
    model_id = canonical_id(model_id)
    problem = model_id_problem(model_id)
    if problem:
        raise ModelImportError(f"{model_id!r} cannot be imported: {problem}")
    backend = options.backend
    info = inspect_folder(folder, model_id, options.recipe)
    if backends.is_cpu_runtime(backend) and info.recipe != "cross-encoder":
        raise ModelImportError(
            f"{model_id}: --backend {backend} runs cross-encoders only; a {info.recipe} reranker runs with --backend "
            "torch (on a GPU, or on the CPU)"
        )
    _check_vocabulary(folder, model_id)
    if backend != "torch":
        fingerprint = f"{fingerprint}+{backend}"  # the same source for another backend is a new version
    if info.recipe != "cross-encoder":
        fingerprint = f"{fingerprint}+{info.recipe}"
    existing = next((s for s in list_rerankers() if s.store_name == store_name(model_id)), None)
    if existing and existing.fingerprint == fingerprint and not options.force:
        return ImportResult(existing, skipped=True)
    metadata = {
        "model_id": existing.model_id if existing else model_id,  # one spelling per model, whatever the case typed
        "source": source,
        "revision": revision or "",
        "fingerprint": fingerprint,
        "max_length": info.max_length,
        "architecture": info.architecture,
        "num_labels": info.num_labels,
        "backend": backend,
        "recipe": info.recipe,
        "checkpoint_dtype": info.checkpoint_dtype or "",
        "parameters": info.parameters,
    }
    labels = {**APP_LABEL, "model-id": metadata["model_id"]}
    with bentoml.models.create(store_name(model_id), labels=labels, metadata=metadata) as model:
        target = Path(model.path)
        shutil.copytree(folder, target, ignore=_IGNORED, dirs_exist_ok=True)
        if backend != "torch":
            _convert(target, backend, model_id)
        # What was kept, not what the folder held (other runtimes' files and, once converted, the torch weights).
        size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file() and p.name != "model.yaml")
        model.info.metadata["size_bytes"] = size
        if options.check:
            draft = _to_stored(model)
            assert draft is not None
            check_runs(draft)
    stored = find_reranker(metadata["model_id"])
    assert stored is not None  # just created
    logger.info("Stored %s as %s", model_id, stored.tag)
    return ImportResult(stored, skipped=False)


def _convert(target: Path, backend: BackendName, model_id: str) -> None:
    """Convert the stored copy for a CPU runtime and keep only what that runtime loads."""
    logger.info("Converting %s for %s", model_id, backend)
    try:
        backends.convert(target, backend)
    except Exception as exc:  # noqa: BLE001 - an exporter's traceback is no help to the user
        raise ModelImportError(
            f"{model_id}: converting it for {backend} failed ({_first_line(exc)}); import it with --backend torch"
        ) from exc
    for pattern in _WEIGHT_FILES:
        for weights in target.glob(pattern):
            weights.unlink()  # the runtime has its own copy of the weights; the torch one would double the size


def import_from_folder(model_id: str, folder: Path, options: ImportOptions = DEFAULT_IMPORT) -> ImportResult:
    """Register a local model folder under `model_id` (no network)."""
    folder = folder.resolve()
    return store_folder(
        model_id, folder, source=f"dir:{folder}", revision=None, fingerprint=folder_fingerprint(folder), options=options
    )


# What a download takes: configs, tokenizers (vocab.txt, sentencepiece, chat templates) and one copy of the weights.
_HUB_FILES = ["*.json", "*.txt", "*.model", "*.jinja"]


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
        model_id, path, source=f"hub:{_hub_endpoint()}", revision=resolved, fingerprint=f"hub@{resolved}",
        options=options,
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
        inspect_folder(path, model_id, options.recipe)
    except Exception:  # noqa: BLE001 - not (completely) in the cache: download it
        path = _download_from_modelscope(snapshot_download, model_id)
    return store_folder(
        model_id, path, source="modelscope", revision=path.name, fingerprint=folder_fingerprint(path), options=options
    )


def _download_from_modelscope(snapshot_download: Callable[..., str], model_id: str) -> Path:
    try:
        path = Path(snapshot_download(model_id, allow_patterns=[*_HUB_FILES, "*.safetensors"]))
        if not any(path.glob("*.safetensors")):  # an older repository with PyTorch weights only
            path = Path(snapshot_download(model_id, allow_patterns=[*_HUB_FILES, "pytorch_model*.bin"]))
    except Exception as exc:  # noqa: BLE001 - any network or repository failure ends in the same advice
        raise ModelImportError(
            f"cannot download {model_id} from ModelScope ({type(exc).__name__}: {str(exc)[:200]}); "
            "use --from-dir DIR with a downloaded copy, or --source hub with HF_ENDPOINT set to a reachable mirror"
        ) from exc
    return path


Source = Literal["hub", "modelscope"]


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
