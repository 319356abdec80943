"""A corpus of the model's own replies about everyday topics, for latents that *write* a topic.

The Debian text the embedded dictionary was trained on rarely stays on coffee, anger or wine for
a paragraph, and its features for such words read them without writing them: amplified, they
do not make the model talk about them (docs/concepts.md). Text in which the model itself talks
about one topic holds the state "the topic is X" at every position, right from the start of the
reply. This module writes that text: for every common noun of the shipped lexicon that is one
token of the model's vocabulary (about 8,100 words), the chat's greedy reply to one question
about it, as "User: <question>\\nAssistant: <reply>" documents, a blank line apart, that
`python -m features harvest --text` reads.

    python -m features topics --out runs/topics.txt            # resumable, appends
"""
from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Callable, Iterator, Sequence

# The lexicographer categories of everyday things, people, acts, feelings and ideas.
CATEGORIES = frozenset({
    "noun.act", "noun.animal", "noun.artifact", "noun.attribute", "noun.body", "noun.cognition",
    "noun.communication", "noun.event", "noun.feeling", "noun.food", "noun.group", "noun.location",
    "noun.motive", "noun.object", "noun.person", "noun.phenomenon", "noun.plant", "noun.possession",
    "noun.process", "noun.quantity", "noun.relation", "noun.shape", "noun.state", "noun.substance",
    "noun.time",
})
QUESTIONS = ("Tell me about {}.", "What do you know about {}?", "Write a few sentences about {}.",
             "Talk about {}.", "Can you explain {} to me?")
SEPARATOR = "\n\n"  # between documents in the output file


def topic_words(lexicon, vocabulary: set[str]) -> list[str]:
    """Lowercase alphabetic lemmas of 3+ letters that the lexicon lists as nouns first, with their
    first noun sense in CATEGORIES, and that are one token of the vocabulary (`vocabulary`: its
    words, without the word-start mark); in a fixed random order, so any first n sample them all."""
    words = []
    for word, senses in lexicon.lemmas.items():
        if len(word) < 3 or not (word.isalpha() and word.islower()) or word not in vocabulary:
            continue
        first_pos = next(iter(senses))
        if first_pos == "n" and lexicon.lexname(senses["n"][0]) in CATEGORIES:
            words.append(word)
    words.sort()
    random.Random(0).shuffle(words)
    return words


def vocabulary_words(tokenizer) -> set[str]:
    """The tokenizer's whole-word tokens (those that start a word), as plain words."""
    marks = ("▁", "Ġ")
    return {t[1:] for t in tokenizer.get_vocab() if t[:1] in marks and t[1:].isalpha()}


def questions(words: Sequence[str]) -> Iterator[tuple[str, str]]:
    """(word, question) for each word, the question templates taken in turn."""
    for i, word in enumerate(words):
        yield word, QUESTIONS[i % len(QUESTIONS)].format(word)


def done_words(path: Path) -> set[str]:
    """Words already asked about in `path` (read back from its "User: <question>" lines)."""
    if not path.exists():
        return set()
    patterns = [re.compile("User: " + re.escape(q).replace(re.escape("{}"), "(.+)") + "$") for q in QUESTIONS]
    found = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        for pattern in patterns if line.startswith("User: ") else ():
            m = pattern.match(line)
            if m:
                found.add(m.group(1))
                break
    return found


def write_corpus(engine, words: Sequence[str], out: Path, *, batch: int = 48, max_new_tokens: int = 48,
                 progress: Callable[[int, int], None] | None = None) -> int:
    """Append a reply about each word not yet in `out` (replies in batches of `batch`, greedy,
    with the chat's decoding settings); returns how many documents `out` holds. Each batch is
    appended whole with one write, so an interrupted run goes on where it stopped."""
    from chat.batch import replies
    from chat.generate import GenerationSettings

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    seen = done_words(out)
    todo = [(w, q) for w, q in questions(words) if w not in seen]
    settings = GenerationSettings()  # the chat's defaults: what the app's replies look like
    for a in range(0, len(todo), batch):
        chunk = todo[a:a + batch]
        rows = replies(engine, [q for _, q in chunk], max_new_tokens=max_new_tokens, settings=settings)
        docs = [f"User: {q}\nAssistant: {r.text.strip()}" for (_, q), r in zip(chunk, rows)]
        with open(out, "a", encoding="utf-8") as f:
            f.write(SEPARATOR.join(docs) + SEPARATOR)
            f.flush()
            os.fsync(f.fileno())
        if progress:
            progress(len(seen) + a + len(chunk), len(seen) + len(todo))
    return len(done_words(out))

