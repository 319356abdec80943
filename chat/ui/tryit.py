"""The first screen's one-click tries: example messages, and presets that set their sliders,
turn Compare on and send their message, so that steering shows at once, beside the unsteered
reply.

The preset buttons are a fixed set of MAX_PRESETS slots (stable components, as the steering
rows are), named once the engine has loaded: presets come from the dictionary.
"""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from chat.ui import steer_state as st
from chat.ui.chat_panel import ChatPanel
from chat.ui.errors import reported
from chat.ui.loader import EngineLoader
from chat.ui.steer_panel import SteerPanel, render

EXAMPLES = (
    "What is the capital of France?",
    "Can you write me a short poem about cats?",
    "Hi! What can you tell me about the ocean?",
    "Give me three tips for learning a new language.",
)


@dataclass
class TryPanel:
    examples: list
    presets: list
    about: gr.Markdown  # what the last preset does


def build() -> TryPanel:
    with gr.Row(equal_height=True, elem_id="examples"):
        gr.Markdown("**Ask:**", elem_classes="try-label")
        examples = [gr.Button(text, size="sm", elem_id=f"example-{i}") for i, text in enumerate(EXAMPLES)]
    with gr.Row(equal_height=True, elem_id="presets"):
        gr.Markdown("**Steer:**", elem_classes="try-label")
        presets = [gr.Button("", size="sm", variant="primary", visible=False, elem_id=f"preset-{i}")
                   for i in range(st.MAX_PRESETS)]
    about = gr.Markdown("", elem_id="preset-about", elem_classes="hint")
    return TryPanel(examples, presets, about)


class TryHandlers:
    def __init__(self, loader: EngineLoader):
        self.loader = loader

    def _presets(self) -> list[st.Preset]:
        engine = self.loader.get()
        return st.presets_for(engine.catalog, engine.folder)

    @reported
    def buttons(self) -> list:
        """The preset buttons, named after the loaded dictionary's presets."""
        chosen = self._presets()
        return [gr.Button(value=p.name, visible=True) for p in chosen] + \
               [gr.Button(visible=False) for _ in range(st.MAX_PRESETS - len(chosen))]

    @reported
    def apply(self, index: int):
        """Outputs: the steering view, mode, compare, compare row, message, about."""
        chosen = self._presets()
        if index >= len(chosen):
            raise gr.Error("That preset is not available for this dictionary.")
        p = chosen[index]
        about = p.description or f"{p.name}: {st.describe(p.rows, p.mode)}. Compare shows the unsteered reply beside it."
        return [*render(list(p.rows)), p.mode, True, gr.Row(visible=True), p.message, about]


def wire(panel: TryPanel, handlers: TryHandlers, chat: ChatPanel, steer: SteerPanel, send: dict) -> None:
    """`send` is the chat's respond event as keyword arguments for `.then` (fn, inputs, outputs, ...)."""
    private = {"api_visibility": "undocumented"}
    for text, button in zip(EXAMPLES, panel.examples):
        button.click(lambda t=text: t, None, chat.message, queue=False, **private).then(**send)
    for i, button in enumerate(panel.presets):
        outputs = [*steer.view, steer.mode, chat.compare, chat.compare_row, chat.message, panel.about]
        button.click(lambda i=i: handlers.apply(i), None, outputs, **private).success(**send)
        button.click(lambda: "", None, steer.concept_note, queue=False, **private)  # the preset replaced it
    # A preset's caption describes rows that Reset, a removed row or a concept replace.
    for event in (steer.reset.click, steer.concept.submit, steer.concept_go.click,
                  *(b.click for b in steer.removes)):
        event(lambda: "", None, panel.about, queue=False, **private)
