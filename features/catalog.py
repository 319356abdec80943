"""Named features: labels and per-feature stats for one dictionary, and search over them.

A catalog is stored beside its dictionary as `features.json` (or gzipped, `features.json.gz`):

    {"format": "steerchat-features/1",
     "d_sae": 16384,
     "features": [            # only features that carry some information, ordered by id
       {"id": 123, "label": "the Golden Gate Bridge", "max_activation": 41.5, "density": 0.0003,
        "curated": true, "examples": [{"tokens": [...], "acts": [...], "max_index": 7}],
        "top_tokens": [" bridge", " Golden"], "steerability": 0.31,
        "strengths": {"add": [4, 8], "clamp": [4, 12]}, ...any other keys, kept in `Feature.extra`}]}

Only `id` is required in an entry; `label` defaults to "", the stats to null, the lists to [].

User renames are kept apart, in `$STEERCHAT_HOME/renames/{key}.json` (a plain {"id": "label"}
map; STEERCHAT_HOME defaults to ~/.config/steerchat, key is `Dictionary.fingerprint()`). That
way a regenerated or shipped features.json never loses them and `save()` never writes them
into it. A renamed feature counts as curated. A catalog without a key keeps renames in memory.
"""
from __future__ import annotations

import functools
import gzip
import heapq
import json
import math
import operator
import os
import re
import shlex
import statistics
import threading
import warnings
from bisect import bisect_left
from collections import defaultdict
from dataclasses import dataclass, field, replace
from difflib import SequenceMatcher
from pathlib import Path
from typing import Iterator, Sequence

import torch

from features.errors import FeatureNotFound  # noqa: F401 - raised here, and imported from here
from features.paths import home_dir

FORMAT = "steerchat-features/1"
FILENAME = "features.json"
MAX_LABEL_CHARS = 200
# Neuronpedia often holds several explanations of one feature. The earliest type listed here
# wins (the original Gemma Scope autointerp first); among other types the first row seen wins.
PREFERRED_EXPLANATION_TYPES = ("oai_token-act-pair", "np_max-act-logits")
_TYPE_RANK = {name: rank for rank, name in enumerate(PREFERRED_EXPLANATION_TYPES)}

_STOP_WORDS = frozenset("a an and about by for in of on or the to with".split())
_PREFIX_MIN_CHARS = 3  # "a" or "do" as a prefix would match half the vocabulary
_FUZZY_MIN_CHARS = 4  # short words have too many one-letter neighbours ("dog" ~ "dot")
_FUZZY_CUTOFF = 0.8  # difflib ratio; "brdige"~"bridge" is 0.83, "dog"~"dot" 0.67
# Match tiers, best last. A meaning match (the query word, a synonym, a derived form, a more
# specific or general word in the name, reads or writes) outranks a prefix or typo match.
_FUZZY, _PREFIX, _MEANING, _EXACT, _PHRASE = range(5)
# How much a meaning match counts by where the word is: the name says what the feature is;
# writes, what steering with it says; reads, the words it fires on.
_FIELD_WEIGHT = {"name": 1.0, "writes": 0.9, "reads": 0.8}
# Writers rank first when they write the query word itself, a synonym or a derived form; one
# that writes "red" does not outrank a feature named "colour".
_WRITES_FIRST_CLOSENESS = 0.85
_WORD = re.compile(r"\w+")


@dataclass
class Feature:
    id: int
    label: str = ""
    max_activation: float | None = None
    density: float | None = None
    curated: bool = False
    examples: list[dict] = field(default_factory=list)
    top_tokens: list[str] = field(default_factory=list)
    # Output score in 0..1: how much amplifying the feature lifts the tokens it names
    # (features/pipeline/steerability.py); None when not measured.
    steerability: float | None = None
    # Measured strength bands where the concept shows and text stays fluent, per mode:
    # {"add": [lo, hi], "clamp": [lo, hi]} in multiples of max_activation (features/pipeline/calibrate.py).
    strengths: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        row = {"id": self.id, "label": self.label, "max_activation": self.max_activation,
               "density": self.density, "curated": self.curated, "examples": self.examples,
               "top_tokens": self.top_tokens}
        if self.steerability is not None:
            row["steerability"] = self.steerability
        if self.strengths:
            row["strengths"] = self.strengths
        return row | self.extra

    def heldout_words(self) -> list[tuple[str, float]]:
        """Where its strong held-out firings land: (word as written, share) for the words they
        land on most (features/pipeline/label.py), well-formed entries only; [] if unmeasured."""
        rows = self.extra.get("heldout_words")
        return [(r[0], float(r[1])) for r in rows if isinstance(r, (list, tuple)) and len(r) == 2
                and isinstance(r[0], str) and isinstance(r[1], (int, float))] if isinstance(rows, list) else []

    def has_info(self) -> bool:
        return bool(self.label or self.curated or self.examples or self.top_tokens or self.extra
                    or self.strengths or self.steerability is not None
                    or self.max_activation is not None or self.density is not None)


class Catalog:
    """Labels and stats for the `d_sae` features of one dictionary, indexed by feature id.

    Treat the features that `[]` and `search` return as read-only: change them through
    `set_stats`, `rename` and `import_neuronpedia`, which keep the search index current.
    """

    def __init__(self, d_sae: int, features: dict[int, Feature] | None = None,
                 key: str | None = None, renames_path: Path | None = None) -> None:
        """`renames_path` overrides where the renames for `key` are kept; with neither, renames
        live in memory only."""
        self.d_sae = d_sae
        self.key = key
        self._features = dict(features or {})  # what features.json holds; renames stay apart
        if renames_path is None and key is not None:
            renames_path = _renames_file(key)
        self._renames_path = Path(renames_path) if renames_path is not None else None
        stored = _read_renames(self._renames_path) if self._renames_path and self._renames_path.exists() else {}
        self._renames = {i: label for i, label in stored.items() if i < d_sae}
        self._index: _Index | None = None  # built on the first search
        # Where the labels came from, or why there are none, for status lines (features/neuronpedia.py).
        self.labels_source = ""
        self._update_fallback()

    @classmethod
    def load(cls, folder: Path | None, d_sae: int, key: str | None = None) -> "Catalog":
        path = _catalog_file(Path(folder)) if folder is not None else None
        features = _read_features(path, d_sae) if path is not None and path.exists() else {}
        return cls(d_sae, features, key=key)

    def save(self, folder: Path, compress: bool | None = None) -> Path:
        """Write features.json, or features.json.gz with `compress` (default: whichever the
        folder already has; a shipped 16k catalog with examples is ~5x smaller gzipped)."""
        # One feature per line: readable, diffable, and compact despite examples.
        rows = [json.dumps(f.to_json(), ensure_ascii=False, allow_nan=False)
                for _, f in sorted(self._features.items()) if f.has_info()]
        body = ",\n".join(rows)
        text = f'{{"format": "{FORMAT}", "d_sae": {self.d_sae}, "features": [\n{body}\n]}}\n'
        folder = Path(folder)
        if compress is None:
            compress = _catalog_file(folder).suffix == ".gz"
        path = folder / (FILENAME + ".gz" if compress else FILENAME)
        _write_atomic(path, gzip.compress(text.encode("utf-8"), mtime=0) if compress else text)
        return path

    def __len__(self) -> int:
        return self.d_sae

    def __iter__(self) -> Iterator[Feature]:
        return (self[i] for i in range(self.d_sae))

    def __getitem__(self, i: int) -> Feature:
        i = self._check_id(i)
        feature = self._features.get(i) or Feature(i)
        if i in self._renames:
            return replace(feature, label=self._renames[i], curated=True)
        return feature

    def label(self, i: int) -> str:
        return self[i].label or f"feature {i}"

    def describe(self, i: int) -> dict:
        """Feature i as search results show it (CLI `search --json`, the app's /search): `label`
        is the display name (a person's where curated or renamed), `name` the automatic one,
        `reads`/`writes` whole words, `score` its detection score (None when not measured)."""
        f = self[i]
        words = lambda key: [w for w in f.extra.get(key) or [] if isinstance(w, str)]
        return {"id": f.id, "label": self.label(i), "name": f.extra.get("name") or self.label(i),
                "kind": f.extra.get("kind"), "reads": words("reads"), "writes": words("writes"),
                "score": f.extra.get("score"), "max_activation": f.max_activation, "density": f.density,
                "steerability": f.steerability, "curated": f.curated, "strengths": f.strengths}

    def has_labels(self) -> bool:
        """Whether any feature has a label of its own (user renames do not count)."""
        return any(f.label for f in self._features.values())

    def max_activation(self, i: int) -> float | None:
        """The feature's own max activation; else the median over features that have one, a
        typical scale for steering strengths; None when no feature has stats."""
        own = self[i].max_activation
        return own if own is not None else self._fallback_max

    def set_stats(self, max_activation: Sequence[float], density: Sequence[float]) -> None:
        maxes, densities = _finite_floats(max_activation), _finite_floats(density)
        if len(maxes) != self.d_sae or len(densities) != self.d_sae:
            raise ValueError(f"set_stats needs {self.d_sae} values each, got {len(maxes)} and {len(densities)}")
        for i, (m, d) in enumerate(zip(maxes, densities)):
            feature = self._features.setdefault(i, Feature(i))
            feature.max_activation, feature.density = m, d
        self._update_fallback()

    def search(self, query: str, top: int = 10, writes_first: bool = True) -> list[Feature]:
        """Features whose label matches `query`, best first: exact phrase > every word exact >
        every word by meaning (features/lexicon.py: the word or a synonym, derived form, more
        specific or more general word in the name, reads or writes) > every word exact or as a
        prefix > some word only fuzzily (typos). Within a tier, curated features first (when the
        query matched their label or writes, not only their reads); then,
        with `writes_first` (choosing what to steer with), features that write the query word
        (or a synonym or derived form); then closer word matches, labels with fewer other words
        and more steerable features (closeness x (0.5 + 0.5 steerability)).
        A number also matches that feature id, ranked first. An empty query is a ValueError."""
        query = str(query).strip()
        if not query:
            raise ValueError("empty search query")
        hits = [self[int(query)]] if query.isdecimal() and int(query) < self.d_sae else []
        if self._index is None:
            self._index = _Index({i: self[i] for i in self._features.keys() | self._renames.keys()})
        ranked = self._index.search(_words(query), top + 1, writes_first)  # a spare in case it repeats the id hit
        hits += [self[i] for i in ranked if not (hits and i == hits[0].id)]
        return hits[:max(top, 0)]

    def why(self, i: int, query: str) -> str:
        """What a search hit matched that its name does not say: "writes: hospital" for "word:
        Moses", which steering makes say hospital; "reads: …" for one that fires on the word; ""
        where the name holds every query word (or the match was by meaning or spelling)."""
        named = set(_words(self.label(i)))
        asked = [w for w in dict.fromkeys(_words(str(query))) if w not in _STOP_WORDS and w not in named]
        if self._index is not None:  # and the words a typo meant, as search read them ("brdige": bridge)
            asked += [w for q in asked for fixed, _ in self._index.corrections(q) for w in _words(fixed)]
        f = self[i]
        for field in ("writes", "reads"):
            has = set(_list_words(f.extra.get(field)))
            found = [w for w in asked if w in has]
            if found:
                return f"{field}: {', '.join(found)}"
        return ""

    def resolve(self, query: str | int) -> int:
        """A feature id from an id (int or digits) or a name (the best search hit)."""
        if isinstance(query, str) and query.strip().isdecimal():
            query = int(query)
        if not isinstance(query, str):
            return self._check_id(query)
        hits = self.search(query, top=1)
        if not hits:
            q = query.strip()
            raise FeatureNotFound(f"no feature matches {q!r}; try `python -m chat search {shlex.quote(q)}`")
        return hits[0].id

    def rename(self, i: int, label: str) -> None:
        i = self._check_id(i)
        label = label.strip() if isinstance(label, str) else ""
        if not label:
            raise ValueError("a feature label cannot be empty")
        if len(label) > MAX_LABEL_CHARS:
            raise ValueError(f"a feature label can have at most {MAX_LABEL_CHARS} characters, got {len(label)}")
        self._renames[i] = label
        self._index = None
        if self._renames_path is not None:
            # Re-read first so renames saved meanwhile by another process (app + CLI) survive.
            path = self._renames_path
            stored = _read_renames(path) if path.exists() else {}
            stored[i] = label
            _write_atomic(path, json.dumps({str(k): v for k, v in sorted(stored.items())},
                                           ensure_ascii=False, indent=1) + "\n")

    def import_neuronpedia(self, path: Path) -> int:
        """Set labels from a Neuronpedia explanations export; returns how many were set.

        Reads JSON (a list of rows, or {"explanations": [...]}) or, for *.jsonl and *.jsonl.gz,
        one row per line. Each row needs `index` (int or digit string) and `description`.
        Curated features keep their labels; user renames still apply on top.
        """
        path = Path(path)
        chosen: dict[int, tuple[int, str]] = {}  # index -> (type preference, description)
        sources, out_of_range, unusable = set(), 0, 0
        for row in _explanation_rows(path):
            try:
                index, description = int(row["index"]), row["description"].strip()
            except (KeyError, TypeError, ValueError, AttributeError):
                unusable += 1
                continue
            if not description:
                unusable += 1
            elif not 0 <= index < self.d_sae:
                out_of_range += 1
            else:
                sources.add(f"{row.get('modelId')}/{row.get('layer')}")
                rank = _TYPE_RANK.get(row.get("typeName"), len(_TYPE_RANK))
                if index not in chosen or rank < chosen[index][0]:
                    chosen[index] = (rank, description)
        if not chosen and not out_of_range:
            raise ValueError(f"{path}: no explanation rows with 'index' and 'description'")
        if len(sources) > 1:
            raise ValueError(f"{path} mixes several sources ({', '.join(sorted(sources))}); import one at a time")
        if out_of_range or unusable:
            warnings.warn(f"{path.name}: skipped {out_of_range} rows with an index outside 0..{self.d_sae - 1}"
                          f" and {unusable} rows without an index or description", stacklevel=2)
        imported = 0
        for index, (_, description) in chosen.items():
            feature = self._features.setdefault(index, Feature(index))
            if not feature.curated:
                feature.label = description
                imported += 1
        self._index = None
        return imported

    def _check_id(self, i: int) -> int:
        i = operator.index(i)
        if not 0 <= i < self.d_sae:
            raise FeatureNotFound(f"feature id {i} out of range (this dictionary has {self.d_sae} features)")
        return i

    def _update_fallback(self) -> None:
        known = [f.max_activation for f in self._features.values() if f.max_activation is not None]
        self._fallback_max = statistics.median(known) if known else None


class _Index:
    """An inverted index over label words, for ranked, typo-tolerant search."""

    def __init__(self, features: dict[int, Feature]) -> None:
        self.words = {i: _words(f.label) for i, f in features.items() if f.label}
        # Label length for ranking counts content words only: "references to X" is still about X,
        # and "word: sea" about sea (a kind name's prefix is not what it names).
        self.length = {i: max(1, sum(w not in _STOP_WORDS for w in _words(f.label.rpartition(": ")[2])))
                       for i, f in features.items() if f.label}
        self.curated = {i for i, f in features.items() if f.curated}
        # Unmeasured features count as middling, so measuring never buries a catalog.
        self.steerability = {i: 0.5 if f.steerability is None else min(1.0, max(0.0, f.steerability))
                             for i, f in features.items()}
        self.postings: dict[str, set[int]] = defaultdict(set)
        for i, words in self.words.items():
            for w in words:
                self.postings[w].add(i)
        # Meaning matches: every word of names, reads and writes -> {feature id: field weight}.
        self.fields: dict[str, dict[int, float]] = defaultdict(dict)
        self.writes: dict[int, set[str]] = {}
        for i, f in features.items():
            # "fires on almost every token" says what a feature is, not what it means: no "fire".
            name = self.words.get(i, ()) if f.extra.get("kind") != "dense" else ()
            fields = [("name", name), ("reads", _list_words(f.extra.get("reads"))),
                      ("writes", _list_words(f.extra.get("writes")))]
            for name, words in fields:
                for w in words:
                    if self.fields[w].get(i, 0.0) < _FIELD_WEIGHT[name]:
                        self.fields[w][i] = _FIELD_WEIGHT[name]
            self.writes[i] = set(fields[2][1])
        # Prefixes and typos match the words of reads and writes too ("brdige" finds a feature
        # that reads "bridge"), at their own tiers.
        self.vocab = sorted(self.fields)  # for prefix scans with bisect
        self._narrower: dict[str, dict[str, float]] | None = None  # broader word -> {word: closeness}
        self.by_length: dict[int, list[str]] = defaultdict(list)
        for w in self.vocab:
            self.by_length[len(w)].append(w)

    def word_matches(self, q: str) -> dict[str, tuple[int, float]]:
        """Vocabulary words matching query word `q` -> (tier, closeness in 0..1)."""
        found = {q: (_EXACT, 1.0)} if q in self.postings else {}
        if len(q) >= _PREFIX_MIN_CHARS:
            j = bisect_left(self.vocab, q)
            while j < len(self.vocab) and self.vocab[j].startswith(q):
                w = self.vocab[j]
                found.setdefault(w, (_PREFIX, len(q) / len(w)))  # "dog": "dogs" > "dogma"
                j += 1
        if len(q) >= _FUZZY_MIN_CHARS and not _is_word(q):  # "coma" is a word, not a typo of "commas"
            matcher = SequenceMatcher(b=q)  # difflib caches its analysis of `b`
            for n in range(len(q) * 2 // 3, len(q) * 3 // 2 + 1):  # lengths that can reach the cutoff
                for w in self.by_length.get(n, ()):
                    if w in found:
                        continue
                    matcher.set_seq1(w)
                    # The cheap upper bounds first: most words fail there.
                    if (matcher.real_quick_ratio() >= _FUZZY_CUTOFF and matcher.quick_ratio() >= _FUZZY_CUTOFF
                            and (ratio := matcher.ratio()) >= _FUZZY_CUTOFF):
                        found[w] = (_FUZZY, ratio)
        return found

    def meaning_matches(self, q: str) -> dict[str, float]:
        """Words of names, reads and writes that mean query word `q` -> closeness in 0..1."""
        from features.lexicon import default

        lexicon = default()
        found = {q: 1.0} if q in self.fields else {}
        if lexicon is None or not q.isalpha():  # numbers mean themselves ("5" is not "a number")
            return found
        lemma = lexicon.lemma(q)
        if lemma in self.fields:
            found[lemma] = 1.0
        for w, rel in lexicon.meanings(q).items():
            if w in self.fields and rel.how != "category" and (rel.how != "broader" or rel.closeness >= 0.55):
                found.setdefault(w, rel.closeness)
        if self._narrower is None:
            self._narrower = defaultdict(dict)
            for w in self.fields:
                if not w.isalpha() or len(w) < 3:
                    continue
                for up, rel in lexicon.meanings(w).items():
                    if rel.how in ("broader", "category"):
                        self._narrower[up][w] = max(self._narrower[up].get(w, 0.0), rel.closeness + 0.2)
        for w, c in self._narrower.get(lemma, {}).items():  # "dog" for "animal"
            found[w] = max(found.get(w, 0.0), min(c, 0.8))
        return found

    def corrections(self, q: str, top: int = 1) -> list[tuple[str, float]]:
        """Lexicon words a typo away from `q` (difflib ratio >= the fuzzy cutoff), closest first."""
        from features.lexicon import default

        lexicon = default()
        if lexicon is None or len(q) < _FUZZY_MIN_CHARS or not q.isalpha() or _is_word(q):
            return []
        matcher = SequenceMatcher(b=q)
        found = []
        for w in lexicon.by_length(len(q) * 2 // 3, len(q) * 3 // 2 + 1):
            matcher.set_seq1(w)
            if (matcher.real_quick_ratio() >= _FUZZY_CUTOFF and matcher.quick_ratio() >= _FUZZY_CUTOFF
                    and (ratio := matcher.ratio()) >= _FUZZY_CUTOFF):
                found.append((w, ratio))
        # Fewest edits first (a swapped pair is one edit: "brdige" is "bridge", not "birdie").
        return sorted(found, key=lambda wr: (_edits(q, wr[0]), -wr[1]))[:top]

    def search(self, query: tuple[str, ...], top: int, writes_first: bool = True) -> list[int]:
        # Stop words only count when the query has nothing else ("the").
        content = [w for w in query if w not in _STOP_WORDS] or list(query)
        if not content:
            return []
        per_word = []  # for each query word: feature id -> its best (tier, closeness)
        writes_match: set[int] = set()
        # Features that every query word matched in their label or writes, not only in their
        # reads: a curated writer often fires on unrelated words ("children" reads "sea"), so
        # only what a person checked puts it first.
        vouched: set[int] | None = None
        for q in content:
            best: dict[int, tuple[int, float]] = {}
            checked: set[int] = set()
            for w, match in self.word_matches(q).items():
                for i in self.postings.get(w, ()):
                    best[i] = max(best.get(i, match), match)
                    checked.add(i)
                if match[0] < _EXACT:
                    for i, weight in self.fields[w].items():
                        scaled = (match[0], match[1] * weight)
                        best[i] = max(best.get(i, scaled), scaled)
                        if w in self.writes[i]:
                            checked.add(i)
            for w, closeness in self.meaning_matches(q).items():
                for i, weight in self.fields[w].items():
                    match = (_MEANING, closeness * weight)
                    if best.get(i, (-1, 0.0)) < match:
                        best[i] = match
                    if w in self.writes[i] or i in self.postings.get(w, ()):  # writes or label
                        checked.add(i)
                    if w in self.writes[i] and closeness >= _WRITES_FIRST_CLOSENESS:
                        writes_match.add(i)
            if not best:  # a typo of a word no feature uses: what the word it meant means ("brdige")
                for fixed, ratio in self.corrections(q):
                    for w, closeness in self.meaning_matches(fixed).items():
                        for i, weight in self.fields[w].items():
                            match = (_FUZZY, ratio * closeness * weight)
                            best[i] = max(best.get(i, match), match)
            per_word.append(best)
            vouched = checked if vouched is None else vouched & checked
        ranked = []
        for i in set.intersection(*(set(best) for best in per_word)):  # every word must match
            matches = [best[i] for best in per_word]
            tier = min(t for t, _ in matches)
            if tier == _EXACT and _contains(self.words[i], query):
                tier = _PHRASE
            coverage = min(1.0, len(content) / self.length.get(i, len(content)))
            score = sum(c for _, c in matches) / len(matches) * (0.5 + 0.5 * coverage)
            # Within a tier: features a person checked first, then those that write what they
            # name (steerability), then closeness of the words.
            score *= 0.5 + 0.5 * self.steerability[i]
            # Curated features first: a person read them and labelled them by what they write.
            writer = writes_first and i in writes_match
            ranked.append((-tier, not (i in self.curated and i in vouched), not writer, -round(score, 3), i))
        return [key[-1] for key in heapq.nsmallest(top, ranked)]


def neighbours(dictionary, i: int, k: int = 10) -> list[tuple[int, float]]:
    """The k features whose decoder rows are closest to feature i's by cosine, most similar
    first, excluding i. `dictionary` is anything with a `W_dec` (d_sae, d_in) tensor."""
    W = dictionary.W_dec.detach().float()  # no copy for float32; exact maths for half types
    d_sae = W.shape[0]
    if not 0 <= i < d_sae:
        raise FeatureNotFound(f"feature id {i} out of range (this dictionary has {d_sae} features)")
    norms = W.norm(dim=1).clamp_min(1e-12)  # (d_sae,)
    # Dividing the one mat-vec product by the norms equals normalising the rows first, without
    # a normalised copy of W (150 MB at 16k x 2304).
    cos = (W @ W[i]) / (norms * norms[i])  # (d_sae,)
    cos[i] = -math.inf
    top = torch.topk(cos, min(k, d_sae - 1))
    return list(zip(top.indices.tolist(), top.values.tolist()))


def _edits(a: str, b: str) -> int:
    """Optimal string alignment distance: insertions, deletions, substitutions, adjacent swaps."""
    d = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[len(a)][len(b)]


def _is_word(q: str) -> bool:
    """An English word the shipped lexicon knows (so a spelling neighbour is another word)."""
    from features.lexicon import default

    lexicon = default()
    return lexicon is not None and q.isalpha() and lexicon.knows(q)


def _list_words(values: object) -> tuple[str, ...]:
    """The words of a list of strings (a feature's reads or writes), read defensively."""
    if not isinstance(values, list):
        return ()
    return tuple(w for v in values if isinstance(v, str) for w in _words(v))


def _words(text: str) -> tuple[str, ...]:
    """Lowercase words, apostrophes dropped and plurals folded, so "Dogs'" finds "dog"."""
    text = text.casefold().replace("'", "").replace("\u2019", "")
    return tuple(map(_singular, _WORD.findall(text)))


@functools.cache  # the same few thousand words recur across 16k labels
def _singular(w: str) -> str:
    if len(w) > 4 and w.endswith("ies"):
        return w[:-3] + "y"
    if len(w) > 3 and w.endswith("s") and not w.endswith("ss"):
        return w[:-1]
    return w


def _contains(words: tuple[str, ...], phrase: tuple[str, ...]) -> bool:
    n = len(phrase)
    return any(words[j:j + n] == phrase for j in range(len(words) - n + 1))


def _finite_floats(values: Sequence[float]) -> list[float | None]:
    values = values.tolist() if hasattr(values, "tolist") else list(values)  # tensors, arrays
    return [float(v) if math.isfinite(float(v)) else None for v in values]  # JSON has no NaN


def _catalog_file(folder: Path) -> Path:
    """features.json, else features.json.gz where only that exists."""
    plain = folder / FILENAME
    packed = folder / (FILENAME + ".gz")
    return packed if packed.exists() and not plain.exists() else plain


def _read_features(path: Path, d_sae: int) -> dict[int, Feature]:
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        data = json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, gzip.BadGzipFile, EOFError) as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path} is not a steerchat features file (expected \"format\": \"{FORMAT}\")")
    if data.get("d_sae") != d_sae:
        raise ValueError(f"{path} is for a dictionary with {data.get('d_sae')!r} features, this one has {d_sae}")
    rows = data.get("features", [])
    if not isinstance(rows, list):
        raise ValueError(f"{path}: 'features' must be a list")
    features: dict[int, Feature] = {}
    for n, row in enumerate(rows):
        feature = _parse_feature(row, d_sae, f"{path}: features[{n}]")
        if feature.id in features:
            raise ValueError(f"{path}: features[{n}]: duplicate id {feature.id}")
        features[feature.id] = feature
    return features


def _parse_feature(row: object, d_sae: int, where: str) -> Feature:
    if not isinstance(row, dict):
        raise ValueError(f"{where}: must be an object, got {row!r}")
    rest = dict(row)  # what is left after the known fields becomes `extra`

    def take(name: str, types: tuple, default: object) -> object:
        value = rest.pop(name, default)
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise ValueError(f"{where}: {name!r} must be {' or '.join(t.__name__ for t in types)}, got {value!r}")
        return value

    fid = take("id", (int,), None)
    if not 0 <= fid < d_sae:
        raise ValueError(f"{where}: id {fid} is out of range 0..{d_sae - 1}")
    number = (int, float, type(None))
    strengths = take("strengths", (dict,), {})
    for mode, band in strengths.items():
        if not (isinstance(band, list) and len(band) == 2 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in band)):
            raise ValueError(f"{where}: strengths[{mode!r}] must be [low, high], got {band!r}")
    return Feature(id=fid, label=take("label", (str,), ""), max_activation=take("max_activation", number, None),
                   density=take("density", number, None), curated=take("curated", (bool,), False),
                   examples=take("examples", (list,), []), top_tokens=take("top_tokens", (list,), []),
                   steerability=take("steerability", number, None), strengths=strengths, extra=rest)


def _renames_file(key: str) -> Path:
    if not re.fullmatch(r"[\w.-]+", key):
        raise ValueError(f"a catalog key must be letters, digits, '.', '-' or '_', got {key!r}")
    return home_dir() / "renames" / f"{key}.json"


def _read_renames(path: Path) -> dict[int, str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(data, dict) or not all(k.isdecimal() and isinstance(v, str) for k, v in data.items()):
        raise ValueError(f"{path} must map feature ids to labels, like {{\"123\": \"golden gate\"}}")
    return {int(k): v for k, v in data.items()}


def _write_atomic(path: Path, data: str | bytes) -> None:
    """Write via a temporary file and os.replace, so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same folder, so os.replace stays atomic; pid and thread, so concurrent writers never share it.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _explanation_rows(path: Path) -> Iterator[dict]:
    jsonl = path.name.removesuffix(".gz").endswith(".jsonl")
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        try:
            if jsonl:  # streamed: a whole source's export is tens of MB
                yield from (json.loads(line) for line in f if line.strip())
                return
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON{' lines' if jsonl else ''} ({e})") from None
    rows = data.get("explanations") if isinstance(data, dict) else data
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a list of explanation rows or {{\"explanations\": [...]}}")
    yield from rows
