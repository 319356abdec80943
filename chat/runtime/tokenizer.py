"""The embedded model's tokenizer in a form that loads in milliseconds, giving exactly the ids
and text of the `tokenizers` library.

`tokenizers.Tokenizer.from_file` parses Gemma 3's 33 MB tokenizer.json and builds a map of its
514,906 merges before the first token: a second of a cold start, holding the interpreter lock.
A chat prompt needs a few hundred merge lookups. So the first load writes the vocabulary and
merges as flat arrays (`<cache>/tokenizer/<key>.safetensors`), and later loads read those:

    text -> split out added tokens ("<eos>", "\\n\\n", "<table>", ...; leftmost-longest)
         -> each other piece: " " -> "▁", one symbol per character (UTF-8 bytes as <0xNN>
            where the vocabulary lacks the character)
         -> merge the adjacent pair of lowest rank, leftmost first, until none is in the merges
    ids  -> tokens (special ones skipped on request) -> "▁" -> " ", <0xNN> runs -> UTF-8 -> joined

That is what `tokenizers` does for this configuration (a BPE with byte fallback, a Replace
normaliser, no pre-tokenizer split, a BOS template); `supports` says which configurations those
are, and tests/test_tokenizer.py compares both on text and random ids. Long texts (the
dictionary pipeline's corpora) and anything else a caller asks of a tokenizer go to the full
`tokenizers` one, loaded the first time it is needed.
"""
from __future__ import annotations

import functools
import heapq
import json
import re
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from features.paths import cache_dir

FORMAT = 1  # bump when what is stored changes
LONG_TEXT = 4000  # characters; longer texts are encoded by `tokenizers` (Rust), which is faster once loaded


# Gemma's added tokens are tags ("<eos>", "<table>", "<unused12>"), runs of one whitespace
# character ("\n\n\n") and a literal or two ("[multimodal]"); none can sit inside another kind.
_TAG = r"<[^<>\n\t\[\]]*>"
_LITERAL = r"\[[^<>\n\t\[\]]*\]"
_CANDIDATE = re.compile(f"{_TAG}|{_LITERAL}|\n+|\t+")


def supports(spec: dict) -> bool:
    """Whether a tokenizer.json is one this module reproduces exactly."""
    model = spec.get("model") or {}
    added = [a["content"] for a in spec.get("added_tokens", [])]
    runs = {c: {len(t) for t in added if t and set(t) == {c}} for c in "\n\t"}
    literals = [t for t in added if not re.fullmatch(_TAG, t) and not re.fullmatch(r"\n+|\t+", t)]
    return (model.get("type") == "BPE" and model.get("byte_fallback") is True and not model.get("ignore_merges")
            and model.get("dropout") is None and model.get("continuing_subword_prefix") is None
            and model.get("end_of_word_suffix") is None
            and spec.get("normalizer") == {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}
            and spec.get("pre_tokenizer") in (None, {"type": "Split", "pattern": {"String": " "},
                                                     "behavior": "MergedWithPrevious", "invert": False})
            and spec.get("decoder") == {"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
                {"type": "ByteFallback"}, {"type": "Fuse"}]}
            and all(not a["normalized"] and not a["lstrip"] and not a["rstrip"] and not a["single_word"]
                    for a in spec.get("added_tokens", []))
            # What `_added_matches` assumes: whitespace runs of every length up to the longest, and
            # literals that cannot start or sit inside a tag or a run.
            and all(r == set(range(1, max(r) + 1)) for r in runs.values() if r)
            and all(re.fullmatch(_LITERAL, t) for t in literals))


def _arrays(spec: dict) -> dict[str, np.ndarray]:
    """tokenizer.json -> the flat arrays this module reads (the slow part, done once)."""
    vocab: dict[str, int] = dict(spec["model"]["vocab"])
    for a in spec["added_tokens"]:
        vocab[a["content"]] = a["id"]
    n = max(vocab.values()) + 1
    tokens = [""] * n
    for t, i in vocab.items():
        tokens[i] = t
    blobs = [t.encode("utf-8") for t in tokens]
    offsets = np.zeros(n + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(b) for b in blobs])
    pairs = [m.split(" ", 1) if isinstance(m, str) else m for m in spec["model"]["merges"]]
    left = np.array([vocab[a] for a, _ in pairs], dtype=np.int64)
    right = np.array([vocab[b] for _, b in pairs], dtype=np.int64)
    made = np.array([vocab[a + b] for a, b in pairs], dtype=np.int64)
    keys = left * n + right
    order = np.argsort(keys, kind="stable")
    added = sorted(spec["added_tokens"], key=lambda a: a["id"])
    return {
        "token_bytes": np.frombuffer(b"".join(blobs), dtype=np.uint8).copy(),  # (total,) every token's UTF-8
        "token_offsets": offsets,  # (V + 1,) token i is token_bytes[offsets[i]:offsets[i + 1]]
        "merge_keys": keys[order],  # (M,) left * V + right, sorted
        "merge_ranks": order.astype(np.int64),  # (M,) each key's rank: its line in the merges list
        "merge_ids": made[order],  # (M,) the token the merge makes
        "added_ids": np.array([a["id"] for a in added], dtype=np.int64),  # (A,)
        "added_special": np.array([a["special"] for a in added], dtype=np.bool_),  # (A,)
        "char_ids": np.array(sorted(vocab[t] for t in vocab if len(t) == 1), dtype=np.int64),  # (C,) one-character tokens
        "byte_ids": np.array([vocab[f"<0x{b:02X}>"] for b in range(256)], dtype=np.int64),  # (256,) byte fallback
    }


class Encoding(dict):
    """What calling a tokenizer returns: {"input_ids": ...}, also as an attribute."""

    @property
    def input_ids(self):
        return self["input_ids"]


class LeanTokenizer:
    """A Gemma-style BPE tokenizer read from flat arrays; `encode`/`decode` as transformers'
    fast tokenizer gives them. Other attributes come from that tokenizer, loaded on first use.

    `full`: a function returning the full transformers tokenizer (called at most once)."""

    def __init__(self, arrays: dict[str, np.ndarray], config: dict, full):
        self._bytes, self._offsets = arrays["token_bytes"], arrays["token_offsets"]
        self._keys, self._ranks, self._made = arrays["merge_keys"], arrays["merge_ranks"], arrays["merge_ids"]
        self._n = len(self._offsets) - 1
        self._full = functools.cache(full)
        added = self.convert_ids_to_tokens(arrays["added_ids"].tolist())
        self._added = dict(zip(added, arrays["added_ids"].tolist()))
        self._special_ids = {i for i, s in zip(arrays["added_ids"].tolist(), arrays["added_special"].tolist()) if s}
        self.special_added_ids = sorted(self._special_ids)  # chat/runtime/models.py `special_added_ids`
        self._chars = dict(zip(self.convert_ids_to_tokens(arrays["char_ids"].tolist()), arrays["char_ids"].tolist()))
        self._byte_ids = arrays["byte_ids"].tolist()
        self._byte_of = {i: b for b, i in enumerate(self._byte_ids)}  # <0xNN> token id -> its byte
        self._longest_run = max((len(t) for t in added if t[0] in "\n\t"), default=1)
        for role in ("bos", "eos", "unk", "pad", "mask"):
            token = config.get(f"{role}_token")
            setattr(self, f"{role}_token", token)
            setattr(self, f"{role}_token_id", self._added.get(token))
        self.all_special_ids = [i for i in (self.bos_token_id, self.eos_token_id, self.unk_token_id,
                                            self.pad_token_id, self.mask_token_id) if i is not None]
        self.chat_template = None

    def __len__(self) -> int:
        return self._n

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._full(), name)

    def convert_ids_to_tokens(self, ids):
        if isinstance(ids, int):
            return bytes(self._bytes[self._offsets[ids]:self._offsets[ids + 1]]).decode("utf-8")
        return [self.convert_ids_to_tokens(int(i)) for i in ids]

    def _merge(self, a: int, b: int) -> tuple[int, int] | None:
        """(rank, new id) of merging tokens a and b, or None."""
        key = a * self._n + b
        j = int(np.searchsorted(self._keys, key))
        if j < len(self._keys) and self._keys[j] == key:
            return int(self._ranks[j]), int(self._made[j])
        return None

    def _bpe(self, piece: str) -> list[int]:
        """One piece of text without added tokens -> ids (spaces are "▁")."""
        ids: list[int] = []
        for c in piece:
            i = self._chars.get(c)
            ids.extend([i] if i is not None else [self._byte_ids[b] for b in c.encode("utf-8")])
        n = len(ids)
        nxt, prev, alive = list(range(1, n + 1)), list(range(-1, n - 1)), [True] * n
        heap = []
        for p in range(n - 1):
            m = self._merge(ids[p], ids[p + 1])
            if m:
                heap.append((m[0], p, m[1]))
        heapq.heapify(heap)
        while heap:
            rank, p, new = heapq.heappop(heap)
            q = nxt[p]
            if not alive[p] or q >= n:
                continue
            m = self._merge(ids[p], ids[q])
            if m is None or m[1] != new:
                continue  # an expired entry: a neighbour changed since it was pushed
            ids[p], alive[q] = new, False
            nxt[p] = nxt[q]
            if nxt[p] < n:
                prev[nxt[p]] = p
            if prev[p] >= 0 and (m := self._merge(ids[prev[p]], new)):
                heapq.heappush(heap, (m[0], prev[p], m[1]))
            if nxt[p] < n and (m := self._merge(new, ids[nxt[p]])):
                heapq.heappush(heap, (m[0], p, m[1]))
        return [t for t, a in zip(ids, alive) if a]

    def _added_matches(self, text: str, split_special: bool) -> Iterable[tuple[int, int, int]]:
        """(start, end, id) of each added token in `text`, leftmost-longest as `tokenizers` finds
        them; with `split_special`, special ones are left out (they stay plain text)."""
        for m in _CANDIDATE.finditer(text):
            start, end = m.span()
            step = self._longest_run if text[start] in "\n\t" else end - start
            for a in range(start, end, step):  # a run longer than the longest run token: several
                i = self._added.get(text[a:min(a + step, end)])
                if i is not None and not (split_special and i in self._special_ids):
                    yield a, min(a + step, end), i

    def encode(self, text: str, add_special_tokens: bool = True, split_special_tokens: bool = False) -> list[int]:
        """Text -> ids. `split_special_tokens`: special tokens typed in the text stay plain text."""
        if len(text) > LONG_TEXT:
            return self._full().encode(text, add_special_tokens=add_special_tokens,
                                       split_special_tokens=split_special_tokens)
        ids = [self.bos_token_id] if add_special_tokens and self.bos_token_id is not None else []
        plain = 0
        for start, end, i in self._added_matches(text, split_special_tokens):
            if start > plain:
                ids += self._bpe(text[plain:start].replace(" ", "\u2581"))
            ids.append(i)
            plain = end
        if len(text) > plain:
            ids += self._bpe(text[plain:].replace(" ", "\u2581"))
        return ids

    def __call__(self, text: str | Sequence[str], add_special_tokens: bool = True, **kwargs) -> Encoding:
        if kwargs:  # padding, tensors, ...: the full tokenizer's business
            return self._full()(text, add_special_tokens=add_special_tokens, **kwargs)
        if isinstance(text, str):
            return Encoding(input_ids=self.encode(text, add_special_tokens))
        return Encoding(input_ids=[self.encode(t, add_special_tokens) for t in text])

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        out: list[str] = []
        pending = bytearray()
        for i in ids:
            i = int(i)
            if not 0 <= i < self._n or (skip_special_tokens and i in self._special_ids):
                continue
            if i in self._byte_of:
                pending.append(self._byte_of[i])
                continue
            if pending:
                out.append(_flush(pending))
            out.append(self.convert_ids_to_tokens(i).replace("\u2581", " "))
        if pending:
            out.append(_flush(pending))
        return "".join(out)

    def batch_decode(self, sequences: Iterable[Iterable[int]], skip_special_tokens: bool = False) -> list[str]:
        return [self.decode(s, skip_special_tokens) for s in sequences]


def _flush(pending: bytearray) -> str:
    """A run of byte tokens -> its UTF-8 text, or one U+FFFD per byte when it is not valid UTF-8."""
    try:
        text = pending.decode("utf-8")
    except UnicodeDecodeError:
        text = "\ufffd" * len(pending)
    pending.clear()
    return text


def load(folder: Path, full) -> LeanTokenizer | None:
    """The lean tokenizer of `folder`'s tokenizer.json (its arrays cached on first use), or None
    when that tokenizer is not one it reproduces. `full()` loads the transformers tokenizer."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file, save

    source = folder / "tokenizer.json"
    try:
        stat = source.stat()
        config = json.loads((folder / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return None
    key = f"{FORMAT}-{stat.st_size}-{stat.st_mtime_ns}"
    path = cache_dir() / "tokenizer" / f"{folder.name}-{key}.safetensors"
    try:
        arrays = load_file(str(path))
    except (OSError, SafetensorError, ValueError):
        spec = json.loads(source.read_text(encoding="utf-8"))
        if not supports(spec):
            return None
        arrays = _arrays(spec)
        from features.catalog import _write_atomic

        try:
            _write_atomic(path, save(arrays))
        except OSError:
            pass  # a read-only cache: the next load converts again
    return LeanTokenizer(arrays, config, full)
