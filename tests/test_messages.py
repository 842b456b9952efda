"""Messages that point at the cause: no warning that cries wolf where the server truncates itself, and a warning when a
folder imported under a catalogue id is far from that model."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from rerank_server.models.loaded import load_tokenizer


@pytest.fixture()
def transformers_warnings(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """transformers' log records, which its own logger does not pass to the root logger by default."""
    import transformers

    transformers.logging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING):
            yield caplog
    finally:
        transformers.logging.disable_propagation()


def test_a_long_document_does_not_log_transformers_indexing_warning(
    fixture_model_dir: Path, transformers_warnings: pytest.LogCaptureFixture
) -> None:
    tokenizer = load_tokenizer(fixture_model_dir)
    long_text = "word " * (tokenizer.model_max_length + 100)
    # What the recipes do with a long document before cutting it into windows: count and locate its tokens.
    assert len(tokenizer(long_text, add_special_tokens=False)["input_ids"]) > tokenizer.model_max_length
    tokenizer(long_text, add_special_tokens=False, return_offsets_mapping=True)
    assert "Token indices sequence length" not in transformers_warnings.text
