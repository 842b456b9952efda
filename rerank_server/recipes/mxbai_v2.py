"""mixedbread-ai/mxbai-rerank-base-v2 and -large-v2: Qwen2 causal LMs scored on the logits of "1" and "0" after a
prompt of their own.

The reference is mixedbread's `mxbai-rerank` package (0.1.6, `mxbai_rerank/mxbai_rerank_v2.py`, class
`MxbaiRerankV2`): each piece tokenized on its own, without special tokens — the chat prefix, `query: {query}` (after
`instruction: {instruction}` and a newline when an instruction is given), cut from its end to `max_length * 3 // 4`
tokens, a newline, `document: {document}` cut from its end so that query, newline and document fit in `max_length`
(`prepare_for_model(truncation="only_second")`), a newline, the task prompt and the chat suffix. `max_length` is the
package's, 8192: the template's tokens come on top of it. Padding is on the left; the score is the last position's
logit of "1" minus that of "0" — the raw number `rank()` returns — and `relevance_score` is its sigmoid.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rerank_server.recipes.base import EncodedPairs, LastTokenHead, Recipe, RecipeError, TextOptions, only_second

SEP = "\n"
INSTRUCTION_PROMPT = "instruction: {instruction}"
QUERY_PROMPT = "query: {query}"
DOCUMENT_PROMPT = "document: {document}"
TASK_PROMPT = (
    "You are a search relevance expert who evaluates how well documents match search queries. For each "
    "query-document pair, carefully analyze the semantic relationship between them, then provide your binary "
    "relevance judgment (0 for not relevant, 1 for relevant).\nRelevance:"
)
PREFIX = (
    "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n"
)
SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"
# A few tokens of slack when cutting long texts before tokenizing: a word's first token differs after the prompt's
# "query: " and alone.
_SLACK = 16
# Fewer tokens than this for query, newline and document together is no prompt worth scoring.
_MIN_MIDDLE = 8


class MxbaiV2Recipe(Recipe):
    name = "mxbai-v2"
    raw_score = "logit('1') - logit('0') at the last token (useful range about -12 to 22)"
    description = (
        "mxbai-rerank v2: query/document prompt of mixedbread's package, logit of '1' minus '0' at the last token"
    )
    padding_side = "left"
    uses_instruction = True
    reference_max_length = 8192

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        """`max_length` is the package's: the most tokens of query, newline and document (the template comes on top)."""

        def ids(text: str) -> list[int]:
            return tokenizer(text, add_special_tokens=False)["input_ids"]

        self.middle_max_length = max_length
        self.prefix_ids, self.suffix_ids = ids(PREFIX), ids(SUFFIX)
        self.sep_ids, self.task_ids = ids(SEP), ids(TASK_PROMPT)
        self.document_prefix_ids = ids(DOCUMENT_PROMPT.format(document=""))
        # The package's `predefined_length`: prefix, task, suffix and one separator.
        self.template_length = len(self.prefix_ids) + len(self.task_ids) + len(self.suffix_ids) + len(self.sep_ids)
        super().__init__(tokenizer, max_length + self.template_length)

    def last_token_head(self) -> LastTokenHead:
        one, zero = (self.tokenizer(digit, add_special_tokens=False)["input_ids"] for digit in ("1", "0"))
        if len(one) != 1 or len(zero) != 1:
            raise RecipeError(
                "the tokenizer does not make '1' and '0' one token each: it is not a Qwen2 tokenizer", "model"
            )
        return LastTokenHead(positive_id=one[0], negative_id=zero[0])

    def _middle_limit(self, options: TextOptions) -> int:
        """The package's max_length under `options`: a whole-prompt cap (truncate_prompt_tokens) less the template."""
        if options.max_length is None or options.max_length < 0:
            return self.middle_max_length
        middle = self.limit(options) - self.template_length
        if middle < _MIN_MIDDLE:
            raise RecipeError(
                f"truncate_prompt_tokens must leave room beside the {self.template_length} tokens of the mxbai prompt "
                "template",
                "truncate_prompt_tokens",
            )
        return middle

    def _query_text(self, query: str, instruction: str | None) -> str:
        text = QUERY_PROMPT.format(query=query)
        return INSTRUCTION_PROMPT.format(instruction=instruction) + SEP + text if instruction else text

    def encode(self, queries: Sequence[str], documents: Sequence[str], options: TextOptions) -> EncodedPairs:
        middle = self._middle_limit(options)
        query_max = middle * 3 // 4
        truncate = options.truncate
        distinct = list(dict.fromkeys(queries))
        query_texts = [
            self._query_text(self.long_text.cut(q, query_max + _SLACK)[0], options.instruction) for q in distinct
        ]
        query_ids = dict(zip(distinct, self._tokenize(query_texts, query_max if truncate else None), strict=True))
        if truncate and (options.side == "left" or options.max_document_tokens):
            # The document's own tokens are cut (from the end a left truncation drops), never "document: " or the
            # query, so that the package's cut from the right then removes nothing.
            documents = [
                self.cut_documents(
                    [document], self._document_room(len(query_ids[query]), middle, options), options.side
                )[0]
                for query, document in zip(queries, documents, strict=True)
            ]
        else:
            documents = [self.long_text.cut(document, middle + _SLACK)[0] for document in documents]
        document_texts = [DOCUMENT_PROMPT.format(document=document) for document in documents]
        document_ids = self._tokenize(document_texts, middle if truncate else None)
        pairs = []
        for query, document in zip(queries, document_ids, strict=True):
            first, second = query_ids[query], self.sep_ids + document
            if truncate:
                second = only_second(first, second, middle)
            pairs.append(self.prefix_ids + first + second + self.sep_ids + self.task_ids + self.suffix_ids)
        return EncodedPairs(pairs)

    def _tokenize(self, texts: list[str], max_length: int | None) -> list[list[int]]:
        self.tokenizer.truncation_side = "right"
        truncation = max_length is not None
        return self.tokenizer(texts, add_special_tokens=False, max_length=max_length, truncation=truncation)[
            "input_ids"
        ]

    def _document_room(self, query_tokens: int, middle: int, options: TextOptions) -> int:
        room = max(middle - query_tokens - len(self.sep_ids) - len(self.document_prefix_ids), 1)
        return min(room, options.max_document_tokens or room)

    def document_room(self, query: str, options: TextOptions) -> int:
        middle = self._middle_limit(options)
        query_text = self._query_text(self.long_text.cut(query, middle + _SLACK)[0], options.instruction)
        query_tokens = min(len(self._tokenize([query_text], None)[0]), middle * 3 // 4)
        return self._document_room(query_tokens, middle, options)
