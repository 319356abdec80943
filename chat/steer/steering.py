"""Steering: a frozen value saying which features to push how hard, and the intervention that
applies it to the residual stream.

Strength unit: multiples of the feature's max activation (from the catalog's stats), so +1 means
"as strong as it ever fires naturally" for every feature. Modes, with a_max the feature's max
activation, d its decoder direction and f(x) its current activation:

    add:    x += s·a_max·d
    clamp:  x += (s·a_max − f(x))·d      # sets the feature to s·a_max, keeps the SAE error term

A strength of 0 means "not steered" in both modes, so an all-zero steering is a bit-exact no-op.
Suppress a feature with a negative strength (clamp -1 pushes it to minus its usual peak).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping

import torch
from torch import Tensor

from features.dictionary import Dictionary

MODES = ("add", "clamp")
MAX_STRENGTH = 200.0  # far past the point where text turns to noise; larger is a typo


class SteeringError(ValueError):
    """Bad steering input (unknown mode, non-finite or absurd strength, bad feature id)."""


def parse_strength(value) -> float:
    """A strength from user input (number or string) -> float, or a one-line SteeringError."""
    if isinstance(value, bool):
        raise SteeringError(f"strength must be a number, got {value!r}")
    try:
        s = float(value)
    except (TypeError, ValueError):
        raise SteeringError(f"strength must be a number, got {value!r}") from None
    if not math.isfinite(s):
        raise SteeringError(f"strength must be finite, got {value!r}")
    if abs(s) > MAX_STRENGTH:
        raise SteeringError(
            f"strength {s:g} is outside ±{MAX_STRENGTH:g} (units: multiples of the feature's max activation)"
        )
    return s


def parse_steer_items(items: Iterable[str]) -> dict[str, float]:
    """["golden gate = 4", "1234=-2"] -> {"golden gate": 4.0, "1234": -2.0} (CLI --steer, app)."""
    out: dict[str, float] = {}
    for item in items:
        feature, sep, strength = item.rpartition("=")
        key = feature.strip()
        if not sep or not key:
            raise SteeringError(f"steering takes FEATURE=STRENGTH (e.g. 1234=6 or 'golden gate=4'), got {item.strip()!r}")
        if key in out:
            raise SteeringError(f"feature {key!r} is steered twice")
        out[key] = parse_strength(strength.strip())
    return out


@dataclass(frozen=True)
class Steering:
    """Which features to steer, how hard, and how. Hashable and safe to share between threads.

    >>> Steering({12: 4.0, 7: -1.0}, mode="clamp").strengths
    ((7, -1.0), (12, 4.0))
    >>> Steering({12: 0.0}).is_noop
    True
    """

    strengths: tuple[tuple[int, float], ...] | Mapping[int, float] = ()
    mode: str = "add"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise SteeringError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        pairs = self.strengths.items() if isinstance(self.strengths, Mapping) else self.strengths
        clean: dict[int, float] = {}
        for fid, s in pairs:
            if isinstance(fid, bool) or not isinstance(fid, int) or fid < 0:
                raise SteeringError(f"feature id must be a non-negative integer, got {fid!r}")
            if fid in clean:
                raise SteeringError(f"feature {fid} is given twice")
            clean[fid] = parse_strength(s)
        object.__setattr__(self, "strengths", tuple(sorted(clean.items())))

    @property
    def active(self) -> tuple[tuple[int, float], ...]:
        """The (feature, strength) pairs that change anything: non-zero strengths."""
        return tuple((f, s) for f, s in self.strengths if s != 0.0)

    @property
    def is_noop(self) -> bool:
        return not self.active


class FeatureSteerer:
    """Applies a `Steering` to residual activations at the dictionary's layer; pure `__call__`.

    >>> import torch
    >>> from features.dictionary import Dictionary
    >>> d = Dictionary.random(d_in=8, d_sae=16, activation="relu", seed=0)
    >>> steer = FeatureSteerer(d, Steering({3: 2.0}, mode="clamp"), max_acts=torch.ones(16))
    >>> h = 3 * d.W_dec[3].expand(1, 5, 8)             # (B, T, d_in), feature 3 active
    >>> keep = torch.ones(1, 5, dtype=torch.bool)      # (B, T) positions we may edit
    >>> h2 = steer(h, keep)
    >>> torch.allclose(d.encode(h2).acts[..., 3], torch.full((1, 5), 2.0), atol=1e-4)
    True
    """

    def __init__(self, dictionary: Dictionary, steering: Steering, max_acts: Tensor):
        max_acts = torch.as_tensor(max_acts, dtype=torch.float32)
        if max_acts.shape != (dictionary.d_sae,):
            raise SteeringError(f"max_acts must have shape ({dictionary.d_sae},), got {tuple(max_acts.shape)}")
        for fid, _ in steering.active:
            if fid >= dictionary.d_sae:
                raise SteeringError(
                    f"feature id {fid} is out of range (this dictionary has {dictionary.d_sae} features)"
                )
        self.dictionary = dictionary
        self.steering = steering
        ids = [f for f, _ in steering.active]
        strengths = torch.tensor([s for _, s in steering.active], dtype=torch.float32)
        self.ids = torch.tensor(ids, dtype=torch.long, device=dictionary.device)  # (n,)
        self.targets = (strengths * max_acts[ids]).to(dictionary.device)  # (n,) activations wanted
        self.dirs = dictionary.directions(ids)  # (n, d_in) residual change per unit of feature
        self.add_vector = self.targets @ self.dirs  # (d_in,) the whole edit in add mode
        # Clamp needs the current activation of the steered features only. ReLU and JumpReLU
        # features are independent, so a dictionary cut down to their columns gives exactly those
        # (n columns instead of all d_sae per token); TopK must see every pre-activation to know
        # which k win, so it encodes in full.
        self._reader = dictionary
        if self.needs_encoding and dictionary.activation != "topk":
            self._reader = Dictionary(
                W_enc=dictionary.W_enc[:, ids], b_enc=dictionary.b_enc[ids],  # (d_in, n), (n,)
                W_dec=torch.zeros_like(self.dirs), b_dec=dictionary.b_dec, activation=dictionary.activation,
                threshold=None if dictionary.threshold is None else dictionary.threshold[ids],
                apply_b_dec_to_input=dictionary.apply_b_dec_to_input, input_scale=dictionary.input_scale,
            )

    @property
    def needs_encoding(self) -> bool:
        return self.steering.mode == "clamp" and not self.steering.is_noop

    def current(self, h: Tensor) -> Tensor:
        """h: (B, T, d_in) residual -> (B, T, n) activations of the steered features."""
        if self._reader is self.dictionary:
            return self.dictionary.encode(h).acts[..., self.ids]
        return self._reader.encode(h).acts

    def __call__(self, h: Tensor, keep: Tensor) -> Tensor:
        """h: (B, T, d_in) residual; keep: (B, T) bool, False at BOS/special tokens.
        Returns the edited h (same dtype), or h itself when nothing is steered."""
        if self.steering.is_noop:
            return h
        if self.steering.mode == "add":
            delta = self.add_vector.expand(h.shape)  # (B, T, d_in)
        else:
            delta = (self.targets - self.current(h)) @ self.dirs  # (B, T, d_in)
        delta = delta * keep.unsqueeze(-1)
        return h + delta.to(h.dtype)
