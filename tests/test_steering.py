"""Steering and readout invariants on a tiny Gemma 3 model built from a config."""
from __future__ import annotations

import threading

import pytest
import torch

from chat.engine import Engine
from chat.errors import GenerationError
from chat.steer.hooks import Recorder, attach
from chat.steer.steering import FeatureSteerer, Steering, SteeringError, parse_strength
from features.catalog import Catalog, Feature
from features.dictionary import Dictionary

PROMPT = "Tell me about your weekend."


def orthonormal_dictionary(d_in: int, d_sae: int, bias: float = 0.0, layer: int = 1) -> Dictionary:
    """Tied ReLU dictionary with orthonormal rows: re-encoding an edit is exact when pre > 0."""
    q, _ = torch.linalg.qr(torch.randn(d_in, d_in, generator=torch.Generator().manual_seed(3)))
    W_dec = q[:d_sae]  # (d_sae, d_in) orthonormal rows
    return Dictionary(W_enc=W_dec.T.clone(), b_enc=torch.full((d_sae,), bias), W_dec=W_dec,
                      b_dec=torch.zeros(d_in), activation="relu", apply_b_dec_to_input=False, hook_layer=layer)


@pytest.fixture(scope="module")
def engine(tiny_lm) -> Engine:
    d = Dictionary.random(32, 64, activation="relu", seed=1, hook_layer=1)
    catalog = Catalog(64, {
        5: Feature(5, "golden gate bridge", 4.0, 0.01, curated=True),
        9: Feature(9, "dogs and puppies", 2.0, 0.02),
    })
    return Engine(tiny_lm, d, catalog, 1, "test-random")


def layer_io(lm, layer, steerer, ids):
    """(input h, output h) of decoder layer `layer` for ids, with `steerer` attached."""
    seen = {}
    grab_in = lm.layers[layer].register_forward_hook(lambda m, a, o: seen.setdefault("in", o.clone()))
    with torch.inference_mode(), attach(lm, layer, steerer):
        grab_out = lm.layers[layer].register_forward_hook(lambda m, a, o: seen.setdefault("out", o.clone()))
        try:
            logits = lm.model(input_ids=ids).logits
        finally:
            grab_out.remove()
            grab_in.remove()
    return seen["in"], seen["out"], logits


def prompt_ids(engine):
    return torch.tensor([engine.prompt(PROMPT, 16).ids])


def test_zero_strength_is_bit_exact(engine):
    lm, ids = engine.lm, prompt_ids(engine)
    with torch.inference_mode():
        plain = lm.model(input_ids=ids).logits
    for mode in ("add", "clamp"):
        steerer = FeatureSteerer(engine.dictionary, Steering({5: 0.0, 9: 0.0}, mode=mode), engine.max_acts)
        h_in, h_out, logits = layer_io(lm, 1, steerer, ids)
        assert torch.equal(h_in, h_out)
        assert torch.equal(plain, logits)
    a = engine.reply(PROMPT, max_new_tokens=12)
    b = engine.reply(PROMPT, steer={5: 0.0, "dogs": 0.0}, mode="clamp", max_new_tokens=12)
    assert a.token_ids == b.token_ids and a.text == b.text


def test_add_moves_along_the_decoder_direction(engine):
    ids = prompt_ids(engine)
    steerer = FeatureSteerer(engine.dictionary, Steering({5: 2.0}), engine.max_acts)
    h_in, h_out, _ = layer_io(engine.lm, 1, steerer, ids)
    expected = 2.0 * 4.0 * engine.dictionary.W_dec[5]  # s · a_max · d
    assert torch.allclose(h_out[0, 1:] - h_in[0, 1:], expected.expand(ids.shape[1] - 1, -1), atol=1e-5)
    assert torch.equal(h_out[0, 0], h_in[0, 0])  # BOS is never steered


def test_clamp_keeps_error_term_and_sets_feature(tiny_lm):
    d = orthonormal_dictionary(32, 16, bias=50.0)  # bias keeps every pre-activation positive
    ids = torch.tensor([[2, 10, 11, 12, 13]])
    steerer = FeatureSteerer(d, Steering({3: 1.5}, mode="clamp"), torch.full((16,), 2.0))
    h_in, h_out, _ = layer_io(tiny_lm, 1, steerer, ids)
    f = d.encode(h_in).acts[0, 1:, 3]  # (T-1,) before the edit
    # Write-back keeps the error term: only the feature's own contribution changes.
    assert torch.allclose(h_out[0, 1:] - h_in[0, 1:], (3.0 - f)[:, None] * d.W_dec[3], atol=1e-4)
    assert torch.allclose(d.encode(h_out).acts[0, 1:, 3], torch.full((4,), 3.0), atol=1e-3)
    assert torch.equal(h_out[0, 0], h_in[0, 0])


def test_negative_clamp_suppresses(tiny_lm):
    d = orthonormal_dictionary(32, 16)
    ids = torch.tensor([[2, 10, 11, 12, 13, 14, 15]])
    h_in, _, _ = layer_io(tiny_lm, 1, FeatureSteerer(d, Steering(), torch.ones(16)), ids)
    active = int(d.encode(h_in).acts[0, 1:].gt(0).sum(0).argmax())  # a feature that fires here
    assert d.encode(h_in).acts[0, 1:, active].max() > 0
    steerer = FeatureSteerer(d, Steering({active: -1.0}, mode="clamp"), torch.ones(16))
    _, h_out, _ = layer_io(tiny_lm, 1, steerer, ids)
    assert d.encode(h_out).acts[0, 1:, active].max() == 0


def test_readout_equals_independent_forward_and_encode(engine):
    steering = Steering({5: 3.0})
    reply = engine.reply(PROMPT, steer=steering, max_new_tokens=10)
    assert len(reply.token_ids) > 0 and reply.readout.acts.shape == (len(reply.token_ids), 64)
    prompt = engine.prompt(PROMPT, 10)
    full = torch.tensor([list(prompt.ids) + reply.token_ids])
    recorder = Recorder(start=len(prompt.ids))
    steerer = FeatureSteerer(engine.dictionary, steering, engine.max_acts)
    with torch.inference_mode(), attach(engine.lm, 1, steerer, recorder):
        engine.lm.model(input_ids=full, use_cache=False)
    expected = recorder.dense(len(reply.token_ids), 64)
    assert torch.allclose(reply.readout.acts, expected, atol=1e-4, rtol=1e-4)
    # Unsteered: the readout is exactly the dictionary's encoding of the layer's output.
    plain = engine.reply(PROMPT, max_new_tokens=10)
    seen = {}
    handle = engine.lm.layers[1].register_forward_hook(lambda m, a, o: seen.setdefault("h", o))
    try:
        with torch.inference_mode():
            engine.lm.model(input_ids=torch.tensor([list(prompt.ids) + plain.token_ids]))
    finally:
        handle.remove()
    direct = engine.dictionary.encode(seen["h"][0, len(prompt.ids):]).acts
    assert torch.allclose(plain.readout.acts, direct, atol=1e-4, rtol=1e-4)
    top = plain.top_features[0].id
    assert torch.allclose(torch.tensor(plain.readout.feature(top)), direct[:, top], atol=1e-4)


def test_top_features_summarise_the_readout(engine):
    reply = engine.reply(PROMPT, max_new_tokens=10)
    hits = reply.top_features
    assert hits and len(hits) <= 10
    for h in hits:
        column = reply.readout.acts[:, h.id]
        assert h.activation == pytest.approx(float(column.max()))
        assert h.tokens == int((column > 0).sum())
        assert h.label == engine.catalog.label(h.id)
    rel = [h.relative for h in hits]
    assert rel == sorted(rel, reverse=True)


def test_hooks_are_removed_after_an_exception(engine):
    lm = engine.lm
    before = (len(lm.layers[1]._forward_hooks), len(lm.model.get_input_embeddings()._forward_pre_hooks))
    steerer = FeatureSteerer(engine.dictionary, Steering({5: 1.0}), engine.max_acts)
    with pytest.raises(RuntimeError, match="boom"):
        with attach(lm, 1, steerer):
            assert len(lm.layers[1]._forward_hooks) == before[0] + 1
            raise RuntimeError("boom")
    assert (len(lm.layers[1]._forward_hooks), len(lm.model.get_input_embeddings()._forward_pre_hooks)) == before


def test_generation_error_surfaces_and_hooks_are_removed(engine, monkeypatch):
    calls = {"n": 0}
    original = FeatureSteerer.__call__

    def failing(self, h, keep):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("kaboom in the generation thread")
        return original(self, h, keep)

    monkeypatch.setattr(FeatureSteerer, "__call__", failing)
    before = len(engine.lm.layers[1]._forward_hooks)  # transformers may keep hooks of its own
    stream = engine.stream(PROMPT, steer={5: 1.0}, max_new_tokens=20, timeout=30)
    with pytest.raises(RuntimeError, match="kaboom"):
        list(stream)
    assert len(engine.lm.layers[1]._forward_hooks) == before


def test_stalled_generation_times_out(engine, monkeypatch):
    release = threading.Event()
    original = FeatureSteerer.__call__

    def stall(self, h, keep):
        release.wait(10)
        return original(self, h, keep)

    monkeypatch.setattr(FeatureSteerer, "__call__", stall)
    stream = engine.stream(PROMPT, max_new_tokens=5, timeout=0.5)
    with pytest.raises(GenerationError, match="no token"):
        list(stream)
    release.set()


def test_stream_equals_reply(engine):
    for steer, mode in (({}, "add"), ({5: 4.0}, "add"), ({"dogs": -2.0}, "clamp")):
        reply = engine.reply(PROMPT, steer=steer, mode=mode, max_new_tokens=16, temperature=0.8, seed=7)
        stream = engine.stream(PROMPT, steer=steer, mode=mode, max_new_tokens=16, temperature=0.8, seed=7)
        chunks = list(stream)
        assert "".join(chunks) == reply.text == stream.reply.text
        assert stream.reply.token_ids == reply.token_ids


def test_stream_stop_cancels(engine):
    stream = engine.stream(PROMPT, max_new_tokens=200)
    for _ in stream:
        stream.stop()
    assert stream.reply.finish_reason == "cancelled"
    assert len(stream.reply.token_ids) < 200


def test_concurrent_steering_does_not_leak(engine):
    settings = dict(max_new_tokens=12)
    cases = [({5: 6.0}, "add"), ({9: -3.0}, "clamp"), ({}, "add"), ({5: -4.0, 9: 2.0}, "add")]
    alone = [engine.reply(PROMPT, steer=s, mode=m, **settings).token_ids for s, m in cases]
    assert len({tuple(a) for a in alone}) > 1  # the steering really changes the replies
    results: dict[int, list] = {}
    barrier = threading.Barrier(len(cases))

    def worker(i, steer, mode):
        barrier.wait()
        results[i] = [engine.reply(PROMPT, steer=steer, mode=mode, **settings).token_ids for _ in range(3)]

    threads = [threading.Thread(target=worker, args=(i, s, m)) for i, (s, m) in enumerate(cases)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for i, expected in enumerate(alone):
        assert results[i] == [expected] * 3


def test_sampling_is_seeded_per_call(engine):
    a = engine.reply(PROMPT, max_new_tokens=12, temperature=1.0, seed=1)
    b = engine.reply(PROMPT, max_new_tokens=12, temperature=1.0, seed=1)
    c = engine.reply(PROMPT, max_new_tokens=12, temperature=1.0, seed=2)
    assert a.token_ids == b.token_ids
    assert a.token_ids != c.token_ids


def test_label_queries_resolve(engine):
    s = engine.steering({"golden gate": 2, "9": -1}, mode="clamp")
    assert s.strengths == ((5, 2.0), (9, -1.0)) and s.mode == "clamp"


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf", float("nan"), 1e9, "abc", None, True, "", [1]])
def test_bad_strengths_are_refused(bad):
    with pytest.raises(SteeringError):
        parse_strength(bad)


@pytest.mark.parametrize("steer,mode,match", [
    ({5: 1.0}, "boost", "mode"),
    ({-1: 1.0}, "add", "out of range"),
    ({64: 1.0}, "add", "out of range"),
    ({"no such concept xyz": 1.0}, "add", "no feature"),
    ({5: 1.0, "golden gate": 2.0}, "add", "already steered"),
])
def test_bad_steering_is_refused(engine, steer, mode, match):
    with pytest.raises((SteeringError, LookupError), match=match):
        engine.reply(PROMPT, steer=steer, mode=mode, max_new_tokens=4)


@pytest.mark.parametrize("settings,match", [
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(max_new_tokens=10**6), "max_new_tokens"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(temperature=-1), "temperature"),
    (dict(seed=-3), "seed"),
])
def test_bad_settings_are_refused(engine, settings, match):
    with pytest.raises(ValueError, match=match):
        engine.reply(PROMPT, **settings)


def test_encode_aligns_with_tokenization(engine):
    text = "The Golden Gate Bridge <eos> is here."
    enc = engine.encode(text)
    tok = engine.lm.tokenizer
    assert enc.token_ids == tok.encode(text, add_special_tokens=False, split_special_tokens=True)
    assert "".join(enc.tokens) == text
    assert tok.eos_token_id not in enc.token_ids  # typed "<eos>" is text, not a control token
    assert enc.acts.shape == (len(enc.token_ids), 64)
    for row, acts in zip(enc.top(3), enc.acts):
        assert [i for i, _ in row] == torch.topk(acts, 3).indices[: len(row)].tolist()


def test_replies_never_sample_special_tokens(engine):
    """A special token made the likeliest (as strong steering can make "<start_of_image>") is
    never sampled, by a reply or a batch; EOS still ends a reply."""
    from chat.steer.batch import replies

    lm = engine.lm
    unk = lm.tokenizer.unk_token_id
    assert unk in lm.never_sampled.tolist() and lm.tokenizer.eos_token_id not in lm.never_sampled.tolist()
    favour = lm.model.lm_head.register_forward_hook(lambda m, a, out: out.index_fill(-1, torch.tensor([unk]), 1e4))
    try:
        reply = engine.reply(PROMPT, max_new_tokens=8)
        batch = replies(engine, [PROMPT, "Hi"], max_new_tokens=8)
    finally:
        favour.remove()
    assert reply.token_ids and unk not in reply.token_ids
    assert all(r.token_ids and unk not in r.token_ids for r in batch)
