"""Dictionary-learning data path on a tiny model: corpus readers, packing, harvest, evaluate."""
from __future__ import annotations

import gzip
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from chat.measure.check import load_spec
from features.pipeline.corpus import documents, is_heldout, pack, pieces, split_pieces
from features.dictionary import Dictionary
from features.pipeline.evaluate import evaluate
from features.pipeline.harvest import harvest, residuals
from label_helpers import write_wordnet

WORDNET = (
    "  1 This software and database is being provided to you, the LICENSEE, by  \n"
    "00005930 03 n 01 dwarf 0 001 @ 00004475 n 0000 | a plant or animal that is atypically small  \n"
    "00006024 03 n 02 heterotroph 0 consumer 0 001 @ 00004475 n 0000 | an organism that depends on complex organic substances  \n"
)


@pytest.fixture
def corpus_dir(tmp_path):
    root = tmp_path / "corpus"
    (root / "wordnet").mkdir(parents=True)
    (root / "wordnet" / "data.noun").write_text(WORDNET)
    # Not prose: WordNet's indexes, sense keys and Tcl sources stay out of the corpus.
    (root / "wordnet" / "index.sense").write_text("dog%1:05:00:: 02084071 1 42\n")
    (root / "wordnet" / "wnres").mkdir()
    (root / "wordnet" / "wnres" / "wn.tcl").write_text("set fontpt1offset(times) 20\n")
    (root / "notes.txt").write_text("First paragraph about bridges.\n\nSecond paragraph about dogs <eos> here.")
    with gzip.open(root / "jargon.txt.gz", "wt") as f:
        f.write("hacker: one who enjoys the intellectual challenge of creatively overcoming limitations.")
    (root / "page.html").write_text("<html><style>p{}</style><body><h1>Title</h1><p>Hello <b>world</b></p></body></html>")
    (root / "cookie").write_text("A quote.\n%\nAnother quote.\n%\n")
    (root / "cookie.dat").write_bytes(b"\x00\x01")
    return root


def test_documents_from_each_source(corpus_dir):
    docs = list(documents(corpus_dir))
    assert "Title" in docs[3] or any("Hello world" in d for d in docs)
    assert any("dwarf: a plant or animal that is atypically small" in d for d in docs)
    assert any("heterotroph, consumer: an organism" in d for d in docs)
    assert not any("LICENSEE" in d for d in docs)
    assert "A quote." in docs and "Another quote." in docs
    assert any(d.startswith("hacker:") for d in docs)
    assert not any("p{}" in d for d in docs)
    assert not any("%1:05:00" in d or "fontpt1offset" in d for d in docs)


def test_split_is_stable_and_disjoint(corpus_dir):
    text = "\n\n".join(f"Paragraph number {i} about something." for i in range(3000))
    parts = list(pieces(text, size=500))
    assert all(len(p) <= 600 for p in parts) and "".join(parts).count("Paragraph") == 3000
    held = [p for p in parts if is_heldout(p)]
    assert 0 < len(held) < len(parts) * 0.1
    assert [p for p in parts if is_heldout(p)] == held  # deterministic
    train = set(split_pieces([corpus_dir], heldout=False))
    assert not train & set(split_pieces([corpus_dir], heldout=True))


def test_pack_has_bos_only_at_the_start(tiny_lm):
    tok = tiny_lm.tokenizer
    seqs = list(pack(tok, ["The Golden Gate <eos> Bridge <bos>."] * 40, seq_len=32))
    assert len(seqs) > 3 and all(len(s) == 32 for s in seqs)
    special = set(tok.all_special_ids)
    assert all(s[0] == tok.bos_token_id and not special & set(s[1:]) for s in seqs)


def _sequences(tok, n=40):
    return list(pack(tok, [f"Sentence {i} about bridges, dogs and the weather." for i in range(n)], seq_len=24))


def test_harvest_matches_hidden_states_and_resumes(tiny_lm, tmp_path):
    seqs = _sequences(tiny_lm.tokenizer)
    shards = harvest(tiny_lm, 1, seqs, tmp_path / "full", max_tokens=200, batch_size=2, shard_tokens=60, progress=False)
    acts = torch.cat([load_file(s)["acts"] for s in shards])  # (N, d)
    assert acts.shape == (200, 32) and acts.dtype == torch.bfloat16
    # Same as the model's own hidden_states[L + 1] at non-BOS positions.
    with torch.inference_mode():
        hs = tiny_lm.model(input_ids=torch.tensor(seqs[:9]), output_hidden_states=True).hidden_states[2]
    expected = hs[:, 1:].reshape(-1, 32)[:200]
    assert torch.allclose(acts.float(), expected, rtol=1e-2, atol=1e-2)
    assert torch.equal(residuals(tiny_lm, 1, torch.tensor(seqs[:1]))[0, 1:], hs[0, 1:].float())

    def interrupted():
        for i, s in enumerate(seqs):
            if i == 5:
                raise KeyboardInterrupt
            yield s

    with pytest.raises(KeyboardInterrupt):
        harvest(tiny_lm, 1, interrupted(), tmp_path / "resumed", max_tokens=200, batch_size=2,
                shard_tokens=60, progress=False)
    assert len(json.loads((tmp_path / "resumed" / "manifest.json").read_text())["shards"]) == 1
    again = harvest(tiny_lm, 1, seqs, tmp_path / "resumed", max_tokens=200, batch_size=2, shard_tokens=60,
                    progress=False)
    assert torch.equal(torch.cat([load_file(s)["acts"] for s in again]), acts)
    with pytest.raises(ValueError, match="other settings"):
        harvest(tiny_lm, 2, seqs, tmp_path / "resumed", max_tokens=200, progress=False)


def test_evaluate_perfect_and_random_dictionaries(tiny_lm):
    seqs = _sequences(tiny_lm.tokenizer)
    eye = torch.eye(32)
    perfect = Dictionary(W_enc=torch.cat([eye, -eye], 1), b_enc=torch.zeros(64), W_dec=torch.cat([eye, -eye], 0),
                         b_dec=torch.zeros(32), activation="relu", apply_b_dec_to_input=False)
    good = evaluate(tiny_lm, perfect, 1, seqs, max_tokens=150, batch_size=4)
    assert good.fvu < 1e-6 and good.ce_loss_recovered == pytest.approx(1.0, abs=1e-3)
    assert good.l0 == pytest.approx(32, abs=1) and good.tokens >= 150
    bad = evaluate(tiny_lm, Dictionary.random(32, 64, activation="topk", k=2, seed=0), 1, seqs, max_tokens=150)
    # (CE recovered is meaningless on a random model, where deleting a layer may even help.)
    assert bad.fvu > 0.3 and bad.l0 == 2 and bad.ce_spliced != bad.ce_clean
    assert 0 < bad.dead_fraction < 1 and bad.ce_clean == pytest.approx(good.ce_clean)


def test_reconstruction_stats_do_not_depend_on_the_ce_subset(tiny_lm):
    """FVU, L0 and dead fraction read the same residuals whether or not a batch also runs the
    three CE passes."""
    d = Dictionary.random(32, 64, activation="topk", k=3, seed=2)
    every = evaluate(tiny_lm, d, 1, _sequences(tiny_lm.tokenizer), max_tokens=150, ce_tokens=10_000, batch_size=2)
    some = evaluate(tiny_lm, d, 1, _sequences(tiny_lm.tokenizer), max_tokens=150, ce_tokens=40, batch_size=2)
    none = evaluate(tiny_lm, d, 1, _sequences(tiny_lm.tokenizer), max_tokens=150, ce_tokens=0, batch_size=2)
    for r in (some, none):
        assert (r.fvu, r.l0, r.dead_fraction, r.tokens) == pytest.approx((every.fvu, every.l0, every.dead_fraction, every.tokens))
    assert 40 <= some.ce_tokens < every.ce_tokens and none.ce_tokens == 0
    assert math.isnan(none.ce_loss_recovered) and math.isfinite(some.ce_loss_recovered)


def test_harvest_drops_outlier_positions(tiny_lm, tmp_path, monkeypatch):
    import features.pipeline.harvest as hv

    seqs = _sequences(tiny_lm.tokenizer)[:2]
    monkeypatch.setattr(hv, "OUTLIER_FACTOR", 1.0)  # "outlier" = above the median norm
    shards = harvest(tiny_lm, 1, seqs, tmp_path, max_tokens=1000, batch_size=2, progress=False)
    kept = load_file(shards[0])["acts"].float()
    h = residuals(tiny_lm, 1, torch.tensor(seqs))[:, 1:].reshape(-1, 32)
    median = h.norm(dim=-1).median()
    assert kept.shape[0] == int((h.norm(dim=-1) <= median).sum()) < h.shape[0]
    assert bool((kept.norm(dim=-1) <= median * 1.01).all())


def test_evidence_keeps_every_firing_and_resumes(tiny_lm, tmp_path):
    from features.pipeline import evidence
    from features.pipeline.label import logit_lens

    seqs = _sequences(tiny_lm.tokenizer)[:6]
    d = Dictionary.random(32, 64, activation="topk", k=3, seed=5)
    out = tmp_path / "ev"
    evidence.collect(tiny_lm, d, 1, iter(seqs), out, max_tokens=1, shard_sequences=2, progress=False)
    assert len(evidence.load(out).tokens) == 2  # stopped after one shard
    evidence.collect(tiny_lm, d, 1, iter(seqs), out, max_tokens=10_000, shard_sequences=2, progress=False)
    f = evidence.load(out, special_ids=tiny_lm.tokenizer.all_special_ids)
    ids = torch.tensor(seqs)
    acts = d.encode(residuals(tiny_lm, 1, ids)).acts * tiny_lm.content_mask(ids).unsqueeze(-1)
    flat = acts.reshape(-1, 64)
    assert f.tokens.tolist() == seqs and not f.content[:, 0].any()  # BOS never counts
    assert len(f.pos) == int((flat > 0).sum())  # every firing, exactly once
    assert torch.allclose(torch.from_numpy(f.act), flat[torch.from_numpy(f.pos), torch.from_numpy(f.feature).long()],
                          rtol=1e-3)
    tok = tiny_lm.tokenizer
    # Logit lens: the final norm of the direction, through the unembedding.
    W_U = tiny_lm.model.get_output_embeddings().weight
    with torch.inference_mode():
        logits = tiny_lm.model.get_decoder().norm(d.W_dec[7][None]) @ W_U.T
    assert logit_lens(tiny_lm, d, top=5)[7] == [tok.decode([t]) for t in torch.topk(logits[0], 5).indices.tolist()]
    # Restricted to tokens of the labelling text, as `label` does.
    allowed = torch.zeros(logits.shape[-1], dtype=torch.bool)
    allowed[torch.tensor([t for s in seqs for t in s[1:]])] = True
    expected = torch.topk(logits[0].masked_fill(~allowed, float("-inf")), 5).indices.tolist()
    assert logit_lens(tiny_lm, d, top=5, allowed=allowed)[7] == [tok.decode([t]) for t in expected]


def test_features_cli_label_and_evaluate(tiny_model_dir, corpus_dir, tmp_path, capsys):
    from features import formats
    from features.catalog import Catalog, Feature
    from features.pipeline.cli import main

    folder = tmp_path / "dict"
    formats.save(Dictionary.random(32, 48, activation="topk", k=4, seed=1, hook_layer=1), folder, dtype=torch.float32)
    Catalog(48, {3: Feature(3, "my curated name", 1.0, 0.1, curated=True)}).save(folder)
    # Enough ~4,000-character pieces that the 4% held-out split is not empty.
    (corpus_dir / "long.txt").write_text("\n\n".join(f"Paragraph {i}: dogs, bridges and rain. " * 12 for i in range(2000)))
    source = ["--model", str(tiny_model_dir), "--text", str(corpus_dir), "--seq-len", "16"]
    wordnet = write_wordnet(tmp_path / "wordnet")
    label = ["label", "--dictionary", str(folder), "--tokens", "2000", "--heldout-tokens", "500", "--work",
             str(tmp_path / "work"), "--wordnet", str(wordnet), "--lexicon", str(tmp_path / "lexicon.json.gz"), *source]
    assert main(label) == 0
    catalog = Catalog.load(folder, 48)
    assert catalog[3].label == "my curated name" and catalog[3].curated
    labelled = [f for f in catalog if f.examples and not f.curated]
    assert labelled and all(f.label and f.max_activation > 0 and f.top_tokens for f in labelled)
    assert all(f.extra["name"] == f.label and f.extra["kind"] and isinstance(f.extra["reads"], list)
               for f in labelled)
    assert any(isinstance(f.extra["score"], float) for f in labelled)
    assert (tmp_path / "lexicon.json.gz").exists()
    assert main(label) == 0  # resumes from its work folder: nothing to collect again, same names
    assert [f.label for f in Catalog.load(folder, 48)] == [f.label for f in catalog]
    capsys.readouterr()
    assert main(["evaluate", "--dictionary", str(folder), "--tokens", "50", "--json", *source]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"fvu", "l0", "dead_fraction", "ce_loss_recovered", "tokens", "ce_tokens"}
    assert result["l0"] == 4
    assert main(["writers", "--dictionary", str(folder), "--model", str(tiny_model_dir), "--terms", "bridge",
                 "--top", "3", "--json"]) == 0
    writers = json.loads(capsys.readouterr().out)
    assert len(writers) == 3 and {"feature", "attribution", "lift", "label"} <= set(writers[0])
    assert main(["writers", "--dictionary", str(folder), "--model", str(tiny_model_dir), "--terms", " , "]) == 2
    # The commands that write back into features.json keep every other feature as it was.
    model = ["--model", str(tiny_model_dir)]
    assert main(["steerability", "--dictionary", str(folder), "--prompts", "1", *model]) == 0
    scored = Catalog.load(folder, 48)
    assert all(f.steerability is not None for f in scored if f.max_activation) and scored[3].label == "my curated name"
    assert main(["calibrate", "--dictionary", str(folder), "--feature", "3", "--terms", "dogs, rain", "--modes", "add",
                 "--max-new-tokens", "4", "--write", *model]) == 0
    assert Catalog.load(folder, 48)[3].extra["terms"] == ["dogs", "rain"]
    live = next(f for f in Catalog.load(folder, 48) if f.max_activation and not f.curated)
    (tmp_path / "c.toml").write_text('[[concept]]\nname = "rainy dogs"\ncategory = "x"\nterms = ["rain"]\n')
    (tmp_path / "p.jsonl").write_text(json.dumps({"name": "rainy dogs", "category": "x", "terms": ["rain"],
                                                  "chosen": live.id, "add": [1, 2], "clamp": [1, 1]}) + "\n")
    assert main(["curate", "--dictionary", str(folder), "--concepts", str(tmp_path / "c.toml"),
                 "--out", str(tmp_path / "p.jsonl"), "--write", "--spec", str(tmp_path / "s.toml"), *model]) == 0
    spec = load_spec(tmp_path / "s.toml")  # one add and one clamp case, at the low end of each band
    assert [(c.feature, c.mode, c.strength, c.terms) for c in spec.cases] == [
        ("rainy dogs", "add", 1.0, ("rain",)), ("rainy dogs", "clamp", 1.0, ("rain",))]
    after = Catalog.load(folder, 48)
    assert after[live.id].curated and after[live.id].label == "rainy dogs"
    assert after[live.id].strengths == {"add": [1, 2], "clamp": [1, 1]} and after[3].label == "my curated name"
    assert sum(f.has_info() for f in after) == sum(f.has_info() for f in scored)
    assert main(["harvest", "--layer", "1", "--out", str(tmp_path / "h"), "--text", str(tmp_path / "nothing")]) == 2


def test_mixed_pieces_interleaves_sources(tmp_path):
    from features.pipeline.corpus import mixed_pieces

    for name in ("a", "b"):
        (tmp_path / f"{name}.txt").write_text("\n\n".join(f"{name}{i} " * 300 for i in range(200)))
    paths = [tmp_path / "a.txt", tmp_path / "b.txt"]
    mixed = list(mixed_pieces(paths, heldout=False))
    assert sorted(mixed) == sorted(split_pieces(paths, heldout=False))  # same pieces, new order
    first = [p[0] for p in mixed[: len(mixed) // 4]]
    assert 0.3 < first.count("a") / len(first) < 0.7
    assert mixed == list(mixed_pieces(paths, heldout=False))  # deterministic, so harvests resume


def test_mixed_sources_of_different_sizes_run_out_together(tmp_path):
    from features.pipeline.corpus import mixed_pieces

    (tmp_path / "big.txt").write_text("\n\n".join(f"big{i} " * 300 for i in range(300)))
    (tmp_path / "small.txt.gz").write_bytes(gzip.compress("\n\n".join(f"small{i} " * 300 for i in range(100)).encode()))
    mixed = list(mixed_pieces([tmp_path / "big.txt", tmp_path / "small.txt.gz"], heldout=False))
    tail = mixed[-len(mixed) // 5:]
    assert any(p.startswith("small") for p in tail) and any(p.startswith("big") for p in tail)


# ---------------------------------------------------------------- hub datasets


@pytest.fixture
def hub_dataset(tmp_path):
    """A dataset repo in the hub's layout (datasets/owner/name/...) on a local fsspec filesystem,
    which `hub_documents` reads exactly as it reads HfFileSystem."""
    import gzip as gz
    import json as js

    from fsspec.implementations.dirfs import DirFileSystem
    from fsspec.implementations.local import LocalFileSystem

    repo = tmp_path / "hub" / "datasets" / "owner" / "stories"
    (repo / "data").mkdir(parents=True)
    (repo / "README.md").write_text("# not data")
    (repo / "data" / "train-00000.jsonl").write_text(
        js.dumps({"text": "Once upon a time there was a bridge."}) + "\n\n"
        + js.dumps({"text": "   "}) + "\n" + js.dumps({"title": "no text"}) + "\n"
        + js.dumps({"text": "The dog crossed the river."}) + "\n")
    with gz.open(repo / "data" / "train-00001.jsonl.gz", "wt") as f:
        f.write(js.dumps({"text": "Rain fell on the town."}) + "\n")
    (repo / "data" / "more.json").write_text(js.dumps([{"text": "Snow in winter."}, 3]))
    (repo / "data" / "notes.txt").write_text("Plain notes about cats.")
    return DirFileSystem(path=str(tmp_path / "hub"), fs=LocalFileSystem())


def test_hub_dataset_documents_stream_from_every_data_file(hub_dataset):
    from features.pipeline.corpus import hub_documents

    docs = list(hub_documents("hf://datasets/owner/stories", fs=hub_dataset))
    assert docs == ["Snow in winter.", "Plain notes about cats.", "Once upon a time there was a bridge.",
                    "The dog crossed the river.", "Rain fell on the town."]  # sorted by file name
    first = next(hub_documents("hf://datasets/owner/stories/data/train-00000.jsonl", fs=hub_dataset))
    assert first.startswith("Once upon")
    with pytest.raises(ValueError, match="no data files"):
        list(hub_documents("hf://datasets/owner/stories/README.md", fs=hub_dataset))
    # .txt files are text whatever the column
    assert list(hub_documents("hf://datasets/owner/stories", column="title", fs=hub_dataset)) == ["Plain notes about cats.", "no text"]


def test_hub_dataset_is_a_source_like_a_folder(hub_dataset, monkeypatch):
    from pathlib import Path

    from features.pipeline import corpus

    real = corpus.hub_documents
    monkeypatch.setattr(corpus, "hub_documents", lambda ref: real(ref, fs=hub_dataset))
    ref = "hf://datasets/owner/stories"
    assert corpus.is_hub(ref) and not corpus.is_hub(Path("hf:/datasets/x"))
    train, held = list(corpus.mixed_pieces([ref], heldout=False)), list(corpus.split_pieces([ref], heldout=True))
    assert sorted(train + held) == sorted(corpus.documents(ref)) and not set(train) & set(held)


def test_unreachable_hub_dataset_is_one_line(monkeypatch, tmp_path):
    import huggingface_hub.constants as constants

    from features.pipeline.corpus import hub_documents

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match="^hf://datasets/owner/missing: cannot list") as e:
        list(hub_documents("hf://datasets/owner/missing"))
    assert "\n" not in str(e.value)


def test_features_cli_evaluates_all_of_a_single_text_file(tiny_model_dir, tmp_path, capsys):
    """--text FILE is evaluated whole: a small file has no piece in the hashed held-out split."""
    from features import formats
    from features.pipeline.cli import main

    folder = tmp_path / "dict"
    formats.save(Dictionary.random(32, 48, activation="topk", k=4, seed=1, hook_layer=1), folder, dtype=torch.float32)
    text = tmp_path / "one.txt"
    text.write_text("The Golden Gate Bridge is in San Francisco. Dogs and cats are animals. " * 8)
    assert not any(is_heldout(p) for p in pieces(text.read_text()))  # the split alone would find nothing
    args = ["evaluate", "--dictionary", str(folder), "--model", str(tiny_model_dir), "--text", str(text),
            "--seq-len", "16", "--json"]
    assert main(args) == 0
    out = capsys.readouterr()
    result = json.loads(out.out)
    assert result["tokens"] > 0 and result["l0"] == 4
    assert f"evaluating on all of {text}" in out.err
    text.write_text("")
    assert main(args) == 2
    assert "no tokens to evaluate on" in capsys.readouterr().err
