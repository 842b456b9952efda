"""Scores (query, document) pairs with one cross-encoder: the model's hot path.

Hand-written rather than `CrossEncoder.predict` because the server needs what predict does not give: the token count
of every pair (for `usage`) from the same tokenization the model consumes, and sub-batches packed under a token budget
so that one long document does not pad a whole batch. Loading still goes through sentence-transformers, so max_length,
tokenizer settings and the weights are exactly the reference's.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from sentence_transformers import CrossEncoder

from rerank_server.schemas import Truncation

logger = logging.getLogger("bentoml")

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Characters per token beyond which text can never reach the model: WordPiece turns a word of over 100 characters into
# one [UNK], so 128 characters a token bounds every tokenizer we serve. Cutting there first keeps a 10 MB document from
# being tokenized whole only to be truncated to max_length tokens.
_MAX_CHARS_PER_TOKEN = 128
NO_TRUNCATION = Truncation()


def resolve_device(choice: str) -> str:
    """`auto` becomes CUDA when a GPU is visible, else CPU."""
    if choice != "auto":
        return choice
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(choice: str, device: str) -> torch.dtype:
    """`auto` becomes float16 on CUDA (what BGE rerankers are served in) and float32 elsewhere."""
    if choice != "auto":
        return _DTYPES[choice]
    return torch.float16 if device.startswith("cuda") else torch.float32


@dataclass(frozen=True)
class PairScores:
    """Raw logits, sigmoid scores and token counts, in the order the pairs were given."""

    logits: list[float]
    scores: list[float]
    tokens: list[int]


def pack_by_tokens(lengths: Sequence[int], token_budget: int) -> Iterator[list[int]]:
    """Group pair indices, longest first, into batches whose padded size stays within `token_budget`.

    Sorting by length means each batch pads to its first (longest) pair, so little compute goes to padding.
    A single pair longer than the budget still gets a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    batch: list[int] = []
    for index in order:
        padded_to = lengths[batch[0]] if batch else lengths[index]
        if batch and (len(batch) + 1) * padded_to > token_budget:
            yield batch
            batch = []
        batch.append(index)
    if batch:
        yield batch


class CrossEncoderScorer:
    """One loaded cross-encoder on one device; safe to call from several threads (calls are serialized)."""

    def __init__(self, path: Path, *, max_length: int, device: str, dtype: torch.dtype, token_budget: int) -> None:
        self.device = device
        self.dtype = dtype
        self.max_length = max_length
        self.token_budget = token_budget
        encoder = CrossEncoder(
            str(path), device=device, max_length=max_length, local_files_only=True, model_kwargs={"dtype": dtype}
        )
        self.tokenizer = encoder.tokenizer
        model = encoder.transformers_model
        if model is None:
            raise ValueError(f"{path} did not load as a transformers model")
        self.model = model.eval()
        self.parameters = sum(p.numel() for p in self.model.parameters())
        # Hugging Face fast tokenizers are not safe to share between threads, and one model call at a time keeps
        # the accelerator's memory use predictable.
        self._lock = threading.Lock()

    @torch.inference_mode()
    def score(
        self, queries: Sequence[str], documents: Sequence[str], truncation: Truncation = NO_TRUNCATION
    ) -> PairScores:
        """Score each (queries[i], documents[i]) pair; truncation is sentence-transformers' (longest first)."""
        if not documents:
            return PairScores([], [], [])
        max_length = min(truncation.max_length or self.max_length, self.max_length)
        queries = self._cap_chars(queries, max_length)
        documents = self._cap_chars(documents, max_length, truncation.side)
        with self._lock:
            if truncation.max_document_tokens:
                documents = self._cut_documents(documents, truncation.max_document_tokens, truncation.side)
            self.tokenizer.truncation_side = truncation.side
            try:
                encoded = self.tokenizer(
                    list(queries), list(documents), truncation="longest_first", max_length=max_length
                )
            finally:
                self.tokenizer.truncation_side = "right"
            lengths = [len(ids) for ids in encoded["input_ids"]]
            logits = torch.empty(len(lengths), dtype=torch.float32)
            for batch in pack_by_tokens(lengths, self.token_budget):
                features = self.tokenizer.pad(
                    {name: [encoded[name][i] for i in batch] for name in encoded}, return_tensors="pt"
                )
                features = {name: tensor.to(self.device) for name, tensor in features.items()}
                # Half-precision logits are upcast before the sigmoid, as sentence-transformers does.
                logits[batch] = self.model(**features).logits[:, 0].float().cpu()
        return PairScores(logits.tolist(), torch.sigmoid(logits).tolist(), lengths)

    @staticmethod
    def _cap_chars(texts: Sequence[str], max_length: int, side: str = "right") -> Sequence[str]:
        limit = max_length * _MAX_CHARS_PER_TOKEN
        if all(len(text) <= limit for text in texts):
            return texts
        return [text[-limit:] if side == "left" else text[:limit] for text in texts]

    def _cut_documents(self, documents: Sequence[str], max_tokens: int, side: str) -> list[str]:
        """Each document cut to its first (or last) `max_tokens` tokens, cutting the text at a token boundary."""
        spans = self.tokenizer(list(documents), add_special_tokens=False, return_offsets_mapping=True)
        cut = []
        for text, offsets in zip(documents, spans["offset_mapping"], strict=True):
            if len(offsets) <= max_tokens:
                cut.append(text)
            elif side == "left":
                cut.append(text[offsets[-max_tokens][0] :])
            else:
                cut.append(text[: offsets[max_tokens - 1][1]])
        return cut

    def pair_lengths(self, query: str, documents: Sequence[str]) -> list[int]:
        """Untruncated token counts of (query, document) pairs, to reject over-long input when truncation is off."""
        with self._lock:
            encoded = self.tokenizer([query] * len(documents), list(documents), truncation=False)
        return [len(ids) for ids in encoded["input_ids"]]

    def windows(self, query: str, document: str, max_windows: int) -> list[str]:
        """Split `document` into at most `max_windows` consecutive pieces that each fit beside `query`.

        Windows are cut at token boundaries of the original text; a document that fits is returned whole.
        """
        with self._lock:
            query_tokens = len(self.tokenizer(query, add_special_tokens=False)["input_ids"])
            offsets = self.tokenizer(document, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
            special = self.tokenizer.num_special_tokens_to_add(pair=True)
        room = max(self.max_length - query_tokens - special, 16)
        if len(offsets) <= room:
            return [document]
        starts = range(0, len(offsets), room)
        return [
            document[offsets[start][0] : offsets[min(start + room, len(offsets)) - 1][1]]
            for start in list(starts)[:max_windows]
        ]

    def release(self) -> None:
        """Drop the weights and give accelerator memory back."""
        del self.model
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()
