"""Encoder cross-encoders (BGE rerankers, ms-marco MiniLM, any `*ForSequenceClassification` with one label).

The reference is `sentence_transformers.CrossEncoder.predict`: the pair through the tokenizer's own pair template
(`[CLS] q [SEP] d [SEP]`, `<s> q </s></s> d </s>`, ...), truncated longest first to max_length; the score is the
sigmoid of the single logit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rerank_server.recipes.base import EncodedPairs, Recipe, RecipeError, Side, TextOptions
from rerank_server.recipes.long_text import WORTH_CUTTING


def _most_tokens(text: str) -> int:
    # Every tokenizer we serve makes at most one token per UTF-8 byte, plus a word-boundary marker.
    return 2 * len(text.encode("utf-8", "surrogatepass")) + 2


class CrossEncoderRecipe(Recipe):
    name = "cross-encoder"
    description = "query and document through the tokenizer's pair template, truncated longest first"

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        super().__init__(tokenizer, max_length)
        self.special_tokens = tokenizer.num_special_tokens_to_add(pair=True)
        self.returns_token_types = "token_type_ids" in tokenizer.model_input_names

    def limit(self, options: TextOptions) -> int:
        limit = super().limit(options)
        if limit <= self.special_tokens:
            raise RecipeError(
                f"truncate_prompt_tokens must be -1 or more than the {self.special_tokens} special tokens of a pair",
                "truncate_prompt_tokens",
            )
        return limit

    def encode(self, queries: Sequence[str], documents: Sequence[str], options: TextOptions) -> EncodedPairs:
        limit = self.limit(options)
        with self._lock:
            if options.max_document_tokens:
                documents = self.cut_documents(documents, options.max_document_tokens, options.side)
            # Without truncation a pair over the limit is refused: the first limit + 1 tokens of each text show it.
            queries, documents = self._cut_long(queries, documents, limit, options.side)
            self.tokenizer.truncation_side = options.side
            try:
                encoded = self.tokenizer(
                    list(queries), list(documents), truncation="longest_first" if options.truncate else False,
                    max_length=limit if options.truncate else None,
                )  # fmt: skip
            finally:
                self.tokenizer.truncation_side = "right"
        types = encoded["token_type_ids"] if self.returns_token_types and "token_type_ids" in encoded else None
        return EncodedPairs(encoded["input_ids"], types)

    def document_room(self, query: str, options: TextOptions) -> int:
        limit = self.limit(options)
        with self._lock:
            query_text, _ = self.long_text.cut(query, limit + 1)
            query_tokens = self.long_text.count(query_text)
        room = limit - min(query_tokens, limit // 2) - self.special_tokens
        return min(room, options.max_document_tokens or room)

    def _cut_long(
        self, queries: Sequence[str], documents: Sequence[str], limit: int, side: Side
    ) -> tuple[Sequence[str], Sequence[str]]:
        """Queries and documents cut so that longest-first truncation keeps exactly the tokens it keeps of the whole.

        Longest-first truncation depends on which of the two texts is longer, not only on their first tokens: a
        document is cut only to more tokens than its query has, and a query only to more tokens than each of its
        documents can have.
        """
        threshold = limit * WORTH_CUTTING
        if all(len(text) <= threshold for text in (*queries, *documents)):
            return queries, documents
        query_tokens = {query: self.long_text.count(query) for query in set(queries)}
        cut_documents: list[str] = []
        longest_kept: dict[str, int] = dict.fromkeys(query_tokens, limit)
        for query, document in zip(queries, documents, strict=True):
            text, was_cut = self.long_text.cut(document, max(limit, query_tokens[query]) + 1, side)
            cut_documents.append(text)
            if not was_cut:
                longest_kept[query] = max(longest_kept[query], _most_tokens(text))
        cut_queries = {
            query: self.long_text.cut(query, longest_kept[query] + 1, side)[0] if count > longest_kept[query] else query
            for query, count in query_tokens.items()
        }
        return [cut_queries[query] for query in queries], cut_documents
