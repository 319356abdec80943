"""The steering panel: steer toward a concept by name (its measured features and strengths fill
the sliders), find features by name or id, a slider per chosen feature, add/clamp, reset
(presets are one-click tries: chat/ui/tryit.py). What it holds applies to the next reply.

The rows are a fixed set of MAX_ROWS slots shown or hidden (stable components: their events
stay wired and browser tests can find them by elem_id); the session's rows live in a gr.State.
"""
from __future__ import annotations

import functools
import threading
import time
from dataclasses import dataclass

import gradio as gr

from chat.errors import Cancelled
from chat.steer.concept import ConceptError, parse_concept
from chat.steer.steering import MODES
from chat.ui import steer_state as st
from chat.ui.errors import reported
from chat.ui.loader import EngineLoader

SEARCH_RESULTS = 12
MODE_HELP = "add: push along the feature · clamp: hold the feature at the strength (negative suppresses)"


@dataclass
class SteerPanel:
    concept: gr.Textbox
    concept_go: gr.Button
    concept_note: gr.Markdown
    rows: gr.State
    mode: gr.Radio
    query: gr.Textbox
    matches: gr.Dropdown
    add: gr.Button
    watch: gr.Button
    reset: gr.Button
    slots: list
    sliders: list
    removes: list
    concept_cancel: gr.Button

    @property
    def view(self) -> list:
        """What `render` fills: the rows state, each slot's visibility and its slider."""
        return [self.rows, *self.slots, *self.sliders]


def build() -> SteerPanel:
    gr.Markdown("### Steering", elem_id="steering-title")
    with gr.Row(equal_height=True):
        concept = gr.Textbox(label="Steer toward a concept", placeholder="a word, e.g. coffee, fire, music",
                             scale=4, elem_id="concept")
        concept_go = gr.Button("Steer", size="sm", variant="primary", scale=1, min_width=60, elem_id="concept-go")
        concept_cancel = gr.Button("Cancel", size="sm", scale=1, min_width=60, elem_id="concept-cancel")
    concept_note = gr.Markdown("", elem_id="concept-note", elem_classes="hint")
    query = gr.Textbox(label="Find a feature", placeholder="a name or an id, e.g. mountains", elem_id="feature-search")
    matches = gr.Dropdown(label="Matches", choices=[], value=None, interactive=True, elem_id="feature-matches")
    with gr.Row():
        add = gr.Button("Steer with it", size="sm", variant="primary", elem_id="add-feature")
        watch = gr.Button("Watch it", size="sm", elem_id="watch-feature")
    slots, sliders, removes = [], [], []
    for i in range(st.MAX_ROWS):
        with gr.Row(visible=False, equal_height=True, elem_id=f"steer-row-{i}") as slot:
            sliders.append(gr.Slider(-st.DEFAULT_LIMIT, st.DEFAULT_LIMIT, value=0.0, step=0.1, label=" ", scale=8,
                                     elem_id=f"steer-slider-{i}"))
            removes.append(gr.Button("✕", size="sm", scale=0, min_width=40, elem_id=f"steer-remove-{i}"))
        slots.append(slot)
    gr.Markdown("Strength in multiples of each feature's usual max activation: left suppresses, right "
                "amplifies, 0 leaves it alone. Applies to the next reply.", elem_classes="hint")
    mode = gr.Radio(list(MODES), value="add", label="Mode", info=MODE_HELP, elem_id="steer-mode")
    reset = gr.Button("Reset all", size="sm", elem_id="steer-reset")
    return SteerPanel(concept, concept_go, concept_note, gr.State([]), mode, query, matches, add, watch, reset,
                      slots, sliders, removes, concept_cancel)


def render(rows: list[st.SteerRow]) -> list:
    """Outputs for SteerPanel.view."""
    shown = [gr.Row(visible=i < len(rows)) for i in range(st.MAX_ROWS)]
    sliders = [
        gr.Slider(minimum=-r.limit, maximum=r.limit, value=r.strength, label=r.title) for r in rows
    ] + [gr.Slider(value=0.0, label=" ") for _ in range(st.MAX_ROWS - len(rows))]
    return [rows, *shown, *sliders]


def _writes(catalog, found) -> str:
    """The concept note's last line: what each chosen feature writes (`Concept.writes`)."""
    said = [f"#{f} writes: {', '.join(found.writes(catalog, f))}" for f in found.strengths]
    return "  \n" + " · ".join(said) if said else ""


class SteerHandlers:
    """Event handlers of the steering panel; the rows come in and go out per session."""

    def __init__(self, loader: EngineLoader):
        self.loader = loader
        self._searches: dict[str | None, threading.Event] = {}  # session -> its running concept search

    @reported
    def find(self, query: str):
        query = (query or "").strip()
        if not query:
            return gr.Dropdown(choices=[], value=None, label="Matches")
        catalog = self.loader.get().catalog
        hits = catalog.search(query, top=SEARCH_RESULTS)
        # A hit whose name does not say the query says what matched ("#2084 word: Moses · writes: hospital").
        choices = [(" · ".join(filter(None, (f"#{f.id} {catalog.label(f.id)}", catalog.why(f.id, query)))), f.id)
                   for f in hits]
        # The label says "none" rather than a pop-up, which would repeat at every keystroke.
        return gr.Dropdown(choices=choices, value=choices[0][1] if choices else None,
                           label=f"Matches ({len(hits)})" if hits else f"No feature matches {query!r}")

    @reported
    def add(self, feature_id, rows, mode, *values):
        """Add a feature (an id from the matches or the fired panel) as a row at a strength that
        changes the next reply (`st.starting_strength`)."""
        if feature_id is None:
            raise gr.Error("Find a feature first, then pick it.")
        engine = self.loader.get()
        fid = engine.catalog.resolve(feature_id)
        feature = engine.catalog[fid]
        row = st.row_for(feature, engine.catalog.label(fid), st.starting_strength(feature, mode or "add"))
        rows, problem = st.add(st.with_values(rows, values), row)
        if problem:
            gr.Warning(problem)
        return render(rows)

    @reported
    def concept(self, text: str, rows, mode, *values, progress=gr.Progress(), request: gr.Request = None):
        """Find the steering toward a concept (measured once, ~20 s; then cached) and put its
        features in the panel at their measured strengths, in add mode. Outputs: the view, the
        mode, the note. The session's Cancel button ends a search (`cancel_concept`)."""
        key = getattr(request, "session_hash", None)
        cancel = self._searches[key] = threading.Event()
        try:
            return self._concept(text, rows, mode, values, progress, cancel)
        finally:
            if self._searches.get(key) is cancel:
                del self._searches[key]

    def cancel_concept(self, request: gr.Request = None) -> None:
        """Stop this session's running concept search (within a decoding step); nothing is kept."""
        event = self._searches.get(getattr(request, "session_hash", None))
        if event is not None:
            event.set()

    def _concept(self, text: str, rows, mode, values, progress, cancel: threading.Event):
        engine = self.loader.get()
        kept = [*render(st.with_values(rows, values)), mode]
        try:
            parse_concept(text or "")
        except ValueError as e:  # malformed: a one-line warning and a note, nothing lost. Raising would
            gr.Warning(str(e))   # mark the mode and the note with Error badges that outlive the next actions
            return [*kept, f"**Not steered:** {e}"]
        progress(0.0, desc="looking it up (a new concept is measured once: 20-30 s on a quiet 2-core machine, "
                           "twice that when the first round finds nothing)")
        started = time.monotonic()

        def report(fraction: float, message: str) -> None:  # the estimate from this search's own pace
            spent = time.monotonic() - started
            left = f", about {spent * (1 - fraction) / fraction:.0f} s left" if fraction >= 0.15 else ""
            progress(fraction, desc=f"{message} ({spent:.0f} s so far{left}; Cancel stops it)")

        try:
            found = engine.concept(text or "", progress=report, cancel=cancel)
        except ConceptError as e:  # a word nothing writes is an answer: said beside the box, the rows kept
            return [*kept, f"**Not steered:** {e}"]
        except Cancelled:
            gr.Info("Cancelled: nothing was measured or kept.")
            return [*kept, "**Cancelled.** The sliders are as they were."]
        rows = st.with_values(rows, values) if mode == "add" else []  # clamp rows mean something else in add mode
        labelled = [(engine.catalog[f], found.row_label(engine.catalog.label(f)), s)
                    for f, s in found.strengths.items()]
        rows, problem = st.add_concept(rows, labelled)
        if problem:
            gr.Warning(problem)
        band = f" (from {found.band[0]:.2g}× to {found.band[1]:.2g}× these strengths)" if found.band[0] != found.band[1] else ""
        if found.scale < 0:
            note = (f"Keeping **{found.concept}** out (scale {found.scale:g}): the features that write it, pushed "
                    "the other way.")
        else:
            note = (f"Steering toward **{found.concept}**{f' at {found.scale:g}×' if found.scale != 1 else ''}: in the "
                    f"search, {found.rate:.0%} of replies to everyday prompts mentioned it and stayed fluent{band}. "
                    f"A negative scale (`{found.concept}=-1`) keeps it out.")
        return [*render(rows), "add", note + _writes(engine.catalog, found)]

    @reported
    def remove(self, index: int, rows, *values):
        """Outputs: the view and the concept note (cleared: the rows no longer are what it describes)."""
        return [*render(st.remove(st.with_values(rows, values), index)), ""]

    def reset(self):
        """Outputs: the view, the mode and the concept note."""
        return [*render([]), "add", ""]



def wire(panel: SteerPanel, handlers: SteerHandlers) -> None:
    private = {"api_visibility": "undocumented"}
    catalog = {"concurrency_id": "catalog", "concurrency_limit": 1, **private}
    panel.query.submit(handlers.find, panel.query, panel.matches, **catalog)
    panel.query.input(handlers.find, panel.query, panel.matches, trigger_mode="always_last",
                      show_progress="hidden", **catalog)
    concept = dict(fn=handlers.concept, inputs=[panel.concept, panel.rows, panel.mode, *panel.sliders],
                   outputs=[*panel.view, panel.mode, panel.concept_note], concurrency_id="model",
                   show_progress="full", **private)
    panel.concept.submit(**concept)
    panel.concept_go.click(**concept)
    panel.concept_cancel.click(handlers.cancel_concept, None, None, queue=False, **private)  # not behind the search
    panel.add.click(handlers.add, [panel.matches, panel.rows, panel.mode, *panel.sliders], panel.view, **private)
    for i, button in enumerate(panel.removes):
        button.click(functools.partial(handlers.remove, i), [panel.rows, *panel.sliders],
                     [*panel.view, panel.concept_note], **private)
    panel.reset.click(handlers.reset, None, [*panel.view, panel.mode, panel.concept_note], **private)
