"""The benchmark workload and its models, built offline.

Workload (issue #4): 100 documents per request with lengths mixed between ~32 and ~480 tokens, a ~16-token query.
Models: the MiniLM-L6 fixture cross-encoder, and random-weight models of the exact bge-reranker-base / -large shapes
(XLM-R): a forward pass costs the same whatever the weights, so timings hold for the real models.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
import transformers

from tests.fixture_models import build_minilm_cross_encoder, minilm_source

WORDS = (
    "retrieval augmented generation ranks candidate passages with a cross encoder that reads the query and the "
    "document together so relevance is judged on both texts at once while vector search only compares embeddings "
    "computed separately for speed on large collections of documents stored in an index"
).split()
QUERY = "how does a cross encoder rerank passages for retrieval augmented generation?"

# hidden, layers, heads, intermediate: the published configs of BAAI/bge-reranker-base and -large (XLM-RoBERTa).
BGE_SHAPES = {"bge-base-shape": (768, 12, 12, 3072), "bge-large-shape": (1024, 24, 16, 4096)}
# Alibaba-NLP/gte-reranker-modernbert-base (ModernBERT-base: 22 layers, hidden 768, 12 heads, intermediate 1152,
# a 50,368-row embedding, 8,192 positions, global attention every third layer, local windows of 128 elsewhere).
MODERNBERT_BASE = {"hidden_size": 768, "num_hidden_layers": 22, "num_attention_heads": 12, "intermediate_size": 1152}


def documents(count: int, tokenizer, seed: int = 0, low: int = 32, high: int = 480) -> list[str]:
    """`count` documents whose token lengths are spread uniformly between `low` and `high`."""
    rng = random.Random(seed)
    docs = []
    for _ in range(count):
        target = rng.randint(low, high)
        words = rng.choices(WORDS, k=target)
        while len(tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]) > target:
            words.pop()
        docs.append(" ".join(words))
    return docs


def build_model(name: str, target: Path) -> Path:
    """The named benchmark model saved in Hugging Face format under `target` (reused when already there)."""
    if (target / "config.json").exists():
        return target
    if name == "minilm":
        return build_minilm_cross_encoder(target)
    if name == "modernbert-base-shape":
        return _build_modernbert(target)
    hidden, layers, heads, intermediate = BGE_SHAPES[name]
    config = transformers.XLMRobertaConfig(
        vocab_size=250002, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=intermediate, max_position_embeddings=514, type_vocab_size=1, num_labels=1,
        architectures=["XLMRobertaForSequenceClassification"],
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.XLMRobertaForSequenceClassification(config)
    # No XLM-R sentencepiece model can be downloaded here: a BERT WordPiece tokenizer stands in (same sequence
    # lengths, ids within the vocabulary). BGE uses no token types, so none are fed.
    tokenizer = transformers.AutoTokenizer.from_pretrained(
        str(minilm_source()), model_input_names=["input_ids", "attention_mask"]
    )
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def _build_modernbert(target: Path) -> Path:
    tokenizer = transformers.AutoTokenizer.from_pretrained(
        str(minilm_source()), model_input_names=["input_ids", "attention_mask"]
    )  # ids within the real 50,368-row vocabulary; the same pair template ([CLS] q [SEP] d [SEP])
    config = transformers.ModernBertConfig(
        vocab_size=50368, max_position_embeddings=8192, num_labels=1, pad_token_id=tokenizer.pad_token_id,
        cls_token_id=tokenizer.cls_token_id, sep_token_id=tokenizer.sep_token_id, bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id, architectures=["ModernBertForSequenceClassification"], **MODERNBERT_BASE,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.ModernBertForSequenceClassification(config).save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target
