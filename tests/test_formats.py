"""features/formats.py: each format is written in its real on-disk layout (folder names, key
names, dtypes) from known weights, loaded back, and compared by encode/decode."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from features.dictionary import Dictionary, DictionaryError
from features.formats import load, load_folder, save

D_IN, D_SAE = 8, 16


def make(activation="relu", k=None, apply_b_dec=True, input_scale=1.0, seed=0) -> Dictionary:
    """Untied random weights with nonzero biases, so that every term of encode/decode matters."""
    g = torch.Generator().manual_seed(seed)
    return Dictionary(
        W_enc=torch.randn(D_IN, D_SAE, generator=g),  # (d_in, d_sae)
        b_enc=torch.randn(D_SAE, generator=g) * 0.1,
        W_dec=torch.randn(D_SAE, D_IN, generator=g),  # (d_sae, d_in)
        b_dec=torch.randn(D_IN, generator=g),
        activation=activation,
        threshold=torch.rand(D_SAE, generator=g) * 0.5 if activation == "jumprelu" else None,
        k=k,
        apply_b_dec_to_input=apply_b_dec,
        input_scale=input_scale,
    )


def assert_same(a: Dictionary, b: Dictionary, atol: float = 1e-5) -> None:
    x = torch.randn(6, D_IN, generator=torch.Generator().manual_seed(1)) * 2  # (T, d_in)
    ea, eb = a.encode(x), b.encode(x)
    assert (ea.acts != 0).any(), "test weights should switch some features on"
    assert torch.allclose(ea.pre_acts, eb.pre_acts, atol=atol)
    assert torch.allclose(ea.acts, eb.acts, atol=atol)
    assert torch.allclose(a.decode(ea.acts), b.decode(ea.acts), atol=atol)


def write_saelens(folder, d: Dictionary, cfg: dict, dtype=torch.float32):
    folder.mkdir(parents=True, exist_ok=True)
    t = {"W_enc": d.W_enc, "W_dec": d.W_dec, "b_enc": d.b_enc, "b_dec": d.b_dec}
    if d.threshold is not None:
        t["threshold"] = d.threshold
    save_file({k: v.to(dtype).contiguous() for k, v in t.items()}, folder / "sae_weights.safetensors")
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder


def v6_cfg(architecture="standard", hook="blocks.9.hook_resid_post", **extra) -> dict:
    return {"architecture": architecture, "d_in": D_IN, "d_sae": D_SAE, "dtype": "float32",
            "apply_b_dec_to_input": True, "normalize_activations": "none",
            "metadata": {"hook_name": hook, "model_name": "gpt2"}, **extra}


# ---------------------------------------------------------------- SAELens


@pytest.mark.parametrize(
    "architecture, activation, extra",
    [("standard", "relu", {}), ("jumprelu", "jumprelu", {}), ("topk", "topk", {"k": 3}),
     ("topk", "topk", {"activation_fn_kwargs": {"k": 3}})],
)
def test_saelens_v6(tmp_path, architecture, activation, extra):
    src = make(activation, k=3 if activation == "topk" else None)
    folder = write_saelens(tmp_path / "blocks.9.hook_resid_post", src, v6_cfg(architecture, **extra))
    d, where = load(folder)
    assert where == folder
    assert (d.activation, d.k, d.hook_layer, d.apply_b_dec_to_input) == (src.activation, src.k, 9, True)
    assert d.cfg["architecture"] == architecture
    assert_same(d, src)


def test_saelens_bfloat16_weights_load_as_float32(tmp_path):
    src = make()
    d = load_folder(write_saelens(tmp_path / "sae", src, v6_cfg(), dtype=torch.bfloat16))
    assert d.W_enc.dtype == torch.float32
    assert torch.allclose(d.W_enc, src.W_enc, atol=0.05)


def test_saelens_batchtopk_with_threshold_is_jumprelu_else_topk(tmp_path):
    src = make("jumprelu")
    d = load_folder(write_saelens(tmp_path / "a", src, v6_cfg("batchtopk", k=4)))
    assert d.activation == "jumprelu"
    assert_same(d, src)
    src = make("topk", k=4)
    d = load_folder(write_saelens(tmp_path / "b", src, v6_cfg("batchtopk", k=4.0)))
    assert (d.activation, d.k) == ("topk", 4)
    assert_same(d, src)


def test_saelens_pre_6_0_cfg(tmp_path):
    src = make("topk", k=3)
    cfg = {"d_in": D_IN, "d_sae": D_SAE, "hook_point": "blocks.4.hook_resid_pre", "hook_point_layer": 4,
           "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 3}, "normalize_activations": False}
    d = load_folder(write_saelens(tmp_path / "old", src, cfg))
    # resid_pre of block 4 is the output of block 3
    assert (d.activation, d.k, d.hook_layer, d.apply_b_dec_to_input) == ("topk", 3, 3, True)
    assert_same(d, src)


def test_saelens_pre_6_0_top_level_hook_name(tmp_path):
    cfg = {"d_in": D_IN, "d_sae": D_SAE, "hook_name": "blocks.2.hook_resid_post", "activation_fn_str": "relu"}
    d = load_folder(write_saelens(tmp_path / "old", make(), cfg))
    assert (d.activation, d.hook_layer) == ("relu", 2)


def test_saelens_scaling_factor_goes_into_input_scale(tmp_path):
    src = make(input_scale=2.5)
    raw = make()  # same weights, without the scale
    cfg = v6_cfg(normalize_activations="expected_average_only_in", norm_scaling_factor=2.5)
    d = load_folder(write_saelens(tmp_path / "s", raw, cfg))
    assert d.input_scale == 2.5
    assert_same(d, src)


@pytest.mark.parametrize("norm", ["expected_average_only_in", "layer_norm", "constant_norm_rescale"])
def test_saelens_normalisation_we_cannot_apply_refused(tmp_path, norm):
    extra = {"norm_scaling_factor": 2.0} if norm != "expected_average_only_in" else {}
    with pytest.raises(DictionaryError, match=norm):
        load_folder(write_saelens(tmp_path / "n", make(), v6_cfg(normalize_activations=norm, **extra)))


@pytest.mark.parametrize("hook", ["blocks.9.hook_mlp_out", "blocks.3.attn.hook_z", "blocks.0.hook_resid_pre"])
def test_non_residual_hook_refused(tmp_path, hook):
    with pytest.raises(DictionaryError, match="residual-stream"):
        load_folder(write_saelens(tmp_path / "h", make(), v6_cfg(hook=hook)))


def test_unknown_architecture_refused(tmp_path):
    with pytest.raises(DictionaryError, match="'gated'"):
        load_folder(write_saelens(tmp_path / "g", make(), v6_cfg("gated")))


# ---------------------------------------------------------------- Gemma Scope 1 and 2


def write_npz(folder, d: Dictionary):
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {k: getattr(d, k).numpy().astype(np.float32) for k in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")}
    np.savez(folder / "params.npz", **arrays)
    return folder


def test_gemma_scope_1(tmp_path):
    src = make("jumprelu", apply_b_dec=False)
    folder = write_npz(tmp_path / "layer_20" / "width_16k" / "average_l0_71", src)
    d, where = load(folder)
    assert (where, d.activation, d.hook_layer, d.apply_b_dec_to_input) == (folder, "jumprelu", 20, False)
    assert_same(d, src)
    d, where = load(folder / "params.npz")  # a single file works too
    assert where == folder
    assert_same(d, src)


def test_gemma_scope_1_mlp_repo_refused(tmp_path):
    folder = tmp_path / "models--google--gemma-scope-2b-pt-mlp" / "snapshots" / "abc" / "layer_3" / "width_16k" / "x"
    with pytest.raises(DictionaryError, match="mlp"):
        load_folder(write_npz(folder, make("jumprelu")))


def test_gemma_scope_1_corrupt_npz(tmp_path):
    folder = write_npz(tmp_path / "layer_1", make("jumprelu"))
    data = (folder / "params.npz").read_bytes()
    (folder / "params.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DictionaryError, match="params.npz"):
        load_folder(folder)


def write_gemma_scope_2(folder, d: Dictionary, config: dict | None, extra: dict | None = None):
    folder.mkdir(parents=True, exist_ok=True)
    t = {"w_enc": d.W_enc, "w_dec": d.W_dec, "b_enc": d.b_enc, "b_dec": d.b_dec, "threshold": d.threshold}
    save_file({k: v.contiguous() for k, v in {**t, **(extra or {})}.items()}, folder / "params.safetensors")
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    return folder


GS2_CONFIG = {"hf_hook_point_in": "model.layers.12.output", "hf_hook_point_out": "model.layers.12.output",
              "width": D_SAE, "model_name": "google/gemma-3-270m-it", "architecture": "jump_relu",
              "l0": 60, "affine_connection": False, "type": "sae"}


def test_gemma_scope_2(tmp_path):
    src = make("jumprelu", apply_b_dec=False)
    folder = write_gemma_scope_2(tmp_path / "resid_post" / "layer_12_width_16k_l0_medium", src, GS2_CONFIG)
    d = load_folder(folder)
    assert (d.activation, d.hook_layer, d.apply_b_dec_to_input) == ("jumprelu", 12, False)
    assert d.cfg["model_name"] == "google/gemma-3-270m-it"
    assert_same(d, src)


def test_gemma_scope_2_without_config_reads_the_folder_name(tmp_path):
    folder = write_gemma_scope_2(tmp_path / "resid_post_all" / "layer_7_width_16k_l0_small", make("jumprelu"), None)
    assert load_folder(folder).hook_layer == 7


def test_gemma_scope_2_transcoder_and_attention_refused(tmp_path):
    cfg = {**GS2_CONFIG, "type": "transcoder", "affine_connection": True,
           "hf_hook_point_in": "model.layers.5.pre_feedforward_layernorm.output"}
    folder = write_gemma_scope_2(tmp_path / "transcoder" / "layer_5", make("jumprelu"), cfg,
                                 {"affine_skip_connection": torch.zeros(D_IN, D_IN)})
    with pytest.raises(DictionaryError, match="transcoder"):
        load_folder(folder)
    cfg = {**GS2_CONFIG, "hf_hook_point_in": "model.layers.11.self_attn.o_proj.input"}
    folder = write_gemma_scope_2(tmp_path / "attn_out" / "layer_11", make("jumprelu"), cfg)
    with pytest.raises(DictionaryError, match="residual-stream"):
        load_folder(folder)


# ---------------------------------------------------------------- sparsify


def write_sparsify(folder, d: Dictionary, **cfg):
    folder.mkdir(parents=True, exist_ok=True)
    t = {"encoder.weight": d.W_enc.T.contiguous(), "encoder.bias": d.b_enc, "W_dec": d.W_dec, "b_dec": d.b_dec}
    save_file(t, folder / "sae.safetensors")
    base = {"expansion_factor": 2, "normalize_decoder": True, "num_latents": D_SAE, "k": d.k,
            "multi_topk": False, "signed": False, "d_in": D_IN}
    (folder / "cfg.json").write_text(json.dumps({**base, **cfg}))
    return folder


@pytest.mark.parametrize("name", ["layers.6", "layer_6"])
def test_sparsify(tmp_path, name):
    src = make("topk", k=4)
    d = load_folder(write_sparsify(tmp_path / name, src))
    assert (d.activation, d.k, d.hook_layer, d.apply_b_dec_to_input) == ("topk", 4, 6, True)
    assert_same(d, src)


def test_sparsify_transcoder_refused(tmp_path):
    with pytest.raises(DictionaryError, match="transcoder"):
        load_folder(write_sparsify(tmp_path / "layers.6", make("topk", k=4), transcode=True))


# ---------------------------------------------------------------- pickles


def write_goodfire(tmp_path, d: Dictionary):
    path = tmp_path / "Llama-3.1-8B-Instruct-SAE-l19.pth"
    torch.save({"encoder_linear.weight": d.W_enc.T.contiguous(), "encoder_linear.bias": d.b_enc,
                "decoder_linear.weight": d.W_dec.T.contiguous(), "decoder_linear.bias": d.b_dec}, path)
    return path


def test_pickle_refused_without_opt_in(tmp_path):
    write_goodfire(tmp_path, make())
    with pytest.raises(DictionaryError, match=r"allow_pickle=True.*--allow-pickle"):
        load(tmp_path)


def test_goodfire_with_opt_in(tmp_path):
    src = make(apply_b_dec=False)
    d, where = load(write_goodfire(tmp_path, src), allow_pickle=True)
    assert (where, d.activation, d.hook_layer, d.apply_b_dec_to_input) == (tmp_path, "relu", 19, False)
    assert_same(d, src)


@pytest.mark.parametrize("threshold, activation", [(-1.0, "topk"), (0.2, "jumprelu")])
def test_dictionary_learning_batchtopk(tmp_path, threshold, activation):
    src = make("topk", k=4)
    folder = tmp_path / "resid_post_layer_15" / "trainer_1"
    folder.mkdir(parents=True)
    torch.save({"encoder.weight": src.W_enc.T.contiguous(), "encoder.bias": src.b_enc,
                "decoder.weight": src.W_dec.T.contiguous(), "b_dec": src.b_dec,
                "k": torch.tensor(4), "threshold": torch.tensor(threshold)}, folder / "ae.pt")
    (folder / "config.json").write_text(json.dumps({"trainer": {"layer": 15, "k": 4, "dict_class": "BatchTopKSAE"}}))
    d = load_folder(folder, allow_pickle=True)
    assert (d.activation, d.hook_layer, d.apply_b_dec_to_input) == (activation, 15, True)
    if activation == "topk":
        assert d.k == 4
        assert_same(d, src)
    else:
        expected = Dictionary(src.W_enc, src.b_enc, src.W_dec, src.b_dec, "jumprelu",
                              threshold=torch.full((D_SAE,), 0.2))
        assert_same(d, expected)


class _Payload:
    """Unpickling this would write a marker file: proves no code runs, with or without opt-in."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_never_runs_code(tmp_path):
    marker = tmp_path / "pwned"
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"encoder.weight": _Payload(marker)}, f, protocol=2)
    for allow in (False, True):
        with pytest.raises(DictionaryError, match="evil.pt"):
            load_folder(tmp_path, allow_pickle=allow)
    assert not marker.exists()


# ---------------------------------------------------------------- save


@pytest.mark.parametrize("activation, k", [("relu", None), ("jumprelu", None), ("topk", 3)])
def test_save_load_round_trip(tmp_path, activation, k):
    src = make(activation, k=k)
    src.hook_layer = 5
    folder = save(src, tmp_path / "fp32", dtype=torch.float32, model_name="gpt2", extra_cfg={"note": "hi"})
    d = load_folder(folder)
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
        assert torch.equal(getattr(d, name), getattr(src, name))
    assert (d.activation, d.k, d.hook_layer) == (activation, k, 5)
    cfg = json.loads((folder / "cfg.json").read_text())
    assert cfg["architecture"] == {"relu": "standard"}.get(activation, activation)
    assert (cfg["dtype"], cfg["normalize_activations"], cfg["note"]) == ("float32", "none", "hi")
    assert cfg["metadata"]["hook_name"] == "blocks.5.hook_resid_post"
    assert cfg["metadata"]["model_name"] == "gpt2"

    d16 = load_folder(save(src, tmp_path / "fp16"))
    assert json.loads((tmp_path / "fp16" / "cfg.json").read_text())["dtype"] == "float16"
    assert torch.allclose(d16.W_enc, src.W_enc, atol=1e-2)
    assert_same(d16, src, atol=5e-2)


def test_save_folds_input_scale(tmp_path):
    src = make("jumprelu", input_scale=3.0)
    d = load_folder(save(src, tmp_path / "s", dtype=torch.float32))
    assert d.input_scale == 1.0
    assert not torch.allclose(d.W_enc, src.W_enc)
    assert_same(d, src)


# ---------------------------------------------------------------- malformed input


def test_truncated_safetensors(tmp_path):
    folder = write_saelens(tmp_path / "t", make(), v6_cfg())
    data = (folder / "sae_weights.safetensors").read_bytes()
    (folder / "sae_weights.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(DictionaryError, match="sae_weights.safetensors"):
        load_folder(folder)


def test_missing_key_is_named(tmp_path):
    folder = write_saelens(tmp_path / "m", make("jumprelu"), v6_cfg("jumprelu"))
    save_file({"W_enc": torch.zeros(D_IN, D_SAE), "W_dec": torch.zeros(D_SAE, D_IN), "b_dec": torch.zeros(D_IN)},
              folder / "sae_weights.safetensors")
    with pytest.raises(DictionaryError, match=r"missing b_enc, threshold"):
        load_folder(folder)


def test_missing_cfg_is_named(tmp_path):
    folder = write_saelens(tmp_path / "c", make(), v6_cfg())
    (folder / "cfg.json").unlink()
    with pytest.raises(DictionaryError, match="no cfg.json"):
        load_folder(folder)


def test_wrong_shape(tmp_path):
    src = make()
    src.b_dec = torch.zeros(D_IN + 1)  # bypasses validation; the loader must catch it
    with pytest.raises(DictionaryError, match=r"b_dec has shape \(9,\)"):
        load_folder(write_saelens(tmp_path / "w", src, v6_cfg()))


def test_nan_weights(tmp_path):
    src = make()
    src.W_dec[0, 0] = float("nan")
    with pytest.raises(DictionaryError, match="W_dec contains NaN"):
        load_folder(write_saelens(tmp_path / "n", src, v6_cfg()))


def test_empty_folder_lists_expected_files(tmp_path):
    with pytest.raises(DictionaryError, match="sae_weights.safetensors.*params.npz"):
        load_folder(tmp_path)


def test_missing_local_path(tmp_path):
    with pytest.raises(DictionaryError, match="no dictionary at"):
        load(tmp_path / "nope")


# ---------------------------------------------------------------- hub


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty Hugging Face cache in tmp_path, offline. huggingface_hub reads these variables when
    it is imported, so its constants are patched as well as the environment."""
    import huggingface_hub.constants as constants

    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def test_hub_ref_served_from_cache_by_snapshot_download(offline_hub, monkeypatch):
    import huggingface_hub

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = offline_hub / "models--owner--repo"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    src = make("jumprelu", apply_b_dec=False)
    sub = write_npz(repo / "snapshots" / commit / "layer_3" / "width_16" / "average_l0_5", src)

    calls = []
    real = huggingface_hub.snapshot_download

    def spy(**kwargs):
        calls.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", spy)
    d, where = load("owner/repo/layer_3/width_16/average_l0_5")
    assert calls and calls[0]["repo_id"] == "owner/repo"
    assert "layer_3/width_16/average_l0_5/*" in calls[0]["allow_patterns"]
    assert where == sub
    assert d.hook_layer == 3
    assert_same(d, src)

    with pytest.raises(DictionaryError, match="has no 'layer_4'"):
        load("owner/repo/layer_4")

    # A single file at the repo root, as Goodfire publishes them.
    write_goodfire(repo / "snapshots" / commit, src)
    d, where = load("owner/repo/Llama-3.1-8B-Instruct-SAE-l19.pth", allow_pickle=True)
    assert (where, d.hook_layer) == (repo / "snapshots" / commit, 19)
    assert "Llama-3.1-8B-Instruct-SAE-l19.pth" in calls[-1]["allow_patterns"]


def test_unresolvable_hub_ref_is_one_line(offline_hub):
    with pytest.raises(DictionaryError) as err:
        load("nobody/no-such-repo/layer_1")
    message = str(err.value)
    assert "nobody/no-such-repo/layer_1" in message and "\n" not in message
