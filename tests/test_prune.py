"""Pruning latents that never fire: counts, the pruned dictionary, the renumbered catalog, the CLI."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from features import formats
from features.catalog import Catalog, Feature
from features.pipeline.cli import main
from features.dictionary import Dictionary
from features.pipeline.prune import FireCounts, fire_counts, prune, renumber

D_IN, D_SAE, K = 16, 64, 4


@pytest.fixture
def setup(tmp_path):
    """A TopK dictionary whose latents 0..31 never fire (b_enc -100), and shards to count on."""
    d = Dictionary.random(D_IN, D_SAE, activation="topk", k=K, hook_layer=1)
    d.b_enc[:32] = -100.0
    folder = formats.save(d, tmp_path / "dict", model_name="tiny")
    Catalog(D_SAE, {i: Feature(i, label=f"feature {i}", curated=i == 40) for i in range(D_SAE)}).save(folder)
    x = torch.randn(3 * 500, D_IN) * 3
    shards = tmp_path / "shards"
    shards.mkdir()
    for i in range(3):
        save_file({"acts": x[i * 500 : (i + 1) * 500].half().contiguous()}, str(shards / f"shard_{i}.safetensors"))
    (shards / "manifest.json").write_text(json.dumps({"shards": [{"file": f"shard_{i}.safetensors"} for i in range(3)]}))
    return formats.load(folder)[0], folder, shards, x


def test_counts_prune_and_encode_the_same(setup):
    d, _, shards, x = setup
    counts = fire_counts(d, sorted(shards.glob("*.safetensors")), tokens=600, progress=False)
    assert counts.tokens == 600 and counts.counts[:32].sum() == 0 and counts.counts[32:].sum() == 600 * K
    keep = counts.counts >= 1
    small = prune(d, keep)
    assert small.d_sae == 32 and small.k == K and small.hook_layer == 1
    # The dropped latents never won the top k, so every token encodes and decodes exactly as before.
    xs = x.half().float()
    torch.testing.assert_close(small.decode(small.encode(xs).acts), d.decode(d.encode(xs).acts))
    assert counts.expected_dead(keep, 10**6) == pytest.approx(0.0, abs=1e-9)


def test_expected_dead_follows_density():
    counts = FireCounts(torch.tensor([0, 1, 100]), tokens=1000)
    keep = torch.tensor([True, True, True])
    # exp(-n·0) + exp(-1000·0.001) + exp(-1000·0.1), over 3
    assert counts.expected_dead(keep, 1000) == pytest.approx((1 + 0.3679 + 0) / 3, abs=1e-3)


def test_prune_refuses_bad_masks(setup):
    d = setup[0]
    with pytest.raises(ValueError, match="bool tensor"):
        prune(d, torch.ones(D_SAE))
    with pytest.raises(ValueError, match="fewer than k"):
        prune(d, torch.arange(D_SAE) < 2)


def test_renumber_keeps_labels_and_old_ids():
    catalog = Catalog(6, {i: Feature(i, label=f"f{i}", curated=i == 4) for i in range(6)})
    new = renumber(catalog, torch.tensor([False, True, False, False, True, True]))
    assert [(f.id, f.label, f.extra["id_before_pruning"]) for f in new] == [(0, "f1", 1), (1, "f4", 4), (2, "f5", 5)]
    assert new[1].curated


def test_prune_cli_writes_a_loadable_dictionary_and_catalog(setup, tmp_path, capsys):
    _, folder, shards, _ = setup
    assert main(["prune", "--dictionary", str(folder), "--shards", str(shards), "--tokens", "900",
                 "--min-count", "1", "--out", str(tmp_path / "pruned")]) == 0
    out = capsys.readouterr().out
    assert "kept 32 of 64 latents" in out and "expected dead" in out
    d, where = formats.load(tmp_path / "pruned")
    assert d.d_sae == 32 and json.loads((where / "cfg.json").read_text())["pruned"]["from_d_sae"] == 64
    catalog = Catalog.load(where, 32)
    assert catalog[8].label == "feature 40" and catalog[8].curated
    assert main(["prune", "--dictionary", str(tmp_path / "nowhere"), "--shards", str(shards),
                 "--out", str(tmp_path / "x")]) == 2
