"""The app's stable endpoints for scripts (gradio_client), typed from the signatures below:

    /generate (message, steer, mode="add", max_new_tokens=64, seed=0, temperature=0.0)
        -> {"text", "top_features": [{"id", "label", "activation"}], "steer": [{"id", "label",
            "strength"}], "finish_reason", "warnings"}           (the CLI's `reply --json`)
    /search (query, top=10) -> [{"id", "label", "name", "kind", "reads", "writes", "score",
            "max_activation", "density", "steerability", "curated", "strengths"}]   (Catalog.describe:
            label is the display name, a person's where curated or renamed; name the automatic
            one; score the detection score, or null)

    /concept (concept) -> {"concept", "mode", "scale", "features": [{"id", "label", "strength"}],
            "band", "rate"}   ("ocean", or "ocean=2" for twice the measured strength, "ocean=-1"
            to keep it out; passing mode and {id: strength} unchanged to /generate gives the
            concept; measured once per dictionary, ~20 s, then cached)

All are stateless: steering comes with each call, so clients never see each other's.
"""
from __future__ import annotations

import gradio as gr

from chat.steer.settings import GenerationSettings
from chat.ui.errors import reported, whole
from chat.ui.gpu import gpu
from chat.ui.loader import EngineLoader

DEFAULTS = GenerationSettings()
MAX_SEARCH_RESULTS = 100
TOP_FEATURES = 10


class Api:
    def __init__(self, loader: EngineLoader):
        self.loader = loader

    @reported
    @gpu
    def generate(self, message: str, steer: dict[str, float], mode: str = "add",
                 max_new_tokens: int = DEFAULTS.max_new_tokens, seed: int = DEFAULTS.seed,
                 temperature: float = DEFAULTS.temperature) -> dict:
        """One reply to `message`, steered by {feature id or label query: strength} (strength in
        multiples of the feature's max activation; mode add or clamp), with the chat's default
        settings (the app's, the CLI's, the Python API's): greedy with repetition handling unless
        temperature > 0, where `seed` makes sampling reproducible. (Plain greedy decoding, as
        steering specs use, is `--greedy` in the CLI and `settings=GenerationSettings.greedy()`
        in the Python API; this signature stays as it was, for raw-HTTP clients.)"""
        if not isinstance(message, str):
            raise ValueError(f"message must be a string, got {type(message).__name__}")
        if steer is None:
            steer = {}
        if not isinstance(steer, dict):
            raise ValueError('steer must be an object like {"1234": 4, "bridge": -2}')
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
            raise ValueError(f"temperature must be a number, got {temperature!r}")
        engine = self.loader.get()
        reply = engine.reply(message, steer=steer, mode=mode,
                             max_new_tokens=whole(max_new_tokens, "max_new_tokens"), seed=whole(seed, "seed"),
                             temperature=float(temperature))
        return {
            "text": reply.text,
            "top_features": [{"id": h.id, "label": h.label, "activation": round(h.activation, 4)}
                             for h in reply.top_features[:TOP_FEATURES]],
            "steer": [{"id": f, "label": engine.catalog.label(f), "strength": s} for f, s in reply.steering.strengths],
            "finish_reason": reply.finish_reason,
            "warnings": reply.warnings,
        }

    @reported
    @gpu
    def concept(self, concept: str) -> dict:
        """The steering toward `concept` (a word, optionally "=SCALE"): features, mode and
        strengths chosen by measurement (chat/steer/concept.py). Scale 1 is the measured strength."""
        if not isinstance(concept, str):
            raise ValueError(f"concept must be a string, got {type(concept).__name__}")
        engine = self.loader.get()
        return engine.concept(concept).describe(engine.catalog.label)

    @reported
    def search(self, query: str, top: int = 10) -> list[dict]:
        """Features whose names, reads or writes match `query` by meaning (or the id it names),
        best first; features that write the concept first."""
        if not isinstance(query, str):
            raise ValueError(f"query must be a string, got {type(query).__name__}")
        top = whole(top, "top")
        if not 1 <= top <= MAX_SEARCH_RESULTS:
            raise ValueError(f"top must be between 1 and {MAX_SEARCH_RESULTS}, got {top}")
        catalog = self.loader.get().catalog
        return [catalog.describe(f.id) for f in catalog.search(query, top=top)]


def wire(api: Api, concurrency_limit: int) -> None:
    gr.api(api.generate, api_name="generate", concurrency_id="model", concurrency_limit=concurrency_limit)
    gr.api(api.search, api_name="search", concurrency_id="catalog", concurrency_limit=1)
    gr.api(api.concept, api_name="concept", concurrency_id="model", concurrency_limit=concurrency_limit)
