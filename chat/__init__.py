"""steerchat: chat with an open LLM while steering it by the named features of a sparse dictionary.

Python API: `load()` returns an `Engine` with `search`, `reply`, `stream`, `encode` (chat/engine.py).
Nothing heavy is imported until `load` is called.
"""
from chat.steer.settings import GenerationSettings


def load(*args, **kwargs):
    from chat.engine import load as _load

    return _load(*args, **kwargs)


load.__doc__ = "See chat.engine.load."
__all__ = ["load", "GenerationSettings"]
