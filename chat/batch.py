"""Plain greedy replies (GenerationSettings.greedy(): the plain transcript, no repetition
handling) to several prompts in one batch, with one steering: for measurements (strength
sweeps, steering-vs-prompting tables), where many short replies are needed and streaming and
readout are not. Chat uses `chat.generate`, one reply at a time.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import Tensor
from transformers import StoppingCriteria, StoppingCriteriaList

from chat.hooks import attach
from chat.prompt import reply_length
from chat.steering import FeatureSteerer, Steering


class BatchReply(NamedTuple):
    prompt_ids: list[int]  # (P,) the prompt, BOS first
    token_ids: list[int]  # (T,) the reply, stop text and EOS excluded
    text: str


class _RowsDone(StoppingCriteria):
    """A row is done once its reply has ended (special token or stop string)."""

    def __init__(self, tokenizer, prompt_len: int, stops: tuple[str, ...]):
        self.tokenizer, self.prompt_len, self.stops = tokenizer, prompt_len, stops

    def __call__(self, input_ids: Tensor, scores: Tensor, **kwargs) -> Tensor:
        done = []
        for row in input_ids[:, self.prompt_len:].tolist():
            done.append(reply_length(self.tokenizer, row, self.stops, final=True) < len(row))
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def replies(engine, messages: Sequence, steering: Steering | None = None, max_new_tokens: int = 32) -> list[BatchReply]:
    """Greedy reply to each conversation in `messages`, all steered by `steering`."""
    lm, tok = engine.lm, engine.lm.tokenizer
    prompts = [engine.prompt(m, max_new_tokens, frame="plain") for m in messages]  # plain greedy, as measured
    width = max(len(p.ids) for p in prompts)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    # Left padding lines up every prompt's end; pad positions are special, so never steered.
    ids = torch.tensor([[pad] * (width - len(p.ids)) + list(p.ids) for p in prompts], device=lm.device)  # (B, W)
    mask = torch.tensor([[0] * (width - len(p.ids)) + [1] * len(p.ids) for p in prompts], device=lm.device)  # (B, W)
    steerer = FeatureSteerer(engine.dictionary, steering or Steering(), engine.max_acts)
    stops = prompts[0].stop_strings
    with torch.inference_mode(), attach(lm, engine.layer, steerer):
        out = lm.model.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                pad_token_id=pad, eos_token_id=lm.model.generation_config.eos_token_id,
                                stopping_criteria=StoppingCriteriaList([_RowsDone(tok, width, stops)]))
    result = []
    for p, row in zip(prompts, out[:, width:].tolist()):
        n = reply_length(tok, row, p.stop_strings, final=True)
        result.append(BatchReply(list(p.ids), row[:n], tok.decode(row[:n], skip_special_tokens=True).strip()))
    return result
