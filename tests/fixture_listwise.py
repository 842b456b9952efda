"""Listwise reranker fixtures laid out as jinaai/jina-reranker-v3 and v3.5 are: a `JinaForRanking` config (model type
qwen3) whose `auto_map` names the repository's `modeling.py`, one model.safetensors holding the Qwen3 backbone
(`model.*`) and the projector (`projector.0.weight`, `projector.2.weight`, no bias), and a Qwen2 byte-level BPE
tokenizer whose `<|embed_token|>` and `<|rerank_token|>` are at their real ids, 151670 and 151671.

The vocabulary is padded with filler tokens up to those ids, so the embedding table has 151,672 rows: kept small by a
tiny hidden size (or the real one, for the benchmark's shape). Its `modeling.py` raises if it is ever imported: the
server must score these models with its own recipe and backend, never the repository's code.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers

from tests.fixture_models import _corpus, _train_bpe

EMBED_TOKEN_ID = 151_670
RERANK_TOKEN_ID = 151_671
FIRST_SPECIAL_ID = 151_643  # <|endoftext|> in Qwen's tokenizer: the byte-level BPE vocabulary ends before it
# v3.5's layers: three sliding-window layers then two global ones, the last layer global (tiny: one cycle).
V35_LAYER_TYPES_TINY = ["sliding_attention"] * 3 + ["full_attention"] * 2
# Shapes: layers, hidden, heads, kv heads, intermediate, head_dim.
SHAPES = {"tiny": (2, 32, 4, 2, 64, 8), "0.6B": (28, 1024, 16, 8, 3072, 128)}
NEVER_RUN = 'raise RuntimeError("the repository\'s own code must never run in the server")\n'
_TEMPLATE_WORDS = (
    "You are a search relevance expert who can determine a ranking of the passages based on how relevant they are to "
    "the query. If the query is a question, how relevant a passage is depends on how well it answers the question. "
    "I will provide you with passages, each indicated by a numerical identifier. Rank the passages based on their "
    'relevance to query: <passage id="0">\n</passage>\n<query>\n</query>\n<instruct>\n</instruct>\n'
)


def jina_tokenizer(model_max_length: int) -> transformers.Qwen2Tokenizer:
    """A Qwen2Tokenizer trained on a small corpus, its BPE vocabulary padded to Qwen's 151,643 entries, then Qwen's
    specials, `<think>` / `</think>`, and the two markers at 151670 / 151671."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers

    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(transformers.models.qwen2.tokenization_qwen2.PRETOKENIZE_REGEX), "isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    corpus = _corpus((_TEMPLATE_WORDS,) * 3) + ["机器学习是人工智能的一个分支", "熊猫是中国特有的熊"] * 50
    vocab, merges = _train_bpe(bpe, 900, corpus, [], pre_tokenizers.ByteLevel.alphabet())
    # Fillers no merge ever makes (they hold a character outside the byte-level alphabet): ids only.
    vocab.update({f"\u2603filler{i}": i for i in range(len(vocab), FIRST_SPECIAL_ID)})
    tokenizer = transformers.Qwen2Tokenizer(
        vocab=vocab, merges=merges, unk_token=None, bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        model_max_length=model_max_length,
    )  # fmt: skip
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]})
    tokenizer.add_tokens([f"<|filler_{i}|>" for i in range(len(tokenizer), EMBED_TOKEN_ID - 3)], special_tokens=True)
    tokenizer.add_tokens(["<think>", "</think>", "<|filler_last|>"])
    tokenizer.add_tokens(["<|embed_token|>", "<|rerank_token|>"], special_tokens=True)
    ids = tokenizer.convert_tokens_to_ids(["<|embed_token|>", "<|rerank_token|>"])
    assert ids == [EMBED_TOKEN_ID, RERANK_TOKEN_ID], ids
    return tokenizer


def build_jina_reranker(
    target: Path, *, version: str = "v3", shape: str = "tiny", model_max_length: int = 131_072, seed: int = 0
) -> Path:
    """A jina-reranker-v3 (or v3.5: sliding-window layers, window 16 when tiny) folder with random weights."""
    layers, hidden, heads, kv_heads, intermediate, head_dim = SHAPES[shape]
    tokenizer = jina_tokenizer(model_max_length)
    torch.manual_seed(seed)
    extra: dict = {}
    if version == "v3.5":
        types = V35_LAYER_TYPES_TINY if shape == "tiny" else (["sliding_attention"] * 3 + ["full_attention"] * 2) * 6
        types = types[:layers] if shape != "tiny" else types
        types[-1] = "full_attention"
        extra = {"use_sliding_window": True, "sliding_window": 16 if shape == "tiny" else 1024, "layer_types": types}
        layers = len(types)
    config = transformers.Qwen3Config(
        vocab_size=RERANK_TOKEN_ID + 1, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim, max_position_embeddings=131_072,
        tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None, **extra,
    )  # fmt: skip
    model = transformers.Qwen3ForCausalLM(config)
    if shape != "tiny":
        model.to(torch.bfloat16)  # the published checkpoint's dtype (and half the file)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if not k.startswith("lm_head.")}
    dtype = next(iter(state.values())).dtype
    state["projector.0.weight"] = (torch.randn(hidden // 2, hidden) / hidden**0.5).to(dtype)
    state["projector.2.weight"] = (torch.randn(hidden // 2, hidden // 2) / (hidden // 2) ** 0.5).to(dtype)
    target.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    save_file(state, str(target / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(target)
    saved = json.loads((target / "config.json").read_text())
    saved.update(architectures=["JinaForRanking"], auto_map={"AutoModel": "modeling.JinaForRanking"})
    (target / "config.json").write_text(json.dumps(saved, indent=2))
    (target / "modeling.py").write_text(NEVER_RUN)
    tokenizer.save_pretrained(target)
    return target
