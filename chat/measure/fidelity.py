"""Does a decode path compute what the full-precision model computes? Perplexity and the
dictionary's FVU on held-out text, read the way a chat reads them: one token at a time.

Teacher forcing with a cache: the text's tokens are fed one per forward pass, as decoding
feeds them, so the fast path's single-row int8 kernels (chat/runtime/quant.py) produce every logit and
every residual measured here; a whole-text forward pass would take the prompt route
(full-precision weights) and measure nothing. The residuals of the dictionary's layer are
encoded and decoded again for the FVU, as the readout encodes them.

The text was written for this benchmark (prose, dialogue, figures, code) and is in no training
or calibration set of ours.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from chat.steer.hooks import on_output

HELDOUT_TEXT = (
    "The ferry left the harbour a little after six, while the fog still sat low on the water. "
    "Most of the passengers stayed inside with their coffee, but an old man in a green coat stood "
    "at the rail and counted the buoys as they slid past. He had made the crossing every week for "
    "thirty years, he told anyone who asked, and he had never once seen the island before the "
    "bell rang.\n\n"
    "\"Do you ever get tired of it?\" a girl asked him.\n"
    "\"Of the sea? No. Of the timetable, often.\"\n\n"
    "In 2019 the town council voted 7 to 2 to replace the old pier, which had cost about "
    "£40,000 a year to maintain. The new one opened in March 2021, eleven weeks late and 18% "
    "over budget, and fishermen still argue about whether the concrete is uglier than the rot.\n\n"
    "To keep bread fresh for longer, store it cut side down on a wooden board rather than in the "
    "fridge; the cold speeds up staling. A loaf that has gone hard can be revived: run it briefly "
    "under the tap and bake it for ten minutes at 180 degrees.\n\n"
    "def median(values):\n"
    "    ordered = sorted(values)\n"
    "    middle = len(ordered) // 2\n"
    "    if len(ordered) % 2:\n"
    "        return ordered[middle]\n"
    "    return (ordered[middle - 1] + ordered[middle]) / 2\n\n"
    "Volcanoes form where magma reaches the surface, most often along the edges of tectonic "
    "plates. Some, like those of Hawaii, sit above hot spots far from any plate boundary, and the "
    "chain of islands records the plate sliding slowly over the plume for millions of years.\n\n"
    "User: Can you recommend a book for a long train journey?\n"
    "Assistant: Try a collection of short stories, so you can stop at any station without losing "
    "the thread. If you like mysteries, an Agatha Christie novel is hard to put down.\n"
)


class Fidelity(NamedTuple):
    perplexity: float  # exp(mean cross-entropy) of the text's next tokens, decoded one at a time
    fvu: float  # the dictionary's fraction of variance unexplained on those positions' residuals
    tokens: int  # positions scored


def decode_fidelity(lm, dictionary, layer: int, text: str = HELDOUT_TEXT, max_tokens: int = 512) -> Fidelity:
    """Perplexity and FVU of `lm` on `text`, fed token by token with a cache."""
    ids = lm.tokenizer(text).input_ids[:max_tokens]
    x = torch.tensor([ids], device=lm.device)  # (1, T)
    residuals: list[torch.Tensor] = []
    nll = 0.0
    with torch.inference_mode(), on_output(lm.layers[layer], lambda h: residuals.append(h[0, -1].float().cpu())):
        out = lm.model(input_ids=x[:, :1], use_cache=True)
        for t in range(1, len(ids)):
            logp = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
            nll -= logp[ids[t]].item()
            out = lm.model(input_ids=x[:, t:t + 1], cache=out.cache, use_cache=True)
    acts = torch.stack(residuals[1:])  # (T-1, d): BOS's residual is not read out, as in chat
    with torch.inference_mode():
        recon = dictionary.decode(dictionary.encode(acts.to(dictionary.device)).acts).float().cpu()
    fvu = float(((acts - recon) ** 2).sum() / ((acts - acts.mean(0)) ** 2).sum())
    return Fidelity(math.exp(nll / (len(ids) - 1)), fvu, len(ids) - 1)
