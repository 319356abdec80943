"""A sparse dictionary (SAE) on one residual-stream layer: encode, decode, and the few facts
steering needs.

One class serves every format we load (see `features/formats.py`); loaders translate their
files into these fields. Maths, with x the raw residual (..., d_in):

    x'  = x * input_scale                         # activation normalisation, 1.0 when none
    pre = (x' - b_dec·[apply_b_dec_to_input]) @ W_enc + b_enc
    f   = relu(pre) | jumprelu(pre, threshold) | topk(relu(pre), k)
    x̂   = (f @ W_dec + b_dec) / input_scale

Feature activations are in the dictionary's own (normalised) units; `direction(i)` gives the
residual-space vector that one unit of feature i writes, so edits stay correct under any
normalisation.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor

ACTIVATIONS = ("relu", "jumprelu", "topk")


class Encoding(NamedTuple):
    """What `Dictionary.encode` returns.

    acts:     (..., d_sae) feature activations after the activation function; zero where off.
    pre_acts: (..., d_sae) the affine pre-activations, before the activation function.
    """

    acts: Tensor
    pre_acts: Tensor


class DictionaryError(ValueError):
    """A dictionary file or config that cannot be used; the message says why, in one line."""


@dataclass(eq=False)
class Dictionary:
    """Weights are kept float32 on one device; `to(device)` moves them.

    >>> import torch
    >>> d = Dictionary.random(d_in=8, d_sae=32, activation="topk", k=4, seed=0)
    >>> x = torch.randn(3, 8)                 # (T, d_in)
    >>> enc = d.encode(x)                     # enc.acts: (T, d_sae), 4 nonzero per row
    >>> int((enc.acts[0] > 0).sum()) <= 4
    True
    >>> d.decode(enc.acts).shape              # (T, d_in)
    torch.Size([3, 8])
    """

    W_enc: Tensor  # (d_in, d_sae)
    b_enc: Tensor  # (d_sae,)
    W_dec: Tensor  # (d_sae, d_in)
    b_dec: Tensor  # (d_in,)
    activation: str = "relu"
    threshold: Tensor | None = None  # (d_sae,), jumprelu only
    k: int | None = None  # topk only
    apply_b_dec_to_input: bool = True
    input_scale: float = 1.0
    hook_layer: int | None = None  # decoder layer whose output this dictionary reads
    cfg: dict = field(default_factory=dict)  # the config as stored, for provenance

    def __post_init__(self) -> None:
        self.W_enc, self.b_enc, self.W_dec, self.b_dec = (
            t.detach().float() for t in (self.W_enc, self.b_enc, self.W_dec, self.b_dec)
        )
        if self.threshold is not None:
            self.threshold = self.threshold.detach().float()
        self._validate()

    def _validate(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise DictionaryError(
                f"unknown activation {self.activation!r}; expected one of {', '.join(ACTIVATIONS)}"
            )
        if self.W_enc.ndim != 2:
            raise DictionaryError(f"W_enc must be 2-D [d_in, d_sae], got shape {tuple(self.W_enc.shape)}")
        d_in, d_sae = self.W_enc.shape
        expected = {
            "W_dec": (self.W_dec, (d_sae, d_in)),
            "b_enc": (self.b_enc, (d_sae,)),
            "b_dec": (self.b_dec, (d_in,)),
        }
        if self.activation == "jumprelu":
            if self.threshold is None:
                raise DictionaryError("a jumprelu dictionary needs a 'threshold' tensor [d_sae]")
            expected["threshold"] = (self.threshold, (d_sae,))
        for name, (t, shape) in expected.items():
            if tuple(t.shape) != shape:
                raise DictionaryError(
                    f"{name} has shape {tuple(t.shape)}, expected {shape} (d_in={d_in}, d_sae={d_sae})"
                )
        if self.activation == "topk" and not (isinstance(self.k, int) and 0 < self.k <= d_sae):
            raise DictionaryError(f"a topk dictionary needs an integer k in 1..{d_sae}, got {self.k!r}")
        for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"):
            t = getattr(self, name)
            if t is not None and not torch.isfinite(t).all():
                raise DictionaryError(f"{name} contains NaN or infinite values")
        if not (self.input_scale > 0 and self.input_scale < float("inf")):
            raise DictionaryError(f"input_scale must be a positive finite number, got {self.input_scale!r}")

    @property
    def d_in(self) -> int:
        return self.W_enc.shape[0]

    @property
    def d_sae(self) -> int:
        return self.W_enc.shape[1]

    @property
    def device(self) -> torch.device:
        return self.W_enc.device

    def to(self, device: torch.device | str) -> "Dictionary":
        for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t.to(device))
        return self

    def fingerprint(self) -> str:
        """A short stable id of these weights (shape + first decoder rows), e.g. for user renames."""
        h = hashlib.sha256(f"{self.d_in}x{self.d_sae}:{self.activation}".encode())
        h.update(self.W_dec[:8].cpu().numpy().tobytes())
        return h.hexdigest()[:16]

    def encode(self, x: Tensor) -> Encoding:
        """x: (..., d_in) raw residual, any float dtype -> Encoding of (..., d_sae) float32."""
        x = x.to(self.W_enc.device, torch.float32) * self.input_scale
        if self.apply_b_dec_to_input:
            x = x - self.b_dec
        pre = x @ self.W_enc + self.b_enc  # (..., d_sae)
        if self.activation == "relu":
            acts = torch.relu(pre)
        elif self.activation == "jumprelu":
            acts = pre * (pre > self.threshold)
        else:
            top = torch.topk(pre, self.k, dim=-1)  # values/indices: (..., k)
            acts = torch.zeros_like(pre).scatter_(-1, top.indices, torch.relu(top.values))
        return Encoding(acts, pre)

    def decode(self, f: Tensor) -> Tensor:
        """f: (..., d_sae) activations -> (..., d_in) reconstruction in raw residual units."""
        return (f.to(self.W_dec.device, torch.float32) @ self.W_dec + self.b_dec) / self.input_scale

    def directions(self, ids: Tensor | list[int]) -> Tensor:
        """(n,) feature ids -> (n, d_in): what one unit of each feature adds to the raw residual."""
        ids = torch.as_tensor(ids, dtype=torch.long, device=self.W_dec.device)
        return self.W_dec[ids] / self.input_scale

    @classmethod
    def random(
        cls,
        d_in: int,
        d_sae: int,
        activation: str = "relu",
        k: int | None = None,
        seed: int = 0,
        hook_layer: int | None = None,
    ) -> "Dictionary":
        """A dictionary of random unit directions, tied encoder; for tests and placeholders."""
        g = torch.Generator().manual_seed(seed)
        W_dec = torch.randn(d_sae, d_in, generator=g)
        W_dec = W_dec / W_dec.norm(dim=-1, keepdim=True)  # (d_sae, d_in), unit rows
        threshold = torch.full((d_sae,), 0.1) if activation == "jumprelu" else None
        return cls(
            W_enc=W_dec.T.clone(),
            b_enc=torch.zeros(d_sae),
            W_dec=W_dec,
            b_dec=torch.zeros(d_in),
            activation=activation,
            threshold=threshold,
            k=k,
            hook_layer=hook_layer,
        )
