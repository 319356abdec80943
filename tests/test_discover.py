"""What each feature writes (features/pipeline/discover.py) on the tiny model."""
from __future__ import annotations

import json

import torch

from chat.engine import Engine
from chat.steer.settings import GenerationSettings
from features.pipeline import discover
from features.catalog import Catalog, Feature
from features.dictionary import Dictionary

GREEDY = GenerationSettings.greedy()
PROMPTS = ("Tell me about your weekend.", "Hello there", "How was your day?")


def _engine(tiny_lm):
    d = Dictionary.random(tiny_lm.d_model, 16, seed=3, hook_layer=1)
    catalog = Catalog(16, {i: Feature(i, f"f{i}", 2.0 + i, 0.01) for i in range(16)})
    return Engine(tiny_lm, d, catalog, 1, "test")


def test_text_tokens_keep_plain_text_and_the_special_tokens_and_drop_the_rest(tiny_lm):
    tok = tiny_lm.tokenizer
    kept = set(discover.text_tokens(tok).tolist())
    assert set(tok.all_special_ids) <= kept
    assert set(tok.encode(" Bridges cross rivers.", add_special_tokens=False)) <= kept
    assert not set(tok.encode("é→", add_special_tokens=False)) & kept  # partial UTF-8 bytes


def test_each_row_decodes_like_a_real_steered_reply(tiny_lm):
    """One feature per batch row gives the reply that engine.reply gives with that feature
    added at the same strength (plain greedy, as discover decodes), so the batched shortcut
    measures the real thing."""
    engine = _engine(tiny_lm)
    head = discover.unembedding(tiny_lm, torch.arange(len(tiny_lm.tokenizer)))
    prompt = engine.prompt(PROMPTS[0], 8, frame="plain")
    features = [0, 3, 7, 11]
    edit = 4.0 * engine.max_acts[features].unsqueeze(1) * engine.dictionary.directions(features).float()  # (4, d)
    rows = discover._texts(tiny_lm, prompt, discover._decode(tiny_lm, prompt.ids, edit, 8, 1, head))
    for f, text in zip(features, rows):
        assert text == engine.reply(PROMPTS[0], steer={f: 4.0}, settings=GREEDY, max_new_tokens=8).text
    plain = discover._texts(tiny_lm, prompt, discover._decode(tiny_lm, prompt.ids, None, 8, 1, head))
    assert plain == [engine.reply(PROMPTS[0], settings=GREEDY, max_new_tokens=8).text]


def test_written_words_are_new_and_repeat_across_prompts_and_a_run_resumes(tiny_lm, tmp_path, monkeypatch):
    engine = _engine(tiny_lm)
    calls = []
    real = discover._decode

    def counted(lm, ids, edit, n, layer, head):
        calls.append(0 if edit is None else edit.shape[0])
        return real(lm, ids, edit, n, layer, head)

    monkeypatch.setattr(discover, "_decode", counted)
    out = tmp_path / "w.jsonl"
    rows = discover.discover(engine, [1, 2, 3], out, prompts=PROMPTS, new_tokens=6, batch_size=2, progress=None)
    assert [r.feature for r in rows] == [1, 2, 3] and len(out.read_text().splitlines()) == 3
    plain = set()
    for p in PROMPTS:
        plain |= discover.words(engine.reply(p, settings=GREEDY, max_new_tokens=6).text)
    for r in rows:
        assert len(r.replies) == 3
        for w in r.words:
            assert w not in plain and sum(w in discover.words(t) for t in r.replies) >= 2
    assert calls == [0, 0, 0, 2, 2, 2, 1, 1, 1]  # unsteered once per prompt, then 2 batches x 3 prompts
    calls.clear()
    again = discover.discover(engine, [1, 2, 3, 4], out, prompts=PROMPTS, new_tokens=6, batch_size=2, progress=None)
    assert again[:3] == rows and calls == [0, 0, 0, 1, 1, 1]  # only feature 4 is new
    assert json.loads(out.read_text().splitlines()[3])["feature"] == 4


def test_written_words_tie_in_a_fixed_order(tiny_lm, tmp_path, monkeypatch):
    """Words said on as many prompts come in alphabetical order, not in a set's per-process order."""
    engine = _engine(tiny_lm)
    texts = iter([["nothing"]] * 3 + [["zebra and apple mango"], ["zebra, apple and mango!"], ["mango apple zebra"]])
    monkeypatch.setattr(discover, "_texts", lambda lm, prompt, tokens: next(texts))  # 3 unsteered, then 3 steered
    (row,) = discover.discover(engine, [1], tmp_path / "w.jsonl", prompts=PROMPTS, new_tokens=2, progress=None)
    assert row.words == ("apple", "mango", "zebra")


def test_words_drop_stopwords_short_words_and_case():
    assert discover.words("The SNOW and the snow, I'm cold: ok") == {"snow", "cold"}


def test_written_words_replace_the_writes_side_of_automatic_labels_only():
    written = discover.Written(4, ("snow", "cold", "winter", "ice"), ("a", "b", "c"))
    auto = discover.with_writes(Feature(4, "snow · Snow → ung, ization", 1.0), written)
    assert auto.label == "snow · Snow → snow, cold, winter" and auto.extra["writes"] == list(written.words)
    curated = discover.with_writes(Feature(4, "winter", 1.0, curated=True), written)
    assert curated.label == "winter" and curated.extra["writes"] == list(written.words)
    silent = discover.with_writes(Feature(4, "snow → ung", 1.0), written._replace(words=()))
    assert silent.label == "snow → ung" and silent.extra["writes"] == []
    assert discover.with_writes(Feature(4), written).label == "? → snow, cold, winter"


def test_discover_write_without_a_dictionary_folder_is_a_one_line_error(capsys):
    from features.pipeline.cli import main

    assert main(["discover", "--out", "w.jsonl", "--write"]) == 2
    assert "--write needs --dictionary" in capsys.readouterr().err
