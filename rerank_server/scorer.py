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


def default_token_budget(device: str) -> int:
    """Padded tokens per forward pass when RERANK_TOKEN_BUDGET is unset.

    A GPU wants large passes to fill its cores; on a CPU, passes of ~2k tokens measured 25-30 % faster than 16k (cache
    locality), see benchmarks/token_budget.py.
    """
    return 16_384 if device.startswith("cuda") else 2_048


@dataclass(frozen=True)
class PairScores:
    """Raw logits, sigmoid scores and token counts, in the order the pairs were given."""

    logits: list[float]
    scores: list[float]
    tokens: list[int]


@dataclass(frozen=True)
class EncodedPairs:
    """Tokenized pairs, unpadded: what the model thread needs, prepared by another thread.

    Token ids are model-specific but not truncation-specific, so encodings made under different truncation settings
    can be merged into one forward pass.
    """

    features: dict[str, list[list[int]]]
    lengths: list[int]

    def __len__(self) -> int:
        return len(self.lengths)

    @classmethod
    def concat(cls, parts: Sequence[EncodedPairs]) -> EncodedPairs:
        if len(parts) == 1:
            return parts[0]
        names = parts[0].features.keys()
        return cls(
            {name: [ids for part in parts for ids in part.features[name]] for name in names},
            [length for part in parts for length in part.lengths],
        )


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
        # Imported here, not at the top: it pulls in scikit-learn and scipy (seconds), which BentoML's supervisor
        # process, importing service.py only to read its configuration, does not need.
        from sentence_transformers import CrossEncoder

        encoder = CrossEncoder(
            str(path), device=device, max_length=max_length, local_files_only=True, model_kwargs={"dtype": dtype}
        )
        self.tokenizer = encoder.tokenizer
        model = encoder.transformers_model
        if model is None:
            raise ValueError(f"{path} did not load as a transformers model")
        self.model = model.eval()
        self.parameters = sum(p.numel() for p in self.model.parameters())
        self._init_locks()

    def _init_locks(self) -> None:
        # Hugging Face fast tokenizers are not safe to share between threads, and one forward at a time keeps the
        # accelerator's memory use predictable. Separate locks let one request tokenize while another computes.
        self._tokenizer_lock = threading.Lock()
        self._model_lock = threading.Lock()

    def encode(
        self, queries: Sequence[str], documents: Sequence[str], truncation: Truncation = NO_TRUNCATION
    ) -> EncodedPairs:
        """Tokenize each (queries[i], documents[i]) pair; truncation is sentence-transformers' (longest first)."""
        if not documents:
            return EncodedPairs({}, [])
        max_length = min(truncation.max_length or self.max_length, self.max_length)
        queries = self._cap_chars(queries, max_length)
        documents = self._cap_chars(documents, max_length, truncation.side)
        with self._tokenizer_lock:
            if truncation.max_document_tokens:
                documents = self._cut_documents(documents, truncation.max_document_tokens, truncation.side)
            self.tokenizer.truncation_side = truncation.side
            try:
                encoded = self.tokenizer(
                    list(queries), list(documents), truncation="longest_first", max_length=max_length
                )
            finally:
                self.tokenizer.truncation_side = "right"
        features = {name: encoded[name] for name in encoded}
        return EncodedPairs(features, [len(ids) for ids in features["input_ids"]])

    @torch.inference_mode()
    def logits(self, encoded: EncodedPairs) -> torch.Tensor:
        """The model's logit for each encoded pair (float32, on the CPU, in the given order).

        Sub-batches are launched one after another without waiting for the device, so on a GPU the host pads and
        copies the next sub-batch while the current one computes; the only synchronisation is the final copy back.
        """
        if not encoded.lengths:
            return torch.empty(0)
        with self._model_lock:
            order: list[int] = []
            outputs: list[torch.Tensor] = []
            for batch in pack_by_tokens(encoded.lengths, self.token_budget):
                features = self.tokenizer.pad(
                    {name: [ids[i] for i in batch] for name, ids in encoded.features.items()}, return_tensors="pt"
                )
                outputs.append(self._forward({name: self._to_device(tensor) for name, tensor in features.items()}))
                order.extend(batch)
            flat = torch.cat(outputs).cpu()
        logits = torch.empty(len(order), dtype=torch.float32)
        logits[order] = flat
        return logits

    def score(
        self, queries: Sequence[str], documents: Sequence[str], truncation: Truncation = NO_TRUNCATION
    ) -> PairScores:
        """Tokenize and score each (queries[i], documents[i]) pair in one call."""
        encoded = self.encode(queries, documents, truncation)
        logits = self.logits(encoded)
        return PairScores(logits.tolist(), torch.sigmoid(logits).tolist(), encoded.lengths)

    def _forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        # Half-precision logits are upcast before the sigmoid, as sentence-transformers does.
        return self.model(**features).logits[:, 0].float()

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.device.startswith("cuda"):
            # Pinned host memory makes the copy asynchronous, so it overlaps the previous sub-batch's compute.
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.to(self.device)

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
        with self._tokenizer_lock:
            encoded = self.tokenizer([query] * len(documents), list(documents), truncation=False)
        return [len(ids) for ids in encoded["input_ids"]]

    def windows(self, query: str, document: str, max_windows: int) -> list[str]:
        """Split `document` into at most `max_windows` consecutive pieces that each fit beside `query`.

        Windows are cut at token boundaries of the original text; a document that fits is returned whole.
        """
        with self._tokenizer_lock:
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
