"""Shared by the app tests: an engine on the tiny model with a small named catalog, and a running
app server."""
from __future__ import annotations

from contextlib import contextmanager

from chat.engine import Engine
from features.catalog import Catalog, Feature
from features.dictionary import Dictionary

BRIDGE, DECEPTION, DOGS = 5, 7, 9
D_SAE = 64


def tiny_catalog(key: str | None = None) -> Catalog:
    example = {"tokens": [" the", " Golden", " Gate", " <b>"], "max_index": 2, "activation": 3.5}
    return Catalog(D_SAE, {
        BRIDGE: Feature(BRIDGE, "golden gate bridge", 4.0, 0.01, curated=True, examples=[example],
                        top_tokens=[" bridge", " span"], strengths={"add": [3, 7]}, steerability=0.8),
        DECEPTION: Feature(DECEPTION, "deception and lies", 3.0, 0.02, curated=True),
        DOGS: Feature(DOGS, "dogs", 2.0, 0.05),
    }, key=key)


def tiny_engine(tiny_lm, key: str | None = None) -> Engine:
    dictionary = Dictionary.random(32, D_SAE, seed=1, hook_layer=1)
    return Engine(tiny_lm, dictionary, tiny_catalog(key), 1, "tiny-test-dictionary")


def always_firing(engine: Engine) -> int:
    """A feature that fires on (nearly) every token of any reply: the one with the most tokens
    on a sample reply."""
    reply = engine.reply("Hello there", max_new_tokens=8)
    return max(reply.top_features, key=lambda h: h.tokens).id


@contextmanager
def serve(engine: Engine, concurrency_limit: int = 1):
    """The app around `engine`, listening on a free local port; yields its URL."""
    from app import build_demo, launch_options
    from chat.ui.loader import EngineLoader

    demo = build_demo(EngineLoader.ready(engine), concurrency_limit=concurrency_limit)
    _, url, _ = demo.queue().launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True,
                                    **launch_options())
    try:
        yield url
    finally:
        demo.close()
