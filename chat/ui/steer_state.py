"""A session's steering panel as plain values: the chosen features, their strengths, presets.

The panel shows at most MAX_ROWS features, each with a symmetric slider (suppress left,
amplify right, in multiples of the feature's max activation). Slider values live in the
browser; handlers read them as inputs and fold them back in with `with_values`, so the
state is always what the person sees.

Presets come from curated features, the more steerable first. Where the catalog measured a
feature's strength band per mode (`Feature.strengths`, {"add": [lo, hi]}: the concept shows
and the text stays fluent), presets use the band's middle and the slider reaches twice its top.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

from chat.steering import MAX_STRENGTH, MODES
from features.catalog import Catalog, Feature

MAX_ROWS = 6
DEFAULT_LIMIT = 10.0  # slider range ±10: past it most features turn text to noise
DEFAULT_AMPLIFY, DEFAULT_SUPPRESS = 4.0, -4.0
MAX_PRESET_FEATURES = 3


@dataclass(frozen=True)
class SteerRow:
    id: int
    label: str
    strength: float = 0.0
    limit: float = DEFAULT_LIMIT  # the slider runs from -limit to +limit

    @property
    def title(self) -> str:
        return f"#{self.id} {self.label}"


@dataclass(frozen=True)
class Preset:
    name: str
    rows: tuple[SteerRow, ...]
    mode: str = "add"


def recommended(feature: Feature, mode: str = "add") -> tuple[float, float, float] | None:
    """(suppress, amplify, largest) strengths from the feature's measured band for `mode`, if any."""
    band = (feature.strengths or {}).get(mode)
    if not (isinstance(band, (list, tuple)) and len(band) == 2):
        return None
    low, high = sorted(float(v) for v in band)
    middle = abs(low + high) / 2
    if not (math.isfinite(middle) and middle > 0):
        return None
    return -middle, middle, max(abs(low), abs(high))


def row_for(feature: Feature, label: str, strength: float = 0.0) -> SteerRow:
    """A row for `feature`; its slider reaches twice the largest measured strength, if any."""
    largest = max((rec[2] for mode in MODES if (rec := recommended(feature, mode))), default=0.0)
    limit = min(max(DEFAULT_LIMIT, 2 * largest), MAX_STRENGTH)
    return SteerRow(feature.id, label, max(-limit, min(limit, strength)), limit)


def with_values(rows: Sequence[SteerRow], values: Sequence) -> list[SteerRow]:
    """Rows with the strengths the sliders show now (values beyond the rows are unused slots)."""
    return [replace(r, strength=float(v) if v is not None else r.strength) for r, v in zip(rows, values)]


def add(rows: Sequence[SteerRow], row: SteerRow) -> tuple[list[SteerRow], str | None]:
    """Rows with `row` added; and a message when it was not (already there, or no room)."""
    if any(r.id == row.id for r in rows):
        return list(rows), f"{row.title} is already in the steering panel"
    if len(rows) >= MAX_ROWS:
        return list(rows), f"the panel holds at most {MAX_ROWS} features; remove one first"
    return [*rows, row], None


def remove(rows: Sequence[SteerRow], index: int) -> list[SteerRow]:
    return [r for i, r in enumerate(rows) if i != index]


def relabel(rows: Sequence[SteerRow], feature_id: int, label: str) -> list[SteerRow]:
    return [replace(r, label=label) if r.id == feature_id else r for r in rows]


def steer_dict(rows: Sequence[SteerRow]) -> dict[int, float]:
    """{feature id: strength} for Engine.stream; zero strengths are kept (they steer nothing)."""
    return {r.id: r.strength for r in rows}


def describe(rows: Sequence[SteerRow], mode: str) -> str:
    active = [f"{r.strength:+g} × {r.title}" for r in rows if r.strength]
    return f"{mode}: " + ", ".join(active) if active else "no steering"


def presets(catalog: Catalog) -> list[Preset]:
    """Ready settings from curated features: each amplified, the first suppressed, and the first
    two together (one up, one down). Empty when the catalog has no curated feature."""
    curated = sorted((f for f in catalog if f.curated), key=lambda f: -(0.5 if f.steerability is None else f.steerability))
    curated = curated[:MAX_PRESET_FEATURES]

    def row(f: Feature, amplify: bool) -> SteerRow:
        rec = recommended(f, "add")
        strength = (rec[1] if amplify else rec[0]) if rec else (DEFAULT_AMPLIFY if amplify else DEFAULT_SUPPRESS)
        return row_for(f, catalog.label(f.id), strength)

    def name(f: Feature) -> str:
        return f"“{catalog.label(f.id)}”"

    out = [Preset(f"More {name(f)}", (row(f, True),)) for f in curated]
    if curated:
        out.append(Preset(f"Less {name(curated[0])}", (row(curated[0], False),)))
    if len(curated) >= 2:
        up, down = curated[0], curated[1]
        out.append(Preset(f"More {name(up)}, less {name(down)}", (row(up, True), row(down, False))))
    return out
