"""What fired on a reply, as values the fired-features panel shows.

`LastReply` keeps a session's latest reply compactly (tokens and sparse activations, not the
dense (T, d_sae) readout) so the panel can highlight any feature on it later.
"""
from __future__ import annotations

import html
import re
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from chat.generate import Reply
from chat.readout import FeatureHit
from features.catalog import Feature

MAX_EXAMPLES = 5
_CHOICE = re.compile(r"^(?:⚠ )?#(\d+)\b")


@dataclass
class LastReply:
    tokens: list[str]
    acts: torch.Tensor  # (T, d_sae) sparse COO, float32
    hits: list[FeatureHit]

    @classmethod
    def of(cls, reply: Reply) -> "LastReply":
        return cls(list(reply.tokens), reply.readout.acts.to_sparse(), list(reply.top_features))

    def feature(self, i: int) -> list[float]:
        """Per-token activations of feature i over the reply."""
        return self.acts.select(1, i).to_dense().tolist()


def choice_name(hit: FeatureHit, label: str, watched: bool) -> str:
    return f"{'⚠ ' if watched else ''}#{hit.id} {label} · {hit.activation:.3g}"


def choice_id(name: str) -> int | None:
    """The feature id in a fired-panel entry ("#123 bridge · 4.2"), or None."""
    m = _CHOICE.match(name or "")
    return int(m.group(1)) if m else None


def bars(last: LastReply | None, label: Callable[[int], str], watched: Sequence[int] = ()) -> dict[str, float] | None:
    """gr.Label value: each top feature's peak as a fraction of its usual max (bars stop at 1)."""
    if last is None or not last.hits:
        return None
    return {choice_name(h, label(h.id), h.id in watched): min(max(h.relative, 0.0), 1.0) for h in last.hits}


def highlight(last: LastReply, i: int) -> list[tuple[str, float | None]]:
    """gr.HighlightedText value: the reply's tokens, shaded by feature i's activation on each."""
    acts = last.feature(i)
    peak = max(acts, default=0.0)
    return [(tok, a / peak if a > 0 and peak > 0 else None) for tok, a in zip(last.tokens, acts)]


def watch_alert(last: LastReply | None, watched: Sequence[int], label: Callable[[int], str]) -> tuple[str, list[str]]:
    """(markdown for the panel, names of the watched features that fired)."""
    if last is None or not watched:
        return "", []
    fired = []
    for i in watched:
        acts = last.feature(i)
        if any(a > 0 for a in acts):
            n = sum(a > 0 for a in acts)
            fired.append(f"#{i} {label(i)} (peak {max(acts):.3g} on {n} token{'s' if n != 1 else ''})")
    if fired:
        return "### ⚠ Watched feature fired\n" + "\n".join(f"- **{f}**" for f in fired), fired
    return f"✓ No watched feature fired ({len(watched)} watched).", []


def feature_card(f: Feature, label: str, steered: float | None = None) -> str:
    stats = []
    if f.max_activation is not None:
        stats.append(f"usual max {f.max_activation:.3g}")
    if f.density is not None:
        stats.append(f"fires on {f.density:.3%} of tokens")
    if f.curated:
        stats.append("curated")
    if f.steerability is not None:
        stats.append(f"steerability {f.steerability:.2f}")
    stats += [f"{mode} works at {lo:g}…{hi:g}" for mode, (lo, hi) in sorted((f.strengths or {}).items())]
    lines = [f"### #{f.id} {label}", " · ".join(stats)]
    writes = f.extra.get("writes")
    if isinstance(writes, list) and writes:  # features/discover.py: what steering with it made the model say
        lines.append("Amplified, replies say: " + ", ".join(f"`{w}`" for w in writes[:8] if isinstance(w, str)))
    if f.top_tokens:
        lines.append("Promotes: " + ", ".join(f"`{t.strip() or repr(t)}`" for t in f.top_tokens[:8]))
    return "\n\n".join(line for line in lines if line)


def neighbour_choices(neighbours: Sequence[tuple[int, float]], label: Callable[[int], str]) -> list[tuple[str, int]]:
    return [(f"#{i} {label(i)} · cos {c:.2f}", i) for i, c in neighbours]


def examples_html(f: Feature) -> str:
    """The feature's top example contexts from features.json, shaded by activation where the
    example carries per-token values, else with its max token marked. Read defensively: the
    examples' shape may vary between catalog versions."""
    rows = []
    for ex in f.examples[:MAX_EXAMPLES]:
        tokens = ex.get("tokens") if isinstance(ex, dict) else None
        if not isinstance(tokens, list) or not tokens:
            continue
        acts = ex.get("acts")
        acts = acts if isinstance(acts, list) and len(acts) == len(tokens) else None
        top = ex.get("max_index")
        peak = max((a for a in acts or () if isinstance(a, (int, float))), default=0) or 1
        spans = []
        for j, tok in enumerate(tokens):
            a = acts[j] if acts and isinstance(acts[j], (int, float)) else (peak if j == top else 0)
            alpha = max(0.0, min(1.0, a / peak))
            style = f"background: rgba(255, 140, 0, {alpha:.2f});" if alpha > 0 else ""
            spans.append(f'<span style="{style}">{html.escape(str(tok))}</span>')
        rows.append(f'<div class="example">{"".join(spans)}</div>')
    if not rows:
        return "<p><i>No example contexts in this dictionary's catalog.</i></p>"
    return "".join(rows)
