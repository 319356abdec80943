"""Command line: `python -m chat reply|search|encode|check|bench ...` (a stable contract for scripts).

User errors print one line on stderr and exit 2 (`check` exits 1 when a case fails); nothing
prints a traceback unless STEERCHAT_DEBUG=1.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

EXIT_USER_ERROR = 2


def _add_source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="hub id or local folder (default: the embedded Gemma 3 270M)")
    p.add_argument("--dictionary", help="local path or hub 'owner/repo/sub/folder' (default: the embedded one)")
    p.add_argument("--layer", type=int, help="decoder layer to hook (default: the dictionary's own)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="allow .pt/.pth dictionaries (loaded with weights_only=True); only for files you trust")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")


def _add_generation_args(p: argparse.ArgumentParser) -> None:
    """The chat's decoding defaults (GenerationSettings), each overridable; --greedy for plain greedy."""
    from chat.steer.settings import GenerationSettings

    d = GenerationSettings()
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    p.add_argument("--temperature", type=float, help=f"0 = greedy (default {d.temperature:g}); reproducible per seed")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--repetition-penalty", type=float,
                   help=f"on the reply's own tokens, 1 = off (default {d.repetition_penalty:g})")
    p.add_argument("--greedy", action="store_true",
                   help="plain greedy decoding in the plain transcript (no repetition handling, no example "
                        "exchanges): what the steering specs were measured with")


def _generation(args) -> dict:
    """GenerationSettings fields from the command line (unset ones keep the defaults)."""
    from chat.steer.settings import GenerationSettings

    base = GenerationSettings.greedy() if args.greedy else GenerationSettings()
    chosen = {"max_new_tokens": args.max_new_tokens, "seed": args.seed, "temperature": args.temperature,
              "repetition_penalty": args.repetition_penalty}
    fields = {k: getattr(base, k) for k in ("temperature", "repetition_penalty", "no_repeat_ngram", "frame")}
    return fields | {k: v for k, v in chosen.items() if v is not None}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m chat", description="Steer a language model by its features.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("reply", help="generate one reply, optionally steered")
    p.add_argument("prompt")
    p.add_argument("--steer", action="append", default=[], metavar="FEATURE=STRENGTH",
                   help="feature id or label query = strength in multiples of its max activation (repeatable)")
    p.add_argument("--mode", default="add", help="add (push along the feature) or clamp (set its activation)")
    p.add_argument("--concept", action="append", default=[], metavar="WORD[=SCALE]",
                   help="steer toward a concept by name (coffee, coffee=2; a negative scale keeps it out); "
                        "features and strengths found by measurement, cached (repeatable)")
    _add_generation_args(p)
    p.add_argument("--top", type=int, default=10, help="how many fired features to list")
    p.add_argument("--json", action="store_true")
    _add_source_args(p)

    p = sub.add_parser("concept", help="the steering toward a concept: features, mode and strengths")
    p.add_argument("concept", metavar="WORD[=SCALE]")
    p.add_argument("--json", action="store_true")
    _add_source_args(p)

    p = sub.add_parser("search", help="find features by name")
    p.add_argument("query")
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--json", action="store_true")
    _add_source_args(p)

    p = sub.add_parser("encode", help="which features fire on each token of a text")
    p.add_argument("text")
    p.add_argument("--top", type=int, default=5, help="features listed per token")
    p.add_argument("--json", action="store_true")
    _add_source_args(p)

    p = sub.add_parser("bench", help="measure steering overhead, cold start and dictionary throughput")
    p.add_argument("--quick", action="store_true", help="fewer and shorter runs (about a minute on 2 CPU cores)")
    p.add_argument("--tokens", type=int, help="new tokens per decode run (default 64, quick 24)")
    p.add_argument("--repeats", type=int, help="runs of each variant, interleaved (default 5, quick 3)")
    p.add_argument("--chat", action="store_true",
                   help="instead, the chat benchmark: loops, empty replies, factual answers, reply length and "
                        "speed over 40 prompts and 4 conversations, with the chat's default settings "
                        "(--greedy: plain greedy, as before)")
    p.add_argument("--greedy", action="store_true", help="with --chat: plain greedy decoding in the plain transcript")
    p.add_argument("--concepts", action="store_true",
                   help="instead, the concept benchmark: steering toward 50 concepts by name, against prompting "
                        "(docs/concepts.md)")
    p.add_argument("--ship", action="store_true",
                   help="with --concepts: write the measured concepts to the dictionary's concepts.json")
    p.add_argument("--json", action="store_true")
    _add_source_args(p)

    p = sub.add_parser("check", help="run a steering test spec (TOML/JSON); exit 1 when a case fails")
    p.add_argument("spec")
    p.add_argument("--json", action="store_true")
    p.add_argument("--vs-prompting", action="store_true",
                   help="instead, compare each 'present' case with asking for the concept in the prompt")
    _add_source_args(p)
    return parser


def _engine(args, catalog=None):
    import transformers

    from chat.engine import load

    from chat.runtime import gcpause

    transformers.utils.logging.disable_progress_bar()  # the JSON contract: nothing but results and one-line errors
    try:
        return load(args.model, args.dictionary, args.layer, device=args.device, allow_pickle=args.allow_pickle,
                    catalog=catalog)
    finally:
        gcpause.resume()


def _resolve_names(args, steer: dict[str, float]):
    """Feature names resolved against the catalog before the model loads, so a name that matches
    nothing fails in a second, not after a full start. Returns (catalog or None, {id: strength})."""
    if all(key.strip().isdecimal() for key in steer):
        return None, {int(key): s for key, s in steer.items()}
    from chat.engine import load_catalog, resolve_features

    catalog = load_catalog(args.model, args.dictionary, allow_pickle=args.allow_pickle)
    return catalog, resolve_features(catalog, steer)


def cmd_reply(args) -> None:
    from chat.steer.steering import MODES, SteeringError, parse_steer_items

    from chat.steer.concept import parse_concept

    steer = parse_steer_items(args.steer)  # fail fast, before loading the model
    if args.mode not in MODES:
        raise SteeringError(f"--mode must be one of {', '.join(MODES)}, got {args.mode!r}")
    for text in args.concept:
        parse_concept(text)
    if args.concept and steer and args.mode != "add":
        raise SteeringError("--concept steers in add mode; it cannot join --steer with --mode clamp")
    catalog, steer = _resolve_names(args, steer)
    engine = _engine(args, catalog)
    steer = engine.steering(steer, args.mode)
    if args.concept:
        strengths = dict(steer.strengths)
        for text in args.concept:
            for f, s in engine.concept(text, progress=_concept_progress(args)).strengths.items():
                strengths[f] = strengths.get(f, 0.0) + s
        steer = engine.steering(strengths, "add")
    reply = engine.reply(args.prompt, steer=steer, **_generation(args))
    top = reply.top_features[: args.top]
    for w in reply.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if args.json:
        print(json.dumps({
            "text": reply.text,
            "top_features": [{"id": h.id, "label": h.label, "activation": round(h.activation, 4)} for h in top],
            "steer": [{"id": f, "label": engine.catalog.label(f), "strength": s} for f, s in reply.steering.strengths],
            "finish_reason": reply.finish_reason,
            "warnings": reply.warnings,
        }, ensure_ascii=False))
        return
    print(reply.text)
    print(f"\n[{engine.status()}]", file=sys.stderr)
    for f, s in reply.steering.strengths:
        print(f"  steer {reply.steering.mode} {s:+g} × #{f} {engine.catalog.label(f)}", file=sys.stderr)
    for h in top:
        print(f"  fired #{h.id:<6} {h.activation:10.2f} on {h.tokens:3d} tokens  {h.label}", file=sys.stderr)


def _concept_progress(args):
    """Progress of an uncached concept search on stderr (it takes some seconds), unless --json."""
    if getattr(args, "json", False):
        return None
    return lambda fraction, message: print(f"  [{fraction:4.0%}] {message}", file=sys.stderr)


def cmd_concept(args) -> None:
    from chat.steer.concept import parse_concept

    parse_concept(args.concept)  # fail fast, before loading the model
    engine = _engine(args)
    concept = engine.concept(args.concept, progress=_concept_progress(args))
    if args.json:
        print(json.dumps(concept.describe(engine.catalog.label), ensure_ascii=False))
        return
    print(f"{concept.concept} (scale {concept.scale:g}, {concept.mode}): in the search, {concept.rate:.0%} of replies "
          f"to neutral prompts mentioned it; fluent from {concept.band[0]:.2g}× to {concept.band[1]:.2g}× these strengths")
    for f, s in concept.strengths.items():
        print(f"  #{f:<6} {s:+g}  {concept.row_label(engine.catalog.label(f))}  (writes: "
              f"{', '.join(concept.writes(engine.catalog, f))})")


def cmd_search(args) -> None:
    from chat.engine import load_catalog

    if args.top < 1:
        raise ValueError("--top must be at least 1")
    catalog = load_catalog(args.model, args.dictionary, allow_pickle=args.allow_pickle)
    hits = catalog.search(args.query, top=args.top)
    rows = [catalog.describe(f.id) for f in hits]
    if args.json:
        print(json.dumps(rows, ensure_ascii=False))
        return
    if not rows:
        print(f"no feature matches {args.query!r}", file=sys.stderr)
        if catalog.labels_source.startswith("features are unnamed"):
            print(catalog.labels_source, file=sys.stderr)
    for r in rows:
        stats = f"max {r['max_activation']:.1f}" if r["max_activation"] is not None else ""
        if r["steerability"] is not None:
            stats += f"  steerability {r['steerability']:.2f}"
        if r["strengths"].get("add"):
            stats += f"  add {r['strengths']['add'][0]:g}–{r['strengths']['add'][1]:g}"
        if r["score"] is not None:
            stats += f"  detection {r['score']:.2f}"
        print(f"#{r['id']:<6} {r['label']}  {stats}")
        if r["reads"] or r["writes"]:
            print(f"{'':8}reads: {', '.join(r['reads'][:6]) or '-'}   writes: {', '.join(r['writes'][:6]) or '-'}")


def cmd_encode(args) -> None:
    if args.top < 1:
        raise ValueError("--top must be at least 1")
    engine = _engine(args)
    enc = engine.encode(args.text)
    per_token = enc.top(args.top)
    if args.json:
        print(json.dumps({
            "tokens": enc.tokens,
            "features": [[{"id": i, "label": engine.catalog.label(i), "activation": round(a, 4)} for i, a in row]
                         for row in per_token],
        }, ensure_ascii=False))
        return
    for token, row in zip(enc.tokens, per_token):
        names = ", ".join(f"#{i} {engine.catalog.label(i)} ({a:.1f})" for i, a in row)
        print(f"{token!r:>16}  {names}")


def cmd_chat_bench(args) -> None:
    from chat.measure import chat_bench
    from chat.steer.settings import GenerationSettings

    settings = GenerationSettings.greedy() if args.greedy else GenerationSettings()
    progress = None if args.json else (lambda msg: print(msg, file=sys.stderr))
    results = chat_bench.run(_engine(args), settings, progress=progress)
    summary = results.summary()
    if args.json:
        print(json.dumps({"summary": summary, "settings": results.settings, "samples": results.samples},
                         ensure_ascii=False))
    else:
        print(chat_bench.table(summary, results.settings))


def cmd_concept_bench(args) -> None:
    from chat.measure import concept_bench
    from chat.steer.concept import CONCEPTS_FILE

    engine = _engine(args)
    rows = concept_bench.run(engine, progress=None if args.json else (lambda msg: print(msg, file=sys.stderr)))
    if args.ship:
        if engine.folder is None:
            raise ValueError("--ship needs a dictionary in a local folder")
        n = engine.concepts.export(engine.folder / CONCEPTS_FILE, [c for c, _ in concept_bench.CONCEPTS])
        print(f"wrote {n} concepts to {engine.folder / CONCEPTS_FILE}", file=sys.stderr)
    if args.json:
        print(json.dumps(concept_bench.as_json(rows), ensure_ascii=False))
    else:
        print(concept_bench.table(rows))
        print(json.dumps(concept_bench.summary(rows)))


def cmd_bench(args) -> None:
    from chat.measure.bench import Settings, run, table

    if args.chat and args.concepts:
        raise ValueError("--chat and --concepts are two benchmarks; pick one")
    if args.chat:
        return cmd_chat_bench(args)
    if args.concepts:
        return cmd_concept_bench(args)
    if args.greedy:
        raise ValueError("--greedy goes with --chat")
    if args.ship:
        raise ValueError("--ship goes with --concepts")

    settings = Settings.quick() if args.quick else Settings()
    for name in ("tokens", "repeats"):
        value = getattr(args, name)
        if value is not None:
            if value < 1:
                raise ValueError(f"--{name} must be at least 1")
            setattr(settings, name, value)
    progress = None if args.json else (lambda msg: print(msg, file=sys.stderr))
    results = run(settings, model=args.model, dictionary=args.dictionary, layer=args.layer, device=args.device,
                  allow_pickle=args.allow_pickle, progress=progress)
    if args.json:
        print(json.dumps({"rows": results.rows, "machine": results.machine, "settings": results.settings,
                          "details": results.details}))
    else:
        print(table(results))


def cmd_check(args) -> int:
    from chat.measure.check import load_spec, run_spec, table

    spec = load_spec(args.spec)  # fail fast, before loading the model
    args.model = args.model or spec.model
    args.dictionary = args.dictionary or spec.dictionary
    args.layer = args.layer if args.layer is not None else spec.layer
    engine = _engine(args)
    if args.vs_prompting:
        from chat.measure import versus

        rows = versus.versus(engine, spec, progress=None if args.json else lambda r: print(r.concept, file=sys.stderr))
        print(json.dumps([r.summary() for r in rows], ensure_ascii=False) if args.json else versus.table(rows))
        return 0
    progress = None if args.json else _check_progress(len(spec.cases))
    results = run_spec(engine, spec, progress=progress)
    if args.json:
        print(json.dumps([r.summary() for r in results], ensure_ascii=False))
    else:
        print(table(results))
    return 0 if all(r.passed for r in results) else 1


def _check_progress(total: int):
    """`[3/150, ~12 min left] ok  name` on stderr after each case: a spec can take many minutes."""
    import time

    started, done = time.monotonic(), 0

    def say(result) -> None:
        nonlocal done
        done += 1
        left = (time.monotonic() - started) / done * (total - done)
        eta = f"~{left / 60:.0f} min left" if left >= 90 else f"~{left:.0f} s left"
        print(f"[{done}/{total}, {eta if done < total else 'done'}] {'ok  ' if result.passed else 'FAIL'} {result.name}",
              file=sys.stderr, flush=True)

    return say


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from chat.errors import USER_ERRORS

    try:
        commands = {"reply": cmd_reply, "concept": cmd_concept, "search": cmd_search, "encode": cmd_encode, "check": cmd_check,
                    "bench": cmd_bench}
        return commands[args.command](args) or 0
    except USER_ERRORS as e:
        if os.environ.get("STEERCHAT_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a bug, not the user's fault: still one line, with a way to see more
        if os.environ.get("STEERCHAT_DEBUG"):
            raise
        print(f"error: internal error ({type(e).__name__}: {e}); set STEERCHAT_DEBUG=1 for a traceback",
              file=sys.stderr)
        return 1
