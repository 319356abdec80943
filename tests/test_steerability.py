"""Output scores (features/pipeline/steerability.py) on the tiny model."""
from __future__ import annotations

import pytest
import torch

from features.dictionary import Dictionary
from chat.measure.metrics import concept_token_ids
from features.pipeline.steerability import output_scores, target_words


def test_target_words_take_the_written_side_of_automatic_labels():
    assert target_words("bridge · Bridge → span, crossing", [" span", " river", "##", " the"]) == \
        ["span", "crossing", "river"]
    assert target_words("dogs and puppies", []) == ["dogs", "puppies"]


@pytest.fixture(scope="module")
def setup(tiny_lm):
    d = Dictionary.random(32, 16, seed=3, hook_layer=1)
    lm = tiny_lm
    dirs = d.directions(list(range(16))).float()  # (16, d)
    with torch.inference_mode():
        lens = lm.model.get_output_embeddings()(lm.model.get_decoder().norm(dirs[None]))[0]  # (16, V)
    return lm, d, lens


def test_a_feature_scores_on_the_tokens_it_promotes_not_on_those_it_suppresses(setup):
    lm, d, lens = setup
    promoted = {f: lens[f].topk(3).indices.tolist() for f in range(8)}
    suppressed = {f: (-lens[f]).topk(3).indices.tolist() for f in range(8)}
    kw = dict(strength=30.0, prompts=("Hello there", "Tell me about your weekend."), progress=False)
    up = output_scores(lm, d, 1, torch.ones(16), promoted, **kw)
    down = output_scores(lm, d, 1, torch.ones(16), suppressed, **kw)
    assert sum(up.values()) > 0.05
    assert sum(up[f] > down[f] for f in range(8)) >= 7
    assert all(0.0 <= v <= 1.0 for v in up.values())


def test_batching_does_not_change_scores(setup):
    lm, d, lens = setup
    targets = {f: lens[f].topk(2).indices.tolist() for f in range(6)} | {6: []}  # 6: nothing to score
    kw = dict(strength=10.0, prompts=("Hello there",), progress=False)
    one = output_scores(lm, d, 1, torch.ones(16), targets, batch_size=1, **kw)
    many = output_scores(lm, d, 1, torch.ones(16), targets, batch_size=4, **kw)
    assert 6 not in one and one.keys() == many.keys()
    assert one == pytest.approx(many, abs=2e-3)


def test_target_ids_are_word_starts(tiny_lm):
    ids = concept_token_ids(tiny_lm.tokenizer, ["bridge"], bare=False)
    assert tiny_lm.tokenizer.encode(" bridge", add_special_tokens=False)[0] in ids
    assert len(ids) <= 2  # " bridge", " Bridge": no bare forms
