"""The app's handlers through a real Gradio server and gradio_client (tiny model)."""
from __future__ import annotations

import pytest

from app import LazyEngine, build_demo, parse_steer_text
from chat.engine import Engine
from chat.steering import SteeringError
from features.catalog import Catalog, Feature
from features.dictionary import Dictionary


def test_parse_steer_text():
    assert parse_steer_text("bridge = 4\n\n 1234=-2 ") == {"bridge": 4.0, "1234": -2.0}
    for bad in ("bridge", "= 3", "bridge = nan", "bridge = 1e9"):
        with pytest.raises(SteeringError):
            parse_steer_text(bad)


@pytest.fixture(scope="module")
def client(tiny_lm):
    from gradio_client import Client

    lazy = LazyEngine()
    catalog = Catalog(64, {5: Feature(5, "golden gate bridge", 4.0, 0.01)})
    lazy._engine = Engine(tiny_lm, Dictionary.random(32, 64, seed=1, hook_layer=1), catalog, 1, "test")
    demo = build_demo(lazy).queue()
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1")
    try:
        yield Client(url, verbose=False)
    finally:
        demo.close()


def test_search_and_chat(client):
    assert "golden gate bridge" in client.predict("bridge", api_name="/search")
    history, fired = client.predict("Hello there", [], "bridge = 3", "add", 8, api_name="/respond")
    assert history[-1]["role"] == "assistant" and "Features that fired" in fired


def test_bad_request_is_an_error_and_server_stays_up(client):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="finite"):
        client.predict("Hello", [], "bridge = nan", "add", 8, api_name="/respond")
    with pytest.raises(AppError, match="empty"):
        client.predict("   ", [], "", "add", 8, api_name="/respond")
    assert "golden gate bridge" in client.predict("golden", api_name="/search")
