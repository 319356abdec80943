"""Generating one reply with steering and readout, whole or streamed.

`generate(...)` runs `model.generate` inside the scoped hooks (chat/steer/hooks.py) and returns a
`Reply`. `ReplyStream` runs the same function in a worker thread and yields text as tokens
arrive; an error in the worker is re-raised in the reader instead of leaving it hanging, and a
reader that gets no token for `timeout` seconds stops the worker and raises.

Sampling never touches torch's global RNG: temperature > 0 adds Gumbel noise from a generator
seeded per call before an argmax, which samples exactly softmax(logits / T) and keeps two
concurrent requests with the same seed reproducible.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, StoppingCriteria
from transformers import StoppingCriteriaList, TopPLogitsWarper
from transformers.generation.streamers import BaseStreamer

from chat.errors import GenerationError
from chat.steer.hooks import Recorder, StopForward, attach
from chat.runtime.models import LoadedModel
from chat.steer.prompt import Prompt, reply_length
from chat.steer.settings import GenerationSettings
from chat.steer.readout import FeatureHit, Readout
from chat.steer.steering import FeatureSteerer, Steering




@dataclass
class Reply:
    text: str
    token_ids: list[int]  # (T,) the reply's tokens, stop text and EOS excluded
    tokens: list[str]  # (T,) each token as text
    readout: Readout  # per-token dictionary activations
    top_features: list[FeatureHit]
    steering: Steering
    finish_reason: str  # "stop" (end of turn), "length" (max_new_tokens), "cancelled"
    prompt_tokens: int
    dropped_turns: int = 0  # older turns left out to fit the context window
    clipped_tokens: int = 0
    warnings: list[str] = field(default_factory=list)


class _GumbelSampler(LogitsProcessor):
    """argmax(logits/T + Gumbel noise) ~ softmax(logits/T), from a per-call generator."""

    def __init__(self, temperature: float, seed: int, device: torch.device):
        self.temperature = temperature
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        u = torch.rand(scores.shape, generator=self.generator, device=scores.device).clamp_(1e-10, 1.0)
        return scores.float() / self.temperature - torch.log(-torch.log(u))  # (B, V)


class _RefuseNaN(LogitsProcessor):
    """A clear error instead of sampling from NaN logits, which steering far beyond a feature's
    range can cause (an overflow in some later layer); argmax over NaN would pick token 0."""

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        if scores.amax().isnan():  # max propagates NaN: one pass, no mask
            raise GenerationError("the model's output became NaN (the steering is too strong for this model); "
                                  "lower the strength")
        return scores


class _NeverSample(LogitsProcessor):
    """Bans tokens that are never reply text (LoadedModel.never_sampled: padding, BOS, unused
    slots, image markers), which strong steering can otherwise make the likeliest.

    >>> _NeverSample(torch.tensor([1]))(torch.tensor([[0]]), torch.tensor([[1.0, 2.0, 0.5]])).tolist()
    [[1.0, -inf, 0.5]]
    """

    def __init__(self, ids: Tensor):
        if ids.dim() != 1:
            raise ValueError(f"ids must be a 1-D tensor of token ids, got shape {tuple(ids.shape)}")
        self.ids = ids.long()

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        return scores.index_fill(1, self.ids.to(scores.device), float("-inf"))


class _ReplyRepetitionPenalty(LogitsProcessor):
    """CTRL's repetition penalty (positive logits divided by `penalty`, negative multiplied) on
    the tokens the reply has generated so far, not the prompt's.

    >>> p = _ReplyRepetitionPenalty(prompt_len=1, penalty=2.0)
    >>> p(torch.tensor([[0, 1]]), torch.tensor([[4.0, 4.0, -4.0]])).tolist()
    [[4.0, 2.0, -4.0]]
    """

    def __init__(self, prompt_len: int, penalty: float):
        if not penalty >= 1.0:
            raise ValueError(f"penalty must be at least 1, got {penalty}")
        self.prompt_len, self.penalty = prompt_len, penalty

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        reply = input_ids[:, self.prompt_len:]  # (B, t)
        if reply.shape[1] == 0:
            return scores
        seen = scores.gather(1, reply)  # (B, t)
        seen = torch.where(seen < 0, seen * self.penalty, seen / self.penalty)
        return scores.scatter(1, reply, seen)


class _NoRepeatNGram(LogitsProcessor):
    """Bans the tokens that would complete an n-gram the reply already holds, or one of the
    conversation's earlier replies (`history`: their token ids), so that neither a reply nor a
    conversation goes round in circles. The rest of the prompt may share n-grams with the
    reply: a reply may quote the question.

    >>> p = _NoRepeatNGram(prompt_len=0, n=2)
    >>> p(torch.tensor([[5, 6, 5]]), torch.zeros(1, 8))[0, 6].item()
    -inf
    >>> _NoRepeatNGram(prompt_len=1, n=2, history=[[4, 7]])(torch.tensor([[0, 4]]), torch.zeros(1, 8))[0, 7].item()
    -inf
    """

    def __init__(self, prompt_len: int, n: int, history: Sequence[Sequence[int]] = ()):
        if n < 2:
            raise ValueError(f"n must be at least 2, got {n}")
        self.prompt_len, self.n = prompt_len, n
        self.seen: dict[tuple[int, ...], set[int]] = {}  # (n-1)-gram -> tokens that followed it
        for ids in history:
            for i in range(len(ids) - n + 1):
                self.seen.setdefault(tuple(ids[i:i + n - 1]), set()).add(ids[i + n - 1])

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        scores = scores.clone()
        k = self.n - 1
        for row, ids in enumerate(input_ids[:, self.prompt_len:].tolist()):
            if len(ids) < k:
                continue
            prefix = ids[len(ids) - k:]
            banned = set(self.seen.get(tuple(prefix), ()))
            banned.update(ids[i + k] for i in range(len(ids) - k) if ids[i:i + k] == prefix)
            scores[row, list(banned)] = float("-inf")
        return scores


class _StopStrings(StoppingCriteria):
    def __init__(self, tokenizer, prompt_len: int, stops: tuple[str, ...]):
        self.tokenizer, self.prompt_len, self.stops = tokenizer, prompt_len, stops

    def __call__(self, input_ids: Tensor, scores: Tensor, **kwargs) -> Tensor:
        reply = input_ids[0, self.prompt_len:]
        tail = self.tokenizer.decode(reply[-16:], skip_special_tokens=True)  # the cheap test, every step
        done = any(s in tail for s in self.stops)
        if done:  # the exact rule (a blank line before any text does not end a reply)
            ids = reply.tolist()
            done = reply_length(self.tokenizer, ids, self.stops, final=True) < len(ids)
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


class _Cancelled(StoppingCriteria):
    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: Tensor, scores: Tensor, **kwargs) -> Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def decoding_processors(settings: GenerationSettings, prompt_len: int, history: Sequence[Sequence[int]] = (),
                        device: torch.device | str = "cpu", never: Tensor | None = None) -> list[LogitsProcessor]:
    """What `settings` adds to the model's logits, in order, for prompts of `prompt_len` tokens
    (left-padded to it in a batch) and a conversation whose earlier replies are `history`;
    `never`: token ids no reply samples."""
    out: list[LogitsProcessor] = [_NeverSample(never)] if never is not None and len(never) else []
    if settings.repetition_penalty > 1.0:
        out.append(_ReplyRepetitionPenalty(prompt_len, settings.repetition_penalty))
    if settings.no_repeat_ngram:
        out.append(_NoRepeatNGram(prompt_len, settings.no_repeat_ngram, history))
    if settings.temperature > 0:
        if settings.top_p < 1.0:
            out.append(TopPLogitsWarper(settings.top_p))
        out.append(_GumbelSampler(settings.temperature, settings.seed, device))
    return out


def generate(
    lm: LoadedModel,
    layer: int,
    steerer: FeatureSteerer,
    prompt: Prompt,
    settings: GenerationSettings,
    label: Callable[[int], str],
    max_acts: Tensor,
    *,
    streamer: BaseStreamer | None = None,
    cancel: threading.Event | None = None,
    top_k: int = 10,
) -> Reply:
    """One steered reply to `prompt`, with the readout of every reply token."""
    tok = lm.tokenizer
    cancel = cancel or threading.Event()
    prompt_len = len(prompt.ids)
    input_ids = torch.tensor([prompt.ids], device=lm.device)  # (1, T)
    history = [prompt.ids[a:b] for a, b in prompt.replies]
    processors = LogitsProcessorList([_RefuseNaN(), *decoding_processors(settings, prompt_len, history, lm.device,
                                                                               lm.never_sampled)])
    criteria = StoppingCriteriaList([_Cancelled(cancel)])
    if prompt.stop_strings:
        criteria.append(_StopStrings(tok, prompt_len, prompt.stop_strings))
    config = GenerationConfig(
        max_new_tokens=settings.max_new_tokens,
        do_sample=False,
        eos_token_id=lm.model.generation_config.eos_token_id,
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
        return_dict_in_generate=True,
    )
    recorder = Recorder(start=prompt_len)
    with torch.inference_mode(), attach(lm, layer, steerer, recorder) as hooks:
        out = lm.model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            generation_config=config,
            logits_processor=processors,
            stopping_criteria=criteria,
            streamer=streamer,
        )
        generated = out.sequences[0, prompt_len:].tolist()
        n = reply_length(tok, generated, prompt.stop_strings, final=True)
        if n == len(generated) and n > 0:
            # The last reply token was never fed back through the model; one cached step reads it.
            # It stops at layer L: the layers above and the LM head (more work than all the
            # layers at Gemma 3's 262k vocabulary) would only make logits nobody reads.
            hooks.stop_after = True
            try:
                lm.model(input_ids=out.sequences[:, -1:], cache=out.cache, use_cache=True, logits_to_keep=1)
            except StopForward:
                pass
    ids = generated[:n]
    if cancel.is_set():
        reason = "cancelled"
    elif n == len(generated) and len(generated) >= settings.max_new_tokens:
        reason = "length"
    else:
        reason = "stop"
    readout = Readout([tok.decode([t]) for t in ids], recorder.dense(n, steerer.dictionary.d_sae))
    return Reply(
        text=tok.decode(ids, skip_special_tokens=True).strip(),
        token_ids=ids,
        tokens=readout.tokens,
        readout=readout,
        top_features=readout.top(top_k, label, max_acts),
        steering=steerer.steering,
        finish_reason=reason,
        prompt_tokens=prompt_len,
        dropped_turns=prompt.dropped_turns,
        clipped_tokens=prompt.clipped_tokens,
    )


_END = object()


class _TokenStreamer(BaseStreamer):
    """Passes generated token ids to the reader through a queue (the prompt, sent first, is
    skipped). Token ids rather than text, so the reader can apply the stop rule exactly as the
    final reply does (see `reply_length`)."""

    def __init__(self):
        self.queue: queue.Queue = queue.Queue()
        self.prompt_seen = False

    def put(self, value: Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        for t in value.reshape(-1).tolist():
            self.queue.put(t)

    def end(self) -> None:
        self.queue.put(_END)


class ReplyStream:
    """Iterate for text deltas as the reply is generated; then `.reply` holds the full Reply.

    ''.join(stream) == stream.reply.text. `stop()` ends generation early (the worker checks
    between tokens), e.g. when a browser user presses stop.
    """

    def __init__(self, run: Callable[[BaseStreamer, threading.Event], Reply], tokenizer,
                 stop_strings: tuple[str, ...], timeout: float):
        self._run, self._tok, self._stops, self._timeout = run, tokenizer, stop_strings, timeout
        self._cancel = threading.Event()
        self.reply: Reply | None = None
        self._error: BaseException | None = None

    def stop(self) -> None:
        self._cancel.set()

    def _work(self, streamer: _TokenStreamer) -> None:
        try:
            self.reply = self._run(streamer, self._cancel)
        except BaseException as e:  # handed to the reader, which re-raises it
            self._error = e
        finally:
            streamer.end()

    def _visible(self, ids: list[int]) -> str:
        n = reply_length(self._tok, ids, self._stops, final=False)
        text = self._tok.decode(ids[:n], skip_special_tokens=True).strip()
        return text.rstrip("\ufffd")  # a character whose UTF-8 bytes are not all here yet

    def __iter__(self) -> Iterator[str]:
        streamer = _TokenStreamer()
        worker = threading.Thread(target=self._work, args=(streamer,), daemon=True, name="steerchat-generate")
        worker.start()
        ids: list[int] = []
        shown = ""
        try:
            while True:
                try:
                    item = streamer.queue.get(timeout=self._timeout)
                except queue.Empty:
                    raise GenerationError(f"no token for {self._timeout:g} s; generation stopped") from None
                if item is _END:
                    break
                ids.append(item)
                text = self._visible(ids)
                if len(text) > len(shown) and text.startswith(shown):
                    yield text[len(shown):]
                    shown = text
            worker.join()
            if self._error is not None:
                raise self._error
            final = self.reply.text
            if final.startswith(shown) and len(final) > len(shown):
                yield final[len(shown):]
        finally:
            self._cancel.set()  # a reader that leaves early (or fails) also stops the worker
