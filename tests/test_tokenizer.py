"""The lean tokenizer (chat/runtime/tokenizer.py) gives exactly the ids and text of `tokenizers`.

A small BPE in Gemma 3's configuration is trained here; the slow test in tests/test_bench.py
compares the embedded model's own tokenizer."""
from __future__ import annotations

import json
import random

import pytest

pytest.importorskip("tokenizers")
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers  # noqa: E402

from chat.runtime import tokenizer as lean  # noqa: E402

TEXT = """The cat sat on the mat. Dogs like bones; the dog ate a bone.
Coffee in the morning, tea at night. "Quotes", dashes — and ellipses…
  two  spaces, a\ttab, déjà vu, naïve café, 中文, emoji 😀.
<table><tr><td>cell</td></tr></table> and [multimodal] text.""" * 3

# Words from a few syllables: many merges compete, so their order matters.
_rng = random.Random(3)
WORDS = " ".join("".join(_rng.choice(["ba", "na", "an", "ab", "ra", "ar", "e", "n", "ss"]) for _ in range(_rng.randrange(1, 5)))
                 for _ in range(3000))
SAMPLES = [WORDS[i:i + 200] for i in range(0, 4000, 200)] + ["Hi", " ", "  two  spaces  ", "the cat sat on the mat", "<eos> typed <start_of_turn>user\n",
           "\n" * 9 + "x" + "\n" * 2, "\t\t x\t", "[multimodal] [multi] [multimodal", "<table><td>1</td>",
           "<a\nb>", "<x[multimodal]y>", "emoji 😀🎉 and 中文 and e\u0301 and \u200b", "Ünïcödé — “quotes”",
           "<unused0><unused7>", "<bos>", "a" * 300, "x < y > z", "\r\n\r\n", "\x00\x01\x7f", "zebra quokka"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tokenizer.json in Gemma 3's form: BPE with byte fallback over "▁"-joined text, added
    tags, newline and tab runs and a literal."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.pre_tokenizer = pre_tokenizers.Split(" ", "merged_with_previous")
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<unused0>", "<unused7>"]
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=specials, show_progress=False,
                                  initial_alphabet=[f"<0x{b:02X}>" for b in range(256)])
    tok.train_from_iterator([TEXT, WORDS], trainer)
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", tok.token_to_id("<bos>"))])
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    for b in range(256):  # byte tokens belong to the model's vocabulary, as in Gemma's
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    plain = ["\n" * n for n in range(1, 5)] + ["\t" * n for n in range(1, 3)] + ["<table>", "</td>", "<td>", "[multimodal]"]
    for content in plain:
        vocab.setdefault(content, len(vocab))
    for a in spec["added_tokens"]:
        a.update(normalized=False)
    spec["added_tokens"] += [{"id": vocab[c], "content": c, "single_word": False, "lstrip": False, "rstrip": False,
                              "normalized": False, "special": False} for c in plain]
    Tokenizer.from_str(json.dumps(spec))  # still a valid tokenizer
    out = tmp_path_factory.mktemp("gemma-like")
    (out / "tokenizer.json").write_text(json.dumps(spec))
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>", "pad_token": "<pad>", "mask_token": "<mask>"}))
    return out


@pytest.fixture(scope="module")
def both(folder, tmp_path_factory):
    from chat.runtime.models import _full_tokenizer

    mp = pytest.MonkeyPatch()
    mp.setenv("STEERCHAT_HOME", str(tmp_path_factory.mktemp("home")))
    full = _full_tokenizer(folder)
    fast = lean.load(folder, lambda: full)
    yield fast, full
    mp.undo()


def test_encode_matches_tokenizers(both):
    fast, full = both
    assert isinstance(fast, lean.LeanTokenizer)
    for text in SAMPLES + TEXT.split("\n"):
        for add in (False, True):
            for split in (False, True):
                assert fast.encode(text, add_special_tokens=add, split_special_tokens=split) == \
                    full.encode(text, add_special_tokens=add, split_special_tokens=split), (text, add, split)
    assert fast("the cat").input_ids == full("the cat").input_ids
    assert fast(["a", "b c"], add_special_tokens=False)["input_ids"] == full(["a", "b c"], add_special_tokens=False)["input_ids"]


def test_decode_matches_tokenizers(both):
    """Random ids, byte tokens (valid and broken UTF-8) and special tokens, kept and skipped."""
    fast, full = both
    rng = random.Random(0)
    bytes_ = [fast.encode("\u00e9", add_special_tokens=False), fast.encode("\u4e2d", add_special_tokens=False)]
    for _ in range(1500):
        ids = [rng.randrange(len(full) + 3) for _ in range(rng.randrange(1, 10))]
        ids += rng.choice(bytes_)[: rng.randrange(1, 4)]
        rng.shuffle(ids)
        for skip in (False, True):
            assert fast.decode(ids, skip_special_tokens=skip) == full.decode(ids, skip_special_tokens=skip), ids
    assert fast.batch_decode([[5], [6, 7]]) == full.batch_decode([[5], [6, 7]])


def test_same_special_tokens_and_the_rest_from_the_full_tokenizer(both):
    fast, full = both
    assert (fast.bos_token_id, fast.eos_token_id, fast.pad_token_id, fast.unk_token_id) == \
        (full.bos_token_id, full.eos_token_id, full.pad_token_id, full.unk_token_id)
    assert sorted(fast.all_special_ids) == sorted(full.all_special_ids) and len(fast) == len(full)
    assert fast.added_tokens_decoder == full.added_tokens_decoder  # not its own: asked of the full one


def test_arrays_are_cached_and_long_text_goes_to_tokenizers(folder, both, monkeypatch):
    fast, full = both
    calls = []
    again = lean.load(folder, lambda: calls.append(1) or full)
    assert again.encode("the cat sat") == fast.encode("the cat sat") and calls == []  # read from the cache
    long = "the cat sat on the mat. " * (lean.LONG_TEXT // 20)
    assert again.encode(long) == full.encode(long) and calls == [1]


def test_other_tokenizers_are_not_taken(tmp_path, monkeypatch):
    """A byte-level BPE (GPT-2's kind) is left to transformers: load says None."""
    monkeypatch.setenv("STEERCHAT_HOME", str(tmp_path / "home"))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    tok.train_from_iterator([TEXT], trainers.BpeTrainer(vocab_size=300, show_progress=False))
    tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text("{}")
    assert lean.load(tmp_path, lambda: None) is None
