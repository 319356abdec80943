"""What fired on a reply, as values the fired-features panel shows.

`LastReply` keeps a session's latest reply compactly (tokens and sparse activations, not the
dense (T, d_sae) readout) so the panel can highlight any feature on it later; with it, the
user's message, which the panel reads instead on request (`read_on`; a 270M model's reply is
often beside the point: "I had a terrible fight with my brother." -> "I'm sorry").

The bars rank features by how unusual their activation is for this reply (`unusual`): the
peak as a fraction of the feature's usual max, discounted for features that fire on much of
any text (a feature on 20% of tokens firing says little about this reply), and for names that
predict its firing poorly (`confidence`, from the detection score). Features that fire
on form (punctuation, line breaks, almost every token) hide unless `show_form`.
"""
from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from chat.steer.generate import Reply
from chat.steer.readout import FeatureHit
from features.catalog import Catalog, Feature
from features.kinds import CONCEPT, FORM_KINDS, FUNCTION, FUNCTION_WORDS, MIXED, NAMES, SPOKEN_FORMS, WORD
from features.words import join

MAX_EXAMPLES = 5
TOP_BARS = 10
_CHOICE = re.compile(r"^(?:⚠ )?#(\d+)\b")
RARE_DENSITY = 1e-5  # features this rare or rarer count fully; denser ones less (log scale)
UNKNOWN_DENSITY = 1e-3  # for features without stats: a typical density
MIN_SCORED_FIRES = 5  # fewer held-out firings than this: the detection score means little
MIN_CONFIDENCE = 0.2


@dataclass
class LastReply:
    tokens: list[str]
    acts: torch.Tensor  # (T, d_sae) sparse COO, float32
    hits: list[FeatureHit]
    message: str | None = None  # the user's message it answers

    @classmethod
    def of(cls, reply: Reply, message: str | None = None) -> "LastReply":
        return cls(list(reply.tokens), reply.readout.acts.to_sparse(), list(reply.top_features), message)

    def feature(self, i: int) -> list[float]:
        """Per-token activations of feature i over the text."""
        return self.acts.select(1, i).to_dense().tolist()


ON_REPLY, ON_MESSAGE = "the reply", "your message"
MESSAGE_CHARS = 4000  # the panel reads a message's last this many characters


def read_on(last: LastReply | None, on: str | None, encode: Callable) -> LastReply | None:
    """What the panel reads: the reply, or with `on` == ON_MESSAGE the message it answers, read
    when asked for by `encode` (chat.engine.Engine.encode: one forward pass to the dictionary's
    layer, ~30 ms for a sentence here, ~1 s for MESSAGE_CHARS), so replies never wait for it."""
    if last is None or on != ON_MESSAGE or not last.message:
        return last
    said = encode(last.message[-MESSAGE_CHARS:])
    return LastReply(list(said.tokens), said.acts.to_sparse(), [])


def unusual(relative: float, density: float | None) -> float:
    """How unusual a feature's peak is on a reply, in 0..1: its peak ÷ its usual max (capped at
    1), times its rarity (1 for a feature firing on 1 token in RARE_DENSITY^-1, falling on a log
    scale to 0.1 for one firing on nearly every token)."""
    d = min(max(density if density else UNKNOWN_DENSITY, RARE_DENSITY), 1.0)
    rarity = max(0.1, math.log(d) / math.log(RARE_DENSITY))
    return min(max(relative, 0.0), 1.0) * rarity


def confidence(f: Feature) -> float:
    """How far the feature's name can be trusted, in 0.2..1, from its detection score: a name
    that predicts where the feature fires (score >= 0.8) counts fully; one no better than
    chance (0.5), one scored on fewer than MIN_SCORED_FIRES held-out firings, or a "mixed" one,
    hardly. Curated features too: a curated name says what the feature writes, which may not be
    where it fires. Catalogs without scores count fully; a feature that never fired on the
    held-out text (no score, 0 firings) hardly."""
    score, fires = f.extra.get("score"), f.extra.get("heldout_fires")
    if not isinstance(score, (int, float)):
        return MIN_CONFIDENCE if isinstance(fires, int) else 1.0  # measured, and silent on held-out text
    if isinstance(fires, int) and fires < MIN_SCORED_FIRES or f.extra.get("kind") == MIXED:
        return MIN_CONFIDENCE  # a "mixed" name says that no word list predicts it: nothing to read
    return min(1.0, max(MIN_CONFIDENCE, (score - 0.5) / 0.3))


def reads_its_label(f: Feature) -> bool:
    """Whether a feature's label says where it fires. A curated label says what the feature
    writes (features/pipeline/curate.py); most writers fire elsewhere ("happiness and joy" on
    "of"), so it reads its label only when one of its reads is one of its concept terms.
    Features without reads or terms (hand-made catalogs) are taken at their word."""
    reads, terms = f.extra.get("reads"), f.extra.get("terms")
    if not f.curated or not isinstance(reads, list) or not isinstance(terms, list) or not reads or not terms:
        return True
    return bool({str(w).lower() for w in reads} & {str(t).lower() for t in terms})


def panel_label(f: Feature, label: str) -> str:
    """The name the panel shows: a curated writer that does not read its label shows where it
    fires, then what it writes ("word: of → happiness and joy"), so that a reply with "of" in it
    does not seem to be about joy."""
    name = f.extra.get("name")
    if reads_its_label(f) or not isinstance(name, str) or not name or name == f.label:
        return label  # older catalogs name curated features by their label: nothing else to show
    return f"{name.split(' → ')[0]} → {label}"


_CONTRACTIONS = frozenset({"dont", "doesnt", "didnt", "im", "ive", "its", "thats", "cant", "wont", "isnt", "youre"})


def kind_of(f: Feature) -> str:
    """The feature's kind (features/kinds.py), "concept" where the catalog does not say; a
    one-word feature whose word is a function word ("a", "is"), or a mixed one of function words
    and punctuation only, counts as function words."""
    kind = f.extra.get("kind")
    trusted = f.curated and reads_its_label(f)  # a curated writer firing elsewhere counts by where it fires
    label = f.label if not f.curated or trusted else str(f.extra.get("name") or f.label)
    word = label.lower().removeprefix("word: ").split(" → ")[0]  # honest names: "word: a → writes" (features/kinds.py)
    if kind == WORD and not trusted and (word in FUNCTION_WORDS or word.replace("'", "") in _CONTRACTIONS):
        return FUNCTION
    if kind == MIXED and not trusted:  # "mixed: the, on, it": grammar that fires elsewhere too
        words = [w.strip().lower() for w in label.removeprefix("mixed: ").split(" → ")[0].split(",")]
        if all(w in FUNCTION_WORDS or w in SPOKEN_FORMS or not w.isalpha() for w in words):
            return FUNCTION
    return kind if isinstance(kind, str) and kind else CONCEPT


def kind_note(f: Feature) -> str:
    """What the panel shows after a name: the kind where it is not a concept and the name does
    not already say it."""
    kind = kind_of(f)
    if kind in (CONCEPT, WORD, "curated") or (f.curated and reads_its_label(f)) or NAMES.get(kind) == f.label \
            or panel_label(f, f.label).startswith(f"{kind}: "):  # "mixed: Saturday, minus", not "... [mixed]"
        return ""
    return f" [{kind}]"


def ranked(last: LastReply | None, catalog: Catalog, show_form: bool = False, top: int = TOP_BARS) -> list[FeatureHit]:
    """The reply's features, most unusual first (`unusual`, times the `confidence` in the name),
    one per name; without `show_form`, no features of FORM_KINDS. `relative` of each hit is
    that product."""
    if last is None or last.acts._nnz() == 0:
        return []
    dense = last.acts.to_dense()  # (T, d_sae): a reply is short
    peak = dense.max(dim=0).values
    fired = (dense > 0).sum(dim=0)
    hits = []
    for i in torch.nonzero(peak > 0).squeeze(-1).tolist():
        f = catalog[i]
        if not show_form and kind_of(f) in FORM_KINDS:
            continue
        usual = catalog.max_activation(i) or float(peak[i])
        hits.append(FeatureHit(i, panel_label(f, catalog.label(i)), float(peak[i]), int(fired[i]),
                               unusual(float(peak[i]) / max(usual, 1e-6), f.density) * confidence(f)))
    hits.sort(key=lambda h: (-h.relative, -h.tokens, h.id))
    # Several features often share a name ("people" for five features that fire on "I"); the
    # panel shows the most unusual of them, so that its rows name different things.
    seen: set[str] = set()
    distinct = [h for h in hits if not (h.label in seen or seen.add(h.label))]
    return distinct[:top]


def choice_name(hit: FeatureHit, label: str, watched: bool, note: str = "", word: str = "") -> str:
    on = f" · on “{word}”" if word else ""
    return f"{'⚠ ' if watched else ''}#{hit.id} {label}{note}{on} · peak {hit.activation:.3g}"


def peak_words(last: LastReply, ids: Sequence[int]) -> dict[int, str]:
    """{feature id: the whole word, as written, that it peaks on in the text}. Shown beside the
    name, so a reader can see at a glance when a name does not fit where it fired here
    ("groups and organisations · on “coma”")."""
    units = join(last.tokens)
    out = {}
    for i in ids:
        acts = last.feature(i)
        t = max(range(len(acts)), key=acts.__getitem__, default=None)
        if t is not None and acts[t] > 0:
            out[i] = _visible(units.words[units.of_token[t]])
    return out


def choice_id(name: str) -> int | None:
    """The feature id in a fired-panel entry ("#123 bridge · on “bridge” · peak 4.2"), or None."""
    m = _CHOICE.match(name or "")
    return int(m.group(1)) if m else None


def bars(last: LastReply | None, label: Callable[[int], str], watched: Sequence[int] = (),
         show_form: bool = False, catalog: Catalog | None = None) -> dict[str, float] | None:
    """gr.Label value: the most unusual features of the reply (`ranked`), each bar its
    unusualness. `catalog` gives densities and kinds; by default the one `label` belongs to
    (callers pass `catalog.label`). Without one, the reply's own top features by peak ÷ max."""
    if last is None:
        return None
    catalog = catalog if catalog is not None else getattr(label, "__self__", None)
    if not isinstance(catalog, Catalog):  # a message read for the panel has no hits of its own
        on = peak_words(last, [h.id for h in last.hits])
        return {choice_name(h, label(h.id), h.id in watched, word=on.get(h.id, "")): min(max(h.relative, 0.0), 1.0)
                for h in last.hits} or None
    hits = ranked(last, catalog, show_form)
    on = peak_words(last, [h.id for h in hits])
    return {choice_name(h, panel_label(catalog[h.id], label(h.id)), h.id in watched, kind_note(catalog[h.id]),
                        on.get(h.id, "")): round(h.relative, 4) for h in hits} or None


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


def _visible(word: str) -> str:
    """A word or token as a reader can see it in the card: stripped, whitespace by name,
    control characters by code (never an empty chip)."""
    shown = word.strip()
    if not shown:
        return "line break" if "\n" in word else "tab" if "\t" in word else "space"
    return shown if shown.isprintable() else " ".join(c if c.isprintable() else f"U+{ord(c):04X}" for c in shown)


def feature_card(f: Feature, label: str, steered: float | None = None) -> str:
    stats = []
    if f.max_activation is not None:
        stats.append(f"usual max {f.max_activation:.3g}")
    if f.density is not None:
        stats.append(f"fires on {f.density:.3%} of tokens")
    if f.curated:
        stats.append("curated")
    if f.steerability is not None:
        stats.append(f"steerability {f.steerability:.2f} (probability it adds to the words it names when "
                     "amplified; 0 = it does not write them)")
    stats += [f"{mode} works at {lo:g}…{hi:g}" for mode, (lo, hi) in sorted((f.strengths or {}).items())]
    score = f.extra.get("score")
    heading = f"### #{f.id} {label}{kind_note(f)}"
    if isinstance(score, (int, float)):  # beside the name: how far to trust it
        fires = f.extra.get("heldout_fires")
        heading += f" · detection {score:.2f}" + ("" if reads_its_label(f) else " (of its automatic name)")
        stats.append(f"detection score {score:.2f}" + (f" on {fires:,} held-out firings" if isinstance(fires, int) else ""))
    lines = [heading, " · ".join(stats)]
    name = f.extra.get("name")
    if isinstance(name, str) and name and name != label:
        lines.append(f"Automatic name: {name}")
    reads = f.extra.get("reads")
    if isinstance(reads, list) and reads:  # features/pipeline/label.py: the words that set its contexts apart
        lines.append("Reads: " + ", ".join(f"`{_visible(w)}`" for w in reads[:8] if isinstance(w, str)))
    held = f.heldout_words()
    if held:  # features/pipeline/label.py: measured where it fires, not predicted
        covered = f.extra.get("agreement")  # features/pipeline/naming.py `agreement`
        lines.append("On held-out text, its strong firings land on: "
                     + ", ".join(f"`{_visible(w)}` {share:.0%}" for w, share in held[:3])
                     + (f" (its automatic name covers {covered:.0%} of its eight commonest words there)"
                        if isinstance(covered, (int, float)) else ""))
    writes = f.extra.get("writes")
    if isinstance(writes, list) and writes:  # features/pipeline/discover.py: what steering with it made the model say
        lines.append("Amplified, replies say: " + ", ".join(f"`{w}`" for w in writes[:8] if isinstance(w, str)))
    if f.top_tokens:
        lines.append("Promotes: " + ", ".join(f"`{_visible(t)}`" for t in f.top_tokens[:8]))
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
