"""Cutting very long texts before tokenizing them, without changing a single token the model sees.

A 10 MB document truncated to 512 tokens should not cost a 10 MB tokenization (per pair, since the tokenizer encodes
the query again for every document). A fixed characters-per-token bound is not safe: whitespace and zero-width
characters make no tokens, and a 200-character word is one `[UNK]`, so a document of 70,000 spaces and a sentence
would lose its sentence. Instead the text is cut only between a word and the whitespace after it (or, keeping the
end, before a word that follows whitespace), and only where the tokens of the cut text, minus those of the two words
nearest the cut, already number `tokens`: pre-tokenizers split on whitespace and normalizers act within words, so
those tokens are the ones the whole text starts (or ends) with. The window of text looked at doubles until that holds,
or the whole text is used as it is.
"""

from __future__ import annotations

import re
from typing import Any, Literal

Side = Literal["right", "left"]

# Below this many characters per wanted token a text is tokenized whole: cutting would save nothing worth having.
WORTH_CUTTING = 8
_WORD_END = re.compile(r"\S(?=\s)")  # the last character of a word that whitespace follows
_WORD_END_REVERSED = re.compile(r"(?<=\S)\s")  # in the reversed text: whitespace right after a word's first char


def _starts_of_last_words(text: str, count: int) -> int:
    """Where the `count`-th word from the end of `text` starts (0 when it has fewer words)."""
    position = len(text)
    for _ in range(count):
        position = len(text[:position].rstrip())
        position = max(text.rfind(c, 0, position) for c in (" ", "\n", "\t", "\r", "\f", "\v")) + 1
        if position <= 0:
            return 0
    return position


class LongText:
    """Cuts texts for one tokenizer; not thread-safe, like the recipe that owns it."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def count(self, text: str) -> int:
        """Tokens of `text` alone, without special tokens."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def cut(self, text: str, tokens: int, side: Side = "right") -> tuple[str, bool]:
        """`text`, or a part of it whose first (`right`) or last (`left`) `tokens` tokens are the whole text's.

        The flag says whether it was cut: a cut text holds at least `tokens` tokens of the original.
        """
        if len(text) <= tokens * WORTH_CUTTING:
            return text, False
        if side == "left":
            return self._tail(text, tokens)
        return self._head(text, tokens)

    def _offsets(self, text: str) -> list[tuple[int, int]]:
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return encoded["offset_mapping"]

    def _head(self, text: str, tokens: int) -> tuple[str, bool]:
        window = tokens * WORTH_CUTTING
        while window < len(text):
            word_end = _WORD_END.search(text, window)
            if word_end is None:
                break
            prefix = text[: word_end.end()]
            safe = _starts_of_last_words(prefix, 2)  # tokens from here on may depend on what follows the cut
            if sum(end <= safe for _, end in self._offsets(prefix)) >= tokens:
                return prefix, True
            window = max(window, len(prefix)) * 2
        return text, False

    def _tail(self, text: str, tokens: int) -> tuple[str, bool]:
        reversed_text = text[::-1]
        window = tokens * WORTH_CUTTING
        while window < len(text):
            boundary = _WORD_END_REVERSED.search(reversed_text, window)
            if boundary is None:
                break
            suffix = text[len(text) - boundary.start() :]  # starts with a word (the whitespace before it is left out)
            reversed_suffix = suffix[::-1]
            # The two words at the start of the suffix may tokenize differently without what preceded them.
            safe = len(suffix) - _starts_of_last_words(reversed_suffix, 2)
            if sum(start >= safe for start, _ in self._offsets(suffix)) >= tokens:
                return suffix, True
            window = max(window, len(suffix)) * 2
        return text, False
