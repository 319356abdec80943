"""Local steering metrics: does a steered reply talk about the concept, and what does it cost?

- concept rate: share of replies that mention a concept term (whole words, any case, plurals)
- concept log-prob lift: how much more likely the model makes the concept's tokens, measured on
  the *unsteered* reply (teacher-forced), steered minus unsteered, in nats per position
- fluency cost: perplexity of the steered reply under the unsteered model, as a ratio to the
  unsteered reply's perplexity (1 = as fluent as the model on its own)
- score: harmonic mean of concept rate and fluency (1 / cost, capped at 1), in the spirit of
  AxBench; zero when either is zero, so a concept bought with gibberish scores nothing.
"""
from __future__ import annotations

import math
import re
from typing import Iterable, Sequence

import torch
from torch import Tensor

from chat.steer.hooks import attach
from chat.steer.steering import FeatureSteerer, Steering


PLURALS = ("s", "es")


def term_pattern(terms: Iterable[str], endings: Sequence[str] = PLURALS) -> re.Pattern:
    """Whole-word, case-insensitive match of any term, with any one of `endings` (plurals by
    default: "dog" finds "Dogs")."""
    words = sorted({t.strip().lower() for t in terms if t and t.strip()}, key=len, reverse=True)
    if not words:
        raise ValueError("a concept needs at least one term")
    tail = "|".join(re.escape(e) for e in endings)
    return re.compile(r"\b(?:" + "|".join(re.escape(w) for w in words) + rf")(?:{tail})?\b", re.IGNORECASE)


def mentions(text: str, terms: Iterable[str]) -> bool:
    return term_pattern(terms).search(text) is not None


def concept_rate(texts: Sequence[str], terms: Iterable[str], endings: Sequence[str] = PLURALS) -> float:
    """Share of texts that mention any of `terms` (`term_pattern`)."""
    if not texts:
        return 0.0
    pattern = term_pattern(terms, endings)
    return sum(pattern.search(t) is not None for t in texts) / len(texts)


def concept_token_ids(tokenizer, terms: Iterable[str], bare: bool = True) -> list[int]:
    """First token of each term as a word start, in lower, Title and as-given case; with `bare`
    also without the leading space (a reply's first word, or "snow" in "snowfall")."""
    ids: set[int] = set()
    for term in terms:
        for form in {term, term.lower(), term.capitalize()}:
            for text in (" " + form, form) if bare else (" " + form,):
                tokens = tokenizer.encode(text, add_special_tokens=False)
                if tokens:
                    ids.add(tokens[0])
    return sorted(ids)


def reply_logprobs(engine, prompt_ids: Sequence[int], reply_ids: Sequence[int],
                   steering: Steering | None = None) -> Tensor:
    """(T, V) log-probabilities the model (steered or not) gives at each reply position,
    teacher-forced on `reply_ids`; row t predicts reply_ids[t]."""
    lm = engine.lm
    ids = torch.tensor([list(prompt_ids) + list(reply_ids)], device=lm.device)  # (1, P+T)
    steerer = FeatureSteerer(engine.dictionary, steering or Steering(), engine.max_acts)
    with torch.inference_mode(), attach(lm, engine.layer, steerer):
        # The last T+1 positions: position P-1 predicts reply_ids[0], ..., the final one nothing.
        logits = lm.model(input_ids=ids, use_cache=False, logits_to_keep=len(reply_ids) + 1).logits
    return torch.log_softmax(logits[0, :-1].float(), dim=-1)  # (T, V)


def perplexity(engine, prompt_ids: Sequence[int], reply_ids: Sequence[int]) -> float:
    """Perplexity of a reply under the unsteered model (inf for an empty reply: nothing said)."""
    if not reply_ids:
        return float("inf")
    lp = reply_logprobs(engine, prompt_ids, reply_ids)  # (T, V)
    nll = -lp.gather(1, torch.tensor(list(reply_ids), device=lp.device).unsqueeze(1)).mean()
    return float(torch.exp(nll))


def perplexities(engine, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], batch_size: int = 8) -> list[float]:
    """`perplexity` of many (prompt ids, reply ids) pairs, batched (right-padded, so positions
    are the model's own); inf for an empty reply."""
    lm = engine.lm
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    out = [float("inf")] * len(pairs)
    todo = [i for i, (_, r) in enumerate(pairs) if r]
    for a in range(0, len(todo), batch_size):
        rows = [(list(pairs[i][0]), list(pairs[i][1])) for i in todo[a:a + batch_size]]
        width = max(len(p) + len(r) for p, r in rows)
        first = min(len(p) for p, _ in rows) - 1  # the earliest position that predicts a reply token
        ids = torch.tensor([p + r + [pad] * (width - len(p) - len(r)) for p, r in rows], device=lm.device)  # (B, W)
        mask = torch.tensor([[1] * (len(p) + len(r)) + [0] * (width - len(p) - len(r)) for p, r in rows],
                            device=lm.device)  # (B, W)
        with torch.inference_mode():
            logits = lm.model(input_ids=ids, attention_mask=mask, use_cache=False,
                              logits_to_keep=width - first).logits  # (B, W - first, V)
        for k, (i, (p, r)) in enumerate(zip(todo[a:a + batch_size], rows)):
            lp = torch.log_softmax(logits[k, len(p) - 1 - first:len(p) - 1 - first + len(r)].float(), -1)  # (R, V)
            nll = -lp.gather(1, torch.tensor(r, device=lp.device).unsqueeze(1)).mean()
            out[i] = float(torch.exp(nll))
    return out


def concept_logprob(logprobs: Tensor, token_ids: Sequence[int]) -> float:
    """Mean over positions of log P(next token is a concept token)."""
    if logprobs.shape[0] == 0:
        return float("nan")
    return float(torch.logsumexp(logprobs[:, list(token_ids)], dim=-1).mean())


def fluency_cost(steered_ppl: Sequence[float], plain_ppl: Sequence[float]) -> float:
    """Geometric mean over replies of steered / unsteered perplexity; inf when any is not finite
    (an empty reply says nothing)."""
    logs = [math.log(p / q) if math.isfinite(p) and math.isfinite(q) else math.inf
            for p, q in zip(steered_ppl, plain_ppl)]
    return math.exp(sum(logs) / len(logs))


def fluency_score(cost: float) -> float:
    """1 when the steered reply is as fluent as the unsteered one (or more), falling as 1/cost."""
    if not cost > 0 or cost != cost:
        return 0.0
    return min(1.0, 1.0 / cost)


def combined_score(rate: float, cost: float) -> float:
    """Harmonic mean of concept rate and fluency score; 0 when either is 0."""
    f = fluency_score(cost)
    return 0.0 if rate <= 0 or f <= 0 else 2 * rate * f / (rate + f)
