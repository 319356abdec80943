"""Recommended strengths: for every feature, the weakest strength that visibly changes the next
reply, so that a slider added for it starts where it does something (chat/ui/steer_state.py
`starting_strength` uses it where the feature has no measured band).

A feature is added (add mode, strength s in multiples of its max activation) on PROMPT, teacher-
forced on the unsteered greedy reply's first POSITIONS tokens; the reply changes visibly when the
greedy next token changes at half of those positions or more. Bisection over GRID (three
batched passes per feature) finds the lowest grid strength that changes the reply. A strength
that changes the reply by breaking it is no use to a person, so that strength must also keep
the reply fluent: the steered reply, generated with the chat's own settings, costs at most
chat.steer.concept.MAX_COST times the unsteered reply's perplexity (the concept search's rule);
if it does not, one grid step lower is tried. `recommended` is what passes both, or None. Stored
in features.json as `recommended`.

    python -m features recommend --dictionary assets/dictionary

The command saves after every 512 features and shows an ETA; run again, it resumes where it
stopped (`--again` measures everything anew). On 13k features the fluency check dominates: an
hour and more on 2 busy CPU cores.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from chat.steer.hooks import on_output
from chat.steer.prompt import build_prompt

GRID = (0.5, 1.0, 2.0, 4.0, 8.0)  # multiples of max activation; 2 first, then 1 or 4, then 0.5 or 8
PROMPT = "Tell me about your weekend."
POSITIONS = 6
MIN_CHANGED = 0.5  # share of positions whose greedy token changes


def changed(engine, seq: Sequence[int], features: Sequence[int], strengths: Sequence[float],
            batch_size: int = 64) -> list[float]:
    """Share of the last POSITIONS predictions of `seq` whose argmax changes when each feature is
    added at its strength (one row per feature)."""
    lm = engine.lm
    ids = torch.tensor([list(seq)], device=lm.device)  # (1, T)
    with torch.inference_mode():
        plain = lm.model(input_ids=ids, logits_to_keep=POSITIONS).logits[0].argmax(-1)  # (P,)
    keep = lm.content_mask(ids).unsqueeze(-1)  # (1, T, 1) never edit BOS
    out: list[float] = []
    for a in range(0, len(features), batch_size):
        batch = list(features[a:a + batch_size])
        scale = torch.tensor(strengths[a:a + batch_size], dtype=torch.float32) * engine.max_acts[batch]  # (B,)
        delta = (scale.unsqueeze(1) * engine.dictionary.directions(batch).float().cpu()).unsqueeze(1)  # (B, 1, d)

        def add(h: Tensor) -> Tensor:
            return h + (delta.to(h.device) * keep.to(h.device)).to(h.dtype)

        with torch.inference_mode(), on_output(lm.layers[engine.layer], add):
            logits = lm.model(input_ids=ids.expand(len(batch), -1), logits_to_keep=POSITIONS).logits  # (B, P, V)
        out += (logits.argmax(-1) != plain.to(logits.device)).float().mean(-1).tolist()
    return out


def recommend(engine, features: Sequence[int], progress: bool = True) -> dict[int, float | None]:
    """{feature: the lowest GRID strength that changes the reply, or None} (before the fluency
    check: `keep_fluent`)."""
    from tqdm.auto import tqdm

    seq = teacher(engine)
    at = {f: 2 for f in features}  # index into GRID being tried
    best: dict[int, float | None] = {f: None for f in features}
    lo, hi = {f: 0 for f in features}, {f: len(GRID) - 1 for f in features}
    bar = tqdm(total=3 * len(features), unit="feature", disable=not progress, desc="recommend")
    for _ in range(3):  # 5 grid points: three halvings
        todo = [f for f in features if lo[f] <= hi[f]]
        if not todo:
            break
        shares = changed(engine, seq, todo, [GRID[at[f]] for f in todo])
        for f, share in zip(todo, shares):
            if share >= MIN_CHANGED:
                best[f], hi[f] = GRID[at[f]], at[f] - 1
            else:
                lo[f] = at[f] + 1
            at[f] = (lo[f] + hi[f]) // 2 if lo[f] <= hi[f] else at[f]
        bar.update(len(todo))
    bar.close()
    return best


def fluent(engine, features: Sequence[int], strengths: Sequence[float], batch_size: int = 32) -> list[bool]:
    """Whether each feature, added at its strength, leaves the chat's reply to PROMPT fluent."""
    from chat.steer.batch import replies
    from chat.steer.concept import MAX_COST, SEARCH_TOKENS, fluency
    from chat.steer.settings import GenerationSettings
    from chat.steer.steering import Steering

    settings = GenerationSettings()  # what the app does with the slider
    (plain,) = fluency(engine, replies(engine, [PROMPT], None, SEARCH_TOKENS, settings))
    out: list[bool] = []
    for a in range(0, len(features), batch_size):
        rows = [Steering({f: s}) for f, s in zip(features[a:a + batch_size], strengths[a:a + batch_size])]
        costs = fluency(engine, replies(engine, [PROMPT] * len(rows), rows, SEARCH_TOKENS, settings))
        out += [c <= MAX_COST * plain for c in costs]
    return out


def keep_fluent(engine, found: dict[int, float | None]) -> dict[int, float | None]:
    """`found`'s strengths where they keep the reply fluent, else one grid step lower where that
    does (and still changes the reply), else None."""
    out = dict(found)
    todo = [f for f, s in found.items() if s is not None]
    ok = fluent(engine, todo, [found[f] for f in todo])
    lower = [f for f, good in zip(todo, ok) if not good and GRID.index(found[f]) > 0]
    for f, good in zip(todo, ok):
        if not good:
            out[f] = None
    if lower:
        seq = teacher(engine)
        steps = [GRID[GRID.index(found[f]) - 1] for f in lower]
        shares = changed(engine, seq, lower, steps)
        for f, s, share, good in zip(lower, steps, shares, fluent(engine, lower, steps)):
            if good and share >= MIN_CHANGED / 2:  # a gentler change, still visible
                out[f] = s
    return out


def teacher(engine) -> list[int]:
    """PROMPT (plain transcript) followed by the unsteered greedy reply's first POSITIONS - 1
    tokens: the last POSITIONS positions of it predict the reply's first POSITIONS tokens."""
    lm = engine.lm
    ids = list(build_prompt(lm.tokenizer, PROMPT, max_tokens=512, frame="plain").ids)
    with torch.inference_mode():
        gen = lm.model.generate(torch.tensor([ids], device=lm.device), max_new_tokens=POSITIONS - 1,
                                min_new_tokens=POSITIONS - 1, do_sample=False, pad_token_id=lm.tokenizer.eos_token_id)
    return gen[0].tolist()
