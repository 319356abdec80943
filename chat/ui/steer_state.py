"""A session's steering panel as plain values: the chosen features, their strengths, presets.

The panel shows at most MAX_ROWS features, each with a symmetric slider (suppress left,
amplify right, in multiples of the feature's max activation). Slider values live in the
browser; handlers read them as inputs and fold them back in with `with_values`, so the
state is always what the person sees.

Presets come from curated features. A feature may recommend strengths in features.json;
`recommended` reads them defensively from any of these keys, as one number (amplify) or a
[low, high] pair: "strength_range", "recommended_strength", "steer_strength".
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

from chat.steering import MAX_STRENGTH
from features.catalog import Catalog, Feature

MAX_ROWS = 6
DEFAULT_LIMIT = 10.0  # slider range ±10: past it most features turn text to noise
DEFAULT_AMPLIFY, DEFAULT_SUPPRESS = 4.0, -4.0
MAX_PRESET_FEATURES = 3
STRENGTH_KEYS = ("strength_range", "recommended_strength", "steer_strength")


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


def recommended(feature: Feature) -> tuple[float, float] | None:
    """(suppress, amplify) strengths the catalog recommends for this feature, if any."""
    for key in STRENGTH_KEYS:
        value = feature.extra.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value:
            return -abs(value), abs(value)
        if (isinstance(value, (list, tuple)) and len(value) == 2
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)):
            low, high = sorted(float(v) for v in value)
            if low < 0 < high:
                return low, high
            if high > 0:  # only amplifying strengths given
                return -high, high
            if low < 0:
                return low, -low
    return None


def row_for(feature: Feature, label: str, strength: float = 0.0) -> SteerRow:
    """A row for `feature`; its slider reaches twice the recommended strength, when there is one."""
    rec = recommended(feature)
    limit = DEFAULT_LIMIT if rec is None else max(DEFAULT_LIMIT, 2 * max(-rec[0], rec[1]))
    limit = min(limit, MAX_STRENGTH)
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
    curated = [f for f in catalog if f.curated][:MAX_PRESET_FEATURES]
    out = []

    def strength(f: Feature, amplify: bool) -> float:
        rec = recommended(f)
        return (rec[1] if amplify else rec[0]) if rec else (DEFAULT_AMPLIFY if amplify else DEFAULT_SUPPRESS)

    for f in curated:
        out.append(Preset(f"More “{catalog.label(f.id)}”", (row_for(f, catalog.label(f.id), strength(f, True)),)))
    if curated:
        f = curated[0]
        out.append(Preset(f"Less “{catalog.label(f.id)}”", (row_for(f, catalog.label(f.id), strength(f, False)),)))
    if len(curated) >= 2:
        up, down = curated[0], curated[1]
        out.append(Preset(f"More “{catalog.label(up.id)}”, less “{catalog.label(down.id)}”",
                          (row_for(up, catalog.label(up.id), strength(up, True)),
                           row_for(down, catalog.label(down.id), strength(down, False)))))
    return out
