"""What a model card (the folder's README.md) says about the model: its license, from the YAML front matter."""

from __future__ import annotations

import logging
from pathlib import Path

from rerank_server.catalog import known_model

logger = logging.getLogger("bentoml")


def card_license(folder: Path, model_id: str) -> str:
    """The model card's `license:` (its `license_name:` for `license: other`), else the catalogue's; "" when neither
    tells. A card that cannot be read is not an import failure: the catalogue answers, or nothing."""
    from huggingface_hub.repocard import metadata_load

    fallback = known.license if (known := known_model(model_id)) else ""
    readme = folder / "README.md"
    if not readme.is_file():
        return fallback
    try:
        metadata = metadata_load(readme) or {}
    except Exception as exc:  # noqa: BLE001 - malformed YAML in a card is the card author's problem, not an import's
        logger.warning(
            "%s: its model card's front matter cannot be read (%s); license from the catalogue", model_id, exc
        )
        return fallback
    found = metadata.get("license")
    if found == "other" and metadata.get("license_name"):
        found = metadata["license_name"]
    if isinstance(found, list):
        found = ", ".join(str(item) for item in found)
    return str(found).strip() if found else fallback
