"""Listwise rerankers (jina-reranker-v3 and v3.5, `JinaForRanking`): the query and all candidate documents in one
prompt, each document's score the cosine between the projected last hidden states at its `<|embed_token|>` and at the
query's `<|rerank_token|>` ("last but not late" interaction).

The reference is the published `modeling.py` (`rerank()` and its prompt builder) and vLLM's port (`JinaForRanking`):
the two marker tokens are removed from the query, the documents and the instruction; the query is cut to 512 tokens
and each document to 2,048 (v3.5: 1,024 and 8,192), a text at its cap being replaced by its decoded tokens; a pass
holds at most 125 documents and closes once the tokenizer's `model_max_length`, less twice the query and the
documents so far, leaves no room for a document at the cap; several passes are fused (`models/listwise.py`). The
server bounds that length (RERANK_MAX_LIST_PASS_TOKENS, `pass_tokens`): one forward's memory grows with it, and with
the square of it where v3.5's sliding-window mask is built. Where the bound is below `model_max_length`, the published
rule cannot be kept (with a bound at or below v3.5's cap of 8,192 it would close a pass after every document): a list
is split by its documents' real lengths instead, each document joining the current pass while it fits in what is left
of the bound beside twice the query and the instruction, and a document longer than that room is cut to it. Passage
ids count from 0 in each pass. v3.5 also puts `<|rerank_token|>` after the query in the header line, and the later one
(after the final `<query>`) is read. The projector and the cosine are `models/listwise.py`'s; the backbone's last
hidden states (after the final norm) are `backends/listwise.py`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from rerank_server.errors import InputTooLongError
from rerank_server.recipes.base import DocumentList, EncodedPairs, ListPass, Recipe, RecipeError, Side, TextOptions

DOCUMENT_MARKER = "<|embed_token|>"  # id 151670 in the published tokenizer
QUERY_MARKER = "<|rerank_token|>"  # id 151671
SYSTEM = (
    "<|im_start|>system\nYou are a search relevance expert who can determine a ranking of the passages based on how "
    "relevant they are to the query. If the query is a question, how relevant a passage is depends on how well it "
    "answers the question. If not, try to analyze the intent of the query and assess how well each passage satisfies "
    "the intent. If an instruction is provided, you should follow the instruction when determining the ranking."
    "<|im_end|>\n<|im_start|>user\n"
)
ASSISTANT = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
# `rerank()`'s block size: most documents in one pass.
DOCUMENTS_PER_PASS = 125
# The projector (Linear, ReLU, Linear, no bias) as the checkpoint stores it, beside the backbone's `model.*`.
PROJECTOR_KEYS = ("projector.0.weight", "projector.2.weight")


def projector_file(folder: Path) -> Path:
    """The safetensors file of `folder` that holds the projector. Raises ValueError when none does, for a projector
    with a bias (jina-reranker-v3's never has one), or for a file whose header cannot be read."""
    from safetensors import safe_open

    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="numpy") as weights:  # the header only: no tensor is read
                keys = set(weights.keys())
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own types for a corrupt header
            raise ValueError(f"{path} is not a readable safetensors file ({exc})") from exc
        if all(key in keys for key in PROJECTOR_KEYS):
            if any(key.startswith("projector.") and key.endswith(".bias") for key in keys):
                raise ValueError(f"{path}: a projector with a bias, which jina-reranker-v3's never has")
            return path
    raise ValueError(f"{folder}: no safetensors file holds the projector ({', '.join(PROJECTOR_KEYS)})")


def sanitize(text: str) -> str:
    """A user text without the two marker tokens (they would add markers the scores are read from)."""
    return text.replace(DOCUMENT_MARKER, "").replace(QUERY_MARKER, "")


class JinaV3Recipe(Recipe):
    """jina-reranker-v3: the published prompt, caps and split rule; the score is read by `models/listwise.py`."""

    name = "jina-v3"
    description = "listwise (jina-reranker-v3): query and all documents in one prompt, cosine of marker states"
    score_kind = "cosine"
    raw_score = "the cosine of the document's and the query's projected marker states, in [-1, 1]"
    uses_instruction = True
    listwise = True
    reference_max_length = 131_072
    query_cap: ClassVar[int] = 512
    document_cap: ClassVar[int] = 2048
    # v3.5: `<|rerank_token|>` after the query in the header line too (the later one is read).
    marks_header: ClassVar[bool] = False
    # v3.5: the projector's outputs are upcast to float32 before the cosine (v3 takes it in the model's dtype).
    float32_projection: ClassVar[bool] = False

    def __init__(self, tokenizer: Any, max_length: int, pass_tokens: int | None = None) -> None:
        """`pass_tokens`: the most tokens of twice the query, the instruction and the documents in one pass (None:
        the tokenizer's context only, as `rerank()` splits)."""
        super().__init__(tokenizer, max_length)
        self.document_marker = self._marker(DOCUMENT_MARKER)
        self.query_marker = self._marker(QUERY_MARKER)
        # `rerank()` splits by the tokenizer's model_max_length (the model's max_length when the tokenizer sets none:
        # transformers' "unset" is a huge number).
        stated = int(min(tokenizer.model_max_length, 10**9))
        context = stated if stated < 10**7 else max_length
        self.pass_tokens = pass_tokens
        self.context = min(context, pass_tokens) if pass_tokens else context
        # Where the bound, not the tokenizer, sets the context, the published rule cannot be kept (`split`): the
        # documents' real lengths split the list, and the instruction (which `rerank()` neither caps nor counts)
        # counts against the bound, or a long one would make every pass longer by as much.
        self.bounded = self.context < context

    def _marker(self, token: str) -> int:
        ids = self.tokenizer(token, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise RecipeError(f"the tokenizer has no single {token} token: it is not a jina-reranker-v3 one", "model")
        return ids[0]

    def relevance(self, raw: list[float]) -> list[float]:
        """The cosine itself, as `rerank()` and vLLM return it: no sigmoid (it would squeeze [-1, 1] into 0.27-0.73)."""
        return list(raw)

    def limit(self, options: TextOptions) -> int:
        """The model's max_length; truncate_prompt_tokens is refused (the query and each document have caps)."""
        caps = (
            f"the query is cut to {self.query_cap} tokens and each document to {self.document_cap} "
            "(max_tokens_per_doc may lower that)"
        )
        return self.whole_prompt_limit(options, "listwise", caps)

    def document_room(self, query: str, options: TextOptions) -> int:
        """A document's cap: the model's own, or max_tokens_per_doc where that is lower."""
        return min(self.document_cap, options.max_document_tokens or self.document_cap)

    def _capped(self, text: str, cap: int, side: Side, truncate: bool, field: str) -> tuple[str, int]:
        """`text` as `rerank()` keeps it: at most `cap` tokens, a text at the cap replaced by its decoded tokens; and
        its token count. With `truncate` false a text over the cap is refused."""
        cut, _ = self.long_text.cut(text, cap + 1, side)
        ids = self.tokenizer(cut, add_special_tokens=False)["input_ids"]
        if len(ids) > cap and not truncate:
            # TEI's `truncate: false` (the only route that sets it) and TEI's words for it.
            raise InputTooLongError(f"`inputs` must have less than {cap} tokens. Given: {len(ids)}", field)
        if len(ids) < cap:
            return text, len(ids)
        kept = ids[-cap:] if side == "left" else ids[:cap]
        return self.tokenizer.decode(kept), cap

    def encode(self, queries: Sequence[str], documents: Sequence[str], options: TextOptions) -> EncodedPairs:
        """The passes of one list of all the documents (`options.one_list`), or of a one-document list per pair;
        each document's row holds its share of the passes' tokens (`usage`)."""
        self.limit(options)
        if not documents:
            return EncodedPairs([], lists=[])
        if options.one_list and len(set(queries)) > 1:
            raise RecipeError("a listwise model scores one query's documents together: send one query", "queries")
        cap = self.document_room("", options)
        instruction = sanitize(options.instruction) if options.instruction else None
        groups = [range(len(documents))] if options.one_list else [range(i, i + 1) for i in range(len(documents))]
        rows: list[list[int]] = []
        lists: list[DocumentList] = []
        instruction_tokens = self._instruction_tokens(instruction)
        for group in groups:
            query, query_tokens = self._capped(sanitize(queries[group[0]]), self.query_cap, "right", True, "query")
            # What every pass of the list holds besides its documents, and what of it the split counts.
            fixed = 2 * query_tokens + instruction_tokens
            room = min(cap, self._pass_room(query_tokens, instruction_tokens))
            kept = [self._capped(sanitize(documents[i]), room, options.side, options.truncate, "texts") for i in group]
            counted = fixed if self.bounded else 2 * query_tokens
            passes = tuple(self._pass(query, instruction, kept, block) for block in self.split(counted, kept))
            rows.extend(self._rows(passes, len(kept)))
            lists.append(DocumentList(passes, len(kept)))
        return EncodedPairs(rows, lists=lists)

    def _instruction_tokens(self, instruction: str | None) -> int:
        """The instruction's tokens, under a bound (0 without one: `rerank()` does not count them); tokenized only as
        far as the bound, past which no pass could hold it anyway."""
        if not instruction or self.pass_tokens is None:
            return 0
        cut, _ = self.long_text.cut(instruction, self.pass_tokens + 1)
        return self.long_text.count(cut)

    def _pass_room(self, query_tokens: int, instruction_tokens: int) -> int:
        """The most tokens of one document that a pass within `pass_tokens` holds beside the query (twice in the
        prompt) and the instruction: a longer document is cut to it (or refused with `truncate` false, by
        `_capped`), so that every pass the split makes stays within the bound. Refuses a query and instruction that
        leave no room at all: no cut of the documents could help there."""
        if not self.pass_tokens:
            return self.document_cap
        fixed = 2 * query_tokens + instruction_tokens
        room = self.pass_tokens - fixed
        if room < 1:
            field = "query" if 2 * query_tokens >= self.pass_tokens else "instruction"
            raise RecipeError(
                f"the query (twice in the prompt) and the instruction take {fixed} tokens, leaving no room for a "
                f"document within the limit of {self.pass_tokens} tokens in one listwise pass "
                f"(RERANK_MAX_LIST_PASS_TOKENS): shorten the {field}",
                field,
            )
        return room

    def split(self, fixed: int, documents: Sequence[tuple[str, int]]) -> list[list[int]]:
        """Document indices in passes of at most 125. Where the tokenizer's context sets the length, `rerank()`'s
        rule: a pass closes once the context less twice the query (`fixed`) and the documents so far leaves no room
        for a document at the cap. Where the bound sets it (`bounded`), that rule would close a pass after
        every document once the bound is near the cap (v3.5 on a CPU: 8,192 and 8,192), so the documents' real
        lengths decide: a document joins the current pass while it fits in what is left of the bound beside `fixed`
        (twice the query and the instruction), else it opens a pass; every document fits a pass alone (`encode` cuts
        it to `_pass_room`). The prompt's template adds about 130 tokens a pass and 10 a document."""
        if self.bounded:
            return self._split_by_lengths(fixed, documents)
        blocks: list[list[int]] = [[]]
        room = self.context - fixed
        for index, (_, tokens) in enumerate(documents):
            blocks[-1].append(index)
            room -= tokens
            if len(blocks[-1]) >= DOCUMENTS_PER_PASS or room <= self.document_cap:
                blocks.append([])
                room = self.context - fixed
        return [block for block in blocks if block]

    def _split_by_lengths(self, fixed: int, documents: Sequence[tuple[str, int]]) -> list[list[int]]:
        blocks: list[list[int]] = [[]]
        left = self.context - fixed
        for index, (_, tokens) in enumerate(documents):
            if blocks[-1] and (tokens > left or len(blocks[-1]) >= DOCUMENTS_PER_PASS):
                blocks.append([])
                left = self.context - fixed
            blocks[-1].append(index)
            left -= tokens
        return [block for block in blocks if block]

    def prompt(self, query: str, instruction: str | None, documents: Sequence[str]) -> str:
        """The published prompt of one pass (the texts already sanitized and capped)."""
        header_mark = QUERY_MARKER if self.marks_header else ""
        body = (
            f"I will provide you with {len(documents)} passages, each indicated by a numerical identifier. "
            f"Rank the passages based on their relevance to query: {query}{header_mark}\n"
        )
        if instruction:
            body += f"<instruct>\n{instruction}\n</instruct>\n"
        body += "\n".join(f'<passage id="{i}">\n{doc}{DOCUMENT_MARKER}\n</passage>' for i, doc in enumerate(documents))
        body += f"\n<query>\n{query}{QUERY_MARKER}\n</query>"
        return SYSTEM + body + ASSISTANT

    def _pass(
        self, query: str, instruction: str | None, documents: Sequence[tuple[str, int]], block: list[int]
    ) -> ListPass:
        ids = self.tokenizer(
            self.prompt(query, instruction, [documents[i][0] for i in block]), add_special_tokens=False
        )["input_ids"]
        positions = tuple(i for i, token in enumerate(ids) if token == self.document_marker)
        queries = [i for i, token in enumerate(ids) if token == self.query_marker]
        if len(positions) != len(block) or not queries:  # the texts were sanitized: only a broken tokenizer does this
            raise RecipeError("the prompt's marker tokens do not tokenize as the model's markers", "model")
        return ListPass(tuple(ids), tuple(block), positions, queries[-1])

    @staticmethod
    def _rows(passes: Sequence[ListPass], size: int) -> list[list[int]]:
        """Each document's share of its pass's tokens (for `usage`): its passage, and for each pass's first document
        the prompt around the passages, so that the rows add up to every pass's tokens."""
        rows: list[list[int]] = [[] for _ in range(size)]
        for scored in passes:
            start = 0
            for document, position in zip(scored.documents, scored.document_positions, strict=True):
                rows[document] = list(scored.input_ids[start : position + 1])
                start = position + 1
            rows[scored.documents[0]] += scored.input_ids[start:]
        return rows


class JinaV35Recipe(JinaV3Recipe):
    """jina-reranker-v3.5: v3's prompt with the query marker in the header too, longer caps, a float32 projection
    (its sliding-window layers are the backbone's config)."""

    name = "jina-v3.5"
    description = "listwise (jina-reranker-v3.5): as v3 with sliding-window layers, longer caps, a marked header"
    query_cap = 1024
    document_cap = 8192
    marks_header = True
    float32_projection = True
