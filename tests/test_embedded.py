"""Integration on the real embedded model (Gemma 3 270M from PyPI). The first run converts the
GGUF into the user cache (about a minute); later runs load the cached copy in seconds."""
from __future__ import annotations

import json

import pytest
import torch

from chat.engine import load
from chat.runtime.models import embedded_model_dir, load_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine():
    return load()


def test_converted_copy_is_cached(engine):
    folder = embedded_model_dir()
    cfg = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in cfg
    assert cfg["num_hidden_layers"] == 18 and cfg["hidden_size"] == 640
    assert (folder / "model.safetensors").exists()
    assert engine.lm.n_layers == 18 and engine.lm.d_model == 640


def test_bf16_copy_is_the_float32_conversion_cast(engine):
    """A bf16 CPU reads the embedded weights from a bf16 copy saved at its first load: the same
    tensors as casting the float32 conversion, so the int8 cache and every reply stay as they were."""
    from safetensors.torch import load_file

    from chat.runtime.models import _embedded_copy

    if engine.lm.dtype != torch.bfloat16:
        pytest.skip("this CPU runs the model in float32: no copy")
    copy = _embedded_copy(embedded_model_dir(), torch.bfloat16)
    assert copy is not None
    full, half = load_file(embedded_model_dir() / "model.safetensors"), load_file(copy / "model.safetensors")
    assert set(half) <= set(full) and half
    assert all(torch.equal(half[k], full[k].to(torch.bfloat16)) for k in half)


def test_hook_reads_raw_residual_not_normed(engine):
    """The hook point is model.layers[L]'s raw output (norms in the thousands), which is
    hidden_states[L + 1]; the last hidden state is after the final norm and must not be used."""
    ids = torch.tensor([engine.prompt("The Golden Gate Bridge is in San Francisco.", 8).ids])
    seen = {}
    handle = engine.lm.layers[engine.layer].register_forward_hook(lambda m, a, o: seen.setdefault("h", o))
    try:
        with torch.inference_mode():
            out = engine.lm.model(input_ids=ids, output_hidden_states=True)
    finally:
        handle.remove()
    h = seen["h"] if torch.is_tensor(seen["h"]) else seen["h"][0]
    assert torch.equal(h, out.hidden_states[engine.layer + 1])
    assert h[0, 1:].float().norm(dim=-1).median() > 500


def test_reply_is_one_turn_and_reproducible(engine):
    a = engine.reply("What is the capital of France?", max_new_tokens=24)
    b = engine.reply("What is the capital of France?", max_new_tokens=24)
    assert a.text and a.text == b.text and a.token_ids == b.token_ids
    assert "User:" not in a.text and "Assistant:" not in a.text
    assert len(a.tokens) == len(a.token_ids) == a.readout.acts.shape[0]


def test_steering_changes_the_reply_and_zero_does_not(engine):
    plain = engine.reply("Tell me about your weekend.", max_new_tokens=16)
    zero = engine.reply("Tell me about your weekend.", steer={7: 0.0, 8: 0.0}, max_new_tokens=16)
    assert zero.token_ids == plain.token_ids
    steered = engine.reply("Tell me about your weekend.", steer={7: 40.0}, max_new_tokens=16)
    assert steered.token_ids != plain.token_ids


def test_stream_matches_reply(engine):
    reply = engine.reply("Write one sentence about dogs.", max_new_tokens=20, temperature=0.7, seed=3)
    stream = engine.stream("Write one sentence about dogs.", max_new_tokens=20, temperature=0.7, seed=3)
    assert "".join(stream) == reply.text


def test_encode_tokens_align(engine):
    text = "The Golden Gate Bridge is in San Francisco."
    enc = engine.encode(text)
    assert "".join(enc.tokens) == text and enc.tokens[1] == " Golden"
    assert enc.acts.shape == (len(enc.tokens), engine.dictionary.d_sae)


def test_second_load_uses_the_cache():
    """No GGUF dequantisation the second time: a safetensors copy is what loads (the bf16 one
    where the CPU computes in bf16 and the first load saved it)."""
    lm = load_model()
    folder = embedded_model_dir()
    assert lm.model.config.name_or_path in (str(folder), str(folder) + "-bf16")


def test_presets_show_steering_on_the_default_settings(engine):
    """Each shipped preset, sent as the app sends it: the steered reply shows its concept (or, for
    a suppression, avoids it) where the unsteered reply does not (does)."""
    from chat.measure import metrics
    from chat.ui import steer_state as st

    presets = st.presets_for(engine.catalog, engine.folder)
    assert len(presets) == st.MAX_PRESETS
    for p in presets:
        plain = engine.reply(p.message, max_new_tokens=96).text
        steered = engine.reply(p.message, steer=st.steer_dict(p.rows), mode=p.mode, max_new_tokens=96).text
        shows = [metrics.concept_rate([text], p.terms) > 0 for text in (plain, steered)]
        assert shows == ([True, False] if p.expect == "absent" else [False, True]), (p.name, plain, steered)


def test_first_three_messages_get_sensible_different_answers(engine):
    """A newcomer's first messages on the default settings: no loop, no repeat, Paris named."""
    from chat.steer.loops import bad_reply

    history, replies = [], []
    for message in ("Hi! What can you tell me about the ocean?", "What is the capital of France?",
                    "Can you write me a short poem about cats?"):
        history.append({"role": "user", "content": message})
        reply = engine.reply(history, max_new_tokens=96)
        assert bad_reply(reply.text) is None, reply.text
        history.append({"role": "assistant", "content": reply.text})
        replies.append(reply.text)
    assert len(set(replies)) == 3 and "Paris" in replies[1]


def test_shipped_concepts_answer_without_a_search_and_steer_the_reply(engine, monkeypatch):
    """The embedded dictionary ships its measured concepts (chat/measure/concept_bench.py --ship): they
    answer from the file, and coffee and anger (which issue 27 names, and which the previous
    dictionary had no writer for) and fire steer replies to prompts the search never saw toward the concept,
    which the unsteered replies do not mention."""
    from chat.steer.concept import ConceptError, mention_rate
    from chat.measure.concept_bench import CONCEPTS

    def no_search(*args, **kwargs):
        raise AssertionError("a shipped concept was searched again")

    monkeypatch.setattr("chat.engine.find", no_search)
    found = 0
    for word, _ in CONCEPTS:
        try:
            engine.concept(word)
            found += 1
        except ConceptError:
            pass
    assert found >= 38  # 42 of 50 found when shipped (docs/concepts.md)
    terms = dict(CONCEPTS)
    # Four prompts, not two: one reply more or less moved with the fast path's rounding alone.
    prompts = ("Tell me a story.", "Give me some advice.", "What should I cook tonight?", "Describe your morning.")
    for word in ("coffee", "anger", "fire"):
        steered = [engine.reply(p, steer=engine.concept(word)).text for p in prompts]
        plain = [engine.reply(p).text for p in prompts]
        assert mention_rate(steered, terms[word]) >= 0.5 > mention_rate(plain, terms[word]), (word, steered)
