"""Train a TopK sparse autoencoder on harvested residual activations, on a few CPU cores, resumably.

Practice from the OpenAI TopK paper (Gao et al. 2024) and EleutherAI's sparsify:

- inputs are scaled by one constant so that E||x·s||² ≈ d_in, and b_dec starts at the data median;
- decoder rows stay unit-norm (gradient projected, rows renormalised after each step), W_enc
  starts as W_dec.T;
- an AuxK loss makes dead latents predict the residual error, which brings them back;
- the loss is the batch FVU, Adam with warm-up, plateau and a linear decay to zero.

CPU speed: the only dense work is the encoder matmul (B, d_in) @ (d_in, d_sae) that picks the top k,
in bf16 where the CPU multiplies bf16 natively (see BF16_MATMUL). Everything downstream touches
the k picked latents per token only: decoding is an embedding_bag over k decoder rows, and `_Pick`
sends the encoder gradient back through those k entries instead of two more dense matmuls. The
trainer keeps the encoder as rows per latent, W_enc_T (d_sae, d_in), so those sparse reads are of
contiguous rows (on a transposed view embedding_bag is ~40x slower).

Checkpoints are safetensors + JSON (no pickle), written atomically; the token stream is a pure
function of the seed and position, so a resumed run repeats an uninterrupted one exactly.
"""
from __future__ import annotations

import json
import math
import os
from bisect import bisect_right
from collections import deque
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from features.dictionary import Dictionary

SAMPLE_TOKENS = 1 << 16  # tokens that set input_scale and the initial b_dec
SHUFFLE_SHARDS = 8  # a shuffle window holds about this many shards' worth of tokens, taken from all shards
FVU_WINDOW = 100  # batches in the running FVU
PARAMS = ("W_enc_T", "b_enc", "W_dec", "b_dec")
NEW_ENCODER_SCALE = 0.01  # extending: added latents' encoder rows start this small
# The dense encoder matmul in bf16 took 0.67 s instead of 1.29 s (4096×640×16384 on a 2-core Zen 4;
# training ran at 6.8k instead of 4.6k tok/s) and reached the same FVU to 1e-4. Only on CPUs that
# multiply bf16 natively: elsewhere it is emulated, and slower.
BF16_MATMUL = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()


@dataclass(frozen=True)
class TrainConfig:
    d_sae: int = 16384
    k: int = 32
    lr: float | None = None  # None: 2e-4 / sqrt(d_sae / 16384), sparsify's scaling
    batch_tokens: int = 4096
    total_tokens: int | None = None  # None: one pass over all shards
    warmup_steps: int = 200
    decay_fraction: float = 0.2  # linear decay to 0 over the last 20% of steps
    auxk_alpha: float = 1 / 32  # AuxK loss weight; k_aux = d_in // 2
    # A latent that has not fired in this many tokens is dead and gets the AuxK loss. Shorter than
    # the ~370k-token held-out set on purpose: a latent that fires less often than that would
    # look dead there (sparsify and the TopK paper use 10M, for a looser definition of dead).
    dead_after_tokens: int = 250_000
    checkpoint_every: int = 200  # steps
    seed: int = 0
    hook_layer: int | None = None
    # > 0: the first `frozen` latents are a trained dictionary's (train's `base`), held fixed
    # with its b_dec; the other d_sae - frozen latents learn what it leaves out.
    frozen: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for f in fields(self):  # types as annotated: "int", "float | None", ...
            value, optional = getattr(self, f.name), "None" in f.type
            kind = (int,) if f.type.startswith("int") else (int, float)
            if not (isinstance(value, kind) or (optional and value is None)):
                wanted = "an integer" if kind == (int,) else "a number"
                raise ValueError(f"{f.name} must be {wanted}{' or None' if optional else ''}, got {value!r}")
        problems = [
            (self.d_sae >= 1, f"d_sae must be >= 1, got {self.d_sae}"),
            (1 <= self.k <= self.d_sae, f"k must be in 1..d_sae={self.d_sae}, got {self.k}"),
            (self.lr is None or 0 < self.lr < math.inf, f"lr must be a positive number, got {self.lr}"),
            (self.batch_tokens >= 2, f"batch_tokens must be >= 2 (the loss divides by its variance), "
                                     f"got {self.batch_tokens}"),
            (self.total_tokens is None or self.total_tokens >= self.batch_tokens,
             f"total_tokens must be at least batch_tokens={self.batch_tokens}, got {self.total_tokens}"),
            (self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}"),
            (0 <= self.decay_fraction <= 1, f"decay_fraction must be in [0, 1], got {self.decay_fraction}"),
            (self.auxk_alpha >= 0, f"auxk_alpha must be >= 0, got {self.auxk_alpha}"),
            (self.dead_after_tokens >= 1, f"dead_after_tokens must be >= 1, got {self.dead_after_tokens}"),
            (self.checkpoint_every >= 1, f"checkpoint_every must be >= 1, got {self.checkpoint_every}"),
            (self.hook_layer is None or self.hook_layer >= 0, f"hook_layer must be >= 0, got {self.hook_layer}"),
            (self.seed >= 0, f"seed must be >= 0, got {self.seed}"),
            (0 <= self.frozen < self.d_sae, f"frozen must be in 0..d_sae-1={self.d_sae - 1}, got {self.frozen}"),
        ]
        for ok, message in problems:
            if not ok:
                raise ValueError(message)

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else 2e-4 / math.sqrt(self.d_sae / 16384)


class TrainResult(NamedTuple):
    dictionary: Dictionary  # topk, input_scale set, cfg with the training facts
    steps: int
    tokens: int
    fvu: float  # mean over the last FVU_WINDOW batches
    dead_fraction: float  # latents not fired within dead_after_tokens, at the end


def lr_factor(step: int, total_steps: int, warmup_steps: int, decay_fraction: float) -> float:
    """Multiplier of the base LR at 0-based `step`: linear warm-up, plateau, linear decay to 0."""
    decay_steps = round(decay_fraction * total_steps)
    warm = (step + 1) / warmup_steps if warmup_steps else 1.0
    decay = (total_steps - step) / decay_steps if decay_steps else 1.0
    return max(0.0, min(1.0, warm, decay))


class _Pick(torch.autograd.Function):
    """pre[b, idx[b, j]] for pre = x_c @ W_enc_T.T + b_enc, where `pre` was computed without autograd.

    The gradient reaches only the picked entries, so backward costs O(B·n·d_in) sparse row reads
    instead of the two dense (B, d_in, d_sae) matmuls autograd would run.
    """

    @staticmethod
    def forward(ctx, pre: Tensor, idx: Tensor, x_c: Tensor, W_enc_T: Tensor, b_enc: Tensor) -> Tensor:
        ctx.save_for_backward(idx, x_c, W_enc_T)
        return pre.gather(1, idx).float()  # (B, n); pre may be bf16

    @staticmethod
    def backward(ctx, g: Tensor):  # g: (B, n)
        idx, x_c, W_enc_T = ctx.saved_tensors
        d_sae, n = W_enc_T.shape[0], idx.shape[1]
        g_x = F.embedding_bag(idx, W_enc_T, per_sample_weights=g, mode="sum")  # (B, d_in)
        # dL/dW_enc_T[i] = Σ g[b, j]·x_c[b] over the picks (b, j) of latent i: an embedding_bag
        # again, with one bag per latent holding the tokens that picked it.
        latent, order = idx.flatten().sort(stable=True)  # (B·n,)
        g_sorted = g.flatten()[order]  # (B·n,)
        counts = torch.bincount(latent, minlength=d_sae)  # (d_sae,)
        g_W = F.embedding_bag(order // n, x_c, counts.cumsum(0) - counts, per_sample_weights=g_sorted,
                              mode="sum")  # (d_sae, d_in)
        g_b = torch.zeros(d_sae).index_add_(0, latent, g_sorted)  # (d_sae,)
        return None, None, g_x, g_W, g_b


def _loss(p: dict[str, Tensor], x: Tensor, k: int, dead: Tensor, auxk_alpha: float) -> tuple[Tensor, Tensor, Tensor]:
    """x: (B, d_in) scaled inputs -> (loss, fvu, idx of the latents that fired (B, k), -1 where not)."""
    x_c = x - p["b_dec"]  # (B, d_in)
    half_d_in = x.shape[1] // 2  # the paper's k_aux
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=BF16_MATMUL):
        pre = torch.addmm(p["b_enc"], x_c, p["W_enc_T"].T)  # (B, d_sae), bf16 or float32
        idx = pre.topk(k, dim=1, sorted=False).indices  # (B, k)
        n_dead = int(dead.sum())
        k_aux = min(half_d_in, n_dead) if auxk_alpha > 0 else 0
        if k_aux:  # the top k_aux dead latents per token, found among the dead columns only
            dead_ids = dead.nonzero().squeeze(1)  # (n_dead,)
            idx = torch.cat([idx, dead_ids[pre[:, dead_ids].topk(k_aux, dim=1, sorted=False).indices]], 1)
    acts = torch.relu(_Pick.apply(pre, idx, x_c, p["W_enc_T"], p["b_enc"]))  # (B, k + k_aux)
    x_hat = F.embedding_bag(idx[:, :k], p["W_dec"], per_sample_weights=acts[:, :k], mode="sum") + p["b_dec"]
    fvu = (x_hat - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    loss = fvu
    if k_aux:
        # AuxK: the dead latents learn to reconstruct what the live ones missed; scaled down while
        # fewer latents are dead than k_aux (sparsify's heuristic).
        e = (x - x_hat).detach()  # (B, d_in)
        e_hat = F.embedding_bag(idx[:, k:], p["W_dec"], per_sample_weights=acts[:, k:], mode="sum")
        aux = (e_hat - e).pow(2).sum() / (e - e.mean(0)).pow(2).sum()
        loss = loss + auxk_alpha * min(n_dead / half_d_in, 1.0) * aux
    fired = torch.where(acts[:, :k] > 0, idx[:, :k], -1)  # (B, k)
    return loss, fvu.detach(), fired


def train(shards: list[Path], cfg: TrainConfig, out_dir: Path, *, resume: bool = True,
          progress: bool = True, base: Dictionary | None = None) -> TrainResult:
    """Train on `shards` (safetensors with `acts` (N, d_in) float16, in order), checkpointing into
    `out_dir`; with resume=True a checkpoint of the same run there is continued. With `base` (a
    TopK dictionary of cfg.frozen latents, k at most cfg.k), its latents come first and stay
    exactly as they are: the result extends it, and its feature ids keep their meaning. A k above
    the base's is allowed, but the base reconstructs worse with more slots than it was trained
    with (FVU 0.07 -> 0.10 at k 40 for the embedded k-32 dictionary), so its own k is the choice."""
    from tqdm.auto import tqdm

    shards, out_dir = [Path(s) for s in shards], Path(out_dir)
    sizes, d_in = _shard_sizes(shards)
    total_steps = (cfg.total_tokens or sum(sizes)) // cfg.batch_tokens
    if total_steps == 0:
        raise ValueError(f"the shards hold {sum(sizes)} tokens, fewer than one batch of {cfg.batch_tokens}")
    if (base is None) != (cfg.frozen == 0):
        raise ValueError("a base dictionary and cfg.frozen go together")
    if base is not None and (base.activation != "topk" or base.k > cfg.k or base.d_sae != cfg.frozen
                             or base.d_in != d_in or not base.apply_b_dec_to_input):
        raise ValueError(f"the base must be a TopK dictionary with k <= {cfg.k}, {cfg.frozen} latents and d_in={d_in}")
    run = {"cfg": asdict(cfg), "shards": [[s.name, n] for s, n in zip(shards, sizes)],
           "base": base.fingerprint() if base is not None else None}
    state = (_load_checkpoint(out_dir, run) if resume else None) or _fresh_state(shards, d_in, cfg, base)
    p = {name: t.requires_grad_() for name, t in state["params"].items()}
    opt = torch.optim.Adam(p.values(), lr=cfg.learning_rate, betas=(0.9, 0.999))
    for name, moments in state["adam"].items():
        opt.state[p[name]] = {"step": torch.tensor(float(state["step"])), **moments}
    scale, since_fired = state["input_scale"], state["since_fired"]  # (d_sae,) tokens since last fired
    recent = deque(state["fvu_recent"], maxlen=FVU_WINDOW)
    step, B = state["step"], cfg.batch_tokens

    def dead_fraction() -> float:
        return (since_fired >= cfg.dead_after_tokens).float().mean().item()

    batches = _batches(shards, sizes, B, cfg.seed, step * B)
    with tqdm(total=total_steps * B, initial=step * B, unit="tok", unit_scale=True, disable=not progress,
              desc=f"train SAE {cfg.d_sae}/k{cfg.k}") as bar:
        while step < total_steps:
            x = next(batches).float() * scale  # (B, d_in)
            lr = cfg.learning_rate * lr_factor(step, total_steps, cfg.warmup_steps, cfg.decay_fraction)
            dead = since_fired >= cfg.dead_after_tokens
            dead[:cfg.frozen] = False  # the base's latents cannot learn: no AuxK slots for them
            fvu, fired = _step(p, opt, x, lr, cfg, dead)
            since_fired += B
            since_fired[fired[fired >= 0]] = 0
            recent.append(fvu)
            step += 1
            bar.set_postfix(fvu=f"{sum(recent) / len(recent):.4f}", dead=f"{dead_fraction():.1%}", refresh=False)
            bar.update(B)
            if step % cfg.checkpoint_every == 0 or step == total_steps:
                _save_checkpoint(out_dir, run, step, B, sizes, scale, p, opt, since_fired, recent)

    fvu, dead = sum(recent) / len(recent), dead_fraction()
    w = {name: t.detach() for name, t in p.items()}
    info = {"trainer": "features.pipeline.train", **run["cfg"], "lr": cfg.learning_rate, "steps": step,
            "tokens": step * B, "fvu": fvu, "dead_fraction": dead}
    W_enc, b_enc, W_dec, b_dec = w["W_enc_T"].T.contiguous(), w["b_enc"], w["W_dec"], w["b_dec"]
    if base is not None:
        # In the base's own units, its rows exactly as they were loaded.
        n, r = cfg.frozen, scale / base.input_scale
        W_enc = torch.cat([base.W_enc, W_enc[:, n:] * r], 1)
        W_dec = torch.cat([base.W_dec, W_dec[n:] / r])
        b_enc, b_dec, scale = torch.cat([base.b_enc, b_enc[n:]]), base.b_dec, base.input_scale
    dictionary = Dictionary(
        W_enc=W_enc, b_enc=b_enc, W_dec=W_dec, b_dec=b_dec,
        activation="topk", k=cfg.k, apply_b_dec_to_input=True, input_scale=scale,
        hook_layer=cfg.hook_layer, cfg=info,
    )
    return TrainResult(dictionary, step, step * B, fvu, dead)


def _step(p: dict[str, Tensor], opt: torch.optim.Adam, x: Tensor, lr: float, cfg: TrainConfig,
          dead: Tensor) -> tuple[float, Tensor]:
    """One Adam step on x (B, d_in); returns the batch FVU and the latents that fired (B, k), -1 where not."""
    for group in opt.param_groups:
        group["lr"] = lr
    loss, fvu, fired = _loss(p, x, cfg.k, dead, cfg.auxk_alpha)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    with torch.no_grad():
        if cfg.frozen:  # a zero gradient from the start keeps Adam's moments, and so its step, at 0
            for name in ("W_enc_T", "b_enc", "W_dec"):
                p[name].grad[:cfg.frozen] = 0
            p["b_dec"].grad.zero_()
        # Drop the radial part of the decoder gradient: rows are renormalised after the step anyway,
        # and Adam would otherwise spend its step size fighting the constraint.
        W_dec, g = p["W_dec"][cfg.frozen:], p["W_dec"].grad[cfg.frozen:]
        g -= (g * W_dec).sum(1, keepdim=True) * W_dec
        opt.step()
        W_dec /= W_dec.norm(dim=1, keepdim=True)
    return fvu.item(), fired


# ---------------------------------------------------------------- state


def _fresh_state(shards: list[Path], d_in: int, cfg: TrainConfig, base: Dictionary | None = None) -> dict:
    """input_scale and b_dec from the first SAMPLE_TOKENS tokens; random unit decoder rows, tied encoder.
    With a base: its scale (its decoder rows were unit-norm in training units) and its latents,
    then new rows that start as the directions of what it misses on sample tokens."""
    sample, n = [], 0
    for shard in shards:
        sample.append(load_file(shard)["acts"][: SAMPLE_TOKENS - n].float())
        n += len(sample[-1])
        if n >= SAMPLE_TOKENS:
            break
    x = torch.cat(sample)  # (n, d_in)
    g = torch.Generator().manual_seed(cfg.seed)
    new = cfg.d_sae - cfg.frozen
    if base is None:
        scale = math.sqrt(d_in) / x.norm(dim=1).mean().item()
        W_dec = torch.randn(new, d_in, generator=g)
        b_dec = (x * scale).median(dim=0).values  # (d_in,): the offset residuals share
    else:
        r = 1 / base.W_dec.norm(dim=1).median().item()  # training units per base unit
        scale = r * base.input_scale
        miss = x - base.decode(base.encode(x).acts)  # (n, d_in)
        W_dec = miss[torch.randint(len(miss), (new,), generator=g)]
        b_dec = base.b_dec * r
    W_dec /= W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)  # (new, d_in)
    W_enc_T, b_enc = W_dec.clone(), torch.zeros(new)  # W_enc = W_dec.T
    since_fired = torch.zeros(cfg.d_sae, dtype=torch.long)
    if base is not None:  # the base in training units (x·scale in, x̂·scale out), same activations
        # New latents start quiet (a tied encoder at full size would outbid the base's latents
        # for every top-k slot) and count as dead, so AuxK trains them on what the base misses
        # from the first step; they take slots as they become useful.
        W_enc_T = torch.cat([base.W_enc.T / r, W_enc_T * NEW_ENCODER_SCALE])
        W_dec = torch.cat([base.W_dec * r, W_dec])
        b_enc = torch.cat([base.b_enc, b_enc])
        since_fired[cfg.frozen:] = cfg.dead_after_tokens
    params = {"W_enc_T": W_enc_T.contiguous(), "b_enc": b_enc, "W_dec": W_dec.contiguous(), "b_dec": b_dec}
    return {"step": 0, "input_scale": scale, "params": params, "adam": {}, "fvu_recent": [],
            "since_fired": since_fired}


def _save_checkpoint(out_dir: Path, run: dict, step: int, B: int, sizes: list[int], scale: float,
                     p: dict[str, Tensor], opt: torch.optim.Adam, since_fired: Tensor, recent: deque) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {"since_fired": since_fired}
    for name, t in p.items():
        tensors[name] = t.detach()
        for moment in ("exp_avg", "exp_avg_sq"):
            tensors[f"{moment}.{name}"] = opt.state[t][moment]
    epoch, window, offset = _position(step * B, sizes)
    meta = {**run, "step": step, "tokens": step * B, "input_scale": scale, "fvu_recent": list(recent),
            # where the stream goes on: stripe `window` of every shard, shuffled, from `offset`
            "position": {"epoch": epoch, "window": window, "offset": offset}}
    # The weights carry their step, so a crash between the two renames is detected on resume.
    _write_atomic(out_dir / "checkpoint.safetensors",
                  lambda f: save_file({k: v.contiguous() for k, v in tensors.items()}, str(f), {"step": str(step)}))
    _write_atomic(out_dir / "checkpoint.json", lambda f: f.write_text(json.dumps(meta, indent=1)))


def _load_checkpoint(out_dir: Path, run: dict) -> dict | None:
    path = out_dir / "checkpoint.json"
    if not path.is_file():
        return None
    meta = json.loads(path.read_text())
    changed = [k for k in run["cfg"] if meta["cfg"].get(k) != run["cfg"][k]]
    changed += ["shards"] if meta["shards"] != run["shards"] else []
    if changed:
        raise ValueError(f"{out_dir} holds a checkpoint of another run (different {', '.join(changed)}); "
                         "use a new out_dir or resume=False")
    with safe_open(out_dir / "checkpoint.safetensors", "pt") as f:
        if f.metadata().get("step") != str(meta["step"]):
            raise ValueError(f"{out_dir}: checkpoint.json and checkpoint.safetensors are from different "
                             "steps (interrupted while saving?); use resume=False to start over")
        # Copies in fresh (aligned) memory: BLAS picks its kernels by alignment, and a resumed run
        # must round exactly like an uninterrupted one.
        t = {k: f.get_tensor(k).clone() for k in f.keys()}
    return {"step": meta["step"], "input_scale": meta["input_scale"], "fvu_recent": meta["fvu_recent"],
            "params": {name: t[name] for name in PARAMS}, "since_fired": t["since_fired"],
            "adam": {name: {m: t[f"{m}.{name}"] for m in ("exp_avg", "exp_avg_sq")} for name in PARAMS}}


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


# ---------------------------------------------------------------- data


def _shard_sizes(shards: list[Path]) -> tuple[list[int], int]:
    """Tokens per shard and d_in, read from the safetensors headers only."""
    if not shards:
        raise ValueError("no shards to train on")
    shapes = []
    for shard in shards:
        with safe_open(shard, "pt") as f:
            if "acts" not in f.keys():
                raise ValueError(f"{shard} holds no 'acts' tensor")
            shapes.append(f.get_slice("acts").get_shape())
    if any(len(s) != 2 or s[1] != shapes[0][1] for s in shapes):
        raise ValueError(f"shards must all hold acts of shape (N, {shapes[0][-1]}); got {shapes}")
    return [s[0] for s in shapes], shapes[0][1]


def _stripes(sizes: list[int]) -> list[list[tuple[int, int]]]:
    """Shuffle windows as (lo, hi) row ranges, one per shard: window w is the w-th of
    ceil(len(sizes) / SHUFFLE_SHARDS) equal stripes of every shard.

    Every window mixes all shards. A harvest's stream can drift (one text source running out
    before the others); windows of consecutive shards then held one source for a million tokens,
    long enough for the latents of the others to look dead and be pulled away by AuxK.
    """
    n = math.ceil(len(sizes) / SHUFFLE_SHARDS)
    return [[(size * w // n, size * (w + 1) // n) for size in sizes] for w in range(n)]


def _position(tokens: int, sizes: list[int]) -> tuple[int, int, int]:
    """Stream position -> (epoch, shuffle window, token offset inside that shuffled window)."""
    lengths = [sum(hi - lo for lo, hi in stripe) for stripe in _stripes(sizes)]
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    epoch, t = divmod(tokens, sum(sizes))
    window = bisect_right(starts, t) - 1
    return epoch, window, t - starts[window]


def _read_rows(shard: Path, lo: int, hi: int) -> Tensor:
    with safe_open(shard, "pt") as f:
        return f.get_slice("acts")[lo:hi]


def _batches(shards: list[Path], sizes: list[int], batch: int, seed: int, tokens: int) -> Iterator[Tensor]:
    """(batch, d_in) float16 batches of the token stream from position `tokens` on.

    The stream: the windows of `_stripes`, each permuted by a generator seeded with
    (seed, epoch, window), epoch after epoch. Being a pure function of the position, it restarts
    exactly where a checkpoint left it.
    """
    epoch, window, offset = _position(tokens, sizes)
    stripes = _stripes(sizes)
    carry = torch.empty(0, 0, dtype=torch.float16)  # the part of a batch that spans two windows
    while True:
        x = torch.cat([_read_rows(s, lo, hi) for s, (lo, hi) in zip(shards, stripes[window])])  # (N, d_in)
        perm = torch.from_numpy(np.random.default_rng([seed, epoch, window]).permutation(len(x)))
        while offset < len(x):
            take = perm[offset : offset + batch - len(carry)]
            carry = torch.cat([carry, x[take]]) if len(carry) else x[take]
            offset += len(take)
            if len(carry) == batch:
                yield carry
                carry = carry[:0]
        offset, window = 0, window + 1
        if window == len(stripes):
            epoch, window = epoch + 1, 0
