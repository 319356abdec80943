"""Automatic labels for every live feature: what it reads and what it writes.

- reads: its top-activating contexts on training text (token windows, the max token marked);
- writes: the tokens its decoder direction promotes (logit lens through the final norm and the
  unembedding), Neuronpedia's `pos_str`;
- stats: max activation and density (fraction of tokens it fires on).

The automatic label joins the commonest max-activating tokens and the top promoted tokens, e.g.
"bridge · Bridge · bridges → span, crossing". People then curate the labels that matter.
"""
from __future__ import annotations

import itertools
from collections import Counter
from typing import Iterable

import torch
from torch import Tensor

from chat.models import LoadedModel
from features.catalog import Feature
from features.dictionary import Dictionary
from features.harvest import residuals


def logit_lens(lm: LoadedModel, dictionary: Dictionary, top: int = 8, chunk: int = 256,
               allowed: Tensor | None = None) -> list[list[str]]:
    """Per feature, the `top` tokens its decoder direction promotes most; with `allowed` (V,)
    bool, only among those tokens (Gemma's 262k vocabulary is mostly scripts and fragments our
    English text never uses, and they crowd the raw logit lens)."""
    norm = lm.model.get_decoder().norm
    W_U = lm.model.get_output_embeddings().weight  # (V, d_model)
    tok = lm.tokenizer
    out: list[list[str]] = []
    with torch.inference_mode():
        for start in range(0, dictionary.d_sae, chunk):
            ids = list(range(start, min(start + chunk, dictionary.d_sae)))
            dirs = dictionary.directions(ids).to(W_U.device, W_U.dtype)  # (n, d)
            logits = norm(dirs.unsqueeze(0))[0] @ W_U.T  # (n, V)
            if allowed is not None:
                logits = logits.masked_fill(~allowed.to(logits.device), float("-inf"))
            for row in torch.topk(logits.float(), top, dim=-1).indices.tolist():
                out.append([tok.decode([t]) for t in row])
    return out


def _auto_label(examples: list[dict], promoted: list[str]) -> str:
    reads = Counter(ex["tokens"][ex["max_index"]].strip() for ex in examples)
    reads_text = " · ".join(t for t, _ in reads.most_common(3) if t) or "?"
    writes = ", ".join(t.strip() for t in promoted[:3] if t.strip())
    return f"{reads_text} → {writes}" if writes else reads_text


def label(lm: LoadedModel, dictionary: Dictionary, layer: int, sequences: Iterable[list[int]], *,
          max_tokens: int = 500_000, batch_size: int = 8, n_examples: int = 8, window: int = 8,
          progress: bool = True) -> dict[int, Feature]:
    """Stats, top examples, logit-lens tokens and an automatic label for every feature that fires."""
    from tqdm.auto import tqdm

    d_sae = dictionary.d_sae
    seqs: list[list[int]] = []
    top_vals = torch.zeros(d_sae, 0)  # (d_sae, ≤n) best activations so far
    top_refs = torch.zeros(d_sae, 0, dtype=torch.long)  # (d_sae, ≤n) global token index
    fired = torch.zeros(d_sae)
    tokens = 0
    stream = iter(sequences)
    bar = tqdm(total=max_tokens, unit="tok", disable=not progress, desc="label")
    while tokens < max_tokens:
        batch = list(itertools.islice(stream, batch_size))
        if not batch:
            break
        ids = torch.tensor(batch)  # (B, T)
        acts = dictionary.encode(residuals(lm, layer, ids)).acts.cpu()  # (B, T, d_sae)
        acts *= lm.content_mask(ids).unsqueeze(-1)  # BOS/special positions never count
        flat = acts.reshape(-1, d_sae)  # (B*T, d_sae)
        base = len(seqs) * ids.shape[1]
        seqs += batch
        fired += (flat > 0).sum(0)
        vals, refs = torch.topk(flat.T, min(n_examples, flat.shape[0]), dim=-1)  # (d_sae, n)
        top_vals, order = torch.topk(torch.cat([top_vals, vals], 1), min(n_examples, top_vals.shape[1] + vals.shape[1]), dim=-1)
        top_refs = torch.gather(torch.cat([top_refs, refs + base], 1), 1, order)
        n = int(lm.content_mask(ids).sum())
        tokens += n
        bar.update(n)
    bar.close()
    seen = torch.zeros(lm.model.get_output_embeddings().weight.shape[0], dtype=torch.bool)  # (V,)
    seen[torch.tensor([t for s in seqs for t in s])] = True
    seen[torch.tensor(sorted(set(lm.tokenizer.all_special_ids)))] = False
    promoted = logit_lens(lm, dictionary, allowed=seen)
    seq_len = len(seqs[0]) if seqs else 1
    tok = lm.tokenizer
    features: dict[int, Feature] = {}
    for i in range(d_sae):
        if fired[i] == 0:
            continue
        examples = []
        for v, ref in zip(top_vals[i].tolist(), top_refs[i].tolist()):
            if v <= 0:
                break
            s, pos = divmod(ref, seq_len)
            lo = max(1, pos - window)  # never show BOS
            examples.append({"tokens": [tok.decode([t]) for t in seqs[s][lo:pos + window + 1]],
                             "max_index": pos - lo, "activation": round(v, 3)})
        features[i] = Feature(i, _auto_label(examples, promoted[i]), float(top_vals[i, 0]),
                              float(fired[i]) / max(tokens, 1), examples=examples, top_tokens=promoted[i])
    return features
