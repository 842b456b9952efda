"""What a Hugging Face model folder says about itself, and whether this server can run it as a reranker."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rerank_server.catalog import known_model
from rerank_server.models.loaded import ships_own_code
from rerank_server.recipes import RECIPES, recipe_from_id, recipe_from_prompt
from rerank_server.recipes.colbert import STANFORD_ARCHITECTURE, ColbertSettings, colbert_files, colbert_settings
from rerank_server.recipes.listwise import projector_file

WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin")
# Rerankers whose scoring lives only in their repository's own Python code (`trust_remote_code`), which this server
# does not run: what they need, in one line each.
_CUSTOM_CODE = {
    "minicpm": "per-layer score heads and a `cutoff_layers` argument that exist only in the repository's own code",
    "cost_wise_gemma": "token compression and layer-wise heads that exist only in the repository's own code",
}


# Vision-language checkpoints (Qwen3VLForConditionalGeneration): rerankers with an image-taking recipe.
_VISION_SUFFIX = "ForConditionalGeneration"
# Listwise rerankers (jina-reranker-v3 / v3.5): a Qwen3 backbone and a projector, scored by a listwise recipe. Their
# repository ships code (`rerank()`), stored with --trust-remote-code like any model's but never run: the recipe and
# backend are this server's.
LISTWISE_ARCHITECTURES = ("JinaForRanking",)


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
    module_stack: bool = False  # a sentence-transformers score head after the transformer (modules.json)


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file's object ({} when the file is missing); ModelImportError when it is not readable JSON."""
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
    configured = read_json(folder / "tokenizer_config.json").get("chat_template") or ""
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
    if architecture.endswith("ForSequenceClassification") or module_stack(folder):
        return "cross-encoder"
    vision = architecture.endswith(_VISION_SUFFIX)
    llm_recipes = ", ".join(name for name, r in RECIPES.items() if name != "cross-encoder" and r.takes_images == vision)
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


def module_stack(folder: Path) -> bool:
    """Whether the folder is a sentence-transformers CrossEncoder whose score comes from modules after a plain
    transformer (`modules.json`: the transformer, then pooling and dense layers, as the Ettin rerankers are)."""
    try:
        modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    types = [str(module.get("type", "")) for module in modules if isinstance(module, dict)]
    return len(types) > 1 and types[0].endswith(".Transformer")


def inspect_folder(
    folder: Path, model_id: str, recipe: str | None = None, *, trust_remote_code: bool = False
) -> FolderInfo:
    """Check that `folder` holds a reranker we can run and read its properties.

    A reranker is a one-logit `*ForSequenceClassification` (a cross-encoder, or a converted LLM reranker), a
    `*ForCausalLM` with a known scoring recipe, a vision-language `*ForConditionalGeneration` with its recipe and
    image processor (Qwen3-VL-Reranker), a sentence-transformers CrossEncoder with a score head of its own, or a
    ColBERT encoder as PyLate or colbert-ai (HF_ColBERT) saves it.
    A folder whose config maps classes to its own Python code (`auto_map`) is taken only with `trust_remote_code`.
    Raises ModelImportError saying what is missing, so a wrong folder is caught before anything is stored.
    """
    if not folder.is_dir():
        raise ModelImportError(f"{folder} is not a folder")
    config = read_json(folder / "config.json")
    if not config:
        raise ModelImportError(f"{folder} is not a Hugging Face model folder (no config.json)")
    architectures = config.get("architectures") or []
    architecture = str(architectures[0] if architectures else config.get("model_type", "unknown"))
    model_type = str(config.get("model_type", ""))
    if model_type in _CUSTOM_CODE:
        raise ModelImportError(
            f"{model_id} ({architecture}) needs {_CUSTOM_CODE[model_type]} (trust_remote_code), which no recipe of "
            "this server scores, even with --trust-remote-code; use a reranker scored by its logit"
        )
    if ships_own_code(folder) and not trust_remote_code:
        raise ModelImportError(
            f"{model_id} ships its own modelling code (auto_map in its config), which would run inside the server: "
            "import it with --trust-remote-code to store that code with the weights and run it (if you trust it)"
        )
    known = known_model(model_id)
    try:
        colbert = colbert_settings(folder, dict(known.pylate_arguments) if known and known.pylate_arguments else None)
    except ValueError as exc:
        raise ModelImportError(f"{model_id}: {exc}") from exc
    if colbert is not None:
        return _late_interaction(folder, model_id, config, architecture, recipe, colbert)
    if architecture in LISTWISE_ARCHITECTURES or (recipe and RECIPES.get(recipe) and RECIPES[recipe].listwise):
        return _listwise(folder, model_id, config, architecture, recipe)
    stack = module_stack(folder)
    if not architecture.endswith(("ForSequenceClassification", "ForCausalLM", _VISION_SUFFIX)) and not stack:
        raise ModelImportError(
            f"{folder} is not a reranker: its architecture is {architecture}, a reranker is a "
            "*ForSequenceClassification cross-encoder, a *ForCausalLM LLM reranker, a vision-language one such as "
            "Qwen3VLForConditionalGeneration, or a sentence-transformers CrossEncoder with its own score head "
            "(modules.json)"
        )
    num_labels = len(config.get("id2label") or {}) or int(config.get("num_labels", 1))
    if architecture.endswith("ForSequenceClassification") and num_labels != 1:
        raise ModelImportError(
            f"{folder} is not a reranker cross-encoder: it has {num_labels} output labels, a reranker has 1"
        )
    if not any(next(folder.glob(pattern), None) for pattern in WEIGHT_FILES):
        raise ModelImportError(f"{folder} holds no model weights (*.safetensors or pytorch_model.bin)")
    if not any((folder / name).exists() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt")):
        raise ModelImportError(f"{folder} holds no tokenizer files")
    chosen = _recipe_for(folder, model_id, architecture, recipe)
    if RECIPES[chosen].listwise:
        raise ModelImportError(f"{model_id}: the {chosen} recipe scores listwise models ({architecture} is not one)")
    if chosen == "cross-encoder" and architecture.endswith("ForCausalLM"):
        raise ModelImportError(f"{model_id}: the cross-encoder recipe needs a *ForSequenceClassification model")
    if stack and chosen != "cross-encoder":
        raise ModelImportError(
            f"{model_id}: a sentence-transformers score head is scored with the cross-encoder recipe"
        )
    _check_vision(folder, model_id, architecture, chosen)
    text_config = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    dtype = config.get("dtype") or config.get("torch_dtype") or text_config.get("dtype")
    return FolderInfo(
        architecture, num_labels, _max_length(folder, model_id, config, chosen), chosen,
        str(dtype) if dtype else None, _parameters(folder), stack,
    )  # fmt: skip


def _late_interaction(
    folder: Path, model_id: str, config: dict[str, Any], architecture: str, chosen: str | None, colbert: ColbertSettings
) -> FolderInfo:
    """A ColBERT folder, PyLate's (the bare encoder and its Dense projection) or Stanford's (colbert-ai's HF_ColBERT:
    the backbone and the projection in one checkpoint): its files and the query and document lengths. Never a
    cross-encoder (sentence-transformers would convert it to one and score nonsense)."""
    if chosen not in (None, "colbert"):
        raise ModelImportError(
            f"{model_id} is a late-interaction (ColBERT) model: it is scored with the colbert recipe"
        )
    try:
        encoder, _ = colbert_files(folder)
    except ValueError as exc:
        raise ModelImportError(str(exc)) from exc
    if not any(next(encoder.glob(pattern), None) for pattern in WEIGHT_FILES):
        raise ModelImportError(f"{encoder} holds no model weights (*.safetensors or pytorch_model.bin)")
    if not (folder / "tokenizer.json").is_file() and not (folder / "vocab.txt").is_file():
        raise ModelImportError(f"{folder} holds no tokenizer files")
    if encoder != folder:  # the transformer's own config names the encoder
        config = read_json(encoder / "config.json") or config
        architecture = str((config.get("architectures") or [architecture])[0])
    if architecture == STANFORD_ARCHITECTURE:
        architecture = _backbone(model_id, config)
    dtype = config.get("dtype") or config.get("torch_dtype")
    return FolderInfo(
        architecture, 1, colbert.query_length + colbert.document_length, "colbert", str(dtype) if dtype else None,
        _parameters(encoder),
    )  # fmt: skip


def _backbone(model_id: str, config: dict[str, Any]) -> str:
    """The class a Stanford ColBERT's backbone loads as, which `HF_ColBERT` (colbert-ai's wrapper) does not name: its
    own code's AutoModel (auto_map), else transformers' bare model of its model_type (BertModel)."""
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    auto_map = config.get("auto_map") if isinstance(config.get("auto_map"), dict) else {}
    if isinstance(own := auto_map.get("AutoModel"), str):
        return own.rpartition(".")[2]
    stock = MODEL_MAPPING_NAMES.get(str(config.get("model_type", "")))
    if not stock:
        raise ModelImportError(
            f"{model_id}: a ColBERT backbone of model_type {config.get('model_type')!r}, for which transformers has no "
            "model and its config's auto_map names no AutoModel of its own"
        )
    return stock if isinstance(stock, str) else stock[0]


def _listwise(folder: Path, model_id: str, config: dict[str, Any], architecture: str, chosen: str | None) -> FolderInfo:
    """A listwise reranker folder (JinaForRanking): a Qwen3 backbone with the projector in its safetensors. The recipe
    is `--recipe`'s, the catalogue's or the id's, else v3.5's where the config has sliding-window layers."""
    if architecture not in LISTWISE_ARCHITECTURES or config.get("model_type") != "qwen3":
        raise ModelImportError(
            f"{model_id}: listwise recipes score JinaForRanking models with a qwen3 backbone, not a {architecture} "
            f"({config.get('model_type')})"
        )
    known = known_model(model_id)
    found = chosen or (known.recipe if known else None) or recipe_from_id(model_id)
    if found is None:
        found = "jina-v3.5" if "sliding_attention" in (config.get("layer_types") or ()) else "jina-v3"
    if not RECIPES[found].listwise:
        raise ModelImportError(f"{model_id} is a listwise reranker ({architecture}): scored with jina-v3 or jina-v3.5")
    try:
        projector_file(folder)
    except ValueError as exc:
        raise ModelImportError(str(exc)) from exc
    if not (folder / "tokenizer.json").is_file() and not (folder / "tokenizer_config.json").is_file():
        raise ModelImportError(f"{folder} holds no tokenizer files")
    dtype = config.get("dtype") or config.get("torch_dtype")
    return FolderInfo(
        architecture, 1, _max_length(folder, model_id, config, found), found, str(dtype) if dtype else None,
        _parameters(folder),
    )  # fmt: skip


def _check_vision(folder: Path, model_id: str, architecture: str, recipe: str) -> None:
    """A vision-language checkpoint needs an image-taking recipe and its image processor, and only it takes one."""
    vision = architecture.endswith(_VISION_SUFFIX)
    if vision != RECIPES[recipe].takes_images:
        kind = "a vision-language model" if vision else "a text model"
        raise ModelImportError(f"{model_id}: the {recipe} recipe cannot score {kind} ({architecture})")
    if vision and not (folder / "preprocessor_config.json").is_file():
        raise ModelImportError(f"{folder} holds no image processor (preprocessor_config.json)")


def _max_length(folder: Path, model_id: str, config: dict[str, Any], recipe: str) -> int:
    """The catalogue's max_length, else the recipe's reference value, else what sentence-transformers would use; never
    more than the folder's own position limit (a fine-tune or distilled copy under a catalogue id may have fewer)."""
    positions = config.get("max_position_embeddings")
    known = known_model(model_id)
    if known:
        if not isinstance(positions, int) or positions <= 0:
            return known.max_length
        return min(known.max_length, positions - _position_offset(config))
    if recipe != "cross-encoder":
        default = RECIPES[recipe].reference_max_length
        return min(default, positions) if isinstance(positions, int) and positions > 0 else default
    candidates = [
        read_json(folder / "sentence_bert_config.json").get("max_seq_length"),
        read_json(folder / "tokenizer_config.json").get("model_max_length"),
    ]
    limit = next((int(c) for c in candidates if isinstance(c, (int, float)) and 0 < c < 1_000_000), 512)
    if isinstance(positions, int) and positions > 0:
        limit = min(limit, positions - _position_offset(config))
    return limit


def _position_offset(config: dict[str, Any]) -> int:
    # RoBERTa-family models reserve two positions for the padding offset, as sentence-transformers accounts for.
    return 2 if config.get("model_type") in ("roberta", "xlm-roberta", "camembert") else 0


# Far from the catalogue's size: beyond what a float16 copy of float32 weights (or the reverse) explains.
_SIZE_FACTOR = 4


def _weight_bytes(folder: Path) -> int:
    """Bytes of the folder's weights: its safetensors, else its pickles (a folder with both holds one model twice)."""
    return max(sum(p.stat().st_size for p in folder.glob(pattern) if p.is_file()) for pattern in WEIGHT_FILES)


def catalogue_mismatch(folder: Path, model_id: str, architecture: str) -> str | None:
    """One line when a folder imported under a catalogue id is far from that model (another architecture family, or
    weights of a very different size): the common mistake is the wrong folder, which would otherwise be stored and
    served under the famous name. None when it matches, or the id is not in the catalogue."""
    known = known_model(model_id)
    if known is None:
        return None
    family = architecture.partition("For")[0]
    problems = []
    if known.architecture and family != known.architecture.partition("For")[0]:
        problems.append(f"a {architecture}, where {known.model_id} is a {known.architecture}")
    expected, found = known.size_bytes, _weight_bytes(folder)
    if expected and found and not expected / _SIZE_FACTOR <= found <= expected * _SIZE_FACTOR:
        problems.append(f"{found / 1e6:,.0f} MB of weights, where {known.model_id} has {known.size}")
    if not problems:
        return None
    return (
        f"warning: {folder} does not look like {known.model_id}: {' and '.join(problems)}. Is it the right folder? "
        "(A different model wants its own id: import_models.py my-org/my-reranker --from-dir FOLDER)"
    )


def folder_fingerprint(folder: Path) -> str:
    """A cheap identity of a folder's contents (names, sizes, modification times) to detect re-imports."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and ".git" not in p.parts):
        stat = path.stat()
        digest.update(f"{path.relative_to(folder)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]
