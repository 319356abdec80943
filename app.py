"""Gradio app: chat with a model while steering it by the named features of a dictionary.

    python app.py [--model REF] [--dictionary REF] [--layer L] [--preset NAME] [--device D]
                  [--host H] [--port N] [--concurrency N]

Environment variables (for Spaces): STEERCHAT_MODEL, STEERCHAT_DICTIONARY, STEERCHAT_LAYER,
STEERCHAT_PRESET. Run as a script, it first holds its address with a starting page
(chat/ui/early.py), then imports Gradio. No model loads at import: `build_demo` makes the UI,
`main` starts loading the engine in the background and launches; the model loads once.
"""
from __future__ import annotations

import sys

if __name__ == "__main__":  # before Gradio's ~3 s import: answer the browser at once
    from chat.runtime import gcpause
    from chat.ui.early import begin

    gcpause.pause()  # until the engine is loaded (chat/runtime/gcpause.py)

    _BEGUN = begin(sys.argv[1:], __doc__)

import functools  # noqa: E402 - after the early start, on purpose
import time  # noqa: E402

import gradio as gr  # noqa: E402

from chat.ui import api, chat_panel, fired_panel, steer_panel, tryit  # noqa: E402
from chat.ui import steer_state
from chat.ui.early import Begun, parse_args
from chat.ui.loader import EngineLoader

CSS = """
.hint { font-size: 0.85em; opacity: 0.8; }
#feature-details .example { font-family: monospace; white-space: pre-wrap; margin: 0.2em 0;
  padding: 0.3em; border-bottom: 1px solid var(--border-color-primary); }
#watch-alert h3 { color: var(--error-text-color); }
.try-label { flex-grow: 0 !important; min-width: 4em !important; }
"""
STATUS_POLL_SECONDS = 0.5


def status_updates(loader: EngineLoader, try_handlers: tryit.TryHandlers):
    """The status line while the engine loads, then what is loaded and the presets it offers."""
    loader.start()
    skip = [gr.skip()] * steer_state.MAX_PRESETS
    while not loader.loaded:
        yield loader.status(), *skip
        time.sleep(STATUS_POLL_SECONDS)
    if loader.failed or loader.note:
        gr.Warning(loader.status().removeprefix("⚠ "))
    yield loader.status(), *(skip if loader.failed else try_handlers.buttons())


def build_demo(loader: EngineLoader, *, concurrency_limit: int = 1) -> gr.Blocks:
    """The whole app around `loader`; `concurrency_limit` replies run at once (they share the
    model and the CPU: more than one only helps on a GPU)."""
    steer_h, fired_h = steer_panel.SteerHandlers(loader), fired_panel.FiredHandlers(loader)
    chat_h, try_h = chat_panel.ChatHandlers(loader), tryit.TryHandlers(loader)
    with gr.Blocks(title="steerchat") as demo:
        gr.Markdown("# steerchat · steer a language model by its features")
        status = gr.Markdown(loader.status(), elem_id="status")
        tries = tryit.build()
        with gr.Row():
            with gr.Column(scale=5):
                chat = chat_panel.build()
            with gr.Column(scale=3):
                steer = steer_panel.build()
        fired = fired_panel.build()
        api.wire(api.Api(loader), concurrency_limit)  # first, so the stable names are theirs
        steer_panel.wire(steer, steer_h)
        fired_panel.wire(fired, fired_h, steer, steer_h)
        send = chat_panel.send_event(chat, chat_h, steer, fired, concurrency_limit)
        chat_panel.wire(chat, chat_h, send)
        tryit.wire(tries, try_h, chat, steer, send)
        demo.load(functools.partial(status_updates, loader, try_h), None, [status, *tries.presets],
                  concurrency_limit=None, show_progress="minimal", api_visibility="private")
    return demo


def launch_options() -> dict:
    return {"css": CSS, "theme": gr.themes.Soft()}


def main(argv: list[str] | None = None, begun: Begun | None = None) -> None:
    """Start the app; `begun`: what `early.begin` started before this module's imports."""
    begun = begun or Begun.start(parse_args(argv, __doc__))
    begun.loader.start()  # in the background (after the imports: started earlier, it only shared their CPU)
    demo = build_demo(begun.loader, concurrency_limit=begun.args.concurrency)
    begun.release_port()  # the starting page steps aside; its next reload finds the app
    demo.queue(max_size=64).launch(server_name=begun.args.host, server_port=begun.args.port, **launch_options())


if __name__ == "__main__":
    main(begun=_BEGUN)
