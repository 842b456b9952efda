"""An independent re-implementation of the published jina-reranker-v3 / v3.5 `rerank()`, from the facts the issue
lists and the published code shows, for the tests to compare the server with. It imports nothing of the server.

The published model is `JinaForRanking(Qwen3ForCausalLM)` with `lm_head` swapped for `Identity`: its "logits" are the
last hidden states after the final norm. Here that is transformers' own Qwen3ForCausalLM with the same swap (the
server takes another route, `Qwen3Model.last_hidden_state`), the projector an `nn.Sequential` of Linear, ReLU, Linear
without bias loaded from the checkpoint's `projector.0.weight` / `projector.2.weight`, and the cosine torch's.

`pass_tokens` is the server's bound on one pass (RERANK_MAX_LIST_PASS_TOKENS), written here from its statement, not
from the server's code: below `model_max_length` it replaces rerank()'s split. The budget of a pass is the bound less
twice the query and the instruction; a document longer than that budget is cut to it as rerank() cuts at a cap
(decoded tokens); documents fill a pass in order while each fits in what is left, at most 125 a pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import transformers

DOC_TOKEN, QUERY_TOKEN = "<|embed_token|>", "<|rerank_token|>"
DOC_ID, QUERY_ID = 151670, 151671


@dataclass(frozen=True)
class Version:
    """What sets v3.5 apart from v3 in the published code."""

    query_cap: int
    document_cap: int
    header_marker: bool  # v3.5: the query marker after the query in the header line too; the later one is read
    float32_projection: bool


V3 = Version(512, 2048, False, False)
V35 = Version(1024, 8192, True, True)
BLOCK = 125


def _prompt(query: str, documents: list[str], instruction: str | None, version: Version) -> str:
    system = (
        "<|im_start|>system\n"
        "You are a search relevance expert who can determine a ranking of the passages based on how relevant they "
        "are to the query. If the query is a question, how relevant a passage is depends on how well it answers the "
        "question. If not, try to analyze the intent of the query and assess how well each passage satisfies the "
        "intent. If an instruction is provided, you should follow the instruction when determining the ranking."
        "<|im_end|>\n<|im_start|>user\n"
    )
    text = (
        f"I will provide you with {len(documents)} passages, each indicated by a numerical identifier. Rank the "
        f"passages based on their relevance to query: {query}{QUERY_TOKEN if version.header_marker else ''}\n"
    )
    if instruction:
        text += f"<instruct>\n{instruction}\n</instruct>\n"
    for i, document in enumerate(documents):
        text += f'<passage id="{i}">\n{document}{DOC_TOKEN}\n</passage>\n'
    text += f"<query>\n{query}{QUERY_TOKEN}\n</query>"
    return system + text + "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


class Reference:
    """The published rerank() on a model folder, in float32 on the CPU."""

    def __init__(
        self,
        folder: Path,
        version: Version,
        config: transformers.Qwen3Config | None = None,
        model_max_length: int | None = None,
        pass_tokens: int | None = None,
    ) -> None:
        """`model_max_length`: the tokenizer's, which rerank() splits by, set to this instead of the folder's;
        `pass_tokens`: the server's bound (the module's docstring)."""
        from safetensors.torch import load_file

        self.version = version
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
        if model_max_length is not None:
            self.tokenizer.model_max_length = model_max_length
        self.bound = pass_tokens if pass_tokens and pass_tokens < self.tokenizer.model_max_length else None
        self.model = transformers.Qwen3ForCausalLM.from_pretrained(folder, config=config, dtype=torch.float32).eval()
        self.model.lm_head = torch.nn.Identity()
        weights = load_file(str(folder / "model.safetensors"))
        first, second = weights["projector.0.weight"].float(), weights["projector.2.weight"].float()
        self.projector = torch.nn.Sequential(
            torch.nn.Linear(first.shape[1], first.shape[0], bias=False),
            torch.nn.ReLU(),
            torch.nn.Linear(second.shape[1], second.shape[0], bias=False),
        )
        with torch.no_grad():
            self.projector[0].weight.copy_(first)
            self.projector[2].weight.copy_(second)

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _truncate(self, text: str, cap: int) -> str:
        ids = self.tokenizer(text, add_special_tokens=False, truncation=True, max_length=cap)["input_ids"]
        return self.tokenizer.decode(ids) if len(ids) == cap else text

    def _budget(self, query: str, instruction: str | None) -> int:
        """Under the bound: a pass's tokens for its documents (the query is in the prompt twice)."""
        assert self.bound is not None
        return self.bound - 2 * len(self._ids(query)) - (len(self._ids(instruction)) if instruction else 0)

    def blocks(self, query: str, documents: list[str], instruction: str | None = None) -> list[list[int]]:
        """Indices of each pass's documents, as rerank() closes its blocks (under the bound: as they fit)."""
        if self.bound is not None:
            budget = self._budget(query, instruction)
            fitted: list[list[int]] = []
            left = budget
            for i, document in enumerate(documents):
                tokens = len(self._ids(document))
                if not fitted or len(fitted[-1]) == BLOCK or tokens > left:
                    fitted.append([])
                    left = budget
                fitted[-1].append(i)
                left -= tokens
            return fitted
        capacity = self.tokenizer.model_max_length - 2 * len(self._ids(query))
        blocks, current, room = [], [], capacity
        for i, document in enumerate(documents):
            current.append(i)
            room -= len(self._ids(document))
            if len(current) == BLOCK or room <= self.version.document_cap:
                blocks.append(current)
                current, room = [], capacity
        return blocks + ([current] if current else [])

    def prompts(self, query: str, documents: list[str], instruction: str | None = None) -> list[list[int]]:
        """The token ids of each pass, after cleaning and truncation."""
        query, documents, instruction = self._clean(query, documents, instruction)
        return [
            self._ids(_prompt(query, [documents[i] for i in block], instruction, self.version))
            for block in self.blocks(query, documents, instruction)
        ]

    def _clean(self, query: str, documents: list[str], instruction: str | None) -> tuple[str, list[str], str | None]:
        def strip(text: str) -> str:
            return text.replace(DOC_TOKEN, "").replace(QUERY_TOKEN, "")

        query = self._truncate(strip(query), self.version.query_cap)
        instruction = strip(instruction) if instruction else None
        cap = self.version.document_cap
        if self.bound is not None:
            cap = min(cap, self._budget(query, instruction))
        return query, [self._truncate(strip(document), cap) for document in documents], instruction

    @torch.no_grad()
    def rerank(self, query: str, documents: list[str], instruction: str | None = None) -> list[float]:
        """The relevance_score of each document, in document order."""
        query, documents, instruction = self._clean(query, documents, instruction)
        query_vectors, weights = [], []
        document_vectors: dict[int, torch.Tensor] = {}
        for block in self.blocks(query, documents, instruction):
            ids = torch.tensor([self._ids(_prompt(query, [documents[i] for i in block], instruction, self.version))])
            hidden = self.model(input_ids=ids).logits[0]  # lm_head is Identity: the normed last hidden states
            docs = self.projector(hidden[ids[0] == DOC_ID])
            query_vector = self.projector(hidden[ids[0] == QUERY_ID][-1:])
            if self.version.float32_projection:
                docs, query_vector = docs.float(), query_vector.float()
            cosines = torch.nn.functional.cosine_similarity(docs, query_vector.expand_as(docs), dim=-1)
            query_vectors.append(query_vector)
            weights.append((1 + cosines.max()) / 2)
            document_vectors.update(zip(block, docs, strict=True))
        docs = torch.stack([document_vectors[i] for i in range(len(documents))])
        weight = torch.stack(weights)
        fused = (torch.cat(query_vectors) * weight[:, None]).sum(0, keepdim=True) / weight.sum()
        return torch.nn.functional.cosine_similarity(docs, fused.expand_as(docs), dim=-1).tolist()
