"""Tiny models and dictionaries built in code: no downloads, seconds to run."""
from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest
import torch

from chat.runtime.models import LoadedModel, decoder_layers

CORPUS = [
    "The Golden Gate Bridge is in San Francisco. Bridges cross rivers and bays.",
    "User: Tell me about your weekend.\nAssistant: I went hiking with my dog.",
    "def add(a, b):\n    return a + b\n",
    "Dogs and cats are animals. The weather was cold and it rained all day.",
    "In the beginning God created the heaven and the earth.",
    "Numbers like 1, 2, 3 and dates like 14 March 2022 appear in text.",
]
SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]  # ids 0..3, as in Gemma


def make_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>")


def make_model(vocab_size: int, seed: int = 0):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    cfg = Gemma3TextConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=8,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        max_position_embeddings=512, pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )
    torch.manual_seed(seed)
    model = Gemma3ForCausalLM(cfg).eval()
    with torch.no_grad():  # larger weights than the default init, so the text varies more
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.2)
    model.generation_config.eos_token_id = 1
    return model


@pytest.fixture(scope="session")
def tiny_lm() -> LoadedModel:
    tok = make_tokenizer()
    model = make_model(len(tok))
    return LoadedModel(model=model, tokenizer=tok, name="tiny-gemma3", layers=decoder_layers(model))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_lm):
    path = tmp_path_factory.mktemp("tiny-model")
    tiny_lm.model.save_pretrained(path)
    tiny_lm.tokenizer.save_pretrained(path)
    return path


@pytest.fixture(autouse=True)
def _user_dirs(tmp_path, monkeypatch):
    """User files (renames, model cache) go to a temporary folder in every test."""
    monkeypatch.setenv("STEERCHAT_HOME", str(tmp_path / "home"))
    # No Neuronpedia downloads or cached exports: tests/test_neuronpedia.py serves its own.
    monkeypatch.setenv("STEERCHAT_NEURONPEDIA_URL", "off")
