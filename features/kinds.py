"""Kinds of feature that are not concepts, and the token tests that recognise them.

Many features fire on form rather than meaning: punctuation, digits, line breaks, code, the
start of a sentence, the middle of a long word, or nearly everything. They get a plain name of
what they are ("digits in numbers"), never a string of the fragments they fire on. Each kind is
a yes/no test per token (`flags`), which the labeller scores like a list of words: a kind names
a feature when it predicts the feature's firings better than its distinctive words do.
"""
from __future__ import annotations

import keyword
import re

import numpy as np

from features.words import Words, is_contraction

CONCEPT = "concept"  # a feature named by what its words mean (the default kind)
WORD = "word"  # one word and its forms
WORDS = "words"  # a few words that share no meaning, listed as such ("words: edge, mission, course")
AFTER = "after a word"  # the word just before is what it reads
FUNCTION = "function words"  # "the", "of", "unto": grammar, not a concept
PROPER = "proper names"  # names no dictionary has: "Abram", "Stinner"
DENSE = "dense"
MIXED = "mixed"  # named after a concept that does not predict where it fires: its words, said as such
CONCEPT_MIN_SCORE = 0.75  # a concept name must predict the feature's held-out firings this well
# ... measured on at least this many: under it a score swings by more than 0.1 from sample to
# sample, and the rare features it let through were named by unrelated words ("bride,
# orchestra and poor" on 10 firings of mines, brides and public schools).
CONCEPT_MIN_FIRES = 20
# ... and must cover this share of where it fires most on held-out text (the words of its
# `heldout_words`, punctuation aside; features/pipeline/naming.py `agreement`). The score tests a predictor of
# up to 200 words; the name shows the top few, which for a broad feature can be words it hardly
# fires on: "administrative districts" on 2, people, movie, will (0 of its top 8).
CONCEPT_MIN_AGREEMENT = 0.2
# kind -> its plain name. Punctuation and white space get finer names from PUNCTUATION_NAMES.
NAMES = {
    "punctuation": "punctuation",
    "space": "line breaks and indentation",
    "digits": "digits in numbers",
    "contraction": "apostrophe in contractions",
    "code": "code identifiers",
    "keyword": "Python keywords",
    "sentence start": "start of a sentence",
    "word piece": "inside long words",
    "capital": "capitalised words",
    PROPER: "proper names",
    DENSE: "fires on almost every token",
}
# Kinds the fired panel hides behind its toggle: they fire on form, not on what is said.
# Words the text needs but WordNet leaves out (it has no function words); archaic forms for
# the King James text.
FUNCTION_WORDS = frozenset("""a about above after again against all am an and any are as at be because been
before being below between both but by can could did do does doing down during each few for from further had
has have having he her here hers herself him himself his how i if in into is it its itself just me more most my
myself no nor not now of off on once only or other our ours ourselves out over own same she should so some
such than that the their theirs them themselves then there these they this those through to too under until
up very was we were what when where which while who whom why will with would you your yours yourself
yourselves unto thee thou thy thine ye hath doth art shalt wilt hast didst saith shall may might must upon
whose whatsoever wherefore also let lest yea nay amen o oh ah among within without across toward towards
around via per onto although though whether yet either neither cannot unless since whereas whilst hence
thus therefore however whom whoever whatever whichever something anything nothing everything someone
anyone everyone somebody anybody nobody""".split())


def honest(name: str, kind: str, reads: list[str], score: float | None,
           fires: int | None = None, agreement: float | None = None) -> tuple[str, str]:
    """(name, kind) that says where a feature fires: a concept name only where it predicts the
    firings on held-out text (score >= CONCEPT_MIN_SCORE on `fires` >= CONCEPT_MIN_FIRES of them)
    and covers the words it fires on most there (`agreement` >= CONCEPT_MIN_AGREEMENT; None: not
    counted); otherwise the words it reads, said as such ("mixed: color, give, Changes"). A
    one-word feature says it is a word ("word: coffee"), or mixed where, measured, the word
    predicts its firings poorly and covers little of where they land (a grammar word aside); a
    few words that share no meaning (naming.py) pass or fail as a concept does.

    >>> honest("sea, self and match", CONCEPT, ["sea", "self", "match"], 0.55)
    ('mixed: sea, self, match', 'mixed')
    >>> honest("weather", CONCEPT, ["rain", "snow"], 0.9), honest("coffee", WORD, ["coffee"], 0.95)
    (('weather', 'concept'), ('word: coffee', 'word'))
    >>> honest("bride, orchestra and poor", CONCEPT, ["bride", "orchestra", "poor"], 0.81, fires=10)
    ('mixed: bride, orchestra, poor', 'mixed')
    >>> honest("administrative districts", CONCEPT, ["city", "Chicago", "of"], 0.77, 135, agreement=0.0)
    ('mixed: city, Chicago, of', 'mixed')
    >>> honest("so and to", CONCEPT, [".", "so", ",", "2"], 0.6)  # punctuation and digits said in words
    ('mixed: full stops, so, commas', 'mixed')
    >>> honest("words: edge, mission, course", WORDS, ["edge", "mission", "course"], 0.79, 976, agreement=0.27)
    ('words: edge, mission, course', 'words')
    >>> honest("priest", WORD, ["priest", "id", "email"], 0.72, 82, agreement=0.0)
    ('mixed: priest, id, email', 'mixed')

    Function words too: a feature whose grammar words do not predict it fires elsewhere.
    """
    unproven = score is None or score < CONCEPT_MIN_SCORE or fires is not None and fires < CONCEPT_MIN_FIRES \
        or kind in (CONCEPT, WORDS) and agreement is not None and agreement < CONCEPT_MIN_AGREEMENT
    # A word's name makes a claim too, once measured: "word: priest" on a feature whose strong
    # held-out firings land on email, chlorine and idk says mixed, where the word both predicts
    # them poorly and covers little of where they land. Grammar words stay (the panel hides
    # them as function words either way).
    word_unproven = kind == WORD and score is not None and score < CONCEPT_MIN_SCORE \
        and fires is not None and fires >= CONCEPT_MIN_FIRES and agreement is not None \
        and agreement < CONCEPT_MIN_AGREEMENT and name.removeprefix("word: ").lower() not in FUNCTION_WORDS
    if (kind in (CONCEPT, WORDS, FUNCTION) and unproven or word_unproven) and reads:
        return "mixed: " + ", ".join(list(dict.fromkeys(spoken(r) for r in reads))[:3]), MIXED
    if kind == WORD and not name.startswith("word: "):
        return f"word: {name}", WORD
    return name, kind


# Where a token sits or how it is written, not what it says: hidden behind the panel's form toggle.
FORM_KINDS = frozenset({"punctuation", "space", DENSE, "contraction", "word piece", FUNCTION, "sentence start",
                        "capital"})
DENSE_FRACTION = 0.2  # fires on more than this share of tokens: "almost every token" for a reader
PUNCTUATION_NAMES = {
    ",": "commas", ".": "full stops", ":": "colons", ";": "semicolons", "?": "question marks",
    "!": "exclamation marks", "(": "brackets", ")": "brackets", "[": "brackets", "]": "brackets",
    "{": "braces", "}": "braces", '"': "quotation marks", "'": "quotation marks", "“": "quotation marks",
    "”": "quotation marks", "‘": "quotation marks", "’": "apostrophes", "-": "hyphens and dashes",
    "--": "hyphens and dashes", "—": "hyphens and dashes", "–": "hyphens and dashes", "/": "slashes",
    "*": "asterisks", "=": "equals signs", "#": "hash signs", "<": "angle brackets", ">": "angle brackets",
    "_": "underscores", "`": "grave accents", "%": "percent signs", "$": "dollar signs", "&": "ampersands",
    "@": "at signs", "|": "vertical bars", "+": "plus signs", "\\": "backward slashes", "~": "tildes",
    "...": "ellipses", "…": "ellipses", "\n": "line breaks", "\n\n": "paragraph breaks",
}
# What `spoken` calls form in a "mixed: …" name: the panel counts a name of only these and
# function words as grammar (chat/ui/fired.py `kind_of`).
SPOKEN_FORMS = frozenset(PUNCTUATION_NAMES.values()) | {"digits", "indentation", "punctuation"}
FLAG_KINDS = ("punctuation", "space", "digits", "contraction", "code", "keyword", "sentence start",
              "word piece", "capital")
_PY_KEYWORDS = frozenset(keyword.kwlist) | {"self", "def", "print", "len", "str", "int", "dict", "list"}
_CAMEL = re.compile(r"[a-z][A-Z]|[A-Z]{2,}[a-z]|_")


def spoken(read: str) -> str:
    """A read as a "mixed: …" name lists it: punctuation and white space by name ("full stops",
    "line breaks"), a number as "digits", a word as it is."""
    s = read.strip()
    if not any(ch.isalnum() for ch in s):
        return punctuation_name([read])
    return "digits" if s.isdigit() else s


def punctuation_name(units: list[str]) -> str:
    """A plain name for punctuation/space units: "commas", "commas and full stops"."""
    names: list[str] = []
    for u in units:
        if not u.strip():
            name = "paragraph breaks" if u.count("\n") > 1 else "line breaks" if "\n" in u else "indentation"
        else:
            key = u.strip()
            key = "..." if len(key) > 3 and set(key) == {"."} else key  # "....." is an ellipsis too, not full stops
            name = PUNCTUATION_NAMES.get(key) or PUNCTUATION_NAMES.get(key[:1]) or "punctuation"
        if name not in names:
            names.append(name)
    if not names:
        return NAMES["punctuation"]
    if len(names) > 1:
        a, b = names[:2]
        if " and " not in a + b:
            return f"{a} and {b}"
        if " and " not in b:  # "hyphens, dashes and ellipses", never "... and ... and ..."
            return f"{a.replace(' and ', ', ')} and {b}"
        if " and " not in a:
            return f"{a}, {b}"
    return names[0]


def flags(tokens: list[str], words: Words) -> np.ndarray:
    """(len(tokens), len(FLAG_KINDS)) bool: which kinds each token is."""
    out = np.zeros((len(tokens), len(FLAG_KINDS)), dtype=bool)
    col = {k: j for j, k in enumerate(FLAG_KINDS)}
    previous_unit = -1
    sentence_start = True  # the sequence start counts
    for t, tok in enumerate(tokens):
        u = words.of_token[t]
        text = words.words[u]
        first_token = u != previous_unit
        if words.is_word[u]:
            if text.isdigit() or text.replace(",", "").replace(".", "").isdigit():
                out[t, col["digits"]] = True
            if ("'" in tok or "’" in tok) and is_contraction(text):
                out[t, col["contraction"]] = True
            if text in _PY_KEYWORDS:
                out[t, col["keyword"]] = True
            if _CAMEL.search(text):
                out[t, col["code"]] = True
            if first_token and sentence_start:
                out[t, col["sentence start"]] = True
            if not first_token and not text.isdigit():
                out[t, col["word piece"]] = True
            if first_token and text[:1].isupper() and not sentence_start:
                out[t, col["capital"]] = True
            sentence_start = False
        elif tok.strip():
            out[t, col["punctuation"]] = True
            if tok.strip()[-1:] in ".!?:":
                sentence_start = True
        else:
            out[t, col["space"]] = True
            if "\n" in tok:
                sentence_start = True
        previous_unit = u
    return out
