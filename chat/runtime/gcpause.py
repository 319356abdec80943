"""Starting without the cyclic garbage collector's passes over what the start builds.

A start builds a few million objects that live as long as the process (modules, the model's
Python side, the catalog's features) and almost no cyclic garbage, yet the collector's full
passes rescan that growing heap again and again: 1.0 s of a 3.9 s CLI start, 0.5 s of them in
parsing the catalog (docs/benchmark.md). So the entry points (`python -m chat`, `python app.py`)
`pause` collecting as they begin, and `resume` once the engine is loaded: `gc.freeze` moves
everything built so far where later collections do not look, and collecting goes on from there.
Library callers (`chat.load`, the tests) never pause, and `resume` then does nothing.
"""
from __future__ import annotations

import gc

_paused = False  # whether `pause` disabled the collector (not someone else)


def pause() -> None:
    global _paused
    if gc.isenabled():
        gc.disable()
        _paused = True


def resume() -> None:
    """Freeze what the start built and collect again; nothing unless `pause` stopped collecting."""
    global _paused
    if _paused:
        _paused = False
        gc.freeze()
        gc.enable()
