"""Recipes by name, and which recipe a model folder is scored with.

Adding a reranker family is one module here (a `Recipe` subclass) plus its entry in `RECIPES` and a test that
compares it with the family's reference code.
"""

from __future__ import annotations

from rerank_server.recipes.base import (
    DEFAULT_OPTIONS,
    Content,
    DocumentList,
    EncodedPairs,
    ImageInput,
    Item,
    LastTokenHead,
    LatePair,
    ListPass,
    PairImages,
    Recipe,
    RecipeError,
    TextOptions,
)
from rerank_server.recipes.bge_gemma import BgeGemmaRecipe
from rerank_server.recipes.colbert import ColbertRecipe
from rerank_server.recipes.cross_encoder import CrossEncoderRecipe
from rerank_server.recipes.listwise import JinaV3Recipe, JinaV35Recipe
from rerank_server.recipes.mxbai_v2 import MxbaiV2Recipe
from rerank_server.recipes.qwen3 import Qwen3Recipe
from rerank_server.recipes.qwen3_vl import Qwen3VLRecipe

__all__ = [
    "DEFAULT_OPTIONS",
    "RECIPES",
    "Content",
    "DocumentList",
    "EncodedPairs",
    "ImageInput",
    "Item",
    "LastTokenHead",
    "LatePair",
    "ListPass",
    "PairImages",
    "Recipe",
    "RecipeError",
    "TextOptions",
    "recipe_from_id",
    "recipe_from_prompt",
]

RECIPES: dict[str, type[Recipe]] = {
    recipe.name: recipe
    for recipe in (
        CrossEncoderRecipe, Qwen3Recipe, BgeGemmaRecipe, MxbaiV2Recipe, Qwen3VLRecipe, ColbertRecipe, JinaV3Recipe,
        JinaV35Recipe,
    )
}  # fmt: skip

# Text that only a family's own prompt contains: a chat template (sentence-transformers' causal-LM CrossEncoder
# folders carry one) that holds it is that family's prompt.
_PROMPT_SIGNATURES = {
    "qwen3": "Judge whether the Document meets the requirements based on the Query and the Instruct provided",
    "bge-gemma": "Given a query A and a passage B, determine whether the passage contains an answer",
    "mxbai-v2": "You are a search relevance expert who evaluates how well documents match search queries",
}
# Id fragments of the published checkpoints (and conversions of them, e.g. tomaarsen/Qwen3-Reranker-0.6B-seq-cls).
_ID_FRAGMENTS = {
    "qwen3-reranker": "qwen3",
    "qwen3-vl-reranker": "qwen3-vl",
    "bge-reranker-v2-gemma": "bge-gemma",
    "mxbai-rerank-base-v2": "mxbai-v2",
    "mxbai-rerank-large-v2": "mxbai-v2",
    "jina-reranker-v3.5": "jina-v3.5",  # before v3, which its id also contains
    "jina-reranker-v3": "jina-v3",
}


def recipe_from_id(model_id: str) -> str | None:
    """The recipe a model id names, for the published LLM rerankers and conversions of them."""
    lowered = model_id.lower()
    return next((recipe for fragment, recipe in _ID_FRAGMENTS.items() if fragment in lowered), None)


def recipe_from_prompt(template: str) -> str | None:
    """The recipe whose prompt a chat template spells out, if any."""
    return next((recipe for recipe, signature in _PROMPT_SIGNATURES.items() if signature in template), None)
