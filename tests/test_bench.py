"""`python -m chat bench` runs end to end (tiny model: the figures mean nothing, the plumbing
does); performance targets live in the benchmark, never in tests. And the cold-start shortcut
for the embedded tokenizer gives exactly AutoTokenizer's tokenization (slow: real model)."""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from chat.measure.bench import Settings, run, table
from chat.cli import main
from features import formats
from features.dictionary import Dictionary

TINY = Settings(tokens=4, repeats=1, harvest_tokens=64, train_steps=1, clamp=True, cold_starts=0)


@pytest.fixture(scope="module")
def dictionary_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("dictionary")
    formats.save(Dictionary.random(32, 48, activation="topk", k=6, seed=4, hook_layer=1), folder)
    return folder


def test_bench_measures_everything(tiny_model_dir, dictionary_dir):
    res = run(TINY, model=str(tiny_model_dir), dictionary=str(dictionary_dir))
    measures = [r["measure"] for r in res.rows]
    fast, full = res.details["paths"]  # the fast path, and the model as transformers runs it (bf16 or float32)
    assert fast == "int8" and full in ("bfloat16", "float32")
    for path in res.details["paths"]:
        for what in ("readout only", "3 features add + readout", "3 features clamp + readout"):
            assert f"decode {path}, {what}" in measures
    assert f"decode, int8 vs {full} (add + readout)" in measures
    assert f"perplexity on held-out text, decoded (int8 / {full})" in measures
    assert f"dictionary FVU on those residuals (int8 / {full})" in measures
    for m in ("decode, chat defaults vs plain greedy (steered + readout)", "prefill, 512-token prompt",
              "time to first token, 512-token prompt"):
        assert m in measures
    assert any(m.startswith("harvest") for m in measures) and any(m.startswith("train") for m in measures)
    for r in res.rows:
        values = [v for v in (r["plain"], r["steered"], r["ratio"]) if v is not None]
        assert values and all(math.isfinite(v) and v > 0 for v in values), r
    fidelity = res.details["fidelity"]
    assert fidelity["int8"]["tokens"] == fidelity[full]["tokens"] > 100
    assert len(res.details["decode_int8"]["features"]) == 3
    assert all(len(runs) == 1 for runs in res.details["decode_runs"].values())
    assert "| decode int8, 3 features add + readout | tok/s |" in table(res)


def test_bench_cli_json(tiny_model_dir, dictionary_dir, monkeypatch, capsys):
    import chat.measure.bench

    monkeypatch.setattr(chat.measure.bench.Settings, "quick", classmethod(lambda cls: TINY))
    assert main(["bench", "--quick", "--json", "--model", str(tiny_model_dir), "--dictionary", str(dictionary_dir)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"rows", "machine", "settings", "details"} <= set(data) and data["settings"]["tokens"] == 4
    assert main(["bench", "--tokens", "0"]) == 2
    assert "--tokens must be at least 1" in capsys.readouterr().err


@pytest.mark.slow
def test_embedded_tokenizer_equals_auto_tokenizer():
    from transformers import AutoTokenizer

    from chat.runtime.models import _embedded_tokenizer, embedded_model_dir

    folder = embedded_model_dir()
    fast, auto = _embedded_tokenizer(folder), AutoTokenizer.from_pretrained(folder)
    assert fast.all_special_ids == auto.all_special_ids and len(fast) == len(auto)
    assert (fast.bos_token_id, fast.eos_token_id, fast.pad_token_id) == (auto.bos_token_id, auto.eos_token_id,
                                                                         auto.pad_token_id)
    assert fast.added_tokens_decoder == auto.added_tokens_decoder and fast.chat_template == auto.chat_template
    texts = ["<bos>A conversation\n\nUser: hi <eos> there", "  spaces\t\ttabs\n\n\n", "émoji 👩‍👩‍👧 中文 العربية",
             "def f(x):\n    return x**2", "<start_of_turn>user\nhi<end_of_turn>", "\u200b\ufeff",
             (Path(__file__).resolve().parents[1] / "README.md").read_text()]
    for text in texts:
        for split in (False, True):
            assert fast.encode(text, add_special_tokens=False, split_special_tokens=split) == \
                auto.encode(text, add_special_tokens=False, split_special_tokens=split)
    rng = random.Random(0)
    for _ in range(2000):
        ids = [rng.randrange(len(auto)) for _ in range(8)]
        assert fast.decode(ids) == auto.decode(ids)
        assert fast.decode(ids, skip_special_tokens=True) == auto.decode(ids, skip_special_tokens=True)


def test_chat_bench_counts_loops_and_facts(tiny_lm):
    """The chat benchmark on the tiny model: every reply is counted and classified, and the
    summary's rates are the counts' shares."""
    from app_helpers import tiny_engine
    from chat.measure import chat_bench
    from chat.steer.settings import GenerationSettings

    res = chat_bench.run(tiny_engine(tiny_lm), GenerationSettings.greedy(max_new_tokens=6))
    n = len(chat_bench.FACTUAL) + len(chat_bench.OPEN) + sum(map(len, chat_bench.CONVERSATIONS))
    s = res.summary()
    assert s["replies"] == len(res.samples) == n >= 40 and s["factual"] == len(chat_bench.FACTUAL) >= 10
    assert s["loop_rate"] == sum(x["bad"] == "loops" for x in res.samples) / n
    assert s["conversations"] == len(chat_bench.CONVERSATIONS) and res.settings["frame"] == "plain"
    assert chat_bench.answered("It is Paris.", ("paris",)) and not chat_bench.answered("Parisian", ("paris",))
    assert "| loop rate |" in chat_bench.table(s, res.settings)
