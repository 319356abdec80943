"""The curation assistant (features/pipeline/curate.py) on the tiny model."""
from __future__ import annotations

import json

import pytest
import torch

from chat.engine import Engine
from chat.measure.metrics import concept_token_ids
from features.pipeline import curate
from features.catalog import Catalog, Feature
from features.dictionary import Dictionary
from features.pipeline.writers import concept_gradient


def test_concepts_load_and_take_turns_by_category(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[[concept]]\nname = "a"\ncategory = "x"\nterms = ["a1"]\n'
                    '[[concept]]\nname = "b"\ncategory = "x"\nterms = ["b1"]\n'
                    '[[concept]]\nname = "c"\ncategory = "y"\nterms = ["c1", "c2"]\n')
    concepts = curate.load_concepts(path)
    assert concepts[2] == curate.Concept("c", "y", ("c1", "c2"))
    assert [c.name for c in curate.by_category_in_turn(concepts)] == ["a", "c", "b"]
    path.write_text('[[concept]]\nname = "d"\nterms = ["d1"]\ncandidates = [12, 7]\n')
    assert curate.load_concepts(path) == [curate.Concept("d", "", ("d1",), (12, 7))]
    path.write_text('[[concept]]\nname = "d"\nterms = ["d1"]\ncandidates = ["x"]\n')
    with pytest.raises(ValueError, match="not a concepts file"):
        curate.load_concepts(path)
    path.write_text('[[concept]]\nname = "a"\nterms = []\n')
    with pytest.raises(ValueError, match="at least one term"):
        curate.load_concepts(path)
    path.write_text("concept = 3")
    with pytest.raises(ValueError, match="not a concepts file"):
        curate.load_concepts(path)


def test_accepted_needs_both_bands_skips_rejects_and_gives_a_feature_to_one_concept():
    rows = [{"name": "a", "chosen": 1, "add": [1, 2], "clamp": [1, 1]},
            {"name": "b", "chosen": 1, "add": [1, 2], "clamp": [1, 1]},  # same feature as a
            {"name": "c", "chosen": 2, "add": [1, 2], "clamp": None},  # no clamp band
            {"name": "d"},  # nothing found
            {"name": "e", "chosen": 3, "add": [2, 3], "clamp": [2, 2]},
            {"name": "f", "chosen": 4, "add": [1, 1], "clamp": [1, 1]}]
    assert [r["name"] for r in curate.accepted(rows, reject=["f"])] == ["a", "e"]
    # a feature that is curated already keeps its label
    assert [r["name"] for r in curate.accepted(rows, taken=[1])] == ["e", "f"]


def test_covered_concepts_are_those_a_curated_feature_already_writes():
    catalog = Catalog(8, {1: Feature(1, "God and the Lord", curated=True, extra={"terms": ["god", "lord", "holy"]}),
                          2: Feature(2, "mountains", curated=True),
                          3: Feature(3, "auto: dog cat", extra={"terms": ["dog", "cat"]})})  # not curated
    concepts = [curate.Concept("God", "religion", ("God", "Lord", "prayer", "heaven")),  # half the terms
                curate.Concept("prayer", "religion", ("pray", "prayer", "god")),  # a third
                curate.Concept("mountains", "places", ("hill",)),  # same name
                curate.Concept("animals", "animals", ("dog", "cat"))]
    assert [c.name for c in curate.covered(concepts, catalog)] == ["God", "mountains"]


def test_a_sweep_stops_where_the_text_breaks_down(tiny_lm, monkeypatch):
    d = Dictionary.random(tiny_lm.d_model, 64, seed=1, hook_layer=1)
    engine = Engine(tiny_lm, d, Catalog(64, {i: Feature(i, f"f{i}", 4.0, 0.01) for i in range(64)}), 1, "test")
    swept = []

    def fake_sweep(engine, fid, mode, terms, strengths, **kw):
        swept.append(strengths[0])
        return [curate.SweepPoint(strengths[0], 0.0, 1.0 if strengths[0] < 3 else 9.0, 0.0, ("x",))]

    monkeypatch.setattr(curate, "sweep", fake_sweep)
    monkeypatch.setattr(curate, "MAX_NEW_TOKENS", 2)
    baseline = curate.unsteered(engine, curate.PROMPTS, 2)
    row = curate.propose(engine, curate.Concept("x", "c", ("bridge",), (7,)), baseline)
    assert "chosen" not in row and swept == [0.5, 1.0, 2.0, 3.0]  # 4x and 6x would only be worse


def test_run_proposes_each_concept_once_and_resumes(tiny_lm, tmp_path, monkeypatch):
    g = concept_gradient(tiny_lm, 1, concept_token_ids(tiny_lm.tokenizer, ["bridge"]), curate.NEUTRAL_PROMPTS[:2])
    d = Dictionary.random(tiny_lm.d_model, 64, seed=1, hook_layer=1)
    d.W_dec[5] = g / g.norm()  # a planted writer of "bridge"
    engine = Engine(tiny_lm, d, Catalog(64, {i: Feature(i, f"f{i}", 4.0, 0.01) for i in range(64)}), 1, "test")
    monkeypatch.setattr(curate, "STRENGTHS", (1.0, 20.0))
    monkeypatch.setattr(curate, "MAX_NEW_TOKENS", 6)
    concepts = [curate.Concept("bridges", "places", ("bridge",)), curate.Concept("rain", "weather", ("rain",))]
    out = tmp_path / "p.jsonl"
    rows = curate.run(engine, concepts, out, progress=lambda line: None)
    assert [r["name"] for r in rows] == ["bridges", "rain"]
    assert rows[0]["writers"][0]["feature"] == 5  # confirmed by steering as the best writer
    for r in rows:
        assert r["tried"] and all(len(t["add"]) >= 1 for t in r["tried"])
        if "chosen" in r:
            lo, hi = r["add"]
            assert lo <= hi and lo in curate.STRENGTHS
    assert len(out.read_text().splitlines()) == 2
    again = curate.run(engine, concepts + [curate.Concept("sun", "weather", ("sun",))], out, progress=lambda line: None)
    assert [r["name"] for r in again] == ["bridges", "rain", "sun"]  # only "sun" was new
    assert json.loads(out.read_text().splitlines()[0]) == rows[0]


def test_carried_over_concepts_start_from_the_nearest_new_features():
    old = Dictionary.random(16, 32, seed=0)
    perm = torch.randperm(32, generator=torch.Generator().manual_seed(1))
    new = Dictionary.random(16, 32, seed=2)
    new.W_dec[:] = old.W_dec[perm] + 0.05 * new.W_dec  # retrained: the same directions, shuffled and noisy
    catalog = Catalog(32, {3: Feature(3, "cats", curated=True, extra={"terms": ["cat"], "category": "animals"}),
                           4: Feature(4, "no terms", curated=True), 5: Feature(5, "auto label")})
    [concept] = curate.carried_over(old, catalog, new)
    assert concept[:3] == ("cats", "animals", ("cat",))
    assert concept.candidates[0] == perm.tolist().index(3)
    with pytest.raises(ValueError, match="different widths"):
        curate.carried_over(old, catalog, Dictionary.random(8, 32))


def test_given_candidates_replace_the_search(tiny_lm, monkeypatch):
    d = Dictionary.random(tiny_lm.d_model, 64, seed=1, hook_layer=1)
    engine = Engine(tiny_lm, d, Catalog(64, {i: Feature(i, f"f{i}", 4.0, 0.01) for i in range(64)}), 1, "test")
    monkeypatch.setattr(curate, "find_writers", lambda *a, **k: pytest.fail("searched despite given candidates"))
    monkeypatch.setattr(curate, "band", lambda points, need: [1.0, 1.0])
    monkeypatch.setattr(curate, "STRENGTHS", (1.0,))
    monkeypatch.setattr(curate, "MAX_NEW_TOKENS", 2)
    baseline = curate.unsteered(engine, curate.PROMPTS, 2)
    row = curate.propose(engine, curate.Concept("x", "c", ("bridge",), (7, 9)), baseline)
    assert row["chosen"] == 7 and [t["feature"] for t in row["tried"]] == [7]
    monkeypatch.setattr(curate, "band", lambda points, need: None)
    row = curate.propose(engine, curate.Concept("x", "c", ("bridge",), (7, 9)), baseline)
    assert "chosen" not in row and [t["feature"] for t in row["tried"]] == [7, 9]


def test_spec_cases_check_the_strength_in_the_band_where_most_replies_named_the_concept():
    import tomllib

    from chat.measure.check import parse_spec

    pick = {"name": "snow", "chosen": 4, "terms": ["snow"], "add": [1.0, 3.0], "clamp": [2.0, 2.0],
            "tried": [{"feature": 9, "add": [[1.0, 1.0, 1.0, []]]},  # another candidate's sweep
                      {"feature": 4, "add": [[0.5, 0.0, 1.0, []], [1.0, 0.5, 1.2, []], [2.0, 1.0, 2.0, []],
                                             [3.0, 1.0, 3.5, []], [4.0, 1.0, 9.0, []]]}],
            "clamp_sweep": [[1.0, 0.25, 1.0, []], [2.0, 0.75, 1.5, []]]}
    assert curate.spec_strength(pick, "add") == 2.0  # rate 1.0 first reached at 2x
    assert curate.spec_strength(pick, "clamp") == 2.0
    text = curate.spec_toml([pick], {4: "snow and winter"})
    spec = parse_spec(tomllib.loads(text))
    assert [(c.feature, c.mode, c.strength) for c in spec.cases] == [("snow and winter", "add", 2.0),
                                                                      ("snow and winter", "clamp", 2.0)]
    more = dict(pick, name="ice", chosen=5, tried=[])  # no sweep kept: the band's low end
    both = parse_spec(tomllib.loads(text + "\n" + curate.spec_toml([more], {5: "ice"}, header=False)))
    assert [c.name for c in both.cases] == ["snow, amplified", "snow, clamped", "ice, amplified", "ice, clamped"]
    assert both.cases[2].prompts == curate.PROMPTS and both.cases[2].strength == 1.0


def test_discovered_candidates_are_the_features_whose_replies_named_the_concept_most():
    from features.pipeline.discover import Written

    rows = [Written(1, ("snow",), ("Snow fell.", "I like snow.", "Hello.")),  # 2 prompts
            Written(2, ("snow", "tax", "cheese"), ("snow", "snows", "more snow")),  # 3, noisy
            Written(3, ("snow",), ("snow", "snow", "snow")),  # 3, clean
            Written(4, ("snowfall",), ("snowfall", "snowfall", "x")),  # not the whole word
            Written(5, (), ("snow", "rain", "sun"))]  # once only
    concept = curate.Concept("snow", "weather", ("snow",))
    assert curate.from_discovered(concept, rows) == [3, 2, 1]
    assert curate.from_discovered(concept, rows, top=1) == [3]


def test_with_discovered_candidates_no_search_runs(tiny_lm, monkeypatch):
    from features.pipeline.discover import Written

    d = Dictionary.random(tiny_lm.d_model, 64, seed=1, hook_layer=1)
    engine = Engine(tiny_lm, d, Catalog(64, {i: Feature(i, f"f{i}", 4.0, 0.01) for i in range(64)}), 1, "test")
    monkeypatch.setattr(curate, "find_writers", lambda *a, **k: pytest.fail("searched despite discovered writers"))
    monkeypatch.setattr(curate, "band", lambda points, need: None)
    monkeypatch.setattr(curate, "STRENGTHS", (1.0,))
    monkeypatch.setattr(curate, "MAX_NEW_TOKENS", 2)
    baseline = curate.unsteered(engine, curate.PROMPTS, 2)
    rows = [Written(7, ("bridge",), ("bridge", "bridge", "no")), Written(8, (), ("a", "b", "c"))]
    row = curate.propose(engine, curate.Concept("x", "c", ("bridge",)), baseline, rows)
    assert row["discovered"] == [7] and [t["feature"] for t in row["tried"]] == [7] and "chosen" not in row
    row = curate.propose(engine, curate.Concept("y", "c", ("rain",)), baseline, rows)
    assert row["discovered"] == [] and row["tried"] == []
