"""ColBERT fixtures saved as PyLate saves a model and as colbert-ai (Stanford) saves one, and PyLate's scoring of both
written out independently of the server.

The reference follows PyLate 1.6's `models.ColBERT` (`tokenize`, `encode`, `skiplist_mask`) and
`scores.colbert_scores`: PyLate itself pins sentence-transformers 5.3 and transformers <= 5.3, older than this
project's, so its code is re-implemented here from its source rather than installed. Each document is scored alone
(PyLate's `rank.rerank` pads a list's documents together).
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch
import transformers

from tests.fixture_models import _modernbert_config, minilm_source

SKIPLIST = list(string.punctuation)


def build_colbert(
    target: Path,
    backbone: str = "bert",
    document_length: int = 48,
    nested: bool = False,
    leave_out: tuple[str, ...] = (),
) -> Path:
    """A PyLate-shaped ColBERT folder: a bare encoder (MiniLM-L6's BERT, or a tiny random ModernBERT with `[Q] ` /
    `[D] ` added as tokens, as GTE-ModernColBERT has them), a 1_Dense projection without bias, and PyLate's config
    without the keys in `leave_out`. `nested`: the transformer in `0_Transformer/`, as some uploads
    (answerai-colbert-small-v1) keep it."""
    torch.manual_seed(1)
    if backbone == "bert":
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(minilm_source()))
        encoder = transformers.AutoModel.from_pretrained(str(minilm_source()))
        prefixes, attend = ("[unused0]", "[unused1]"), False
    else:
        tokenizer = transformers.AutoTokenizer.from_pretrained(
            str(minilm_source()), model_input_names=["input_ids", "attention_mask"]
        )
        tokenizer.add_tokens(["[Q] ", "[D] "])
        encoder = transformers.ModernBertModel(_modernbert_config(tokenizer, architectures=["ModernBertModel"]))
        prefixes, attend = ("[Q] ", "[D] "), True
    encoder.save_pretrained(target / "0_Transformer" if nested else target)
    tokenizer.save_pretrained(target)
    if nested:
        tokenizer.save_pretrained(target / "0_Transformer")
        (target / "config.json").write_text((target / "0_Transformer" / "config.json").read_text())
    hidden = encoder.config.hidden_size
    dense = torch.nn.Linear(hidden, 24, bias=False)
    (target / "1_Dense").mkdir()
    from safetensors.torch import save_file

    save_file({"linear.weight": dense.weight.detach().contiguous()}, target / "1_Dense" / "model.safetensors")
    (target / "1_Dense" / "config.json").write_text(
        json.dumps({"in_features": hidden, "out_features": 24, "bias": False, "activation_function": "Identity"})
    )
    modules = [
        {
            "idx": 0,
            "name": "0",
            "path": "0_Transformer" if nested else "",
            "type": "sentence_transformers.models.Transformer",
        },
        {"idx": 1, "name": "1", "path": "1_Dense", "type": "pylate.models.Dense.Dense"},
    ]
    (target / "modules.json").write_text(json.dumps(modules))
    config = {
        "model_type": "ColBERT",
        "query_prefix": prefixes[0],
        "document_prefix": prefixes[1],
        "query_length": 32,
        "document_length": document_length,
        "attend_to_expansion_tokens": attend,
        "skiplist_words": SKIPLIST,
        "do_query_expansion": True,
    }
    for key in leave_out:
        del config[key]
    (target / "config_sentence_transformers.json").write_text(json.dumps(config))
    return target


# colbert-ai's artifact.metadata as it saves it (the keys PyLate reads, and some it does not).
STANFORD_METADATA = {
    "query_token_id": "[unused0]",
    "doc_token_id": "[unused1]",
    "query_maxlen": 32,
    "doc_maxlen": 48,
    "attend_to_mask_tokens": False,
    "dim": 24,
    "similarity": "cosine",
    "mask_punctuation": True,
    "checkpoint": "colbert-ir/colbertv2.0",
}


def build_stanford_colbert(
    target: Path, metadata: dict | None = STANFORD_METADATA, weights: str = "safetensors"
) -> Path:
    """A ColBERT folder as colbert-ai saves its HF_ColBERT: MiniLM-L6's BERT under `bert.` and a bias-free projection
    `linear.weight` in one checkpoint (`weights`: "safetensors" or "bin"), config.json naming HF_ColBERT with the
    backbone's model_type, the tokenizer, and `metadata` as artifact.metadata (None: no such file)."""
    torch.manual_seed(2)
    encoder = transformers.AutoModel.from_pretrained(str(minilm_source()))
    transformers.AutoTokenizer.from_pretrained(str(minilm_source())).save_pretrained(target)
    state = {f"bert.{key}": value.contiguous() for key, value in encoder.state_dict().items()}
    _save_stanford(target, encoder.config.to_dict(), state, weights)
    if metadata is not None:
        (target / "artifact.metadata").write_text(json.dumps(metadata, indent=2))
    return target


_ROTARY_CONFIGURATION = """from transformers import XLMRobertaConfig


class RotaryXLMRobertaConfig(XLMRobertaConfig):
    model_type = "rotary-xlm-roberta"
"""
_ROTARY_MODELING = '''import torch
from transformers import XLMRobertaModel

from .configuration_rotary import RotaryXLMRobertaConfig


class RotaryXLMRobertaModel(XLMRobertaModel):
    """XLM-RoBERTa with a position signal on its output that the stock class lacks (as jina-colbert-v2's rotary
    embeddings are its own code's): without this code, the scores differ."""

    config_class = RotaryXLMRobertaConfig

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        output = super().forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        hidden = output.last_hidden_state
        positions = torch.arange(hidden.shape[1], device=hidden.device, dtype=hidden.dtype)[:, None]
        frequencies = torch.linspace(0.1, 1.0, hidden.shape[-1], device=hidden.device, dtype=hidden.dtype)
        output.last_hidden_state = hidden + torch.sin(positions * frequencies)
        return output
'''
# The metadata of the folder with its own code: colbert-ai's markers and no attention to expansion tokens, which the
# arguments jina-colbert-v2's model card passes to PyLate override.
ROTARY_METADATA = {**STANFORD_METADATA, "doc_maxlen": 64}


def build_stanford_rotary(target: Path) -> Path:
    """A Stanford ColBERT folder shaped like jina-colbert-v2: a backbone of its own code (XLM-RoBERTa with a position
    signal, a model_type transformers does not know, named by auto_map; tiny, random), its weights under `roberta.`
    beside `linear.weight`, MiniLM's tokenizer with `[QueryMarker]` and `[DocumentMarker]` added, and artifact.metadata
    (ROTARY_METADATA)."""
    target.mkdir(parents=True)
    (target / "configuration_rotary.py").write_text(_ROTARY_CONFIGURATION)
    (target / "modeling_rotary.py").write_text(_ROTARY_MODELING)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(minilm_source()))
    tokenizer.add_tokens(["[QueryMarker]", "[DocumentMarker]"])
    tokenizer.save_pretrained(target)
    torch.manual_seed(3)
    config = transformers.XLMRobertaConfig(
        vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
        max_position_embeddings=130, type_vocab_size=1, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id, initializer_range=0.2,
    )  # fmt: skip
    # The stock class has the weights the fixture's own class has: it only makes them.
    encoder = transformers.XLMRobertaModel(config)
    state = {f"roberta.{key}": value.contiguous() for key, value in encoder.state_dict().items()}
    auto_map = {
        "AutoConfig": "configuration_rotary.RotaryXLMRobertaConfig",
        "AutoModel": "modeling_rotary.RotaryXLMRobertaModel",
    }
    _save_stanford(target, {**config.to_dict(), "model_type": "rotary-xlm-roberta", "auto_map": auto_map}, state)
    (target / "artifact.metadata").write_text(json.dumps(ROTARY_METADATA, indent=2))
    return target


def _save_stanford(target: Path, config: dict, state: dict[str, torch.Tensor], weights: str = "safetensors") -> None:
    state["linear.weight"] = torch.nn.Linear(config["hidden_size"], 24, bias=False).weight.detach().contiguous()
    if weights == "safetensors":
        from safetensors.torch import save_file

        save_file(state, target / "model.safetensors", metadata={"format": "pt"})
    else:
        torch.save(state, target / "pytorch_model.bin")
    (target / "config.json").write_text(json.dumps({**config, "architectures": ["HF_ColBERT"]}, indent=2))


def _stanford_projection(folder: Path) -> torch.Tensor:
    """PyLate's Dense.from_stanford_weights: `linear.weight` of model.safetensors, else of pytorch_model.bin."""
    if (folder / "model.safetensors").is_file():
        from safetensors import safe_open

        with safe_open(str(folder / "model.safetensors"), framework="pt") as weights:
            return weights.get_tensor("linear.weight")
    return torch.load(folder / "pytorch_model.bin", map_location="cpu")["linear.weight"]


def _stanford_metadata(folder: Path, config: dict) -> None:
    """PyLate's reading of artifact.metadata into what the caller left unset: colbert-ai's prefix tokens where the
    metadata (or the file) names none, the rest left to PyLate's defaults."""
    path = folder / "artifact.metadata"
    metadata = json.loads(path.read_text()) if path.is_file() else {}
    for key, name, fallback in (
        ("query_prefix", "query_token_id", "[unused0]"),
        ("document_prefix", "doc_token_id", "[unused1]"),
        ("query_length", "query_maxlen", None),
        ("document_length", "doc_maxlen", None),
        ("attend_to_expansion_tokens", "attend_to_mask_tokens", None),
    ):
        if config.get(key) is None:
            config[key] = metadata.get(name) if metadata.get(name) is not None else fallback


# PyLate's values for what neither the caller nor the folder says (models.ColBERT.__init__, after the modules load).
PYLATE_DEFAULTS = {
    "query_prefix": "[Q] ",
    "document_prefix": "[D] ",
    "query_length": 32,
    "document_length": 180,
    "do_query_expansion": True,
    "attend_to_expansion_tokens": False,
    "skiplist_words": SKIPLIST,
}


class PyLateReference:
    """PyLate's ColBERT.encode and colbert_scores on a folder, one document at a time. `arguments` are the keyword
    arguments a caller passes to `models.ColBERT` (query_prefix, attend_to_expansion_tokens, ...): they win over the
    folder's own values, as in PyLate."""

    def __init__(self, folder: Path, trust_remote_code: bool = False, **arguments: object) -> None:
        config = {key: value for key, value in arguments.items() if value is not None}
        if (folder / "modules.json").is_file():
            # A sentence-transformers folder: PyLate's _parse_model_config takes each key the caller left unset.
            modules = json.loads((folder / "modules.json").read_text())
            encoder = folder / modules[0]["path"]
            saved = json.loads((folder / "config_sentence_transformers.json").read_text())
            for key in PYLATE_DEFAULTS:
                if config.get(key) is None and saved.get(key) is not None:
                    config[key] = saved[key]
            from safetensors.torch import load_file

            self.weight = load_file(str(folder / "1_Dense" / "model.safetensors"))["linear.weight"]
        else:  # a Stanford folder (HF_ColBERT): no modules, so PyLate appends the checkpoint's own projection
            encoder = folder
            self.weight = _stanford_projection(folder)
            _stanford_metadata(folder, config)
        for key, default in PYLATE_DEFAULTS.items():
            if config.get(key) is None:
                config[key] = default
        if not config["do_query_expansion"]:
            config["attend_to_expansion_tokens"] = False
        self.config = config
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
        # PyLate adds its prefixes to the tokenizer; a prefix it lacks would get a new, random embedding row, which
        # no fixture has.
        size = len(self.tokenizer)
        self.tokenizer.add_tokens([p for p in (config["query_prefix"], config["document_prefix"]) if p])
        assert len(self.tokenizer) == size, "a prefix that is not a token of the tokenizer"
        # PyLate: "If it is a MLM model, use the MASK token" as the padding of query expansion.
        self.tokenizer.pad_token_id = self.tokenizer.mask_token_id
        self.model = transformers.AutoModel.from_pretrained(str(encoder), trust_remote_code=trust_remote_code).eval()
        self.skiplist = [self.tokenizer.convert_tokens_to_ids(word) for word in self.config["skiplist_words"]]

    def tokenize(self, text: str, is_query: bool) -> dict[str, torch.Tensor]:
        length = self.config["query_length" if is_query else "document_length"]
        prefix = self.config["query_prefix" if is_query else "document_prefix"]
        padding = "max_length" if is_query and self.config["do_query_expansion"] else False
        out = self.tokenizer(
            [text], padding=padding, truncation=True, max_length=length - 1 if prefix else length,
            return_tensors="pt", return_token_type_ids=False,
        )  # fmt: skip
        ids, mask = out["input_ids"], out["attention_mask"]
        if prefix:  # PyLate: an empty prefix is none
            prefix_id = self.tokenizer.convert_tokens_to_ids(prefix)
            ids = torch.cat([ids[:, :1], torch.full((1, 1), prefix_id), ids[:, 1:]], dim=1)
            mask = torch.cat([mask[:, :1], torch.ones((1, 1), dtype=mask.dtype), mask[:, 1:]], dim=1)
        if is_query and self.config["attend_to_expansion_tokens"]:
            mask.fill_(1)
        return {"input_ids": ids, "attention_mask": mask}

    def ids(self, text: str, is_query: bool) -> list[int]:
        return self.tokenize(text, is_query)["input_ids"][0].tolist()

    def encode(self, text: str, is_query: bool) -> torch.Tensor:
        features = self.tokenize(text, is_query)
        with torch.no_grad():
            embeddings = self.model(**features).last_hidden_state[0] @ self.weight.T
        if is_query:
            keep = torch.ones(embeddings.shape[0], dtype=torch.bool)  # query expansion: every position kept
        else:
            keep = features["attention_mask"][0].bool()
            for token in self.skiplist:
                keep &= features["input_ids"][0] != token
        return torch.nn.functional.normalize(embeddings[keep], p=2, dim=1)

    def score(self, query: str, document: str) -> float:
        q, d = self.encode(query, True), self.encode(document, False)
        return float((q @ d.T).max(dim=1).values.sum())
