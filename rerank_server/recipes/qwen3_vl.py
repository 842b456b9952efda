"""Qwen3-VL-Reranker (2B / 8B): text, images or both, on either side of a pair.

The reference is `Qwen3VLReranker` in QwenLM/Qwen3-VL-Embedding (`src/models/qwen3_vl_reranker.py`): a system
message, then one user message of parts: `<Instruct>: {instruction}`, `<Query>:`, the query's images then its text,
`\\n<Document>:`, the document's images then its text ("NULL" for a side with neither), rendered by the checkpoint's
own chat template with the generation prompt. Images are decoded, made RGB and resized by qwen-vl-utils'
`smart_resize` (multiples of 32 pixels, 4 to 1,280 tokens) before the image processor, which then only normalizes
and cuts patches; each `<|image_pad|>` becomes one token per 2x2 patches. Everything before the last 5 tokens
(`<|im_end|>\\n<|im_start|>assistant\\n`) is cut to `max_length` by keeping every special token (so image tokens are
never cut) and the first ordinary tokens; padding is on the left; the score is sigmoid(h · (W_yes - W_no)) of the
last position's hidden state, i.e. sigmoid(z_yes - z_no).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rerank_server.recipes import images as imaging
from rerank_server.recipes.base import (
    Content,
    EncodedPairs,
    ImageInput,
    Item,
    LastTokenHead,
    PairImages,
    Recipe,
    RecipeError,
    TextOptions,
)

SYSTEM = (
    "Judge whether the Document meets the requirements based on the Query and the Instruct provided. Note that the "
    'answer can only be "yes" or "no".'
)
DEFAULT_INSTRUCTION = "Given a search query, retrieve relevant candidates that answer the query."
# The reference's image bounds: multiples of 16-pixel patches merged 2x2, from 4 to 1,280 tokens per image.
IMAGE_FACTOR = 32
MIN_PIXELS = 4 * IMAGE_FACTOR * IMAGE_FACTOR
MAX_PIXELS = 1280 * IMAGE_FACTOR * IMAGE_FACTOR
TAIL = 5  # <|im_end|> \n <|im_start|> assistant \n: never truncated
IMAGE_TOKEN = "<|image_pad|>"
# Tokens that stand for pixels: in a text they would claim image features that do not exist.
PIXEL_TOKENS = ("<|image_pad|>", "<|video_pad|>")
_SLACK = 16


def _chat_template(path: Path) -> str | None:
    """The processor's chat template (chat_template.jinja or .json); None: the tokenizer's is used."""
    if (path / "chat_template.jinja").is_file():
        return (path / "chat_template.jinja").read_text(encoding="utf-8")
    if (path / "chat_template.json").is_file():
        template = json.loads((path / "chat_template.json").read_text(encoding="utf-8")).get("chat_template")
        if isinstance(template, str):
            return template
    return None


def _side(prefix: str, text: str | None, count: int) -> list[dict[str, str]]:
    """One side's content parts, as the reference's `format_mm_content` orders them: images before text."""
    parts = [{"type": "text", "text": prefix}]
    if text is None and not count:
        return [*parts, {"type": "text", "text": "NULL"}]
    parts += [{"type": "image"}] * count
    return parts if text is None else [*parts, {"type": "text", "text": text}]


def _parts(item: Item) -> tuple[str | None, tuple[ImageInput, ...]]:
    return (item, ()) if isinstance(item, str) else (item.text, item.images)


class Qwen3VLRecipe(Recipe):
    name = "qwen3-vl"
    description = "Qwen3-VL-Reranker: text and images, instruction/query/document chat messages, yes vs no"
    score_kind = "p-yes"
    raw_score = "logit('yes') - logit('no') at the last token"
    padding_side = "left"
    uses_instruction = True
    reference_max_length = 8192
    takes_images = True

    @classmethod
    def load_extras(cls, path: Path) -> dict[str, Any]:
        from transformers import AutoImageProcessor

        # Not AutoProcessor: it also builds Qwen3-VL's video processor, which needs torchvision. The Pillow backend
        # on every host: with torchvision installed transformers would pick its backend, whose floats differ.
        processor = AutoImageProcessor.from_pretrained(path, backend="pil")
        return {"image_processor": processor, "chat_template": _chat_template(path)}

    def __init__(
        self, tokenizer: Any, max_length: int, *, image_processor: Any = None, chat_template: str | None = None
    ) -> None:
        super().__init__(tokenizer, max_length)
        self.image_processor = image_processor
        self.chat_template = chat_template or tokenizer.chat_template
        if not isinstance(self.chat_template, str):
            raise RecipeError("the model folder holds no chat template (chat_template.jinja or .json)", "model")
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        vision = [tokenizer.convert_tokens_to_ids(t) for t in ("<|vision_start|>", IMAGE_TOKEN, "<|vision_end|>")]
        # The reference keeps the tokenizer's special tokens; image tokens are among them in Qwen's tokenizers.
        self.kept_ids = set(tokenizer.all_special_ids) | {i for i in vision if i is not None}
        self.kept_texts = [token for token in tokenizer.convert_ids_to_tokens(sorted(self.kept_ids)) if token]

    def last_token_head(self) -> LastTokenHead:
        vocabulary = self.tokenizer.get_vocab()
        if "yes" not in vocabulary or "no" not in vocabulary:
            raise RecipeError("the tokenizer has no single 'yes' and 'no' tokens: it is not a Qwen tokenizer", "model")
        return LastTokenHead(positive_id=vocabulary["yes"], negative_id=vocabulary["no"])

    # --- images ------------------------------------------------------------------------------------------------------

    def _bounds(self) -> dict[str, int]:
        return {"factor": IMAGE_FACTOR, "min_pixels": MIN_PIXELS, "max_pixels": MAX_PIXELS}

    def _floats_per_pixel(self) -> float:
        # The processor repeats a still image over its temporal patch: channels x frames floats per pixel.
        return 3 * getattr(self.image_processor, "temporal_patch_size", 2)

    def image_bytes(self, images: Sequence[ImageInput], max_source_pixels: int) -> int:
        """The prepared patches of every image (float32, held until the pairs are scored), plus decoding the largest
        one: a request's images are decoded one after another, and a 40-million-pixel scan decoded and made RGB
        holds far more than its 31 MB of patches."""
        prepared, decoding = 0, 0
        for image in images:
            width, height = imaging.open_image(image, max_source_pixels).size
            resized_height, resized_width = imaging.smart_resize(height, width, **self._bounds())
            prepared += int(resized_height * resized_width * self._floats_per_pixel()) * 4
            decoding = max(decoding, width * height * imaging.DECODING_BYTES_PER_PIXEL)
        return prepared + decoding

    def _prepare(self, image: ImageInput) -> tuple[np.ndarray, tuple[int, int, int]]:
        if self.image_processor is None:
            raise RecipeError("this model was loaded without its image processor", "model")
        # The engine checked the operator's pixel bound from the header; Pillow's own bound is the last guard here.
        resized = imaging.fetch_image(image, **self._bounds(), max_source_pixels=2**62)
        out = self.image_processor(images=[resized], do_resize=False, return_tensors="np")
        t, h, w = (int(v) for v in out["image_grid_thw"][0])
        return np.ascontiguousarray(out["pixel_values"], dtype=np.float32), (t, h, w)

    # --- text --------------------------------------------------------------------------------------------------------

    def _budget(self, options: TextOptions) -> int:
        """Ordinary-plus-special tokens kept before the 5-token tail (the reference's max_length)."""
        if options.max_length is None or options.max_length < 0:
            return self.max_length
        budget = self.limit(options) - TAIL
        if budget < 1:
            raise RecipeError(
                f"truncate_prompt_tokens must leave room beside the {TAIL} tokens that end the Qwen3-VL prompt",
                "truncate_prompt_tokens",
            )
        return budget

    def _render(self, instruction: str, query: Item, document: Item) -> str:
        query_text, query_images = _parts(query)
        document_text, document_images = _parts(document)
        user = [
            {"type": "text", "text": "<Instruct>: " + instruction},
            *_side("<Query>:", query_text, len(query_images)),
            *_side("\n<Document>:", document_text, len(document_images)),
        ]
        messages = [
            {"role": "system", "content": [{"type": "text", "text": SYSTEM}]},
            {"role": "user", "content": user},
        ]
        return self.tokenizer.apply_chat_template(
            messages, chat_template=self.chat_template, tokenize=False, add_generation_prompt=True
        )

    def _truncate(self, ids: list[int], budget: int) -> list[int]:
        """The reference's `truncate_tokens_optimized` on all but the tail: every special token stays, and as many of
        the first ordinary tokens as leave the whole at `budget`."""
        head, tail = ids[:-TAIL], ids[-TAIL:]
        if len(head) <= budget:
            return ids
        room = budget - sum(1 for token in head if token in self.kept_ids)
        kept: list[int] = []
        ordinary = 0
        for token in head:
            if token in self.kept_ids:
                kept.append(token)
            elif ordinary < room:
                kept.append(token)
                ordinary += 1
        return kept + tail

    def _refuse_pixel_tokens(self, texts: Sequence[str | None], param: str) -> None:
        for text in texts:
            if text and any(token in text for token in PIXEL_TOKENS):
                raise RecipeError(
                    f"`{param}` holds {' or '.join(PIXEL_TOKENS)}, which Qwen3-VL reserves for image pixels; send "
                    "an image as an `image`",
                    param,
                )

    def _with_text(self, item: Item, text: str | None) -> Item:
        return text if isinstance(item, str) else Content(text, item.images)

    def _expand(self, text: str, grids: Sequence[tuple[int, int, int]]) -> str:
        """Each `<|image_pad|>` as many times as its image has tokens (one per 2x2 patches), as the processor does."""
        pieces = text.split(IMAGE_TOKEN)
        if len(pieces) != len(grids) + 1:
            raise RecipeError(
                f"the model's chat template wrote {len(pieces) - 1} {IMAGE_TOKEN} for {len(grids)} images", "model"
            )
        merge = getattr(self.image_processor, "merge_size", 2) ** 2
        expanded = pieces[0]
        for (t, h, w), piece in zip(grids, pieces[1:], strict=True):
            expanded += IMAGE_TOKEN * (t * h * w // merge) + piece
        return expanded

    def _room(self, instruction: str, query: Item, document: Item, budget: int, grids: Sequence) -> int:
        """Tokens the document's text can have before the reference's truncation would cut it (image tokens count)."""
        rendered = self._render(instruction, query, self._with_text(document, ""))
        return max(budget - (len(self.tokenizer(self._expand(rendered, grids))["input_ids"]) - TAIL), 1)

    def encode(self, queries: Sequence[Item], documents: Sequence[Item], options: TextOptions) -> EncodedPairs:
        budget = self._budget(options)
        instruction = options.instruction or DEFAULT_INSTRUCTION
        self._refuse_pixel_tokens([instruction], "instruction")
        self._refuse_pixel_tokens([_parts(q)[0] for q in queries], "query")
        self._refuse_pixel_tokens([_parts(d)[0] for d in documents], "documents")
        prepared: dict[bytes, tuple[np.ndarray, tuple[int, int, int]]] = {}
        texts: list[str] = []
        pairs: list[PairImages | None] = []
        fields: list[tuple[str, str | None]] = []  # each pair's last image field; the side whose text holds specials
        rooms: dict[tuple, int] = {}  # a document's room is the same for every pair of one query and image layout
        for query, document in zip(queries, documents, strict=True):
            images = [*_parts(query)[1], *_parts(document)[1]]
            fields.append((images[-1].field if images else "documents", self._holding_specials(query, document)))
            for image in images:
                if image.digest not in prepared:  # a query's image is prepared once for all its documents
                    prepared[image.digest] = self._prepare(image)
            pixels = tuple(prepared[image.digest][0] for image in images)
            grids = tuple(prepared[image.digest][1] for image in images)
            if options.truncate:
                query, document = self._cut(instruction, query, document, budget, options, grids, rooms)
            texts.append(self._expand(self._render(instruction, query, document), grids))
            pairs.append(PairImages(pixels, grids) if images else None)
        rows = self.tokenizer(texts)["input_ids"]
        if options.truncate:
            rows = [self._truncate(ids, budget) for ids in rows]
            self._refuse_overlong(rows, fields, budget)
        return EncodedPairs(rows, images=pairs if any(pairs) else None)

    def _holding_specials(self, query: Item, document: Item) -> str | None:
        """The side ("documents" or "query") whose text writes special tokens out (`<|im_start|>`), if any."""
        for side, item in (("documents", document), ("query", query)):
            text = _parts(item)[0]
            if text and "<|" in text and any(token in text for token in self.kept_texts):
                return side
        return None

    def _refuse_overlong(
        self, rows: Sequence[list[int]], fields: Sequence[tuple[str, str | None]], budget: int
    ) -> None:
        """Truncation never cuts an image, so a pair whose images (with the prompt's special tokens) pass the budget
        stays too long. The reference would run it; we refuse it, as vLLM refuses a prompt over max_model_len: one
        such pair could otherwise hold the model for minutes (32 images of 1,280 tokens each). Nor does it cut a
        special token written in the text, so a text of them stays too long as well: the message names that cause."""
        for ids, (field, text_side) in zip(rows, fields, strict=True):
            images = ids.count(self.image_token_id)
            if text_side is not None and len(ids) - images > budget + TAIL:  # too long even without its images
                beside = f" (and its images take {images:,})" if images else ""
                raise RecipeError(
                    f"`{text_side}` writes out special tokens (such as `<|im_start|>`), which Qwen3-VL's truncation "
                    f"keeps whole as its reference does: the pair makes {len(ids):,} tokens{beside}, over the model's "
                    f"limit of {budget + TAIL:,}; remove special-token strings from the text",
                    text_side,
                )
            if len(ids) > budget + TAIL:
                raise RecipeError(
                    f"`{field}`: the pair's images take {images:,} tokens, which with the "
                    f"prompt make {len(ids):,}, over the model's limit of {budget + TAIL:,}; send fewer or smaller "
                    "images",
                    field,
                )

    def _cut(
        self,
        instruction: str,
        query: Item,
        document: Item,
        budget: int,
        options: TextOptions,
        grids: Sequence,
        rooms: dict[tuple, int],
    ) -> tuple[Item, Item]:
        """Texts cut before tokenizing: far beyond the budget nothing can be kept, and TEI's left side or Cohere's
        per-document cap cut the document's text alone."""
        query_text, document_text = _parts(query)[0], _parts(document)[0]
        if query_text:
            query = self._with_text(query, self.long_text.cut(query_text, budget + _SLACK)[0])
        if not document_text:
            return query, document
        if options.side == "left" or options.max_document_tokens:
            key = (_parts(query)[0], len(_parts(query)[1]), len(_parts(document)[1]), tuple(grids))
            if (room := rooms.get(key)) is None:
                room = rooms[key] = self._room(instruction, query, document, budget, grids)
            cap = min(room, options.max_document_tokens or room)
            return query, self._with_text(document, self.cut_documents([document_text], cap, options.side)[0])
        return query, self._with_text(document, self.long_text.cut(document_text, budget + _SLACK)[0])

    def document_room(self, query: str, options: TextOptions) -> int:
        budget = self._budget(options)
        instruction = options.instruction or DEFAULT_INSTRUCTION
        query = self.long_text.cut(query, budget + _SLACK)[0]
        room = self._room(instruction, query, "", budget, ())
        return min(room, options.max_document_tokens or room)
