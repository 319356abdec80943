"""The CLI contract, on a tiny local model and dictionary written by the test."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from chat.cli import main
from features import formats
from features.catalog import Catalog, Feature
from features.dictionary import Dictionary


@pytest.fixture(scope="module")
def tiny_dictionary_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("dictionary")
    d = Dictionary.random(32, 48, activation="topk", k=6, seed=4, hook_layer=1)
    formats.save(d, folder, model_name="tiny-gemma3")
    Catalog(48, {
        7: Feature(7, "golden gate bridge", 3.0, 0.01, curated=True),
        8: Feature(8, "bridges and rivers", 2.0, 0.02),
        11: Feature(11, "anger and rage", 5.0, 0.01),
    }).save(folder)
    return folder


@pytest.fixture
def run(tiny_model_dir, tiny_dictionary_dir, capsys):
    def _run(*args: str, source: bool = True):
        extra = ["--model", str(tiny_model_dir), "--dictionary", str(tiny_dictionary_dir)] if source else []
        code = main([*args, *extra])
        out, err = capsys.readouterr()
        return code, out, err
    return _run


def test_reply_json(run):
    code, out, err = run("reply", "Tell me about your weekend.", "--steer", "7=6", "--steer", "anger=-1",
                         "--max-new-tokens", "8", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert isinstance(data["text"], str)
    assert data["steer"] == [{"id": 7, "label": "golden gate bridge", "strength": 6.0},
                             {"id": 11, "label": "anger and rage", "strength": -1.0}]
    assert all(set(f) >= {"id", "label", "activation"} for f in data["top_features"])
    # Greedy by default: the same command gives the same text.
    assert json.loads(run("reply", "Tell me about your weekend.", "--steer", "7=6", "--steer", "anger=-1",
                          "--max-new-tokens", "8", "--json")[1])["text"] == data["text"]


def test_search_json(run):
    code, out, _ = run("search", "golden gate", "--json")
    assert code == 0
    assert json.loads(out)[0] == {"id": 7, "label": "golden gate bridge", "name": "golden gate bridge", "kind": None,
                                  "reads": [], "writes": [], "score": None, "max_activation": 3.0, "density": 0.01,
                                  "steerability": None, "curated": True, "strengths": {}}
    code, out, _ = run("search", "brdige", "--json")  # typo-tolerant
    assert {r["id"] for r in json.loads(out)} == {7, 8}


def test_encode_json(run, tiny_lm):
    text = "The Golden Gate Bridge is in San Francisco."
    code, out, _ = run("encode", text, "--top", "3", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["tokens"] == [tiny_lm.tokenizer.decode([t]) for t in tiny_lm.tokenizer.encode(text, add_special_tokens=False)]
    assert len(data["features"]) == len(data["tokens"])
    assert all(len(row) <= 3 and all(set(f) == {"id", "label", "activation"} for f in row) for row in data["features"])
    assert all(isinstance(f["label"], str) and f["label"] for row in data["features"] for f in row)


@pytest.mark.parametrize("args,match", [
    (["reply", "hi", "--steer", "7=nan"], "finite"),
    (["reply", "hi", "--steer", "7=inf"], "finite"),
    (["reply", "hi", "--steer", "7=1e9"], "outside"),
    (["reply", "hi", "--steer", "7=lots"], "number"),
    (["reply", "hi", "--steer", "7"], "FEATURE=STRENGTH"),
    (["reply", "hi", "--steer", "zebra crossing=2"], "no feature"),
    (["reply", "hi", "--steer", "4800=2"], "out of range"),
    (["reply", "hi", "--mode", "boost"], "mode"),
    (["reply", "   "], "empty"),
    (["reply", "hi", "--max-new-tokens", "0"], "max_new_tokens"),
    (["encode", ""], "empty"),
    (["search", "  "], "empty"),
])
def test_user_errors_are_one_line(run, args, match):
    code, out, err = run(*args)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and match in err
    assert "Traceback" not in err


def test_bad_dictionary_paths(run, tmp_path):
    code, _, err = run("search", "x", "--dictionary", str(tmp_path / "nope"), source=False)
    assert code == 2 and err.startswith("error: no dictionary at")
    (tmp_path / "cfg.json").write_text("{not json")
    (tmp_path / "sae_weights.safetensors").write_bytes(b"\x00" * 10)
    code, _, err = run("search", "x", "--dictionary", str(tmp_path), source=False)
    assert code == 2 and err.count("\n") == 1


def test_python_dash_m(tiny_model_dir, tiny_dictionary_dir):
    """The real entry point, in a fresh process."""
    done = subprocess.run(
        [sys.executable, "-m", "chat", "search", "golden gate", "--json", "--dictionary", str(tiny_dictionary_dir)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)[0]["id"] == 7
    done = subprocess.run([sys.executable, "-m", "chat", "reply", "hi", "--steer", "7=nan"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.strip() == "error: strength must be finite, got 'nan'"


def test_reply_uses_the_shared_defaults_and_greedy_on_request(run, tiny_model_dir, tiny_dictionary_dir):
    from chat.engine import load
    from chat.steer.settings import GenerationSettings

    engine = load(str(tiny_model_dir), str(tiny_dictionary_dir))
    text = lambda *a: json.loads(run("reply", "Hello there", "--max-new-tokens", "24", "--json", *a)[1])["text"]
    assert text() == engine.reply("Hello there", max_new_tokens=24).text
    assert text("--greedy") == engine.reply("Hello there", settings=GenerationSettings.greedy(), max_new_tokens=24).text
    assert text("--repetition-penalty", "2") == engine.reply("Hello there", repetition_penalty=2.0,
                                                             max_new_tokens=24).text


def test_a_name_that_matches_nothing_fails_before_the_model_loads(run, monkeypatch):
    import chat.engine

    def load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(chat.engine, "load", load)
    code, _, err = run("reply", "hi", "--steer", "zebra crossing=2")
    assert code == 2 and "no feature matches 'zebra crossing'" in err


def test_the_parser_imports_nothing_heavy():
    """`python -m chat` builds its parser (and says what is wrong with the arguments) without
    importing transformers or torch."""
    done = subprocess.run([sys.executable, "-c", "import sys, chat.cli; chat.cli.build_parser(); "
                           "print(sorted(m for m in ('torch', 'transformers', 'gradio') if m in sys.modules))"],
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[]", done.stderr
