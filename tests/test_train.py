"""The TopK trainer on synthetic activations with a known sparse structure: 64 unit "true features"
in d_in=32, each token a nonnegative mix of 4 of them on top of a large constant offset, scaled
like real residuals (norms ~1000). Seconds per test."""
from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from features import formats
from features.pipeline import train as train_mod
from features.dictionary import Dictionary
from features.pipeline.train import TrainConfig, lr_factor, train

D_IN, N_TRUE, ACTIVE = 32, 64, 4
N_TOKENS, SHARD = 16384, 2048  # 8 shards: two shuffle windows
CFG = TrainConfig(d_sae=128, k=8, lr=1e-2, batch_tokens=128, total_tokens=4 * N_TOKENS, warmup_steps=10,
                  dead_after_tokens=4096, checkpoint_every=100, hook_layer=3)


def make_acts(n: int, sample: int = 0, known: int = N_TRUE) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (n, D_IN) activations as float16 would store them, and the (N_TRUE, D_IN) true features;
    `sample` draws other tokens from the same features, `known` < N_TRUE only from the first ones."""
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(N_TRUE, D_IN, generator=g)
    feats /= feats.norm(dim=1, keepdim=True)
    offset = torch.randn(D_IN, generator=g)
    offset *= 1000 / offset.norm()
    g.manual_seed(1 + sample)
    ids = torch.rand(n, known, generator=g).argsort(1)[:, :ACTIVE]  # (n, ACTIVE) distinct features
    coef = 100 + 200 * torch.rand(n, ACTIVE, 1, generator=g)
    x = offset + (coef * feats[ids]).sum(1)  # (n, D_IN)
    return x.half().float(), feats


def write_shards(folder, x: torch.Tensor, shard: int = SHARD) -> list:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(0, len(x), shard):
        paths.append(folder / f"shard_{i // shard:05d}.safetensors")
        save_file({"acts": x[i : i + shard].half().contiguous()}, str(paths[-1]))
    return paths


def fvu(d: Dictionary, x: torch.Tensor) -> float:
    x_hat = d.decode(d.encode(x).acts)
    return float((x_hat - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    x, feats = make_acts(N_TOKENS)
    return write_shards(tmp_path_factory.mktemp("acts"), x), x, feats


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return train(data[0], CFG, out, progress=False), out


def test_learns_the_sparse_structure(data, trained):
    _, x, feats = data
    result, _ = trained
    d = result.dictionary
    assert (result.steps, result.tokens) == (512, 512 * 128)
    assert result.fvu < 0.1  # running training FVU; measured 0.075
    held_out, _ = make_acts(4096, sample=1)  # fresh tokens from the same features
    assert fvu(d, x[-4096:]) < 0.1 and fvu(d, held_out) < 0.1  # measured 0.069, 0.072
    # A random dictionary with the same normalisation and b_dec fails the same bar.
    rand = Dictionary.random(D_IN, 128, "topk", k=8, seed=1)
    rand.b_dec, rand.input_scale = d.b_dec, d.input_scale
    assert fvu(rand, x[-4096:]) > 0.5  # measured 0.86
    # The true features are found: each has a decoder row pointing its way (measured: all 64).
    cos = feats @ d.W_dec.T  # (N_TRUE, d_sae)
    assert (cos.max(1).values > 0.9).float().mean() > 0.9


def test_dictionary_is_a_topk_sae_on_raw_activations(data, trained):
    _, x, _ = data
    d = trained[0].dictionary
    assert d.activation == "topk" and d.k == 8 and d.apply_b_dec_to_input and d.hook_layer == 3
    assert d.cfg["trainer"] == "features.pipeline.train" and d.cfg["steps"] == 512 and d.cfg["lr"] == 1e-2
    acts = d.encode(x[:1000]).acts
    assert int((acts > 0).sum(1).max()) <= 8 and bool((acts >= 0).all())
    # Decoder rows are unit-norm in the trainer's (scaled) space, before any save folding.
    assert torch.allclose(d.W_dec.norm(dim=1), torch.ones(128), atol=1e-5)


def test_saved_dictionary_folds_the_scale_and_still_reconstructs(data, trained, tmp_path):
    _, x, _ = data
    loaded = formats.load_folder(formats.save(trained[0].dictionary, tmp_path, dtype=torch.float32))
    assert loaded.input_scale == 1.0 and loaded.activation == "topk" and loaded.k == 8
    assert fvu(loaded, x[-4096:]) == pytest.approx(fvu(trained[0].dictionary, x[-4096:]), rel=1e-3)


def test_input_scale_and_b_dec_come_from_the_data(data, trained):
    shards, x, _ = data
    d = trained[0].dictionary
    scaled = x * d.input_scale
    assert scaled.pow(2).sum(1).mean() == pytest.approx(D_IN, rel=0.02)  # E||x·s||² ≈ d_in
    state = train_mod._fresh_state(shards, D_IN, CFG)
    median = scaled.median(dim=0).values  # the whole sample: N_TOKENS < SAMPLE_TOKENS
    assert torch.allclose(state["params"]["b_dec"], median, atol=1e-5)
    assert torch.equal(state["params"]["W_enc_T"], state["params"]["W_dec"])  # W_enc = W_dec.T
    # Training moves b_dec little compared with the spread of the data around it (measured 5%).
    assert (d.b_dec - median).norm() < 0.15 * (scaled - median).norm(dim=1).mean()


def test_sparse_backward_matches_dense_autograd(monkeypatch):
    monkeypatch.setattr(train_mod, "BF16_MATMUL", False)
    g = torch.Generator().manual_seed(0)
    B, d_in, d_sae, k, alpha = 64, 16, 96, 4, 0.5
    p0 = {"W_enc_T": torch.randn(d_sae, d_in, generator=g), "b_enc": 0.1 * torch.randn(d_sae, generator=g),
          "W_dec": torch.randn(d_sae, d_in, generator=g), "b_dec": torch.randn(d_in, generator=g)}
    x, dead = torch.randn(B, d_in, generator=g), torch.rand(d_sae, generator=g) < 0.5

    def dense(p):  # the textbook TopK SAE + AuxK loss, on dense (B, d_sae) activations
        pre = (x - p["b_dec"]) @ p["W_enc_T"].T + p["b_enc"]
        top = pre.topk(k, dim=1)
        x_hat = torch.zeros_like(pre).scatter(1, top.indices, top.values.relu()) @ p["W_dec"] + p["b_dec"]
        n_dead, k_aux = int(dead.sum()), d_in // 2
        aux = torch.where(dead, pre, -math.inf).topk(min(k_aux, n_dead), dim=1)
        e = (x - x_hat).detach()
        e_hat = torch.zeros_like(pre).scatter(1, aux.indices, aux.values.relu()) @ p["W_dec"]
        aux_loss = (e_hat - e).pow(2).sum() / (e - e.mean(0)).pow(2).sum()
        return (x_hat - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum() + alpha * min(n_dead / k_aux, 1) * aux_loss

    def grads(loss_fn):
        p = {name: t.clone().requires_grad_() for name, t in p0.items()}
        loss = loss_fn(p)
        loss.backward()
        return loss.item(), {name: t.grad for name, t in p.items()}

    loss_ref, g_ref = grads(dense)
    loss, g_sparse = grads(lambda p: train_mod._loss(p, x, k, dead, alpha)[0])
    assert loss == pytest.approx(loss_ref, rel=1e-6)
    for name in g_ref:
        torch.testing.assert_close(g_sparse[name], g_ref[name], rtol=1e-5, atol=1e-6)


def test_auxk_revives_dead_latents(data, tmp_path, monkeypatch):
    # Start with 96 of 128 latents dead: tiny encoder rows never win the top k. Without AuxK they
    # get no gradient and stay dead; with it they learn what the 32 live ones miss.
    fresh = train_mod._fresh_state

    def crippled(*args):
        state = fresh(*args)
        state["params"]["W_enc_T"][32:] *= 0.01
        return state

    monkeypatch.setattr(train_mod, "_fresh_state", crippled)
    cfg = dataclasses.replace(CFG, lr=3e-3, total_tokens=N_TOKENS, dead_after_tokens=1024, decay_fraction=0.0)
    without = train(data[0], dataclasses.replace(cfg, auxk_alpha=0.0), tmp_path / "a", progress=False)
    with_auxk = train(data[0], cfg, tmp_path / "b", progress=False)
    assert without.dead_fraction > 0.6  # measured 0.73
    # Measured 0.44 dead (64 true features need about half the latents) and FVU 0.14 against 0.25.
    assert with_auxk.dead_fraction < without.dead_fraction - 0.2
    assert with_auxk.fvu < 0.75 * without.fvu


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(data, tmp_path, monkeypatch):
    # 96-token batches and 1.2 epochs: batches straddle shuffle windows and the epoch boundary.
    cfg = dataclasses.replace(CFG, batch_tokens=96, total_tokens=20_000, checkpoint_every=50)
    whole = train(data[0], cfg, tmp_path / "whole", progress=False)

    class Crash(Exception):
        pass

    save = train_mod._save_checkpoint

    def save_then_crash(*args):
        save(*args)
        raise Crash

    monkeypatch.setattr(train_mod, "_save_checkpoint", save_then_crash)
    with pytest.raises(Crash):
        train(data[0], cfg, tmp_path / "split", progress=False)
    meta = json.loads((tmp_path / "split" / "checkpoint.json").read_text())
    assert (meta["step"], meta["tokens"]) == (50, 4800)
    assert meta["position"] == {"epoch": 0, "window": 0, "offset": 4800}
    monkeypatch.setattr(train_mod, "_save_checkpoint", save)
    monkeypatch.setattr(train_mod, "_fresh_state", lambda *a: pytest.fail("started over instead of resuming"))
    resumed = train(data[0], cfg, tmp_path / "split", progress=False)

    assert resumed.steps == whole.steps == 208
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):  # bit for bit
        assert torch.equal(getattr(resumed.dictionary, name), getattr(whole.dictionary, name)), name
    assert resumed.fvu == pytest.approx(whole.fvu) and resumed.dead_fraction == whole.dead_fraction


def test_checkpoint_is_safetensors_and_json(trained):
    result, out = trained
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.json", "checkpoint.safetensors"]
    tensors = load_file(out / "checkpoint.safetensors")  # safetensors cannot hold a pickle
    params = {"W_enc_T": (128, D_IN), "b_enc": (128,), "W_dec": (128, D_IN), "b_dec": (D_IN,)}
    expected = {**params, **{f"{m}.{n}": s for n, s in params.items() for m in ("exp_avg", "exp_avg_sq")},
                "since_fired": (128,)}
    assert {name: tuple(t.shape) for name, t in tensors.items()} == expected
    assert torch.equal(tensors["W_dec"], result.dictionary.W_dec)
    meta = json.loads((out / "checkpoint.json").read_text())
    assert meta["step"] == 512 and meta["cfg"] == dataclasses.asdict(CFG)
    assert meta["input_scale"] == result.dictionary.input_scale


def test_finished_run_resumes_to_itself_and_other_cfg_is_refused(data, trained, tmp_path):
    result, out = trained
    again = train(data[0], CFG, out, progress=False)  # nothing left to do
    assert again.steps == 512 and torch.equal(again.dictionary.W_enc, result.dictionary.W_enc)
    with pytest.raises(ValueError, match=r"different k\).*new out_dir or resume=False"):
        train(data[0], dataclasses.replace(CFG, k=4), out, progress=False)
    # A json and weights from different steps (a crash between the two renames) are refused...
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in out.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    meta = json.loads((copy / "checkpoint.json").read_text())
    (copy / "checkpoint.json").write_text(json.dumps({**meta, "step": 500}))
    with pytest.raises(ValueError, match="different steps"):
        train(data[0], CFG, copy, progress=False)
    # ...and resume=False starts over in the same folder.
    small = dataclasses.replace(CFG, k=4, total_tokens=256, checkpoint_every=1)
    assert train(data[0], small, copy, resume=False, progress=False).steps == 2


def test_every_shuffle_window_mixes_all_shards(tmp_path):
    # A harvest whose sources ran out one by one (shard i: source i) must not be trained on one
    # source at a time: latents of the others would look dead and AuxK would pull them away.
    n_shards, per = 2 * train_mod.SHUFFLE_SHARDS, 64
    source = torch.arange(n_shards, dtype=torch.float32).repeat_interleave(per)[:, None].repeat(1, 2)
    shards = write_shards(tmp_path, source, shard=per)
    stream = train_mod._batches(shards, [per] * n_shards, 32, 0, 0)
    for _ in range(per * n_shards // 32 // 2):  # the first of the two windows
        assert len(set(next(stream)[:, 0].long().tolist())) > n_shards // 2


def test_progress_bar_shows_speed_fvu_and_dead_fraction(data, tmp_path, capsys):
    train(data[0], dataclasses.replace(CFG, total_tokens=512), tmp_path, progress=True)
    err = capsys.readouterr().err
    assert "tok/s" in err and "fvu=" in err and "dead=" in err


def test_batches_shuffle_within_windows_and_cover_each_epoch(tmp_path):
    # Token i carries its index, so batches show where they came from.
    w = train_mod.SHUFFLE_SHARDS
    n, batch = (w + 1) * 100, 64  # 9 shards: two windows, each a stripe of 50 rows of every shard
    idx = torch.arange(n, dtype=torch.float32)[:, None].repeat(1, 2)
    shards = write_shards(tmp_path, idx, shard=100)
    sizes = [100] * (w + 1)
    stream = train_mod._batches(shards, sizes, batch, 0, 0)
    seen = torch.cat([next(stream)[:, 0] for _ in range(2 * n // batch)]).long()  # two epochs, less a tail
    first, second = seen[:n], seen[n:]
    assert sorted(first.tolist()) == list(range(n))  # each token once per epoch
    assert not torch.equal(first[: len(second)], second)  # a new order each epoch
    assert set((first[: n // 2] % 100).tolist()) == set(range(50))  # window 0: rows 0..49 of each shard
    assert set((first[: n // 2] // 100).tolist()) == set(range(w + 1))
    gaps = first[:batch].sort().values.diff()
    assert float(gaps.float().mean()) > 4  # a batch is spread over the window, not a contiguous run
    # The stream restarted at any position continues identically.
    again = train_mod._batches(shards, sizes, batch, 0, 500)
    assert torch.equal(next(again)[:, 0].long(), seen[500 : 500 + batch])


@pytest.mark.parametrize("bad", [
    {"k": 0}, {"k": 200, "d_sae": 128}, {"lr": 0.0}, {"lr": -1e-3}, {"batch_tokens": 1},
    {"total_tokens": 10, "batch_tokens": 128}, {"warmup_steps": -1}, {"decay_fraction": 1.5},
    {"auxk_alpha": -0.1}, {"dead_after_tokens": 0}, {"checkpoint_every": 0}, {"hook_layer": -1},
    {"d_sae": 128.5}, {"lr": "fast"}, {"total_tokens": 1e6}, {"seed": -1}, {"auxk_alpha": float("nan")},
])
def test_bad_config_is_one_value_error(bad):
    with pytest.raises(ValueError) as info:
        TrainConfig(**bad)
    assert "\n" not in str(info.value) and next(iter(bad)) in str(info.value)


def test_bad_shards_are_value_errors(tmp_path):
    with pytest.raises(ValueError, match="no shards"):
        train([], CFG, tmp_path, progress=False)
    save_file({"other": torch.zeros(4, D_IN)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(ValueError, match="no 'acts'"):
        train([tmp_path / "x.safetensors"], CFG, tmp_path, progress=False)


def test_lr_schedule_warms_up_plateaus_and_decays_to_zero():
    f = [lr_factor(s, 100, 10, 0.2) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == 1.0  # linear warm-up over 10 steps
    assert all(v == 1.0 for v in f[9:81])  # plateau
    assert all(a > b for a, b in zip(f[80:], f[81:]))  # linear decay over the last 20 steps...
    assert f[99] == pytest.approx(1 / 20) and lr_factor(100, 100, 10, 0.2) == 0.0  # ...to zero
    assert lr_factor(0, 100, 0, 0.0) == 1.0  # neither warm-up nor decay
    assert TrainConfig(d_sae=16384).learning_rate == 2e-4 and TrainConfig(d_sae=65536).learning_rate == 1e-4


def test_extending_keeps_the_base_exactly_and_learns_what_it_misses(data, tmp_path):
    """A base trained on narrower text (40 of the 64 true features), extended on all of it: its
    latents come first and stay as loaded (feature ids keep their meaning), and the added ones
    take on what it misses."""
    shards, x, feats = data
    narrow = write_shards(tmp_path / "narrow", make_acts(N_TOKENS, sample=2, known=40)[0])
    base_cfg = dataclasses.replace(CFG, d_sae=64, total_tokens=2 * N_TOKENS)
    base = formats.load_folder(formats.save(train(narrow, base_cfg, tmp_path / "base", progress=False).dictionary,
                                            tmp_path / "b", dtype=torch.float32))
    cfg = dataclasses.replace(CFG, d_sae=64 + 64, frozen=64, total_tokens=4 * N_TOKENS)
    ext = train(shards, cfg, tmp_path / "ext", progress=False, base=base).dictionary
    assert ext.d_sae == 128 and ext.input_scale == base.input_scale
    assert torch.equal(ext.W_enc[:, :64], base.W_enc) and torch.equal(ext.W_dec[:64], base.W_dec)
    assert torch.equal(ext.b_enc[:64], base.b_enc) and torch.equal(ext.b_dec, base.b_dec)
    before, after = fvu(base, x[-4096:]), fvu(ext, x[-4096:])
    assert after < 0.85 * before, (before, after)  # measured 0.237 -> 0.183 (a dense toy: 64 features in 32 dims)
    acts = ext.encode(x[-4096:]).acts
    assert (acts[:, 64:] > 0).sum() > 0.08 * (acts > 0).sum()  # the added latents fire (measured 13%)
    with pytest.raises(ValueError, match="base"):
        train(shards, dataclasses.replace(cfg, k=4), tmp_path / "bad", progress=False, base=base)  # k below the base's
    with pytest.raises(ValueError, match="go together"):
        train(shards, cfg, tmp_path / "bad2", progress=False)
