"""Drop the latents a trained dictionary almost never uses, counted on its own training data.

A TopK dictionary ends training with a tail of latents that fire once in a million tokens or
never: capacity spent on nothing, and on a few hundred thousand held-out tokens they read as
dead. Pruning keeps the latents that fired at least `min_count` times on a sample of the
*training* activations (never the held-out text, which would grade the selection on its own
test) and renumbers them; the catalog, when the folder has one, is renumbered with them, each
feature keeping its old id as `extra["id_before_pruning"]`.

    python -m features prune --dictionary runs/l9-sae/dictionary --shards runs/l9 --min-count 10 \\
        --out runs/l9-sae/pruned

A TopK encoder picks the k largest pre-activations among the kept latents, so a token that used
a dropped latent picks the next one instead; FVU moves by the dropped latents' tiny share.
"""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple, Sequence

import torch
from safetensors import safe_open
from torch import Tensor

from features.dictionary import Dictionary

BATCH = 4096


class FireCounts(NamedTuple):
    counts: Tensor  # (d_sae,) int64: tokens on which each latent fired
    tokens: int  # tokens counted

    def expected_dead(self, keep: Tensor, heldout_tokens: int) -> float:
        """Expected share of `keep` (bool (d_sae,)) silent on `heldout_tokens` fresh tokens, each
        latent firing independently at its counted density: sum of exp(-n·density) / kept."""
        density = self.counts[keep].double() / self.tokens
        return float(torch.exp(-heldout_tokens * density).sum() / max(int(keep.sum()), 1))


def fire_counts(d: Dictionary, shards: Sequence[Path], tokens: int, progress: bool = True) -> FireCounts:
    """Count firings on about `tokens` activations, an equal slice from the start of every shard
    (a harvest's stream drifts between sources, so every shard contributes)."""
    from tqdm.auto import tqdm

    if not shards:
        raise ValueError("no shards to count on")
    per = math.ceil(tokens / len(shards))
    counts, seen = torch.zeros(d.d_sae, dtype=torch.int64), 0
    with tqdm(total=per * len(shards), unit="tok", unit_scale=True, disable=not progress, desc="count firings") as bar:
        for shard in shards:
            with safe_open(str(shard), "pt") as f:
                x = f.get_slice("acts")[:per]  # (n, d_in) float16
            for i in range(0, len(x), BATCH):
                with torch.no_grad():
                    acts = d.encode(x[i : i + BATCH].float()).acts  # (b, d_sae)
                counts += (acts > 0).sum(0)
                seen += len(acts)
                bar.update(len(acts))
    return FireCounts(counts, seen)


def prune(d: Dictionary, keep: Tensor) -> Dictionary:
    """The dictionary restricted to the latents where `keep` (bool (d_sae,)) is set, in order."""
    if keep.shape != (d.d_sae,) or keep.dtype != torch.bool:
        raise ValueError(f"keep must be a bool tensor of shape ({d.d_sae},), got {keep.dtype} {tuple(keep.shape)}")
    n = int(keep.sum())
    if d.activation == "topk" and n < (d.k or 0):
        raise ValueError(f"keeping {n} latents leaves fewer than k = {d.k}")
    if n == 0:
        raise ValueError("pruning would keep no latent")
    return replace(d, W_enc=d.W_enc[:, keep], b_enc=d.b_enc[keep], W_dec=d.W_dec[keep],
                   threshold=None if d.threshold is None else d.threshold[keep])


def renumber(catalog, keep: Tensor):
    """A catalog for the pruned dictionary: feature old_ids[j] becomes feature j."""
    from features.catalog import Catalog

    old_ids = keep.nonzero().squeeze(1).tolist()
    features = {j: replace(catalog[i], id=j, extra=catalog[i].extra | {"id_before_pruning": i})
                for j, i in enumerate(old_ids) if catalog[i].has_info()}
    return Catalog(len(old_ids), features)
