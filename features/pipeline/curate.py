"""Curation assistant: for each concept in a list, propose the feature that writes it, with
measured add and clamp bands, for a person to review before it is marked curated.

For a concept (name, category, terms):
1. candidates: with `discovered` (what `python -m features discover` recorded), the features
   whose steered replies named a term on the most prompts; otherwise the features whose decoder
   directions best raise the terms' log-probability (`features.pipeline.writers`, a gradient), plus the
   features whose labels name the terms (readers), ranked by their measured lift at 2x;
2. the best CANDIDATES of them by lift, then the first two readers, are swept (add: 0.5, 1,
   2, 3, 4, 6 x max activation; a sweep stops at the first failing strength after a passing one,
   since bands are contiguous, and where the text has broken down) on the neutral prompts; the
   first with an add band is kept and swept in clamp mode too.

A strength passes when at least half the replies, and a quarter more than unsteered, mention a
term and the fluency cost stays <= `features.pipeline.calibrate.MAX_COST`. Results go to a JSON-lines
file, one line per concept, so a long run resumes where it stopped; concepts are visited one
category at a time in turn, so a run stopped early still covers every category.

    python -m features curate --dictionary D --concepts assets/concepts.toml --out proposals.jsonl
    python -m features curate ... --discovered writes.jsonl   # candidates from `features discover`
    python -m features curate --dictionary D --concepts assets/concepts.toml --out proposals.jsonl \\
        --write --reject "poison|islands"     # after reading them: mark the rest curated

Reading a proposal, a person may set its "label" (what the feature was seen to write: "girls"
for a "children" proposal whose replies say "I'm a 16 year old girl"), "terms" and "category"
in the JSON line; `--write` uses them.
"""
from __future__ import annotations

import json
import time
import tomllib
from itertools import zip_longest
from pathlib import Path
from typing import NamedTuple, Sequence

import torch.nn.functional as F

from chat.measure import metrics
from chat.steer.concept import NEUTRAL_PROMPTS
from features.pipeline.calibrate import MAX_COST, SweepPoint, band, sweep, unsteered
from features.pipeline.writers import find_writers

PROMPTS = NEUTRAL_PROMPTS[:4]  # the prompts of assets/specs/curated.toml
MAX_NEW_TOKENS = 20
# Max activations come from the most extreme of 300k tokens, so a feature may need 1x or 6x of
# it: the sweep goes on while the text stays fluent.
STRENGTHS = (0.5, 1.0, 2.0, 3.0, 4.0, 6.0)
CANDIDATES = 3  # candidates swept per concept, best lift first
GRADIENT_TOP = 64  # candidates by gradient confirmed by steering (one batched pass per 32)
MIN_LIFT = 0.002  # below this a candidate does not move the terms' probability at all


class Concept(NamedTuple):
    name: str  # becomes the curated label: what the feature writes
    category: str
    terms: tuple[str, ...]
    candidates: tuple[int, ...] = ()  # when given, the features swept instead of searching (see carried_over)


def load_concepts(path: Path) -> list[Concept]:
    """[[concept]] tables with name, category, terms and, optionally, candidates (feature ids to
    sweep instead of searching: what `python -m features discover` found), from a TOML file."""
    try:
        rows = tomllib.loads(Path(path).read_text())["concept"]
        concepts = [Concept(str(r["name"]), str(r.get("category", "")), tuple(str(t) for t in r["terms"]),
                            tuple(int(i) for i in r.get("candidates", ()))) for r in rows]
    except (OSError, KeyError, TypeError, ValueError, tomllib.TOMLDecodeError) as e:
        raise ValueError(f"{path}: not a concepts file ([[concept]] tables with name and terms): {e}") from None
    if any(not c.terms for c in concepts):
        raise ValueError(f"{path}: every concept needs at least one term")
    return concepts


def by_category_in_turn(concepts: Sequence[Concept]) -> list[Concept]:
    groups: dict[str, list[Concept]] = {}
    for c in concepts:
        groups.setdefault(c.category, []).append(c)
    return [c for row in zip_longest(*groups.values()) for c in row if c]


def _readers(engine, terms: Sequence[str], n: int = 6) -> list[int]:
    """Features whose labels name the terms (what `python -m chat search` finds), term by term."""
    found: list[int] = []
    for term in terms:
        found += [f.id for f in engine.catalog.search(term, top=2) if f.id not in found]
    return found[:n]


def _points(points: Sequence[SweepPoint]) -> list[list]:
    return [[p.strength, round(p.concept_rate, 2), round(p.fluency_cost, 2), list(p.samples[:2])] for p in points]


def from_discovered(concept: Concept, discovered: Sequence, top: int = CANDIDATES) -> list[int]:
    """The `top` features whose steered replies (`features.pipeline.discover.Written`) mention the
    concept's terms on the most prompts (at least two), fewest other new words first: a writer of
    "snow" that says only "snow" beats one that also says "tax" and "cheese"."""
    pattern = metrics.term_pattern(concept.terms)
    scored = []
    for row in discovered:
        hits = sum(pattern.search(reply) is not None for reply in row.replies)
        if hits >= 2:
            scored.append((-hits, len(row.words), row.feature))
    return [fid for *_, fid in sorted(scored)[:top]]


def propose(engine, concept: Concept, baseline, discovered: Sequence = ()) -> dict:
    """One concept's proposal: candidates, their sweeps and, when one passes, `chosen` with its
    `add` and `clamp` bands."""
    plain_rate = metrics.concept_rate([r.text for r in baseline[0]], concept.terms)
    need = max(0.5, plain_rate + 0.25)

    def sweep_up(fid: int, mode: str) -> list[SweepPoint]:
        points: list[SweepPoint] = []
        for s in STRENGTHS:
            points += sweep(engine, fid, mode, concept.terms, strengths=(s,), prompts=PROMPTS,
                            max_new_tokens=MAX_NEW_TOKENS, baseline=baseline)
            if band(points[-1:], need) is None and band(points, need):  # failed after a pass
                break
            if points[-1].fluency_cost > MAX_COST:  # broken text only gets worse from here
                break
        return points

    out = {"name": concept.name, "category": concept.category, "terms": list(concept.terms),
           "plain_rate": plain_rate, "tried": []}

    def accept(fid: int) -> bool:
        add = sweep_up(fid, "add")
        out["tried"].append({"feature": fid, "label": engine.catalog.label(fid), "add": _points(add)})
        if add_band := band(add, need):
            clamp = sweep_up(fid, "clamp")
            out.update(chosen=fid, add=add_band, clamp=band(clamp, need), clamp_sweep=_points(clamp))
        return bool(add_band)

    if concept.candidates:  # known directions to check, not a search
        any(accept(fid) for fid in concept.candidates)
        return out
    if discovered:  # steering every feature already showed who writes what: no search
        out["discovered"] = from_discovered(concept, discovered)
        any(accept(fid) for fid in out["discovered"])
        return out
    readers = _readers(engine, concept.terms)
    writers = find_writers(engine, concept.terms, top=GRADIENT_TOP, prompts=NEUTRAL_PROMPTS[:2], also=readers)
    out["writers"] = [w._asdict() for w in writers[:6]]
    # Lift at one strength on two prompts misses writers that need a stronger push, so the
    # features whose labels name the terms get swept too.
    by_lift = [w.feature for w in writers if w.lift > MIN_LIFT][:CANDIDATES]
    any(accept(fid) for fid in by_lift + [r for r in readers[:2] if r not in by_lift])
    return out


def carried_over(old, old_catalog, new, top: int = 2) -> list[Concept]:
    """The curated features (with terms) of an older dictionary of the same model and layer, as
    concepts whose first candidates are the `top` features of `new` with the nearest decoder
    directions: a retrained dictionary mostly relearns the same directions (cosine 0.6-0.9), so
    this finds in seconds what the search takes minutes to."""
    if old.d_in != new.d_in:
        raise ValueError(f"the dictionaries read different widths ({old.d_in} and {new.d_in}): not the same model")
    curated = [f for f in old_catalog if f.curated and f.extra.get("terms")]
    if not curated:
        return []
    w_old = F.normalize(old.W_dec[[f.id for f in curated]].float(), dim=1)  # (n, d_in)
    near = (w_old @ F.normalize(new.W_dec.float(), dim=1).T).topk(top, dim=1).indices  # (n, top)
    return [Concept(f.label, str(f.extra.get("category", "carried over")), tuple(f.extra["terms"]), tuple(ids))
            for f, ids in zip(curated, near.tolist())]


def covered(concepts: Sequence[Concept], catalog) -> list[Concept]:
    """The concepts that a curated feature of `catalog` already writes: its label is the concept's
    name, or its terms hold at least half of the concept's (a retrained dictionary's carried-over
    labels name the same concepts differently: "God" and "God and the Lord")."""
    curated = [f for f in catalog if f.curated]
    names = {f.label for f in curated}
    term_sets = [{t.lower() for t in f.extra.get("terms") or ()} for f in curated]
    return [c for c in concepts if c.name in names
            or any(len(ts & {t.lower() for t in c.terms}) * 2 >= len(c.terms) for ts in term_sets)]


def run(engine, concepts: Sequence[Concept], out: Path, progress=print, discovered: Sequence = ()) -> list[dict]:
    """Propose for every concept not yet in `out` (JSON lines), appending as it goes."""
    out = Path(out)
    done = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    names = {d["name"] for d in done}
    baseline = unsteered(engine, PROMPTS, MAX_NEW_TOKENS)
    for concept in by_category_in_turn(concepts):
        if concept.name in names:
            continue
        start = time.time()
        row = propose(engine, concept, baseline, discovered)
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        done.append(row)
        progress(f"{concept.name:<32} #{row.get('chosen', '-')} add {row.get('add')} clamp {row.get('clamp')} "
                 f"({time.time() - start:.0f}s)")
    return done


def accepted(proposals: Sequence[dict], reject: Sequence[str] = (), taken: Sequence[int] = ()) -> list[dict]:
    """Proposals with a feature and both bands, minus rejected names; a feature proposed for two
    concepts goes to the first, and features in `taken` (already curated) to none."""
    taken = set(taken)
    keep = []
    for p in proposals:
        if p.get("chosen") is None or not p.get("clamp") or p["name"] in reject or p["chosen"] in taken:
            continue
        taken.add(p["chosen"])
        keep.append(p)
    return keep


def spec_strength(proposal: dict, mode: str) -> float:
    """The strength a spec case checks: inside the measured band, the one where most replies
    named the concept (then the lowest). The band's low end only just passed in the batched
    sweep, and replies generated one at a time (as `chat check` does) differ from batched ones
    in the last bits, which flips a reply at the margin."""
    lo, hi = proposal[mode]
    if mode == "add":
        points = next((t["add"] for t in proposal.get("tried", ()) if t["feature"] == proposal["chosen"]), [])
    else:
        points = proposal.get("clamp_sweep") or []
    inside = [(strength, rate) for strength, rate, *_ in points if lo <= strength <= hi]
    return max(inside, key=lambda p: (p[1], -p[0]))[0] if inside else lo


def spec_toml(picks: Sequence[dict], labels: dict[int, str], header: bool = True) -> str:
    """A `python -m chat check` spec for accepted proposals: per feature, one add and one clamp
    case at `spec_strength`, on the prompts the bands were measured on, so CI notices when a
    model or dictionary change breaks a curated feature. `labels`: feature id -> its label (the
    cases name features by label, so they also check that search finds them). Without `header`,
    the cases alone, to append to an existing spec."""
    lines = ["# Steering tests for curated features, written by `python -m features curate --write --spec`.",
             "# Strengths: inside each feature's measured band (features.json \"strengths\"), where most",
             "# replies named the concept; prompts: the neutral prompts the bands were measured on; plain",
             "# greedy decoding in the plain transcript, as the sweeps.", "",
             f"prompts = {json.dumps(list(PROMPTS))}", f"max_new_tokens = {MAX_NEW_TOKENS}",
             'temperature = 0.0', 'repetition_penalty = 1.0', 'no_repeat_ngram = 0', 'frame = "plain"', ""] \
        if header else []
    for p in picks:
        for mode, verb in (("add", "amplified"), ("clamp", "clamped")):
            name = f"{p.get('label', p['name'])}, {verb}"
            lines += ["[[case]]", f"name = {json.dumps(name)}",
                      f"feature = {json.dumps(labels[p['chosen']])}", f'mode = "{mode}"',
                      f"strength = {spec_strength(p, mode)}", f"terms = {json.dumps(p['terms'])}",
                      "min_concept_rate = 0.5", f"max_fluency_cost = {MAX_COST}", ""]
    return "\n".join(lines)
