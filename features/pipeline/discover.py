"""What does each feature write? Amplify every feature in turn and read what the model says.

The concept-first search (`features.pipeline.writers`, `features.pipeline.curate`) asks "which feature writes
*winter*?" and finds nothing when the concept list names things the dictionary does not write.
This asks the other way round, for every live feature at once: add it (add mode, STRENGTH ×
max activation) on a few neutral prompts, decode a short greedy reply, and keep the words the
steered replies say that the unsteered replies do not. A feature whose words repeat across
prompts ("snow, cold" on three of three prompts) writes a concept; a person names it and
`curate` measures its bands.

Rows of a batch are different features on the same prompt (no padding, so every row sees the
same prompt and differs only by its edit); one batch decodes NEW_TOKENS steps with the KV cache.
The 262k-token unembedding costs more than the 18 layers, so greedy decoding here picks among
the tokens written in Latin script and common punctuation (`text_tokens`): an English reply
whose argmax is elsewhere is rare, and `curate` measures the chosen features on real replies.

    python -m features discover --dictionary assets/dictionary --out writes.jsonl [--write]

With `--write`, each feature's words go into features.json (`"writes"`), and the "writes" side of
automatic labels ("reads → writes") becomes what steering made the model say instead of the
logit-lens tokens, which at a middle layer are mostly fragments. Curated labels are kept.
"""
from __future__ import annotations

import json
import re
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple, Sequence

import torch
from torch import Tensor

from chat.steer.hooks import on_output
from chat.steer.prompt import build_prompt, reply_length
from chat.steer.concept import NEUTRAL_PROMPTS
from features.catalog import Feature

STRENGTH = 3.0  # curated writers show their concept at 1-3x; 3x finds the ones that need it
NEW_TOKENS = 10  # a writer's concept shows in the first words
PROMPTS = NEUTRAL_PROMPTS[:3]
_WORD = re.compile(r"[A-Za-z]{3,}")
# Words any reply may use: they say nothing about what a feature writes.
_STOP = frozenset("""the and for with that this from are was were not but you your all have has had
will would can could should what when where which who how why there their they them then than
its it's into about just like some more most very also been being our out one two get got going
i'm i've don't it's that's let's here over only any each other such much many well back now new""".split())


class Written(NamedTuple):
    feature: int
    words: tuple[str, ...]  # said in at least `min_prompts` steered replies and in no unsteered one, most frequent first
    replies: tuple[str, ...]  # the steered replies, one per prompt


def words(text: str) -> set[str]:
    return {w.lower() for w in _WORD.findall(text)} - _STOP


def text_tokens(tokenizer) -> Tensor:
    """(V',) ids of the tokens whose text is ASCII, typographic quotes and dashes, and of the
    special tokens (which end a reply). Decoded one by one, so any tokenizer's pieces work."""
    allowed = re.compile("[\x20-\x7e\n\u2018\u2019\u201c\u201d\u2013\u2014\u2026]+")
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    special = set(tokenizer.all_special_ids)
    return torch.tensor([i for i, t in enumerate(texts) if i in special or allowed.fullmatch(t)])


class Unembedding(NamedTuple):
    ids: Tensor  # (V',) the token ids greedy decoding may pick, on the model's device
    weight: Tensor  # (V', d) their rows of the output embedding


def unembedding(lm, vocab: Tensor) -> Unembedding:
    """The output embedding cut down to `vocab`: gathered once per run, not once per batch
    (at 150k tokens it is a 190 MB copy)."""
    ids = vocab.to(lm.device)
    return Unembedding(ids, lm.unembedding(ids))


def _decode(lm, prompt_ids: Sequence[int], edit: Tensor | None, new_tokens: int, layer: int,
            head: Unembedding) -> Tensor:
    """(B, new_tokens) greedy tokens (among `head.ids`) after `prompt_ids`, row b with `edit[b]`
    (d,) added to the layer's output at every non-special position. `edit` None: one unsteered row."""
    rows = 1 if edit is None else edit.shape[0]
    ids = torch.tensor([list(prompt_ids)], device=lm.device).expand(rows, -1)  # (B, T)
    keep = lm.content_mask(ids).unsqueeze(-1)  # (B, T, 1) never edit BOS
    state = {"keep": keep}

    def add(h: Tensor) -> Tensor | None:
        if edit is None:
            return None
        return h + (edit.unsqueeze(1).to(h.device) * state["keep"]).to(h.dtype)  # (B, T, d)

    body = lm.model.get_decoder()
    out = []
    with torch.inference_mode(), on_output(lm.layers[layer], add):
        step = body(input_ids=ids, use_cache=True)  # final-normed hidden states
        for _ in range(new_tokens):
            logits = step.last_hidden_state[:, -1] @ head.weight.T  # (B, V') softcapping, if any, keeps the argmax
            token = head.ids[logits.argmax(-1)].unsqueeze(-1)  # (B, 1)
            out.append(token)
            state["keep"] = lm.content_mask(token).unsqueeze(-1)  # (B, 1, 1)
            step = body(input_ids=token, cache=step.cache, use_cache=True)
    return torch.cat(out, dim=1)  # (B, new_tokens)


def _texts(lm, prompt, tokens: Tensor) -> list[str]:
    tok = lm.tokenizer
    out = []
    for row in tokens.tolist():
        n = reply_length(tok, row, prompt.stop_strings, final=True)
        out.append(tok.decode(row[:n], skip_special_tokens=True).strip())
    return out


def load(path: Path) -> list[Written]:
    """The rows a `discover` run wrote (JSON lines)."""
    rows = []
    for line in Path(path).read_text().splitlines():
        row = json.loads(line)
        rows.append(Written(int(row["feature"]), tuple(row["words"]), tuple(row["replies"])))
    return rows


def discover(engine, features: Sequence[int], out: Path, *, strength: float = STRENGTH,
             prompts: Sequence[str] = PROMPTS, new_tokens: int = NEW_TOKENS, min_prompts: int = 2,
             batch_size: int = 64, progress=print) -> list[Written]:
    """Steered replies and written words of `features`, appended to `out` (JSON lines) batch by
    batch, so a long run resumes where it stopped."""
    out = Path(out)
    done = {row.feature: row for row in load(out)} if out.exists() else {}
    todo = [f for f in features if f not in done]
    lm = engine.lm
    head = unembedding(lm, text_tokens(lm.tokenizer))
    built = [build_prompt(lm.tokenizer, p, max_tokens=512, frame="plain") for p in prompts]  # as measured
    plain = set().union(*(words(_texts(lm, p, _decode(lm, p.ids, None, new_tokens, engine.layer, head))[0]) for p in built))
    start = time.time()
    for b in range(0, len(todo), batch_size):
        batch = todo[b:b + batch_size]
        edit = strength * engine.max_acts[batch].float().unsqueeze(1) * engine.dictionary.directions(batch).float()  # (B, d)
        per_prompt = [_texts(lm, p, _decode(lm, p.ids, edit, new_tokens, engine.layer, head)) for p in built]  # P x (B,)
        with out.open("a") as f:
            for r, fid in enumerate(batch):
                replies = tuple(texts[r] for texts in per_prompt)
                # sorted: words() is a set, whose order (so the order of ties) changes per process
                counts = Counter(w for reply in replies for w in sorted(words(reply) - plain))
                row = Written(fid, tuple(w for w, n in counts.most_common() if n >= min_prompts), replies)
                done[fid] = row
                f.write(json.dumps(row._asdict()) + "\n")
        if progress:
            n = b + len(batch)
            rate = n / (time.time() - start)
            progress(f"discover: {n:,}/{len(todo):,} features ({rate:.1f}/s, {(len(todo) - n) / rate / 60:.0f} min left)")
    return [done[f] for f in features]


def with_writes(feature: Feature, written: Written, n: int = 3) -> Feature:
    """`feature` with its written words stored and, unless curated, its automatic label's
    "writes" side replaced by them."""
    extra = feature.extra | {"writes": list(written.words[:8])}
    if feature.curated or not written.words:
        return replace(feature, extra=extra)
    reads = feature.label.split(" → ", 1)[0] if feature.label else "?"
    return replace(feature, label=f"{reads} → {', '.join(written.words[:n])}", extra=extra)
