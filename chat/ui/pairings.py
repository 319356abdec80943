"""Hub pairings: an instruction-tuned model and a public dictionary made for it.

`python app.py --preset gemma-3-270m-it` (or STEERCHAT_PRESET on Spaces) loads both from the
Hugging Face hub; the Gemma models are gated, so the machine needs a token that accepted their
licence (HF_TOKEN). Without the hub the app falls back to the embedded default and says so.
"""
from __future__ import annotations

from typing import NamedTuple


class Pairing(NamedTuple):
    model: str
    dictionary: str
    note: str


PAIRINGS: dict[str, Pairing] = {
    "gemma-3-270m-it": Pairing(
        "google/gemma-3-270m-it",
        "google/gemma-scope-2-270m-it/resid_post/layer_12_width_16k_l0_medium",
        "Gemma Scope 2, layer 12, 16k features; runs on a CPU",
    ),
    "gemma-2-2b-it": Pairing(
        "google/gemma-2-2b-it",
        "google/gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71",
        "Gemma Scope (base-model dictionary, transfers to -it), layer 20, 16k features; wants a GPU",
    ),
}


def resolve(preset: str | None, model: str | None, dictionary: str | None) -> tuple[str | None, str | None]:
    """(model, dictionary) to load: explicit values win over the preset's."""
    if not preset:
        return model, dictionary
    if preset not in PAIRINGS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PAIRINGS)}")
    pairing = PAIRINGS[preset]
    return model or pairing.model, dictionary or pairing.dictionary
