"""The compact lexicon: the slice of WordNet that naming and search use, from the pip install alone.

`assets/lexicon.json.gz` (written by `python -m features label` from Debian's wordnet-base,
see features/pipeline/wordnet.py `compact`) holds, for the common English words and every word the
embedded catalog's names, reads and writes use: their senses (synsets, commonest first, up to
3 per part of speech), each synset's words, hypernyms, lexicographer category and derived
forms, and WordNet's irregular forms. Loaded lazily, once (~1 s).

`similarity` says how a word relates to a query word (the same, a synonym, a derived form, more
specific, more general) with a closeness in 0..1, for search by meaning.
"""
from __future__ import annotations

import functools
import gzip
import json
from pathlib import Path
from typing import NamedTuple


ASSET = Path(__file__).resolve().parent.parent / "assets" / "lexicon.json.gz"
FORMAT = "steerchat-lexicon/1"
# Morphy's detachment rules (WordNet's morph(7WN)), tried in order after the exception lists.
SUFFIXES = {
    "n": [("s", ""), ("ses", "s"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"),
          ("men", "man"), ("ies", "y")],
    "v": [("s", ""), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""), ("ing", "e"), ("ing", "")],
    "a": [("er", ""), ("est", ""), ("er", "e"), ("est", "e")],
    "r": [],
}

# How close a related word is, for ranking: its own forms first, then synonyms and derived
# forms, then more specific words (a "dog" is an animal), then more general ones.
SAME, SYNONYM, DERIVED, NARROWER, BROADER = 1.0, 0.9, 0.85, 0.8, 0.6
BROADER_DEPTH = 8  # "dog" reaches "animal" in 6 steps; most chains end in a word of TOO_GENERAL


class Relation(NamedTuple):
    word: str
    closeness: float  # SAME .. BROADER, lower for words further down or up the hierarchy
    how: str  # "same", "synonym", "derived", "narrower", "broader" or "category"


class Lexicon:
    def __init__(self, data: dict) -> None:
        if data.get("format") != FORMAT:
            raise ValueError(f"not a steerchat lexicon (expected format {FORMAT})")
        self.lexnames: list[str] = data["lexnames"]
        self.synsets: list[list] = data["synsets"]  # [lexname index, words, hypernyms, derived]
        self.lemmas: dict[str, dict[str, list[int]]] = data["lemmas"]
        self.exceptions: dict[str, dict[str, str]] = data["exceptions"]
        self._by_length: dict[int, list[str]] | None = None

    @classmethod
    def load(cls, path: Path = ASSET) -> "Lexicon":
        return cls(json.loads(gzip.decompress(Path(path).read_bytes())))

    def by_length(self, shortest: int, longest: int) -> list[str]:
        """Single-word lemmas of these lengths (for typo correction), common ones first."""
        if self._by_length is None:
            self._by_length = {}
            for w in self.lemmas:
                if w.isalpha():
                    self._by_length.setdefault(len(w), []).append(w)
        return [w for n in range(shortest, longest) for w in self._by_length.get(n, ())]

    def knows(self, word: str) -> bool:
        return self.lemma(word) in self.lemmas

    @functools.lru_cache(maxsize=100_000)
    def lemma(self, word: str) -> str:
        """A base form WordNet knows ("geese" -> "goose", "running" -> "run"), else the word
        lowercased. Nouns first, then verbs, adjectives."""
        word = word.lower()
        if word.endswith("s") and word[:-1] in self.lemmas and "n" in self.lemmas[word[:-1]]:
            return word[:-1]  # "feelings" is a WordNet noun too, but a plural first
        if word.endswith(("ing", "ed")):  # "catching", "used": the verb's form before a noun's
            base = self._base(word, "v")
            if base and base != word and len(base) >= 3:  # not "bed" -> "be"
                return base
        for pos in ("n", "v", "a", "r"):
            exc = self.exceptions.get(pos, {}).get(word)
            if exc and pos in self.lemmas.get(exc, {}):
                return exc
            if pos in self.lemmas.get(word, {}):
                return word
            base = self._detach(word, pos)
            if base:
                return base
        return word

    def _base(self, word: str, pos: str) -> str | None:
        exc = self.exceptions.get(pos, {}).get(word)
        if exc and pos in self.lemmas.get(exc, {}):
            return exc
        return self._detach(word, pos)

    def _detach(self, word: str, pos: str) -> str | None:
        """The first lemma of `pos` that a detachment rule (SUFFIXES) makes of `word`."""
        for suffix, ending in SUFFIXES[pos]:
            if word.endswith(suffix) and len(word) > len(suffix) + 1:
                base = word[: len(word) - len(suffix)] + ending
                if pos in self.lemmas.get(base, {}):
                    return base
        return None

    def senses(self, word: str, pos: str | None = None) -> list[int]:
        entry = self.lemmas.get(self.lemma(word), {})
        return [s for p, ids in entry.items() if pos in (None, p) for s in ids]

    def lexname(self, synset: int) -> str:
        return self.lexnames[self.synsets[synset][0]]

    def words(self, synset: int) -> list[str]:
        return self.synsets[synset][1]

    @functools.lru_cache(maxsize=100_000)
    def ancestors(self, synset: int, depth: int = 12) -> tuple[tuple[int, int], ...]:
        """(hypernym, steps up) pairs, nearest first, each once."""
        out: dict[int, int] = {}
        frontier = [synset]
        for step in range(1, depth + 1):
            frontier = [h for s in frontier for h in self.synsets[s][2] if h not in out]
            for h in frontier:
                out.setdefault(h, step)
            if not frontier:
                break
        return tuple(out.items())

    def kinship(self, a: str, b: str) -> int | None:
        """Steps from noun `a` up to the nearest hypernym it shares with noun `b` and down to `b`,
        by their commonest senses: 2 for siblings such as snow and rain ("precipitation"), None
        when they share only a word of TOO_GENERAL (or either is no noun)."""
        up_a, up_b = self._noun_ancestors(a), self._noun_ancestors(b)
        return min((up_a[h] + up_b[h] for h in up_a.keys() & up_b.keys()), default=None)

    def _noun_ancestors(self, word: str) -> dict[int, int]:
        """{synset: steps up} from the word's first noun sense (itself at 0), TOO_GENERAL left out."""
        first = self.lemmas.get(self.lemma(word), {}).get("n", [])[:1]
        return {h: step for s in first for h, step in ((s, 0), *self.ancestors(s))
                if not any(part in TOO_GENERAL for w in self.words(h) for part in w.split())}

    @functools.lru_cache(maxsize=50_000)
    def meanings(self, word: str) -> dict[str, Relation]:
        """What `word` means, as other words: its lemma ("same"), synonyms, derived forms, and
        the words of its hypernyms and category ("broader", closeness falling with each step up
        and for rarer senses). A query word q finds a feature word w when w is in meanings(q)
        (w means q, or is more general) or q is a broader word of w (w is more specific)."""
        base = self.lemma(word)
        found: dict[str, Relation] = {base: Relation(base, SAME, "same")}

        def add(w: str, closeness: float, how: str) -> None:
            if " " not in w and w not in TOO_GENERAL and (w not in found or found[w].closeness < closeness):
                found[w] = Relation(w, round(closeness, 3), how)

        for pos, ids in self.lemmas.get(base, {}).items():
            for rank, s in enumerate(ids):
                sense = (1.0, 0.9, 0.8)[min(rank, 2)]  # rarer senses count less
                for w in self.words(s):
                    add(w, SYNONYM * sense, "synonym")
                for w in self.synsets[s][3]:
                    add(w, DERIVED * sense, "derived")
                for h, step in self.ancestors(s, BROADER_DEPTH) if rank < 2 else ():  # a third sense is too often a stretch
                    for w in self.words(h):
                        add(w, (BROADER - 0.02 * (step - 1)) * sense, "broader")
                for w in CATEGORY_WORDS.get(self.lexname(s), ()):
                    add(w, (BROADER - 0.04) * sense, "category")
        return found

    def similarity(self, query: str, word: str) -> Relation | None:
        """How `word` relates to `query`, from the query's side: the same word, a synonym or
        derived form, a more specific word ("dog" for "animal": "narrower"), a more general one."""
        q = self.lemma(query)
        mine = self.meanings(query)
        theirs = self.meanings(word)
        w = self.lemma(word)
        best = None
        if w in mine and mine[w].how != "broader" and mine[w].how != "category":
            best = mine[w]
        if q in theirs and theirs[q].how in ("broader", "category"):
            r = Relation(w, round(NARROWER * theirs[q].closeness / BROADER, 3), "narrower")
            best = r if best is None or r.closeness > best.closeness else best
        if best is None and w in mine and mine[w].how == "broader" and mine[w].closeness >= BROADER - 0.05:
            best = Relation(w, mine[w].closeness, "broader")
        return best


# Hypernyms so general that every word has one; as query expansions they would match anything.
TOO_GENERAL = frozenset("""entity abstraction physical object whole thing matter attribute
state act event group relation measure psychological feature cognition content communication
artifact artefact unit part portion instrumentality device process change action activity
being organism person individual someone somebody mortal soul causal agent cause agent quality
property condition situation""".split())

# Plain words for WordNet's lexicographer categories: a query for "animals" finds every word
# filed under noun.animal, even one whose hypernym chain is too long to reach "animal".
CATEGORY_WORDS = {
    "noun.animal": ("animal", "creature"), "noun.food": ("food", "drink"), "noun.feeling": ("feeling", "emotion"),
    "noun.plant": ("plant",), "noun.body": ("body",), "noun.location": ("place",), "noun.time": ("time",),
    "noun.person": ("people",), "noun.phenomenon": ("nature",), "verb.weather": ("weather",),
    "noun.possession": ("money", "possession"), "noun.substance": ("substance", "material"),
    "verb.emotion": ("feeling", "emotion"), "noun.shape": ("shape",), "verb.motion": ("motion", "movement"),
    "verb.communication": ("speech",), "verb.consumption": ("eating",), "verb.competition": ("competition",),
}


@functools.cache
def default() -> Lexicon | None:
    """The shipped lexicon, or None where it is missing (search then matches names only)."""
    return Lexicon.load() if ASSET.exists() else None
