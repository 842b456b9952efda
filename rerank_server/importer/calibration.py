"""Attaching a calibration to a stored model, and taking it off.

The calibration is a small file, `calibration.json`, written into the stored model's own folder: no weights are
copied and no new store version is made, so a running server keeps the loaded weights and only the map from raw
score to relevance score changes (the registry re-reads the store every second; the result cache holds raw scores
only). The file is written to a temporary name and renamed over the old one, so a server never reads half of it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from rerank_server.importer.folder import ModelImportError
from rerank_server.models.calibration import (
    CALIBRATION_FILE,
    Calibration,
    CalibrationFileError,
    parse_calibration,
    read_calibration_file,
)
from rerank_server.models.store import StoredReranker, find_reranker


def _read(path: Path) -> Calibration:
    try:
        return read_calibration_file(path)
    except CalibrationFileError as exc:
        raise ModelImportError(str(exc)) from None


def from_file_model(path: Path) -> str:
    """The model a calibration file was fitted for."""
    return _read(path).model


def from_file(path: Path, stored: StoredReranker) -> Calibration:
    """The calibration in `path` (written by `evaluate.py --calibrate`), checked to be `stored`'s."""
    calibration = _read(path)
    if find_reranker(calibration.model, [stored]) is None:
        raise ModelImportError(
            f"{path} is the calibration of {calibration.model}, not of {stored.model_id}: a calibration fits one "
            "model's scores only"
        )
    return calibration


def by_hand(stored: StoredReranker, scale: float, bias: float) -> Calibration:
    """A calibration from vLLM-style settings (`--logit-scale`, `--logit-bias`)."""
    try:
        return parse_calibration(
            {"model": stored.model_id, "method": "manual", "scale": scale, "bias": bias}, "--logit-scale/--logit-bias"
        )
    except CalibrationFileError as exc:
        raise ModelImportError(str(exc)) from None


def attach(stored: StoredReranker, calibration: Calibration) -> Path:
    """Keep `calibration` with `stored` (replacing any other); the file written."""
    target = stored.path / CALIBRATION_FILE
    text = calibration.model_copy(update={"model": stored.model_id}).model_dump_json(indent=2, exclude_none=True)
    try:
        handle, temporary = tempfile.mkstemp(dir=stored.path, prefix=".calibration-", suffix=".json")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as file:
                file.write(text + "\n")
            os.chmod(temporary, 0o644)
            os.replace(temporary, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
    except OSError as exc:
        raise ModelImportError(
            f"{stored.model_id}: cannot write its calibration into the store ({exc.strerror or exc}: {stored.path})"
        ) from None
    return target


def detach(stored: StoredReranker) -> bool:
    """Take `stored`'s calibration off; whether it had one."""
    try:
        (stored.path / CALIBRATION_FILE).unlink()
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise ModelImportError(
            f"{stored.model_id}: cannot remove its calibration from the store ({exc.strerror or exc})"
        ) from None
    return True
