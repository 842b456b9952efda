"""BAAI/bge-reranker-v2-gemma: a Gemma causal LM scored on the logit of "Yes" after a fixed prompt.

The reference is FlagEmbedding's `FlagLLMReranker` (`inference/reranker/decoder_only/base.py`): "A: " + query
(at most max_length * 3 // 4 tokens) and "B: " + passage (at most max_length tokens) tokenized apart without special
tokens; BOS + query, then "\\n" + passage cut from the end (`only_second`) to fit max_length + "\\n" + prompt, then
"\\n" + prompt; the score is the last position's "Yes" logit, sigmoid for `relevance_score`. max_length is the
library's default, 512. An `instruction` replaces the prompt, as `compute_score(prompt=...)` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rerank_server.recipes.base import EncodedPairs, LastTokenHead, Recipe, RecipeError, TextOptions, only_second

DEFAULT_PROMPT = (
    "Given a query A and a passage B, determine whether the passage contains an answer to the query by providing a "
    "prediction of either 'Yes' or 'No'."
)
SEP = "\n"
QUERY_PREFIX = "A: "
PASSAGE_PREFIX = "B: "
_SLACK = 16


class BgeGemmaRecipe(Recipe):
    name = "bge-gemma"
    description = "bge-reranker-v2-gemma: 'A: query' / 'B: passage' / prompt, the 'Yes' logit at the last token"
    raw_score = "the 'Yes' logit at the last token"
    padding_side = "left"
    uses_instruction = True

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        """`max_length` is FlagEmbedding's: the passage's token cap (the prompt comes on top of it)."""
        self.passage_max_length = max_length
        self.sep_ids: list[int] = tokenizer(SEP, add_special_tokens=False)["input_ids"]
        self.default_prompt_ids: list[int] = tokenizer(DEFAULT_PROMPT, add_special_tokens=False)["input_ids"]
        self.passage_prefix_ids: list[int] = tokenizer(PASSAGE_PREFIX, add_special_tokens=False)["input_ids"]
        bos, pad = tokenizer.bos_token_id, tokenizer.pad_token_id
        self.bos_ids = [bos] if bos is not None and bos != pad else []
        # What the model sees at most: FlagEmbedding caps BOS + query + separator + passage at max_length + separator +
        # prompt (its encode_max_length), then appends separator and prompt.
        super().__init__(tokenizer, max_length + 2 * (len(self.sep_ids) + len(self.default_prompt_ids)))

    def last_token_head(self) -> LastTokenHead:
        yes = self.tokenizer("Yes", add_special_tokens=False)["input_ids"]
        if len(yes) != 1:
            raise RecipeError("the tokenizer does not make 'Yes' one token: it is not a Gemma tokenizer", "model")
        return LastTokenHead(positive_id=yes[0])

    def _prompt_ids(self, options: TextOptions) -> list[int]:
        if options.instruction is None:
            return self.default_prompt_ids
        return self.tokenizer(options.instruction, add_special_tokens=False)["input_ids"]

    def _passage_limit(self, options: TextOptions, prompt_ids: list[int]) -> int:
        """FlagEmbedding's max_length for a whole-prompt cap (truncate_prompt_tokens): the cap less what it adds."""
        if options.max_length is None or options.max_length < 0:
            return self.passage_max_length
        limit = self.limit(options) - 2 * (len(self.sep_ids) + len(prompt_ids))
        if limit < 8:
            raise RecipeError(
                f"truncate_prompt_tokens must leave room beside the {2 * (len(self.sep_ids) + len(prompt_ids))} "
                "tokens of the prompt",
                "truncate_prompt_tokens",
            )
        return limit

    def encode(self, queries: Sequence[str], documents: Sequence[str], options: TextOptions) -> EncodedPairs:
        prompt_ids = self._prompt_ids(options)
        max_length = self._passage_limit(options, prompt_ids)
        query_max_length = max_length * 3 // 4
        encode_max_length = max_length + len(self.sep_ids) + len(prompt_ids)
        query_texts = [QUERY_PREFIX + self.long_text.cut(q, query_max_length + _SLACK)[0] for q in queries]
        if options.side == "left" or options.max_document_tokens:
            # The document is cut to what fits beside "B: " in the passage's max_length, so that the passage is never
            # cut again from its end (which would drop the tail a left truncation keeps, or the head's last tokens).
            room = self._document_limit(max_length, options)
            documents = self.cut_documents(documents, room, options.side)
        passage_texts = [PASSAGE_PREFIX + self.long_text.cut(d, max_length + _SLACK)[0] for d in documents]
        self.tokenizer.truncation_side = "right"
        truncate = options.truncate
        query_ids = self.tokenizer(
            query_texts, add_special_tokens=False, max_length=query_max_length if truncate else None,
            truncation=truncate,
        )["input_ids"]  # fmt: skip
        passage_ids = self.tokenizer(
            passage_texts,
            add_special_tokens=False,
            max_length=max_length if truncate else None,
            truncation=truncate,
        )["input_ids"]
        pairs = []
        for query, passage in zip(query_ids, passage_ids, strict=True):
            first = self.bos_ids + query
            second = self.sep_ids + passage
            if truncate:
                second = only_second(first, second, encode_max_length)
            pairs.append(first + second + self.sep_ids + prompt_ids)
        return EncodedPairs(pairs)

    def document_room(self, query: str, options: TextOptions) -> int:
        return self._document_limit(self._passage_limit(options, self._prompt_ids(options)), options)

    def _document_limit(self, max_length: int, options: TextOptions) -> int:
        """Document tokens that fit in a passage of `max_length` tokens after "B: ", within max_tokens_per_doc."""
        room = max_length - len(self.passage_prefix_ids)
        return min(room, options.max_document_tokens or room)
