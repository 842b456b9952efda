"""The LLM rerankers' own published scoring code, re-implemented here as written by their authors, as the reference
the server is compared with. Nothing here comes from `rerank_server`: a typo in a template there must fail a test.

- Qwen3-Reranker: the transformers usage of the Qwen3-Embedding README / the models' cards (format_instruction,
  process_inputs, compute_logits).
- bge-reranker-v2-gemma: FlagEmbedding's FlagLLMReranker (`inference/reranker/decoder_only/base.py`,
  `compute_score_single_gpu` with `normalize=True`), its transformers-4 `prepare_for_model(truncation="only_second")`
  spelled out, since transformers 5 has no such method.
- mxbai-rerank v2: mixedbread's `mxbai-rerank` 0.1.6 (`mxbai_rerank/mxbai_rerank_v2.py`, `MxbaiRerankV2`:
  `prepare_predefined_inputs`, `prepare_inputs`, `forward`, `predict`), the same `prepare_for_model` spelled out (the
  package itself calls it, so it does not run on transformers 5's fast tokenizers).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

# --- Qwen3-Reranker ------------------------------------------------------------------------------------------------

QWEN3_PREFIX = '<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'  # noqa: E501
QWEN3_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
QWEN3_TASK = "Given a web search query, retrieve relevant passages that answer the query"


def qwen3_format_instruction(instruction: str | None, query: str, doc: str) -> str:
    if instruction is None:
        instruction = "Given a web search query, retrieve relevant passages that answer the query"
    output = f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}"
    return output


class Qwen3Reference:
    def __init__(self, folder: Path, max_length: int = 8192) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="left")
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        self.token_false_id = self.tokenizer.convert_tokens_to_ids("no")
        self.token_true_id = self.tokenizer.convert_tokens_to_ids("yes")
        self.max_length = max_length
        self.prefix_tokens = self.tokenizer.encode(QWEN3_PREFIX, add_special_tokens=False)
        self.suffix_tokens = self.tokenizer.encode(QWEN3_SUFFIX, add_special_tokens=False)

    def process_inputs(self, pairs: list[str]):
        inputs = self.tokenizer(
            pairs,
            padding=False,
            truncation="longest_first",
            return_attention_mask=False,
            max_length=self.max_length - len(self.prefix_tokens) - len(self.suffix_tokens),
        )
        for i, ele in enumerate(inputs["input_ids"]):
            inputs["input_ids"][i] = self.prefix_tokens + ele + self.suffix_tokens
        inputs = self.tokenizer.pad(inputs, padding=True, return_tensors="pt", max_length=self.max_length)
        return inputs

    @torch.no_grad()
    def compute_logits(self, inputs) -> list[float]:
        batch_scores = self.model(**inputs).logits[:, -1, :]
        true_vector = batch_scores[:, self.token_true_id]
        false_vector = batch_scores[:, self.token_false_id]
        batch_scores = torch.stack([false_vector, true_vector], dim=1)
        batch_scores = torch.nn.functional.log_softmax(batch_scores, dim=1)
        scores = batch_scores[:, 1].exp().tolist()
        return scores

    def token_ids(self, queries: list[str], documents: list[str], instruction: str | None = None) -> list[list[int]]:
        pairs = [qwen3_format_instruction(instruction, q, d) for q, d in zip(queries, documents, strict=True)]
        inputs = self.process_inputs(pairs)
        return [
            ids[mask.bool()].tolist() for ids, mask in zip(inputs["input_ids"], inputs["attention_mask"], strict=True)
        ]

    def scores(self, queries: list[str], documents: list[str], instruction: str | None = None) -> list[float]:
        pairs = [qwen3_format_instruction(instruction, q, d) for q, d in zip(queries, documents, strict=True)]
        return self.compute_logits(self.process_inputs(pairs))


# --- bge-reranker-v2-gemma (FlagEmbedding FlagLLMReranker) ---------------------------------------------------------

BGE_GEMMA_PROMPT = "Given a query A and a passage B, determine whether the passage contains an answer to the query by providing a prediction of either 'Yes' or 'No'."  # noqa: E501


def last_logit_pool(logits: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    left_padding = attention_mask[:, -1].sum() == attention_mask.shape[0]
    if left_padding:
        return logits[:, -1, :]
    else:
        sequence_lengths = attention_mask.sum(dim=1) - 1
        batch_size = logits.shape[0]
        return torch.stack([logits[i, sequence_lengths[i], :] for i in range(batch_size)], dim=0)


def prepare_for_model_only_second(ids: list[int], pair_ids: list[int], max_length: int) -> list[int]:
    """transformers 4.x `prepare_for_model(ids, pair_ids, truncation='only_second', max_length=...,
    add_special_tokens=False)` (tokenization_utils_base.truncate_sequences, truncation side right)."""
    total_len = len(ids) + len(pair_ids)
    num_tokens_to_remove = total_len - max_length if total_len > max_length else 0
    if num_tokens_to_remove > 0:  # noqa: SIM102 - as transformers writes it
        if len(pair_ids) > num_tokens_to_remove:
            pair_ids = pair_ids[:-num_tokens_to_remove]
        # else: transformers logs an error and leaves both sequences as they are
    return ids + pair_ids


class BgeGemmaReference:
    def __init__(self, folder: Path) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        self.yes_loc = self.tokenizer("Yes", add_special_tokens=False)["input_ids"][0]

    def batch(self, queries: list[str], passages: list[str], max_length: int = 512, prompt: str | None = None):
        query_max_length = max_length * 3 // 4
        queries = ["{}{}".format("A: ", q) for q in queries]
        passages = ["{}{}".format("B: ", p) for p in passages]
        queries_inputs_batch = self.tokenizer(
            queries, return_tensors=None, add_special_tokens=False, max_length=query_max_length, truncation=True
        )
        passages_inputs_batch = self.tokenizer(
            passages, return_tensors=None, add_special_tokens=False, max_length=max_length, truncation=True
        )
        if prompt is None:
            prompt = "Given a query A and a passage B, determine whether the passage contains an answer to the query by providing a prediction of either 'Yes' or 'No'."  # noqa: E501
        prompt_inputs = self.tokenizer(prompt, return_tensors=None, add_special_tokens=False)["input_ids"]
        sep = "\n"
        sep_inputs = self.tokenizer(sep, return_tensors=None, add_special_tokens=False)["input_ids"]
        encode_max_length = max_length + len(sep_inputs) + len(prompt_inputs)
        batch_inputs = []
        for query_ids, passage_ids in zip(
            queries_inputs_batch["input_ids"], passages_inputs_batch["input_ids"], strict=True
        ):
            if self.tokenizer.bos_token_id is not None and self.tokenizer.bos_token_id != self.tokenizer.pad_token_id:
                item = prepare_for_model_only_second(
                    [self.tokenizer.bos_token_id] + query_ids, sep_inputs + passage_ids, encode_max_length
                )
            else:
                item = prepare_for_model_only_second(query_ids, sep_inputs + passage_ids, encode_max_length)
            item = item + sep_inputs + prompt_inputs
            batch_inputs.append({"input_ids": item, "attention_mask": [1] * len(item)})
        # FlagEmbedding's Collater
        return self.tokenizer.pad(
            batch_inputs, padding=True, max_length=encode_max_length, pad_to_multiple_of=8, return_tensors="pt"
        )

    def token_ids(self, queries: list[str], passages: list[str], max_length: int = 512, prompt: str | None = None):
        inputs = self.batch(queries, passages, max_length, prompt)
        return [
            ids[mask.bool()].tolist() for ids, mask in zip(inputs["input_ids"], inputs["attention_mask"], strict=True)
        ]

    @torch.no_grad()
    def scores(self, queries: list[str], passages: list[str], max_length: int = 512, prompt: str | None = None):
        batch_inputs = self.batch(queries, passages, max_length, prompt)
        outputs = self.model(**batch_inputs, output_hidden_states=True)
        logits = outputs.logits
        scores = last_logit_pool(logits, batch_inputs["attention_mask"])
        scores = scores[:, self.yes_loc]
        all_scores = scores.cpu().float().tolist()
        # normalize=True
        return [float(1 / (1 + np.exp(-score))) for score in all_scores]


# --- mxbai-rerank v2 -----------------------------------------------------------------------------------------------


class MxbaiV2Reference:
    sep = "\n"
    instruction_prompt = "instruction: {instruction}"
    query_prompt = "query: {query}"
    doc_prompt = "document: {document}"
    task_prompt = "You are a search relevance expert who evaluates how well documents match search queries. For each query-document pair, carefully analyze the semantic relationship between them, then provide your binary relevance judgment (0 for not relevant, 1 for relevant).\nRelevance:"  # noqa: E501
    chat_template = {
        "prefix": "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n<|im_start|>user\n",  # noqa: E501
        "suffix": "<|im_end|>\n<|im_start|>assistant\n",
    }

    def __init__(self, folder: Path, max_length: int = 8192) -> None:
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="left")
        self.max_length = max_length or self.model.config.max_position_embeddings
        self.model_max_length = self.model.config.max_position_embeddings
        self.prepare_predefined_inputs()

    def prepare_predefined_inputs(self) -> None:
        def get_input_ids(x):
            return self.tokenizer(x, return_tensors=None, add_special_tokens=False)["input_ids"]

        self.yes_loc = get_input_ids("1")[0]
        self.no_loc = get_input_ids("0")[0]
        self.task_prompt_inputs = get_input_ids(self.task_prompt)
        self.sep_inputs = get_input_ids(self.sep)
        self.chat_template_prefix_inputs = get_input_ids(self.chat_template["prefix"])
        self.chat_template_suffix_inputs = get_input_ids(self.chat_template["suffix"])
        self.predefined_length = (
            len(self.chat_template_prefix_inputs)
            + len(self.task_prompt_inputs)
            + len(self.chat_template_suffix_inputs)
            + len(self.sep_inputs)
        )
        if self.max_length + self.predefined_length > self.model_max_length:
            self.max_length = self.model_max_length - self.predefined_length

    def concat_input_ids(self, input_ids: list[int]) -> list[int]:
        return (
            self.chat_template_prefix_inputs
            + input_ids
            + self.sep_inputs
            + self.task_prompt_inputs
            + self.chat_template_suffix_inputs
        )

    def prepare_inputs(self, queries: list[str], documents: list[str], *, instruction: str | None = None):
        inputs = []
        instruction_prompt = self.instruction_prompt.format(instruction=instruction) if instruction else None
        for query, document in zip(queries, documents, strict=True):
            query_prompt = self.query_prompt.format(query=query)
            if instruction_prompt:
                query_prompt = "".join([instruction_prompt, self.sep, query_prompt])
            query_inputs = self.tokenizer(
                query_prompt, return_tensors=None, add_special_tokens=False, max_length=self.max_length * 3 // 4,
                truncation=True,
            )  # fmt: skip
            available_tokens = self.model_max_length - len(query_inputs["input_ids"]) - self.predefined_length
            doc_maxlen = min(available_tokens, self.max_length)
            document_inputs = self.tokenizer(
                self.doc_prompt.format(document=document), return_tensors=None, add_special_tokens=False,
                max_length=doc_maxlen, truncation=True,
            )  # fmt: skip
            item = prepare_for_model_only_second(
                query_inputs["input_ids"], self.sep_inputs + document_inputs["input_ids"], self.max_length
            )
            item = self.concat_input_ids(item)
            inputs.append({"input_ids": item, "attention_mask": [1] * len(item)})
        return self.tokenizer.pad(inputs, padding="longest", pad_to_multiple_of=8, return_tensors="pt")

    def token_ids(self, queries: list[str], documents: list[str], instruction: str | None = None) -> list[list[int]]:
        inputs = self.prepare_inputs(queries, documents, instruction=instruction)
        return [
            ids[mask.bool()].tolist() for ids, mask in zip(inputs["input_ids"], inputs["attention_mask"], strict=True)
        ]

    @torch.no_grad()
    def predict(self, queries: list[str], documents: list[str], *, instruction: str | None = None) -> list[float]:
        """The raw scores `rank()` returns (normalize=False): logit("1") - logit("0") at the last position, one pair
        at a time (the package batches; one at a time keeps padding out of the comparison)."""
        scores = []
        for query, document in zip(queries, documents, strict=True):
            inputs = self.prepare_inputs([query], [document], instruction=instruction)
            outputs = self.model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
            yes_logits = outputs.logits[:, -1, self.yes_loc]
            no_logits = outputs.logits[:, -1, self.no_loc]
            scores.append(float((yes_logits - no_logits).float()[0]))
        return scores
