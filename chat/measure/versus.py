"""The honest baseline: steering a feature vs simply asking the model to talk about the concept.

For every "present" case of a spec (the first per feature and terms), the same neutral prompts are answered twice more: once with
the instruction appended ("... Talk about dogs."), unsteered. Both replies are scored the same
way as steering (chat/measure/metrics.py): concept rate, and fluency cost under the unsteered model given
the *original* prompt, so a reply that changes the subject costs the same either way.

    python -m chat check assets/specs/curated.toml --vs-prompting
"""
from __future__ import annotations

from typing import NamedTuple

from chat.measure import metrics
from chat.measure.check import Case, CaseResult, Spec, Baselines, run_case

INSTRUCTION = "{prompt} Talk about {concept}."


class Versus(NamedTuple):
    concept: str
    steering: CaseResult
    prompting_rate: float
    prompting_cost: float
    prompting_score: float
    prompting_samples: tuple[str, ...]

    def summary(self) -> dict:
        return {"concept": self.concept, "steering": self.steering.summary(),
                "prompting": {"concept_rate": self.prompting_rate, "fluency_cost": self.prompting_cost,
                              "score": self.prompting_score, "samples": list(self.prompting_samples)}}


def prompting(engine, case: Case, baselines: Baselines) -> tuple[float, float, float, tuple[str, ...]]:
    """(concept rate, fluency cost, score, replies) when the prompt asks for the concept."""
    concept = case.terms[0]
    texts, ppls, plain_ppls = [], [], []
    for prompt in case.prompts:
        for seed in case.seeds:
            _, prompt_ids, plain_ppl = baselines.get(prompt, case.settings(seed))
            asked = engine.reply(INSTRUCTION.format(prompt=prompt, concept=concept), **case.settings(seed))
            texts.append(asked.text)
            ppls.append(metrics.perplexity(engine, prompt_ids, asked.token_ids))
            plain_ppls.append(plain_ppl)
    rate = metrics.concept_rate(texts, case.terms)
    cost = metrics.fluency_cost(ppls, plain_ppls)
    return rate, cost, metrics.combined_score(rate, cost), tuple(texts[:3])


def versus(engine, spec: Spec, progress=None) -> list[Versus]:
    baselines = Baselines(engine)
    out = []
    seen = set()
    for case in spec.cases:
        # One row per feature and concept: a spec's add and clamp cases ask the same question of
        # prompting, and the first (add, in generated specs) answers it.
        if case.expect != "present" or (case.feature, case.terms) in seen:
            continue
        seen.add((case.feature, case.terms))
        out.append(Versus(case.terms[0], run_case(engine, case, baselines), *prompting(engine, case, baselines)))
        if progress:
            progress(out[-1])
    return out


def table(rows: list[Versus]) -> str:
    """A Markdown table (pasted into the README)."""
    lines = ["| concept | feature | steering: rate | cost | score | prompting: rate | cost | score | better |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s = r.steering
        better = "steering" if s.score > r.prompting_score else "prompting" if r.prompting_score > s.score else "tie"
        lines.append(f"| {r.concept} | #{s.feature} {s.mode} {s.strength:g} | {s.concept_rate:.2f} | "
                     f"{s.fluency_cost:.2f} | {s.score:.2f} | {r.prompting_rate:.2f} | {r.prompting_cost:.2f} | "
                     f"{r.prompting_score:.2f} | {better} |")
    wins = sum(r.steering.score > r.prompting_score for r in rows)
    mean_s = sum(r.steering.score for r in rows) / max(len(rows), 1)
    mean_p = sum(r.prompting_score for r in rows) / max(len(rows), 1)
    lines.append(f"\nSteering scores higher on {wins} of {len(rows)} concepts; mean score "
                 f"{mean_s:.2f} (steering) vs {mean_p:.2f} (prompting).")
    return "\n".join(lines)
