"""How readable the names are, and how well they predict and find: `python -m features evaluate-labels`.

- whole words: the share of live features whose name is made only of whole English words
  (WordNet lemmas or function words; "lenient" also allows proper names such as "Abram"), or is
  a plain kind name ("digits in numbers").
- detection: the distribution of detection scores (balanced accuracy on held-out tokens,
  features/pipeline/label.py) over features that fired at least MIN_FIRES times on held-out text.
- concept search: for CONCEPTS (everyday queries), whether one of the top 3 search results
  names the concept (its name holds one of the concept's words).
- readers: for each concept, the features that really read it on ordinary text: a concept or
  word feature whose strongest read is a concept word, with a detection score of at least
  READER_SCORE on at least MIN_FIRES held-out firings.
- firing readers (the issue's definition, whatever the names say): for each concept, the
  features with at least MIN_FIRES strong held-out firings of which at least FIRING_SHARE land
  on the concept's words (`heldout_words`, the eight words it fires on most there, so a lower
  bound for concepts of many words).
"""
from __future__ import annotations

import re
import statistics
from typing import NamedTuple

from features import kinds as K
from features.catalog import Catalog, Feature
from features.lexicon import Lexicon
from features.pipeline.naming import FUNCTION_WORDS, is_english

MIN_FIRES = 5
READER_SCORE = 0.7
FIRING_SHARE = 0.3
READER_KINDS = (K.CONCEPT, K.WORD, K.WORDS, K.AFTER, "curated")  # not punctuation that happens to follow the word
# (query, words that name the concept): everyday concepts a user might steer with.
CONCEPTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("animals", ("animal", "creature", "beast", "mammal")),
    ("dogs", ("dog", "puppy", "hound", "canine")),
    ("cats", ("cat", "kitten")),
    ("birds", ("bird", "fowl")),
    ("horses", ("horse", "steed")),
    ("fish", ("fish", "fishes")),
    ("weather", ("weather", "rain", "snow", "wind", "storm", "climate")),
    ("rain", ("rain", "rainfall", "shower")),
    ("snow", ("snow", "snowfall")),
    ("wind", ("wind", "breeze", "gale")),
    ("storms", ("storm", "thunder", "tempest", "lightning")),
    ("illness", ("illness", "disease", "sickness", "sick", "ill", "malady")),
    ("disease", ("disease", "illness", "sickness", "plague", "infection")),
    ("pain", ("pain", "ache", "hurt", "suffering")),
    ("feelings", ("feeling", "emotion")),
    ("love", ("love", "loving", "beloved")),
    ("anger", ("anger", "angry", "wrath", "rage", "fury")),
    ("fear", ("fear", "afraid", "fright", "terror")),
    ("happiness", ("happiness", "happy", "joy", "glad")),
    ("sadness", ("sadness", "sad", "sorrow", "grief")),
    ("cities", ("city", "town")),
    ("the sea", ("sea", "ocean", "coast", "shore")),
    ("mountains", ("mountain", "hill", "peak")),
    ("home", ("home", "house")),
    ("church", ("church", "temple", "chapel")),
    ("jobs", ("job", "occupation", "profession", "work", "worker", "employment")),
    ("teachers", ("teacher", "school", "teaching")),
    ("doctors", ("doctor", "physician", "nurse", "hospital")),
    ("soldiers", ("soldier", "army", "military", "troop")),
    ("kings", ("king", "queen", "royalty", "monarch")),
    ("farmers", ("farmer", "farm", "farming")),
    ("food", ("food", "meal", "cooking", "eating", "bread")),
    ("bread", ("bread", "loaf")),
    ("wine", ("wine",)),
    ("fruit", ("fruit", "apple", "grape")),
    ("meat", ("meat", "flesh", "beef")),
    ("sports", ("sport", "game", "football", "athletics")),
    ("games", ("game", "play")),
    ("money", ("money", "gold", "silver", "coin", "pay", "price", "cash")),
    ("music", ("music", "song", "musical")),
    ("books", ("book", "novel")),
    ("war", ("war", "battle", "warfare")),
    ("death", ("death", "die", "dead", "dying")),
    ("children", ("child", "children", "kid", "son", "daughter")),
    ("family", ("family", "father", "mother", "brother", "sister")),
    ("water", ("water", "river")),
    ("fire", ("fire", "flame", "burn")),
    ("trees", ("tree", "forest", "wood", "leaf")),
    ("flowers", ("flower", "blossom", "rose")),
    ("cars", ("car", "vehicle", "automobile")),
    ("computers", ("computer", "computing")),
    ("prayer", ("prayer", "pray")),
    ("colours", ("colour", "color", "red", "blue", "green")),
    ("clothes", ("clothes", "clothing", "garment", "dress")),
)


class Report(NamedTuple):
    live: int  # features that fire (density > 0)
    whole_words: float  # share of live features with a whole-word or plain kind name
    whole_words_lenient: float  # also counting proper names as whole words
    not_whole: list[str]  # a sample of names that fail
    scored: int  # features with at least MIN_FIRES held-out firings
    score_median: float | None
    score_quantiles: dict[str, float]  # "p10", "p25", "p50", "p75", "p90"
    score_histogram: dict[str, int]  # "0.5-0.6": count, ...
    concept_hits: float  # share of CONCEPTS whose top 3 search results name them
    concepts: list[dict]  # per concept: query, hit, top (ids and labels), readers (ids and labels)
    readers_found: int  # concepts with at least one reader
    firing_readers_found: int  # concepts with at least one firing reader


def words_of(name: str) -> list[str]:
    return [w for w in re.findall(r"[^\s,:;()\"“”]+", name)]


def is_plain(f: Feature, lexicon: Lexicon, lenient: bool = False) -> bool:
    """A name of whole English words, or a plain kind name."""
    kind = f.extra.get("kind")
    if kind in K.NAMES and f.label == K.NAMES[kind]:
        return True
    for w in words_of(f.label):
        if is_english(w, lexicon):
            continue
        if lenient and w.isalpha() and w[:1].isupper():
            continue
        return False
    return bool(f.label)


def evaluate(catalog: Catalog, lexicon: Lexicon) -> Report:
    live = [f for f in catalog if f.density]
    plain = [is_plain(f, lexicon) for f in live]
    lenient = [is_plain(f, lexicon, lenient=True) for f in live]
    failing = [f.label for f, ok in zip(live, lenient) if not ok]
    scores = sorted(f.extra["score"] for f in live if isinstance(f.extra.get("score"), (int, float))
                    and (f.extra.get("heldout_fires") or 0) >= MIN_FIRES)
    quantiles = {f"p{q}": round(scores[min(len(scores) - 1, int(q / 100 * len(scores)))], 3)
                 for q in (10, 25, 50, 75, 90)} if scores else {}
    histogram: dict[str, int] = {}
    for lo in (0.0, 0.5, 0.6, 0.7, 0.8, 0.9):
        hi = {0.0: 0.5, 0.9: 1.01}.get(lo, lo + 0.1)
        histogram[f"{lo:.1f}-{min(hi, 1.0):.1f}"] = sum(lo <= s < hi for s in scores)
    concepts = []
    for query, accept in CONCEPTS:
        lemmas = {lexicon.lemma(a) for a in accept} | set(accept)
        top = catalog.search(query, top=3)
        hit = any(_names(f.label, lemmas, lexicon) for f in top)
        readers = [f for f in live if f.extra.get("kind") in READER_KINDS
                   and any(lexicon.lemma(r) in lemmas or r.lower() in lemmas for r in (f.extra.get("reads") or [])[:1])
                   and (f.extra.get("score") or 0) >= READER_SCORE and (f.extra.get("heldout_fires") or 0) >= MIN_FIRES]
        readers.sort(key=lambda f: -f.extra["score"])
        firing = sorted(((share, f) for f in live if (f.extra.get("heldout_fires") or 0) >= MIN_FIRES
                         and (share := firing_share(f, lemmas, lexicon)) >= FIRING_SHARE), key=lambda x: -x[0])
        concepts.append({"query": query, "hit": hit, "top": [[f.id, f.label] for f in top],
                         "readers": [[f.id, f.label, f.extra["score"]] for f in readers[:5]],
                         "firing_readers": [[f.id, f.label, round(share, 3)] for share, f in firing[:5]]})
    return Report(len(live), round(sum(plain) / max(len(live), 1), 4), round(sum(lenient) / max(len(live), 1), 4),
                  failing[:30], len(scores), round(statistics.median(scores), 3) if scores else None, quantiles,
                  histogram, round(sum(c["hit"] for c in concepts) / len(concepts), 3), concepts,
                  sum(bool(c["readers"]) for c in concepts), sum(bool(c["firing_readers"]) for c in concepts))


def firing_share(f: Feature, lemmas: set[str], lexicon: Lexicon) -> float:
    """The share of the feature's strong held-out firings on any of `lemmas` (of the words it
    fires on most there: features/pipeline/label.py `heldout_words`)."""
    return sum(share for w, share in f.heldout_words() if w.lower() in lemmas or lexicon.lemma(w) in lemmas)


def fired_readability(engine, lexicon: Lexicon, prompts, top: int = 5) -> dict:
    """The fired panel on ordinary replies: each prompt's reply on the chat's default settings,
    its `top` features as the panel ranks them (form kinds hidden, as by default), and the share
    of those whose names are whole words or plain kinds."""
    from chat.ui.fired import LastReply, ranked

    shown, readable, samples = 0, 0, []
    for prompt in prompts:
        reply = engine.reply(prompt)
        hits = ranked(LastReply.of(reply), engine.catalog, top=top)
        ok = [is_plain(engine.catalog[h.id], lexicon) for h in hits]
        shown, readable = shown + len(ok), readable + sum(ok)
        samples.append({"prompt": prompt, "reply": reply.text, "top": [[h.id, h.label, good] for h, good in zip(hits, ok)]})
    return {"replies": len(samples), "shown": shown, "readable": round(readable / max(shown, 1), 3), "samples": samples}


def _names(label: str, lemmas: set[str], lexicon: Lexicon) -> bool:
    words = [w.lower() for w in re.findall(r"[A-Za-z]+", label)]
    return any(w in lemmas or lexicon.lemma(w) in lemmas for w in words if w not in FUNCTION_WORDS)
