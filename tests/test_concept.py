"""Concept steering (chat/steer/concept.py): parsing, the value, the cache, the search's parts on a
tiny model, and its surfaces (Python API, CLI, /concept, the app's rows)."""
from __future__ import annotations

import json
import time

import pytest
import torch

from chat.steer import batch
from chat.steer.batch import RowSteerer, replies
from chat.steer.concept import (CONFIRM_RATIOS, FORMAT, PAIR_RATIOS, ROUNDS, Concept, ConceptCache, ConceptError, _confirmations,
                          concept_terms, find, mention_rate, parse_concept, reading_profile, user_file)
from chat.engine import Engine
from chat.steer.settings import GenerationSettings
from chat.measure.metrics import perplexities, perplexity
from chat.steer.steering import FeatureSteerer, Steering, SteeringError
from features.catalog import Catalog, Feature
from features.dictionary import Dictionary

OCEAN = Concept("ocean", "add", ((5, 2.0), (9, 1.0)), (0.75, 1.5), 0.75, 1.2, ("ocean", "oceanic"))


@pytest.fixture
def engine(tiny_lm):
    catalog = Catalog(64, {i: Feature(i, f"f{i}", 4.0, 0.01) for i in range(64)})
    return Engine(tiny_lm, Dictionary.random(32, 64, seed=1, hook_layer=1), catalog, 1, "test")


@pytest.mark.parametrize("text, expected", [
    ("ocean", ("ocean", 1.0)), ("  Ocean  ", ("ocean", 1.0)), ("ocean=2", ("ocean", 2.0)),
    ("rain = -1.5", ("rain", -1.5)), ("ice  cream", ("ice cream", 1.0)),
])
def test_parse_concept(text, expected):
    assert parse_concept(text) == expected


@pytest.mark.parametrize("text, message", [
    ("", "empty"), ("   ", "empty"), ("=2", "empty"), ("ocean=abc", "number"), ("ocean=inf", "finite"),
    ("1234", "letters"), ("<script>", "letters"), ("ocean=500", "outside"), (None, "a word"),
])
def test_bad_concepts_are_one_line_errors(text, message):
    with pytest.raises(ConceptError) as e:
        parse_concept(text)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_concept_scales_and_describes_itself():
    assert OCEAN.steering() == Steering({5: 2.0, 9: 1.0})
    assert OCEAN.scaled(-0.5).steering() == Steering({5: -1.0, 9: -0.5})
    d = OCEAN.scaled(2).describe(lambda f: f"label {f}")
    assert d == {"concept": "ocean", "mode": "add", "scale": 2.0, "band": [0.75, 1.5], "rate": 0.75,
                 "features": [{"id": 5, "label": "label 5", "strength": 4.0}, {"id": 9, "label": "label 9", "strength": 2.0}]}
    assert Concept.from_json(json.loads(json.dumps(OCEAN.to_json()))) == OCEAN
    with pytest.raises(SteeringError):
        OCEAN.scaled(150)  # 300x max activation


def test_a_concept_says_what_its_features_write():
    """The concept box and `python -m chat concept` show what a writer writes, not only where it
    fires: "#300 punctuation → anger (writes: anger, hard, having)"."""
    cat = Catalog(64, {5: Feature(5, "punctuation", extra={"writes": ["Ocean", "hard", "having", "time", "x"]}),
                       9: Feature(9, "the ocean")})
    assert OCEAN.writes(cat, 5) == ["ocean", "hard", "having", "time"] and OCEAN.writes(cat, 9) == ["ocean"]
    assert OCEAN.row_label("punctuation") == "punctuation → ocean" and OCEAN.row_label("the Ocean") == "the Ocean"


def test_terms_and_mentions():
    assert {"rain", "rainy", "rainfall"} <= set(concept_terms("rain"))
    assert "dog" in concept_terms("animal") and "low" not in concept_terms("weather")
    assert mention_rate(["It rained.", "Rainy days!", "A drain."], ["rain", "rainy"]) == pytest.approx(2 / 3)


def test_cache_keeps_concepts_and_errors_and_ignores_other_dictionaries(tmp_path):
    shipped, user = tmp_path / "concepts.json", tmp_path / "user" / "k.json"
    shipped.write_text(json.dumps({"format": FORMAT, "key": "k", "concepts": {
        "ocean": OCEAN.to_json(), "broken": {"concept": "broken"},
        "anger": {"concept": "anger", "error": "nothing writes it", "rounds": ROUNDS},
        "fear": {"concept": "fear", "error": "a search of one round found nothing"}}}))
    cache = ConceptCache("k", shipped, user)
    assert cache.get("ocean") == OCEAN and cache.get("rain") is None and cache.get("broken") is None
    with pytest.raises(ConceptError, match="nothing writes it"):
        cache.get("anger")
    assert cache.get("fear") is None  # found nothing with fewer rounds than a search has now: searched again
    rain = Concept("rain", "add", ((1, 3.0),), (1.0, 1.0), 0.5, 1.0, ("rain",))
    cache.put(rain)
    cache.put(ConceptError("no feature writes 'zzz'"), "zzz")
    again = ConceptCache("k", shipped, user)  # a new process reads what the last one measured
    assert again.get("rain") == rain
    with pytest.raises(ConceptError, match="zzz"):
        again.get("zzz")
    assert ConceptCache("other", shipped, user).get("ocean") is None  # another dictionary's file
    user.write_text("{not json")
    assert ConceptCache("k", shipped, user).get("ocean") == OCEAN  # a corrupt user file costs nothing shipped
    out = tmp_path / "export.json"
    assert again.export(out, ["ocean", "rain", "missing"]) == 2
    assert set(json.loads(out.read_text())["concepts"]) == {"ocean", "rain"}


def test_user_file_follows_steerchat_home(tmp_path, monkeypatch):
    monkeypatch.setenv("STEERCHAT_HOME", str(tmp_path))
    assert user_file("abc") == tmp_path / "concepts" / "abc.json"
    with pytest.raises(ValueError):
        user_file("../x")


def test_row_steerer_steers_each_row_as_alone(engine):
    prompts = ["Hello", "Tell me about your weekend.", "Dogs?"]
    steerings = [None, Steering({5: 6.0}), Steering({9: -3.0})]
    batched = replies(engine, prompts, steerings, max_new_tokens=8)
    for prompt, steering, b in zip(prompts, steerings, batched):
        single = engine.reply(prompt, steer=steering or {}, settings=GenerationSettings.greedy(), max_new_tokens=8)
        assert b.token_ids == single.token_ids
    with pytest.raises(ValueError):
        replies(engine, prompts, steerings[:2])
    rows = RowSteerer([FeatureSteerer(engine.dictionary, Steering(), engine.max_acts)] * 2)
    h = torch.randn(2, 3, 32)
    assert rows(h, torch.ones(2, 3, dtype=torch.bool)) is h  # nothing steered: the same tensor


def test_a_shared_prefix_is_computed_once_per_steering_and_changes_no_reply(engine, monkeypatch):
    # the tiny model's sliding window (8) is shorter than its prompts, which turns sharing off
    monkeypatch.setattr(engine.lm.model.config, "sliding_window", 4096)
    prefixes = []
    real = batch._prefix_cache
    monkeypatch.setattr(batch, "_prefix_cache", lambda e, ids, rows: prefixes.append(ids.shape) or real(e, ids, rows))
    prompts = ["Hello", "Tell me about your weekend.", "Dogs?", "Hello"]
    steerings = [None, Steering({5: 6.0}), Steering({5: 6.0}), Steering({9: -3.0}, mode="clamp")]
    batched = replies(engine, prompts, steerings, max_new_tokens=8)
    assert len(prefixes) == 1 and prefixes[0][1] > 20  # the frame's few-shot transcript
    for prompt, steering, b in zip(prompts, steerings, batched):
        single = engine.reply(prompt, steer=steering or Steering(), settings=GenerationSettings.greedy(),
                              max_new_tokens=8)
        assert b.token_ids == single.token_ids


def test_batched_replies_with_chat_settings_match_the_chat(engine):
    prompts = ["Hello", "Tell me a story."]
    batched = replies(engine, prompts, Steering({5: 2.0}), 10, GenerationSettings())
    for prompt, b in zip(prompts, batched):
        single = engine.reply(prompt, steer={5: 2.0}, max_new_tokens=10)
        assert b.token_ids == single.token_ids


def test_batched_perplexities_equal_one_at_a_time(engine):
    pairs = [([2, 10, 11, 12], [20, 21, 22]), ([2, 30], [40, 41, 42, 43, 44]), ([2, 5, 6], [])]
    got = perplexities(engine, pairs, batch_size=2)
    for (p, r), g in zip(pairs, got):
        assert g == pytest.approx(perplexity(engine, p, r), rel=1e-4)


def test_reading_profile_finds_the_features_that_fire_on_the_word(engine):
    profile = reading_profile(engine, "dogs")
    assert 1 <= len(profile) <= 3 and all(v > 0 for _, v in profile)
    assert [v for _, v in profile] == sorted((v for _, v in profile), reverse=True)


def test_engine_concept_searches_once_then_answers_from_the_cache(engine, monkeypatch):
    calls = []

    def fake_find(eng, word, progress=None, cancel=None):
        calls.append(word)
        if word == "anger":
            raise ConceptError("no feature of this dictionary makes the model say 'anger'")
        return Concept(word, "add", ((5, 2.0),), (1.0, 1.0), 1.0, 1.0, (word,))

    monkeypatch.setattr("chat.engine.find", fake_find)
    assert engine.concept("Ocean").strengths == {5: 2.0}
    assert engine.concept("ocean=-1").strengths == {5: -2.0}
    assert engine.concept("ocean", scale=0.5).strengths == {5: 1.0}
    for _ in range(2):
        with pytest.raises(ConceptError, match="anger"):
            engine.concept("anger")
    assert calls == ["ocean", "anger"]
    # passed as steering, the concept gives the same reply as its strengths
    a = engine.reply("Hi", steer=engine.concept("ocean"), max_new_tokens=6)
    b = engine.reply("Hi", steer={5: 2.0}, max_new_tokens=6)
    assert a.token_ids == b.token_ids


def test_confirm_tries_each_leader_around_its_best_scale_and_pairs_of_leaders():
    one, two, three = ((1, 1.0),), ((2, 1.0), (3, 0.5)), ((1, 1.0), (4, 0.5), (5, 0.25))
    best = {one: (0.5, 2.0), two: (0.25, 1.0), three: (0.25, 4.0)}
    tried = _confirmations([one, two, three], best)
    assert tried[:3] == [((1, round(2.0 * r, 3)),) for r in CONFIRM_RATIOS]
    # one + two: three features, each at a share of its own best scale
    assert ((1, 2.0), (2, 1.0), (3, 0.5)) in tried and ((1, 1.0), (2, 0.5), (3, 0.25)) in tried
    # a feature in both leaders gets the sum; one + three has three features, two + three five
    assert ((1, 2.0 * PAIR_RATIOS[0] + 4.0 * PAIR_RATIOS[0]), (4, 1.0), (5, 0.5)) in tried
    assert all(len(s) <= 3 for s in tried) and not any({2, 4} <= {f for f, _ in s} for s in tried)
    assert len(tried) == len(set(tried)) == 3 * len(CONFIRM_RATIOS) + 2 * len(PAIR_RATIOS)


def test_search_on_a_random_model_says_plainly_that_nothing_writes_it(engine):
    start = time.perf_counter()
    with pytest.raises(ConceptError) as e:
        find(engine, "ocean")
    assert "ocean" in str(e.value) and "\n" not in str(e.value)
    assert time.perf_counter() - start < 120


def test_candidates_come_in_rounds_of_new_settings(engine):
    from chat.steer.concept import GRADIENT_CANDIDATES, candidates, concept_token_ids

    terms = concept_terms("ocean")
    ids = concept_token_ids(engine.lm.tokenizer, terms)
    one = candidates(engine, "ocean", terms, ids, GenerationSettings())
    two = candidates(engine, "ocean", terms, ids, GenerationSettings(), rounds=2)
    assert len(one) == 1 and two[0] == one[0]  # a second round never changes the first
    assert two[1] and not set(two[0]) & set(two[1])
    assert len(two[1]) >= GRADIENT_CANDIDATES  # the gradient's next best, at least


def test_a_second_round_only_where_the_first_finds_nothing(engine, monkeypatch):
    from chat.steer import concept as C

    tried, progress = [], []

    def search(eng, word, found, terms, settings, say, cancel):
        tried.append(list(found))
        say(0.5, "screening")
        if ((9, 1.0),) in found:
            return Concept(word, "add", ((9, 1.0),), (1.0, 1.0), 1.0, 1.0, terms)
        raise ConceptError(f"no feature of this dictionary steers toward {word!r}: the best got only 50%")

    monkeypatch.setattr(C, "_search", search)
    monkeypatch.setattr(C, "candidates", lambda *a, **k: [[((9, 1.0),)], [((2, 1.0),)]])
    assert find(engine, "ocean").strengths == {9: 1.0} and tried == [[((9, 1.0),)]]  # found: no second round
    tried.clear()
    monkeypatch.setattr(C, "candidates", lambda *a, **k: [[((1, 1.0),)], [((9, 1.0),)]])
    assert find(engine, "ocean", progress=lambda f, m: progress.append((f, m))).strengths == {9: 1.0}
    assert tried == [[((1, 1.0),)], [((9, 1.0),)]]
    assert progress[-2:] == [(0.5, "screening"), (0.75, "round 2: screening")]  # the bar halves for round 2
    monkeypatch.setattr(C, "candidates", lambda *a, **k: [[((1, 1.0),)], [((2, 1.0),), ((3, 1.0),)]])
    with pytest.raises(ConceptError, match=r"the best got only 50%; nor did 2 more candidates$"):
        find(engine, "ocean")


def test_placeholder_dictionary_refuses_concepts(tiny_lm):
    from chat.engine import load

    engine = load(lm=tiny_lm)
    with pytest.raises(ConceptError, match="placeholder"):
        engine.concept("ocean")


def test_cli_concept_errors_are_one_line(capsys):
    from chat.cli import main

    assert main(["concept", ""]) == 2
    assert "empty" in capsys.readouterr().err
    assert main(["reply", "hi", "--concept", "ocean=x"]) == 2
    assert "number" in capsys.readouterr().err
    assert main(["reply", "hi", "--concept", "ocean", "--steer", "5=1", "--mode", "clamp"]) == 2
    assert "add mode" in capsys.readouterr().err


def test_add_concept_rows_fill_the_panel():
    from chat.ui import steer_state as st

    f = {i: Feature(i, f"f{i}", 4.0, 0.01) for i in range(10)}
    rows = [st.row_for(f[1], "f1", 2.0)]
    out, problem = st.add_concept(rows, [(f[1], "f1", 3.0), (f[2], "f2", 14.0)])
    assert problem is None and [(r.id, r.strength) for r in out] == [(1, 3.0), (2, 14.0)]
    assert out[1].limit >= 28  # the slider reaches twice the concept's strength
    full = [st.row_for(f[i], f"f{i}", 1.0) for i in range(3, 3 + st.MAX_ROWS)]
    out, problem = st.add_concept(full, [(f[1], "f1", 3.0)])
    assert len(out) == st.MAX_ROWS and "at most" in problem


def test_concept_benchmark_rows_and_table(engine, monkeypatch):
    from chat.measure import concept_bench

    def fake_find(eng, word, progress=None, cancel=None):
        if word == "anger":
            raise ConceptError("no feature of this dictionary makes the model say 'anger'")
        return Concept(word, "add", ((5, 4.0),), (1.0, 1.0), 1.0, 1.0, (word,))

    monkeypatch.setattr("chat.engine.find", fake_find)
    rows = concept_bench.run(engine, concepts=[("ocean", ("ocean",)), ("anger", ("anger",))],
                             prompts=["Hi", "Tell me a story."], max_new_tokens=6, progress=None)
    ocean, anger = rows
    assert ocean.features == "#5 f5 × 4" and 0 <= ocean.rate <= 1 and ocean.cost > 0 and ocean.search_s >= 0
    assert anger.features == "" and "anger" in anger.note and not anger.passed
    summary = concept_bench.summary(rows)
    assert summary["concepts"] == 2 and summary["found"] == 1
    table = concept_bench.table(rows)
    assert "| ocean |" in table and "none found" in table


def test_a_concept_nothing_writes_points_to_related_ones_that_work(engine, tmp_path):
    """anger has no writer in the embedded dictionary; its error names the nearest concepts (by
    WordNet's noun hierarchy) that do work there, and never an unrelated one."""
    from chat.steer.concept import related

    shipped = tmp_path / "concepts.json"
    rows = {w: Concept(w, "add", ((5, 1.0),), (1.0, 1.0), 1.0, 1.0, (w,)).to_json() for w in ("love", "sadness", "ocean")}
    rows["anger"] = {"concept": "anger", "error": "no feature of this dictionary makes the model say 'anger'"}
    rows["fear"] = {"concept": "fear", "error": "no feature writes 'fear'"}  # failed: never suggested
    shipped.write_text(json.dumps({"format": FORMAT, "key": "k", "concepts": rows}))
    engine._concepts = ConceptCache("k", shipped, tmp_path / "user.json")
    with pytest.raises(ConceptError) as e:
        engine.concept("anger")
    message = str(e.value)
    assert message.startswith("no feature of this dictionary makes the model say 'anger'") and "\n" not in message
    assert message.endswith("Near it, these work: love, sadness")
    assert related("snow", ["rain", "ocean", "music"]) == ["rain"]
    assert related("zzzq", ["rain"]) == [] and related("ice cream", ["ocean"]) == []
