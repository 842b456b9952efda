"""The fidelity gate: a model stored to compute faster than float32 (int8 weights, bfloat16) must rank documents as
float32 does, measured at import on the model itself, or it is not stored that way.

What is measured is what the server promises: the order of each query's documents. Spearman's rank correlation per
query against float32 on the same weights, the worst query deciding (issue #31: at least 0.99), and how many of the
float32 top 10 stay in the top 10. The probe set is made of the model's own vocabulary, so no data is downloaded and
every language a tokenizer covers works: each query's documents hold from none to all of its words among filler
words, so a real reranker sees graded relevance and its ranking means something; documents of 24 to 220 tokens.
`--probe-data FILE` puts the user's own queries and documents in their place (probe_data.py).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import spearmanr

from rerank_server.engine.passes import score_directly
from rerank_server.models.loaded import LoadedReranker

# Worst-query Spearman a faster path must keep (`import_models.py --min-spearman`).
DEFAULT_FLOOR = 0.99
QUERIES = 6
DOCUMENTS = 20
_WORD = re.compile(r"[A-Za-z]{3,12}")
_COMMON = (
    "search index query document answer question model server river mountain city music history science water "
    "energy market health school garden engine language memory network window kitchen travel weather winter summer "
    "paper letter number animal forest island ocean planet light sound color family friend doctor teacher machine "
    "library museum theater bridge station harbor village castle desert valley"
).split()


@dataclass(frozen=True)
class ProbeList:
    query: str
    documents: list[str]


@dataclass(frozen=True)
class Fidelity:
    """How a faster path ranks the probe lists against float32."""

    worst_spearman: float
    worst_top10: int
    top: int  # the size of the "top 10" (smaller when a list is shorter)
    max_abs_delta: float
    lists: int
    documents: int  # in all the lists
    source: str = ""  # the file the lists came from; "" for the generated ones

    def passes(self, floor: float) -> bool:
        return self.worst_spearman >= floor

    def describe(self) -> str:
        return (
            f"worst-query Spearman {self.worst_spearman:.4f}, top-{self.top} kept {self.worst_top10}/{self.top}, "
            f"on {self.lists} queries of {self.documents} "
            + (f"documents from {self.source}" if self.source else "generated documents")
        )


def vocabulary_words(tokenizer) -> list[str]:
    """Whole words of the tokenizer's vocabulary (WordPiece, SentencePiece's '▁' and byte-level BPE's 'Ġ' marks
    stripped), sorted so that the probe set is the same at every import."""
    words = set()
    for token in tokenizer.get_vocab():
        word = token.lstrip("▁Ġ")
        if _WORD.fullmatch(word):
            words.add(word.lower())
    if len(words) < 50:
        # A byte-level vocabulary of merges (a small or code-heavy one) has few whole words, and spells any word.
        words.update(_COMMON)
    return sorted(words)


def probe_lists(tokenizer, *, queries: int = QUERIES, documents: int = DOCUMENTS, seed: int = 0) -> list[ProbeList]:
    """Queries of 4-8 vocabulary words, each with documents that contain an increasing share of its words among
    filler: graded relevance for a real model, the same texts at every call."""
    rng = random.Random(seed)
    words = vocabulary_words(tokenizer)
    lists = []
    for _ in range(queries):
        query_words = rng.sample(words, rng.randint(4, 8))
        docs = []
        for d in range(documents):
            filler = rng.choices(words, k=rng.randint(16, 160))
            share = round(len(query_words) * d / max(1, documents - 1))
            for word in rng.sample(query_words, share):
                filler.insert(rng.randrange(len(filler) + 1), word)
            docs.append(" ".join(filler))
        rng.shuffle(docs)
        lists.append(ProbeList(" ".join(query_words), docs))
    return lists


def scores_of(model: LoadedReranker, lists: Sequence[ProbeList]) -> list[np.ndarray]:
    """The raw score of every probe document, one array per list (not the relevance: a sigmoid in float32 reaches
    1.0 near a logit of 17 and would hide the order of the most relevant documents)."""
    return [
        np.asarray(score_directly(model, [p.query] * len(p.documents), p.documents).logits, dtype=np.float64)
        for p in lists
    ]


def compare(candidate: Sequence[np.ndarray], reference: Sequence[np.ndarray], source: str = "") -> Fidelity:
    """The candidate's rankings against the reference's, list by list (`source`: the file of the probes, if any)."""
    spearman, kept = [], []
    top = min(10, *(len(r) for r in reference))
    for c, r in zip(candidate, reference, strict=True):
        rho = spearmanr(c, r).statistic
        # A constant list (every score equal in both) keeps its order; NaN would fail any floor.
        spearman.append(1.0 if np.isnan(rho) and np.ptp(c) == np.ptp(r) == 0 else float(np.nan_to_num(rho)))
        kept.append(len(set(np.argsort(-c, kind="stable")[:top]) & set(np.argsort(-r, kind="stable")[:top])))
    delta = max(float(np.max(np.abs(c - r))) for c, r in zip(candidate, reference, strict=True))
    documents = sum(len(r) for r in reference)
    return Fidelity(min(spearman), min(kept), top, delta, len(reference), documents, source)
