"""The labeller's parts on tiny fixtures: whole words, a tiny WordNet, naming rules, detection,
search by meaning and the fired panel's ranking."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from features import kinds as K
from features.catalog import Catalog, Feature
from features.pipeline.evidence import Firings
from features.lexicon import Lexicon
from features.pipeline.naming import MIN_CLOSE, Reading, agreement, covers, name, related
from features.pipeline.wordnet import WordNet, compact
from features.words import join
from label_helpers import write_wordnet

@pytest.fixture(scope="module")
def wordnet(tmp_path_factory):
    return WordNet(write_wordnet(tmp_path_factory.mktemp("wordnet")))


@pytest.fixture(scope="module")
def lexicon(wordnet):
    return Lexicon(compact(wordnet, [w for w, _ in wordnet.index]))


# --- whole words ---------------------------------------------------------------------------

def test_sub_word_pieces_join_into_their_word():
    tokens = ["le", "av", "ened", " bread", ",", " don", "'", "t", " Py", "List", "_", "SET", "(", "\n"]
    w = join(tokens)
    assert [w.words[i] for i in w.of_token] == ["leavened"] * 3 + ["bread", ","] + ["don't"] * 3 + \
        ["PyList_SET"] * 4 + ["(", "\n"]
    assert [w.is_word[i] for i in w.of_token][:5] == [True, True, True, True, False]


def test_kind_flags_of_tokens():
    tokens = ["The", " dog", "'", "s", " 1", "2", ".", " It", " isn", "'", "t", "\n"]
    flags = K.flags(tokens, join(tokens))
    col = {k: j for j, k in enumerate(K.FLAG_KINDS)}
    assert flags[:, col["digits"]].tolist() == [False] * 4 + [True, True] + [False] * 6
    assert flags[:, col["contraction"]].tolist()[9] and not flags[:, col["contraction"]].tolist()[2]  # not "dog's"
    assert flags[:, col["sentence start"]].nonzero()[0].tolist() == [0, 7]
    assert flags[:, col["word piece"]].nonzero()[0].tolist() == [2, 3, 9, 10]
    assert flags[:, col["space"]].nonzero()[0].tolist() == [11]


# --- WordNet -------------------------------------------------------------------------------

def test_wordnet_reader(wordnet):
    whale = wordnet.senses("whales")[0]
    assert whale.lexname == "noun.animal" and whale.words == ["whale"]
    assert [wordnet.synsets[a].words[0] for a in wordnet.ancestors(whale.key)] == [
        "sea creature", "animal", "organism", "living thing", "whole", "object", "physical entity", "entity"]
    assert wordnet.lemma("geese") == "goose" and wordnet.lemma("dogs") == "dog" and wordnet.lemma("xyz") == "xyz"


def test_compact_lexicon_keeps_what_search_needs(lexicon):
    assert lexicon.lemma("Geese") == "goose" and lexicon.lemma("whales") == "whale"
    assert lexicon.similarity("animals", "whale").how == "narrower"  # more specific
    assert lexicon.similarity("whale", "animal").how == "broader"
    assert lexicon.similarity("dogs", "dog").how == "same"
    assert lexicon.similarity("bridge", "whale") is None


# --- naming rules --------------------------------------------------------------------------

def reads(*words, kind=None):
    return [Reading(w, w.lower(), 1.0 - 0.05 * j, kind) for j, w in enumerate(words)]


def test_words_that_share_a_hypernym_are_named_by_it(lexicon):
    assert name(reads("whale", "shark", "dolphin"), lexicon) == ("sea creatures", K.CONCEPT)
    assert name(reads("Monday", "Friday"), lexicon) == ("weekdays", K.CONCEPT)
    # "living thing" covers whale and dog too, but it is too near WordNet's root to name anything.
    assert name(reads("whale", "dog"), lexicon) == ("animals", K.CONCEPT)


def test_a_hypernym_the_text_hardly_writes_gives_way_to_an_everyday_one(lexicon):
    from features.pipeline.naming import MIN_PLURAL

    """Given how often the text writes each word, "sea creatures" (never written) gives way
    to "animals" where that covers more of the words, to the words themselves where it covers
    no more; a plural the text never writes stays singular."""
    counts = {"animal": 40, "animals": 12, "sea": 30, "creature": 0, "weekday": 9}
    written = lambda w: counts.get(w.lower(), 0)  # noqa: E731
    sea_and_dog = [*reads("whale", "shark", "dolphin"), Reading("dog", "dog", 0.05)]
    assert name(sea_and_dog, lexicon) == ("sea creatures", K.CONCEPT)  # nearest, without counts
    assert name(sea_and_dog, lexicon, written) == ("animals", K.CONCEPT)
    assert name(reads("whale", "shark", "dolphin"), lexicon, written) == ("whale, shark and dolphin", K.CONCEPT)
    assert name(reads("Monday", "Friday"), lexicon, written) == ("weekday", K.CONCEPT)  # never "weekdays"
    assert name(reads("whale", "shark", "dolphin"), lexicon, lambda w: 10) == ("sea creatures", K.CONCEPT)
    # a phrase must be written as a whole: "sea" and "creature" are common, "sea creature" is not
    words_only = lambda w: 0 if " " in w else 10  # noqa: E731
    assert name(reads("whale", "shark", "dolphin"), lexicon, words_only) == ("whale, shark and dolphin", K.CONCEPT)
    # rates, not counts: a plural written under MIN_PLURAL a million tokens ("childs") stays singular
    rare_plural = lambda w: 10.0 if w == "weekday" else MIN_PLURAL / 2  # noqa: E731
    assert name(reads("Monday", "Friday"), lexicon, rare_plural) == ("weekday", K.CONCEPT)
    # a verb's name is never made plural, however often the text writes "expects"
    assert name(reads("expect", "anticipate"), lexicon, lambda w: 10.0) == ("expect", K.CONCEPT)


def test_one_word_and_its_forms_is_that_word(lexicon):
    assert name([Reading("bridge", "bridge", 0.6), Reading("bridges", "bridge", 0.3), Reading("dog", "dog", 0.1)],
                 lexicon) == ("bridge", K.WORD)


def test_kinds_get_plain_names_never_fragments(lexicon):
    assert name(reads(",", ".", kind="punctuation"), lexicon) == ("commas and full stops", "punctuation")
    assert K.punctuation_name(["—", ",", "."]) == "hyphens, dashes and commas"  # never "... and ... and ..."
    assert K.punctuation_name(["--", "...", " --"]) == "hyphens, dashes and ellipses"
    assert K.punctuation_name(["(", "-"]) == "brackets, hyphens and dashes"
    assert K.punctuation_name(["-", "(", ")"]) == "hyphens, dashes and brackets"
    assert K.punctuation_name(["....", "..."]) == "ellipses"  # not "full stops"
    assert name(reads("<number>", kind="digits"), lexicon) == ("digits in numbers", "digits")
    assert name(reads("faulthandler", "xqz"), lexicon).name == "code identifiers"  # no English word to name
    assert name(reads("of", "the", "unto"), lexicon).kind == K.FUNCTION
    assert name(reads("Stinner", "Serhiy"), lexicon) == ("proper names", K.PROPER)
    assert name(reads("Stinner", "bridge", "bridges"), lexicon) == ("bridge", K.WORD)  # the name left out
    unrelated = name(reads("bridge", "dog"), lexicon)
    assert unrelated == ("words: bridge, dog", K.WORDS)  # test_words_that_share_no_meaning_...
    # A chat log's speaker letter ("B: I'm fine") is what it reads, not the "a" behind it.
    speaker = [Reading("B", "b", 0.9), Reading("a", "a", 0.1)]
    assert name(speaker, lexicon) == ("B", K.WORD)
    # Names that do not predict the firings say so, grammar words too.
    assert K.honest("function words: can, be, to", K.FUNCTION, ["can", "be", "to"], 0.59) == \
        ("mixed: can, be, to", K.MIXED)
    assert K.honest("function words: what, that", K.FUNCTION, ["what", "that"], 0.9)[1] == K.FUNCTION
    # A score on a handful of firings proves nothing: a rare feature's concept name says mixed.
    rare = ["bride", "orchestra", "poor"]
    assert K.honest("bride, orchestra and poor", K.CONCEPT, rare, 0.81, fires=K.CONCEPT_MIN_FIRES - 1)[1] == K.MIXED
    assert K.honest("bride, orchestra and poor", K.CONCEPT, rare, 0.81, fires=K.CONCEPT_MIN_FIRES)[1] == K.CONCEPT
    assert K.honest("word: out", K.WORD, ["out"], 0.9, fires=3) == ("word: out", K.WORD)  # a word is a word
    # ... unless, measured, it predicts too few of the firings; grammar words aside
    priest, n = ["priest", "id", "email"], K.CONCEPT_MIN_FIRES
    assert K.honest("priest", K.WORD, priest, 0.72, n, agreement=0.0) == ("mixed: priest, id, email", K.MIXED)
    assert K.honest("priest", K.WORD, priest, 0.72, n - 1, agreement=0.0)[1] == K.WORD  # too few to tell
    assert K.honest("priest", K.WORD, priest, 0.72, n, agreement=0.5)[1] == K.WORD  # it does land on priest
    assert K.honest("priest", K.WORD, priest, 0.9, n, agreement=0.0)[1] == K.WORD  # and predicts them
    assert K.honest("word: was", K.WORD, ["was", "2"], 0.7, 1590, agreement=0.0) == ("word: was", K.WORD)
    # a mixed name says punctuation and digits in words, each once
    assert K.honest("x", K.CONCEPT, [",", " ,", "2", "rain"], 0.6) == ("mixed: commas, digits, rain", K.MIXED)
    assert K.honest("x", K.CONCEPT, ["\n", "....", "rain"], 0.6) == ("mixed: line breaks, ellipses, rain", K.MIXED)


def test_a_concept_name_must_cover_where_it_fires_on_held_out_text(lexicon):
    assert covers("sea creatures", "whales", lexicon) and covers("animals", "Dog", lexicon)  # members of its class
    assert covers("bridge and dog", "bridges", lexicon) and not covers("sea creatures", "dog", lexicon)
    assert covers("weekdays", "Friday", lexicon) and not covers("weekdays", "bridge", lexicon)
    held = [["whale", 0.3], ["the", 0.3], ["dog", 0.1], [",", 0.2], ["shark", 0.1]]  # punctuation is not counted
    assert agreement("sea creatures", held, lexicon) == pytest.approx(0.4 / 0.8)
    assert agreement("weekdays", [["of", 0.5], [".", 0.5]], lexicon) == 0.0  # it fires on grammar only
    assert agreement("weekdays", [[",", 0.5], [".", 0.5]], lexicon) == 0.0
    assert agreement("weekdays", [], lexicon) is None  # it did not fire there: not counted
    # A name from a predictor's top words that the feature hardly fires on says mixed, not the class.
    reads = ["city", "Chicago", "of"]
    assert K.honest("administrative districts", K.CONCEPT, reads, 0.77, 135, agreement=0.0) == \
        ("mixed: city, Chicago, of", K.MIXED)
    assert K.honest("sea creatures", K.CONCEPT, ["whale"], 0.9, 40, agreement=K.CONCEPT_MIN_AGREEMENT)[1] == K.CONCEPT
    assert K.honest("word: out", K.WORD, ["out"], 0.9, 40, agreement=0.0)[1] == K.WORD  # a word that predicts them stays


def test_words_that_share_no_meaning_are_listed_as_words_not_as_a_concept(lexicon):
    """"kind, king and question" read like a concept; a list whose words share no meaning says
    it is words. WordNet relates siblings and forms; the model's embeddings (`close`) what
    WordNet does not link ("cold" and "warm")."""
    assert related("whale", "shark", lexicon) and related("bridge", "bridges", lexicon)
    assert not related("bridge", "dog", lexicon) and related("characteristic", "characterized", lexicon)
    assert not related("general", "generate", lexicon)
    assert name(reads("whale", "shark", "bridge"), lexicon, lambda w: 0) == ("whale, shark and bridge", K.CONCEPT)
    assert name(reads("bridge", "dog", "Monday"), lexicon, lambda w: 0) == ("words: bridge, dog, Monday", K.WORDS)
    close = lambda a, b: MIN_CLOSE if {a, b} == {"bridge", "dog"} else MIN_CLOSE - 0.01  # noqa: E731
    assert name(reads("bridge", "dog"), lexicon, close=close) == ("bridge and dog", K.CONCEPT)
    assert name(reads("bridge", "Monday"), lexicon, close=close) == ("words: bridge, Monday", K.WORDS)
    # it passes or fails as a concept name does, and covers the words it lists
    words = ["bridge", "dog"]
    assert K.honest("words: bridge, dog", K.WORDS, words, 0.9, 40, agreement=0.5) == ("words: bridge, dog", K.WORDS)
    assert K.honest("words: bridge, dog", K.WORDS, words, 0.6, 40)[1] == K.MIXED
    assert K.honest("words: bridge, dog", K.WORDS, words, 0.9, 40, agreement=0.1)[1] == K.MIXED
    assert covers("words: bridge, dog", "bridges", lexicon) and not covers("words: bridge, dog", "Monday", lexicon)
    assert agreement("words: bridge, dog", [["dog", 0.5], ["Monday", 0.5]], lexicon) == 0.5
    # the panel shows no kind note: the name says it
    from chat.ui import fired as fd
    assert fd.kind_note(Feature(9, "words: bridge, dog", extra={"kind": K.WORDS})) == ""


def test_closeness_is_the_cosine_of_the_models_embeddings(tiny_lm):
    from features.pipeline.label import closeness

    close = closeness(tiny_lm)
    assert close("dog", "dog") == pytest.approx(1.0, abs=1e-5)
    assert close("dog", "cat") == pytest.approx(close("cat", "dog")) and -1.0 <= close("dog", "cat") <= 1.0


# --- detection -----------------------------------------------------------------------------

def _text(tokens: list[str], fires: list[int]):
    ids = np.arange(len(tokens), dtype=np.int32)[None]
    firings = Firings(ids, np.asarray(fires, np.int64), np.zeros(len(fires), np.int32),
                      np.ones(len(fires), np.float32), np.ones_like(ids, dtype=bool))
    return firings, lambda t: tokens[t]


def test_reads_name_and_detection_score(lexicon):
    from features.pipeline.label import Vocabulary, detection, read_text, verdict

    tokens = " whales swim and sharks hunt while the dolphin plays near whales and a bridge".split(" ")
    tokens = [tokens[0]] + [" " + t for t in tokens[1:]]
    fires = [j for j, t in enumerate(tokens) if t.strip() in ("whales", "sharks", "dolphin")]
    firings, decode = _text(tokens, fires)
    vocab = Vocabulary(lexicon)
    text = read_text(firings, decode, vocab)
    v = verdict(np.asarray(fires), 0.01, text, vocab)
    assert v.name == "sea creatures" and set(v.reads) == {"whales", "sharks", "dolphin"}
    assert detection(v, np.asarray(fires), text) == (1.0, 4)  # every firing predicted, no false alarm
    # Held-out text where the reads miss one firing and flag one token that does not fire.
    held = [" whales", " sharks", " dolphin", " swim", " goose"]
    firings2, decode2 = _text(held, [0, 1, 4])
    text2 = read_text(firings2, decode2, vocab)
    score, n = detection(v, np.asarray([0, 1, 4]), text2)
    assert n == 3 and score == pytest.approx(0.5 * (2 / 3 + 1 / 2))


def test_names_come_from_the_strong_firings(lexicon, monkeypatch):
    """Weak firings (below STRONG of the peak) neither name a feature nor count in its score."""
    from features.pipeline.label import STRONG, Vocabulary, relabel

    monkeypatch.setattr(K, "CONCEPT_MIN_FIRES", 3)  # this text holds 3 strong firings

    tokens = " the whales and the sharks saw the dolphin and the bridge".split(" ")
    tokens = [tokens[0]] + [" " + t for t in tokens[1:]]
    strong = [j for j, t in enumerate(tokens) if t.strip() in ("whales", "sharks", "dolphin")]
    weak = [j for j, t in enumerate(tokens) if t.strip() == "the"]  # more of them than strong ones
    fires = strong + weak
    ids = np.arange(len(tokens), dtype=np.int32)[None]
    act = np.asarray([1.0] * len(strong) + [0.5 * STRONG] * len(weak), np.float32)
    firings = Firings(ids, np.asarray(fires, np.int64), np.zeros(len(fires), np.int32), act,
                      np.ones_like(ids, dtype=bool))
    rare = {0: Feature(0, "", 1.0, 0.01)}  # its density over far more text than this
    found = relabel(firings, firings, lambda t: tokens[t], lexicon, rare, 1, progress=False)
    f = found[0]
    # a text this short never writes "sea creature": the words name it
    assert f.extra["name"] == "whales, sharks and dolphin" and "the" not in f.extra["reads"]
    assert f.extra["heldout_fires"] == 3 and f.extra["score"] == 1.0
    # where its strong held-out firings land, measured and written as in the text: one each
    assert sorted(w for w, _ in f.extra["heldout_words"]) == ["dolphin", "sharks", "whales"]
    assert [s for _, s in f.extra["heldout_words"]] == [0.333] * 3
    assert f.extra["agreement"] == 1.0  # the name lists every word it fires on
    from features.pipeline.label import Vocabulary
    vocab = Vocabulary(lexicon)
    for t in tokens:
        vocab.id(t, True)
    written = vocab.writing_counts(len(tokens), "".join(tokens))  # per million tokens, phrases too
    assert written("whales") == pytest.approx(1e6 / len(tokens))
    assert written("the whales and") == pytest.approx(1e6 / len(tokens)) and written("whales saw") == 0
    # a curated feature keeps its label (what it writes) and gets the name of where it fires
    writer = {0: Feature(0, "the sea", 1.0, 0.01, curated=True, extra={"name": "the sea", "kind": "curated"})}
    f = relabel(firings, firings, lambda t: tokens[t], lexicon, writer, 1, progress=False)[0]
    assert f.label == "the sea" and f.curated
    assert f.extra["name"] == "whales, sharks and dolphin" and f.extra["kind"] == "concept"


def test_a_resumed_relabel_measures_where_features_fire_afresh(lexicon, tmp_path):
    """Names are cached in the work folder (the costly part); where a feature fires on held-out
    text is measured on every run, so a cache from a run that kept fewer words serves too."""
    import json

    from features.pipeline.label import relabel

    tokens = [" whales", " and", " sharks", " and", " dolphin"]
    ids = np.arange(len(tokens), dtype=np.int32)[None]
    firings = Firings(ids, np.asarray([0, 2, 4], np.int64), np.zeros(3, np.int32), np.ones(3, np.float32),
                      np.ones_like(ids, dtype=bool))
    old = {0: Feature(0, "", 1.0, 0.01)}
    first = relabel(firings, firings, lambda t: tokens[t], lexicon, old, 1, work=tmp_path, progress=False)[0]
    cache = tmp_path / "verdicts.jsonl"
    rows = [json.loads(line) for line in cache.read_text().splitlines()]
    assert rows and all("heldout_words" not in r for r in rows)
    cache.write_text("".join(json.dumps({**r, "name": "cached", "kind": K.WORD}) + "\n" for r in rows))
    again = relabel(firings, firings, lambda t: tokens[t], lexicon, old, 1, work=tmp_path, progress=False)[0]
    assert again.extra["name"] == "word: cached"  # the verdict came from the cache
    assert again.extra["heldout_words"] == first.extra["heldout_words"] != []


def test_one_outlier_firing_does_not_make_the_rest_weak(lexicon):
    """The peak that sets "strong" is the second strongest firing: a feature firing on "whales"
    300 times at 1.0 and once on "bridge" at 10x is still named and scored on whales."""
    from features.pipeline.label import relabel

    tokens = [" whales", " swim"] * 300 + [" bridge"]
    fires = list(range(0, 600, 2)) + [600]
    ids = np.arange(len(tokens), dtype=np.int32)[None]
    act = np.asarray([1.0] * 300 + [10.0], np.float32)
    firings = Firings(ids, np.asarray(fires, np.int64), np.zeros(len(fires), np.int32), act,
                      np.ones_like(ids, dtype=bool))
    f = relabel(firings, firings, lambda t: tokens[t], lexicon, {0: Feature(0, "", 10.0, 0.01)}, 1, progress=False)[0]
    assert f.extra["reads"][0] == "whales" and f.extra["heldout_fires"] == 301


def test_reads_come_strongest_first(lexicon):
    """A word the feature fires on hardest names it before a word it fires on more often but
    more weakly; both stay in its predictor, so the detection score is the same."""
    from features.pipeline.label import Vocabulary, detection, read_text, verdict

    tokens = (" doubt bread doubt salt doubt milk because water because rice" * 3).split(" ")[1:]
    tokens = [" " + t for t in tokens]
    doubt = [j for j, t in enumerate(tokens) if t == " doubt"]
    because = [j for j, t in enumerate(tokens) if t == " because"]
    fires = np.asarray(doubt + because)
    act = np.asarray([0.4] * len(doubt) + [1.0] * len(because), np.float32)
    firings, decode = _text(tokens, list(fires))
    vocab = Vocabulary(lexicon)
    text = read_text(firings, decode, vocab)
    by_count, by_strength = verdict(fires, 0.01, text, vocab), verdict(fires, 0.01, text, vocab, act)
    assert by_count.reads[0] == "doubt" and by_strength.reads[0] == "because"
    assert set(by_count.reads) == set(by_strength.reads) == {"doubt", "because"}
    assert by_count.train_score == by_strength.train_score and by_count.mode == by_strength.mode
    assert detection(by_count, fires, text) == detection(by_strength, fires, text)


# --- search by meaning ---------------------------------------------------------------------

def test_meaning_beats_typo_and_writers_come_first(lexicon, monkeypatch):
    import features.lexicon as lx

    monkeypatch.setattr(lx, "default", lambda: lexicon)
    cat = Catalog(64, {
        1: Feature(1, "whale"),                                   # more specific than "animal"
        2: Feature(2, "animas"),                                  # a spelling neighbour of "animal"
        3: Feature(3, "rare contexts", extra={"reads": ["shark"]}),
        4: Feature(4, "function words: so, then", extra={"writes": ["animals"]}),
        5: Feature(5, "bridge"),
    })
    found = [f.id for f in cat.search("animal")]
    assert set(found) == {1, 3, 4}  # "animal" is a word, not a typo of "animas" ("coma" is not "commas")
    assert 2 in [f.id for f in cat.search("anmals")]  # a typo that is no word still finds its neighbours
    assert found[0] == 4  # it writes the word: steering with it says the concept
    assert [f.id for f in cat.search("animal", writes_first=False)][0] == 1  # by name without it
    assert [f.id for f in cat.search("bridge")] == [5]
    # A typo of a word no feature uses is corrected against the lexicon, then read by meaning.
    only_dogs = Catalog(64, {1: Feature(1, "dog"), 2: Feature(2, "bridge")})
    assert [f.id for f in only_dogs.search("animla")] == [1]


def test_a_curated_feature_comes_first_only_for_what_a_person_checked(lexicon, monkeypatch):
    """A curated writer's reads are where it fires, often far from its label ("children" fires
    on "whale"): searching "animal" ranks features named for animals above it, and a kind name's
    prefix does not make "word: whale" less about whales than the curated feature that only reads it."""
    import features.lexicon as lx

    monkeypatch.setattr(lx, "default", lambda: lexicon)
    cat = Catalog(64, {
        1: Feature(1, "children", curated=True, extra={"reads": ["voice", "whale"], "writes": ["girl"]}),
        2: Feature(2, "word: whale", extra={"reads": ["whale"]}),
        3: Feature(3, "dolphin", curated=True, extra={"reads": ["of"], "writes": ["dolphin"]}),
        4: Feature(4, "whale, self and match"),
    })
    assert [f.id for f in cat.search("animal")] == [3, 2, 1, 4]
    assert [f.id for f in cat.search("children")] == [1]


# --- the fired panel -----------------------------------------------------------------------

def test_fired_ranking_discounts_dense_features_and_hides_form():
    from chat.ui import fired as fd

    cat = Catalog(8, {
        0: Feature(0, "fires on almost every token", 1.0, 0.5, extra={"kind": K.DENSE}),
        1: Feature(1, "whales", 1.0, 1e-4, extra={"kind": K.CONCEPT}),
        2: Feature(2, "the", 1.0, 0.05, extra={"kind": K.WORD}),
        3: Feature(3, "commas", 1.0, 1e-3, extra={"kind": "punctuation"}),
    })
    acts = torch.zeros(3, 8)
    acts[:, 0] = 1.0   # at its usual max on every token, but it fires on half of all text
    acts[1, 1] = 0.6   # 60% of its max, and rare
    acts[2, 2] = 1.0
    acts[0, 3] = 1.0
    last = fd.LastReply(["a", "b", "c"], acts.to_sparse(), [])
    assert [h.id for h in fd.ranked(last, cat)] == [1]  # "the" is a function word: form
    assert fd.kind_of(cat[2]) == K.FUNCTION
    # Honest names say "word: a"; contractions are function words too.
    assert fd.kind_of(Feature(9, "word: a → beginner, game", extra={"kind": K.WORD})) == K.FUNCTION
    assert fd.kind_of(Feature(9, "word: don't", extra={"kind": K.WORD})) == K.FUNCTION
    assert fd.kind_of(Feature(9, "word: coffee", extra={"kind": K.WORD})) == K.WORD
    assert fd.kind_of(Feature(9, "mixed: the, on, -", extra={"kind": K.MIXED})) == K.FUNCTION
    assert fd.kind_of(Feature(9, "mixed: commas, of, hyphens and dashes", extra={"kind": K.MIXED})) == K.FUNCTION
    assert fd.kind_of(Feature(9, "mixed: commas, coffee", extra={"kind": K.MIXED})) == K.MIXED
    assert fd.kind_of(Feature(9, "mixed: the, sea, on", extra={"kind": K.MIXED})) == K.MIXED
    assert [h.id for h in fd.ranked(last, cat, show_form=True)] == [3, 1, 2, 0]
    assert fd.unusual(1.0, 1e-5) == 1.0 and fd.unusual(2.0, 1e-5) == 1.0 and fd.unusual(1.0, 0.9) == 0.1
    assert fd.kind_note(cat[3]) == " [punctuation]" and fd.kind_note(cat[1]) == ""
    assert fd.kind_note(Feature(9, "mixed: the, sea, on", extra={"kind": K.MIXED})) == ""  # the name says it
    writer = Feature(9, "the sea", curated=True, extra={"kind": K.MIXED, "name": "mixed: the, bay, on",
                                                         "reads": ["the"], "terms": ["sea"]})
    assert fd.kind_note(writer) == ""  # shown as "mixed: the, bay, on → the sea"
    twins = Catalog(8, {4: Feature(4, "people", 1.0, 1e-4), 5: Feature(5, "people", 1.0, 1e-4)})
    acts = torch.zeros(1, 8)
    acts[0, 4], acts[0, 5] = 0.5, 0.9
    assert [h.id for h in fd.ranked(fd.LastReply(["I"], acts.to_sparse(), []), twins)] == [5]  # one row per name


def test_fired_ranking_trusts_names_by_their_detection_score():
    from chat.ui import fired as fd

    cat = Catalog(8, {
        1: Feature(1, "sea creatures", 1.0, 1e-4, extra={"score": 0.9, "heldout_fires": 40}),
        2: Feature(2, "rare", 1.0, 1e-5, extra={"score": 0.5, "heldout_fires": 4}),
        3: Feature(3, "so-so", 1.0, 1e-5, extra={"score": 0.65, "heldout_fires": 50}),
    })
    acts = torch.zeros(1, 8)
    acts[0, 1], acts[0, 2], acts[0, 3] = 0.7, 1.0, 1.0  # the weakly named ones peak higher
    assert [h.id for h in fd.ranked(fd.LastReply(["x"], acts.to_sparse(), []), cat)] == [1, 3, 2]
    assert fd.confidence(cat[1]) == 1.0 and fd.confidence(cat[2]) == fd.MIN_CONFIDENCE
    # curated or not, a name that detects its feature no better than chance is hardly trusted
    assert fd.confidence(Feature(4, "curated", curated=True, extra={"score": 0.5})) == fd.MIN_CONFIDENCE
    # a "mixed" name says no word predicts the feature: however it scores, it names nothing
    mixed = Feature(5, "mixed: of, rain, the", extra={"kind": "mixed", "score": 0.74, "heldout_fires": 60})
    assert fd.confidence(mixed) == fd.MIN_CONFIDENCE < fd.confidence(cat[3])
    # silent on the held-out text: nothing measured it; a catalog that never measured counts fully
    silent = Feature(6, "word: Magellan's", extra={"kind": "word", "score": None, "heldout_fires": 0})
    assert fd.confidence(silent) == fd.MIN_CONFIDENCE and fd.confidence(Feature(7, "old", extra={})) == 1.0


def test_a_curated_writer_that_fires_elsewhere_shows_where_it_fires():
    """A curated label says what the feature writes; on the panel, one that does not read its
    concept ("happiness and joy" firing on "of") shows its automatic name first and counts as the
    function word it fires on (behind the form toggle), while one that reads it stays a concept."""
    from chat.ui import fired as fd

    joy = Feature(1, "happiness and joy", 1.0, 1e-4, curated=True,
                  extra={"kind": K.WORD, "name": "word: of", "reads": ["of", "from"], "terms": ["happy", "joy"],
                         "score": 0.99, "heldout_fires": 900})
    sea = Feature(2, "the sea", 1.0, 1e-4, curated=True,
                  extra={"kind": K.CONCEPT, "name": "sea and waves", "reads": ["waves", "Sea"], "terms": ["sea", "ocean"],
                         "score": 0.9, "heldout_fires": 80})
    cat = Catalog(8, {1: joy, 2: sea})
    assert not fd.reads_its_label(joy) and fd.reads_its_label(sea)
    assert fd.panel_label(joy, "happiness and joy") == "word: of → happiness and joy"
    assert fd.panel_label(sea, "the sea") == "the sea"
    assert fd.kind_of(joy) == K.FUNCTION and fd.kind_of(sea) == K.CONCEPT
    acts = torch.zeros(1, 8)
    acts[0, 1], acts[0, 2] = 1.0, 1.0
    last = fd.LastReply(["x"], acts.to_sparse(), [fd.FeatureHit(1, "", 1.0, 1, 1.0)])
    assert [h.label for h in fd.ranked(last, cat)] == ["the sea"]
    assert {h.label for h in fd.ranked(last, cat, show_form=True)} == {"word: of → happiness and joy", "the sea"}
    assert "(of its automatic name)" in fd.feature_card(joy, "happiness and joy")
    # catalogs whose automatic name of a curated feature is its label have nothing else to show
    old = Feature(3, "dogs", curated=True, extra={"kind": "curated", "name": "dogs", "reads": ["milk"], "terms": ["dog"]})
    assert fd.panel_label(old, "dogs") == "dogs" and fd.kind_of(old) == "curated"


def test_evaluate_labels_report(lexicon):
    from features.pipeline.evaluate_labels import evaluate

    cat = Catalog(8, {
        0: Feature(0, "animals", 1.0, 0.01, extra={"kind": K.CONCEPT, "reads": ["whale"], "score": 0.8,
                                                   "heldout_fires": 9}),
        1: Feature(1, "Py · ened → xq", 1.0, 0.01),  # the old kind of label: fragments
        2: Feature(2, "digits in numbers", 1.0, 0.1, extra={"kind": "digits", "score": 0.6, "heldout_fires": 3}),
        3: Feature(3, "dead", None, 0.0),
    })
    report = evaluate(cat, lexicon)
    assert report.live == 3 and report.whole_words == pytest.approx(2 / 3, abs=1e-3)
    assert report.not_whole == ["Py · ened → xq"]
    assert report.scored == 1 and report.score_median == 0.8  # 3 held-out firings are too few to score
    assert len(report.concepts) >= 40


def test_a_firing_reader_is_measured_by_where_it_fires_not_by_its_name(lexicon):
    """The issue's reader: >= 30% of a feature's strong held-out firings on the concept's words,
    whatever it is called; fewer than MIN_FIRES held-out firings count for nothing."""
    from features.pipeline.evaluate_labels import evaluate, firing_share

    cat = Catalog(8, {
        0: Feature(0, "mixed: of, rain, the", 1.0, 0.01, extra={
            "kind": K.MIXED, "heldout_fires": 20, "heldout_words": [["of", 0.4], ["rain", 0.2], ["shower", 0.15]]}),
        1: Feature(1, "word: snow", 1.0, 0.01, extra={"kind": K.WORD, "heldout_fires": 4,
                                                      "heldout_words": [["snow", 1.0]]}),
    })
    assert firing_share(cat[0], {"rain", "shower"}, lexicon) == pytest.approx(0.35)
    # held-out words are stored as written; they count through their lemma
    whales = Feature(2, "word: whales", 1.0, 0.01, extra={"heldout_words": [["Whales", 0.5], ["geese", 0.25]]})
    assert firing_share(whales, {"whale", "goose"}, lexicon) == pytest.approx(0.75)
    # a hand-edited catalog's malformed entries count for nothing, here and in the details card
    odd = Feature(3, "word: rain", extra={"heldout_words": [["rain", "most"], "rain", ["rain", 0.5, 1], ["Rain", 0.25]]})
    assert odd.heldout_words() == [("Rain", 0.25)] and firing_share(odd, {"rain"}, lexicon) == 0.25
    report = evaluate(cat, lexicon)
    by = {c["query"]: c for c in report.concepts}
    assert by["rain"]["firing_readers"] == [[0, "mixed: of, rain, the", 0.35]]
    assert by["weather"]["firing_readers"] == []  # rain alone is 20%, under 30%
    assert by["snow"]["firing_readers"] == []  # too few held-out firings
    assert report.firing_readers_found == 1


def test_details_card_shows_name_kind_reads_writes_and_score():
    from chat.ui import fired as fd

    f = Feature(4, "commas", 2.0, 0.01, extra={"kind": "punctuation", "name": "commas", "reads": [",", "and"],
                                              "writes": ["sea"], "score": 0.83, "heldout_fires": 120})
    card = fd.feature_card(f, "my commas")  # renamed by a user: the automatic name shows too
    assert card.startswith("### #4 my commas [punctuation] · detection 0.83")
    assert "Automatic name: commas" in card and "Reads: `,`, `and`" in card
    assert "Amplified, replies say: `sea`" in card and "on 120 held-out firings" in card
    f.extra["heldout_words"] = [[",", 0.6], ["and", 0.25]]
    assert "its strong firings land on: `,` 60%, `and` 25%" in fd.feature_card(f, "my commas")
    f.extra["heldout_words"] = [["\n", 0.5], [" ", 0.2], ["\x07", 0.1]]  # named, not empty chips
    assert "land on: `line break` 50%, `space` 20%, `U+0007` 10%" in fd.feature_card(f, "my commas")
    f.extra["agreement"] = 0.7  # a concept name: how much of where it fires it covers
    assert "10% (its automatic name covers 70% of its eight commonest words there)" in fd.feature_card(f, "my commas")
    f.extra["reads"] = ["\x02", ","]  # reads and promoted tokens follow the same rule
    assert "Reads: `U+0002`, `,`" in fd.feature_card(f, "my commas")
