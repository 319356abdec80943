"""Where steerchat keeps files: the one place that reads $STEERCHAT_CACHE and $STEERCHAT_HOME.

- `cache_dir()`: what can be rebuilt (the converted model, its int8 form, compiled kernels,
  Neuronpedia exports, pipeline work and text). $STEERCHAT_CACHE, else
  $XDG_CACHE_HOME/steerchat, else ~/.cache/steerchat.
- `home_dir()`: what the user made (feature renames, measured concepts). $STEERCHAT_HOME, else
  ~/.config/steerchat. On a Hugging Face Space, point it at persistent storage (/data/steerchat).

Nothing here creates a folder: callers create what they write, when they write it.

    >>> import os; os.environ["STEERCHAT_CACHE"] = "/tmp/sc"; str(cache_dir() / "models")
    '/tmp/sc/models'
"""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    if os.environ.get("STEERCHAT_CACHE"):
        return Path(os.environ["STEERCHAT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "steerchat"


def home_dir() -> Path:
    return Path(os.environ.get("STEERCHAT_HOME") or Path.home() / ".config" / "steerchat")
