"""Which features *write* a concept? Find candidates by gradient, confirm them by steering.

Reading a concept (firing on "snow") and writing it (making the model say "snow" when added)
are different properties, and only writers make useful sliders. Testing every feature by
steering costs one batched forward pass per 32 features per prompt; a gradient ranks all of
them at once:

    attribution[f] = cos(d_f, Σ_pos ∂ log P(concept tokens) / ∂h_pos)

d_f is the feature's decoder direction in the residual at layer L, the gradient is summed over
the content positions of neutral prompts (that is where steering adds it), and log P is taken
at the first reply positions. Cosine, not the first-order lift at max activation: steering
strengths are far outside the linear regime, and the lift ranks first the few features with
outsized activations (attention-sink directions) whatever the concept. The top candidates are
then confirmed with `output_scores` at a real strength.

    python -m features writers --dictionary assets/dictionary --terms winter,snow,cold
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import Tensor

from chat.steer.concept import NEUTRAL_PROMPTS, concept_gradient as gradient, cosines
from chat.measure.metrics import concept_token_ids
from features.pipeline.steerability import POSITIONS, output_scores, scored_prompts


class Writer(NamedTuple):
    feature: int
    attribution: float  # cosine of the decoder direction with the gradient of log P(concept tokens)
    lift: float  # measured: P(concept tokens) steered − unsteered, first reply positions


def concept_gradient(lm, layer: int, token_ids: Sequence[int], prompts: Sequence[str] = NEUTRAL_PROMPTS[:4]) -> Tensor:
    """(d,) `chat.steer.concept.concept_gradient` at the first reply positions of plain greedy replies
    to `prompts` (as steerability scores them)."""
    return gradient(lm, layer, scored_prompts(lm, prompts), token_ids, POSITIONS)


def attribution(engine, token_ids: Sequence[int], prompts: Sequence[str] = NEUTRAL_PROMPTS[:4]) -> Tensor:
    """(d_sae,) cosine of each decoder direction with `concept_gradient`."""
    return cosines(engine.dictionary, concept_gradient(engine.lm, engine.layer, token_ids, prompts))


def find_writers(engine, terms: Sequence[str], *, top: int = 12, strength: float = 2.0,
                 prompts: Sequence[str] = NEUTRAL_PROMPTS[:4], also: Sequence[int] = ()) -> list[Writer]:
    """The `top` features by attribution to `terms`, and the features in `also` (say, the ones
    that read the concept), ranked by their measured lift when added at `strength` × max
    activation."""
    token_ids = concept_token_ids(engine.lm.tokenizer, terms)
    if not token_ids:
        raise ValueError(f"no tokens for terms {list(terms)}")
    scores = attribution(engine, token_ids, prompts)
    live = torch.tensor([engine.catalog.max_activation(i) is not None for i in range(len(scores))])
    ranked = scores.masked_fill(~live, float("-inf")).topk(top).indices.tolist()
    ranked += [f for f in also if f not in ranked]
    lifts = output_scores(engine.lm, engine.dictionary, engine.layer, engine.max_acts,
                          {f: token_ids for f in ranked}, strength=strength, prompts=prompts, progress=False)
    writers = [Writer(f, round(float(scores[f]), 4), lifts.get(f, 0.0)) for f in ranked]
    return sorted(writers, key=lambda w: -w.lift)
