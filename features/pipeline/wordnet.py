"""A small reader of WordNet's database files (Debian's wordnet-base, /usr/share/wordnet).

The labeller needs only a little of WordNet: the synsets of a word (in frequency order), their
hypernyms, lexicographer categories (noun.animal, noun.food, ...), derivationally related
forms, and lemmatisation (morphy). nltk's reader would do, but it opens a `lexnames` file that
Debian does not ship; the 45 names are fixed by WordNet, so they are listed here.

Only the labeller (offline, where the apt package is installed) reads these files. What search
needs at run time goes into the compact lexicon (`compact`, read by features/lexicon.py).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from features.lexicon import SUFFIXES

WORDNET_DIR = Path("/usr/share/wordnet")
# The lexicographer files, in lex_filenum order (WordNet's lexnames(5WN)).
LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
    "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location "
    "noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process "
    "noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change "
    "verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation "
    "verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()
POS_FILES = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}


@dataclass
class Synset:
    key: str  # "n:02084071": pos and byte offset, unique per database
    lexname: str  # its lexicographer category, e.g. "noun.animal"
    words: list[str]  # lemmas, lowercase, multi-word ones with spaces
    gloss: str
    hypernyms: list[str] = field(default_factory=list)  # keys, instance hypernyms included
    derived: list[tuple[str, str]] = field(default_factory=list)  # (key, word) derivationally related


class WordNet:
    """Lemma -> synsets, synsets -> hypernyms and categories, morphy."""

    def __init__(self, folder: Path = WORDNET_DIR) -> None:
        folder = Path(folder)
        if not (folder / "data.noun").exists():
            raise FileNotFoundError(f"no WordNet database in {folder} (apt-get install wordnet-base)")
        self.synsets: dict[str, Synset] = {}
        self.index: dict[tuple[str, str], list[str]] = {}  # (lemma, pos) -> synset keys, commonest first
        self.tagged: dict[str, int] = {}  # lemma -> senses seen in the tagged corpus (a frequency hint)
        self.exceptions: dict[str, dict[str, list[str]]] = {pos: {} for pos in POS_FILES}
        for pos, name in POS_FILES.items():
            self._read_data(folder / f"data.{name}", pos)
            self._read_index(folder / f"index.{name}", pos)
            exc = folder / f"{name}.exc"
            if exc.exists():
                for line in exc.read_text(encoding="latin-1").splitlines():
                    form, *lemmas = line.split()
                    self.exceptions[pos][form] = lemmas

    def _read_data(self, path: Path, pos: str) -> None:
        for line in path.read_text(encoding="latin-1").splitlines():
            if line.startswith(" "):  # the license header
                continue
            head, _, gloss = line.partition("|")
            f = head.split()
            n_words = int(f[3], 16)
            words = [f[4 + 2 * i].replace("_", " ").lower() for i in range(n_words)]
            words = [w.split("(")[0] for w in words]  # adjective markers: "galore(ip)"
            j = 4 + 2 * n_words
            n_ptr = int(f[j])
            s = Synset(f"{pos}:{f[0]}", LEXNAMES[int(f[1])], words, gloss.strip())
            for p in range(n_ptr):
                sym, off, ppos, st = f[j + 1 + 4 * p: j + 5 + 4 * p]
                ppos = "a" if ppos == "s" else ppos
                if sym in ("@", "@i"):
                    s.hypernyms.append(f"{ppos}:{off}")
                elif sym == "+":
                    target = int(st[2:], 16)
                    s.derived.append((f"{ppos}:{off}", str(target)))
            self.synsets[s.key] = s

    def _read_index(self, path: Path, pos: str) -> None:
        for line in path.read_text(encoding="latin-1").splitlines():
            if line.startswith(" "):
                continue
            f = line.split()
            n_syn, n_ptr = int(f[2]), int(f[3])
            tagged = int(f[5 + n_ptr])
            lemma = f[0].replace("_", " ")
            self.index[(lemma, pos)] = [f"{pos}:{off}" for off in f[6 + n_ptr: 6 + n_ptr + n_syn]]
            self.tagged[lemma] = self.tagged.get(lemma, 0) + tagged

    def morphy(self, word: str, pos: str) -> list[str]:
        """The base forms of `word` as `pos` that WordNet knows ("geese" -> ["goose"])."""
        word = word.lower()
        found = [w for w in self.exceptions[pos].get(word, []) if (w, pos) in self.index]
        if (word, pos) in self.index:
            found.append(word)
        for suffix, ending in SUFFIXES[pos]:
            if word.endswith(suffix) and len(word) > len(suffix) + 1:
                base = word[: len(word) - len(suffix)] + ending
                if (base, pos) in self.index and base not in found:
                    found.append(base)
        return found

    def lemma(self, word: str) -> str:
        """One base form: the noun's, else the verb's, else the adjective's, else the word."""
        for pos in ("n", "v", "a", "r"):
            forms = self.morphy(word, pos)
            if forms:
                return forms[0]
        return word.lower()

    def senses(self, word: str, pos: str | None = None, top: int = 3) -> list[Synset]:
        """The `top` commonest synsets of `word` (any inflected form), per part of speech."""
        out = []
        for p in [pos] if pos else list(POS_FILES):
            for base in self.morphy(word, p)[:1]:
                out += [self.synsets[k] for k in self.index[(base, p)][:top]]
        return out

    @functools.lru_cache(maxsize=200_000)
    def ancestors(self, key: str, depth: int = 12) -> tuple[str, ...]:
        """Hypernym keys of a synset, nearest first (breadth-first, each once)."""
        seen: list[str] = []
        frontier = [key]
        for _ in range(depth):
            nxt = []
            for k in frontier:
                for h in self.synsets[k].hypernyms:
                    if h not in seen:
                        seen.append(h)
                        nxt.append(h)
            frontier = nxt
        return tuple(seen)


def compact(wn: WordNet, words: Iterable[str], senses: int = 3) -> dict:
    """The part of WordNet that search needs at run time, as JSON-able data (features/lexicon.py):
    for each of `words`, its synsets (`senses` per part of speech) and their hypernym closure,
    categories and derived forms; plus the exception lists for lemmatising. `words` are single
    words; a synset keeps its multi-word lemmas too ("sea creature"), for names."""
    keep: dict[str, int] = {}  # synset key -> index in the output list
    order: list[str] = []

    def add(key: str) -> int:
        if key not in keep:
            keep[key] = len(order)
            order.append(key)
        return keep[key]

    lemmas: dict[str, dict[str, list[int]]] = {}
    for word in sorted(set(words)):
        for pos in POS_FILES:
            keys = wn.index.get((word, pos), [])[:senses]
            if keys:
                lemmas.setdefault(word, {})[pos] = [add(k) for k in keys]
                for k in keys:
                    for a in wn.ancestors(k):
                        add(a)
    synsets = []
    for key in order:
        s = wn.synsets[key]
        derived = sorted({w for _, w in _derived_words(wn, s)})
        synsets.append([LEXNAMES.index(s.lexname), s.words[:8],
                        [keep[h] for h in s.hypernyms if h in keep], derived[:8]])
    exceptions = {pos: {form: lem[0] for form, lem in exc.items() if " " not in form and "_" not in lem[0]
                        and lem[0] in lemmas}
                  for pos, exc in wn.exceptions.items()}
    return {"format": "steerchat-lexicon/1", "lexnames": list(LEXNAMES), "synsets": synsets,
            "lemmas": lemmas, "exceptions": exceptions}


def _derived_words(wn: WordNet, s: Synset) -> Iterable[tuple[str, str]]:
    """(key, word) of the derivationally related forms of a synset's words."""
    for key, target in s.derived:
        other = wn.synsets.get(key)
        if other is None:
            continue
        n = int(target) - 1 if target.isdigit() else 0
        if 0 <= n < len(other.words) and " " not in other.words[n]:
            yield key, other.words[n]
