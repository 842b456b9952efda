"""Qwen3-VL-Reranker's own published scoring code, re-implemented here as its authors wrote it, as the reference the
server is compared with. Nothing here comes from `rerank_server`: a slip in the server's messages, resizing or
truncation must fail a test.

- `Qwen3VLReranker` of QwenLM/Qwen3-VL-Embedding (`src/models/qwen3_vl_reranker.py`): format_mm_content,
  format_mm_instruction, tokenize (truncate_tokens_optimized, left padding), compute_scores (sigmoid of the last
  hidden state through lm_head[yes] - lm_head[no]), process (one pair per forward). Its MAX_LENGTH / MAX_PIXELS are the
  first published ones (8192; 1280 tokens per image).
- qwen-vl-utils 0.0.14 (`qwen_vl_utils/vision_process.py`): smart_resize, to_rgb, fetch_image for PIL images and data
  URIs, process_vision_info for images. It imports torchvision at module level, which cannot be installed beside this
  machine's torch, hence the copy.
- transformers 5.23 differs from the version the reference was written for in two ways, bridged as little as
  possible: `AutoProcessor` needs torchvision (for Qwen3-VL's video processor), so the processor is built from its
  tokenizer and image processor; and the model needs `mm_token_type_ids` beside the ids, which the reference's
  re-padding leaves stale, so it is made again from the final ids by the processor's own `create_mm_token_type_ids`.
"""

from __future__ import annotations

import base64
import copy
import json
import math
from io import BytesIO
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoTokenizer, Qwen3VLForConditionalGeneration, Qwen3VLProcessor

MAX_LENGTH = 8192
IMAGE_BASE_FACTOR = 16
IMAGE_FACTOR = IMAGE_BASE_FACTOR * 2
MIN_PIXELS = 4 * IMAGE_FACTOR * IMAGE_FACTOR  # 4 tokens
MAX_PIXELS = 1280 * IMAGE_FACTOR * IMAGE_FACTOR  # 1280 tokens

# --- qwen-vl-utils 0.0.14 ------------------------------------------------------------------------------------------

MAX_RATIO = 200
SPATIAL_MERGE_SIZE = 2
IMAGE_MIN_TOKEN_NUM = 4
IMAGE_MAX_TOKEN_NUM = 16384


def round_by_factor(number: int, factor: int) -> int:
    return round(number / factor) * factor


def ceil_by_factor(number: int, factor: int) -> int:
    return math.ceil(number / factor) * factor


def floor_by_factor(number: int, factor: int) -> int:
    return math.floor(number / factor) * factor


def smart_resize(height, width, factor, min_pixels=None, max_pixels=None):
    max_pixels = max_pixels if max_pixels is not None else (IMAGE_MAX_TOKEN_NUM * factor**2)
    min_pixels = min_pixels if min_pixels is not None else (IMAGE_MIN_TOKEN_NUM * factor**2)
    assert max_pixels >= min_pixels, "The max_pixels of image must be greater than or equal to min_pixels."
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


def fetch_image(ele, image_patch_size: int = 14) -> Image.Image:
    if "image" in ele:  # noqa: SIM108 - as published
        image = ele["image"]
    else:
        image = ele["image_url"]
    image_obj = None
    patch_factor = int(image_patch_size * SPATIAL_MERGE_SIZE)
    if isinstance(image, Image.Image):
        image_obj = image
    elif image.startswith("data:image"):  # noqa: SIM102 - as published
        if "base64," in image:
            _, base64_data = image.split("base64,", 1)
            data = base64.b64decode(base64_data)
            with BytesIO(data) as bio:
                image_obj = copy.deepcopy(Image.open(bio))
    if image_obj is None:
        raise ValueError(f"Unrecognized image input, support local path, http url, base64 and PIL.Image, got {image}")
    image = to_rgb(image_obj)
    width, height = image.size
    min_pixels = ele.get("min_pixels", IMAGE_MIN_TOKEN_NUM * patch_factor**2)
    max_pixels = ele.get("max_pixels", IMAGE_MAX_TOKEN_NUM * patch_factor**2)
    resized_height, resized_width = smart_resize(
        height, width, factor=patch_factor, min_pixels=min_pixels, max_pixels=max_pixels
    )
    image = image.resize((resized_width, resized_height))
    return image


def process_vision_info(conversations, image_patch_size: int = 14):
    vision_infos = []
    if isinstance(conversations[0], dict):
        conversations = [conversations]
    for conversation in conversations:
        for message in conversation:
            if isinstance(message["content"], list):
                for ele in message["content"]:
                    if "image" in ele or "image_url" in ele or ele.get("type", "text") in ("image", "image_url"):
                        vision_infos.append(ele)
    image_inputs = [fetch_image(info, image_patch_size=image_patch_size) for info in vision_infos]
    return image_inputs or None


# --- transformers 5.23 without torchvision ----------------------------------------------------------------------


class ImageOnlyQwen3VLProcessor(Qwen3VLProcessor):
    """Qwen3VLProcessor with no video slot (ProcessorMixin reads its attributes from `__init__`'s parameters)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, chat_template=chat_template, **kwargs)


def load_processor(folder: Path) -> ImageOnlyQwen3VLProcessor:
    """What `AutoProcessor.from_pretrained(folder, padding_side='left')` builds, images only."""
    tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="left")
    chat_template = json.loads((folder / "chat_template.json").read_text())["chat_template"]
    return ImageOnlyQwen3VLProcessor(AutoImageProcessor.from_pretrained(folder), tokenizer, chat_template=chat_template)


# --- Qwen3VLReranker -------------------------------------------------------------------------------------------------


class Qwen3VLRerankerReference:
    def __init__(
        self,
        folder: Path,
        max_length: int = MAX_LENGTH,
        min_pixels: int = MIN_PIXELS,
        max_pixels: int = MAX_PIXELS,
        default_instruction: str = "Given a search query, retrieve relevant candidates that answer the query.",
    ) -> None:
        self.max_length = max_length
        self.min_pixels = min_pixels
        self.max_pixels = max_pixels
        self.default_instruction = default_instruction
        lm = Qwen3VLForConditionalGeneration.from_pretrained(folder, dtype=torch.float32)
        self.model = lm.model
        self.processor = load_processor(folder)
        self.model.eval()
        token_true_id = self.processor.tokenizer.get_vocab()["yes"]
        token_false_id = self.processor.tokenizer.get_vocab()["no"]
        self.score_linear = self.get_binary_linear(lm, token_true_id, token_false_id)
        self.score_linear.eval()
        self.score_linear.to(self.model.dtype)

    def get_binary_linear(self, model, token_yes: int, token_no: int) -> torch.nn.Linear:
        lm_head_weights = model.lm_head.weight.data
        weight_yes = lm_head_weights[token_yes]
        weight_no = lm_head_weights[token_no]
        D = weight_yes.size()[0]  # noqa: N806 - as published
        linear_layer = torch.nn.Linear(D, 1, bias=False)
        with torch.no_grad():
            linear_layer.weight[0] = weight_yes - weight_no
        return linear_layer

    @torch.no_grad()
    def compute_scores(self, inputs) -> list[float]:
        batch_scores = self.model(**inputs).last_hidden_state[:, -1]
        scores = self.score_linear(batch_scores)
        scores = torch.sigmoid(scores).squeeze(-1).cpu().detach().tolist()
        return scores

    def truncate_tokens_optimized(self, tokens: list, max_length: int, special_tokens: list) -> list:
        if len(tokens) <= max_length:
            return tokens
        special_tokens_set = set(special_tokens)
        num_special = sum(1 for token in tokens if token in special_tokens_set)
        num_non_special_to_keep = max_length - num_special
        final_tokens = []
        non_special_kept_count = 0
        for token in tokens:
            if token in special_tokens_set:
                final_tokens.append(token)
            elif non_special_kept_count < num_non_special_to_keep:
                final_tokens.append(token)
                non_special_kept_count += 1
        return final_tokens

    def tokenize(self, pairs: list) -> dict:
        max_length = self.max_length
        text = self.processor.apply_chat_template(pairs, tokenize=False, add_generation_prompt=True)
        images = process_vision_info(pairs, image_patch_size=16)
        inputs = self.processor(text=text, images=images, truncation=False, padding=False, do_resize=False)
        for i, _ele in enumerate(inputs["input_ids"]):
            inputs["input_ids"][i] = (
                self.truncate_tokens_optimized(
                    inputs["input_ids"][i][:-5], max_length, self.processor.tokenizer.all_special_ids
                )
                + inputs["input_ids"][i][-5:]
            )
        temp_inputs = self.processor.tokenizer.pad(
            {"input_ids": inputs["input_ids"]}, padding=True, return_tensors="pt", max_length=self.max_length
        )
        for key in temp_inputs:
            inputs[key] = temp_inputs[key]
        # transformers 5.23: the model builds 3-D positions from mm_token_type_ids, made here from the final ids.
        inputs["mm_token_type_ids"] = (
            torch.tensor(self.processor.create_mm_token_type_ids(inputs["input_ids"].tolist()))
            * inputs["attention_mask"]
        )
        if images is not None:
            inputs["pixel_values"] = torch.as_tensor(inputs["pixel_values"])
            inputs["image_grid_thw"] = torch.as_tensor(inputs["image_grid_thw"])
        return inputs

    def format_mm_content(self, text=None, image=None, prefix="Query:") -> list[dict]:
        content = []
        content.append({"type": "text", "text": prefix})
        if text is None:
            texts = []
        elif isinstance(text, str):
            texts = [text]
        else:
            texts = text
        if image is None:
            images = []
        elif not isinstance(image, list):
            images = [image]
        else:
            images = image
        if not texts and not images:
            content.append({"type": "text", "text": "NULL"})
            return content
        for img in images:
            image_content = None
            if isinstance(img, Image.Image):  # noqa: SIM114 - as published (a path string gets "file://" there)
                image_content = img
            elif isinstance(img, str):
                image_content = img
            else:
                raise TypeError(f"Unrecognized image type: {type(img)}")
            if image_content:
                content.append(
                    {
                        "type": "image",
                        "image": image_content,
                        "min_pixels": self.min_pixels,
                        "max_pixels": self.max_pixels,
                    }
                )
        for txt in texts:
            content.append({"type": "text", "text": txt})
        return content

    def format_mm_instruction(
        self, query_text=None, query_image=None, doc_text=None, doc_image=None, instruction=None
    ) -> list[dict]:
        inputs = []
        inputs.append(
            {
                "role": "system",
                "content": [
                    {
                        "type": "text",
                        "text": 'Judge whether the Document meets the requirements based on the Query and the Instruct provided. Note that the answer can only be "yes" or "no".',  # noqa: E501
                    }
                ],
            }
        )
        if isinstance(query_text, tuple):
            instruct, query_text = query_text
        else:
            instruct = instruction
        contents = []
        contents.append({"type": "text", "text": "<Instruct>: " + (instruct or self.default_instruction)})
        query_content = self.format_mm_content(query_text, query_image, prefix="<Query>:")
        contents.extend(query_content)
        doc_content = self.format_mm_content(doc_text, doc_image, prefix="\n<Document>:")
        contents.extend(doc_content)
        inputs.append({"role": "user", "content": contents})
        return inputs

    def pairs(self, inputs: dict) -> list[list[dict]]:
        instruction = inputs.get("instruction", self.default_instruction)
        query = inputs.get("query", {})
        documents = inputs.get("documents", [])
        return [
            self.format_mm_instruction(
                query.get("text", None),
                query.get("image", None),
                document.get("text", None),
                document.get("image", None),
                instruction=instruction,
            )
            for document in documents
        ]

    def process(self, inputs: dict) -> list[float]:
        """The score of each document of `{"query": {text?, image?}, "documents": [{text?, image?}], "instruction"?}`
        (images as PIL images or data URIs), one pair per forward as published."""
        final_scores = []
        for pair in self.pairs(inputs):
            tokenized_inputs = self.tokenize([pair])
            scores = self.compute_scores(tokenized_inputs)
            final_scores.extend(scores)
        return final_scores

    def token_ids(self, inputs: dict) -> list[list[int]]:
        """Each pair's ids as `tokenize` makes them for its forward."""
        return [self.tokenize([pair])["input_ids"][0].tolist() for pair in self.pairs(inputs)]
