"""Model loading from a local folder and from the hub's cache layout (offline), and the engine's
checks that model, dictionary and layer fit together."""
from __future__ import annotations

import shutil

import pytest
import torch

import chat.runtime.models as models
from chat.engine import Engine, load
from chat.errors import ModelLoadError
from chat.runtime.models import load_model, pick_dtype
from features import formats
from features.catalog import Catalog
from features.dictionary import Dictionary, DictionaryError


def test_local_folder(tiny_model_dir, tiny_lm, monkeypatch):
    monkeypatch.setenv("STEERCHAT_DTYPE", "float32")
    lm = load_model(str(tiny_model_dir), fast=False)  # the model exactly as transformers runs it
    fast = load_model(str(tiny_model_dir))  # the int8 fast path, the CPU default (tests/test_fast.py)
    assert lm.n_layers == 3 and lm.d_model == 32 and lm.dtype == torch.float32
    ids = torch.tensor([[2, 5, 6, 7]])
    with torch.inference_mode():
        assert torch.equal(lm.model(input_ids=ids).logits, tiny_lm.model(input_ids=ids).logits)
        torch.testing.assert_close(fast.model(input_ids=ids).logits, lm.model(input_ids=ids).logits,
                                   atol=1e-4, rtol=1e-4)


def test_hub_id_from_cache_layout(tiny_model_dir, tmp_path, monkeypatch):
    """A hub id resolves through huggingface_hub's cache, in the layout the hub writes."""
    import huggingface_hub.constants as hub_constants

    cache = tmp_path / "hub"
    repo = cache / "models--tester--tiny-gemma3"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny_model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    lm = load_model("tester/tiny-gemma3")
    assert lm.name == "tester/tiny-gemma3" and lm.n_layers == 3
    with pytest.raises(ModelLoadError, match="cannot load model 'tester/missing'"):
        load_model("tester/missing")


def test_dtype_choice(monkeypatch):
    monkeypatch.setenv("STEERCHAT_DTYPE", "float16")
    assert pick_dtype(torch.device("cpu")) == torch.float16
    monkeypatch.setenv("STEERCHAT_DTYPE", "nonsense")
    with pytest.raises(ModelLoadError):
        pick_dtype(torch.device("cpu"))
    monkeypatch.delenv("STEERCHAT_DTYPE")
    assert pick_dtype(torch.device("cuda")) == torch.bfloat16
    monkeypatch.setattr(models, "_cpu_has_fast_bf16", lambda: False)
    assert pick_dtype(torch.device("cpu")) == torch.float32


def test_engine_checks_fit(tiny_lm, tmp_path):
    with pytest.raises(DictionaryError, match="d_model 32"):
        Engine(tiny_lm, Dictionary.random(48, 16, hook_layer=1), Catalog(16), 1, "wrong-size")
    with pytest.raises(DictionaryError, match="layer 7 does not exist"):
        Engine(tiny_lm, Dictionary.random(32, 16), Catalog(16), 7, "x")
    no_layer = Dictionary.random(32, 16)
    formats.save(no_layer, tmp_path / "d")
    cfg = (tmp_path / "d" / "cfg.json")
    import json
    data = json.loads(cfg.read_text())
    data["metadata"].pop("hook_name", None)
    cfg.write_text(json.dumps(data))
    with pytest.raises(DictionaryError, match="which layer"):
        load(dictionary=tmp_path / "d", lm=tiny_lm)
    engine = load(dictionary=tmp_path / "d", layer=2, lm=tiny_lm)
    assert engine.layer == 2


def test_missing_stats_are_calibrated(tiny_lm, tmp_path):
    """A dictionary without features.json still gets a strength unit per feature."""
    formats.save(Dictionary.random(32, 40, activation="relu", seed=2, hook_layer=1), tmp_path / "d")
    engine = load(dictionary=tmp_path / "d", lm=tiny_lm)
    assert engine.max_acts.shape == (40,) and bool((engine.max_acts > 0).all())
    fired = [i for i in range(40) if engine.catalog[i].max_activation is not None]
    assert fired and engine.max_acts[fired[0]] == pytest.approx(engine.catalog[fired[0]].max_activation)


def test_placeholder_is_labelled(tiny_lm):
    engine = load(lm=tiny_lm)
    assert engine.placeholder and "PLACEHOLDER" in engine.status()
    assert engine.layer == tiny_lm.n_layers // 2
    assert "untrained" in engine.catalog.label(0)


def test_conversion_marks_gemma_image_markers_special(tmp_path):
    """The GGUF types Gemma 3's image markers like "<table>"; the converted tokenizer flags them
    special, as the official one does, so replies neither show nor sample them. Once."""
    from tests.conftest import make_tokenizer
    from transformers import PreTrainedTokenizerFast

    from chat.runtime.models import IMAGE_MARKERS, _mark_special, special_added_ids

    tok = make_tokenizer()
    tok.add_tokens(list(IMAGE_MARKERS) + ["<table>"])  # plain added tokens, as the GGUF has them
    tok.save_pretrained(tmp_path)
    _mark_special(tmp_path)
    done = (tmp_path / "tokenizer.json").stat().st_mtime_ns
    _mark_special(tmp_path)
    assert (tmp_path / "tokenizer.json").stat().st_mtime_ns == done
    marked = PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    image, table = marked.convert_tokens_to_ids([IMAGE_MARKERS[0], "<table>"])
    assert image in special_added_ids(marked) and table not in special_added_ids(marked)
    assert marked.decode(marked.encode("cats<start_of_image><table>"), skip_special_tokens=True) == "cats<table>"
