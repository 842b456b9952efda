"""Queries and documents as requests send them (texts, Jina's `{text?, image?}`, vLLM's content parts) made into what
the engine scores: a `str`, or a `Content` holding each image's bytes.

The HTTP layer checks shape and size only: how many images, how many bytes, whether a reference is a data URI,
base64 or an allowed URL. Decoding pixels is the recipe's work, on a preparation thread.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass

from rerank_server.api.errors import invalid
from rerank_server.api.image_urls import ImageFetcher
from rerank_server.api.wire import ImagePart, MultiModal, RerankDocument, TextDocument, TextPart
from rerank_server.api.wire import Item as WireItem
from rerank_server.recipes import Content, ImageInput, Item
from rerank_server.settings import Settings

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]{0,15}:")
_URL_FETCHES = 8  # image URLs of one request fetched at once


@dataclass
class Pending:
    """A query or document whose images are still references (data URI, base64 or URL) with their fields."""

    text: str | None
    references: list[tuple[str, str]]


Parsed = str | Pending


def parse_one(item: WireItem, field: str) -> Parsed:
    """One query or document (an item of a list)."""
    if isinstance(item, str):
        return item
    if isinstance(item, TextDocument):
        if item.image is None:
            return item.text or ""
        return Pending(item.text, [(item.image, f"{field}.image")])
    texts = [part.text for part in item.content if isinstance(part, TextPart)]
    references = [
        (part.image_url.url, f"{field}.content.{i}.image_url.url")
        for i, part in enumerate(item.content)
        if isinstance(part, ImagePart)
    ]
    text = "".join(texts) if texts else None  # the template writes text parts one after another
    return Pending(text, references) if references else text or ""


def parse_many(items: WireItem | Sequence[WireItem], field: str) -> list[Parsed]:
    """A list of queries or documents; vLLM's `{content: [parts]}` in place of the list is one item per part."""
    if isinstance(items, MultiModal):
        return [
            part.text
            if isinstance(part, TextPart)
            else Pending(None, [(part.image_url.url, f"{field}.content.{i}.image_url.url")])
            for i, part in enumerate(items.content)
        ]
    if isinstance(items, str | TextDocument):
        return [parse_one(items, field)]
    return [parse_one(item, f"{field}.{i}") for i, item in enumerate(items)]


def echoes(items: WireItem | Sequence[WireItem]) -> list[RerankDocument]:
    """Each document as it was sent, for `return_documents`."""
    if isinstance(items, MultiModal):
        return [
            RerankDocument(text=part.text)
            if isinstance(part, TextPart)
            else RerankDocument(multi_modal=part.model_dump())
            for part in items.content
        ]
    documents: list[RerankDocument] = []
    for item in [items] if isinstance(items, str | TextDocument) else items:
        if isinstance(item, str):
            documents.append(RerankDocument(text=item))
        elif isinstance(item, TextDocument):
            documents.append(RerankDocument(text=item.text, image=item.image))
        else:
            documents.append(RerankDocument(multi_modal=[part.model_dump() for part in item.content]))
    return documents


def decode_base64(reference: str, field: str, max_bytes: int) -> bytes:
    """A data URI's or bare base64's bytes, refused above `max_bytes` before decoding."""
    data = reference
    if reference[:5].lower() == "data:":
        header, comma, data = reference.partition(",")
        if not comma or not header.lower().startswith("data:image/") or not header.lower().endswith(";base64"):
            raise invalid(f"`{field}`: a data URI must be `data:image/<type>;base64,<data>`", field)
    compact = "".join(data.split())  # line-wrapped base64 is base64 too; the body limit bounds this string
    if len(compact) > (max_bytes + 2) // 3 * 4:  # base64 grows by 4/3: refused before decoding
        raise invalid(f"`{field}` is larger than {max_bytes:,} bytes (RERANK_MAX_IMAGE_BYTES)", field)
    compact = compact.translate(str.maketrans("-_", "+/"))
    try:
        raw = base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise invalid(f"`{field}` is neither a data URI, base64 nor an http(s) URL of an image", field) from None
    if not raw:
        raise invalid(f"`{field}` is empty", field)
    if len(raw) > max_bytes:
        raise invalid(f"`{field}` is larger than {max_bytes:,} bytes (RERANK_MAX_IMAGE_BYTES)", field)
    return raw


def first_image(groups: Sequence[Sequence[Parsed]]) -> str | None:
    """The field of the first image reference in `groups`, None when they hold none."""
    return next((item.references[0][1] for group in groups for item in group if isinstance(item, Pending)), None)


def file_bytes(groups: Sequence[Sequence[Parsed]], max_bytes: int) -> int:
    """The most bytes the image files of `groups` can take once read, known before any is: a URL's body at most
    `max_bytes` (RERANK_MAX_IMAGE_BYTES), base64 three bytes per four characters."""
    total = 0
    for reference, _ in (
        ref for group in groups for item in group if isinstance(item, Pending) for ref in item.references
    ):
        total += (
            max_bytes if _is_url(reference) else min(len(reference.partition(",")[2] or reference) * 3 // 4, max_bytes)
        )
    return total


def read_bytes(groups: Sequence[Sequence[Item]]) -> int:
    """The bytes the image files of resolved `groups` hold (each image counted once per request)."""
    images = {
        id(image): len(image.data)
        for group in groups
        for item in group
        if isinstance(item, Content)
        for image in item.images
    }
    return sum(images.values())


def _is_url(reference: str) -> bool:
    return reference[:8].lower().startswith(("http://", "https://"))


async def resolve(groups: Sequence[list[Parsed]], settings: Settings, field: str = "documents") -> list[list[Item]]:
    """`groups` with every image reference turned into its bytes: base64 decoded, URLs fetched (when allowed), all
    within the request's limits; a refusal is a 400 naming the field."""
    pending = [item for group in groups for item in group if isinstance(item, Pending)]
    count = sum(len(item.references) for item in pending)
    if count > settings.max_images_per_request:
        raise invalid(
            f"the request holds {count} images, over the limit of {settings.max_images_per_request} "
            "(RERANK_MAX_IMAGES_PER_REQUEST)",
            field,
        )
    if not pending:
        return [list(group) for group in groups]  # type: ignore[arg-type]
    urls: list[tuple[str, str]] = []
    inline: list[tuple[str, str]] = []
    for reference, where in (ref for item in pending for ref in item.references):
        if _is_url(reference):
            if not settings.image_urls:
                raise invalid(
                    f"`{where}` is a URL, and this server does not fetch image URLs (RERANK_IMAGE_URLS is off); send "
                    "the image as a data URI or base64",
                    where,
                )
            urls.append((reference, where))
        elif _SCHEME.match(reference) and reference[:5].lower() != "data:":
            raise invalid(f"`{where}`: an image is a data URI, base64 or an http(s) URL", where)
        else:
            inline.append((reference, where))
    # Off the event loop: a body's worth of base64 (32 MiB) takes tens of milliseconds to decode.
    resolved = await asyncio.to_thread(_decode_all, inline, settings.max_image_bytes)  # by field
    if urls:
        resolved |= await _fetch_all(urls, settings)
    return [
        [
            item
            if isinstance(item, str)
            else Content(item.text, tuple(resolved[where] for _, where in item.references))
            for item in group
        ]
        for group in groups
    ]


def _decode_all(references: list[tuple[str, str]], max_bytes: int) -> dict[str, ImageInput]:
    return {where: ImageInput(decode_base64(reference, where, max_bytes), where) for reference, where in references}


async def _fetch_all(urls: list[tuple[str, str]], settings: Settings) -> dict[str, ImageInput]:
    limit = asyncio.Semaphore(_URL_FETCHES)
    fetcher = ImageFetcher(
        max_bytes=settings.max_image_bytes, timeout_s=settings.image_url_timeout_s,
        allow_private=settings.image_urls_allow_private,
    )  # fmt: skip

    async def one(url: str, where: str) -> tuple[str, ImageInput]:
        async with limit:
            return where, ImageInput(await fetcher.fetch(url, where), where)

    try:
        async with fetcher, asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(url, where)) for url, where in urls]
    except BaseExceptionGroup as failed:
        raise failed.exceptions[0] from None  # the first refusal; the other fetches were cancelled with it
    return dict(task.result() for task in tasks)
