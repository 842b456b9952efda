"""Encoder cross-encoders (BGE rerankers, ms-marco MiniLM, any `*ForSequenceClassification` with one label).

The reference is `sentence_transformers.CrossEncoder.predict`: the pair through the tokenizer's own pair template
(`[CLS] q [SEP] d [SEP]`, `<s> q </s></s> d </s>`, ...), truncated longest first to max_length; the score is the
sigmoid of the single logit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rerank_server.recipes.base import EncodedPairs, Recipe, RecipeError, Side, TextOptions


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
        room = limit - self.special_tokens
        if options.max_document_tokens:
            documents = self.cut_documents(documents, options.max_document_tokens, options.side)
        encodings = self._pairs(queries, documents, room, options.side, options.truncate)
        types = [encoding.type_ids for encoding in encodings] if self.returns_token_types else None
        return EncodedPairs([encoding.ids for encoding in encodings], types)

    def _pairs(self, queries: Sequence[str], documents: Sequence[str], room: int, side: Side, truncate: bool) -> list:
        """Each pair as the tokenizer's `tokenizer(query, document, truncation="longest_first")` makes it, with each
        text tokenized once (a query once for all its documents) and long texts cut first (long_text.py).

        Hand-written around tokenizers' own pieces because its pair truncation also builds every overflow window of
        both texts, windows1 × windows2 of them: a long query with long documents took gigabytes.
        """
        from tokenizers import Encoding

        backend = self.tokenizer.backend_tokenizer
        backend.no_truncation()
        backend.no_padding()
        distinct = list(dict.fromkeys(queries))
        query_cuts = [self.long_text.cut(query, room + 1, side) for query in distinct]
        query_encodings = backend.encode_batch([text for text, _ in query_cuts], add_special_tokens=False)
        query = {
            q: (encoding, cut) for q, encoding, (_, cut) in zip(distinct, query_encodings, query_cuts, strict=True)
        }
        document_cuts = [self.long_text.cut(document, room + 1, side) for document in documents]
        document_encodings = backend.encode_batch([text for text, _ in document_cuts], add_special_tokens=False)
        whole_query_tokens: dict[str, int] = {}
        pairs = []
        for i, (text, encoding) in enumerate(zip(queries, document_encodings, strict=True)):
            query_encoding, query_cut = query[text]
            query_tokens, document_tokens = len(query_encoding.ids), len(encoding.ids)
            if query_tokens > room and document_tokens > room and (query_cut or document_cuts[i][1]):
                # Both are over the limit: longest-first then cuts the longer one a token more, so which one is
                # longer must be known from the whole texts.
                if text not in whole_query_tokens:
                    whole_query_tokens[text] = self.long_text.count(text) if query_cut else query_tokens
                query_tokens = whole_query_tokens[text]
                if document_cuts[i][1]:
                    longer, _ = self.long_text.cut(documents[i], query_tokens + 1, side)
                    encoding = backend.encode(longer, add_special_tokens=False)
                    document_tokens = len(encoding.ids)
            first = Encoding.merge([query_encoding])  # a copy: the query's encoding serves all its documents
            if truncate:
                keep_query, keep_document = longest_first(query_tokens, document_tokens, room)
                first.truncate(keep_query, direction=side)
                encoding.truncate(keep_document, direction=side)
            pairs.append(backend.post_process(first, encoding, add_special_tokens=True))
        return pairs

    def document_room(self, query: str, options: TextOptions) -> int:
        limit = self.limit(options)
        query_text, _ = self.long_text.cut(query, limit + 1)
        query_tokens = self.long_text.count(query_text)
        room = limit - min(query_tokens, limit // 2) - self.special_tokens
        return min(room, options.max_document_tokens or room)


def longest_first(first: int, second: int, room: int) -> tuple[int, int]:
    """How many tokens of each text the tokenizer's longest-first truncation keeps when `room` tokens fit: tokenizers'
    own arithmetic (`tokenizers/src/utils/truncation.rs`, ported from the legacy Python code), to the token."""
    if first + second <= room:
        return first, second
    shorter, longer, swapped = (second, first, True) if first > second else (first, second, False)
    longer = shorter if shorter > room else max(shorter, room - shorter)
    if shorter + longer > room:
        shorter = room // 2
        longer = shorter + room % 2
    return (longer, shorter) if swapped else (shorter, longer)
