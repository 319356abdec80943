"""The chat: replies streamed token by token with the session's steering, stop, retry, clear,
and compare (the unsteered reply to the same message with the same seed, side by side).

Every reply goes through Engine.stream, which scopes its hooks to the call; the Stop button
reaches the running streams through the session's RunControl.
"""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from chat.steer.settings import MAX_NEW_TOKENS, GenerationSettings
from chat.steer.prompt import message_text
from chat.ui import fired as fd
from chat.ui import steer_state as st
from chat.ui.errors import reported, whole
from chat.ui.fired_panel import FiredPanel
from chat.ui.gpu import gpu
from chat.ui.loader import EngineLoader
from chat.ui.steer_panel import SteerPanel


DEFAULTS = GenerationSettings()  # the chat's decoding defaults, shared with /generate, the CLI and the API


class RunControl:
    """A session's running replies, so that its Stop button can end them. Held in a gr.State:
    each session gets its own copy, and handlers share it by reference."""

    def __init__(self):
        self.streams: list = []
        self.stopped = False
        self.discarded = False  # Clear: the running reply must not write the chat back

    def begin(self) -> None:
        self.streams, self.stopped, self.discarded = [], False, False

    def track(self, stream):
        self.streams.append(stream)
        if self.stopped:
            stream.stop()
        return stream

    def stop(self, discard: bool = False) -> None:
        self.stopped = True
        self.discarded = discard
        for stream in self.streams:
            stream.stop()


@dataclass
class ChatPanel:
    run: gr.State
    chatbot: gr.Chatbot
    message: gr.Textbox
    send: gr.Button
    stop: gr.Button
    retry: gr.Button
    clear: gr.Button
    compare: gr.Checkbox
    compare_row: gr.Row
    unsteered: gr.Textbox
    steered: gr.Textbox
    max_new_tokens: gr.Slider
    temperature: gr.Slider
    seed: gr.Number


def build() -> ChatPanel:
    # No label: Gradio floats it over the first message once the chat scrolls.
    chatbot = gr.Chatbot(label="Chat", show_label=False, height=440, elem_id="chat")
    with gr.Row(equal_height=True):
        message = gr.Textbox(placeholder="Say something… (Enter sends)", show_label=False, scale=6, elem_id="message")
        send = gr.Button("Send", variant="primary", scale=1, min_width=80, elem_id="send")
    with gr.Row():
        stop = gr.Button("Stop", size="sm", elem_id="stop")
        retry = gr.Button("Retry", size="sm", elem_id="retry")
        clear = gr.Button("Clear", size="sm", elem_id="clear")
    compare = gr.Checkbox(label="Compare: also generate the unsteered reply (same message, same seed)",
                          elem_id="compare")
    with gr.Row(visible=False, elem_id="compare-row") as compare_row:
        unsteered = gr.Textbox(label="Unsteered", lines=5, interactive=False, elem_id="reply-unsteered")
        steered = gr.Textbox(label="Steered", lines=5, interactive=False, elem_id="reply-steered")
    with gr.Accordion("Generation settings", open=False, elem_id="settings"):
        max_new_tokens = gr.Slider(1, 512, value=96, step=1, label="Max new tokens", elem_id="max-new-tokens")
        temperature = gr.Slider(0, 2, value=DEFAULTS.temperature, step=0.05,
                                label="Temperature (0 = greedy; any temperature is reproducible for a given seed)",
                                elem_id="temperature")
        seed = gr.Number(DEFAULTS.seed, precision=0, minimum=0, label="Seed (used when temperature > 0)",
                         elem_id="seed")
    return ChatPanel(gr.State(RunControl()), chatbot, message, send, stop, retry, clear, compare, compare_row,
                     unsteered, steered, max_new_tokens, temperature, seed)


def plain(history) -> list[dict]:
    """Chatbot messages (content as blocks) -> [{"role", "content": str}]."""
    return [{"role": m["role"], "content": message_text(m.get("content", ""))} for m in history or []]


class ChatHandlers:
    def __init__(self, loader: EngineLoader):
        self.loader = loader

    @reported
    @gpu
    def respond(self, run: RunControl, message, history, rows, mode, max_new_tokens, temperature, seed, compare,
                watched, *values):
        """Outputs: chatbot, message, unsteered, steered, bars, alert, last, details."""
        engine = self.loader.get()
        text = message if isinstance(message, str) else ""
        if not text.strip():  # a toast, not Error badges over the chat, the box and the panel
            gr.Warning("Type a message first.")
            yield (gr.skip(),) * 8
            return
        rows = st.with_values(rows or [], values)
        settings = {"max_new_tokens": whole(max_new_tokens, "max new tokens"),
                    "temperature": float(temperature or 0), "seed": whole(seed or 0, "seed")}
        if settings["max_new_tokens"] > MAX_NEW_TOKENS:
            raise ValueError(f"max new tokens is at most {MAX_NEW_TOKENS}")
        conversation = [*plain(history), {"role": "user", "content": text}]
        run.begin()
        stream = run.track(engine.stream(conversation, steer=st.steer_dict(rows), mode=mode, **settings))
        shown = [*conversation, {"role": "assistant", "content": ""}]
        steered_label = gr.Textbox(value="", label=f"Steered ({st.describe(rows, mode)})")
        skip = gr.skip()
        yield shown, "", ("" if compare else skip), steered_label, skip, skip, skip, skip
        for delta in stream:
            if run.discarded:
                return
            shown[-1]["content"] += delta
            yield shown, skip, skip, (shown[-1]["content"] if compare else skip), skip, skip, skip, skip
        if run.discarded:
            return
        reply = stream.reply
        last = fd.LastReply.of(reply, message=text)
        alert, fired = fd.watch_alert(last, watched or [], engine.catalog.label)
        for warning in reply.warnings:
            gr.Warning(warning)
        if fired:
            gr.Warning("Watched feature fired: " + "; ".join(fired))
        if reply.finish_reason == "cancelled":
            gr.Info("Stopped.")
        bars = fd.bars(last, engine.catalog.label, watched or [])
        yield shown, skip, skip, skip, bars, alert, last, gr.Column(visible=False)
        if not compare or run.stopped:
            return
        base = run.track(engine.stream(conversation, steer=None, mode=mode, **settings))
        unsteered = ""
        for delta in base:
            if run.discarded:
                return
            unsteered += delta
            yield skip, skip, unsteered, skip, skip, skip, skip, skip

    def stop(self, run: RunControl) -> None:
        run.stop()

    @reported
    def take_last(self, history):
        """The history before the last user message, and that message back in the box (retry)."""
        messages = plain(history)
        users = [i for i, m in enumerate(messages) if m["role"] == "user"]
        if not users:
            raise gr.Error("Nothing to retry yet.")
        return messages[:users[-1]], messages[users[-1]]["content"]

    def clear(self, run: RunControl):
        run.stop(discard=True)
        return [], "", "", gr.Textbox(value="", label="Steered"), None, "", None, gr.Column(visible=False)

    def show_compare(self, on: bool):
        return gr.Row(visible=bool(on))


def send_event(panel: ChatPanel, handlers: ChatHandlers, steer: SteerPanel, fired: FiredPanel,
               concurrency_limit: int) -> dict:
    """The reply event (send the message box) as keyword arguments for `.click`, `.then`, ..."""
    inputs = [panel.run, panel.message, panel.chatbot, steer.rows, steer.mode, panel.max_new_tokens,
              panel.temperature, panel.seed, panel.compare, fired.watch, *steer.sliders]
    outputs = [panel.chatbot, panel.message, panel.unsteered, panel.steered, fired.bars, fired.alert, fired.last,
               fired.details]
    return {"fn": handlers.respond, "inputs": inputs, "outputs": outputs, "concurrency_id": "model",
            "concurrency_limit": concurrency_limit, "api_visibility": "undocumented"}


def wire(panel: ChatPanel, handlers: ChatHandlers, send: dict) -> None:
    private = {"api_visibility": "undocumented"}
    outputs = send["outputs"]
    panel.message.submit(**send)
    panel.send.click(**send)
    panel.retry.click(handlers.take_last, panel.chatbot, [panel.chatbot, panel.message], **private).success(**send)
    panel.stop.click(handlers.stop, panel.run, None, queue=False, **private)
    panel.clear.click(handlers.clear, panel.run, outputs, queue=False, **private)
    panel.compare.change(handlers.show_compare, panel.compare, panel.compare_row, queue=False, **private)
