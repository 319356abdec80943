"""A clearly named stand-in dictionary for models that have no trained one yet.

Random unit directions with TopK, so the whole pipeline (steering, readout, UI) works; its
features mean nothing and every label says so. Never presented as a real dictionary.
"""
from __future__ import annotations

from features.catalog import Catalog, Feature
from features.dictionary import Dictionary

PLACEHOLDER_WIDTH = 4096
PLACEHOLDER_K = 32


def placeholder_dictionary(d_model: int, layer: int, seed: int = 0) -> tuple[Dictionary, Catalog]:
    d = Dictionary.random(d_model, PLACEHOLDER_WIDTH, activation="topk", k=PLACEHOLDER_K, seed=seed, hook_layer=layer)
    d.cfg = {"placeholder": True, "architecture": "topk", "d_in": d_model, "d_sae": PLACEHOLDER_WIDTH}
    return d, placeholder_catalog()


def placeholder_catalog() -> Catalog:
    labels = {
        i: Feature(i, f"placeholder {i} (random direction, untrained)", None, None)
        for i in range(PLACEHOLDER_WIDTH)
    }
    return Catalog(PLACEHOLDER_WIDTH, labels)
