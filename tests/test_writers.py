"""Finding the features that write a concept (features/pipeline/writers.py) on the tiny model."""
from __future__ import annotations

import pytest
import torch

from chat.engine import Engine
from chat.steer.hooks import on_output
from chat.measure.metrics import concept_token_ids
from features.catalog import Catalog, Feature
from features.pipeline.corpus import verse_chapters
from features.dictionary import Dictionary
from features.pipeline.steerability import POSITIONS, scored_prompts
from features.pipeline.writers import attribution, concept_gradient, find_writers

PROMPTS = ("Hello there", "Tell me about your weekend.")


@pytest.fixture(scope="module")
def planted(tiny_lm):
    """A dictionary whose feature 5 points along the gradient of log P("bridge") and feature 9
    against it."""
    ids = concept_token_ids(tiny_lm.tokenizer, ["bridge"])
    g = concept_gradient(tiny_lm, 1, ids, PROMPTS)
    d = Dictionary.random(tiny_lm.d_model, 64, seed=1, hook_layer=1)
    d.W_dec[5] = g / g.norm()
    d.W_dec[9] = -g / g.norm()
    catalog = Catalog(64, {i: Feature(i, f"f{i}", 4.0, 0.01) for i in range(64)})
    return Engine(tiny_lm, d, catalog, 1, "test"), ids, g


def _logp(lm, ids, delta):
    """Mean log P(ids) at the scored positions with `delta` added at layer 1 (content positions)."""
    total = 0.0
    for seq in scored_prompts(lm, PROMPTS):
        x = torch.tensor([seq])
        keep = lm.content_mask(x).unsqueeze(-1)  # (1, T, 1)
        with torch.inference_mode(), on_output(lm.layers[1], lambda h: h + (delta * keep).to(h.dtype)):
            logits = lm.model(input_ids=x, logits_to_keep=POSITIONS).logits[0].float()
        total += torch.log_softmax(logits, -1)[:, ids].logsumexp(-1).mean().item()
    return total / len(PROMPTS)


def test_the_gradient_points_where_the_concept_gets_likelier(planted, tiny_lm):
    _, ids, g = planted
    step = 1e-2 * g / g.norm() * tiny_lm.d_model ** 0.5
    assert _logp(tiny_lm, ids, step) > _logp(tiny_lm, ids, torch.zeros_like(g)) > _logp(tiny_lm, ids, -step)


def test_attribution_ranks_the_planted_writer_first_and_its_opposite_last(planted):
    engine, ids, _ = planted
    scores = attribution(engine, ids, PROMPTS)
    assert scores.argmax().item() == 5 and scores[5] == pytest.approx(1.0, abs=1e-4)
    assert scores.argmin().item() == 9


def test_find_writers_confirms_candidates_by_steering_and_sorts_by_lift(planted):
    engine, _, _ = planted
    writers = find_writers(engine, ["bridge"], top=4, strength=20.0, prompts=PROMPTS, also=[9])
    assert {w.feature for w in writers} >= {5, 9}
    assert [w.lift for w in writers] == sorted((w.lift for w in writers), reverse=True)
    by_id = {w.feature: w for w in writers}
    assert by_id[5].lift > by_id[9].lift == 0.0
    with pytest.raises(ValueError, match="no tokens"):
        find_writers(engine, [], prompts=PROMPTS)


def test_bible_verses_group_into_chapters_without_references():
    lines = ["Ge1:1 In the beginning.", "Ge1:2 And the earth.", "Ge2:1 Thus the heavens.", "Re22:21 Amen."]
    assert list(verse_chapters(lines)) == ["In the beginning.\nAnd the earth.", "Thus the heavens.", "Amen."]
