"""A stored model's score calibration: the map from its raw score to the probability that a pair is relevant.

Platt scaling in vLLM's form, `sigmoid(scale * (raw - bias))`, so numbers port both ways (vLLM's `logit_scale` and
`logit_bias`). `evaluate.py --calibrate` fits it on the user's labelled pairs, `import_models.py --calibration`
attaches it to a stored model (the importer writes `calibration.json` beside the weights), and the store reads it
back here with the model's other facts. A leaf: it knows no loaded model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

# Kept in the model's store folder: attaching one copies no weights, and a Bento built from the store carries it.
CALIBRATION_FILE = "calibration.json"
FORMULA = "sigmoid(scale * (raw - bias))"


class FittedOn(BaseModel):
    """What a fit saw: queries, pairs, relevant pairs and a digest of the labelled pairs."""

    queries: int
    pairs: int
    relevant: int
    data_sha256: str


class HeldOut(BaseModel):
    """The fit judged on data it did not see: k-fold cross-validation split by query, before and after."""

    model_config = ConfigDict(extra="allow")  # evaluate.py may report more than the server needs to show

    folds: int
    ece_before: float
    ece_after: float
    brier_before: float
    brier_after: float
    log_loss_before: float
    log_loss_after: float


class Calibration(BaseModel):
    """The map a model's raw scores go through to become `relevance_score`."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(description="The model id the calibration was fitted for.")
    method: Literal["platt", "manual"] = Field(
        description="platt: fitted by evaluate.py --calibrate; manual: --logit-scale / --logit-bias."
    )
    scale: float = Field(description="How steep: relevance_score = sigmoid(scale * (raw - bias)).")
    bias: float = Field(description="The raw score that maps to 0.5.")
    formula: Literal["sigmoid(scale * (raw - bias))"] = FORMULA
    fitted_on: FittedOn | None = None
    heldout: HeldOut | None = None

    @field_validator("scale")
    @classmethod
    def _positive_scale(cls, value: float) -> float:
        if not math.isfinite(value) or value <= 0:
            raise ValueError(
                f"scale must be a finite number above 0, not {value} (a scale of 0 or below would flatten or reverse "
                "the model's ranking)"
            )
        return value

    @field_validator("bias")
    @classmethod
    def _finite_bias(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError(f"bias must be a finite number, not {value}")
        return value

    def apply(self, raw: list[float]) -> list[float]:
        """The calibrated probability of each raw score. Computed in float64, so that a steep scale does not round
        distinct raw scores into one (the order is the raw scores' in any case)."""
        values = np.asarray(raw, dtype=np.float64)
        with np.errstate(over="ignore"):
            return (1.0 / (1.0 + np.exp(-self.scale * (values - self.bias)))).tolist()


class CalibrationFileError(ValueError):
    """A calibration file that cannot be used: the message says why, in one line."""


def parse_calibration(data: Any, where: str) -> Calibration:
    """A calibration from parsed JSON; CalibrationFileError naming `where` and the first problem."""
    try:
        return Calibration.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"])
        message = str(error.get("ctx", {}).get("error") or error["msg"])
        raise CalibrationFileError(f"{where}: {field + ': ' if field else ''}{message}") from None


def read_calibration_file(path: Path) -> Calibration:
    """The calibration in a JSON file; CalibrationFileError when it is missing, not JSON or not a calibration."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        raise CalibrationFileError(f"cannot read {path}: {reason}") from None
    try:
        # NaN and Infinity are not JSON: Python's parser takes them, so they are refused by name.
        data = json.loads(text, parse_constant=lambda name: _refuse_constant(name, path))
    except json.JSONDecodeError as exc:
        raise CalibrationFileError(f"{path}: not JSON ({exc.msg}, line {exc.lineno} column {exc.colno})") from None
    return parse_calibration(data, str(path))


def _refuse_constant(name: str, path: Path) -> float:
    raise CalibrationFileError(f"{path}: {name} is not a number a calibration can hold")


def stored_calibration(folder: Path) -> tuple[Calibration | None, str | None]:
    """The calibration kept in a stored model's folder: (calibration, None), (None, None) when it has none, or
    (None, why) when the file is there but unusable (edited by hand: the model is then not served, rather than
    served with scores that silently mean something else)."""
    path = folder / CALIBRATION_FILE
    if not path.is_file():
        return None, None
    try:
        return read_calibration_file(path), None
    except CalibrationFileError as exc:  # said to API callers: the file's name, never the store's path
        return None, str(exc).replace(str(path), CALIBRATION_FILE)
