"""The checks an import runs before anything is committed: the tokenizer fits the weights, and the stored copy loads
the way the server loads it and passes the server's load check (models/canary.py)."""

from __future__ import annotations

import gc
from pathlib import Path

from rerank_server.importer.folder import ModelImportError
from rerank_server.models.store import StoredReranker


def first_line(exc: BaseException) -> str:
    """An exception as one short line: its type and the first line of its message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


def check_vocabulary(folder: Path, model_id: str, trust_remote_code: bool = False) -> None:
    """Refuse a tokenizer that makes token ids the model has no embedding for (they would crash every request)."""
    from transformers import AutoConfig

    from rerank_server.models.loaded import load_tokenizer

    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code, local_files_only=True)
        vocabulary = config.get_text_config().vocab_size
        tokens = len(load_tokenizer(folder, trust_remote_code))
    except Exception as exc:  # noqa: BLE001 - an unreadable tokenizer or config is one clear line
        raise ModelImportError(f"{model_id}: its tokenizer or config cannot be read ({first_line(exc)})") from exc
    if vocabulary and tokens > vocabulary:
        raise ModelImportError(
            f"{model_id}: its tokenizer has {tokens} tokens but the model only {vocabulary} embeddings: the "
            "tokenizer does not belong to these weights (put the model's own tokenizer files in the folder)"
        )


def check_runs(stored: StoredReranker) -> float:
    """Load `stored` the way the server does and score the load check's pairs (models/canary.py), as the server does
    at every load; the first pair's score, or ModelImportError saying why not."""
    import torch

    from rerank_server.backends.torch_backend import resolve_device
    from rerank_server.models.canary import CanaryFailed, check_canary
    from rerank_server.models.loaded import load_reranker

    try:
        model = load_reranker(stored, device=resolve_device("auto"))
        logit = check_canary(model, stored.model_id)[0]  # releases a model that fails or raises
        model.release()
    except CanaryFailed as exc:
        raise ModelImportError(str(exc)) from exc
    except Exception as exc:  # noqa: BLE001 - every kind of broken model ends in the same advice
        raise ModelImportError(
            f"{stored.model_id}: the model could not score a test pair ({first_line(exc)}); check that the folder's "
            "weights, config and tokenizer belong together and are complete (--no-check skips this test)"
        ) from exc
    finally:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return model.recipe.relevance([logit])[0]
