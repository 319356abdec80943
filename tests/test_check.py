"""Steering test specs and local steering metrics (tiny model; the curated spec on the real one
runs in test_embedded.py)."""
from __future__ import annotations

import json
import math

import pytest
import torch

from chat.measure import metrics
from chat.steer.settings import GenerationSettings
from chat.measure.check import SpecError, load_spec, parse_spec, run_case, run_spec, table
from chat.cli import main
from chat.engine import Engine
from features.catalog import Catalog, Feature
from features.dictionary import Dictionary

PROMPTS = ["Tell me about your weekend.", "What is the weather like?"]


@pytest.fixture(scope="module")
def engine(tiny_lm):
    catalog = Catalog(64, {5: Feature(5, "bridge", 4.0, 0.01), 9: Feature(9, "dog", 4.0, 0.01)})
    return Engine(tiny_lm, Dictionary.random(32, 64, seed=1, hook_layer=1), catalog, 1, "test")


def spec(**case):
    return {"prompts": PROMPTS, "max_new_tokens": 8, "case": [{"feature": "bridge", "strength": 4.0,
                                                               "terms": ["bridge"]} | case]}


# --- metrics ---------------------------------------------------------------------------------


def test_terms_match_whole_words_any_case_and_plurals():
    assert metrics.mentions("Two DOGS barked", ["dog"])
    assert metrics.mentions("a box of matches", ["match"])
    assert not metrics.mentions("dogma is not a pet", ["dog"])
    assert metrics.concept_rate(["a dog", "a cat", "Dogs!", ""], ["dog"]) == 0.5
    with pytest.raises(ValueError, match="at least one term"):
        metrics.term_pattern([" "])


def test_combined_score_is_zero_when_either_part_fails():
    assert metrics.combined_score(0.0, 1.0) == 0.0
    assert metrics.combined_score(1.0, math.inf) == 0.0
    assert metrics.combined_score(1.0, 1.0) == 1.0
    assert metrics.combined_score(0.5, 0.8) == pytest.approx(2 * 0.5 * 1.0 / 1.5)  # cost < 1 caps at 1
    assert metrics.combined_score(1.0, 2.0) == pytest.approx(2 * 0.5 / 1.5)


def test_reply_logprobs_match_the_models_own_next_token_distribution(engine):
    prompt = engine.prompt("Hello", 8, frame="plain").ids
    reply = engine.reply("Hello", settings=GenerationSettings.greedy(), max_new_tokens=6)
    lp = metrics.reply_logprobs(engine, prompt, reply.token_ids)  # (T, V)
    assert lp.shape == (len(reply.token_ids), len(engine.lm.tokenizer))
    # Greedy decoding picked the argmax at every position.
    assert lp.argmax(-1).tolist() == reply.token_ids


# --- specs -----------------------------------------------------------------------------------


@pytest.mark.parametrize("case, message", [
    ({"feature": None}, "feature must be an id or a label query"),
    ({"mode": "boost"}, "mode must be one of add, clamp"),
    ({"strength": float("nan")}, "finite"),
    ({"strength": 1e9}, "outside"),
    ({"terms": []}, "terms must be a non-empty list"),
    ({"expect": "maybe"}, "expect must be 'present' or 'absent'"),
    ({"min_concept_rate": 2}, r"min_concept_rate must be a number in \[0, 1\]"),
    ({"seeds": [1.5]}, "seeds must be a non-empty list of integers"),
    ({"colour": "red"}, "unknown key"),
])
def test_malformed_cases_give_one_line_errors(case, message):
    with pytest.raises(SpecError, match=message) as e:
        parse_spec(spec(**case), "s.toml")
    assert str(e.value).startswith("s.toml case 1: ") and "\n" not in str(e.value)


def test_spec_files_toml_and_json(tmp_path):
    (tmp_path / "a.toml").write_text('prompts = ["Hi"]\n[[case]]\nfeature = 3\nstrength = 2\nterms = "cat"\n')
    s = load_spec(tmp_path / "a.toml")
    assert s.cases[0].feature == 3 and s.cases[0].terms == ("cat",) and s.cases[0].prompts == ("Hi",)
    (tmp_path / "b.json").write_text(json.dumps(spec()))
    assert load_spec(tmp_path / "b.json").cases[0].max_new_tokens == 8
    (tmp_path / "c.toml").write_text("case = [")
    with pytest.raises(SpecError, match="not valid TOML"):
        load_spec(tmp_path / "c.toml")
    with pytest.raises(SpecError, match="no \\[\\[case\\]\\] entries"):
        parse_spec({"prompts": ["x"]})
    with pytest.raises(SpecError, match="spec not found"):
        load_spec(tmp_path / "missing.toml")


def test_a_zero_strength_case_measures_no_effect(engine):
    """Strength 0 is a bit-exact no-op, so the steered replies are the unsteered ones."""
    case = parse_spec(spec(strength=0.0, terms=["the"], min_concept_rate=0.0)).cases[0]
    r = run_case(engine, case)
    assert r.fluency_cost == pytest.approx(1.0) and r.logprob_lift == pytest.approx(0.0, abs=1e-6)
    assert r.concept_rate == r.baseline_rate and r.passed


def test_amplifying_lifts_the_tokens_the_direction_promotes(engine):
    """The word whose token the feature's decoder row promotes most gets more likely."""
    lm = engine.lm
    direction = engine.dictionary.directions([5])[0]  # (d,)
    with torch.inference_mode():
        logits = lm.model.get_output_embeddings()(lm.model.get_decoder().norm(direction[None, None]))[0, 0]
    words = [(i, lm.tokenizer.decode([i]).strip()) for i in torch.argsort(logits, descending=True).tolist()]
    word = next(w for i, w in words if w.isalpha() and len(w) > 2 and lm.tokenizer.encode(" " + w)[0] == i)
    case = parse_spec(spec(strength=20.0, terms=[word], min_concept_rate=0.0)).cases[0]
    r = run_case(engine, case)
    assert r.logprob_lift > 1.0
    assert r.fluency_cost != pytest.approx(1.0)


def test_expectations_decide_pass_and_fail(engine):
    s = parse_spec({"prompts": PROMPTS, "max_new_tokens": 6, "case": [
        {"name": "needs a word it never says", "feature": 5, "strength": 2.0, "terms": ["zebra"],
         "min_concept_rate": 0.5},
        {"name": "absent holds", "feature": "dog", "mode": "clamp", "strength": -1.0, "terms": ["zebra"],
         "expect": "absent"},
        {"name": "fluency bound", "feature": 5, "strength": 50.0, "terms": ["zebra"], "min_concept_rate": 0.0,
         "max_fluency_cost": 1.0},
    ]})
    results = run_spec(engine, s)
    assert [r.passed for r in results][:2] == [False, True]
    assert results[0].failures == ("concept rate 0.00 < 0.50",)
    assert results[1].feature == 9 and results[1].label == "dog"
    third = results[2]
    assert third.passed == (third.fluency_cost <= 1.0)
    assert f"{sum(r.passed for r in results)}/3 cases passed" in table(results)


def test_cli_check_exit_codes(tmp_path, capsys, monkeypatch, engine):
    monkeypatch.setattr("chat.cli._engine", lambda args: engine)
    good = tmp_path / "good.toml"
    good.write_text('prompts = ["Hi"]\nmax_new_tokens = 4\n[[case]]\nfeature = "bridge"\nstrength = 0\n'
                    'terms = ["zebra"]\nexpect = "absent"\n')
    assert main(["check", str(good), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["passed"] and rows[0]["feature"] == 5
    bad = tmp_path / "bad.toml"
    bad.write_text('prompts = ["Hi"]\nmax_new_tokens = 4\n[[case]]\nfeature = "bridge"\nstrength = 1\n'
                   'terms = ["zebra"]\nmin_concept_rate = 1.0\n')
    assert main(["check", str(bad)]) == 1
    assert "0/1 cases passed" in capsys.readouterr().out
    (tmp_path / "broken.toml").write_text("[[case]]\nfeature = 1\n")
    assert main(["check", str(tmp_path / "broken.toml")]) == 2
    assert "missing 'strength'" in capsys.readouterr().err


@pytest.mark.parametrize("steer", [None, {5: 6.0}, {9: 3.0}])
def test_batched_replies_equal_one_at_a_time(engine, steer):
    from chat.steer.batch import replies
    from chat.steer.steering import Steering

    mode = "clamp" if steer and 9 in steer else "add"
    steering = Steering(steer or {}, mode=mode)
    prompts = ["Hello", "Tell me about your weekend, please, in detail.", "Dogs?"]
    batched = replies(engine, prompts, steering, max_new_tokens=8)
    for prompt, b in zip(prompts, batched):
        single = engine.reply(prompt, steer=steering, settings=GenerationSettings.greedy(), max_new_tokens=8)
        assert b.token_ids == single.token_ids and b.text == single.text
        assert b.prompt_ids == list(engine.prompt(prompt, 8, frame="plain").ids)


def test_versus_prompting_scores_both_ways_on_the_same_prompts(engine, capsys, monkeypatch, tmp_path):
    from chat.measure import versus

    s = parse_spec(spec(strength=0.0, terms=["zebra"], min_concept_rate=0.0))
    (row,) = versus.versus(engine, s)
    assert row.concept == "zebra" and row.steering.fluency_cost == pytest.approx(1.0)
    assert 0.0 <= row.prompting_rate <= 1.0 and row.prompting_cost > 0
    assert "| zebra | #5 add 0 |" in versus.table([row])
    monkeypatch.setattr("chat.cli._engine", lambda args: engine)
    path = tmp_path / "s.json"
    path.write_text(json.dumps(spec(strength=0.0, terms=["zebra"])))
    assert main(["check", str(path), "--vs-prompting", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["prompting"]["concept_rate"] == row.prompting_rate


def test_versus_prompting_compares_each_feature_and_concept_once(engine, monkeypatch):
    from chat.measure import versus

    cases = [{"feature": "bridge", "strength": 0.0, "terms": ["zebra"], "mode": "add", "min_concept_rate": 0.0},
             {"feature": "bridge", "strength": 0.0, "terms": ["zebra"], "mode": "clamp", "min_concept_rate": 0.0},
             {"feature": "bridge", "strength": 0.0, "terms": ["okapi"], "min_concept_rate": 0.0},
             {"feature": "bridge", "strength": 0.0, "terms": ["zebra"], "expect": "absent", "max_concept_rate": 1.0}]
    s = parse_spec({"prompts": PROMPTS[:1], "max_new_tokens": 4, "case": cases})
    monkeypatch.setattr(versus, "prompting", lambda engine, case, baselines: (0.0, 1.0, 0.0, ()))
    rows = versus.versus(engine, s)
    assert [(r.concept, r.steering.mode) for r in rows] == [("zebra", "add"), ("okapi", "add")]
