"""A name a person can read, from a feature's distinctive words (its reads).

Rules, in order (`name`):
1. Reads that are punctuation, white space, digits or code are named by that kind.
2. One word and its forms ("bridge", "bridges", "Bridge") -> that word.
3. Words that share a WordNet hypernym or category -> that, plural where it counts things:
   whale, shark, dolphin -> "sea creatures"-like ("aquatic vertebrates"); Monday, Friday ->
   "weekdays"; cake, bread, soup -> "food and drink". Given how often the text writes each
   word or phrase (`written`, per million tokens), a hypernym the text hardly uses
   ("tracheophytes" for coffee and peanuts, "medium of exchange" for money and price) gives way
   to a name that covers more of the words ("food and drink"),
   or else to rule 4; a plural the text hardly writes ("clothings", "childs") stays singular,
   and a verb's name is never made plural ("expects").
4. Otherwise the two or three strongest words: joined where two of them share a meaning
   ("cold, hot and warm"; `related`), else listed as the words they are
   ("words: edge, mission, course"), not as if they made a concept.
Proper names that no dictionary has ("Abram", "Stinner") name a feature "proper names" where
they are most of what it reads, and are left out of names beside English words.
A lone letter that is most of what it reads names it ("B"): chat logs mark their speakers
"A:" and "B:". Names are whole words, about 40 characters at most.
"""
from __future__ import annotations

import itertools
import os
import re
from typing import Callable, NamedTuple, Sequence

from features.kinds import CONCEPT, FUNCTION, FUNCTION_WORDS, NAMES, PROPER, WORD, WORDS, punctuation_name
from features.lexicon import TOO_GENERAL, Lexicon

MAX_CHARS = 40
MIN_NOUN_DEPTH = 5  # hypernyms fewer steps below WordNet's root than this are too general to name
# Rates, not counts, so that more text does not let rarer words through: at 5 writes in the 816k
# tokens these were set on, twice the text made "atmospheric phenomenon", "medium of exchange"
# and "childs" names.
MIN_WRITTEN = 6.0  # per million tokens: a hypernym's words written less often are not everyday words
MIN_PLURAL = 1.0  # per million tokens: a plural written less often stays singular
Written = Callable[[str], float]  # how often the text writes a word exactly so (any case), per million tokens
Close = Callable[[str, str], float]  # how close the model places two words, -1..1 (label.py `closeness`)
# Two words share a meaning (`related`) when WordNet links them (forms, synonyms, derived
# forms, nouns this few steps apart through a shared hypernym: snow and rain are 2) or the
# model's own embeddings place them this close. WordNet has no links between most adjectives
# and adverbs ("cold, hot and warm", "almost, kinda and somewhat"); the embeddings do. On 60
# list names read by hand, this kept 18 of 23 related lists as they were ("said, write and
# report" is at 0.41) and let 2 of 37 unrelated ones through ("problem, study and situation");
# "kind, king and question" is at 0.33. (Verbs that share a hypernym two steps up linked
# "fall" and "dog" through "move": too loose.)
MAX_KINSHIP = 3
MIN_CLOSE = 0.43
SAME_STEM = 7  # letters two words begin with that make them one family ("characteristic", "characterized"; "general" and "generate" share 6)
# WordNet categories named in plain words, where a group of reads shares nothing nearer.
CATEGORY_NAMES = {
    "noun.animal": "animals", "noun.food": "food and drink", "noun.feeling": "feelings",
    "noun.plant": "plants", "noun.body": "the body", "noun.location": "places", "noun.time": "times and dates",
    "noun.person": "people", "noun.phenomenon": "natural phenomena", "noun.possession": "money and possessions",
    "noun.substance": "substances and materials", "noun.quantity": "quantities and units",
    "noun.communication": "language and communication", "noun.cognition": "knowledge and thought",
    "noun.artifact": "things people make", "noun.act": "actions", "noun.state": "states and conditions",
    "noun.attribute": "qualities", "noun.event": "events", "noun.group": "groups and organisations",
    "noun.shape": "shapes", "noun.object": "natural objects", "noun.process": "processes",
    "noun.motive": "motives", "noun.relation": "relations",
    "verb.motion": "moving", "verb.communication": "saying and telling", "verb.emotion": "feeling emotions",
    "verb.perception": "seeing and hearing", "verb.cognition": "thinking and knowing", "verb.body": "the body",
    "verb.consumption": "eating and drinking", "verb.creation": "making things", "verb.possession": "having and giving",
    "verb.social": "social life", "verb.competition": "fighting and competing", "verb.weather": "weather",
    "verb.change": "change", "verb.contact": "touching and handling", "verb.stative": "being and seeming",
}
_CATEGORY_OF: dict[str, set[str]] = {}  # "the body" -> {"noun.body", "verb.body"}
for _lex, _name in CATEGORY_NAMES.items():
    _CATEGORY_OF.setdefault(_name, set()).add(_lex)
# Mass nouns read badly in the plural ("weathers"); their categories stay singular.
_MASS_LEXNAMES = {"noun.substance", "noun.phenomenon", "noun.food", "noun.feeling", "noun.state",
                  "noun.attribute", "noun.cognition", "noun.act", "noun.communication", "noun.possession"}


class Reading(NamedTuple):
    """One distinctive word of a feature, as the labeller found it."""
    word: str  # as most often written ("Bridge", "whales"): what the reads list shows
    lemma: str  # lowercase base form: what is counted and matched
    weight: float  # its share of what the feature reads (detection gain), > 0
    kind: str | None = None  # "punctuation", "space", "digits", "code", "keyword" when not a word


class Name(NamedTuple):
    name: str
    kind: str  # CONCEPT, WORD, WORDS or one of features.kinds.NAMES


def is_english(word: str, lexicon: Lexicon) -> bool:
    w = word.lower().replace("’", "'")
    if "'" in w:  # "don't", "John's": the word before the ending
        w = w.split("'")[0]
    return w in FUNCTION_WORDS or (w.isalpha() and lexicon.knows(w))


def plural(word: str) -> str:
    if word.endswith(("s", "x", "ch", "sh")):
        return word + "es"
    if word.endswith("y") and len(word) > 2 and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


def display(word: str) -> str:
    """A word as a name shows it: lowercase unless it is a proper name or an acronym."""
    return word if (word[:1].isupper() and not word.isupper() or word.isupper() and len(word) > 1) else word.lower()


def name(reads: Sequence[Reading], lexicon: Lexicon, written: Written | None = None,
         close: Close | None = None) -> Name:
    """The name for these reads (best first); see the module doc for the rules. `written`: how
    often the text writes a word, so that hypernyms are everyday words (None: any word);
    `close`: how close the model places two words (None: WordNet alone says what is related)."""
    reads = [r for r in reads if r.weight > 0]
    if not reads:
        return Name("rare contexts", "rare")
    total = sum(r.weight for r in reads)
    formal = [r for r in reads if r.kind]
    if sum(r.weight for r in formal) >= 0.6 * total:  # mostly form: name the kind
        kinds = [r.kind for r in formal]
        top = max(set(kinds), key=lambda k: sum(r.weight for r in formal if r.kind == k))
        if top in ("punctuation", "space"):
            units = [r.word for r in formal if r.kind in ("punctuation", "space")]
            return Name(punctuation_name(units), top)
        return Name(NAMES[top], top)
    top = reads[0]
    if not top.kind and len(top.word) == 1 and top.word.isalpha() and top.weight >= 0.5 * total \
            and top.lemma not in FUNCTION_WORDS:  # the "B" of "B: I'm fine", a speaker's letter in chats
        return Name(top.word, WORD)
    words = [r for r in reads if not r.kind and _nameable(r.word, lexicon)]
    if not words:  # identifiers, names of things no dictionary has: code, mostly
        return Name(NAMES["code"], "code")
    english = [r for r in words if is_english(r.word, lexicon)]
    if sum(r.weight for r in english) < 0.3 * sum(r.weight for r in words):  # "Abram", "Stinner"
        return Name(NAMES[PROPER], PROPER)
    words = english  # a proper name beside English words would read as a fragment of something
    content = [r for r in words if r.lemma not in FUNCTION_WORDS]
    if not content or sum(r.weight for r in content) < 0.3 * sum(r.weight for r in words):
        if sum(r.weight for r in words[:1]) >= 0.6 * sum(r.weight for r in words) or len(words) == 1:
            return Name(_fit(display(words[0].word)), WORD)
        grammar = [display(r.word) for r in words if r.lemma in FUNCTION_WORDS]
        return Name(_fit("function words: " + ", ".join(dict.fromkeys(grammar[:3]))), FUNCTION)
    first = content[0]
    share = sum(r.weight for r in content)
    forms = [r for r in content if _same_word(r, first, lexicon)]
    if sum(r.weight for r in forms) >= 0.6 * share or len(content) == 1:
        return Name(_fit(display(first.word)), WORD)
    group = _group(content[:8], lexicon, written)
    if group:
        return Name(_fit(group), CONCEPT)
    shown: list[str] = []
    for r in content:
        if len(shown) == 3:
            break
        if not any(_same_word(r, Reading(s, lexicon.lemma(s), 1.0), lexicon) for s in shown):
            shown.append(display(r.word))
    text = _listed(shown)
    while len(text) > MAX_CHARS and len(shown) > 1:
        shown.pop()
        text = _listed(shown)
    if len(shown) > 1 and not any(related(a, b, lexicon, close) for a, b in itertools.combinations(shown, 2)):
        return Name(_fit("words: " + ", ".join(shown)), WORDS)
    return Name(_fit(text), CONCEPT)


def related(a: str, b: str, lexicon: Lexicon, close: Close | None = None) -> bool:
    """Whether two words share a meaning (see MAX_KINSHIP), or a stem (SAME_STEM): "cold" and
    "warm" do, "kind" and "king" do not."""
    ra, rb = Reading(a, lexicon.lemma(a.lower()), 1.0), Reading(b, lexicon.lemma(b.lower()), 1.0)
    if _same_word(ra, rb, lexicon) or len(os.path.commonprefix([ra.lemma, rb.lemma])) >= SAME_STEM:
        return True
    for x, y in ((ra.lemma, rb.lemma), (rb.lemma, ra.lemma)):
        rel = lexicon.meanings(x).get(y)
        if rel is not None and rel.how in ("synonym", "derived"):
            return True
    kin = lexicon.kinship(ra.lemma, rb.lemma)
    return kin is not None and kin <= MAX_KINSHIP or close is not None and close(a, b) >= MIN_CLOSE


def covers(name: str, word: str, lexicon: Lexicon) -> bool:
    """Whether a concept name covers `word`: one of the words it lists, in any form ("seas" for
    "sea, self and match"), or a member of the class it names ("dog" for "animals": the name's
    synset within six steps above the word's two commonest senses, as `_group` looks, or the
    WordNet category it names, of its commonest sense)."""
    lemma = lexicon.lemma(word.lower())
    senses = lexicon.senses(lemma, "n")[:2] or lexicon.senses(lemma, "v")[:1]
    if _CATEGORY_OF.get(name, set()) & {lexicon.lexname(s) for s in senses[:1]}:  # "world" is not a group
        return True
    above = {w.lower() for s in senses for h, _ in ((s, 0), *lexicon.ancestors(s, 6)) for w in lexicon.words(h)}
    above |= {_plural_name(w) for w in above}  # as `_group` writes them: "sea creatures", "days of the week"
    reading = Reading(word, lemma, 1.0)
    for part in [name] if name in _CATEGORY_OF else re.split(r", | and ", name.removeprefix("words: ")):
        if part.lower() in above or _same_word(reading, Reading(part, lexicon.lemma(part.lower()), 1.0), lexicon):
            return True
    return False


def _plural_name(words: str) -> str:
    """A synset's words as a name counting things: "sea creature" -> "sea creatures", "day of
    the week" -> "days of the week"."""
    noun, of, rest = words.partition(" of ")
    head, _, last = noun.rpartition(" ")
    return f"{head} {plural(last)}".strip() + (of + rest if of else "")


def agreement(name: str, heldout_words: Sequence[Sequence], lexicon: Lexicon) -> float | None:
    """The share of the words among those a feature fires on most on held-out text
    (`heldout_words`: [[word, share], ...]; punctuation and digits aside) that its name covers
    (`covers`; never a grammar word: "people" does not cover "I"): 0 where it fires there on
    punctuation only, None where it did not fire there."""
    if not heldout_words:
        return None
    words = [(w, share) for w, share in heldout_words if any(ch.isalpha() for ch in w)]
    total = sum(share for _, share in words)
    covered = sum(share for w, share in words if w.lower() not in FUNCTION_WORDS and covers(name, w, lexicon))
    return covered / total if total else 0.0


def _listed(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _nameable(word: str, lexicon: Lexicon) -> bool:
    """A word a name may use: an English word, or a proper name (capitalised letters)."""
    if len(word) < 3 and word.lower() not in FUNCTION_WORDS:  # "s" of "'s", "t": WordNet letters, not words
        return False
    return is_english(word, lexicon) or (word.isalpha() and word[:1].isupper() and word[1:].islower()
                                         and len(word) > 2)


def _same_word(a: Reading, b: Reading, lexicon: Lexicon) -> bool:
    """One word and its forms: the same lemma, a derived form, or one a prefix of the other
    ("Egypt", "Egyptians")."""
    if a.lemma == b.lemma:
        return True
    la, lb = a.lemma, b.lemma
    if min(len(la), len(lb)) >= 4 and (la.startswith(lb) or lb.startswith(la)):
        return True
    rel = lexicon.meanings(la).get(lb)
    return rel is not None and rel.how == "derived"


def _group(words: Sequence[Reading], lexicon: Lexicon, written: Written | None = None) -> str | None:
    """A hypernym or category most of the weight of these words shares, named; None if none."""
    total = sum(r.weight for r in words)
    known = [r for r in words if lexicon.senses(r.lemma)]
    if len(known) < 2:
        return None
    cover: dict[str, float] = {}  # candidate name -> weight of the words under it
    steps: dict[str, list[int]] = {}
    members: dict[str, set[str]] = {}
    for r in known:
        seen: dict[str, int] = {}
        for rank, s in enumerate(lexicon.senses(r.lemma, "n")[:2] or lexicon.senses(r.lemma, "v")[:1]):
            candidates = [(s, 0)] + list(lexicon.ancestors(s, 6))
            for h, step in candidates:
                words_h = lexicon.words(h)
                if not words_h or words_h[0] in TOO_GENERAL or " " in words_h[0] and step == 0:
                    continue
                if lexicon.lexname(h).startswith("noun.") and len(lexicon.ancestors(h)) < MIN_NOUN_DEPTH:
                    continue  # "physical entity", "living thing": true of nearly everything
                key = f"syn:{h}"
                seen[key] = min(seen.get(key, 99), step + rank)
            lex = lexicon.lexname(s)
            if lex in CATEGORY_NAMES and lex not in ("noun.artifact", "noun.act", "noun.state", "noun.attribute",
                                                     "noun.cognition", "noun.communication", "verb.stative",
                                                     "verb.change"):
                seen.setdefault(f"lex:{lex}", 7 + rank)
        for key, step in seen.items():
            cover[key] = cover.get(key, 0.0) + r.weight
            steps.setdefault(key, []).append(step)
            members.setdefault(key, set()).add(r.lemma)
    score = {key: weight / total - 0.04 * (sum(steps[key]) / len(steps[key])) for key, weight in cover.items()
             if len(members[key]) >= 2 and weight >= 0.5 * total}
    best, bar = None, 0.0
    for key in sorted((k for k in score if score[k] > 0), key=lambda k: -score[k]):
        if written is not None and key.startswith("syn:") and _everyday(lexicon.words(int(key[4:])), written) is None:
            bar = max(bar, cover[key])  # a name the text hardly uses ("tracheophytes")...
            continue
        if cover[key] > bar:  # ...gives way only to one that covers more of the words, not to a
            best = key        # vaguer one beside it ("places" for end, start and middle)
        break
    if best is None:
        return None
    kind, _, value = best.partition(":")
    if kind == "lex":
        return CATEGORY_NAMES[value]
    s = int(value)
    word = (_everyday(lexicon.words(s), written) if written is not None else None) \
        or next((w for w in lexicon.words(s) if " " not in w), lexicon.words(s)[0])
    if lexicon.lexname(s) in _MASS_LEXNAMES or lexicon.lexname(s).startswith("verb."):
        return word
    last = word.partition(" of ")[0].rpartition(" ")[2]  # the word made plural: "day" of "day of the week"
    if written is not None and written(plural(last)) < MIN_PLURAL:
        return word  # "clothing": the text never writes "clothings"
    return _plural_name(word)


def _everyday(words: Sequence[str], written: Written) -> str | None:
    """The first of a synset's words whose every part the text writes at least MIN_WRITTEN times
    a million tokens (in the singular or plural), and a phrase as a whole too (common words make
    "medium of exchange", "large integers" and "external body parts", which the text never
    writes), one word before several; None if none is everyday."""
    def common(w: str) -> bool:
        whole = " " not in w or written(w) + written(_plural_name(w)) >= MIN_WRITTEN
        return whole and all(written(p) + written(plural(p)) >= MIN_WRITTEN for p in w.replace("-", " ").split())
    ok = [w for w in words if common(w)]
    return next((w for w in ok if " " not in w), ok[0] if ok else None)


def _fit(text: str) -> str:
    if len(text) <= MAX_CHARS:
        return text
    cut = text[:MAX_CHARS].rsplit(" ", 1)[0]
    return cut.rstrip(",")
