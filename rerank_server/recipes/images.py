"""Images sent to be ranked: read safely, and resized as Qwen's reference code resizes them.

Reading: Pillow, restricted to the formats documents and screenshots come in (no plugin that runs an outside
program, as EPS does), the size read from the header and refused above a bound before any pixel is decoded (a
decompression bomb of a few KB would otherwise claim gigabytes), truncated data refused rather than filled in.

Resizing: `smart_resize`, `to_rgb` and the resize step of `fetch_image` are copied from qwen-vl-utils 0.0.14
(`qwen_vl_utils/vision_process.py`), the package Qwen's rerankers call. It cannot be a dependency: it imports
torchvision at module level, and its fetch reads local paths and any URL. The arithmetic is copied as written (only
the defaults of `smart_resize`'s bounds are gone: the recipe always passes them), because a pixel rounded differently
changes the image's token count and every score after it.
"""

from __future__ import annotations

import io
import math

from PIL import Image, UnidentifiedImageError

from rerank_server.errors import InvalidInputError
from rerank_server.recipes.base import ImageInput

# What documents, slides and screenshots come as. Pillow's other readers (EPS runs Ghostscript, and formats nobody
# sends a reranker) stay out of reach of a request.
FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")

MAX_RATIO = 200
# Memory one image takes while `fetch_image` turns it into RGB: Pillow keeps RGB and RGBA in 4 bytes a pixel, and an
# RGBA image is decoded (4), laid on a white background (4) through its alpha band (1) into an RGB copy (4).
DECODING_BYTES_PER_PIXEL = 13


class ImageError(InvalidInputError):
    """An image that cannot be ranked as sent (400 naming its field)."""


def open_image(image: ImageInput, max_pixels: int) -> Image.Image:
    """The image with its header read and checked, its pixels not decoded yet."""
    try:
        opened = Image.open(io.BytesIO(image.data), formats=FORMATS)
    except Image.DecompressionBombError as exc:  # Pillow's own bound, met while reading the header
        raise ImageError(
            f"`{image.field}` claims more pixels than any image this server reads (RERANK_MAX_IMAGE_PIXELS): {exc}",
            image.field,
        ) from exc
    except UnidentifiedImageError as exc:
        raise ImageError(
            f"`{image.field}` is not an image this server reads ({', '.join(FORMATS)})", image.field
        ) from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"`{image.field}` cannot be read as an image ({exc})", image.field) from exc
    width, height = opened.size
    if width < 1 or height < 1:
        raise ImageError(f"`{image.field}` has no pixels ({width}x{height})", image.field)
    if width * height > max_pixels:
        raise ImageError(
            f"`{image.field}` is {width}x{height} pixels, over the limit of {max_pixels:,} (RERANK_MAX_IMAGE_PIXELS)",
            image.field,
        )
    if max(width, height) / min(width, height) > MAX_RATIO:
        raise ImageError(
            f"`{image.field}` is {width}x{height}: its sides' ratio must be below {MAX_RATIO}, as Qwen's image "
            "processing requires",
            image.field,
        )
    return opened


def load_image(image: ImageInput, max_pixels: int) -> Image.Image:
    """The image decoded (its first frame), after `open_image`'s checks."""
    opened = open_image(image, max_pixels)
    try:
        # Pillow's own bound is higher than ours; it still guards a header whose frames disagree with its first.
        opened.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, MemoryError) as exc:
        raise ImageError(f"`{image.field}` cannot be decoded ({exc})", image.field) from exc
    return opened


# --- qwen-vl-utils 0.0.14, vision_process.py -----------------------------------------------------------


def round_by_factor(number: int, factor: int) -> int:
    """Returns the closest integer to 'number' that is divisible by 'factor'."""
    return round(number / factor) * factor


def ceil_by_factor(number: int | float, factor: int) -> int:
    """Returns the smallest integer greater than or equal to 'number' that is divisible by 'factor'."""
    return math.ceil(number / factor) * factor


def floor_by_factor(number: int | float, factor: int) -> int:
    """Returns the largest integer less than or equal to 'number' that is divisible by 'factor'."""
    return math.floor(number / factor) * factor


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Height and width divisible by `factor`, within [min_pixels, max_pixels], keeping the aspect ratio as nearly as
    possible. (qwen-vl-utils raises ValueError for a ratio above MAX_RATIO; `open_image` refuses those first.)"""
    if max(height, width) / min(height, width) > MAX_RATIO:
        raise ValueError(
            f"absolute aspect ratio must be smaller than {MAX_RATIO}, got {max(height, width) / min(height, width)}"
        )
    h_bar = max(factor, round_by_factor(height, factor))
    w_bar = max(factor, round_by_factor(width, factor))
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = floor_by_factor(height / beta, factor)
        w_bar = floor_by_factor(width / beta, factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = ceil_by_factor(height * beta, factor)
        w_bar = ceil_by_factor(width * beta, factor)
    return h_bar, w_bar


def to_rgb(pil_image: Image.Image) -> Image.Image:
    if pil_image.mode == "RGBA":
        white_background = Image.new("RGB", pil_image.size, (255, 255, 255))
        white_background.paste(pil_image, mask=pil_image.split()[3])  # Use alpha channel as mask
        return white_background
    else:
        return pil_image.convert("RGB")


def fetch_image(
    image: ImageInput, *, factor: int, min_pixels: int, max_pixels: int, max_source_pixels: int
) -> Image.Image:
    """qwen-vl-utils' `fetch_image` for bytes already in hand: decoded, RGB, resized by `smart_resize` with Pillow's
    default filter (bicubic), as the reference passes it to the image processor."""
    decoded = to_rgb(load_image(image, max_source_pixels))
    width, height = decoded.size
    resized_height, resized_width = smart_resize(
        height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels
    )
    return decoded.resize((resized_width, resized_height))
