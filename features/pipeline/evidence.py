"""Every firing of every feature on some text, kept sparse on disk: the labeller's evidence.

The old labeller kept only each feature's 8 top contexts, too few to tell what a feature is
about. A TopK dictionary fires exactly k latents a token, so all of its firings on a few hundred
thousand tokens fit on disk (k x 10 bytes a token): `collect` runs the model and the
dictionary over token sequences and writes, per shard, the token ids and the (position,
feature, activation) triples of every firing. `manifest.json` records the finished shards, so
an interrupted run resumes where it stopped (the sequences must come in the same order).
"""
from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import Iterable, NamedTuple

import numpy as np
import torch

from chat.runtime.models import LoadedModel
from features.dictionary import Dictionary
from features.pipeline.harvest import residuals


class Firings(NamedTuple):
    """All firings on a stretch of text, flat over its sequences."""
    tokens: np.ndarray  # (S, T) int32 token ids of the S sequences (BOS included)
    pos: np.ndarray  # (M,) int64 flat token index into tokens.ravel() of each firing
    feature: np.ndarray  # (M,) int32 feature id
    act: np.ndarray  # (M,) float32 activation (> 0)
    content: np.ndarray  # (S, T) bool: a text token (not BOS or special), the ones that count


def collect(lm: LoadedModel, dictionary: Dictionary, layer: int, sequences: Iterable[list[int]],
            out_dir: Path, *, max_tokens: int, batch_size: int = 8, shard_sequences: int = 128,
            progress: bool = True) -> Path:
    """Write the firings of `dictionary` on up to `max_tokens` text tokens to `out_dir`;
    resumes from its manifest."""
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"shards": [], "tokens": 0,
                                                                                      "sequences": 0}
    stream = iter(sequences)
    for _ in itertools.islice(stream, manifest["sequences"]):  # what earlier runs consumed
        pass
    bar = tqdm(total=max_tokens, initial=manifest["tokens"], unit="tok", disable=not progress, desc="evidence")
    while manifest["tokens"] < max_tokens:
        seqs = list(itertools.islice(stream, shard_sequences))
        if not seqs:
            break
        ids_all = torch.tensor(seqs)  # (S, T)
        content = lm.content_mask(ids_all)
        pos, feat, act = [], [], []
        for b in range(0, len(seqs), batch_size):
            ids = ids_all[b:b + batch_size]
            acts = dictionary.encode(residuals(lm, layer, ids)).acts.cpu()  # (B, T, d_sae)
            acts *= content[b:b + batch_size].unsqueeze(-1)
            nz = acts.reshape(-1, dictionary.d_sae).nonzero()  # (m, 2): flat position, feature
            pos.append(nz[:, 0] + b * ids.shape[1])
            feat.append(nz[:, 1])
            act.append(acts.reshape(-1, dictionary.d_sae)[nz[:, 0], nz[:, 1]])
            bar.update(int(content[b:b + batch_size].sum()))
        name = f"shard-{len(manifest['shards']):04d}.npz"
        tmp = out_dir / f".{name}.tmp.npz"
        np.savez(tmp, tokens=ids_all.numpy().astype(np.int32), pos=torch.cat(pos).numpy().astype(np.int64),
                 feature=torch.cat(feat).numpy().astype(np.int32), act=torch.cat(act).numpy().astype(np.float16))
        os.replace(tmp, out_dir / name)
        manifest["shards"].append(name)
        manifest["sequences"] += len(seqs)
        manifest["tokens"] += int(content.sum())
        manifest_path.write_text(json.dumps(manifest))
    bar.close()
    return out_dir


def load(out_dir: Path, special_ids: Iterable[int] = ()) -> Firings:
    """The firings `collect` wrote, as one `Firings`. `special_ids` mark non-content tokens."""
    out_dir = Path(out_dir)
    manifest = json.loads((out_dir / "manifest.json").read_text())
    tokens, pos, feat, act = [], [], [], []
    offset = 0
    for name in manifest["shards"]:
        with np.load(out_dir / name) as z:
            tokens.append(z["tokens"])
            pos.append(z["pos"] + offset)
            feat.append(z["feature"])
            act.append(z["act"].astype(np.float32))
            offset += z["tokens"].size
    if not tokens:
        raise ValueError(f"{out_dir}: no evidence shards")
    toks = np.concatenate(tokens)
    return Firings(toks, np.concatenate(pos), np.concatenate(feat), np.concatenate(act),
                   ~np.isin(toks, np.asarray(list(special_ids), dtype=np.int32)))
