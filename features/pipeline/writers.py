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
import torch.nn.functional as F
from torch import Tensor

from chat.hooks import on_output
from chat.metrics import concept_token_ids
from features.pipeline.calibrate import NEUTRAL_PROMPTS
from features.pipeline.steerability import POSITIONS, output_scores, scored_prompts


class Writer(NamedTuple):
    feature: int
    attribution: float  # cosine of the decoder direction with the gradient of log P(concept tokens)
    lift: float  # measured: P(concept tokens) steered − unsteered, first reply positions


def concept_gradient(lm, layer: int, token_ids: Sequence[int], prompts: Sequence[str] = NEUTRAL_PROMPTS[:4]) -> Tensor:
    """(d,) gradient of mean log P(any of `token_ids`) at the first reply positions with respect
    to the output of layer `layer`, summed over content positions and averaged over prompts."""
    grad = torch.zeros(lm.d_model)
    for seq in scored_prompts(lm, prompts):
        ids = torch.tensor([seq], device=lm.device)  # (1, T)
        keep = lm.content_mask(ids)[0].cpu()  # (T,) steering never touches BOS
        seen: dict[str, Tensor] = {}

        def leaf(h: Tensor) -> Tensor:
            seen["h"] = h.detach().requires_grad_()
            return seen["h"]

        with torch.enable_grad(), on_output(lm.layers[layer], leaf):
            logits = lm.model(input_ids=ids, logits_to_keep=POSITIONS).logits[0].float()  # (P, V)
            logp = torch.log_softmax(logits, -1)[:, list(token_ids)].logsumexp(-1).mean()
            (g,) = torch.autograd.grad(logp, seen["h"])  # (1, T, d)
        grad += g[0].float().cpu()[keep].sum(0)
    return grad / len(prompts)


def attribution(engine, token_ids: Sequence[int], prompts: Sequence[str] = NEUTRAL_PROMPTS[:4]) -> Tensor:
    """(d_sae,) cosine of each decoder direction with `concept_gradient`."""
    grad = concept_gradient(engine.lm, engine.layer, token_ids, prompts)
    directions = engine.dictionary.directions(torch.arange(engine.dictionary.d_sae)).float().cpu()  # (F, d)
    return F.normalize(directions, dim=1) @ F.normalize(grad, dim=0)  # (F,)


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
