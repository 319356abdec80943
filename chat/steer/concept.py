"""Steer toward a concept by name: find the features that *write* it, and choose them and their
strengths by measurement, not by label.

    engine.concept("ocean")            # -> Concept: features, mode, strengths, measured band
    engine.reply("How was your day?", steer=engine.concept("ocean"))
    engine.concept("ocean", scale=-1)  # the same features pushed the other way: avoid it

Search (`find`, about 30 s on 2 CPU cores; docs/concepts.md):
1. **Candidates.** The word's reading profile (the features that fire on it in a few contexts
   beyond what they fire on everyday words there; its top 1, 2 and 3 together), the catalog's
   name matches, features `discover` saw write the concept's words, and the features whose
   decoder direction best matches the gradient of log P(concept tokens) at the start of replies
   to neutral prompts (every feature ranked at once, `attribution`).
2. **Screen.** Each candidate steers short replies to the search prompts at three strengths,
   with the chat's own frame and decoding settings, so what is measured is what the app does.
3. **Confirm.** The three whose replies mentioned the concept most, at and around their best
   strength, and each two of them together (at most three features; two features that each
   reached the concept now and then often do it together), in longer replies. A setting passes
   when at least MIN_RATE of the replies mention the concept and their median perplexity as
   text, under the unsteered model, is at most MAX_COST times the unsteered replies'. The
   most mentions win, then the weakest push.
Where nothing passes, `ConceptError` says so, with the best that was found.

A concept's result is cached per dictionary (`ConceptCache`): the dictionary's own
`concepts.json` (shipped for the embedded one), then the user cache, so a second request is
instant.

Strength unit: a Concept's strengths are ordinary steering strengths (multiples of each
feature's max activation) at **scale 1**, the measured setting; `scale` multiplies them all.
"""
from __future__ import annotations

import json
import os
import re
import statistics
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from chat.steer.batch import BatchReply, replies
from chat.steer.settings import GenerationSettings
from chat.steer.hooks import on_output
from chat.measure.metrics import PLURALS, concept_rate, concept_token_ids, perplexities
from chat.steer.steering import MAX_STRENGTH, Steering, SteeringError, parse_strength
from features import lexicon
from features.catalog import _write_atomic
from features.paths import home_dir

# Replies to these are about nothing in particular: a concept that shows up in them was put there.
NEUTRAL_PROMPTS = (
    "Tell me about your weekend.",
    "What should I do this afternoon?",
    "Write a few sentences about anything you like.",
    "How was your day?",
    "Tell me a story.",
    "What is on your mind?",
)
SEARCH_PROMPTS = NEUTRAL_PROMPTS[:4]  # the benchmark (chat/measure/concept_bench.py) uses others
# Screen: every candidate at every scale on every search prompt, as the app generates (chat frame
# and defaults; what shows in the plain transcript often does not in chat), 16 tokens.
SCREEN_SCALES = (0.75, 1.5, 3.0)  # multiples of a candidate's unit strengths
SCREEN_TOKENS = 16
# Confirm: the leaders at and around their best scale, longer replies.
CONFIRM_RATIOS = (0.75, 1.0, 1.33)
PAIR_RATIOS = (0.5, 0.75, 1.0)  # two leaders together, each at this share of its best scale
MAX_FEATURES = 3
SEARCH_TOKENS = 24  # reply length confirmed; replies in the app are longer, so mentions only grow
LEADERS = 3
MIN_RATE = 0.75  # 3 of 4 confirming replies mention the concept (2 of 4 was often luck on new prompts)
MAX_COST = 1.7  # median perplexity ratio; the benchmark's bound is 2, this leaves room for new prompts
# A wider net than 3, 2, 2: which name match writes a concept is luck ("anger" is written by
# its 4th, "medicine" by its 3rd), and the screen costs ~2.5 s a candidate here.
GRADIENT_CANDIDATES, NAME_CANDIDATES, WRITER_CANDIDATES = 4, 4, 3
# Where none of them passes, a second round tries the next as many of each (a concept that
# passes in the first round is never searched further, so its result does not change).
ROUNDS = 2
FORMAT = "steerchat-concepts/1"
CONCEPTS_FILE = "concepts.json"  # beside a dictionary's catalog: its measured concepts
INFLECTIONS = (*PLURALS, "ed", "ing")
_WORD = re.compile(r"[a-z][a-z' -]{0,38}[a-z]|[a-z]")


class ConceptError(ValueError):
    """A concept that cannot be steered toward; the message (one line) says why."""


@dataclass(frozen=True)
class Concept:
    """A concept as ready steering. `features` hold the strengths at scale 1.

    >>> c = Concept("ocean", "add", ((12, 2.0),), (0.75, 1.5), 1.0, 1.3, ("ocean",))
    >>> c.steering().strengths, c.scaled(-0.5).steering().strengths
    (((12, 2.0),), ((12, -1.0),))
    """

    concept: str
    mode: str
    features: tuple[tuple[int, float], ...]  # (feature id, strength at scale 1)
    band: tuple[float, float]  # scales at which the search saw the concept and fluent text
    rate: float  # share of the search's replies that mention it, at scale 1
    cost: float  # their median perplexity over the unsteered replies', at scale 1
    terms: tuple[str, ...]  # the words that counted as mentioning it
    scale: float = 1.0

    def scaled(self, scale: float) -> "Concept":
        scale = parse_strength(scale)
        top = max(abs(s) for _, s in self.features)
        if abs(scale) * top > MAX_STRENGTH:
            raise SteeringError(f"scale {scale:g} is too large for {self.concept!r} (its strongest feature "
                                f"would reach {abs(scale) * top:g}; the limit is {MAX_STRENGTH:g})")
        return Concept(**{**asdict(self), "scale": scale})

    @property
    def strengths(self) -> dict[int, float]:
        return {f: round(s * self.scale, 4) for f, s in self.features}

    def steering(self) -> Steering:
        return Steering(self.strengths, mode=self.mode)

    def writes(self, catalog, feature: int, n: int = 4) -> list[str]:
        """What `feature` makes the model say when amplified: this concept, which the search
        measured it writing, then discover's words (features/pipeline/discover.py), so a feature
        named for where it fires ("punctuation") still shows what it writes."""
        said = [w for w in catalog[feature].extra.get("writes") or [] if isinstance(w, str)]
        return [self.concept, *(w for w in said if w.lower() != self.concept.lower())][:n]

    def row_label(self, label: str) -> str:
        """A feature's name, and this concept when the name does not say it ("people → music")."""
        return label if self.concept.lower() in label.lower() else f"{label} → {self.concept}"

    def describe(self, label: Callable[[int], str]) -> dict:
        """The /concept answer (and `python -m chat concept --json`): `mode` and the features'
        strengths, passed unchanged to /generate, give the concept at this scale."""
        return {"concept": self.concept, "mode": self.mode, "scale": self.scale,
                "features": [{"id": f, "label": label(f), "strength": s} for f, s in self.strengths.items()],
                "band": list(self.band), "rate": self.rate}

    def to_json(self) -> dict:
        row = asdict(self)
        row.pop("scale")
        return row

    @classmethod
    def from_json(cls, row: dict) -> "Concept":
        return cls(row["concept"], row["mode"], tuple((int(f), float(s)) for f, s in row["features"]),
                   tuple(row["band"]), float(row["rate"]), float(row["cost"]), tuple(row["terms"]))


def parse_concept(text: str) -> tuple[str, float]:
    """"ocean" -> ("ocean", 1.0); "ocean=-1.5" -> ("ocean", -1.5); bad text: ConceptError."""
    if not isinstance(text, str):
        raise ConceptError(f"a concept is a word, got {type(text).__name__}")
    word, sep, scale = text.rpartition("=") if "=" in text else (text, "", "")
    word = " ".join(word.lower().split())
    if not word:
        raise ConceptError("the concept is empty: type a word such as coffee, fire or music")
    if not _WORD.fullmatch(word):
        raise ConceptError(f"a concept is a word or two of letters (like 'ocean' or 'ice cream'), got {word!r}")
    try:
        return word, parse_strength(scale) if sep else 1.0
    except SteeringError as e:
        raise ConceptError(f"the scale after '=' {e.args[0].removeprefix('strength ')}") from None


def concept_terms(word: str) -> tuple[str, ...]:
    """The words that count as mentioning `word`: the word, its lemma, the derived forms and
    synonyms the lexicon gives that share its stem ("rain": rain, rainfall, rainy), and the
    nouns whose commonest sense is a kind of it ("animal": dog, bird, ...; `narrower`).
    Synonyms of another stem ("sea" for ocean) are left out."""
    lex = lexicon.default()
    if lex is None or " " in word:
        return (word,)
    base = lex.lemma(word)
    forms = {word, base} | narrower(lex, base)
    forms |= {r.word for r in lex.meanings(base).values()
              if r.how in ("synonym", "derived") and r.closeness >= 0.85
              and len(os.path.commonprefix([base, r.word])) >= max(3, min(len(base), len(r.word)) - 3)}
    return tuple(sorted(forms))


def narrower(lex, word: str, depth: int = 5) -> set[str]:
    """Nouns whose commonest sense is, within `depth` steps, a kind of `word`'s commonest noun
    sense. Words that are also adjectives or adverbs ("low" under weather, "above" under music)
    are left out: they would count ordinary text as a mention."""
    senses = lex.senses(word, "n")[:1]
    if not senses:
        return set()
    out = set()
    for lemma, entry in lex.lemmas.items():
        nouns = entry.get("n")
        if nouns and len(lemma) > 2 and lemma.isalpha() and not entry.keys() & {"a", "s", "r"} \
                and any(h == senses[0] for h, _ in lex.ancestors(nouns[0], depth)):
            out.add(lemma)
    return out


def mention_rate(texts: Sequence[str], terms: Sequence[str]) -> float:
    """Share of texts that mention any of `terms`, regular verb forms included ("rained")."""
    return concept_rate(texts, terms, INFLECTIONS)


# -- candidates ------------------------------------------------------------------------------
# Sentences that end on the concept, and the same with everyday words in its place: the features
# that fire on the concept's last token and not on the others' are how the model reads it here.
CONTEXTS = ("Let's talk about {w}. I love {w}", "This is a story about {w}. The {w}",
            "Everything reminds me of {w}. {W}", "I keep thinking about {w} and {w}")
CONTROLS = ("things", "work")


def reading_profile(engine, word: str, k: int = 3) -> tuple[tuple[int, float], ...]:
    """The `k` features that fire most on `word` in CONTEXTS beyond what they fire on CONTROLS,
    with that excess in multiples of max activation (strongest first): the concept as this
    dictionary reads it. Added together in these proportions they write it back."""
    def last(text: str) -> Tensor:
        return engine.encode(text).acts[-1]  # (d_sae,)

    def mean(w: str) -> Tensor:
        return torch.stack([last(c.format(w=w, W=w.capitalize())) for c in CONTEXTS]).mean(0)

    excess = (mean(word) - torch.stack([mean(c) for c in CONTROLS]).mean(0)) / engine.max_acts.clamp_min(1e-6)
    top = excess.topk(k)
    return tuple((int(i), round(float(v), 4)) for v, i in zip(top.values, top.indices) if v > 0)


def concept_gradient(lm, layer: int, sequences: Sequence[Sequence[int]], token_ids: Sequence[int],
                     positions: int) -> Tensor:
    """(d,) gradient of mean log P(any of `token_ids`) over the last `positions` predictions of
    each sequence (a prompt and the unsteered reply's first tokens, teacher-forced), with respect
    to the output of layer `layer`, summed over content positions (where steering adds) and
    averaged over sequences."""
    grad = torch.zeros(lm.d_model)
    for seq in sequences:
        ids = torch.tensor([list(seq)], device=lm.device)  # (1, T)
        keep = lm.content_mask(ids)[0].cpu()  # (T,)
        seen: dict[str, Tensor] = {}

        def leaf(h: Tensor) -> Tensor:
            seen["h"] = h.detach().requires_grad_()
            return seen["h"]

        with torch.enable_grad(), on_output(lm.layers[layer], leaf):
            logits = lm.model(input_ids=ids, logits_to_keep=positions).logits[0].float()  # (P, V)
            logp = torch.log_softmax(logits, -1)[:, list(token_ids)].logsumexp(-1).mean()
            (g,) = torch.autograd.grad(logp, seen["h"])  # (1, T, d)
        grad += g[0].float().cpu()[keep].sum(0)
    return grad / max(1, len(sequences))


def cosines(dictionary, direction: Tensor) -> Tensor:
    """(d_sae,) cosine of each feature's decoder direction with `direction` (d,)."""
    directions = dictionary.directions(torch.arange(dictionary.d_sae)).float().cpu()  # (F, d)
    return F.normalize(directions, dim=1) @ F.normalize(direction.float().cpu(), dim=0)  # (F,)


def attribution(engine, token_ids: Sequence[int], prompts: Sequence[str] = SEARCH_PROMPTS,
                settings: GenerationSettings | None = None, positions: int = 4,
                cancel: threading.Event | None = None) -> Tensor:
    """(d_sae,) how directly adding each feature raises the concept's tokens at the start of the
    replies to `prompts`: the cosine of its decoder direction with `concept_gradient`. Cosine,
    not the first-order lift at max activation: steering strengths are far outside the linear
    regime, and the lift would rank first the few features with outsized activations whatever
    the concept."""
    starts = replies(engine, prompts, None, positions - 1, settings or GenerationSettings(), cancel=cancel)
    sequences = [r.prompt_ids + r.token_ids for r in starts]
    # the last prompt position predicts the first reply token: one more than the reply's tokens
    n = min(positions, 1 + min(len(r.token_ids) for r in starts))
    return cosines(engine.dictionary, concept_gradient(engine.lm, engine.layer, sequences, token_ids, n))


def candidates(engine, word: str, terms: Sequence[str], token_ids: Sequence[int],
               settings: GenerationSettings, cancel: threading.Event | None = None,
               rounds: int = 1) -> list[list[Setting]]:
    """Steerings worth trying at unit scale, in `rounds` rounds. The first: the reading
    profile's top 1, 2 and 3 together (in their proportions), the catalog's NAME_CANDIDATES
    name matches, WRITER_CANDIDATES features `discover` saw write one of `terms`, and the
    gradient's GRADIENT_CANDIDATES best; each later round, the next as many of each kind."""
    live = torch.tensor([engine.catalog.max_activation(i) is not None for i in range(engine.dictionary.d_sae)])
    profile = [(f, v) for f, v in reading_profile(engine, word) if live[f]]
    first = [tuple((f, round(v / profile[0][1], 3)) for f, v in profile[:k]) for k in range(1, len(profile) + 1)]
    try:
        named = [f.id for f in engine.catalog.search(word, top=NAME_CANDIDATES * rounds) if live[f.id]]
    except ValueError:
        named = []
    wanted = set(terms)
    writers = [f.id for f in engine.catalog if f.extra.get("writes") and live[f.id]
               and wanted & {w.lower() for w in f.extra["writes"] if isinstance(w, str)}]
    scores = attribution(engine, token_ids, SEARCH_PROMPTS, settings, cancel=cancel)
    ranked = scores.masked_fill(~live, float("-inf")).topk(GRADIENT_CANDIDATES * rounds).indices.tolist()
    kinds = ((named, NAME_CANDIDATES), (writers, WRITER_CANDIDATES), (ranked, GRADIENT_CANDIDATES))
    out, seen = [], set()
    for r in range(rounds):
        this = (first if r == 0 else []) + [((f, 1.0),) for ids, n in kinds for f in ids[r * n:(r + 1) * n]]
        this = [c for c in dict.fromkeys(this) if c not in seen]
        seen.update(this)
        out.append(this)
    return out


# -- measuring -------------------------------------------------------------------------------
Setting = tuple[tuple[int, float], ...]  # (feature id, strength) pairs


class Trial(NamedTuple):
    features: Setting
    rate: float
    rows: tuple[BatchReply, ...]


def _scaled(setting: Setting, s: float) -> Setting:
    return tuple((f, round(w * s, 3)) for f, w in setting)


def _together(a: Setting, b: Setting) -> Setting | None:
    """Two settings added into one (a feature in both gets the sum), or None past MAX_FEATURES."""
    out: dict[int, float] = {}
    for f, w in a + b:
        out[f] = round(out.get(f, 0.0) + w, 3)
    return tuple(out.items()) if len(out) <= MAX_FEATURES else None


def _confirmations(leaders: Sequence[Setting], best: dict[Setting, tuple[float, float]]) -> list[Setting]:
    """What the confirm step tries: each leader at and around its best scale, then each two
    leaders together at PAIR_RATIOS of their best scales."""
    out = [_scaled(c, best[c][1] * r) for c in leaders for r in CONFIRM_RATIOS]
    for i, a in enumerate(leaders):
        for b in leaders[i + 1:]:
            for r in PAIR_RATIOS:
                both = _together(_scaled(a, best[a][1] * r), _scaled(b, best[b][1] * r))
                if both is not None:
                    out.append(both)
    return list(dict.fromkeys(out))


def _trials(engine, settings_list: Sequence[Setting], terms: Sequence[str], settings: GenerationSettings,
            prompts: Sequence[str] = SEARCH_PROMPTS, tokens: int = SEARCH_TOKENS,
            cancel: threading.Event | None = None) -> list[Trial]:
    """Every steering in `settings_list` on every prompt, in one batch."""
    messages = [p for _ in settings_list for p in prompts]
    steerings = [Steering(dict(s)) for s in settings_list for _ in prompts]
    rows = replies(engine, messages, steerings, tokens, settings, cancel=cancel)
    n = len(prompts)
    out = []
    for k, s in enumerate(settings_list):
        chunk = tuple(rows[k * n:(k + 1) * n])
        out.append(Trial(s, mention_rate([r.text for r in chunk], terms), chunk))
    return out


def fluency(engine, rows: Sequence[BatchReply]) -> list[float]:
    """Perplexity of each reply as text on its own, under the unsteered model: how fluent it is,
    whatever it is about. (Conditioned on the question, any change of subject would count as
    disfluency: "God save you!" is an unlikely answer to "How was your day?", not bad English.)"""
    bos = [engine.lm.tokenizer.bos_token_id] if engine.lm.tokenizer.bos_token_id is not None else []
    return perplexities(engine, [(bos or r.prompt_ids[:1], r.token_ids) for r in rows])


def _cost(engine, trial: Trial, baseline: float) -> float:
    return statistics.median(fluency(engine, trial.rows)) / baseline


def find(engine, word: str, progress: Callable[[float, str], None] | None = None,
         cancel: threading.Event | None = None) -> Concept:
    """Measure which features, at which strengths, make replies to neutral prompts talk about
    `word` while staying fluent. ConceptError when no candidate does; chat.errors.Cancelled,
    within a decoding step, once `cancel` is set."""
    say = progress or (lambda fraction, message: None)
    settings = GenerationSettings()  # the chat's own decoding: what the app will do
    terms = concept_terms(word)
    token_ids = concept_token_ids(engine.lm.tokenizer, terms)
    say(0.05, f"finding the features that read and write {word!r}")
    rounds = candidates(engine, word, terms, token_ids, settings, cancel, rounds=ROUNDS)
    errors: list[ConceptError] = []
    for r, found in enumerate(rounds):
        try:
            return _search(engine, word, found, terms, settings, _in_round(say, r), cancel)
        except ConceptError as e:
            errors.append(e)
        if not any(rounds[r + 1:]):
            break
    more = sum(len(found) for found in rounds[1:len(errors)])
    raise ConceptError(f"{errors[0]}" + (f"; nor did {more} more candidates" if more else ""))


def _in_round(say: Callable[[float, str], None], r: int) -> Callable[[float, str], None]:
    """Progress within round `r` (from 0). A later round takes about as long as the first, so the
    bar goes back to r / (r + 1) and the estimate of the time left follows."""
    if r == 0:
        return say
    return lambda fraction, message: say((r + fraction) / (r + 1), f"round {r + 1}: {message}")


def _search(engine, word: str, found: Sequence[Setting], terms: Sequence[str], settings: GenerationSettings,
            say: Callable[[float, str], None], cancel: threading.Event | None) -> Concept:
    """One round of `find` over the candidate settings `found`."""
    say(0.15, f"trying {len(found)} candidates at {len(SCREEN_SCALES)} strengths")
    screen = _trials(engine, [_scaled(c, s) for c in found for s in SCREEN_SCALES], terms, settings,
                     SEARCH_PROMPTS, SCREEN_TOKENS, cancel)
    best: dict[Setting, tuple[float, float]] = {}  # each candidate's best scale: most mentions, then weakest
    for k, c in enumerate(c for c in found for _ in SCREEN_SCALES):
        rate, scale = screen[k].rate, SCREEN_SCALES[k % len(SCREEN_SCALES)]
        if rate > best.get(c, (0.0, 0.0))[0]:
            best[c] = (rate, scale)
    leaders = sorted(best, key=lambda c: -best[c][0])[:LEADERS]  # stable: candidate order breaks ties
    if not leaders:
        raise ConceptError(f"no feature of this dictionary makes the model say {word!r}: none of the "
                           f"{len(found)} likeliest settings made a reply mention it")
    say(0.55, f"confirming the best {len(leaders)} in longer replies")
    plain = replies(engine, SEARCH_PROMPTS, None, SEARCH_TOKENS, settings, cancel=cancel)
    baseline = statistics.median(fluency(engine, plain))
    plain_rate = mention_rate([r.text for r in plain], terms)
    trials = _trials(engine, _confirmations(leaders, best), terms, settings, cancel=cancel)
    say(0.85, "checking fluency")
    # The most mentions, then the weakest push (the likeliest to stay fluent), until one passes.
    order = sorted(trials, key=lambda t: (-t.rate, sum(abs(s) for _, s in t.features)))
    costs: dict[Setting, float] = {}
    chosen = None
    for t in order:
        if t.rate < MIN_RATE or t.rate <= plain_rate:
            break
        costs[t.features] = _cost(engine, t, baseline)
        if costs[t.features] <= MAX_COST:
            chosen = t
            break
    if chosen is None:
        top = order[0]
        what = " + ".join(f"#{f} {engine.catalog.label(f)} at {s:g}" for f, s in top.features)
        detail = (f"the best, {what}, broke the text (perplexity {costs[top.features]:.1f}× the unsteered replies)"
                  if top.features in costs else f"the best, {what}, got only {top.rate:.0%} of replies to mention it")
        raise ConceptError(f"no feature of this dictionary steers toward {word!r} while keeping the text fluent: {detail}")
    band = _band(engine, chosen, trials, baseline, costs)
    say(1.0, "done")
    return Concept(word, "add", chosen.features, band, chosen.rate, round(costs[chosen.features], 3), terms)


def _band(engine, chosen: Trial, trials: Sequence[Trial], baseline: float, costs: dict) -> tuple[float, float]:
    """The range of scales (multiples of the chosen strengths) at which the same features also
    passed, as far as the search measured them: contiguous around 1."""
    ids = tuple(f for f, _ in chosen.features)
    unit = chosen.features[0][1]
    same = sorted((t for t in trials if tuple(f for f, _ in t.features) == ids), key=lambda t: t.features[0][1])
    ok = []
    for t in same:
        passed = t.rate >= MIN_RATE
        if passed and t.features not in costs:
            costs[t.features] = _cost(engine, t, baseline)
        ok.append(passed and costs[t.features] <= MAX_COST)
    at = [t.features for t in same].index(chosen.features)
    low = high = at
    while low > 0 and ok[low - 1]:
        low -= 1
    while high + 1 < len(same) and ok[high + 1]:
        high += 1
    return round(same[low].features[0][1] / unit, 3), round(same[high].features[0][1] / unit, 3)


def related(word: str, candidates: Sequence[str], n: int = 3, max_steps: int = 5) -> list[str]:
    """Up to `n` of `candidates` (concepts that work) nearest to `word` in WordNet's noun
    hierarchy, within `max_steps` (chat/steer/concept.py's errors suggest them: "anger" finds no writer,
    "love" and "sadness" do); nearest first."""
    lex = lexicon.default()
    if lex is None:
        return []
    steps = {c: lex.kinship(word, c) for c in candidates if c != word}
    near = sorted((d, c) for c, d in steps.items() if d is not None and d <= max_steps)
    return [c for _, c in near[:n]]


# -- cache -----------------------------------------------------------------------------------
class ConceptCache:
    """Measured concepts of one dictionary: its folder's concepts.json (read only, shipped), then
    a user file under the cache folder that searches add to. Keyed by the dictionary's
    fingerprint, so a retrained dictionary never reuses another's measurements."""

    def __init__(self, key: str, shipped: Path | None, user: Path):
        self.key, self.user = key, user
        self._lock = threading.Lock()
        self._shipped = _read(shipped, key) if shipped is not None else {}
        self._mine = _read(user, key)

    def get(self, word: str) -> Concept | None:
        """The measured concept, None when never searched; ConceptError when a search found nothing."""
        with self._lock:
            row = self._mine.get(word) or self._shipped.get(word)
        if row and "error" in row:
            raise ConceptError(row["error"])
        return Concept.from_json(row) if row else None

    def put(self, concept: Concept | ConceptError, word: str | None = None) -> None:
        """Keep a found concept, or the error a search for `word` ended with (not searched again)."""
        row = concept.to_json() if isinstance(concept, Concept) else {"concept": word, "error": str(concept),
                                                                      "rounds": ROUNDS}
        with self._lock:
            self._mine[row["concept"]] = row
            _write_atomic(self.user, json.dumps({"format": FORMAT, "key": self.key, "concepts": self._mine}, indent=1))

    def words(self) -> list[str]:
        with self._lock:
            return sorted(self._shipped.keys() | self._mine.keys())

    def found(self) -> list[str]:
        """The concepts measured with a working steering (not the searches that found nothing)."""
        with self._lock:
            rows = {**self._shipped, **self._mine}
        return sorted(w for w, row in rows.items() if "error" not in row)

    def export(self, path: Path, words: Sequence[str] | None = None) -> int:
        """Write the measured rows (found concepts and searches that found nothing) for `words`
        (default all) as a concepts file to ship beside the dictionary; returns how many."""
        with self._lock:
            rows = {**self._shipped, **self._mine}
        chosen = {w: rows[w] for w in (words if words is not None else sorted(rows)) if w in rows}
        data = {"format": FORMAT, "key": self.key, "concepts": chosen}
        _write_atomic(path, json.dumps(data, indent=1, ensure_ascii=False) + "\n")
        return len(chosen)


def user_file(key: str) -> Path:
    """Where searches keep what they measured for dictionary `key`: the user's folder
    (features.paths.home_dir), beside their renames."""
    if not re.fullmatch(r"[\w.-]+", key):
        raise ValueError(f"a dictionary key must be letters, digits, '.', '-' or '_', got {key!r}")
    return home_dir() / "concepts" / f"{key}.json"


def _read(path: Path, key: str) -> dict[str, dict]:
    """A concepts file's rows, or nothing when it is missing, unreadable or another dictionary's."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("key") != key:
        return {}
    rows = data.get("concepts")
    good = {}
    for word, row in (rows.items() if isinstance(rows, dict) else ()):
        try:
            if isinstance(row, dict) and isinstance(row.get("error"), str):
                if row.get("rounds", 1) < ROUNDS:
                    continue  # a shallower search found nothing: this one may find it
            else:
                Concept.from_json(row)
        except (KeyError, TypeError, ValueError):
            continue  # one bad row costs a search, not the file
        good[word] = row
    return good
