"""The int8 fast path (chat/runtime/quant.py, chat/runtime/gemma_block.py, chat/runtime/fast.py) on a tiny Gemma 3 built
from a config: it computes what transformers computes, steering on it stays exact, and one flag
($STEERCHAT_FAST) chooses it."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from chat.engine import Engine
from chat.runtime.gemma_block import LeanGemma3Block
from chat.runtime.fast import cache_file, make_fast
from chat.runtime.models import LoadedModel, decoder_layers, load_model
from chat.runtime.quant import Int8Linear, dynamic_available, int8_rows
from features.catalog import Catalog, Feature
from features.dictionary import Dictionary

PROMPT = "Tell me about your weekend."


@pytest.fixture(scope="module")
def fast_lm(tiny_lm, tmp_path_factory) -> LoadedModel:
    model = copy.deepcopy(tiny_lm.model)
    layers = decoder_layers(model)
    with pytest.MonkeyPatch.context() as mp:  # its cache file, away from the user's
        mp.setenv("STEERCHAT_CACHE", str(tmp_path_factory.mktemp("fast-cache")))
        make_fast(model, layers, tiny_lm.tokenizer)
    return LoadedModel(model=model, tokenizer=tiny_lm.tokenizer, name="tiny-gemma3 int8", layers=layers,
                       weights="int8")


def engine_on(lm: LoadedModel) -> Engine:
    d = Dictionary.random(32, 64, activation="relu", seed=1, hook_layer=1)
    catalog = Catalog(64, {5: Feature(5, "golden gate bridge", 4.0, 0.01, curated=True)})
    return Engine(lm, d, catalog, 1, "test-random")


def test_int8_rows_round_trip():
    w = torch.randn(64, 48, generator=torch.Generator().manual_seed(0))
    q, scale = int8_rows(w)
    assert q.dtype == torch.int8 and q.abs().max() <= 127
    assert (q.float() * scale[:, None] - w).abs().max() <= scale.max() / 2 + 1e-6  # within half a step
    q0, s0 = int8_rows(torch.zeros(3, 4))
    assert not q0.any() and not s0.any()  # a zero row stays zero, no division by zero


@pytest.mark.parametrize("smoothed", [False, True])
def test_int8_linear_is_close_for_one_row_and_exact_for_several(smoothed):
    g = torch.Generator().manual_seed(1)
    lin = nn.Linear(48, 40, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(40, 48, generator=g) * 0.2)
    x = torch.randn(5, 48, generator=g)
    x[:, 3] *= 30  # an outlier channel, as residual streams have: what smoothing is for
    act_max = x.abs().amax(0) if smoothed else None
    q = Int8Linear(lin.weight, act_max=act_max)
    assert q.dynamic == (smoothed and dynamic_available())
    with torch.inference_mode():
        ref = lin(x)
        assert torch.equal(q(x), ref)  # several rows: the full-precision weight
        for row in range(5):
            one = q(x[row:row + 1])
            err = (one - ref[row:row + 1]).norm() / ref[row:row + 1].norm()
            assert err < 0.02, err


def test_several_rows_of_a_strided_view_never_copy_the_weight():
    """The head's input under logits_to_keep is a strided view of the hidden states. F.linear
    on such a 3-D view runs bmm on a transposed copy of the whole weight (2.5 s a call for
    Gemma's 262k-row head, which made every perplexity 20x slower on the fast path)."""
    from torch.profiler import ProfilerActivity, profile

    lin = nn.Linear(16, 64, bias=False)
    q = Int8Linear(lin.weight)
    hidden = torch.randn(1, 7, 16)
    view = hidden[:, -3:]  # (1, 3, 16), not contiguous as a 3-D tensor
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        out = q(view)
    assert out.shape == (1, 3, 64)
    assert torch.equal(out, q(view.contiguous()))
    assert not [e.key for e in prof.key_averages() if e.key in ("aten::bmm", "aten::expand")]


def test_fast_model_is_transformers_model_with_int8_inside(fast_lm, tiny_lm):
    assert all(isinstance(b, LeanGemma3Block) for b in fast_lm.layers)
    assert isinstance(fast_lm.model.get_output_embeddings(), Int8Linear)
    # A tied head keeps sharing the embedding's rows: pipeline code reads them from here.
    assert fast_lm.unembedding().data_ptr() == fast_lm.model.get_input_embeddings().weight.data_ptr()
    assert torch.equal(fast_lm.unembedding(torch.tensor([3, 7])), tiny_lm.unembedding(torch.tensor([3, 7])))
    assert fast_lm.layer_device(1) == torch.device("cpu")


def test_prompt_pass_matches_transformers(fast_lm, tiny_lm):
    """Several positions at once go through the full-precision weights: the lean block's
    arithmetic (fused projections, rotary, grouped attention, sliding window) is transformers'."""
    ids = torch.tensor([tiny_lm.tokenizer(PROMPT * 4).input_ids])  # longer than the sliding window (8)
    assert ids.shape[1] > 16
    with torch.inference_mode():
        ref = tiny_lm.model(input_ids=ids).logits
        got = fast_lm.model(input_ids=ids).logits
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


def test_decoding_follows_transformers(fast_lm, tiny_lm):
    """Token by token (int8 matmuls), past the sliding window, the logits stay close to the
    full-precision model's at every step, for one row and for a left-padded batch."""
    tok = tiny_lm.tokenizer
    ids = torch.tensor([tok(PROMPT).input_ids])
    kwargs = dict(max_new_tokens=20, do_sample=False, output_scores=True, return_dict_in_generate=True,
                  pad_token_id=tok.pad_token_id)
    with torch.inference_mode():
        ref = tiny_lm.model.generate(ids, **kwargs)
        # Teacher-forced: the fast model decodes the reference tokens, so every step compares.
        seq = ref.sequences
        logits = []
        out = fast_lm.model(input_ids=seq[:, :ids.shape[1]], use_cache=True)
        cache = out.cache if hasattr(out, "cache") else out.past_key_values
        logits.append(out.logits[:, -1])
        for t in range(ids.shape[1], seq.shape[1] - 1):
            out = fast_lm.model(input_ids=seq[:, t:t + 1], cache=cache, use_cache=True)
            logits.append(out.logits[:, -1])
    for step, (a, b) in enumerate(zip(logits, ref.scores)):
        err = (a - b).norm() / b.norm()
        assert err < 0.05, (step, err)
        assert a.argmax() == b.argmax() or (b.max() - b[0, a.argmax()]) < 0.05 * b.std()

    # A batch with padding goes through the same masks: row 1 matches its own unpadded run.
    short = tok("Hi there.").input_ids
    batch = torch.full((2, ids.shape[1]), tok.pad_token_id)
    batch[0] = ids[0]
    batch[1, -len(short):] = torch.tensor(short)
    mask = (batch != tok.pad_token_id).long()
    with torch.inference_mode():
        both = fast_lm.model.generate(batch, attention_mask=mask, max_new_tokens=6, do_sample=False,
                                      pad_token_id=tok.pad_token_id)
        alone = fast_lm.model.generate(torch.tensor([short]), max_new_tokens=6, do_sample=False,
                                       pad_token_id=tok.pad_token_id)
    assert both.shape[1] == batch.shape[1] + 6
    assert both[1, -6:].tolist() == alone[0, -6:].tolist()


def test_zero_strength_is_bit_exact_on_the_fast_path(fast_lm):
    engine = engine_on(fast_lm)
    plain = engine.reply(PROMPT, max_new_tokens=16)
    zero = engine.reply(PROMPT, steer={5: 0.0}, max_new_tokens=16)
    zero_clamp = engine.reply(PROMPT, steer={5: 0.0}, mode="clamp", max_new_tokens=16)
    assert plain.token_ids == zero.token_ids
    assert torch.equal(plain.readout.acts, zero.readout.acts)
    assert torch.equal(plain.readout.acts, zero_clamp.readout.acts) or plain.token_ids != zero_clamp.token_ids
    steered = engine.reply(PROMPT, steer={5: 40.0}, max_new_tokens=16)
    assert steered.token_ids != plain.token_ids  # and a real strength does change the reply


def test_readout_on_the_fast_path_reads_the_decoded_residual(fast_lm):
    """The readout of reply tokens is the dictionary's encoding of layer 1's output as the fast
    path computed it while decoding (single rows), not a full-precision recomputation."""
    engine = engine_on(fast_lm)
    reply = engine.reply(PROMPT, max_new_tokens=8)
    prompt = engine.prompt(PROMPT, 8)
    ids = torch.tensor([list(prompt.ids) + reply.token_ids])
    seen = []
    hook = fast_lm.layers[1].register_forward_hook(lambda m, a, o: seen.append(o[0, -1].clone()))
    try:
        with torch.inference_mode():
            out = fast_lm.model(input_ids=ids[:, :len(prompt.ids)], use_cache=True)
            for t in range(len(prompt.ids), ids.shape[1]):
                out = fast_lm.model(input_ids=ids[:, t:t + 1], cache=out.cache, use_cache=True)
    finally:
        hook.remove()
    decoded = torch.stack(seen[1:])  # (T, d): residuals of the reply tokens, one row at a time
    torch.testing.assert_close(engine.dictionary.encode(decoded).acts, reply.readout.acts, atol=1e-5, rtol=1e-4)


def test_one_flag_chooses_the_path(tiny_model_dir, monkeypatch):
    fast = load_model(str(tiny_model_dir))  # default on CPU: the fast path
    assert fast.weights == "int8" and isinstance(fast.layers[0], LeanGemma3Block)
    monkeypatch.setenv("STEERCHAT_FAST", "0")  # the one flag back to bf16
    full = load_model(str(tiny_model_dir))
    assert full.weights == "full"
    assert not any(isinstance(m, Int8Linear) for m in full.model.modules())
    assert not isinstance(full.layers[0], LeanGemma3Block)
    assert load_model(str(tiny_model_dir), fast=True).weights == "int8"  # the argument wins


def test_quantised_form_is_cached_and_reused(tiny_lm, monkeypatch, tmp_path):
    """The first load writes the int8 rows, scales and smoothing; the next reads them back (no
    calibration pass) and decodes identically. A damaged file is ignored and rewritten."""
    import chat.runtime.quant

    from chat.runtime import kernels

    kernels.ops()  # loaded (once a process) from the usual cache, not built again in this test's
    monkeypatch.setenv("STEERCHAT_CACHE", str(tmp_path / "cache"))

    def fresh():
        model = copy.deepcopy(tiny_lm.model)
        layers = decoder_layers(model)
        return model, layers

    model, layers = fresh()
    path = cache_file(model)
    assert not path.exists()  # a cache folder of this test's own
    make_fast(model, layers, tiny_lm.tokenizer)
    assert path.exists()
    ids = torch.tensor([tiny_lm.tokenizer(PROMPT).input_ids[:1]])
    with torch.inference_mode():
        first = model(input_ids=ids).logits

    calls = []
    measure = chat.runtime.quant.input_ranges
    monkeypatch.setattr(chat.runtime.quant, "input_ranges", lambda *a: calls.append(a) or {})
    again, layers2 = fresh()
    make_fast(again, layers2, tiny_lm.tokenizer)
    assert not calls  # read from the cache: no calibration
    with torch.inference_mode():
        assert torch.equal(again(input_ids=ids).logits, first)
    for name, lin in ((n, m) for n, m in again.named_modules() if isinstance(m, Int8Linear)):
        assert lin.dynamic == model.get_submodule(name).dynamic

    monkeypatch.setattr(chat.runtime.quant, "input_ranges", measure)
    path.write_bytes(b"not safetensors")
    third, layers3 = fresh()
    make_fast(third, layers3, tiny_lm.tokenizer)
    with torch.inference_mode():
        assert torch.equal(third(input_ids=ids).logits, first)
    assert path.stat().st_size > 100  # rewritten


def test_a_changed_weight_changes_the_cache_key(tiny_lm):
    model = copy.deepcopy(tiny_lm.model)
    before = cache_file(model)
    with torch.no_grad():
        model.get_decoder().layers[1].mlp.down_proj.weight[0, 0] += 1.0
    assert cache_file(model) != before


def test_head_recomputes_its_top_outputs_exactly(fast_lm, tiny_lm):
    """A decoding step's largest logits are the full-precision head's, so greedy choices match
    it whenever the winner is among them; the rest are int8 approximations."""
    head = fast_lm.model.get_output_embeddings()
    assert head.exact_top > 0
    x = torch.randn(1, 1, 32, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        got = head(x)[0, 0]
        ref = tiny_lm.model.get_output_embeddings()(x)[0, 0]
    top = ref.topk(8).indices
    assert torch.equal(got[top], ref[top])
    assert got.argmax() == ref.argmax()


def test_head_is_weight_only_where_the_compiled_ops_exist(tiny_lm, monkeypatch):
    """With chat/runtime/kernels.cpp built, the head reads int8 rows through int8_gemv (nothing to pack
    at load); without it, fbgemm's dynamic kernel on smoothed inputs. The two keep separate
    cache files, and each decodes close to the full head."""
    import chat.runtime.kernels

    if chat.runtime.kernels.ops() is None:
        pytest.skip("no C++ compiler: the head is dynamic, as tested below")
    ids = torch.tensor([tiny_lm.tokenizer(PROMPT).input_ids[:1]])  # one row: the int8 head
    with torch.inference_mode():
        want = tiny_lm.model(input_ids=ids).logits[:, -1]
    heads, files = {}, {}
    for mode in ("weight-only", "dynamic"):
        if mode == "dynamic":
            monkeypatch.setattr(chat.runtime.kernels, "ops", lambda: None)
        model = copy.deepcopy(tiny_lm.model)
        files[mode] = cache_file(model)
        make_fast(model, decoder_layers(model), tiny_lm.tokenizer)
        heads[mode] = head = model.get_output_embeddings()
        with torch.inference_mode():
            out = model(input_ids=ids).logits[:, -1]
        assert (out - want).abs().max() < 0.05 * want.abs().max()
        assert out.argmax() == want.argmax()
    assert not heads["weight-only"].dynamic and heads["weight-only"].kernels is not None
    assert heads["dynamic"].dynamic == dynamic_available() and heads["dynamic"].kernels is None
    assert files["weight-only"] != files["dynamic"]
