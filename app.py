"""Gradio app: chat with a model while steering it by named features.

    python app.py [--model REF] [--dictionary REF] [--layer L] [--port N]

Environment variables (for Spaces): STEERCHAT_MODEL, STEERCHAT_DICTIONARY, STEERCHAT_LAYER.
Nothing heavy happens at import: `build_demo` makes the UI, and the engine loads once, on the
first request that needs it.
"""
from __future__ import annotations

import argparse
import os
import threading

import gradio as gr

STEER_HELP = "One per line: feature = strength, e.g. `bridge = 4` or `1234 = -2` (multiples of its max activation)."


class LazyEngine:
    """Loads the engine on first use, once, even when several requests arrive together."""

    def __init__(self, model=None, dictionary=None, layer=None):
        self.args = (model, dictionary, layer)
        self._engine = None
        self._lock = threading.Lock()

    def get(self):
        with self._lock:
            if self._engine is None:
                from chat.engine import load

                self._engine = load(*self.args)
            return self._engine


def parse_steer_text(text: str) -> dict[str, float]:
    """'bridge = 4\\n1234=-2' -> {"bridge": 4.0, "1234": -2.0}; one-line errors."""
    from chat.steering import parse_steer_items

    return parse_steer_items(line for line in (text or "").splitlines() if line.strip())


def features_markdown(reply) -> str:
    rows = ["| feature | label | peak | tokens |", "|---|---|---|---|"]
    rows += [f"| {h.id} | {h.label} | {h.activation:.1f} | {h.tokens} |" for h in reply.top_features]
    note = "\n\n" + "\n".join(f"⚠ {w}" for w in reply.warnings) if reply.warnings else ""
    return "**Features that fired on this reply**\n\n" + "\n".join(rows) + note


def build_demo(engine: LazyEngine) -> gr.Blocks:
    from chat.errors import USER_ERRORS

    def respond(message, history, steer_text, mode, max_new_tokens):
        history = list(history or [])
        try:
            eng = engine.get()
            steer = parse_steer_text(steer_text)
            conversation = history + [{"role": "user", "content": message}]
            stream = eng.stream(conversation, steer=steer, mode=mode, max_new_tokens=int(max_new_tokens))
            shown = history + [{"role": "user", "content": message}, {"role": "assistant", "content": ""}]
            for delta in stream:
                shown[-1]["content"] += delta
                yield shown, gr.update()
        except USER_ERRORS as e:
            raise gr.Error(str(e)) from None
        yield shown, features_markdown(stream.reply)

    def search(query):
        try:
            hits = engine.get().search(query, top=15)
        except USER_ERRORS as e:
            raise gr.Error(str(e)) from None
        if not hits:
            return f"No feature matches {query!r}."
        return "\n".join(f"- **{f.id}** {f.label}" for f in hits)

    def status():
        return engine.get().status()

    with gr.Blocks(title="steerchat") as demo:
        gr.Markdown("# steerchat — steer a language model by its features")
        status_line = gr.Markdown("Loading the model…", elem_id="status")
        with gr.Row():
            with gr.Column(scale=3):
                chatbot = gr.Chatbot(elem_id="chat", height=420)
                message = gr.Textbox(placeholder="Say something…", show_label=False, elem_id="message")
                clear = gr.Button("Clear")
            with gr.Column(scale=2):
                steer_text = gr.Textbox(label="Steering", info=STEER_HELP, lines=4, elem_id="steer")
                mode = gr.Radio(["add", "clamp"], value="add", label="Mode")
                max_new = gr.Slider(1, 512, value=96, step=1, label="Max new tokens")
                query = gr.Textbox(label="Find features by name", elem_id="search")
                results = gr.Markdown()
        fired = gr.Markdown(elem_id="fired")

        message.submit(respond, [message, chatbot, steer_text, mode, max_new], [chatbot, fired],
                       concurrency_id="model").then(lambda: "", None, message)
        query.submit(search, query, results, concurrency_id="model")
        clear.click(lambda: ([], ""), None, [chatbot, fired])
        demo.load(status, None, status_line, concurrency_id="model")
    return demo


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=os.environ.get("STEERCHAT_MODEL") or None)
    p.add_argument("--dictionary", default=os.environ.get("STEERCHAT_DICTIONARY") or None)
    p.add_argument("--layer", type=int, default=int(os.environ["STEERCHAT_LAYER"]) if os.environ.get("STEERCHAT_LAYER") else None)
    p.add_argument("--port", type=int, default=int(os.environ.get("PORT", 7860)))
    args = p.parse_args()
    engine = LazyEngine(args.model, args.dictionary, args.layer)
    threading.Thread(target=engine.get, daemon=True).start()  # start loading before the first visitor
    build_demo(engine).queue(max_size=32).launch(server_port=args.port)


if __name__ == "__main__":
    main()
