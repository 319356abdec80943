"""Replies that loop, and trimming them so that one bad reply never poisons the conversation.

A small base model decoding greedily can fall into "I'm a marine biologist. I'm a marine
biologist. ..."; fed back as history, the loop makes every later reply loop too. The prompt
builder therefore sends the model a looping reply only up to where it starts repeating, and
leaves out an empty reply with the message it answered.

    >>> loops("I'm a marine biologist. I'm a marine biologist. I'm a marine biologist.")
    True
    >>> trim("Well, I'm a marine biologist. I'm a marine biologist. I'm a marine biologist.")
    "Well, I'm a marine biologist."
    >>> loops("The capital of France is Paris.")
    False
"""
from __future__ import annotations

import re
from collections import Counter

_WORD = re.compile(r"\w+(?:'\w+)?")
N = 3  # a loop is counted in three-word sequences


def _ngrams(text: str) -> tuple[list[re.Match], list[tuple[str, ...]]]:
    words = list(_WORD.finditer(text))
    lowered = [w.group().lower() for w in words]
    return words, [tuple(lowered[i:i + N]) for i in range(len(lowered) - N + 1)]


def loops(text: str) -> bool:
    """True when a three-word sequence appears three times, or most of the reply's three-word
    sequences appear more than once (a long repeated unit, e.g. a sentence said twice in a row
    and cut off)."""
    _, grams = _ngrams(text)
    if not grams:
        return False
    counts = Counter(grams)
    if max(counts.values()) >= 3:
        return True
    repeated = sum(1 for g in grams if counts[g] > 1)
    return len(grams) >= 6 and repeated > len(grams) / 2


def trim(text: str) -> str:
    """A looping `text` cut before the first three-word sequence that repeats an earlier one
    (so the first instance of the loop stays); any other text is returned unchanged."""
    if not loops(text):
        return text
    words, grams = _ngrams(text)
    seen: set[tuple[str, ...]] = set()
    for i, g in enumerate(grams):
        if g in seen:
            return text[:words[i].start()].rstrip(" ,;:-\n")
        seen.add(g)
    return text


def garbled(text: str) -> str | None:
    """What makes a reply unreadable, or None: steering far past a feature's range breaks text
    into runs of punctuation ("- - –"), invisible characters, or capitalised non-words
    ("SATOVENTIUM FRIBTERONEUISEATOB"). Plain short replies pass.

    >>> garbled("I'm a"), garbled("- - – - -"), garbled("I'm a\u2063\u2063\u2063")
    (None, 'mostly punctuation', 'invisible characters')
    >>> garbled("SATOVENTIUM FRIBTERONEUISEATOB ARKENTOLIUM")
    'capitalised non-words'
    """
    import unicodedata

    visible = [c for c in text if not c.isspace()]
    if not visible:
        return None
    hidden = sum(unicodedata.category(c) in ("Cf", "Co", "Cn", "Cc") for c in visible)
    if hidden >= 2 or hidden > len(visible) / 10:
        return "invisible characters"
    if len(visible) >= 3 and sum(c.isalnum() for c in visible) < 0.4 * len(visible):
        return "mostly punctuation"
    words = [w.group() for w in _WORD.finditer(text)]
    shouting = [w for w in words if len(w) >= 8 and w.isupper()]
    if len(words) >= 2 and len(shouting) >= max(2, len(words) / 3):
        return "capitalised non-words"
    return None


def bad_reply(text: str) -> str | None:
    """Why a reply should not go back to the model as it is ("empty", "loops"), or None."""
    if not text.strip():
        return "empty"
    return "loops" if loops(text) else None
