"""Turning a conversation into prompt token ids, and finding where a reply ends.

Two formats:
- the tokenizer's chat template, when it has one (instruction-tuned models);
- otherwise a plain transcript for base models (the embedded Gemma 3 270M has no template):

      A conversation between a User and a helpful, knowledgeable Assistant.

      User: Hello!
      Assistant: Hi, how can I help?
      User: Tell me about bridges.
      Assistant:

  with a stop rule: the reply ends where the model starts the next turn ("\\nUser:").

User text is tokenised with special-token parsing off, so typing "<eos>" or "<start_of_turn>"
gives plain text, never control tokens. Replies are cut from generated token ids (whole tokens),
never by splitting decoded text.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

TRANSCRIPT_HEADER = "A conversation between a User and a helpful, knowledgeable Assistant."
TRANSCRIPT_ROLES = {"user": "User", "assistant": "Assistant", "system": "System"}
TRANSCRIPT_STOPS = ("\nUser:", "\nAssistant:", "\nSystem:")


class PromptError(ValueError):
    """A conversation that cannot be turned into a prompt (empty message, bad role)."""


@dataclass(frozen=True)
class Prompt:
    ids: tuple[int, ...]  # (T,) prompt token ids, BOS first where the model uses one
    stop_strings: tuple[str, ...]  # the reply ends before the first of these
    dropped_turns: int = 0  # older messages left out to fit the context window
    clipped_tokens: int = 0  # tokens cut from the start of the oldest kept message


def clean_text(text: str) -> str:
    """`text` with lone UTF-16 surrogates (from JSON escapes or undecodable command-line bytes)
    replaced by U+FFFD: tokenizers refuse them. A valid surrogate pair becomes its character."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def message_text(content) -> str:
    """Message content as plain text; Gradio 6 sends a list of blocks [{"type": "text", ...}]."""
    if isinstance(content, str):
        return clean_text(content)
    if isinstance(content, dict):
        return str(content.get("text", ""))
    if isinstance(content, (list, tuple)):
        return "".join(message_text(part) for part in content)
    raise PromptError(f"message content must be text, got {type(content).__name__}")


def normalise(messages) -> list[dict]:
    """A str or [{"role", "content"}] -> validated list of {"role", "content": str}."""
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    if not isinstance(messages, (list, tuple)):
        raise PromptError(f"a conversation is a string or a list of {{role, content}} messages, "
                          f"got {type(messages).__name__}")
    out = []
    for m in messages:
        role = m.get("role") if isinstance(m, dict) else None
        if role not in TRANSCRIPT_ROLES:
            raise PromptError(f"message role must be user, assistant or system, got {role!r}")
        out.append({"role": role, "content": message_text(m.get("content", ""))})
    if not out or out[-1]["role"] != "user":
        raise PromptError("the conversation must end with a user message")
    if not out[-1]["content"].strip():
        raise PromptError("the message is empty")
    return out


def _encode_text(tokenizer, text: str, trusted: bool) -> list[int]:
    # Untrusted text never parses special-token strings ("<eos>" stays four characters).
    return tokenizer.encode(text, add_special_tokens=False, split_special_tokens=not trusted)


def _segments(tokenizer, messages: list[dict]) -> list[tuple[str, bool]]:
    """The prompt as (text, trusted) pieces; message contents are the untrusted ones."""
    if getattr(tokenizer, "chat_template", None):
        # Render with placeholders, then splice the contents back in as untrusted text.
        marks = [f"\ue000{i}\ue001" for i in range(len(messages))]
        templated = [{"role": m["role"], "content": mark} for m, mark in zip(messages, marks)]
        rendered = tokenizer.apply_chat_template(templated, tokenize=False, add_generation_prompt=True)
        pieces = re.split("\ue000(\\d+)\ue001", rendered)
        segs = []
        for j, piece in enumerate(pieces):
            segs.append((messages[int(piece)]["content"], False) if j % 2 else (piece, True))
        return segs
    bos = tokenizer.bos_token or ""
    segs = [(f"{bos}{TRANSCRIPT_HEADER}\n", True)]
    for m in messages:
        # The space before the content belongs to the content, as in natural "User: Hi".
        segs += [(f"\n{TRANSCRIPT_ROLES[m['role']]}:", True), (" " + m["content"].strip(), False)]
    segs.append(("\nAssistant:", True))
    return segs


def _tokenize(tokenizer, messages: list[dict]) -> list[int]:
    ids: list[int] = []
    for text, trusted in _segments(tokenizer, messages):
        if text:
            ids += _encode_text(tokenizer, text, trusted)
    return ids


def build_prompt(tokenizer, messages, max_tokens: int) -> Prompt:
    """Token ids for `messages`, dropping the oldest turns (then clipping the oldest kept
    message from its start) so that at most `max_tokens` remain."""
    messages = normalise(messages)
    stops = () if getattr(tokenizer, "chat_template", None) else TRANSCRIPT_STOPS
    system = [m for m in messages[:1] if m["role"] == "system"]
    turns = messages[len(system):]
    dropped = 0
    ids = _tokenize(tokenizer, system + turns)
    if len(ids) > max_tokens and len(turns) > 1:
        # The fewest oldest turns to drop, by bisection: dropping more never lengthens the prompt,
        # and re-tokenising the history once per dropped turn is quadratic (47 s at 1,000 turns).
        lo, hi = 1, len(turns) - 1  # keeping only the newest turn is the most we drop
        while lo < hi:
            mid = (lo + hi) // 2
            if len(_tokenize(tokenizer, system + turns[mid:])) <= max_tokens:
                hi = mid
            else:
                lo = mid + 1
        turns, dropped = turns[lo:], lo
        ids = _tokenize(tokenizer, system + turns)
    clipped = 0
    while len(ids) > max_tokens:
        # One message alone is too long: keep its newest tokens.
        body = _encode_text(tokenizer, turns[-1]["content"], trusted=False)
        overflow = len(ids) - max_tokens
        if overflow >= len(body):
            raise PromptError(f"the prompt format alone needs more than {max_tokens} tokens")
        clipped += overflow + 2  # slack: re-tokenising the clipped text can merge differently
        turns = turns[:-1] + [{"role": "user", "content": tokenizer.decode(body[overflow + 2:])}]
        ids = _tokenize(tokenizer, system + turns)
    return Prompt(tuple(ids), stops, dropped, clipped)


def reply_length(tokenizer, ids: list[int], stop_strings: tuple[str, ...], final: bool) -> int:
    """How many of the generated `ids` belong to the reply.

    Stops before the first special token (EOS, end-of-turn) and before the token where a stop
    string begins. While generating (`final=False`) it also holds back tokens that may be the
    start of a stop string, so streamed text never has to be taken back.
    """
    special = set(tokenizer.all_special_ids)
    n = next((i for i, t in enumerate(ids) if t in special), len(ids))
    if not stop_strings or n == 0:
        return n
    text = tokenizer.decode(ids[:n], skip_special_tokens=True)
    cut = min((i for i in (text.find(s) for s in stop_strings) if i >= 0), default=-1)
    if cut < 0 and not final:
        # The earliest suffix of the text that is a prefix of some stop string.
        cut = next(
            (i for i in range(max(0, len(text) - max(map(len, stop_strings))), len(text))
             if any(s.startswith(text[i:]) for s in stop_strings)),
            -1,
        )
    if cut < 0:
        return n
    while n > 0 and len(tokenizer.decode(ids[:n], skip_special_tokens=True)) > cut:
        n -= 1
    return n
