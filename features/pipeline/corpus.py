"""Training text: read documents from local files, split train / held-out, pack into sequences.

Readers know the offline sources we use (Debian text packages): plain text (also .gz), HTML,
GNU info, WordNet data files (one "word: gloss" line per concept), fortune files and the King
James Bible (bible-kjv-text ships it compressed; its `bible` program prints it). A source may
also be a Hugging Face dataset, `hf://datasets/owner/name[/folder]`, streamed file by file
(`hub_documents`) where the hub is reachable. Every
document is cut into pieces of about `PIECE_CHARS` at paragraph breaks; each piece goes to
train or held-out by a hash of its text, so the split is stable and never mixes.

Packed sequences start with BOS and hold no other special token: Gemma never saw a BOS
mid-text, and a dictionary must not learn from one.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import html.parser
import re
import subprocess
from pathlib import Path
from typing import Iterable, Iterator, Union

PIECE_CHARS = 4000
# 4% leaves ~367k held-out tokens of the default corpus, enough to tell a rare latent from a dead
# one (at 2%, 173k tokens, a latent firing once in 40k tokens had a 1-in-75 chance of looking dead).
HELDOUT_PERCENT = 4
HUB = "hf://"
HUB_DATA = (".jsonl", ".jsonl.gz", ".json", ".txt", ".txt.gz", ".parquet")
Source = Union[Path, str]  # a local file or folder, or a hub dataset (a str starting with HUB)
SHARE = "@"  # "PATH@0.3": keep 30% of a source's pieces (chosen by a hash, so always the same ones)


def share(source: Source) -> tuple[Source, float]:
    """"PATH@F" -> (PATH, F); a plain source -> (source, 1.0)."""
    text = str(source)
    head, sep, tail = text.rpartition(SHARE)
    if not sep:
        return source, 1.0
    try:
        fraction = float(tail)
    except ValueError:
        return source, 1.0
    if not 0 < fraction <= 1:
        raise ValueError(f"{text}: the share after {SHARE} must be in (0, 1]")
    return (head if is_hub(head) else Path(head)), fraction


def is_hub(source: Source) -> bool:
    return isinstance(source, str) and source.startswith(HUB)


def hub_documents(ref: str, column: str = "text", fs=None) -> Iterator[str]:
    """The documents of a Hugging Face dataset, `hf://datasets/owner/name[/folder]`: its data
    files in sorted order, each read as a stream over HTTP (huggingface_hub's HfFileSystem), so
    a harvest of N tokens reads about N tokens' worth, never the whole dataset. JSON lines and
    JSON arrays give their `column` field, .txt files their text, Parquet files their `column`
    (needs pyarrow). `fs`: any fsspec filesystem holding the same layout (the tests' local one)."""
    if fs is None:
        from huggingface_hub import HfFileSystem  # late: only hub sources need it

        fs = HfFileSystem()
    root = ref.removeprefix(HUB).rstrip("/")
    try:
        files = sorted(f for f in fs.find(root) if f.endswith(HUB_DATA))
    except Exception as e:  # offline, a missing or gated repo: what the hub said, in one line
        raise ValueError(f"{ref}: cannot list the dataset's files ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if not files:
        raise ValueError(f"{ref}: no data files ({', '.join(HUB_DATA)}) in the dataset")
    for name in files:
        with fs.open(name, "rb") as raw:
            stream = gzip.open(raw) if name.endswith(".gz") else raw
            if name.endswith(".parquet"):
                yield from _parquet_texts(stream, column, name)
                continue
            text = io.TextIOWrapper(stream, encoding="utf-8", errors="replace")
            if name.endswith((".txt", ".txt.gz")):
                yield text.read()
            elif name.endswith(".json"):
                rows = json.load(text)
                yield from _texts(rows if isinstance(rows, list) else [], column)
            else:
                yield from _texts((json.loads(line) for line in text if line.strip()), column)


def _texts(rows: Iterable, column: str) -> Iterator[str]:
    for row in rows:
        value = row.get(column) if isinstance(row, dict) else None
        if isinstance(value, str) and value.strip():
            yield value


def _parquet_texts(stream, column: str, name: str) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError(f"{name}: Parquet needs pyarrow (pip install pyarrow)") from None
    for batch in pq.ParquetFile(stream).iter_batches(columns=[column]):
        yield from (t for t in batch.column(0).to_pylist() if isinstance(t, str) and t.strip())


def _read_text(path: Path) -> str:
    raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    return raw.decode("utf-8", errors="replace")


class _HTMLText(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.parts: list[str] = []
        self.skip = 0

    def handle_starttag(self, tag, attrs):
        self.skip += tag in ("script", "style")
        if tag in ("p", "div", "br", "li", "pre", "h1", "h2", "h3", "tr"):
            self.parts.append("\n\n" if tag != "br" else "\n")

    def handle_endtag(self, tag):
        self.skip -= tag in ("script", "style") and self.skip > 0

    def handle_data(self, data):
        if not self.skip:
            self.parts.append(data)


def html_text(source: str) -> str:
    parser = _HTMLText()
    parser.feed(source)
    return re.sub(r"\n{3,}", "\n\n", "".join(parser.parts))


def wordnet_glosses(source: str) -> Iterator[str]:
    """WordNet data.* lines -> "word, synonym: gloss; examples" (license header skipped)."""
    for line in source.splitlines():
        if line.startswith(" ") or "|" not in line:
            continue
        head, gloss = line.split("|", 1)
        fields = head.split()
        n_words = int(fields[3], 16)
        words = [fields[4 + 2 * i].replace("_", " ") for i in range(n_words)]
        yield f"{', '.join(words)}: {gloss.strip()}"


def kjv_chapters(data_file: Path) -> Iterator[str]:
    """The King James Bible, one document a chapter, one verse a line, references dropped."""
    out = subprocess.run(["bible", "-f", "-p", str(data_file.parent), "Gen1:1-Rev22:21"],
                         capture_output=True, text=True, check=True, timeout=120).stdout
    return verse_chapters(out.splitlines())


def verse_chapters(lines: Iterable[str]) -> Iterator[str]:
    """`bible -f` lines ("Ge1:1 In the beginning...") -> one document a chapter."""
    chapter, verses = None, []
    for line in lines:
        ref, _, verse = line.partition(" ")
        here = ref.split(":")[0]
        if here != chapter and verses:
            yield "\n".join(verses)
            verses = []
        chapter = here
        verses.append(verse)
    if verses:
        yield "\n".join(verses)


def chitchat_conversations(source: str) -> Iterator[str]:
    """The chitchat dataset's JSON (conversation id -> {"messages": [[turn's messages], ...]})
    -> one document a conversation, one line a turn, the two people as "A:" and "B:"."""
    for conversation in json.loads(source).values():
        lines, speakers = [], {}
        for turn in conversation.get("messages") or []:
            if not turn:
                continue
            who = speakers.setdefault(turn[0].get("sender"), "AB"[len(speakers) % 2])
            text = " ".join(m.get("text", "").strip() for m in turn if m.get("text", "").strip())
            if text:
                lines.append(f"{who}: {text}")
        if lines:
            yield "\n".join(lines)


BROWN_FILE = re.compile(r"c[a-r]\d\d")
_BROWN_QUOTES = {"``": '"', "''": '"'}


def brown_text(source: str) -> str:
    """A Brown corpus file in Form C ("The/at jury/nn said/vbd ./.", sentences on tab-indented
    lines, paragraphs a blank line apart) -> plain text: tags stripped, punctuation re-attached."""
    paragraphs = []
    for block in re.split(r"\n\s*\n", source):
        words = [_BROWN_QUOTES.get(w, w) for w in (t.rsplit("/", 1)[0] for t in block.split()) if w]
        if not words:
            continue
        text, quote_open = "", False
        for w in words:
            if w == '"':
                text += (" " if text and not quote_open else "") + w
                quote_open = not quote_open
            elif re.fullmatch(r"[.,;:!?)\]]|'s|n't|'", w) or (text.endswith('"') and quote_open) or text.endswith(("(", "[")):
                text += w
            else:
                text += (" " if text else "") + w
        paragraphs.append(text)
    return "\n\n".join(paragraphs)


def austen_novels(rdb: Path) -> Iterator[str]:
    """Jane Austen's six novels from r-cran-janeaustenr's R data, one document a novel
    (the package keeps one printed line an element; blank elements end paragraphs)."""
    from features.pipeline.rdata import lazyload

    for lines in lazyload(rdb).values():
        if isinstance(lines, list) and all(isinstance(x, (str, type(None))) for x in lines):
            paragraphs = "\n".join(x or "" for x in lines).split("\n\n")
            yield "\n\n".join(" ".join(p.split()) for p in paragraphs if p.strip())


def jsonl_texts(source: str, column: str = "text") -> Iterator[str]:
    """JSON lines -> their `column` field (the model's essays, a hub dataset's rows)."""
    rows = []
    for line in source.splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue  # a line cut by an interrupted writer
    return _texts(rows, column)


def _is_prose(path: Path) -> bool:
    """Files of a folder worth reading. In WordNet only the data.* files hold glosses; its index
    files, sense-key lists and Tcl sources would teach the dictionary sense keys, not concepts."""
    if path.name.endswith((".dat", ".u8", ".js", ".css", ".png", ".pdf")):
        return False
    if "wordnet" in path.parts:
        return path.parent.name == "wordnet" and path.name.startswith("data.")
    if (path.parent / "CONTENTS").exists() and any(BROWN_FILE.fullmatch(p.name) for p in path.parent.glob("ca0*")):
        return BROWN_FILE.fullmatch(path.name) is not None  # a Brown corpus folder: its texts only
    if path.parent.name == "chitchat_dataset":
        return path.name == "dataset.json"
    return True


def documents(path: Source) -> Iterator[str]:
    """Documents in a file or, recursively and in sorted order, a folder; or a hub dataset."""
    if is_hub(path):
        yield from hub_documents(path)
        return
    path = Path(path)
    if path.is_dir():
        for child in sorted(path.rglob("*")):
            if child.is_file() and _is_prose(child):
                yield from documents(child)
        return
    if path.name == "bible.data":
        yield from kjv_chapters(path)
        return
    if path.name == "Rdata.rdb" and "janeaustenr" in path.parts:
        yield from austen_novels(path)
        return
    text = _read_text(path)
    name = path.name.removesuffix(".gz")
    if path.parent.name == "chitchat_dataset" and name == "dataset.json":
        yield from chitchat_conversations(text)
    elif BROWN_FILE.fullmatch(name) and (path.parent / "CONTENTS").exists():
        yield brown_text(text)
    elif name.endswith(".jsonl"):
        yield from jsonl_texts(text)
    elif path.parent.name == "wordnet" and name.startswith("data."):
        glosses = list(wordnet_glosses(text))
        for i in range(0, len(glosses), 20):  # 20 concepts a document
            yield "\n".join(glosses[i:i + 20])
    elif name.endswith((".html", ".htm")):
        yield html_text(text)
    elif name.endswith(".info"):
        yield from (node for node in text.split("\x1f") if node.strip())
    elif "\n%\n" in text:  # fortune files: quotes separated by lines holding a single %
        yield from (q for q in text.split("\n%\n") if q.strip())
    else:
        yield text


def pieces(text: str, size: int = PIECE_CHARS) -> Iterator[str]:
    """Cut text at paragraph breaks into pieces of about `size` characters."""
    buf = ""
    for para in re.split(r"\n\s*\n", text):
        if buf and len(buf) + len(para) > size:
            yield buf
            buf = ""
        buf = f"{buf}\n\n{para}" if buf else para
    if buf.strip():
        yield buf


def is_heldout(piece: str, percent: int = HELDOUT_PERCENT) -> bool:
    return int(hashlib.sha1(piece.encode()).hexdigest()[:8], 16) % 100 < percent


def split_pieces(paths: Iterable[Source], heldout: bool) -> Iterator[str]:
    """The train (heldout=False) or held-out (True) pieces of all documents under `paths`
    (of a "PATH@F" source, the share F of them)."""
    for source in paths:
        path, fraction = share(source)
        for doc in documents(path):
            for piece in pieces(doc):
                if is_heldout(piece) == heldout and (fraction == 1 or _kept(piece, fraction)):
                    yield piece


def _kept(piece: str, fraction: float) -> bool:
    """A hash other than the held-out split's, so a share samples train and held-out alike."""
    return int(hashlib.sha1(piece.encode()).hexdigest()[8:16], 16) % 10_000 < fraction * 10_000


def mixed_pieces(paths: Iterable[Source], heldout: bool, seed: int = 0) -> Iterator[str]:
    """Like `split_pieces`, but drawing from all sources at once, each in proportion to the text
    it has left, so any stretch of the stream (a harvest shard, a training batch) has the same
    mix and all sources run out together. (Weighing by file size instead let sources that pack
    small, such as gzip and the Bible's own format, run out early and left the last quarter of a
    harvest to the Python docs alone.) Holds the text in memory: ~50 MB for the default corpus.
    A single source is streamed instead (a hub dataset need not fit in memory); mixed with
    others, it is read whole, since mixing needs each source's size."""
    paths = list(paths)
    if len(paths) == 1:
        yield from split_pieces(paths, heldout)
        return
    sources = [list(split_pieces([p], heldout)) for p in paths]
    left = [sum(map(len, pieces)) for pieces in sources]  # characters not yet drawn
    taken = [0] * len(sources)
    rng = random.Random(seed)
    while any(left):
        i = rng.choices(range(len(sources)), left)[0]
        piece = sources[i][taken[i]]
        taken[i] += 1
        left[i] -= len(piece)
        yield piece


def pack(tokenizer, texts: Iterable[str], seq_len: int) -> Iterator[list[int]]:
    """Token sequences of exactly `seq_len`: BOS, then text; texts joined by a blank line."""
    sep = tokenizer.encode("\n\n", add_special_tokens=False)
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    body = seq_len - len(bos)
    buf: list[int] = []
    for text in texts:
        buf += tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True) + sep
        while len(buf) >= body:
            yield bos + buf[:body]
            buf = buf[body:]
