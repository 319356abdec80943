"""A session's steering panel as plain values: the chosen features, their strengths, presets.

The panel shows at most MAX_ROWS features, each with a symmetric slider (suppress left,
amplify right, in multiples of the feature's max activation). Slider values live in the
browser; handlers read them as inputs and fold them back in with `with_values`, so the
state is always what the person sees.

Presets are one-click demonstrations (sliders, mode, and a message sent with Compare on): a
dictionary's own presets.toml where it ships one, else made from curated features, the more
steerable first. Where the catalog measured a
feature's strength band per mode (`Feature.strengths`, {"add": [lo, hi]}: the concept shows
and the text stays fluent), presets use the band's middle and the slider reaches twice its top.
"""
from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

from chat.steer.steering import MAX_STRENGTH, MODES
from features.catalog import Catalog, Feature

MAX_ROWS = 6
DEFAULT_LIMIT = 10.0  # slider range ±10: past it most features turn text to noise
MIN_LIMIT = 2.0  # the narrowest slider, for features whose band is far below 1x
DEFAULT_AMPLIFY, DEFAULT_SUPPRESS = 4.0, -4.0
DISCOVER_STRENGTH = 3.0  # what `features discover` steered every feature with
MAX_PRESET_FEATURES = 3
MAX_PRESETS = 4  # the first screen's preset buttons
PRESETS_FILE = "presets.toml"  # beside a dictionary's catalog: its own one-click demonstrations
DEFAULT_PRESET_MESSAGE = "Tell me about your weekend."


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
    """A one-click demonstration: its sliders, mode, and a message to send with Compare on."""

    name: str
    rows: tuple[SteerRow, ...]
    mode: str = "add"
    message: str = DEFAULT_PRESET_MESSAGE
    description: str = ""
    terms: tuple[str, ...] = ()  # words that show it worked (checked by the embedded tests)
    expect: str = "present"  # "absent" for a suppression: the terms stay out of the steered reply


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


def starting_strength(feature: Feature, mode: str = "add") -> float:
    """Where a new slider starts, so that the next reply shows the feature: the low end of its
    measured band for `mode`; else its catalog's recommended strength (the weakest that visibly
    changes a reply: features/pipeline/recommend.py); else, for a feature that
    `features discover` saw make the model say new words (at 3x), that strength; else
    DEFAULT_AMPLIFY."""
    band = (feature.strengths or {}).get(mode)
    if isinstance(band, (list, tuple)) and len(band) == 2 and all(math.isfinite(float(v)) for v in band):
        low = min(band, key=lambda v: abs(float(v)))
        if float(low):
            return float(low)
    if measured := _measured(feature):
        return measured
    if feature.extra.get("writes"):
        return DISCOVER_STRENGTH
    return DEFAULT_AMPLIFY


def _measured(feature: Feature) -> float | None:
    value = feature.extra.get("recommended")
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value
    return float(value) if ok else None


def row_for(feature: Feature, label: str, strength: float = 0.0) -> SteerRow:
    """A row for `feature`. Its slider reaches twice the largest measured strength: the top of
    its bands, else its recommended strength (so a band at 0.5-1x is not squeezed into a corner
    of a ±10 slider, nor a feature that needs 8x pinned to its end); otherwise ±DEFAULT_LIMIT.
    `strength` is clipped to the slider's range."""
    largest = max((rec[2] for mode in MODES if (rec := recommended(feature, mode))), default=0.0)
    largest = largest or abs(_measured(feature) or 0.0)
    limit = max(MIN_LIMIT, 2 * largest) if largest else DEFAULT_LIMIT
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


def add_concept(rows: Sequence[SteerRow], features: Sequence[tuple[Feature, str, float]]) -> tuple[list[SteerRow], str | None]:
    """Rows with a concept's (feature, label, strength) triples: a feature already in the panel
    takes the concept's strength; the others are added while there is room. Each slider reaches
    at least twice its strength."""
    out = list(rows)
    skipped = []
    for feature, label, strength in features:
        row = row_for(feature, label, strength)
        limit = min(MAX_STRENGTH, max(row.limit, 2 * abs(strength)))
        row = replace(row, strength=max(-limit, min(limit, strength)), limit=limit)
        at = next((i for i, r in enumerate(out) if r.id == row.id), None)
        if at is not None:
            out[at] = row
        elif len(out) < MAX_ROWS:
            out.append(row)
        else:
            skipped.append(row.title)
    problem = (f"the panel holds at most {MAX_ROWS} features; remove some to add {', '.join(skipped)}"
               if skipped else None)
    return out, problem


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


class PresetError(ValueError):
    """A presets file that cannot be used; the message says where."""


def read_presets(path: Path, catalog: Catalog) -> list[Preset]:
    """Presets from a dictionary's presets.toml:

        [[preset]]
        name = "Obsessed with God"
        message = "Tell me about your weekend."
        mode = "add"                      # optional, add or clamp
        steer = { 5219 = 1.0 }            # feature id = strength
        terms = ["god", "lord"]           # optional: words that show it worked
        expect = "present"                # optional: "absent" for a suppression
    """
    where = str(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise PresetError(f"{where}: {e}") from None
    out = []
    for i, p in enumerate(data.get("preset", [])):
        at = f"{where}, preset {i + 1}"
        name, message, mode, steer = p.get("name"), p.get("message"), p.get("mode", "add"), p.get("steer")
        if not (isinstance(name, str) and name.strip() and isinstance(message, str) and message.strip()):
            raise PresetError(f"{at}: name and message must be non-empty text")
        if mode not in MODES:
            raise PresetError(f"{at}: mode must be one of {', '.join(MODES)}, got {mode!r}")
        if not isinstance(steer, dict) or not 1 <= len(steer) <= MAX_ROWS:
            raise PresetError(f"{at}: steer must be a table of 1 to {MAX_ROWS} feature id = strength")
        rows = []
        for key, strength in steer.items():
            if not (key.isdigit() and int(key) < len(catalog)):
                raise PresetError(f"{at}: {key!r} is not a feature id of this dictionary")
            if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not math.isfinite(strength):
                raise PresetError(f"{at}: the strength of {key} must be a number")
            rows.append(row_for(catalog[int(key)], catalog.label(int(key)), float(strength)))
        terms, expect = p.get("terms", []), p.get("expect", "present")
        if not (isinstance(terms, list) and all(isinstance(t, str) for t in terms)) or expect not in ("present", "absent"):
            raise PresetError(f"{at}: terms must be a list of words and expect 'present' or 'absent'")
        out.append(Preset(name.strip(), tuple(rows), mode, message.strip(), str(p.get("description", "")),
                          tuple(terms), expect))
    return out[:MAX_PRESETS]


def presets_for(catalog: Catalog, folder: Path | None) -> list[Preset]:
    """The dictionary's own presets where it ships a presets file, else ones made from its
    curated features (`presets`)."""
    path = folder / PRESETS_FILE if folder is not None else None
    if path is not None and path.is_file():
        return read_presets(path, catalog)
    return presets(catalog)[:MAX_PRESETS]


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
