"""Qwen3-Reranker (0.6B / 4B / 8B) and single-logit conversions of it (`Qwen3ForSequenceClassification`).

The reference is the transformers usage in the Qwen3-Embedding README and the models' cards: the middle text
`<Instruct>: {instruction}\\n<Query>: {query}\\n<Document>: {doc}` is tokenized alone, truncated to max_length minus the
template, and wrapped in the system prefix and assistant suffix token ids; padding is on the left and the score is
softmax over the last position's "no" / "yes" logits, taking "yes", i.e. sigmoid(z_yes - z_no). A converted checkpoint
(lm_head[yes] - lm_head[no] as its one-logit head, e.g. tomaarsen/Qwen3-Reranker-0.6B-seq-cls) needs the same prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rerank_server.recipes.base import EncodedPairs, LastTokenHead, Recipe, RecipeError, TextOptions

PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
TEMPLATE = "<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}"
# A few tokens of slack when cutting long texts: a word's first token differs inside the template and alone.
_SLACK = 16


class Qwen3Recipe(Recipe):
    name = "qwen3"
    description = "Qwen3-Reranker: instruction/query/document chat prompt, yes vs no at the last token"
    score_kind = "p-yes"
    raw_score = "logit('yes') - logit('no') at the last token"
    padding_side = "left"
    uses_instruction = True
    reference_max_length = 8192

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        super().__init__(tokenizer, max_length)
        self.prefix_ids = tokenizer.encode(PREFIX, add_special_tokens=False)
        self.suffix_ids = tokenizer.encode(SUFFIX, add_special_tokens=False)

    def last_token_head(self) -> LastTokenHead:
        yes, no = (self.tokenizer.convert_tokens_to_ids(token) for token in ("yes", "no"))
        if yes is None or no is None or yes == self.tokenizer.unk_token_id or no == self.tokenizer.unk_token_id:
            raise RecipeError("the tokenizer has no single 'yes' and 'no' tokens: it is not a Qwen3 tokenizer", "model")
        return LastTokenHead(positive_id=yes, negative_id=no)

    def _middle_limit(self, options: TextOptions) -> int:
        room = self.limit(options) - len(self.prefix_ids) - len(self.suffix_ids)
        if room < 1:
            raise RecipeError(
                f"truncate_prompt_tokens must leave room beside the {len(self.prefix_ids) + len(self.suffix_ids)} "
                "tokens of the Qwen3 prompt template",
                "truncate_prompt_tokens",
            )
        return room

    def encode(self, queries: Sequence[str], documents: Sequence[str], options: TextOptions) -> EncodedPairs:
        middle_limit = self._middle_limit(options)
        instruction = DEFAULT_INSTRUCTION if options.instruction is None else options.instruction
        queries = [self.long_text.cut(query, middle_limit + _SLACK)[0] for query in queries]
        if options.side == "left" or options.max_document_tokens:
            # Truncation takes the document's tokens only, never the template (or the query) around it.
            rooms = [self._room(query, instruction, middle_limit) for query in queries]
            documents = [
                self.cut_documents([document], min(room, options.max_document_tokens or room), options.side)[0]
                for document, room in zip(documents, rooms, strict=True)
            ]
        else:
            documents = [self.long_text.cut(document, middle_limit + _SLACK)[0] for document in documents]
        middles = [
            TEMPLATE.format(instruction=instruction, query=query, doc=document)
            for query, document in zip(queries, documents, strict=True)
        ]
        self.tokenizer.truncation_side = "right"
        if options.truncate:
            encoded = self.tokenizer(middles, truncation="longest_first", max_length=middle_limit)
        else:
            encoded = self.tokenizer(middles)
        return EncodedPairs([self.prefix_ids + ids + self.suffix_ids for ids in encoded["input_ids"]])

    def _room(self, query: str, instruction: str, middle_limit: int) -> int:
        fixed = self.long_text.count(TEMPLATE.format(instruction=instruction, query=query, doc=""))
        return max(middle_limit - fixed, 1)

    def document_room(self, query: str, options: TextOptions) -> int:
        instruction = DEFAULT_INSTRUCTION if options.instruction is None else options.instruction
        middle_limit = self._middle_limit(options)
        query = self.long_text.cut(query, middle_limit + _SLACK)[0]
        room = self._room(query, instruction, middle_limit)
        return min(room, options.max_document_tokens or room)
