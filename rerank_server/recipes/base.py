"""What every recipe shares: the options a request sets, tokenized pairs, and the interface a reranker family fills in.

A recipe is one reranker family's published way of scoring: how a (query, document) pair becomes token ids (template,
truncation, windows for long documents) and which output of the model is the pair's logit. It never runs the model;
a backend (`rerank_server.backends`) turns its token ids into logits.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from rerank_server.errors import InvalidInputError
from rerank_server.recipes.long_text import LongText

if TYPE_CHECKING:
    import numpy as np

Side = Literal["right", "left"]


class RecipeError(InvalidInputError):
    """The request's options cannot be applied to this model (a 400 naming `param`)."""


@dataclass(frozen=True)
class TextOptions:
    """How a request wants its pairs turned into tokens; pairs with equal options are tokenized together.

    Part of the result cache key: a score depends on them.
    """

    max_length: int | None = None  # vLLM's truncate_prompt_tokens: most tokens of a whole prompt, template included
    side: Side = "right"  # TEI's truncation_direction: which end of a text truncation cuts
    max_document_tokens: int | None = None  # Cohere's max_tokens_per_doc
    instruction: str | None = None  # replaces the recipe's default instruction, where it has one
    truncate: bool = True  # TEI's `truncate: false`: nothing is cut, and a pair over the limit is refused
    # Listwise models: the request's documents are one list read together (rerank, `/score` with one query); False:
    # each pair is a list of its own (pairwise `/score`, `/score_pairs`), so that no pair's score depends on another.
    one_list: bool = True


DEFAULT_OPTIONS = TextOptions()


@dataclass(frozen=True, eq=False)
class ImageInput:
    """One image of a request, still encoded (PNG, JPEG, ...): decoding it is the recipe's work, on a preparation
    thread. `field` says where the request had it, so that a refusal names it ("documents.3.image")."""

    data: bytes
    field: str = "image"

    @cached_property
    def digest(self) -> bytes:
        """A fixed-size identity of the bytes: the result cache's key and the de-duplication of a request's images."""
        return hashlib.blake2b(self.data, digest_size=20).digest()


@dataclass(frozen=True)
class Content:
    """A query or document with images (text-only ones travel as plain `str`, so nothing changes for them).

    `text` None means no text part at all, which multimodal recipes tell apart from an empty text.
    """

    text: str | None = None
    images: tuple[ImageInput, ...] = field(default_factory=tuple)


# What a request scores: a text, or a text with images.
Item = str | Content


@dataclass(frozen=True)
class PairImages:
    """The prepared images of one pair, in the order their tokens appear in its ids: each image's pixel rows (the
    image processor's `pixel_values`) and its (t, h, w) patch grid. Arrays may be shared between pairs."""

    pixel_values: tuple[np.ndarray, ...]
    grids: tuple[tuple[int, int, int], ...]


@dataclass(frozen=True)
class LatePair:
    """One pair of a late-interaction model, encoded apart: the query's ids (expanded) and how many of its leading
    positions are attended to, the document's ids and which of its positions MaxSim uses (the skiplist's are not)."""

    query: tuple[int, ...]
    attended: int
    document: tuple[int, ...]
    kept: tuple[bool, ...]


@dataclass(frozen=True)
class ListPass:
    """One forward pass of a listwise model: its prompt's ids, which documents of the list it holds (their indices),
    where each one's marker is, and where the query's marker that is read is."""

    input_ids: tuple[int, ...]
    documents: tuple[int, ...]
    document_positions: tuple[int, ...]
    query_position: int


@dataclass(frozen=True)
class DocumentList:
    """A list of documents a listwise model scores together: its passes (one, or several that are fused)."""

    passes: tuple[ListPass, ...]
    size: int


@dataclass(frozen=True)
class EncodedPairs:
    """Tokenized pairs, unpadded, in request order: what the model thread needs, prepared on another thread.

    Token ids depend on the model and the options, so encodings made under different options can share one forward.
    """

    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None = None
    # Multimodal recipes: each pair's images (None for a pair without any); None when no pair has one.
    images: list[PairImages | None] | None = None
    # Late-interaction recipes: each pair's query and document apart (`input_ids` then holds them end to end, which is
    # what the pass planner counts).
    late: list[LatePair] | None = None
    # Listwise recipes: the lists, whose documents are the rows in order (a row's ids are the tokens of the passes
    # that count for that document: its passage, and for each pass's first document the prompt around them).
    lists: list[DocumentList] | None = None

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.input_ids]

    def slice(self, start: int, stop: int) -> EncodedPairs:
        """Pairs `start` to `stop` (itself when that is all of them)."""
        if start == 0 and stop >= len(self):
            return self
        if self.lists is not None:
            return self._lists_between(start, stop)
        types = self.token_type_ids[start:stop] if self.token_type_ids is not None else None
        images = self.images[start:stop] if self.images is not None else None
        late = self.late[start:stop] if self.late is not None else None
        return EncodedPairs(self.input_ids[start:stop], types, images, late)

    def list_bounds(self) -> list[tuple[int, int]]:
        """Listwise: the rows (start, stop) of each list."""
        bounds, start = [], 0
        for scored in self.lists or ():
            bounds.append((start, start + scored.size))
            start += scored.size
        return bounds

    def _lists_between(self, start: int, stop: int) -> EncodedPairs:
        """The whole lists whose rows are `start` to `stop`: a list is never cut (its scores depend on all of it)."""
        bounds = self.list_bounds()
        inside = [i for i, (first, last) in enumerate(bounds) if first >= start and last <= stop]
        if not inside or bounds[inside[0]][0] != start or bounds[inside[-1]][1] != min(stop, len(self)):
            raise ValueError(f"rows {start}:{stop} cut a list of documents scored together")
        lists = self.lists or []
        return EncodedPairs(self.input_ids[start:stop], lists=[lists[i] for i in inside])

    def select(self, rows: Sequence[int]) -> EncodedPairs:
        """The pairs at `rows`, in that order."""
        if self.lists is not None:
            raise ValueError("a listwise encoding is scored list by list, never reordered")
        types = [self.token_type_ids[i] for i in rows] if self.token_type_ids is not None else None
        images = [self.images[i] for i in rows] if self.images is not None else None
        late = [self.late[i] for i in rows] if self.late is not None else None
        return EncodedPairs([self.input_ids[i] for i in rows], types, images, late)

    @classmethod
    def concat(cls, parts: Sequence[EncodedPairs]) -> EncodedPairs:
        if len(parts) == 1:
            return parts[0]
        types = None
        if all(part.token_type_ids is not None for part in parts):
            types = [ids for part in parts for ids in part.token_type_ids or ()]
        images = None
        if any(part.images is not None for part in parts):  # text-only requests of a multimodal model join in
            images = [pair for part in parts for pair in (part.images or [None] * len(part))]
        late = None
        if all(part.late is not None for part in parts):  # one model's parts: all late, or none
            late = [pair for part in parts for pair in part.late or ()]
        lists = None
        if all(part.lists is not None for part in parts):  # one model's parts: all listwise, or none
            lists = [scored for part in parts for scored in part.lists or ()]
        return cls([ids for part in parts for ids in part.input_ids], types, images, late, lists)


@dataclass(frozen=True)
class LastTokenHead:
    """For a causal LM: the logit of `positive_id` at the last position, minus that of `negative_id` when given."""

    positive_id: int
    negative_id: int | None = None


class Recipe(ABC):
    """One reranker family around one tokenizer. Not thread-safe (a Hugging Face tokenizer is mutable): a loaded
    model lends each tokenizing thread a copy of its own (`rerank_server.models.loaded.RecipePool`)."""

    name: ClassVar[str]
    description: ClassVar[str]
    padding_side: ClassVar[Side] = "right"
    uses_instruction: ClassVar[bool] = False
    # The max_length of the family's reference code, for a model the catalogue does not know.
    reference_max_length: ClassVar[int] = 512
    # Whether queries and documents may hold images (`Content`); text recipes take `str` only.
    takes_images: ClassVar[bool] = False
    # What `relevance_score` is without a calibration (the sigmoid of the raw score, always; for yes/no LLM
    # rerankers that is p(yes) against no), and what the raw score (`use_activation: false`) is: /v1/models shows both.
    score_kind: ClassVar[Literal["sigmoid", "p-yes", "mean-maxsim", "cosine"]] = "sigmoid"
    raw_score: ClassVar[str] = "the classifier's logit"
    # Query and document encoded apart (`EncodedPairs.late`), scored by MaxSim of token embeddings (ColBERT).
    late_interaction: ClassVar[bool] = False
    # The query and all documents in one context, scored from marker tokens' states (jina-reranker-v3): a request's
    # documents are one `DocumentList` (`EncodedPairs.lists`), never cut or merged with another request's.
    listwise: ClassVar[bool] = False

    @classmethod
    def load_extras(cls, path: Path) -> dict[str, Any]:
        """What the recipe needs from the model folder besides its tokenizer (an image processor, a chat template):
        keyword arguments of its constructor, loaded once and shared by its copies."""
        return {}

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length  # most tokens of one pair, template included
        self.long_text = LongText(tokenizer)

    def relevance(self, raw: list[float]) -> list[float]:
        """The relevance score of raw scores without a calibration: their sigmoid, as the family's reference applies
        it (in float32, as the reference computes it)."""
        import torch

        return torch.sigmoid(torch.tensor(raw, dtype=torch.float32)).tolist()

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else 0

    def limit(self, options: TextOptions) -> int:
        """Most tokens of one pair under `options` (truncate_prompt_tokens below the model's own limit)."""
        if options.max_length is None or options.max_length < 0:
            return self.max_length
        if options.max_length > self.max_length:
            raise RecipeError(
                f"truncate_prompt_tokens ({options.max_length}) is larger than the model's max_length "
                f"({self.max_length})",
                "truncate_prompt_tokens",
            )
        return options.max_length

    def whole_prompt_limit(self, options: TextOptions, family: str, caps: str) -> int:
        """`limit` for a family that cuts each text at caps of its own rather than the whole prompt: `family` and its
        `caps` explain the refusal of truncate_prompt_tokens (-1 or absent is the model's max_length)."""
        if options.max_length is not None and options.max_length >= 0:
            raise RecipeError(
                f"truncate_prompt_tokens does not apply to a {family} model: {caps}", "truncate_prompt_tokens"
            )
        return self.max_length

    def last_token_head(self) -> LastTokenHead:
        """Which vocabulary logits make the score when the checkpoint is a causal LM."""
        raise RecipeError(f"the {self.name} recipe scores with a classification head, not a language model", "model")

    def image_bytes(self, images: Sequence[ImageInput], max_source_pixels: int) -> int:
        """What preparing `images` will hold in memory, read from their headers (nothing is decoded); refuses an
        image that cannot be read or is larger than `max_source_pixels` (InvalidInputError naming its field)."""
        raise RecipeError(f"the {self.name} recipe reads text only", images[0].field if images else "documents")

    @abstractmethod
    def encode(self, queries: Sequence[str], documents: Sequence[str], options: TextOptions) -> EncodedPairs:
        """Token ids of each (queries[i], documents[i]) pair, exactly as the family's reference code makes them."""

    @abstractmethod
    def document_room(self, query: str, options: TextOptions) -> int:
        """Tokens a document can have beside `query` before truncation would cut it."""

    def windows(self, query: str, document: str, max_windows: int, options: TextOptions) -> list[str]:
        """`document` split into at most `max_windows` consecutive pieces that each fit beside `query`.

        Pieces are cut at token boundaries of the document; a document that fits is returned whole.
        """
        room = max(self.document_room(query, options), 16)
        text, _ = self.long_text.cut(document, room * max_windows + 1)
        offsets = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        if len(offsets) <= room:
            return [document]
        starts = list(range(0, len(offsets), room))[:max_windows]
        return [text[offsets[start][0] : offsets[min(start + room, len(offsets)) - 1][1]] for start in starts]

    def cut_documents(self, documents: Sequence[str], max_tokens: int, side: Side) -> list[str]:
        """Each document cut to its first (or last) `max_tokens` tokens, at a token boundary of its text."""
        cut: list[str] = []
        for document in documents:
            text, _ = self.long_text.cut(document, max_tokens + 1, side)
            offsets = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
            if len(offsets) <= max_tokens:
                cut.append(text)
            elif side == "left":
                cut.append(text[offsets[-max_tokens][0] :])
            else:
                cut.append(text[: offsets[max_tokens - 1][1]])
        return cut


def only_second(first: list[int], second: list[int], max_length: int) -> list[int]:
    """transformers 4's `prepare_for_model(truncation="only_second")`, which FlagEmbedding and mixedbread's package call
    (gone from fast tokenizers in transformers 5): the second sequence loses tokens from its end until both fit; when
    it cannot lose enough, nothing is cut."""
    excess = len(first) + len(second) - max_length
    if excess <= 0 or excess >= len(second):
        return second
    return second[:-excess]
