"""`python -m chat bench --concepts`: does steering toward a concept by name work?

For each concept in CONCEPTS (my own list, most outside the curated features), `engine.concept`
finds a steering (or says it cannot), then replies to HELD_OUT prompts, which the search never
saw, are generated as the app generates them (chat defaults, 64 tokens):

- rate: share of replies that mention the concept (the benchmark's own words for it, whole
  words, plurals and -ed/-ing forms), steered, unsteered, and prompted ("Talk about X." before
  the same prompt: the AxBench baseline);
- cost: median perplexity of the steered replies as text, under the unsteered model, over that
  of the unsteered replies (chat/steer/concept.py `fluency`);
- avoid: with scale -1, share of replies that mention the concept when the prompt asks for it
  (ASKING), against the unsteered share;
- pass: rate >= 0.6, rate - unsteered >= 0.4, cost <= 2;
- search: seconds for an uncached `engine.concept` (first run only; later runs are cached).
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

from chat.steer.batch import replies
from chat.steer.concept import Concept, ConceptError, fluency, mention_rate
from chat.steer.settings import GenerationSettings

# (concept, the words that count as mentioning it)
CONCEPTS = (
    ("ocean", ("ocean", "oceanic", "sea")), ("anger", ("anger", "angry", "angrily", "rage", "furious", "mad")),
    ("rain", ("rain", "rainy", "rainfall")), ("animal", ("animal", "dog", "cat", "horse", "bird", "fish", "cow", "lion", "wolf", "bear")),
    ("plant", ("plant", "flower", "tree", "leaf", "leaves", "grass", "seed")),
    ("disease", ("disease", "illness", "ill", "sick", "virus", "cancer", "flu", "infection")),
    ("weather", ("weather", "rain", "sun", "sunny", "snow", "wind", "cloud", "cloudy", "storm", "temperature")), ("god", ("god", "lord")),
    ("war", ("war", "warfare")), ("computers", ("computer",)), ("sadness", ("sadness", "sad", "sorrow")),
    ("music", ("music", "musical", "song", "sing", "melody", "guitar", "piano")),
    ("food", ("food", "eat", "meal", "bread", "cheese", "meat", "fruit", "dinner", "lunch", "breakfast")), ("dogs", ("dog", "puppy")),
    ("cats", ("cat", "kitten")), ("money", ("money",)), ("love", ("love", "loving")), ("fire", ("fire",)),
    ("snow", ("snow", "snowy")), ("school", ("school",)), ("sports", ("sport", "football", "soccer", "tennis", "basketball", "game", "team")),
    ("cars", ("car",)), ("mountains", ("mountain",)), ("coffee", ("coffee",)), ("space", ("space",)),
    ("books", ("book",)), ("trees", ("tree",)), ("flowers", ("flower",)), ("birds", ("bird",)),
    ("fish", ("fish",)), ("water", ("water",)), ("sun", ("sun", "sunny", "sunshine")), ("moon", ("moon",)),
    ("city", ("city",)), ("horses", ("horse",)), ("children", ("child", "children")),
    ("death", ("death", "dead", "die", "dying")), ("medicine", ("medicine", "medical")),
    ("football", ("football",)), ("chocolate", ("chocolate",)), ("bread", ("bread",)), ("wine", ("wine",)),
    ("gold", ("gold", "golden")), ("ships", ("ship",)), ("trains", ("train",)), ("winter", ("winter",)),
    ("fear", ("fear", "afraid", "scared")), ("happiness", ("happiness", "happy")),
    ("science", ("science", "scientific", "scientist")), ("cooking", ("cooking", "cook")),
)
HELD_OUT = (  # neutral prompts the search never saw (it uses chat.steer.concept.SEARCH_PROMPTS)
    "Tell me a story.",
    "What is on your mind?",
    "What did you do yesterday?",
    "Give me some advice.",
    "Describe your morning.",
    "What are you thinking about?",
)
ASKING = ("Tell me about {c}.", "Write a sentence about {c}.", "What do you know about {c}?")
MIN_RATE, MIN_LIFT, MAX_COST = 0.6, 0.4, 2.0
MAX_NEW_TOKENS = 64  # the app's default


@dataclass
class Row:
    concept: str
    features: str  # "#id label × strength" joined, or "" where the search found none
    note: str  # the search's error, if any
    search_s: float
    rate: float
    plain_rate: float
    prompted_rate: float
    cost: float
    prompted_cost: float
    avoid_rate: float
    asked_rate: float  # unsteered, prompts asking for the concept
    passed: bool
    sample: str


def run(engine, concepts=CONCEPTS, prompts=HELD_OUT, max_new_tokens: int = MAX_NEW_TOKENS,
        progress=print) -> list[Row]:
    progress = progress or (lambda message: None)
    settings = GenerationSettings(max_new_tokens=max_new_tokens)
    plain = replies(engine, prompts, None, max_new_tokens, settings)
    plain_ppl = statistics.median(fluency(engine, plain))
    rows = []
    for word, terms in concepts:
        start = time.perf_counter()
        try:
            found: Concept | None = engine.concept(word)
            note = ""
        except ConceptError as e:
            found, note = None, str(e)
        search_s = time.perf_counter() - start
        asking = [a.format(c=word) for a in ASKING]
        # One batch: prompted, asked (unsteered), then steered and avoiding where a steering was found.
        messages = [f"Talk about {word}. {p}" for p in prompts] + asking
        steerings = [None] * len(messages)
        if found is not None:
            messages += list(prompts) + asking
            steerings += [found.steering()] * len(prompts) + [found.scaled(-1).steering()] * len(asking)
        out = replies(engine, messages, steerings, max_new_tokens, settings)
        n, m = len(prompts), len(asking)
        prompted, asked, steered, avoided = out[:n], out[n:n + m], out[n + m:2 * n + m], out[2 * n + m:]
        common = dict(concept=word, search_s=round(search_s, 2), plain_rate=mention_rate([r.text for r in plain], terms),
                      prompted_rate=mention_rate([r.text for r in prompted], terms),
                      prompted_cost=round(statistics.median(fluency(engine, prompted)) / plain_ppl, 3),
                      asked_rate=mention_rate([r.text for r in asked], terms))
        if found is None:
            row = Row(features="", note=note, rate=0.0, cost=float("nan"), avoid_rate=float("nan"), passed=False,
                      sample="", **common)
        else:
            rate = mention_rate([r.text for r in steered], terms)
            cost = statistics.median(fluency(engine, steered)) / plain_ppl
            passed = rate >= MIN_RATE and rate - common["plain_rate"] >= MIN_LIFT and cost <= MAX_COST
            what = ", ".join(f"#{f} {engine.catalog.label(f)} × {s:g}" for f, s in found.features)
            row = Row(features=what, note="", rate=rate, cost=round(cost, 3),
                      avoid_rate=mention_rate([r.text for r in avoided], terms), passed=passed,
                      sample=steered[0].text[:160], **common)
        rows.append(row)
        progress(f"{word:12s} {'PASS' if row.passed else 'fail'} rate {row.rate:.2f} (plain {row.plain_rate:.2f}, "
                 f"prompted {row.prompted_rate:.2f}) cost {row.cost:.2f} avoid {row.avoid_rate:.2f}/{row.asked_rate:.2f} "
                 f"search {row.search_s:.1f}s {row.features or row.note}")
    return rows


def summary(rows: list[Row]) -> dict:
    found = [r for r in rows if r.features]
    steered_avoid = [r for r in found if r.asked_rate > 0]
    return {
        "concepts": len(rows),
        "passed": sum(r.passed for r in rows),
        "found": len(found),
        "mean_rate": round(statistics.mean(r.rate for r in rows), 3),
        "mean_plain_rate": round(statistics.mean(r.plain_rate for r in rows), 3),
        "mean_prompted_rate": round(statistics.mean(r.prompted_rate for r in rows), 3),
        "median_cost_found": round(statistics.median(r.cost for r in found), 3) if found else None,
        "median_prompted_cost": round(statistics.median(r.prompted_cost for r in rows), 3),
        "avoid_rate": round(statistics.mean(r.avoid_rate for r in steered_avoid), 3) if steered_avoid else None,
        "asked_rate": round(statistics.mean(r.asked_rate for r in steered_avoid), 3) if steered_avoid else None,
    }


def table(rows: list[Row]) -> str:
    out = ["| concept | steered | unsteered | prompted | cost (prompted) | avoid (asked) | pass | features |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        avoid = f"{r.avoid_rate:.2f} ({r.asked_rate:.2f})" if r.features else f"– ({r.asked_rate:.2f})"
        cost = f"{r.cost:.2f} ({r.prompted_cost:.2f})" if r.features else f"– ({r.prompted_cost:.2f})"
        out.append(f"| {r.concept} | {r.rate:.2f} | {r.plain_rate:.2f} | {r.prompted_rate:.2f} | {cost} | {avoid} | "
                   f"{'✔' if r.passed else '✘'} | {r.features or 'none found'} |")
    return "\n".join(out)


def as_json(rows: list[Row]) -> dict:
    return {"summary": summary(rows), "rows": [asdict(r) for r in rows]}
