"""The Gradio app's parts; app.py composes them into one `gr.Blocks`.

loader (the engine, loaded once in the background) · pairings (hub model + dictionary presets) ·
steer_state / steer_panel (sliders for named features) · fired / fired_panel (what fired on a
reply, where, and its neighbours) · chat_panel (streamed chat, stop, retry, compare) · api
(stable endpoints for scripts) · errors (one-line gr.Error) · gpu (ZeroGPU, a no-op elsewhere).
"""
