"""One loaded reranker: its recipe (text → token ids) and its backend (token ids → logit), and the packing between.

Hand-written rather than `CrossEncoder.predict` because the server needs what predict does not give: the token count
of every pair (for `usage`) from the same tokenization the model consumes, and sub-batches packed under a token budget
so that one long document does not pad a whole batch. Tokenization and weights are the reference's (the recipe
re-implements each family's published code; the tests compare the two).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from rerank_server.backends import Backend, is_cpu_runtime, load_backend
from rerank_server.backends.torch_backend import resolve_dtype
from rerank_server.cpu import usable_cpus
from rerank_server.recipes import DEFAULT_OPTIONS, RECIPES, EncodedPairs, Recipe, TextOptions

if TYPE_CHECKING:
    from rerank_server.model_store import StoredReranker


def default_token_budget(device: str) -> int:
    """Padded tokens per forward pass when RERANK_TOKEN_BUDGET is unset.

    A GPU wants large passes to fill its cores; on a CPU, passes of ~2k tokens measured 25-30 % faster than 16k (cache
    locality), see benchmarks/token_budget.py.
    """
    return 16_384 if device.startswith("cuda") else 2_048


def pack_by_tokens(lengths: Sequence[int], token_budget: int) -> Iterator[list[int]]:
    """Group pair indices, longest first, into batches whose padded size stays within `token_budget`.

    Sorting by length means each batch pads to its first (longest) pair, so little compute goes to padding.
    A single pair longer than the budget still gets a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__, reverse=True)
    batch: list[int] = []
    for index in order:
        padded_to = lengths[batch[0]] if batch else lengths[index]
        if batch and (len(batch) + 1) * padded_to > token_budget:
            yield batch
            batch = []
        batch.append(index)
    if batch:
        yield batch


def pad(rows: Sequence[list[int]], value: int, side: str) -> tuple[np.ndarray, np.ndarray]:
    """Rows of token ids as one int64 matrix, padded with `value` on `side`, and its attention mask."""
    width = max(len(row) for row in rows)
    ids = np.full((len(rows), width), value, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[i, span] = row
        mask[i, span] = 1
    return ids, mask


@dataclass(frozen=True)
class PairScores:
    """Raw logits, sigmoid scores and token counts, in the order the pairs were given."""

    logits: list[float]
    scores: list[float]
    tokens: list[int]


class Scorer:
    """A recipe and a backend; safe to call from several threads (one forward at a time)."""

    def __init__(self, recipe: Recipe, backend: Backend, token_budget: int) -> None:
        self.recipe = recipe
        self.backend = backend
        self.token_budget = token_budget
        # One forward at a time keeps the accelerator's memory use predictable; the recipe has its own lock, so one
        # request tokenizes while another computes.
        self._model_lock = threading.Lock()

    @property
    def device(self) -> str:
        return self.backend.device

    @property
    def weight_bytes(self) -> int:
        return self.backend.weight_bytes

    def encode(
        self, queries: Sequence[str], documents: Sequence[str], options: TextOptions = DEFAULT_OPTIONS
    ) -> EncodedPairs:
        """Token ids of each (queries[i], documents[i]) pair, as the model's reference code makes them."""
        if not documents:
            return EncodedPairs([])
        return self.recipe.encode(queries, documents, options)

    def logits(self, encoded: EncodedPairs) -> torch.Tensor:
        """The model's logit for each encoded pair (float32, on the CPU, in the given order).

        Sub-batches are launched one after another without waiting for the device, so on a GPU the host pads and
        copies the next sub-batch while the current one computes; the only synchronisation is the final copy back.
        """
        if not len(encoded):
            return torch.empty(0)
        lengths = encoded.lengths
        side, pad_id = self.recipe.padding_side, self.recipe.pad_id
        with self._model_lock:
            order: list[int] = []
            outputs: list[torch.Tensor] = []
            for batch in pack_by_tokens(lengths, self.token_budget):
                ids, mask = pad([encoded.input_ids[i] for i in batch], pad_id, side)
                types = None
                if encoded.token_type_ids is not None:
                    types, _ = pad([encoded.token_type_ids[i] for i in batch], 0, side)
                outputs.append(self.backend.logits(ids, mask, types))
                order.extend(batch)
            flat = torch.cat(outputs).cpu()
        logits = torch.empty(len(order), dtype=torch.float32)
        logits[order] = flat
        return logits

    def score(
        self, queries: Sequence[str], documents: Sequence[str], options: TextOptions = DEFAULT_OPTIONS
    ) -> PairScores:
        """Tokenize and score each (queries[i], documents[i]) pair in one call."""
        encoded = self.encode(queries, documents, options)
        logits = self.logits(encoded)
        return PairScores(logits.tolist(), torch.sigmoid(logits).tolist(), encoded.lengths)

    def release(self) -> None:
        """Drop the weights (the caller frees accelerator memory once nothing refers to them)."""
        self.backend.release()


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def load_scorer(
    stored: StoredReranker, *, device: str, dtype: str = "auto", token_budget: int | None = None, threads: int = 0
) -> Scorer:
    """A stored reranker loaded with its recipe on its backend (`device` and `dtype` are torch's; a CPU runtime
    ignores them). `dtype` is a RERANK_DTYPE choice; the token budget defaults to the device's."""
    return load_folder(
        stored.path, recipe=stored.recipe, max_length=stored.max_length, causal=stored.causal, backend=stored.backend,
        device=device, dtype=dtype, checkpoint_dtype=stored.checkpoint_dtype, token_budget=token_budget,
        threads=threads,
    )  # fmt: skip


def load_folder(
    path: Path,
    *,
    recipe: str = "cross-encoder",
    max_length: int = 512,
    causal: bool = False,
    backend: str = "torch",
    device: str = "cpu",
    dtype: str = "auto",
    checkpoint_dtype: str | None = None,
    token_budget: int | None = None,
    threads: int = 0,
) -> Scorer:
    """A model folder loaded as `load_scorer` loads a stored one (for tools, benchmarks and tests)."""
    loaded_recipe = RECIPES[recipe](load_tokenizer(path), max_length)
    if is_cpu_runtime(backend):
        device = "cpu"
    model = load_backend(
        backend, path, causal=causal, head=loaded_recipe.last_token_head() if causal else None,
        pad_id=loaded_recipe.pad_id, device=device, dtype=resolve_dtype(dtype, device, checkpoint_dtype),
        threads=threads or usable_cpus(),
    )  # fmt: skip
    return Scorer(loaded_recipe, model, token_budget or default_token_budget(device))
