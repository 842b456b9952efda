"""Imported by every Python process of a server a test starts with this folder first on its PYTHONPATH: once the file
named by RERANK_TEST_BREAK_FILE exists, every model forward fails as a GPU's does after a device-side assert (CUDA
errors are sticky: every later call fails too); with RERANK_TEST_SLOW_LOAD="model id=seconds", every load of that
model takes that much longer (slow storage). Never on a real server's path."""

from __future__ import annotations

import os
from pathlib import Path

_FLAG = os.environ.get("RERANK_TEST_BREAK_FILE")


def _break_the_device() -> None:
    try:
        from rerank_server.models.loaded import LoadedReranker as model_class

        method = "forward"
    except ImportError:  # the layout before issue #19, to show the defect there
        from rerank_server.scorer import Scorer as model_class

        method = "logits"
    original = getattr(model_class, method)

    def forward(self, *args, **kwargs):
        if _FLAG and Path(_FLAG).exists():
            raise RuntimeError("CUDA error: device-side assert triggered")
        return original(self, *args, **kwargs)

    setattr(model_class, method, forward)


if _FLAG:
    _break_the_device()

# "model id=seconds": every load of that model takes so much longer (slow storage).
_SLOW_LOAD = os.environ.get("RERANK_TEST_SLOW_LOAD")


def _slow_loads() -> None:
    import time

    from rerank_server.models.registry import ModelRegistry

    model_id, _, seconds = (_SLOW_LOAD or "").partition("=")
    original = ModelRegistry._load

    def _load(self, stored):
        if stored.model_id == model_id:
            time.sleep(float(seconds))
        return original(self, stored)

    ModelRegistry._load = _load


if _SLOW_LOAD:
    _slow_loads()
