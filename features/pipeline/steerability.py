"""Output scores: does amplifying a feature make the model *say* what the feature names?

A feature can read a concept without writing it (Neuronpedia's input vs. output features), and
only writers are worth a steering slider. For every feature we add it (add mode, a fixed
strength) on a few neutral prompts and measure, teacher-forced on the unsteered reply's first
tokens, how much probability moves onto its target tokens: the first tokens of its logit-lens
words and of its label's words.

    steerability = mean over prompts and positions of P_steered(targets) − P_plain(targets)

in 0..1 (clipped at 0): "amplified, it makes the tokens it names this much more likely". Rows of
a batch are different features on the same prompt, so one forward pass scores many features.
"""
from __future__ import annotations

import re
from typing import Sequence

import torch
from torch import Tensor

from chat.steer.hooks import on_output
from chat.runtime.models import LoadedModel
from chat.steer.prompt import build_prompt
from chat.steer.concept import NEUTRAL_PROMPTS
from features.dictionary import Dictionary

STRENGTH = 2.0  # multiples of max activation: where curated writers show their concept, before text breaks (3-4x)
POSITIONS = 4  # reply positions scored per prompt: the first reply token and three after it
_WORD = re.compile(r"[A-Za-z]{3,}")
_STOP = {"the", "and", "for", "with", "that", "this", "from", "are", "was", "not", "but", "you", "all"}


def target_words(label: str, top_tokens: Sequence[str], n_tokens: int = 5) -> list[str]:
    """Words a feature names: its label's words (after "→" for automatic "reads → writes"
    labels) and its top logit-lens tokens."""
    writes = label.split("→", 1)[1] if "→" in label else label
    words = [w for w in _WORD.findall(writes) if w.lower() not in _STOP]
    words += [t.strip() for t in top_tokens[:n_tokens]
              if _WORD.fullmatch(t.strip() or "-") and t.strip().lower() not in _STOP]
    return list(dict.fromkeys(words))


def scored_prompts(lm: LoadedModel, prompts: Sequence[str]) -> list[list[int]]:
    """Each prompt followed by the unsteered greedy reply's first POSITIONS - 1 tokens."""
    out = []
    for text in prompts:
        ids = list(build_prompt(lm.tokenizer, text, max_tokens=512, frame="plain").ids)
        with torch.inference_mode():
            gen = lm.model.generate(torch.tensor([ids], device=lm.device), max_new_tokens=POSITIONS - 1,
                                    do_sample=False, pad_token_id=lm.tokenizer.eos_token_id)
        out.append(gen[0].tolist())
    return out


def output_scores(lm: LoadedModel, dictionary: Dictionary, layer: int, max_acts: Tensor,
                  targets: dict[int, list[int]], *, strength: float = STRENGTH,
                  prompts: Sequence[str] = NEUTRAL_PROMPTS[:4], batch_size: int = 32,
                  progress: bool = True) -> dict[int, float]:
    """{feature id: steerability} for the features in `targets` ({id: target token ids})."""
    from tqdm.auto import tqdm

    features = [f for f, t in targets.items() if t]
    sequences = scored_prompts(lm, prompts)
    scores = {f: 0.0 for f in features}
    bar = tqdm(total=len(features) * len(sequences), unit="feature", disable=not progress, desc="steerability")
    for seq in sequences:
        ids = torch.tensor([seq], device=lm.device)  # (1, T)
        with torch.inference_mode():
            plain = torch.softmax(lm.model(input_ids=ids, logits_to_keep=POSITIONS).logits[0].float(), -1)  # (P, V)
        keep = lm.content_mask(ids).unsqueeze(-1)  # (1, T, 1) never edit BOS
        for start in range(0, len(features), batch_size):
            batch = features[start:start + batch_size]
            delta = (strength * max_acts[batch].unsqueeze(1) * dictionary.directions(batch).float())  # (B, d)
            delta = delta.unsqueeze(1)  # (B, 1, d)

            def add(h: Tensor) -> Tensor:
                return h + (delta.to(h.device) * keep.to(h.device)).to(h.dtype)

            rows = ids.expand(len(batch), -1)  # (B, T)
            with torch.inference_mode(), on_output(lm.layers[layer], add):
                steered = torch.softmax(lm.model(input_ids=rows, logits_to_keep=POSITIONS).logits.float(), -1)  # (B, P, V)
            width = max(len(targets[f]) for f in batch)
            index = torch.zeros(len(batch), width, dtype=torch.long)  # (B, K) padded target ids
            valid = torch.zeros(len(batch), width, dtype=torch.bool)
            for r, f in enumerate(batch):
                index[r, : len(targets[f])] = torch.tensor(targets[f])
                valid[r, : len(targets[f])] = True
            index, valid = index.to(steered.device), valid.to(steered.device)
            p_steer = (steered.gather(2, index.unsqueeze(1).expand(-1, POSITIONS, -1)) * valid.unsqueeze(1)).sum(-1)  # (B, P)
            p_plain = (plain[:, index] * valid).sum(-1).T  # (B, P)
            lift = (p_steer - p_plain).mean(-1).tolist()  # (B,)
            for f, value in zip(batch, lift):
                scores[f] += value / len(sequences)
            bar.update(len(batch))
    bar.close()
    return {f: round(max(0.0, s), 4) for f, s in scores.items()}
