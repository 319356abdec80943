"""Replies to several prompts in one batch, without streaming or readout: for measurements
(strength sweeps, concept search, steering-vs-prompting tables), where many short replies are
needed. Chat uses `chat.steer.generate`, one reply at a time.

By default plain greedy (GenerationSettings.greedy(): the plain transcript, no repetition
handling), which the strength bands were measured with; concept search passes the chat's own
settings, so that what it measures is what the app will do. Each row may have its own steering.

The prompts of a batch usually share a long beginning (the chat frame's few-shot transcript,
135 of a search prompt's 146 tokens), and many rows share a steering. That beginning is
computed once per steering and its cache reused by every row (`_prefix_cache`): a concept
search's screen takes 10 s instead of 22 on 2 cores.
"""
from __future__ import annotations

import threading
from typing import NamedTuple, Sequence

import torch
from torch import Tensor
from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from chat.errors import Cancelled
from chat.steer.generate import decoding_processors
from chat.steer.settings import GenerationSettings
from chat.steer.hooks import attach
from chat.steer.prompt import reply_length
from chat.steer.steering import FeatureSteerer, Steering


class BatchReply(NamedTuple):
    prompt_ids: list[int]  # (P,) the prompt, BOS first
    token_ids: list[int]  # (T,) the reply, stop text and EOS excluded
    text: str


class _RowsDone(StoppingCriteria):
    """A row is done once its reply has ended (special token or stop string); every row, once
    `cancel` is set."""

    def __init__(self, tokenizer, prompt_len: int, stops: tuple[str, ...], cancel: threading.Event | None = None):
        self.tokenizer, self.prompt_len, self.stops, self.cancel = tokenizer, prompt_len, stops, cancel

    def __call__(self, input_ids: Tensor, scores: Tensor, **kwargs) -> Tensor:
        if self.cancel is not None and self.cancel.is_set():
            return torch.ones(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        done = []
        for row in input_ids[:, self.prompt_len:].tolist():
            done.append(reply_length(self.tokenizer, row, self.stops, final=True) < len(row))
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class RowSteerer:
    """One FeatureSteerer per batch row, for the `attach` hook: row r of every forward pass is
    steered by `steerers[r]` exactly as it would be alone.

    >>> import torch
    >>> from features.dictionary import Dictionary
    >>> d = Dictionary.random(d_in=4, d_sae=8, activation="relu", seed=0)
    >>> rows = RowSteerer([FeatureSteerer(d, Steering({1: s}), torch.ones(8)) for s in (0.0, 2.0)])
    >>> h = torch.zeros(2, 3, 4); out = rows(h, torch.ones(2, 3, dtype=torch.bool))
    >>> out[0].abs().sum().item(), torch.allclose(out[1, 0], 2 * d.directions([1])[0])
    (0.0, True)
    """

    def __init__(self, steerers: Sequence[FeatureSteerer]):
        if not steerers:
            raise ValueError("RowSteerer needs one steerer per row")
        self.steerers = list(steerers)
        self.dictionary = steerers[0].dictionary

    def __call__(self, h: Tensor, keep: Tensor) -> Tensor:
        """h: (B, T, d_in), keep: (B, T) with B = the number of steerers."""
        if all(s.steering.is_noop for s in self.steerers):
            return h
        return torch.cat([s(h[r:r + 1], keep[r:r + 1]) for r, s in enumerate(self.steerers)])


def replies(engine, messages: Sequence, steering: Steering | Sequence[Steering | None] | None = None,
            max_new_tokens: int = 32, settings: GenerationSettings | None = None,
            cancel: threading.Event | None = None) -> list[BatchReply]:
    """A reply to each conversation in `messages`, steered by `steering` (one for all, or one
    per row). `settings`: plain greedy unless given; with temperature 0 only (a sweep compares
    replies, so they must be reproducible); no_repeat_ngram guards each reply, not the
    conversation's earlier replies. `cancel`, once set, ends the batch within a step and raises
    chat.errors.Cancelled."""
    if cancel is not None and cancel.is_set():
        raise Cancelled("cancelled")
    settings = settings or GenerationSettings.greedy()
    if settings.temperature:
        raise ValueError("batched replies are greedy: temperature must be 0")
    lm, tok = engine.lm, engine.lm.tokenizer
    prompts = [engine.prompt(m, max_new_tokens, frame=settings.frame) for m in messages]
    width = max(len(p.ids) for p in prompts)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    # Sliding-window layers count cache slots, pads included: padding after the prefix would hide
    # real tokens from a window that the reply reaches past, so then no prefix is shared.
    window = getattr(lm.model.config.get_text_config(), "sliding_window", None)
    shared = _shared_prefix([p.ids for p in prompts]) if not window or width + max_new_tokens <= window else 0
    # Each row is the shared prefix, padding, then the rest of its prompt: every prompt ends at
    # `width`, and the prefix sits at the same positions in every row, so its keys and values
    # are computed once per steering (`_prefix_cache`). Pad positions are special: never steered.
    ids = torch.tensor([list(p.ids[:shared]) + [pad] * (width - len(p.ids)) + list(p.ids[shared:])
                        for p in prompts], device=lm.device)  # (B, W)
    mask = torch.tensor([[1] * shared + [0] * (width - len(p.ids)) + [1] * (len(p.ids) - shared)
                         for p in prompts], device=lm.device)  # (B, W)
    rows = [steering] * len(prompts) if steering is None or isinstance(steering, Steering) else list(steering)
    if len(rows) != len(prompts):
        raise ValueError(f"{len(rows)} steerings for {len(prompts)} messages")
    rows = [s or Steering() for s in rows]
    steerer = _steerer(engine, rows)
    stops = prompts[0].stop_strings
    processors = LogitsProcessorList(decoding_processors(settings, width, (), lm.device, lm.never_sampled))
    with torch.inference_mode():
        cache = _prefix_cache(engine, ids[:, :shared], rows) if shared else None
        with attach(lm, engine.layer, steerer):
            out = lm.model.generate(ids, attention_mask=mask, cache=cache, max_new_tokens=max_new_tokens,
                                    do_sample=False, pad_token_id=pad,
                                    eos_token_id=lm.model.generation_config.eos_token_id,
                                    logits_processor=processors,
                                    stopping_criteria=StoppingCriteriaList([_RowsDone(tok, width, stops, cancel)]))
    if cancel is not None and cancel.is_set():
        raise Cancelled("cancelled")
    result = []
    for p, row in zip(prompts, out[:, width:].tolist()):
        n = reply_length(tok, row, p.stop_strings, final=True)
        result.append(BatchReply(list(p.ids), row[:n], tok.decode(row[:n], skip_special_tokens=True).strip()))
    return result


def _steerer(engine, rows: Sequence[Steering]) -> FeatureSteerer | RowSteerer:
    """One steerer for all rows when they share a steering, else one per row."""
    if len(set(rows)) == 1:
        return FeatureSteerer(engine.dictionary, rows[0], engine.max_acts)
    return RowSteerer([FeatureSteerer(engine.dictionary, s, engine.max_acts) for s in rows])


def _shared_prefix(sequences: Sequence[Sequence[int]]) -> int:
    """How many leading tokens all `sequences` share, leaving each at least one of its own (the
    pass after the prefix must predict every row's first reply token)."""
    n = min(len(s) for s in sequences) - 1
    first = sequences[0]
    for s in sequences[1:]:
        n = next((i for i in range(n) if s[i] != first[i]), n)
    return max(n, 0)


def _prefix_cache(engine, prefix: Tensor, rows: Sequence[Steering]):
    """The key/value cache of the shared prefix (B, S) for every row, computed once per distinct
    steering: a prefix is steered the same in every row that has its steering (add and clamp
    are both causal), so the chat frame's few-shot transcript is not computed again per row."""
    distinct = list(dict.fromkeys(rows))
    with attach(engine.lm, engine.layer, _steerer(engine, distinct)):
        cache = engine.lm.model(input_ids=prefix[:len(distinct)], use_cache=True, logits_to_keep=1).cache
    cache.batch_select_indices(torch.tensor([distinct.index(s) for s in rows], device=prefix.device))
    return cache
