"""Scoped hooks: steer and read out one decoder layer for the duration of one call.

`attach(...)` registers two hooks and removes them in `finally`:
- a pre-hook on the input embedding, which sees the token ids of every forward pass (prompt
  prefill, then one token per decoding step) so we know which positions are BOS/special;
- a forward hook on decoder layer L, which records the residual of the positions we read out
  (encoded into dictionary activations once, when the block ends) and applies the steering.

Hooks on a module are shared by every thread using the model, so each hook only acts in the
thread that attached it: two users generating at once each get exactly their own steering.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import Tensor

from chat.runtime.models import LoadedModel
from chat.steer.steering import FeatureSteerer


class StopForward(Exception):
    """Raised by the layer hook to end a forward pass early (encoding needs no later layers)."""


class Recorder:
    """Collects dictionary activations at the positions read out (batch row 0).

    Positions count over all forward passes of a call: a prompt of T tokens is 0..T-1, the
    first generated token T, and so on. Rows are kept for positions >= `start`.

    The hook only copies the residual (d_in values per position); `encode` turns everything
    collected into sparse activations at the end of the call. Encoding each decoding step on its
    own would read all of W_enc (d_in × d_sae, 42 MB at 640 × 16384 in float32) once per token,
    several percent of a small model's decoding time; batched, it is read once per ENCODE_CHUNK.
    """

    ENCODE_CHUNK = 256  # positions encoded together: bounds the (chunk, d_sae) activations in memory

    def __init__(self, start: int):
        self.start = start
        self.rows: dict[int, tuple[Tensor, Tensor]] = {}  # position -> (indices (k,), values (k,))
        self._positions: list[int] = []
        self._residuals: list[Tensor] = []  # (m, d_in) each, not yet encoded; model dtype and device

    def add(self, first_position: int, h: Tensor, keep: Tensor) -> None:
        """h: (B, T, d_in) residual for positions first_position..+T-1; keep: (B, T) bool."""
        skip = max(0, self.start - first_position)  # prompt positions we do not read out
        kept = keep[0, skip:].nonzero().squeeze(-1)  # (m,) offsets of positions to read
        if kept.numel():
            self._positions += (kept + first_position + skip).tolist()
            self._residuals.append(h[0, skip:].index_select(0, kept.to(h.device)))  # (m, d_in) a copy

    def encode(self, dictionary) -> None:
        """Encode the residuals collected so far into sparse rows (batched, in chunks)."""
        if not self._residuals:
            return
        x = torch.cat(self._residuals)  # (M, d_in)
        positions = self._positions
        self._positions, self._residuals = [], []
        for a in range(0, x.shape[0], self.ENCODE_CHUNK):
            acts = dictionary.encode(x[a:a + self.ENCODE_CHUNK]).acts.cpu()  # (m, d_sae) float32
            for pos, row in zip(positions[a:a + self.ENCODE_CHUNK], acts):
                nz = row.nonzero().squeeze(-1)  # (k,)
                self.rows[pos] = (nz, row[nz])

    def wants(self, first_position: int, n: int) -> bool:
        return first_position + n > self.start

    def dense(self, n: int, d_sae: int) -> Tensor:
        """(n, d_sae) activations of positions start..start+n-1; zeros where nothing was read."""
        out = torch.zeros(n, d_sae)
        for pos, (idx, val) in self.rows.items():
            if pos - self.start < n:
                out[pos - self.start, idx] = val
        return out


class _LayerHooks:
    def __init__(self, lm: LoadedModel, steerer: FeatureSteerer, recorder: Recorder | None, stop_after: bool):
        self.owner = threading.get_ident()
        self.lm, self.steerer, self.recorder, self.stop_after = lm, steerer, recorder, stop_after
        self.seen = 0  # positions processed by earlier forward passes of this call
        self.ids: Tensor | None = None  # (B, T) token ids of the current forward pass

    # kwargs may be missing: torch registers a with_kwargs hook in two steps, and a forward in
    # another thread between them calls it with args only (seen once in the soak test).
    def on_embed(self, module, args, kwargs=None):
        if threading.get_ident() != self.owner:
            return None
        if self.ids is not None:
            self.seen += self.ids.shape[-1]
        ids = args[0] if args else (kwargs or {}).get("input_ids")
        self.ids = ids if isinstance(ids, Tensor) else None
        return None

    def on_layer(self, module, args, output):
        if threading.get_ident() != self.owner:
            return None
        h = output if isinstance(output, Tensor) else output[0]  # (B, T, d_model)
        if self.ids is not None and self.ids.shape == h.shape[:2]:
            keep = self.lm.content_mask(self.ids)  # (B, T)
        else:
            keep = torch.ones(h.shape[:2], dtype=torch.bool, device=h.device)
        keep = keep.to(h.device)
        if self.recorder is not None and self.recorder.wants(self.seen, h.shape[1]):
            self.recorder.add(self.seen, h, keep)  # before the edit: the model's own state
        edited = self.steerer(h, keep)
        if self.stop_after:
            raise StopForward
        if edited is h:
            return None  # untouched: the layer's own output object goes on, bit for bit
        return edited if isinstance(output, Tensor) else (edited, *output[1:])


@contextmanager
def on_output(module: torch.nn.Module, fn: Callable[[Tensor], Tensor | None]) -> Iterator[None]:
    """Call `fn(hidden)` on `module`'s output inside the `with` block (tensor or tuple outputs);
    a tensor it returns replaces the output. For dictionary training and evaluation, which run
    one caller at a time; steering uses `attach`."""

    def hook(mod, args, output):
        h = output if isinstance(output, Tensor) else output[0]  # (B, T, d_model)
        new = fn(h)
        if new is None:
            return None
        return new if isinstance(output, Tensor) else (new, *output[1:])

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def attach(
    lm: LoadedModel,
    layer: int,
    steerer: FeatureSteerer,
    recorder: Recorder | None = None,
    stop_after: bool = False,
) -> Iterator[_LayerHooks]:
    """Steer (and optionally record) decoder layer `layer` of `lm` inside the `with` block, in
    the calling thread only. With `stop_after`, forward passes end at that layer (StopForward);
    setting `.stop_after` on the hooks it yields does so for the passes that follow."""
    hooks = _LayerHooks(lm, steerer, recorder, stop_after)
    handles = [
        lm.model.get_input_embeddings().register_forward_pre_hook(hooks.on_embed, with_kwargs=True),
        lm.layers[layer].register_forward_hook(hooks.on_layer),
    ]
    try:
        yield hooks
        if recorder is not None:
            recorder.encode(steerer.dictionary)
    finally:
        for handle in handles:
            handle.remove()
