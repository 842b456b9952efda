"""Loading a bare backbone whose checkpoint also holds weights the backend reads apart (a Stanford ColBERT's
projection, a listwise model's projector): transformers' load report would call them unexpected at every load, in a
table. It is quieted for the loading thread alone, and whatever else it would have said is logged in one line."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

logger = logging.getLogger("bentoml")


def from_pretrained_quietly(model_class: Any, folder: Path, read_apart: Callable[[str], bool], **kwargs: Any) -> Any:
    """`model_class.from_pretrained(folder, **kwargs)`, its report on keys that `read_apart` names left out."""
    reporter = logging.getLogger("transformers.modeling_utils")
    this_thread = threading.get_ident()

    def quiet(record: logging.LogRecord) -> bool:
        # A load on another thread keeps its report, and errors are never dropped.
        return record.thread != this_thread or record.levelno >= logging.ERROR

    reporter.addFilter(quiet)
    try:
        model, report = model_class.from_pretrained(folder, output_loading_info=True, **kwargs)
    finally:
        reporter.removeFilter(quiet)
    missing = sorted(key for key in report["missing_keys"] if not read_apart(key))
    unused = sorted(key for key in report["unexpected_keys"] if not read_apart(key))
    if missing or unused:
        logger.warning(
            "%s: the checkpoint does not match %s: %s initialised at random, %s not used",
            folder, type(model).__name__, ", ".join(missing) or "nothing", ", ".join(unused) or "nothing",
        )  # fmt: skip
    return model
