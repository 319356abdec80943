"""Recommended strengths (features/pipeline/recommend.py) on the tiny model: the weakest grid
strength at which the greedy reply visibly changes, found by bisection, equals a full scan."""
from __future__ import annotations

import torch

from chat.engine import Engine
from features.catalog import Catalog, Feature
from features.dictionary import Dictionary
from features.pipeline import recommend


def _engine(tiny_lm):
    d = Dictionary.random(tiny_lm.d_model, 16, seed=3, hook_layer=1)
    d.W_dec[2] *= 0.001  # a feature too weak to change anything
    catalog = Catalog(16, {i: Feature(i, f"f{i}", 0.5 + i, 0.01) for i in range(16)})
    return Engine(tiny_lm, d, catalog, 1, "test")


def test_bisection_finds_the_weakest_grid_strength_that_changes_the_reply(tiny_lm):
    engine = _engine(tiny_lm)
    features = list(range(16))
    found = recommend.recommend(engine, features, progress=False)
    seq = recommend.teacher(engine)
    table = {s: recommend.changed(engine, seq, features, [s] * len(features)) for s in recommend.GRID}
    for f in features:
        # A full scan's first change where changing is monotone in the strength (bisection's premise).
        flips = [s for s in recommend.GRID if table[s][f] >= recommend.MIN_CHANGED]
        if flips == [s for s in recommend.GRID if s >= (flips[0] if flips else float("inf"))]:
            assert found[f] == (flips[0] if flips else None), f
    assert found[2] is None


def test_a_row_is_the_real_steered_forward(tiny_lm):
    engine = _engine(tiny_lm)
    seq = recommend.teacher(engine)
    (share,) = recommend.changed(engine, seq, [5], [4.0])
    ids = torch.tensor([seq])
    delta = 4.0 * engine.max_acts[5] * engine.dictionary.directions([5])[0]
    from chat.steer.hooks import on_output

    keep = tiny_lm.content_mask(ids).unsqueeze(-1)
    with torch.inference_mode():
        plain = tiny_lm.model(input_ids=ids, logits_to_keep=recommend.POSITIONS).logits[0].argmax(-1)
        with on_output(tiny_lm.layers[1], lambda h: h + (delta * keep).to(h.dtype)):
            steered = tiny_lm.model(input_ids=ids, logits_to_keep=recommend.POSITIONS).logits[0].argmax(-1)
    assert share == (steered != plain).float().mean().item()


def test_cli_writes_recommended_into_the_catalog(tiny_lm, tiny_model_dir, tmp_path, monkeypatch):
    from features import formats
    from features.pipeline.cli import main

    engine = _engine(tiny_lm)
    folder = tmp_path / "dict"
    formats.save(engine.dictionary, folder, dtype=torch.float32)
    engine.catalog.save(folder)
    assert main(["recommend", "--model", str(tiny_model_dir), "--dictionary", str(folder), "--limit", "4"]) == 0
    saved = Catalog.load(folder, 16)
    expected = recommend.keep_fluent(engine, recommend.recommend(_engine(tiny_lm), [0, 1, 2, 3], progress=False))
    assert {i: saved[i].extra.get("recommended") for i in range(4)} == expected
    assert "recommended" not in saved[4].extra and saved[4].label == "f4"  # the rest as they were

    # A stopped run resumes: features with a recommendation (None included) are not measured again.
    calls = []
    monkeypatch.setattr(recommend, "recommend", lambda eng, fs, progress=True: calls.append(list(fs)) or {f: None for f in fs})
    assert main(["recommend", "--model", str(tiny_model_dir), "--dictionary", str(folder), "--limit", "6"]) == 0
    assert calls == [[4, 5]] and Catalog.load(folder, 16)[5].extra["recommended"] is None
    assert {i: Catalog.load(folder, 16)[i].extra.get("recommended") for i in range(4)} == expected


def test_a_recommended_strength_keeps_the_reply_fluent(tiny_lm, monkeypatch):
    """A strength that changes the reply by breaking it is not recommended: one grid step lower
    is, where that stays fluent and still changes the reply, else none."""
    engine = _engine(tiny_lm)
    breaks_above_1 = lambda eng, features, strengths, batch_size=32: [s <= 1.0 for s in strengths]
    monkeypatch.setattr(recommend, "fluent", breaks_above_1)
    monkeypatch.setattr(recommend, "changed", lambda eng, seq, features, strengths, batch_size=64: [1.0] * len(features))
    assert recommend.keep_fluent(engine, {0: 2.0, 1: 1.0, 2: None, 3: 8.0, 4: 0.5}) == {
        0: 1.0, 1: 1.0, 2: None, 3: None, 4: 0.5}


def test_fluency_is_the_concept_searchs_rule(tiny_lm):
    engine = _engine(tiny_lm)
    assert recommend.fluent(engine, [0, 5], [0.0, 0.0]) == [True, True]  # unsteered: as fluent as itself
