"""The checks an import runs before anything is committed: the tokenizer fits the weights, and the stored copy loads
the way the server loads it and scores a pair."""

from __future__ import annotations

import gc
from pathlib import Path

from rerank_server.importer.folder import ModelImportError
from rerank_server.models.store import StoredReranker

TEST_QUERY = "what is a panda?"
TEST_DOCUMENT = "The giant panda is a bear species endemic to China."


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
    """Load `stored` the way the server does and score one pair; the score, or ModelImportError saying why not."""
    import torch

    from rerank_server.backends.torch_backend import resolve_device
    from rerank_server.models.loaded import load_reranker

    try:
        model = load_reranker(stored, device=resolve_device("auto"))
        logit = float(model.forward(model.encode([TEST_QUERY], [TEST_DOCUMENT]))[0])
        model.release()
    except Exception as exc:  # noqa: BLE001 - every kind of broken model ends in the same advice
        raise ModelImportError(
            f"{stored.model_id}: the model could not score a test pair ({first_line(exc)}); check that the folder's "
            "weights, config and tokenizer belong together and are complete (--no-check skips this test)"
        ) from exc
    finally:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    score = float(torch.sigmoid(torch.tensor(logit, dtype=torch.float32)))
    if not 0.0 <= score <= 1.0:
        raise ModelImportError(f"{stored.model_id}: the model scored a test pair {score}, not a number in 0..1")
    return score
