"""How pairs become forward passes: sorted by length, in passes of at most `token_budget` padded tokens (16,384 on
CUDA, 2,048 on a CPU unless RERANK_TOKEN_BUDGET says otherwise), launched one after another with a single copy back.
The continuous batcher (`batcher.py`) runs each batch through here; tools, benchmarks and tests score through
`score_directly` without a queue.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch

from rerank_server.recipes import DEFAULT_OPTIONS, EncodedPairs, TextOptions

if TYPE_CHECKING:
    from rerank_server.models.loaded import LoadedReranker

__all__ = ["Forward", "ScoredPairs", "default_token_budget", "plan_passes", "run_passes", "score_directly"]


class Forward(Protocol):
    """What the batcher needs of a loaded model (`rerank_server.models.loaded.LoadedReranker`)."""

    device: str

    def forward(self, encoded: EncodedPairs, on_pass: Callable[[], None] | None = None) -> torch.Tensor:
        """One pass: a logit per pair, possibly still on the device. A listwise model's lists are several passes in
        one call: it calls `on_pass` after each (only lists are given one; other models are one pass a call)."""


def default_token_budget(device: str) -> int:
    """Padded tokens per forward pass when RERANK_TOKEN_BUDGET is unset.

    A GPU wants large passes to fill its cores; on a CPU, passes of ~2k tokens measured 25-30 % faster than 16k (cache
    locality), see benchmarks/token_budget.py.
    """
    return 16_384 if device.startswith("cuda") else 2_048


def plan_passes(lengths: Sequence[int], token_budget: int) -> Iterator[list[int]]:
    """Group pair indices, longest first, into passes whose padded size stays within `token_budget`.

    Sorting by length means each pass pads to its first (longest) pair, so little compute goes to padding.
    A single pair longer than the budget still gets a pass of its own.
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


def run_passes(
    model: Forward,
    encoded: EncodedPairs,
    token_budget: int | None = None,
    on_pass: Callable[[], None] | None = None,
) -> torch.Tensor:
    """The logit of each encoded pair (float32, on the CPU, in the given order), computed in planned passes.

    Passes are launched one after another without waiting for the device, so on a GPU the host pads and copies the
    next pass while the current one computes; the only synchronisation is the final copy back. Also what tools and
    benchmarks call to score without a queue.
    """
    if not len(encoded):
        return torch.empty(0)
    if encoded.lists is not None:  # not the length planner: a list's passes are its recipe's, and decide its scores
        # Each list's passes report themselves (`on_pass` inside the forward): one list of many passes on a CPU can
        # outlast the stall limit that /livez holds a single pass to.
        scored = [model.forward(encoded.slice(start, stop), on_pass=on_pass) for start, stop in encoded.list_bounds()]
        return torch.cat([part.float().cpu() for part in scored])
    budget = token_budget or default_token_budget(model.device)
    order: list[int] = []
    outputs: list[torch.Tensor] = []
    for rows in plan_passes(encoded.lengths, budget):
        outputs.append(model.forward(encoded.select(rows)))
        order.extend(rows)
        if on_pass is not None:
            on_pass()
    flat = torch.cat(outputs).float().cpu()
    logits = torch.empty(len(order), dtype=torch.float32)
    logits[order] = flat
    return logits


@dataclass(frozen=True)
class ScoredPairs:
    """Raw logits, relevance scores (the recipe's own map, uncalibrated) and token counts of pairs scored without a
    queue, in the order they were given."""

    logits: list[float]
    scores: list[float]
    tokens: list[int]


def score_directly(
    model: LoadedReranker,
    queries: Sequence[str],
    documents: Sequence[str],
    options: TextOptions = DEFAULT_OPTIONS,
    token_budget: int | None = None,
) -> ScoredPairs:
    """Tokenize and score each (queries[i], documents[i]) pair on this thread, in the batcher's passes: for tools,
    benchmarks and tests that have a loaded model and no server."""
    encoded = model.encode(queries, documents, options)
    logits = run_passes(model, encoded, token_budget)
    raw = logits.tolist()
    return ScoredPairs(raw, model.recipe.relevance(raw), encoded.lengths)
