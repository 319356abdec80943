"""The fired-features panel: the top features of the last reply (or of the message it answers)
as bars; clicking one shows where it fired, token by token, its neighbours and top example
contexts, and offers to steer with it, watch it or rename it. The watch list flags watched
features whenever they fire in a reply.
"""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from chat.ui import fired as fd
from chat.ui import steer_state as st
from chat.ui.errors import reported
from chat.ui.loader import EngineLoader
from chat.ui.steer_panel import SteerHandlers, SteerPanel, render

NEIGHBOURS = 8
BARS_HELP = ("on = the word where it peaks · peak = the feature's highest activation on this text · bar = peak ÷ its usual max, less for "
             "features that fire on much of any text and for names that predict their firing poorly · "
             "click one for details")
FORM_TOGGLE = "Show form features (punctuation, line breaks, start of a sentence, fires on almost every token)"


@dataclass
class FiredPanel:
    last: gr.State  # fired.LastReply of the latest reply, or None
    selected: gr.State  # the feature id shown in the details, or None
    alert: gr.Markdown
    bars: gr.Label
    show_form: gr.Checkbox
    on: gr.Radio  # fd.ON_REPLY or fd.ON_MESSAGE: which text the bars read
    watch: gr.Dropdown
    details: gr.Column
    card: gr.Markdown
    where: gr.HighlightedText
    steer: gr.Button
    watch_this: gr.Button
    new_label: gr.Textbox
    rename: gr.Button
    neighbours: gr.Radio
    examples: gr.HTML

    @property
    def view(self) -> list:
        """What `FiredHandlers.details` fills."""
        return [self.selected, self.details, self.card, self.where, self.neighbours, self.examples, self.new_label]


def build() -> FiredPanel:
    with gr.Row():
        with gr.Column(scale=2):
            gr.Markdown("### What fired")
            on = gr.Radio([fd.ON_REPLY, fd.ON_MESSAGE], value=fd.ON_REPLY, label="On", elem_id="fired-on")
            alert = gr.Markdown(elem_id="watch-alert")
            bars = gr.Label(label=BARS_HELP, show_heading=False, num_top_classes=fd.TOP_BARS, elem_id="fired")
            show_form = gr.Checkbox(label=FORM_TOGGLE, value=False, elem_id="show-form")
            watch = gr.Dropdown(label="Watch list (flag these when they fire)", choices=[], value=[],
                                multiselect=True, elem_id="watch-list")
        with gr.Column(scale=3, visible=False, elem_id="feature-details") as details:
            card = gr.Markdown()
            where = gr.HighlightedText(label="Where it fired", show_legend=False,
                                       elem_id="feature-highlight")
            with gr.Row():
                steer = gr.Button("Steer with this", size="sm", variant="primary", elem_id="steer-with-this")
                watch_this = gr.Button("Watch this", size="sm", elem_id="watch-this")
            with gr.Row(equal_height=True):
                new_label = gr.Textbox(label="Name", scale=4, elem_id="rename-box")
                rename = gr.Button("Save name", size="sm", scale=1, elem_id="rename")
            neighbours = gr.Radio(label="Neighbours (closest decoder directions; pick one to see it)",
                                  choices=[], elem_id="neighbours")
            gr.Markdown("Top example contexts")
            examples = gr.HTML(elem_id="examples")
    return FiredPanel(gr.State(None), gr.State(None), alert, bars, show_form, on, watch, details, card, where, steer,
                      watch_this, new_label, rename, neighbours, examples)


class FiredHandlers:
    def __init__(self, loader: EngineLoader):
        self.loader = loader

    def _watch_dropdown(self, ids) -> gr.Dropdown:
        label = self.loader.get().catalog.label
        return gr.Dropdown(choices=[(f"#{i} {label(i)}", i) for i in ids], value=list(ids), multiselect=True)

    @reported
    def select(self, last, on, evt: gr.SelectData):
        fid = fd.choice_id(str(evt.value))
        if fid is None:
            return [gr.skip()] * 7
        return self.details(fid, last, on)

    @reported
    def details(self, fid, last, on=fd.ON_REPLY):
        if fid is None:
            return [gr.skip()] * 7
        engine = self.loader.get()
        last = fd.read_on(last, on, engine.encode)
        fid = engine.catalog.resolve(fid)
        feature, label = engine.catalog[fid], engine.catalog.label(fid)
        near = fd.neighbour_choices(engine.neighbours(fid, k=NEIGHBOURS), engine.catalog.label)
        return [fid, gr.Column(visible=True), fd.feature_card(feature, label),
                fd.highlight(last, fid) if last is not None else None,
                gr.Radio(choices=near, value=None), fd.examples_html(feature), label]

    @reported
    def watch_add(self, fid, watched):
        if fid is None:
            raise gr.Error("Find a feature first, then pick it.")
        fid = self.loader.get().catalog.resolve(fid)
        ids = [*(watched or [])]
        if fid not in ids:
            ids.append(fid)
        return self._watch_dropdown(ids)

    @reported
    def refresh(self, last, watched, show_form=False, on=fd.ON_REPLY):
        """Bars and alert again, for a new reply, a changed watch list or toggle, a renamed feature.
        The alert is about the reply; the bars read what `on` says."""
        engine = self.loader.get()
        catalog = engine.catalog
        alert, _ = fd.watch_alert(last, watched or [], catalog.label)
        shown = fd.read_on(last, on, engine.encode)
        return fd.bars(shown, catalog.label, watched or [], show_form=bool(show_form), catalog=catalog), alert

    @reported
    def rename(self, fid, new_label, last, watched, show_form, on, rows, *values):
        if fid is None:
            raise gr.Error("Pick a feature first.")
        catalog = self.loader.get().catalog
        catalog.rename(fid, new_label or "")
        label = catalog.label(fid)
        gr.Info(f"Feature #{fid} is now “{label}”.")
        bars, alert = self.refresh(last, watched, show_form, on)
        return [fd.feature_card(catalog[fid], label), bars, alert, self._watch_dropdown(watched or []),
                *render(st.relabel(st.with_values(rows, values), fid, label))]


def wire(panel: FiredPanel, handlers: FiredHandlers, steer: SteerPanel, steer_handlers: SteerHandlers) -> None:
    private = {"api_visibility": "undocumented"}
    panel.bars.select(handlers.select, [panel.last, panel.on], panel.view, **private)
    panel.neighbours.input(handlers.details, [panel.neighbours, panel.last, panel.on], panel.view, **private)
    panel.steer.click(steer_handlers.add, [panel.selected, steer.rows, steer.mode, *steer.sliders], steer.view,
                      **private)
    panel.watch_this.click(handlers.watch_add, [panel.selected, panel.watch], panel.watch, **private)
    steer.watch.click(handlers.watch_add, [steer.matches, panel.watch], panel.watch, **private)
    refresh_inputs = [panel.last, panel.watch, panel.show_form, panel.on]
    panel.watch.change(handlers.refresh, refresh_inputs, [panel.bars, panel.alert], **private)
    panel.show_form.change(handlers.refresh, refresh_inputs, [panel.bars, panel.alert], **private)
    panel.on.change(handlers.refresh, refresh_inputs, [panel.bars, panel.alert], **private)
    # A new reply's bars come from the chat panel without the toggle; this applies it.
    panel.last.change(handlers.refresh, refresh_inputs, [panel.bars, panel.alert], **private)
    rename_inputs = [panel.selected, panel.new_label, panel.last, panel.watch, panel.show_form, panel.on, steer.rows,
                     *steer.sliders]
    rename_outputs = [panel.card, panel.bars, panel.alert, panel.watch, *steer.view]
    panel.rename.click(handlers.rename, rename_inputs, rename_outputs, concurrency_id="catalog", **private)
    panel.new_label.submit(handlers.rename, rename_inputs, rename_outputs, concurrency_id="catalog", **private)
