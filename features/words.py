"""Whole words from sub-word tokens: which word each token belongs to.

A tokenizer cuts "leavened" into "le", "av", "ened"; a label built from token strings shows
those fragments. Here a sequence's tokens are joined back into its text and cut into words
(letters, digits and underscores, with inner apostrophes: "don't", "John's", "PyList_SET_ITEM"),
and every token maps to the word its first visible character falls in. A token outside every
word is punctuation or white space and is its own unit.
"""
from __future__ import annotations

import re
from typing import NamedTuple, Sequence

_WORD = re.compile(r"[^\W_]+(?:[_'’][^\W_]+)*|_+", re.UNICODE)
_CONTRACTION = re.compile(r"['’](?:s|t|re|ve|ll|d|m)$", re.IGNORECASE)


class Words(NamedTuple):
    """One token sequence as words."""
    words: list[str]  # the units in text order: words as written, punctuation/space as the token's text
    of_token: list[int]  # per token, the index of its unit in `words`
    is_word: list[bool]  # per unit: a word (True) or punctuation / white space (False)


def join(tokens: Sequence[str]) -> Words:
    """Group decoded tokens into whole words (see the module doc)."""
    text = "".join(tokens)
    spans = [(m.start(), m.end()) for m in _WORD.finditer(text)]
    words: list[str] = []
    is_word: list[bool] = []
    of_token: list[int] = []
    starts = [s for s, _ in spans]
    span_unit: dict[int, int] = {}  # span index -> unit index
    pos = 0
    j = 0  # first span that may still contain a later position
    for tok in tokens:
        lead = len(tok) - len(tok.lstrip())
        at = pos + lead if lead < len(tok) else pos  # the first visible character
        while j < len(spans) and spans[j][1] <= at:
            j += 1
        if tok.strip() and j < len(spans) and starts[j] <= at < spans[j][1]:
            if j not in span_unit:
                span_unit[j] = len(words)
                words.append(text[spans[j][0]:spans[j][1]])
                is_word.append(True)
            of_token.append(span_unit[j])
        else:
            of_token.append(len(words))
            words.append(tok)
            is_word.append(False)
        pos += len(tok)
    return Words(words, of_token, is_word)


def base_word(word: str) -> str:
    """A word without its possessive or contraction ending, lowercase: "John's" -> "john"."""
    return _CONTRACTION.sub("", word).lower() if "'" in word or "’" in word else word.lower()


def is_contraction(word: str) -> bool:
    return bool(_CONTRACTION.search(word)) and not word.lower().endswith(("'s", "’s"))
