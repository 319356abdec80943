"""Recommended strengths: sweep a feature's strength and keep the band where its concept shows
up in replies to neutral prompts while the text stays fluent.

For each strength: greedy replies to NEUTRAL_PROMPTS (one batch), their concept rate (replies
mentioning a concept term) and fluency cost (perplexity of the steered reply under the unsteered
model over the unsteered reply's; chat/measure/metrics.py). The band is the lowest to the highest strength
with concept rate >= MIN_RATE and cost <= MAX_COST.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

from chat.measure import metrics
from chat.steer.batch import replies
from chat.steer.concept import NEUTRAL_PROMPTS
from chat.steer.steering import Steering

# In multiples of max activation. On the embedded dictionary concepts show from about 1 and
# text breaks down past about 3 (its max activations come from extreme contexts).
STRENGTHS = {"add": (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0), "clamp": (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)}
MIN_RATE = 0.5  # at least half the replies mention the concept
MAX_COST = 4.0  # greedy unsteered replies are unusually predictable, so allow 4x their perplexity


class SweepPoint(NamedTuple):
    strength: float
    concept_rate: float  # share of replies mentioning the concept
    fluency_cost: float  # geometric mean perplexity ratio (1 = as fluent as unsteered)
    score: float  # harmonic mean of the two (chat.measure.metrics.combined_score)
    samples: tuple[str, ...]  # the replies


def _perplexities(engine, rows) -> list[float]:
    return [metrics.perplexity(engine, r.prompt_ids, r.token_ids) for r in rows]


def sweep(engine, feature: int, mode: str, terms: Sequence[str], strengths: Sequence[float] | None = None,
          prompts: Sequence[str] = NEUTRAL_PROMPTS, max_new_tokens: int = 24, baseline=None) -> list[SweepPoint]:
    """Concept rate and fluency cost of steering `feature` at each strength.
    `baseline`: the unsteered (replies, perplexities) for these prompts, to share between sweeps."""
    plain, plain_ppl = baseline or unsteered(engine, prompts, max_new_tokens)
    points = []
    for s in strengths or STRENGTHS[mode]:
        rows = replies(engine, prompts, Steering({feature: s}, mode=mode), max_new_tokens)
        cost = metrics.fluency_cost(_perplexities(engine, rows), plain_ppl)
        rate = metrics.concept_rate([r.text for r in rows], terms)
        points.append(SweepPoint(s, rate, cost, metrics.combined_score(rate, cost), tuple(r.text for r in rows)))
    return points


def unsteered(engine, prompts: Sequence[str] = NEUTRAL_PROMPTS, max_new_tokens: int = 24):
    rows = replies(engine, prompts, None, max_new_tokens)
    return rows, _perplexities(engine, rows)


def band(points: Sequence[SweepPoint], min_rate: float = MIN_RATE, max_cost: float = MAX_COST) -> list[float] | None:
    """[low, high]: from the lowest strength that passes both bounds up to the last one before a
    strength that fails (a band with a failing strength inside would be no recommendation);
    None when none passes. `points` in increasing strength."""
    ok = [p.concept_rate >= min_rate and p.fluency_cost <= max_cost for p in points]
    if not any(ok):
        return None
    first = ok.index(True)
    last = first
    while last + 1 < len(ok) and ok[last + 1]:
        last += 1
    return [points[first].strength, points[last].strength]
