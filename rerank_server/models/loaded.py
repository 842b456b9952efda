"""One loaded reranker: its recipe (text → token ids) and its backend (token ids → logits).

Hand-written rather than `CrossEncoder.predict` because the server needs what predict does not give: the token count
of every pair (for `usage`) from the same tokenization the model consumes, tokenizing on several threads while the
model computes, and forward passes that the batcher plans (`rerank_server.engine.passes`). Tokenization and weights
are the reference's: each recipe re-implements its family's published code, and the tests compare the two.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rerank_server.backends import Backend, CpuPrecision, is_cpu_runtime, load_backend
from rerank_server.cpu import cpu_class, has_amx_bf16, has_native_bf16, usable_cpus
from rerank_server.models.embedding_cache import EmbeddingCache, new_owner
from rerank_server.models.late_interaction import QueryMemo, late_interaction_scores
from rerank_server.models.listwise import listwise_scores
from rerank_server.recipes import DEFAULT_OPTIONS, RECIPES, EncodedPairs, ImageInput, Item, Recipe, TextOptions

if TYPE_CHECKING:
    import torch

    from rerank_server.models.store import StoredReranker

logger = logging.getLogger("bentoml")


def default_tokenizer_copies(device: str) -> int:
    """Tokenizer copies per model when RERANK_TOKENIZERS is unset: on a GPU one per usable CPU, at most 4; on a CPU
    one, since there the forward pass needs every core and tokenizing is a small part of the work.

    One fast tokenizer on one thread makes a few thousand pairs/s of 256 tokens (docs/benchmarks.md, Tokenization):
    less than a GPU forwards bge-reranker-base. Copies tokenize in parallel (the Rust tokenizer releases the GIL while
    it encodes).
    """
    return max(1, min(4, usable_cpus())) if device.startswith("cuda") else 1


class RecipePool:
    """Copies of one recipe, each with a tokenizer of its own, lent to one thread at a time.

    A Hugging Face tokenizer cannot be shared between threads (its truncation and padding settings are state), so
    instead of one lock per model each tokenizing thread borrows a copy. Copies are made when all are busy, up to
    `size`: a model that is only ever asked by one thread at a time keeps one.
    """

    def __init__(self, make: Callable[[Any], Recipe], tokenizer: Any, size: int) -> None:
        self._make = make
        self.first = make(tokenizer)
        self.size = max(1, size)
        self._free = [self.first]
        self._copies = 1
        self._changed = threading.Condition()

    @property
    def copies(self) -> int:
        return self._copies

    @contextmanager
    def borrow(self) -> Iterator[Recipe]:
        """A recipe no other thread uses until the block ends (waits while `size` copies are all lent)."""
        with self._changed:
            while not self._free and self._copies >= self.size:
                self._changed.wait()
            recipe = self._free.pop() if self._free else None
            if recipe is None:
                self._copies += 1
        if recipe is None:
            try:
                recipe = self._make(copy.deepcopy(self.first.tokenizer))
            except BaseException:
                with self._changed:
                    self._copies -= 1
                    self._changed.notify()
                raise
        try:
            yield recipe
        finally:
            with self._changed:
                self._free.append(recipe)
                self._changed.notify()


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


class LoadedReranker:
    """A reranker ready to score: text → tokens on any thread (a recipe copy each), tokens → logits a pass at a time."""

    def __init__(self, recipes: RecipePool, backend: Backend, embeddings: EmbeddingCache | None = None) -> None:
        self.recipes = recipes
        self.backend = backend
        # Late-interaction models: the worker's document-embedding cache, and this copy's own keys in it.
        self.embeddings = embeddings
        self.owner = new_owner()
        self.query_memo = QueryMemo()  # (stays empty for other models)
        # One forward at a time keeps the accelerator's memory use predictable (the batcher's thread is the only
        # caller while serving; tools may call from anywhere).
        self._forward_lock = threading.Lock()

    @property
    def recipe(self) -> Recipe:
        """The recipe's first copy, for what does not tokenize: its name, limits, padding and instruction use."""
        return self.recipes.first

    @property
    def device(self) -> str:
        return self.backend.device

    @property
    def weight_bytes(self) -> int:
        return self.backend.weight_bytes

    def limit(self, options: TextOptions) -> int:
        """Most tokens of one pair under `options`; refuses options the model cannot apply (RecipeError)."""
        return self.recipe.limit(options)

    def windows(self, query: str, document: str, max_windows: int, options: TextOptions) -> list[str]:
        """`document` cut into at most `max_windows` pieces that each fit beside `query` (see Recipe.windows)."""
        with self.recipes.borrow() as recipe:
            return recipe.windows(query, document, max_windows, options)

    def encode(
        self, queries: Sequence[Item], documents: Sequence[Item], options: TextOptions = DEFAULT_OPTIONS
    ) -> EncodedPairs:
        """Token ids of each (queries[i], documents[i]) pair, as the model's reference code makes them (and, for a
        multimodal model, each pair's images decoded, resized and cut into patches: CPU work, done here and never on
        the model thread)."""
        if not documents:
            return EncodedPairs([])
        with self.recipes.borrow() as recipe:
            return recipe.encode(queries, documents, options)

    def image_bytes(self, images: Sequence[ImageInput], max_source_pixels: int) -> int:
        """Memory that preparing `images` will take, from their headers; refuses unreadable or oversized images."""
        if not images:
            return 0
        with self.recipes.borrow() as recipe:
            return recipe.image_bytes(images, max_source_pixels)

    def forward(self, encoded: EncodedPairs, on_pass: Callable[[], None] | None = None) -> torch.Tensor:
        """One forward pass over `encoded`, padded as the recipe pads: a float32 logit per pair, possibly still on
        the device (the caller copies the passes of a batch back together, once). Listwise lists are read in passes
        of their own inside this one call: `on_pass` is called after each (other models: one pass, never called)."""
        if encoded.lists is not None:  # never padded together: a list's scores must depend on that list alone
            with self._forward_lock:
                return listwise_scores(self.backend, encoded.lists, on_pass)  # type: ignore[arg-type]
        if encoded.late is not None:  # queries and documents are padded apart, there
            with self._forward_lock:
                late = (encoded.late, self.embeddings, self.owner, self.query_memo)
                return late_interaction_scores(self.backend, *late)  # type: ignore[arg-type]
        side, pad_id = self.recipe.padding_side, self.recipe.pad_id
        ids, mask = pad(encoded.input_ids, pad_id, side)
        types = pad(encoded.token_type_ids, 0, side)[0] if encoded.token_type_ids is not None else None
        pairs = [pair for pair in encoded.images or () if pair is not None]
        if not pairs:
            with self._forward_lock:
                return self.backend.logits(ids, mask, types)
        # The pass's images in the order of their tokens, row by row (the order the model fills them in).
        pixels = np.concatenate([values for pair in pairs for values in pair.pixel_values])
        grids = np.array([grid for pair in pairs for grid in pair.grids], dtype=np.int64)
        with self._forward_lock:
            return self.backend.logits(ids, mask, types, pixel_values=pixels, image_grid_thw=grids)  # type: ignore[call-arg]

    def release(self) -> None:
        """Drop the weights and the document embeddings this copy cached (the caller frees accelerator memory once
        nothing refers to them)."""
        self.backend.release()
        self.query_memo.clear()
        if self.embeddings is not None:
            self.embeddings.forget(self.owner)


class RemoteCodeRefused(RuntimeError):
    """A stored model whose own modelling code this server will not run (the reason is the message)."""


def load_tokenizer(path: Path, remote_code: bool = False) -> Any:
    """The model's tokenizer, without transformers' "Token indices sequence length is longer than the specified
    maximum" warning: the recipes count and cut long documents' tokens themselves (windows, truncation) before any
    pair reaches the model, so that warning would fire on every long document and never mean a real problem."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=remote_code, local_files_only=True)
    # transformers' own switch for "already warned": set, the warning is never logged (copies of it inherit it). A
    # model's own tokenizer class (remote code) may lack the dict.
    if isinstance(warned := getattr(tokenizer, "deprecation_warnings", None), dict):
        warned["sequence-length-is-longer-than-the-specified-maximum"] = True
    return tokenizer


def _auto_maps(path: Path) -> list[dict]:
    maps = []
    for name in ("config.json", "tokenizer_config.json"):
        try:
            auto_map = json.loads((path / name).read_text(encoding="utf-8")).get("auto_map")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(auto_map, dict) and auto_map:
            maps.append(auto_map)
    return maps


def ships_own_code(path: Path) -> bool:
    """Whether a model folder's config (or tokenizer config) maps a class to its own Python code (`auto_map`): the
    server runs such code only for a model imported with --trust-remote-code."""
    return bool(_auto_maps(path))


def _check_stored_code(stored: StoredReranker) -> None:
    """The code a model runs is the code its import stored: each file as its sha256 was recorded, and every
    `auto_map` entry a file among them (nothing outside the store, nothing changed since)."""
    for name, digest in stored.remote_code.items():
        path = stored.path / name
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            raise RemoteCodeRefused(
                f"{stored.model_id}: its stored code file {name} is missing or changed since the import"
            )
    for auto_map in _auto_maps(stored.path):
        for value in auto_map.values():
            for reference in value if isinstance(value, list) else [value]:
                if reference is not None and f"{str(reference).rsplit('.', 1)[0]}.py" not in stored.remote_code:
                    raise RemoteCodeRefused(f"{stored.model_id}: its auto_map names {reference}, which was not stored")


def load_reranker(
    stored: StoredReranker,
    *,
    device: str,
    dtype: str = "auto",
    threads: int = 0,
    tokenizers: int = 0,
    allow_remote_code: bool = True,
    embeddings: EmbeddingCache | None = None,
    list_pass_tokens: int | None = None,
) -> LoadedReranker:
    """A stored reranker loaded with its recipe on its backend (`device` and `dtype` are torch's; a CPU runtime
    ignores them). `dtype` is a RERANK_DTYPE choice. A model that runs its own code loads only when
    `allow_remote_code` (RERANK_ALLOW_REMOTE_CODE), and only from the code stored with it. `list_pass_tokens`: a
    listwise model's most tokens in one pass (RERANK_MAX_LIST_PASS_TOKENS; None: its tokenizer's context)."""
    if stored.runs_code and not allow_remote_code:
        raise RemoteCodeRefused(
            f"{stored.model_id} runs its own modelling code ({', '.join(stored.remote_code)}), and this host does not "
            "run models' own code (RERANK_ALLOW_REMOTE_CODE=false)"
        )
    if stored.cpu_class and stored.cpu_class != cpu_class() and device == "cpu":
        # Still served: the conversion runs on any x86 CPU, only slower, and in float32 where bfloat16 is not native.
        precision = stored.cpu_precision if has_native_bf16() else "float32"
        logger.warning(
            "%s was imported for %s CPUs (%s), and this CPU is %s: it runs in %s; `%s` chooses again for this CPU",
            stored.model_id, stored.cpu_class, stored.cpu_precision, cpu_class(), precision, _reimport(stored),
        )  # fmt: skip
    if stored.remote_code:
        _check_stored_code(stored)
    elif ships_own_code(stored.path):
        # Imported before the server ran models' own code: served with the stock class, its scores were wrong.
        raise RemoteCodeRefused(
            f"{stored.model_id} ships its own modelling code (auto_map) but was imported without it; re-import it with "
            "`import_models.py --trust-remote-code` to store and run that code"
        )
    return load_folder(
        stored.path, recipe=stored.recipe, max_length=stored.max_length, causal=stored.causal, backend=stored.backend,
        device=device, dtype=dtype, checkpoint_dtype=stored.checkpoint_dtype, threads=threads, tokenizers=tokenizers,
        remote_code=stored.runs_code, module_stack=stored.module_stack, embeddings=embeddings,
        cpu_precision=stored.cpu_precision, list_pass_tokens=list_pass_tokens,
    )  # fmt: skip


def amx_hint(stored: StoredReranker, dtype: str, device: str) -> str | None:
    """What to tell the operator of a float32 torch model loaded on a CPU with AMX, unless RERANK_DTYPE, --precision
    or --backend auto (which chose bfloat16, or whose fidelity check refused it) decided already."""
    decided = dtype != "auto" or stored.cpu_precision != "float32" or "+auto@" in stored.fingerprint
    if device != "cpu" or stored.backend != "torch" or decided or not has_amx_bf16():
        return None
    return (
        f"This CPU has AMX bfloat16 units: `{_reimport(stored)}` stores it for them, 2-3.6x faster with rankings "
        "checked (docs/benchmarks.md, CPU backends)"
    )


def _reimport(stored: StoredReranker) -> str:
    """The command that imports `stored` again for this CPU (its own code stored again with it, if it has some)."""
    trust = " --trust-remote-code" if stored.remote_code else ""
    return f"import_models.py {stored.model_id} --backend auto --force{trust}"


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
    threads: int = 0,
    tokenizers: int = 0,
    remote_code: bool = False,
    module_stack: bool = False,
    embeddings: EmbeddingCache | None = None,
    cpu_precision: CpuPrecision = "float32",
    list_pass_tokens: int | None = None,
) -> LoadedReranker:
    """A model folder loaded as `load_reranker` loads a stored one (for tools, benchmarks and tests)."""
    from rerank_server.backends.torch_backend import resolve_dtype

    if is_cpu_runtime(backend):
        device = "cpu"
    recipe_class = RECIPES[recipe]
    extras = recipe_class.load_extras(path)  # shared by the copies (an image processor does not change when called)
    if recipe_class.listwise:
        extras["pass_tokens"] = list_pass_tokens
    recipes = RecipePool(
        lambda tokenizer: recipe_class(tokenizer, max_length, **extras), load_tokenizer(path, remote_code),
        tokenizers or default_tokenizer_copies(device),
    )  # fmt: skip
    vision = recipe_class.takes_images
    model = load_backend(
        backend, path, causal=causal, head=recipes.first.last_token_head() if causal or vision else None,
        pad_id=recipes.first.pad_id, device=device, dtype=resolve_dtype(dtype, device, checkpoint_dtype, cpu_precision),
        threads=threads or usable_cpus(), remote_code=remote_code, module_stack=module_stack, vision=vision,
        late_interaction=recipe_class.late_interaction, listwise=recipe_class.listwise,
        float32_projection=getattr(recipe_class, "float32_projection", False), cpu_precision=cpu_precision,
    )  # fmt: skip
    return LoadedReranker(recipes, model, embeddings)
