"""Names a person can read, for every live feature, from every firing on a few hundred
thousand tokens (features/pipeline/evidence.py), not from 8 contexts.

For each feature:
- reads: the words that set its firings apart from ordinary text. Tokens are joined into whole
  words (features/words.py) and lemmatised; a word's weight is its detection gain, the share of
  the feature's firings on it minus the share of other tokens on it (log-odds and TF-IDF rank
  the same words first, but the gain adds up to balanced accuracy, which is what we report).
  Reads come from the word it fires on; where it predicts better, the predictor also takes the
  words just before that add firings (mode "both"), or only those ("after a word").
- name and kind: features/pipeline/naming.py names the reads (a WordNet group, one word, or plain kinds
  such as "digits in numbers", features/kinds.py), unless a kind predicts the firings better.
- score: detection score, the balanced accuracy of the name's predictor (its reads, or its
  kind's token test) on held-out tokens: (true positive rate + true negative rate) / 2, 0.5 is
  chance. `heldout_fires` says on how many held-out tokens it fired.
- Both come from the strong firings only (at >= STRONG of the feature's peak on the training
  text): the weak ones are where a TopK dictionary fills its k slots, not what it is about.
  The peak is its second strongest firing, not the strongest: one outlier (a feature on
  "sorry" firing at 10x its usual on one "Magellan's") would leave no strong firing but itself.
- examples: the top contexts and samples from lower down its activation range, in whole words.
- writes: what amplifying it makes the model say (features/pipeline/discover.py), whole words only.

Stats (max activation, density) stay those of the catalog when it has them: curated strengths
are measured in multiples of them. Curated labels are never replaced.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch
from torch import Tensor

from chat.runtime.models import LoadedModel
from features import kinds as K
from features.catalog import Feature
from features.dictionary import Dictionary
from features.pipeline.evidence import Firings
from features.lexicon import Lexicon
from features.pipeline.naming import Close, Reading, Written, agreement, display, is_english, name as name_of
from features.words import base_word, join

MAX_READS = 8  # words shown and named from
MAX_PREDICT = 200  # words the detection predictor uses (only words that raise its training score)
N_EXAMPLES = 5  # shipped per feature: 3 top contexts and 2 from lower down its range
WINDOW = 6  # tokens each side of the firing token in an example
BEFORE = 1  # words before a token that its reads may come from (2 scored worse on held-out text: more false alarms)
KIND_MARGIN = 0.02  # a kind must beat the words by this much to name a feature: words say more
# A TopK dictionary fires k latents on every token, so most firings are weak ones a person never
# sees; names come from (and are scored on) the firings at >= this share of the feature's peak.
# On 600 random features, 0.35 against all firings: median detection 0.799 vs 0.782, and names
# such as "another, second and real" -> "other", "what, that, which" -> "what".
STRONG = 0.35
CHECKPOINT_EVERY = 1000
# Words kept of where a feature fires on held-out text (readers are counted from them; 16
# found no reader that 8 missed).
HELDOUT_WORDS = 8


def logit_lens(lm: LoadedModel, dictionary: Dictionary, top: int = 8, chunk: int = 256,
               allowed: Tensor | None = None) -> list[list[str]]:
    """Per feature, the `top` tokens its decoder direction promotes most; with `allowed` (V,)
    bool, only among those tokens (Gemma's 262k vocabulary is mostly scripts and fragments our
    English text never uses, and they crowd the raw logit lens)."""
    norm = lm.model.get_decoder().norm
    W_U = lm.unembedding()  # (V, d_model)
    tok = lm.tokenizer
    out: list[list[str]] = []
    with torch.inference_mode():
        for start in range(0, dictionary.d_sae, chunk):
            ids = list(range(start, min(start + chunk, dictionary.d_sae)))
            dirs = dictionary.directions(ids).to(W_U.device, W_U.dtype)  # (n, d)
            logits = norm(dirs.unsqueeze(0))[0] @ W_U.T  # (n, V)
            if allowed is not None:
                logits = logits.masked_fill(~allowed.to(logits.device), float("-inf"))
            for row in torch.topk(logits.float(), top, dim=-1).indices.tolist():
                out.append([tok.decode([t]) for t in row])
    return out


def closeness(lm: LoadedModel) -> Close:
    """How close the model places two words: the cosine of its input embeddings of each as
    written mid-sentence (" cold"; a word of several tokens, their mean), centred on the mean
    embedding, which every row shares a large part of."""
    table = lm.model.get_input_embeddings().weight.detach()  # (V, d_model)
    mean = sum(table[i:i + 8192].float().sum(0) for i in range(0, len(table), 8192)) / len(table)
    seen: dict[str, Tensor] = {}

    def vector(word: str) -> Tensor:
        if word not in seen:
            ids = lm.tokenizer.encode(" " + word, add_special_tokens=False)
            v = table[ids].float().mean(0) - mean
            seen[word] = v / v.norm().clamp_min(1e-6)
        return seen[word]
    return lambda a, b: float(vector(a) @ vector(b))


@dataclass
class Text:
    """One split's tokens as words: per flat token position, the lemma id of its word, of the
    word before, and its kind flags (features/kinds.py)."""
    firings: Firings
    pieces: list[str]  # per flat token, its decoded text
    lemma: np.ndarray  # (N,) int32 lemma id of the token's word unit; -1 outside content
    before: np.ndarray  # (N, BEFORE) int32 lemma ids of the BEFORE words before it, nearest first; -1 where none
    flags: np.ndarray  # (N, len(FLAG_KINDS)) bool
    content: np.ndarray  # (N,) bool
    bg: np.ndarray  # (L,) content tokens per lemma id
    bg_before: np.ndarray  # (L,) content tokens per lemma id among the words before
    flag_totals: np.ndarray  # (len(FLAG_KINDS),)


class Vocabulary:
    """Lemma ids shared by both splits, with how each lemma is most often written and its kind."""

    def __init__(self, lexicon: Lexicon) -> None:
        self.lexicon = lexicon
        self.ids: dict[str, int] = {}
        self.lemmas: list[str] = []
        self.kinds: list[str | None] = []
        self.surfaces: list[dict[str, int]] = []
        self.written: Written | None = None  # how often the training text writes a word, once read (naming.py)
        self.close: Close | None = None  # how close the model places two words (naming.py `related`)

    def id(self, unit: str, is_word: bool) -> int:
        key, kind = _lemma_key(unit, is_word, self.lexicon)
        i = self.ids.get(key)
        if i is None:
            i = self.ids[key] = len(self.lemmas)
            self.lemmas.append(key)
            self.kinds.append(kind)
            self.surfaces.append({})
        s = self.surfaces[i]
        if len(s) < 20 or unit in s:
            s[unit] = s.get(unit, 0) + 1
        return i

    def writing_counts(self, tokens: int, text: str = "") -> Written:
        """How often the text read so far (`tokens` long) writes each word, exactly so (any
        case), per million tokens; a phrase ("days of the week"), how often `text` (that text,
        joined) holds it as whole words."""
        counts: dict[str, int] = {}
        for forms in self.surfaces:
            for unit, n in forms.items():
                key = unit.strip().lower()
                counts[key] = counts.get(key, 0) + n
        lowered = text.lower()
        scale = 1e6 / max(tokens, 1)

        def written(word: str) -> float:
            key = word.lower()
            if " " in key and key not in counts:
                counts[key] = len(re.findall(rf"\b{re.escape(key)}\b", lowered))
            return counts.get(key, 0) * scale
        return written

    def surface(self, i: int) -> str:
        s = self.surfaces[i]
        return max(s, key=s.get) if s else self.lemmas[i]


def _lemma_key(unit: str, is_word: bool, lexicon: Lexicon) -> tuple[str, str | None]:
    if "\ufffd" in unit:  # a byte of a character cut between tokens
        return "\ufffd", "punctuation"
    if not is_word:
        return (unit if unit.strip() else ("\n" if "\n" in unit else " ")), ("punctuation" if unit.strip() else "space")
    if unit.replace(",", "").replace(".", "").isdigit():
        return "<number>", "digits"
    base = base_word(unit)
    if "_" in unit or (any(c.isupper() for c in unit[1:]) and not unit.isupper()):
        return base, "code"
    if base in K._PY_KEYWORDS and not is_english(base, lexicon):
        return base, "keyword"
    if not base.isalpha():
        return base, "code"
    return lexicon.lemma(base), None


def read_text(firings: Firings, decode: Callable[[int], str], vocab: Vocabulary) -> Text:
    S, T = firings.tokens.shape
    N = S * T
    lemma = np.full(N, -1, np.int32)
    before = np.full((N, BEFORE), -1, np.int32)
    flags = np.zeros((N, len(K.FLAG_KINDS)), bool)
    content = firings.content.reshape(-1)
    pieces: list[str] = [""] * N
    for s in range(S):
        ids = firings.tokens[s].tolist()
        keep = [t for t in range(T) if firings.content[s, t]]
        if not keep:
            continue
        toks = [decode(ids[t]) for t in keep]
        words = join(toks)
        unit_ids = [vocab.id(w, is_w) for w, is_w in zip(words.words, words.is_word)]
        prev_word = [[-1] * BEFORE] * len(words.words)  # per unit, the lemma ids of the words before it
        last = [-1] * BEFORE
        for u, is_w in enumerate(words.is_word):
            prev_word[u] = last
            if is_w:
                last = [unit_ids[u], *last[:-1]]
        f = K.flags(toks, words)
        for j, t in enumerate(keep):
            n = s * T + t
            u = words.of_token[j]
            lemma[n] = unit_ids[u]
            before[n] = prev_word[u]
            pieces[n] = toks[j]
        flags[[s * T + t for t in keep]] = f
    L = len(vocab.lemmas) + 1
    bg = np.bincount(lemma[content], minlength=L)
    seen = before[content]
    seen = np.where(np.diff(seen, axis=1, prepend=-2) == 0, -1, seen)  # "the the" once (adjacent only)
    bgb = np.bincount(seen[seen >= 0], minlength=L)
    return Text(firings, pieces, lemma, before, flags, content, bg, bgb, flags[content].sum(0))


class Verdict(NamedTuple):
    """What the labeller concluded about one feature."""
    name: str
    kind: str
    reads: list[str]  # shown words, strongest first
    reads_ids: list[int]  # their lemma ids
    mode: str  # "on" (the word it fires on), "before" (the word just before), "both", a FLAG_KINDS kind or "dense"
    train_score: float
    before_ids: list[int] = []  # with mode "both": lemma ids of the words just before that predict it too


def _gains(counts: np.ndarray, ids: np.ndarray, bg: np.ndarray, P: int, N: int, min_count: int) -> list[tuple[int, float]]:
    """(lemma id, gain) of the lemmas where the feature's share beats the rest's, best first."""
    neg = max(N - P, 1)
    g = counts / P - (bg[ids] - counts) / neg
    ok = (g > 0) & (counts >= min_count)
    order = np.argsort(-g[ok])[:MAX_PREDICT]
    return [(int(ids[ok][j]), float(g[ok][j])) for j in order]


class Option(NamedTuple):
    """One way to predict a feature's firings: from words, or a kind's token test."""
    score: float  # balanced accuracy on the text it was found on, less a margin for kinds
    mode: str  # as Verdict.mode
    gains: list[tuple[int, float]]  # (lemma id, gain), best first: the words it fires on (or before, mode "before")
    before: list[tuple[int, float]]  # mode "both": the words just before that add firings


def _strongest_first(gains: list[tuple[int, float]], lem: np.ndarray, acts: np.ndarray, bg: np.ndarray,
                     N: int) -> list[tuple[int, float]]:
    """The same words, reweighed by activation: each word's share of the feature's summed
    activation, less the other tokens' share on it. A person reads a feature by its top
    contexts, so the word it fires on hardest ("does", in the "What does ..." of all its top
    contexts) names it before words it fires on more often but more weakly ("or", digits).
    The predictor (which words) stays."""
    total = float(acts.sum())
    if not gains or total <= 0:
        return gains
    ids = np.asarray([i for i, _ in gains], np.int32)
    mass = np.bincount(lem, weights=acts, minlength=len(bg))[ids] / total
    counts = np.bincount(lem, minlength=len(bg))[ids]
    g = mass - (bg[ids] - counts) / max(N - len(acts), 1)
    order = np.argsort(-g, kind="stable")
    return [(int(ids[j]), max(float(g[j]), 1e-9)) for j in order]  # never dropped, only last


def options(positions: np.ndarray, text: Text, acts: np.ndarray | None = None) -> list[Option]:
    """Every predictor of these firings the labeller considers, scored on `text`. With `acts`
    (the firings' activations) the words come strongest first (`_strongest_first`)."""
    N = int(text.content.sum())
    P = len(positions)
    min_count = 2 if P >= 10 else 1
    out: list[Option] = []
    for mode, key, bg in (("on", text.lemma, text.bg), ("before", text.before, text.bg_before)):
        at = key[positions]  # (P,) or (P, BEFORE)
        lem = at.reshape(-1)
        keep = lem >= 0
        lem = lem[keep]
        if not len(lem):
            continue
        ids, counts = np.unique(lem, return_counts=True)
        gains = _gains(counts, ids, bg, P, N, min_count)
        if gains:
            margin = 0.0 if mode == "on" else KIND_MARGIN  # the word it fires on reads more plainly
            score = 0.5 + 0.5 * sum(g for _, g in gains) - margin  # balanced accuracy: by count
            if acts is not None:
                w = np.broadcast_to(acts.reshape(-1, *([1] * (at.ndim - 1))), at.shape).reshape(-1)[keep]
                gains = _strongest_first(gains, lem, w.astype(np.float64), bg, N)
            out.append(Option(score, mode, gains, []))
    on = next((o for o in out if o.mode == "on"), None)
    if on is not None:  # either its word or the word before: the words before that add firings
        # the words it fires on do not already predict (gains counted on the other tokens only)
        rest = text.content & ~np.isin(text.lemma, np.asarray([i for i, _ in on.gains], np.int32))
        lem = text.before[positions[rest[positions]]].reshape(-1)
        lem = lem[lem >= 0]
        if len(lem):
            ids, counts = np.unique(lem, return_counts=True)
            seen = text.before[rest].reshape(-1)
            extra = _gains(counts, ids, np.bincount(seen[seen >= 0], minlength=len(text.bg)), P, N, min_count)
            if extra:
                both = on.score + 0.5 * sum(g for _, g in extra)
                out.append(Option(both - KIND_MARGIN, "both", on.gains, extra))
    tpr = text.flags[positions].mean(0)
    fpr = (text.flag_totals - text.flags[positions].sum(0)) / max(N - P, 1)
    for j, kind in enumerate(K.FLAG_KINDS):
        out.append(Option(0.5 * (tpr[j] + 1 - fpr[j]) - KIND_MARGIN, kind, [], []))
    return out


def verdict(positions: np.ndarray, density: float | None, text: Text, vocab: Vocabulary,
            acts: np.ndarray | None = None) -> Verdict:
    """Reads, name and kind of one feature from its firing positions (and their activations,
    which order the reads) on the training text: the predictor that scores best there.
    (Choosing the mode and the number of words on a held-apart fifth of the training text
    instead scored no better on held-out text: 0.719 vs 0.722 median.)"""
    found = options(positions, text, acts)
    chosen = max(found, key=lambda o: o.score)
    score, mode, gains = chosen.score, chosen.mode, chosen.gains
    words_gains = next((o.gains for o in found if o.mode == "on"), [])
    if density is not None and density > K.DENSE_FRACTION:
        return Verdict(K.NAMES[K.DENSE], K.DENSE, _shown(words_gains, vocab), [i for i, _ in words_gains], K.DENSE, 0.5)
    if mode in K.FLAG_KINDS:
        reads = words_gains
        units = [vocab.lemmas[i] for i, _ in reads if vocab.kinds[i] in ("punctuation", "space")]
        title = K.punctuation_name(units) if mode in ("punctuation", "space") and units else K.NAMES[mode]
        return Verdict(title, mode, _shown(reads, vocab), [i for i, _ in reads], mode, score + KIND_MARGIN)
    readings = [Reading(vocab.surface(i), vocab.lemmas[i], g, vocab.kinds[i]) for i, g in gains[:MAX_READS]]
    title, kind = name_of(readings, vocab.lexicon, vocab.written, vocab.close)
    if mode == "before" and kind in (K.WORD, K.CONCEPT, K.WORDS):
        title, kind = (f"after the word {title}" if kind == K.WORD else f"after {title.removeprefix('words: ')}"), K.AFTER
    return Verdict(title, kind, _shown(gains, vocab), [i for i, _ in gains], mode, score,
                   [i for i, _ in chosen.before])


def _shown(gains: list[tuple[int, float]], vocab: Vocabulary) -> list[str]:
    out: list[str] = []
    for i, _ in gains:
        w = vocab.surface(i)
        w = display(w) if vocab.kinds[i] is None else w
        if w.strip() and w not in out and "\ufffd" not in w:
            out.append(w)
    return out[:MAX_READS]


def detection(v: Verdict, positions: np.ndarray, text: Text) -> tuple[float | None, int]:
    """(balanced accuracy of the verdict's predictor on this text, firings); None without firings."""
    if v.mode == K.DENSE:
        return (0.5 if len(positions) else None), len(positions)  # predicts every token: chance, honestly
    option = Option(0.0, v.mode, [(i, 0.0) for i in v.reads_ids], [(i, 0.0) for i in v.before_ids])
    return _predict(option, positions, text), len(positions)


def _predict(o: Option, positions: np.ndarray, text: Text) -> float | None:
    """Balanced accuracy of an option's predictor on `text`; None without firings."""
    P = len(positions)
    N = int(text.content.sum())
    if P == 0 or N <= P:
        return None
    if o.mode in K.FLAG_KINDS:
        j = K.FLAG_KINDS.index(o.mode)
        predicted = text.flags[:, j] & text.content
    else:
        ids = np.asarray([i for i, _ in o.gains], np.int32)
        if o.mode == "before":
            predicted = np.isin(text.before, ids).any(axis=1) & text.content
        else:
            predicted = np.isin(text.lemma, ids) & text.content
        if o.mode == "both":
            predicted |= np.isin(text.before, np.asarray([i for i, _ in o.before], np.int32)).any(axis=1) & text.content
    tp = int(predicted[positions].sum())
    fp = int(predicted.sum()) - tp
    return 0.5 * (tp / P + 1 - fp / (N - P))


def heldout_words(positions: np.ndarray, text: Text, vocab: Vocabulary, n: int = HELDOUT_WORDS) -> list[list]:
    """[[word, share], ...]: the words its strong held-out firings land on most (as most often
    written, like names: "does", not the lemma "doe"), with the share of those firings on
    each. Measured, not predicted: it says where the feature fires on text no stage learned
    from, whatever its name (the issue's "reader": >= 30% on a concept's words)."""
    lem = text.lemma[positions]
    lem = lem[lem >= 0]
    if not len(lem):
        return []
    ids, counts = np.unique(lem, return_counts=True)
    shown: dict[str, int] = {}  # " --" and "--" are two units but one word to a reader
    for i, c in zip(ids.tolist(), counts.tolist()):
        written = vocab.surface(i)
        w = written.strip() or written
        shown[w] = shown.get(w, 0) + c
    top = sorted(shown.items(), key=lambda wc: -wc[1])[:n]
    return [[w, round(c / len(positions), 3)] for w, c in top]


def examples(positions: np.ndarray, acts: np.ndarray, text: Text, n: int = N_EXAMPLES) -> list[dict]:
    """The top 3 contexts and n-3 from lower down the activation range (its median, its lower
    quartile), each a window of tokens with the firing token marked."""
    if not len(positions):
        return []
    order = np.argsort(-acts, kind="stable")
    picks = list(order[:3])
    for q in (0.5, 0.8)[: max(n - 3, 0)]:
        j = order[min(int(q * len(order)), len(order) - 1)]
        if j not in picks:
            picks.append(j)
    T = text.firings.tokens.shape[1]
    out = []
    for j in picks[:n]:
        p = int(positions[j])
        s, t = divmod(p, T)
        lo, hi = max(s * T, p - WINDOW), min(s * T + T, p + WINDOW + 1)
        window = [q for q in range(lo, hi) if text.content[q]]
        out.append({"tokens": [text.pieces[q] for q in window], "max_index": window.index(p),
                    "activation": round(float(acts[j]), 3)})
    return out


def _peak(acts: np.ndarray) -> float:
    """The second strongest activation (the only one, for a feature that fired once)."""
    return float(np.partition(acts, len(acts) - 2)[-2]) if len(acts) > 1 else float(acts[0])


def _by_feature(firings: Firings, content_only: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    keep = content_only[firings.pos]
    feat, pos, act = firings.feature[keep], firings.pos[keep], firings.act[keep]
    order = np.argsort(feat, kind="stable")
    feat, pos, act = feat[order], pos[order], act[order]
    bounds = np.searchsorted(feat, np.arange(feat.max(initial=-1) + 2))
    return bounds, pos, act


def relabel(train: Firings, heldout: Firings, decode: Callable[[int], str], lexicon: Lexicon,
            old: dict[int, Feature], d_sae: int, work: Path | None = None, progress: bool = True,
            top_tokens: list[list[str]] | None = None, close: Close | None = None) -> dict[int, Feature]:
    """Features with name, kind, reads, score and examples for every feature that fires on
    `train`. `old` (the catalog's features by id) keeps its stats, writes and curated labels.
    `work`: a folder where verdicts are checkpointed, so an interrupted run resumes. `close`:
    how close the model places two words (`closeness`), for names of words that share a meaning."""
    from tqdm.auto import tqdm

    vocab = Vocabulary(lexicon)
    vocab.close = close
    tr = read_text(train, decode, vocab)
    N = int(tr.content.sum())
    vocab.written = vocab.writing_counts(N, "".join(tr.pieces))  # the training text only: names are chosen on it
    ho = read_text(heldout, decode, vocab)
    bounds, pos, act = _by_feature(train, tr.content)
    hb, hpos, hact = _by_feature(heldout, ho.content)
    done: dict[int, dict] = {}
    checkpoint = Path(work) / "verdicts.jsonl" if work is not None else None
    if checkpoint is not None and checkpoint.exists():
        for line in checkpoint.read_text().splitlines():
            row = json.loads(line)
            done[row["id"]] = row
    out: dict[int, Feature] = {}
    pending: list[dict] = []
    live = [i for i in range(min(d_sae, len(bounds) - 1)) if bounds[i + 1] > bounds[i]]
    for i in tqdm(live, desc="naming", unit="feature", disable=not progress):
        p, a = pos[bounds[i]:bounds[i + 1]], act[bounds[i]:bounds[i + 1]]
        before = old.get(i) or Feature(i)
        density = before.density if before.density is not None else len(p) / max(N, 1)
        strong = STRONG * _peak(a)
        hp, ha = (hpos[hb[i]:hb[i + 1]], hact[hb[i]:hb[i + 1]]) if i + 1 < len(hb) else (hpos[:0], hact[:0])
        held = hp[ha >= strong]  # its strong held-out firings
        row = done.get(i)
        if row is None:
            v = verdict(p[a >= strong], density, tr, vocab, a[a >= strong])
            score, fires = detection(v, held, ho)
            row = {"id": i, "name": v.name, "kind": v.kind, "reads": v.reads, "mode": v.mode,
                   "score": None if score is None else round(score, 3), "heldout_fires": fires,
                   "train_score": round(v.train_score, 3), "examples": examples(p, a, tr)}
            pending.append(row)
            if checkpoint is not None and len(pending) >= CHECKPOINT_EVERY:
                _append(checkpoint, pending)
                pending = []
        row = {**row, "heldout_words": heldout_words(held, ho, vocab)}  # cheap: measured afresh, never cached
        out[i] = _feature(before, row, lexicon, max_activation=float(a.max()), density=density,
                          top_tokens=top_tokens[i] if top_tokens else None)
    if checkpoint is not None and pending:
        _append(checkpoint, pending)
    for i, f in old.items():  # features that did not fire here: curated ones keep everything,
        if i in out:             # the others are named from the examples they had
            continue
        if f.curated:
            out[i] = f
        elif f.examples:
            verdict_row = {"id": i, **_from_examples(f.examples, lexicon), "score": None, "heldout_fires": 0,
                           "examples": f.examples[:N_EXAMPLES]}
            out[i] = _feature(f, verdict_row, lexicon, max_activation=f.max_activation or 0.0,
                              density=f.density or 0.0, top_tokens=None)
    return out


def _from_examples(examples: list[dict], lexicon: Lexicon) -> dict:
    """Name, kind and reads from a catalog's example contexts alone: the words they peak on."""
    counts: dict[tuple[str, str | None], list] = {}
    for ex in examples:
        tokens, at = ex.get("tokens"), ex.get("max_index")
        if not isinstance(tokens, list) or not isinstance(at, int) or not 0 <= at < len(tokens):
            continue
        words = join([str(t) for t in tokens])
        unit = words.of_token[at]
        key = _lemma_key(words.words[unit], words.is_word[unit], lexicon)
        counts.setdefault(key, [words.words[unit], 0])[1] += 1
    total = sum(n for _, n in counts.values()) or 1
    readings = sorted((Reading(w, lemma, n / total, kind) for (lemma, kind), (w, n) in counts.items()),
                      key=lambda r: -r.weight)
    title, kind = name_of(readings[:MAX_READS], lexicon)
    return {"name": title, "kind": kind, "reads": [display(r.word) if r.kind is None else r.word
                                                     for r in readings[:MAX_READS] if r.word.strip()]}


def _append(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def _feature(before: Feature, row: dict, lexicon: Lexicon, *, max_activation: float, density: float,
             top_tokens: list[str] | None) -> Feature:
    extra = {k: v for k, v in before.extra.items()
             if k not in ("name", "kind", "reads", "score", "heldout_fires", "heldout_words", "agreement")}
    writes = extra.get("writes")
    if isinstance(writes, list):  # discover's words, whole English words only
        extra["writes"] = [w for w in writes if isinstance(w, str) and is_english(w, lexicon)]
    fit = agreement(row["name"].removeprefix("word: "), row.get("heldout_words") or [], lexicon) \
        if row["kind"] in (K.CONCEPT, K.WORDS, K.WORD) else None
    name, kind = K.honest(row["name"], row["kind"], row["reads"], row["score"], row.get("heldout_fires"), fit)
    # A curated label says what the feature writes; "name" and "kind" keep where it fires, which
    # the fired panel shows for a writer that fires elsewhere (chat/ui/fired.py `panel_label`).
    extra |= {"name": name, "kind": kind, "reads": row["reads"],
              "score": row["score"], "heldout_fires": row["heldout_fires"]}
    if row.get("heldout_words"):
        extra["heldout_words"] = row["heldout_words"]
    if fit is not None:
        extra["agreement"] = round(fit, 3)
    return replace(before, label=before.label if before.curated else name,
                   max_activation=before.max_activation if before.max_activation is not None else max_activation,
                   density=before.density if before.density is not None else density,
                   examples=row["examples"], top_tokens=before.top_tokens or top_tokens or [], extra=extra)
