"""What the dictionary read on a reply: per-token activations and the features that fired most.

Activations are read at layer L *before* this position's steering edit (the model's own state
given the steered context), recorded in the same forward passes that generated the reply.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
from torch import Tensor


class FeatureHit(NamedTuple):
    """One feature's summary over a reply.

    id:         feature index in the dictionary
    label:      its name in the catalog
    activation: its largest activation on any token (dictionary units)
    tokens:     on how many tokens it fired (activation > 0)
    relative:   activation / the feature's max activation on the labelling corpus (1 = its usual peak)
    """

    id: int
    label: str
    activation: float
    tokens: int
    relative: float


@dataclass
class Readout:
    tokens: list[str]  # (T,) the reply's tokens as text
    acts: Tensor  # (T, d_sae) float32 on CPU; zero where a feature is off

    def feature(self, i: int) -> list[float]:
        """Per-token activations of feature i over the reply."""
        return self.acts[:, i].tolist()

    def top(self, k: int, label: Callable[[int], str], max_acts: Tensor) -> list[FeatureHit]:
        """The k features that came closest to their usual peak on this reply (ties: most tokens).
        Ranking by relative activation keeps features with a large natural scale from crowding
        out the rest."""
        if self.acts.numel() == 0:
            return []
        peak = self.acts.max(dim=0).values  # (d_sae,)
        fired = (self.acts > 0).sum(dim=0)  # (d_sae,)
        relative = peak / max_acts.clamp_min(1e-6)  # (d_sae,)
        score = relative + fired.float() * 1e-6  # tie-break by count
        score[peak <= 0] = float("-inf")
        n = min(k, int((peak > 0).sum()))
        top = torch.topk(score, n).indices.tolist()
        return [
            FeatureHit(i, label(i), float(peak[i]), int(fired[i]), float(relative[i])) for i in top
        ]
