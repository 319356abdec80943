"""Scripted steering tests: a TOML (or JSON) spec of cases, run against a model and dictionary.

    python -m chat check assets/specs/curated.toml [--json]

A spec (see assets/specs/curated.toml):

    prompts = ["Tell me about your weekend.", "What should I cook tonight?"]   # defaults for cases
    max_new_tokens = 32

    [[case]]
    name = "dogs, amplified"
    feature = "dog"              # id or label query
    mode = "add"                 # add | clamp
    strength = 8.0               # multiples of the feature's max activation
    terms = ["dog", "puppy"]     # words that show the concept (whole words, any case, plurals)
    expect = "present"           # present: concept rate >= min_concept_rate
    min_concept_rate = 0.5       # absent:  concept rate <= max_concept_rate (suppression)
    max_fluency_cost = 4.0       # steered perplexity / unsteered, both under the unsteered model

Generation settings (seeds, temperature, max_new_tokens, repetition_penalty, no_repeat_ngram,
frame) may be stated at the top or per case; unstated, they are plain greedy decoding in the
plain transcript, whatever the chat's defaults are. Each case generates the unsteered and the
steered reply for every prompt x seed and reports concept rate, baseline rate, log-prob lift, fluency
cost and the combined score (chat/measure/metrics.py).
"""
from __future__ import annotations

import json
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from chat.measure import metrics
from chat.steer.settings import GenerationSettings
from chat.steer.prompt import FRAMES
from chat.steer.steering import MODES, Steering, SteeringError, parse_strength

# Generation settings a spec states (top level or per case). Unstated ones are plain greedy
# decoding in the plain transcript (GenerationSettings.greedy()), what the shipped specs and the
# curated bands were measured with, so a change of the chat's defaults never moves a spec.
SETTING_KEYS = ("seeds", "temperature", "max_new_tokens", "repetition_penalty", "no_repeat_ngram", "frame")
CASE_KEYS = {"name", "feature", "mode", "strength", "terms", "expect", "min_concept_rate", "max_concept_rate",
             "max_fluency_cost", "prompts", *SETTING_KEYS}
TOP_KEYS = {"model", "dictionary", "layer", "prompts", "case", *SETTING_KEYS}
_SPEC_DEFAULTS = GenerationSettings.greedy()


class SpecError(ValueError):
    """A spec file that cannot be run (missing key, wrong type, unknown expectation)."""


@dataclass(frozen=True)
class Case:
    name: str
    feature: str | int
    mode: str
    strength: float
    terms: tuple[str, ...]
    prompts: tuple[str, ...]
    expect: str = "present"
    min_concept_rate: float = 0.5
    max_concept_rate: float = 0.0
    max_fluency_cost: float = math.inf
    seeds: tuple[int, ...] = (0,)
    temperature: float = 0.0
    max_new_tokens: int = 32
    repetition_penalty: float = _SPEC_DEFAULTS.repetition_penalty
    no_repeat_ngram: int = _SPEC_DEFAULTS.no_repeat_ngram
    frame: str = _SPEC_DEFAULTS.frame

    def settings(self, seed: int) -> dict:
        """Engine.reply's settings for one seed."""
        return {"seed": seed, "temperature": self.temperature, "max_new_tokens": self.max_new_tokens,
                "repetition_penalty": self.repetition_penalty, "no_repeat_ngram": self.no_repeat_ngram,
                "frame": self.frame}


@dataclass(frozen=True)
class Spec:
    cases: tuple[Case, ...]
    model: str | None = None
    dictionary: str | None = None
    layer: int | None = None
    path: str = ""


class CaseResult(NamedTuple):
    """One case's outcome. Rates are shares of replies; lift in nats per reply position."""

    name: str
    feature: int
    label: str
    mode: str
    strength: float
    concept_rate: float  # steered replies mentioning the concept
    baseline_rate: float  # unsteered replies mentioning it
    logprob_lift: float  # concept log-prob, steered minus unsteered
    fluency_cost: float  # geometric mean over replies of the perplexity ratio
    score: float  # harmonic mean of concept rate and fluency (0..1)
    passed: bool
    failures: tuple[str, ...]
    samples: tuple[str, ...] = ()  # the first few steered replies, to read

    def summary(self) -> dict:
        return self._asdict() | {"failures": list(self.failures), "samples": list(self.samples)}


def _fail(where: str, msg: str) -> SpecError:
    return SpecError(f"{where}: {msg}")


def _strings(value, where: str, key: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
        raise _fail(where, f"{key} must be a non-empty list of non-empty strings")
    return tuple(value)


def _number(value, where: str, key: str, lo: float = -math.inf, hi: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise _fail(where, f"{key} must be a number in [{lo:g}, {hi:g}], got {value!r}")
    return float(value)


def _choice(value, where: str, key: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise _fail(where, f"{key} must be one of {', '.join(choices)}, got {value!r}")
    return value


def parse_spec(data: dict, path: str = "<spec>") -> Spec:
    if not isinstance(data, dict):
        raise SpecError(f"{path}: a spec is a table of settings and [[case]] entries")
    unknown = set(data) - TOP_KEYS
    if unknown:
        raise _fail(path, f"unknown key(s) {', '.join(sorted(unknown))}")
    raw_cases = data.get("case")
    if not isinstance(raw_cases, list) or not raw_cases:
        raise _fail(path, "no [[case]] entries")
    defaults = {k: data[k] for k in ("prompts", *SETTING_KEYS) if k in data}
    cases = []
    for n, raw in enumerate(raw_cases, 1):
        where = f"{path} case {n}"
        if not isinstance(raw, dict):
            raise _fail(where, "each case is a table")
        unknown = set(raw) - CASE_KEYS
        if unknown:
            raise _fail(where, f"unknown key(s) {', '.join(sorted(unknown))}")
        c = defaults | raw
        for key in ("feature", "strength", "terms", "prompts"):
            if key not in c:
                raise _fail(where, f"missing {key!r}")
        feature = c["feature"]
        if isinstance(feature, bool) or not isinstance(feature, (str, int)) or (isinstance(feature, str) and not feature.strip()):
            raise _fail(where, f"feature must be an id or a label query, got {feature!r}")
        mode = c.get("mode", "add")
        if mode not in MODES:
            raise _fail(where, f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        try:
            strength = parse_strength(c["strength"])
        except SteeringError as e:
            raise _fail(where, str(e)) from None
        expect = c.get("expect", "present")
        if expect not in ("present", "absent"):
            raise _fail(where, f"expect must be 'present' or 'absent', got {expect!r}")
        seeds = c.get("seeds", [0])
        if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
            raise _fail(where, "seeds must be a non-empty list of integers")
        cases.append(Case(
            name=str(c.get("name") or f"{feature} {mode} {strength:g}"),
            feature=feature,
            mode=mode,
            strength=strength,
            terms=_strings(c["terms"], where, "terms"),
            prompts=_strings(c["prompts"], where, "prompts"),
            expect=expect,
            min_concept_rate=_number(c.get("min_concept_rate", 0.5), where, "min_concept_rate", 0, 1),
            max_concept_rate=_number(c.get("max_concept_rate", 0.0), where, "max_concept_rate", 0, 1),
            max_fluency_cost=_number(c.get("max_fluency_cost", math.inf), where, "max_fluency_cost", 1),
            seeds=tuple(seeds),
            temperature=_number(c.get("temperature", 0.0), where, "temperature", 0, 10),
            max_new_tokens=int(_number(c.get("max_new_tokens", 32), where, "max_new_tokens", 1, 512)),
            repetition_penalty=_number(c.get("repetition_penalty", _SPEC_DEFAULTS.repetition_penalty), where,
                                       "repetition_penalty", 1, 10),
            no_repeat_ngram=int(_number(c.get("no_repeat_ngram", _SPEC_DEFAULTS.no_repeat_ngram), where,
                                        "no_repeat_ngram", 0, 16)),
            frame=_choice(c.get("frame", _SPEC_DEFAULTS.frame), where, "frame", FRAMES),
        ))
    layer = data.get("layer")
    if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int)):
        raise _fail(path, f"layer must be an integer, got {layer!r}")
    return Spec(tuple(cases), data.get("model"), data.get("dictionary"), layer, path)


def load_spec(path: str | Path) -> Spec:
    """Read a .toml or .json spec; one-line SpecError when it is malformed."""
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"spec not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
        data = json.loads(text) if p.suffix == ".json" else tomllib.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        raise SpecError(f"{p}: not valid {'JSON' if p.suffix == '.json' else 'TOML'}: {e}") from None
    return parse_spec(data, str(p))


class Baselines:
    """Unsteered replies, computed once per (prompt, seed, settings) and shared by every case."""

    def __init__(self, engine):
        self.engine = engine
        self.cache: dict[tuple, tuple] = {}

    def get(self, prompt: str, settings: dict):
        """(reply, prompt ids, perplexity) of the unsteered reply to `prompt` with `settings`."""
        key = (prompt, *sorted(settings.items()))
        if key not in self.cache:
            reply = self.engine.reply(prompt, **settings)
            ids = self.engine.prompt(prompt, settings["max_new_tokens"], settings["frame"]).ids
            self.cache[key] = (reply, ids, metrics.perplexity(self.engine, ids, reply.token_ids))
        return self.cache[key]


def run_case(engine, case: Case, baselines: Baselines | None = None) -> CaseResult:
    baselines = baselines or Baselines(engine)
    fid = engine.catalog.resolve(case.feature)
    steering = Steering({fid: case.strength}, mode=case.mode)
    concept_ids = metrics.concept_token_ids(engine.lm.tokenizer, case.terms)
    steered_texts, plain_texts, lifts, ppls, plain_ppls = [], [], [], [], []
    for prompt in case.prompts:
        for seed in case.seeds:
            plain, prompt_ids, plain_ppl = baselines.get(prompt, case.settings(seed))
            steered = engine.reply(prompt, steer=steering, **case.settings(seed))
            steered_texts.append(steered.text)
            plain_texts.append(plain.text)
            ppls.append(metrics.perplexity(engine, prompt_ids, steered.token_ids))
            plain_ppls.append(plain_ppl)
            if plain.token_ids:
                lifts.append(
                    metrics.concept_logprob(metrics.reply_logprobs(engine, prompt_ids, plain.token_ids, steering), concept_ids)
                    - metrics.concept_logprob(metrics.reply_logprobs(engine, prompt_ids, plain.token_ids), concept_ids)
                )
    rate = metrics.concept_rate(steered_texts, case.terms)
    cost = metrics.fluency_cost(ppls, plain_ppls)
    failures = []
    if case.expect == "present" and rate < case.min_concept_rate:
        failures.append(f"concept rate {rate:.2f} < {case.min_concept_rate:.2f}")
    if case.expect == "absent" and rate > case.max_concept_rate:
        failures.append(f"concept rate {rate:.2f} > {case.max_concept_rate:.2f}")
    if cost > case.max_fluency_cost:
        failures.append(f"fluency cost {cost:.2f} > {case.max_fluency_cost:.2f}")
    return CaseResult(
        name=case.name, feature=fid, label=engine.catalog.label(fid), mode=case.mode, strength=case.strength,
        concept_rate=rate, baseline_rate=metrics.concept_rate(plain_texts, case.terms),
        logprob_lift=sum(lifts) / len(lifts) if lifts else float("nan"), fluency_cost=cost,
        score=metrics.combined_score(rate if case.expect == "present" else 1 - rate, cost),
        passed=not failures, failures=tuple(failures), samples=tuple(steered_texts[:3]),
    )


def run_spec(engine, spec: Spec, progress=None) -> list[CaseResult]:
    baselines = Baselines(engine)
    results = []
    for case in spec.cases:
        results.append(run_case(engine, case, baselines))
        if progress:
            progress(results[-1])
    return results


def table(results: list[CaseResult]) -> str:
    head = f"{'':4} {'case':34} {'feature':>7} {'mode':5} {'str':>5} {'rate':>5} {'base':>5} {'lift':>6} {'cost':>6} {'score':>5}"
    rows = [head, "-" * len(head)]
    for r in results:
        rows.append(f"{'ok' if r.passed else 'FAIL':4} {r.name[:34]:34} {r.feature:>7} {r.mode:5} {r.strength:>5g} "
                    f"{r.concept_rate:>5.2f} {r.baseline_rate:>5.2f} {r.logprob_lift:>6.2f} {r.fluency_cost:>6.2f} {r.score:>5.2f}")
        rows += [f"{'':4} ↳ {f}" for f in r.failures]
    passed = sum(r.passed for r in results)
    rows.append(f"{passed}/{len(results)} cases passed")
    return "\n".join(rows)
