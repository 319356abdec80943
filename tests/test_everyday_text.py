"""The everyday text mix: readers for the chat logs, the Brown corpus, Jane Austen's R data and
the model's essays; shares of a source; the sources table; the essay writer's resume."""
from __future__ import annotations

import gzip
import json
import struct
import zlib

import pytest

from features.pipeline import corpus, essays, rdata, sources


# -- R's XDR serialization, written by hand: the lazy-load layout janeaustenr ships -------------
def _int(n: int) -> bytes:
    return struct.pack(">i", n)


def _chars(s: str) -> bytes:
    raw = s.encode()
    return _int(9 | (1 << 15)) + _int(len(raw)) + raw  # CHARSXP, UTF-8


def _strs(values) -> bytes:
    return _int(16) + _int(len(values)) + b"".join(_chars(v) if v is not None else _int(9) + _int(-1) for v in values)


def _ints(values) -> bytes:
    return _int(13) + _int(len(values)) + b"".join(_int(v) for v in values)


def _named_list(items: dict[str, bytes]) -> bytes:
    names = _int(2 | (1 << 10)) + _int(1) + _chars("names") + _strs(list(items)) + _int(254)  # pairlist(names=)
    return _int(19 | (1 << 9)) + _int(len(items)) + b"".join(items.values()) + names


def _serialized(body: bytes) -> bytes:
    return b"X\n" + _int(2) + _int(0x040201) + _int(0x020300) + body


def write_lazyload(folder, objects: dict[str, bytes]):
    blob, index = b"", {}
    for name, body in objects.items():
        data = _serialized(body)
        chunk = _int(len(data)) + zlib.compress(data)
        index[name] = _ints([len(blob), len(chunk)])
        blob += chunk
    (folder / "Rdata.rdb").write_bytes(blob)
    rdx = _named_list({"variables": _named_list(index), "references": _named_list({}),
                       "compressed": _int(10) + _int(1) + _int(1)})
    (folder / "Rdata.rdx").write_bytes(gzip.compress(_serialized(rdx)))
    return folder / "Rdata.rdb"


def test_r_lazyload_database_gives_its_character_vectors(tmp_path):
    rdb = write_lazyload(tmp_path, {"emma": _strs(["EMMA", "", "By Jane Austen", None]),
                                    "counts": _ints([1, 2, 3])})
    assert rdata.lazyload(rdb) == {"emma": ["EMMA", "", "By Jane Austen", None], "counts": [1, 2, 3]}


def test_r_code_is_refused_not_run():
    closure = _serialized(_int(3) + _int(254) + _int(254) + _int(254))  # CLOSXP
    with pytest.raises(rdata.RDataError, match="code"):
        rdata.unserialize(closure)
    with pytest.raises(rdata.RDataError, match="XDR"):
        rdata.unserialize(b"RDX2\n")
    with pytest.raises(rdata.RDataError, match="truncated"):
        rdata.unserialize(_serialized(_int(16) + _int(3)))


def test_austen_novels_are_paragraphs_of_joined_lines(tmp_path):
    folder = tmp_path / "janeaustenr" / "data"
    folder.mkdir(parents=True)
    rdb = write_lazyload(folder, {"persuasion": _strs(["Persuasion", "", "Sir Walter Elliot, of Kellynch",
                                                        "Hall, was a man", "", "who never took up any book"])})
    assert list(corpus.documents(rdb)) == ["Persuasion\n\nSir Walter Elliot, of Kellynch Hall, was a man\n\n"
                                           "who never took up any book"]


def test_chitchat_conversations_are_turns_of_two_people(tmp_path):
    folder = tmp_path / "chitchat_dataset"
    folder.mkdir()
    (folder / "dataset.json").write_text(json.dumps({"c1": {"messages": [
        [{"text": "Hello", "sender": "x"}, {"text": "How are you?", "sender": "x"}],
        [{"text": "good, I had coffee", "sender": "y"}], [], [{"text": "nice", "sender": "x"}]]}}))
    (folder / "__init__.py").write_text("import json  # not text")
    assert list(corpus.documents(folder)) == ["A: Hello How are you?\nB: good, I had coffee\nA: nice"]


def test_brown_files_lose_their_tags(tmp_path):
    (tmp_path / "CONTENTS").write_text("the genres")
    (tmp_path / "README").write_text("not a text")
    (tmp_path / "ca01").write_text(
        "\n\n\tThe/at jury/nn said/vbd ``/`` no/at evidence/nn ''/'' was/bedz found/vbn ./.\n\n\n"
        "\tIt/pps did/dod n't/* end/vb ,/, Atlanta's/np$ mayor/nn said/vbd ./.\n")
    assert list(corpus.documents(tmp_path)) == [
        'The jury said "no evidence" was found.\n\nIt didn\'t end, Atlanta\'s mayor said.']


def test_a_share_keeps_the_same_part_of_a_source(tmp_path):
    text = "\n\n".join(f"paragraph {i} " + "x" * 4000 for i in range(200))
    (tmp_path / "big.txt").write_text(text)
    whole = list(corpus.split_pieces([tmp_path / "big.txt"], heldout=False))
    part = list(corpus.split_pieces([f"{tmp_path / 'big.txt'}@0.25"], heldout=False))
    assert 0.1 * len(whole) < len(part) < 0.45 * len(whole) and set(part) <= set(whole)
    assert part == list(corpus.split_pieces([f"{tmp_path / 'big.txt'}@0.25"], heldout=False))  # always the same
    with pytest.raises(ValueError, match="share"):
        corpus.share(f"{tmp_path}@1.5")
    assert corpus.share("/a/b@c") == ("/a/b@c", 1.0)  # an @ that is not a share stays in the name


def test_the_default_mix_lists_what_is_present(tmp_path, monkeypatch):
    monkeypatch.setenv("STEERCHAT_CACHE", str(tmp_path))
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "essays.jsonl").write_text('{"text": "coffee"}\n')
    mix = sources.default_text()
    assert str(tmp_path / "text" / "essays.jsonl") in mix
    assert all(s.kind in ("everyday", "reference", "religious", "code") and s.licence for s in sources.SOURCES)
    assert "essays" not in [s.name for s in sources.missing()]
    everyday = sum(s.share for s in sources.SOURCES if s.kind == "everyday")
    assert everyday >= 5  # chats, Brown, Austen, essays, fortunes whole; the rest a share


def test_essay_jobs_cover_every_topic_and_genre_and_resume(tiny_lm, tmp_path):
    topics = essays.topics(["coffee", "winter", "coffee"])
    assert len(topics) >= 380 and topics.count("coffee") == 1 and "anger" in topics  # ~430 with the concepts
    jobs = essays.jobs(["coffee", "anger"], rounds=2)
    assert len(jobs) == 2 * 2 * len(essays.GENRES) and [j.round for j in jobs] == sorted(j.round for j in jobs)
    out = tmp_path / "essays.jsonl"
    assert essays.write(tiny_lm, jobs[:3], out, batch=2, max_new_tokens=4) == 3
    first = out.read_text()
    out.write_text(first + '{"key": "cut by an interrupt')  # a line an interruption cut: its job runs again
    assert essays.write(tiny_lm, jobs[:5], out, batch=2, max_new_tokens=4) == 5
    rows = [json.loads(line) for line in out.read_text().splitlines() if line.endswith("}")]
    assert [r["key"] for r in rows] == [j.key for j in jobs[:5]]
    assert all(r["text"].startswith(essays.GENRES[r["genre"]].format(t=r["topic"])) for r in rows)
    assert list(corpus.documents(out))[0] == rows[0]["text"]


def test_essays_drop_markup_and_half_sentences():
    assert essays.clean("<strong>Coffee</strong> is good. It wakes me up. And then") == "Coffee is good. It wakes me up."
    assert essays.clean("short") == "short"
