"""The chat's decoding settings: one frozen value, importable without torch or transformers (the
CLI builds its parser from these defaults before it loads anything heavy)."""
from __future__ import annotations

import math
from dataclasses import dataclass

from chat.steer.prompt import FRAMES

MAX_NEW_TOKENS = 2048


@dataclass(frozen=True)
class GenerationSettings:
    """Decoding knobs that travel together; the defaults are the chat's (app, /generate, CLI and
    Python API alike). temperature 0 = greedy, and any temperature is reproducible for a given
    seed. `GenerationSettings.greedy()` is plain greedy decoding in the plain transcript, which
    steering specs, `chat check`, calibration and benchmarks state and keep using.

    repetition_penalty looks at the reply's own tokens only, no_repeat_ngram also at the
    conversation's earlier replies: the rest of the prompt holds words an answer must repeat
    ("the capital of France is ...").
    """

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    # Measured with `python -m chat bench --chat` (docs/chat-benchmark.md): plain greedy loops on
    # 9% of replies and repeats whole replies in conversations; these settings, on none.
    repetition_penalty: float = 1.2  # CTRL-style, on tokens the reply already holds; 1 = off
    no_repeat_ngram: int = 4  # never repeat a token 4-gram of this or an earlier reply; 0 = off
    frame: str = "chat"  # base-model transcript: "chat" (with example exchanges) or "plain" (chat/steer/prompt.py)
    timeout: float = 300.0  # seconds a stream waits for the next token

    @classmethod
    def greedy(cls, **overrides) -> "GenerationSettings":
        """Plain greedy decoding in the plain transcript: what the steering bands were measured with."""
        return cls(**{"temperature": 0.0, "repetition_penalty": 1.0, "no_repeat_ngram": 0, "frame": "plain",
                      **overrides})

    def __post_init__(self) -> None:
        def bad(msg: str):
            raise ValueError(msg)

        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int):
            bad(f"max_new_tokens must be an integer, got {self.max_new_tokens!r}")
        if not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS:
            bad(f"max_new_tokens must be between 1 and {MAX_NEW_TOKENS}, got {self.max_new_tokens}")
        for name, lo, hi in (("temperature", 0.0, 10.0), ("top_p", 1e-6, 1.0), ("repetition_penalty", 1.0, 10.0)):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and lo <= v <= hi):
                bad(f"{name} must be a number between {lo:g} and {hi:g}, got {v!r}")
        if isinstance(self.no_repeat_ngram, bool) or not isinstance(self.no_repeat_ngram, int) \
                or not (self.no_repeat_ngram == 0 or 2 <= self.no_repeat_ngram <= 16):
            bad(f"no_repeat_ngram must be 0 (off) or an integer between 2 and 16, got {self.no_repeat_ngram!r}")
        if self.frame not in FRAMES:
            bad(f"frame must be one of {', '.join(FRAMES)}, got {self.frame!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**64:
            bad(f"seed must be an integer between 0 and 2**64-1, got {self.seed!r}")
        if not self.timeout > 0:
            bad(f"timeout must be positive, got {self.timeout!r}")
