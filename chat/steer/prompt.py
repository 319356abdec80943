"""Turning a conversation into prompt token ids, and finding where a reply ends.

Two formats:
- the tokenizer's chat template, when it has one (instruction-tuned models);
- otherwise a plain transcript for base models (the embedded Gemma 3 270M has no template):

      A conversation between a User and a helpful, knowledgeable Assistant.

      User: Hello!
      Assistant: Hi, how can I help?
      User: Tell me about bridges.
      Assistant:

  with a stop rule: the reply ends where the model starts the next turn ("\\nUser:"). The
  default "chat" frame puts a few example exchanges (CHAT_EXAMPLES) after the header, and there
  a blank line after the reply's first words ends it too.

A bad assistant turn in the history goes back to the model trimmed (chat/steer/loops.py): a looping
reply up to where it starts repeating; an empty one is left out with the message it answered.

User text is tokenised with special-token parsing off, so typing "<eos>" or "<start_of_turn>"
gives plain text, never control tokens. Replies are cut from generated token ids (whole tokens),
never by splitting decoded text.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from chat.steer.loops import trim

TRANSCRIPT_HEADER = "A conversation between a User and a helpful, knowledgeable Assistant."
# The "chat" frame shows a base model a few answered questions before the conversation, so it
# answers in kind (short, on topic, in its own voice); the user never sees them. The "plain"
# frame is the header alone, as the steering bands and specs were measured.
CHAT_EXAMPLES = (
    ("Hello! Who are you?", "Hi! I'm an assistant. Ask me anything and I'll do my best to help."),
    ("What is the tallest mountain in the world?", "Mount Everest, in the Himalayas."),
    ("Can you give me a tip for sleeping better?",
     "Go to bed at the same time every night, and keep your bedroom dark, quiet and cool."),
    ("Write two lines about the moon.", "Silver lamp above the sea,\nyou light the night for you and me."),
)
FRAMES = ("chat", "plain")
TRANSCRIPT_ROLES = {"user": "User", "assistant": "Assistant", "system": "System"}
TRANSCRIPT_STOPS = ("\nUser:", "\nAssistant:", "\nSystem:")
# In the chat frame a blank line ends the reply too: turns there are one line apart, none of 36
# unsteered replies of the chat benchmark held one, and a steered reply that leaves the
# conversation does it there ("We are in the ocean!\n\n<h2>The word</h2>\n<h2>...").
CHAT_STOPS = TRANSCRIPT_STOPS + ("\n\n",)


class PromptError(ValueError):
    """A conversation that cannot be turned into a prompt (empty message, bad role)."""


@dataclass(frozen=True)
class Prompt:
    ids: tuple[int, ...]  # (T,) prompt token ids, BOS first where the model uses one
    stop_strings: tuple[str, ...]  # the reply ends before the first of these
    dropped_turns: int = 0  # older messages left out to fit the context window
    clipped_tokens: int = 0  # tokens cut from the start of the oldest kept message
    replies: tuple[tuple[int, int], ...] = ()  # [start, end) of earlier assistant turns in ids


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


def sanitise_history(messages: list[dict]) -> list[dict]:
    """Earlier assistant turns as the model should see them: looping ones trimmed, empty ones
    dropped together with the user message they answered."""
    out: list[dict] = []
    for m in messages:
        if m["role"] == "assistant":
            if not m["content"].strip():
                if out and out[-1]["role"] == "user":
                    out.pop()
                continue
            m = {**m, "content": trim(m["content"])}
        out.append(m)
    return out


def _segments(tokenizer, messages: list[dict], frame: str) -> list[tuple[str, bool, str | None]]:
    """The prompt as (text, trusted, role) pieces; message contents are the untrusted ones, with
    their message's role (None for the format's own text)."""
    if getattr(tokenizer, "chat_template", None):
        # Render with placeholders, then splice the contents back in as untrusted text.
        marks = [f"\ue000{i}\ue001" for i in range(len(messages))]
        templated = [{"role": m["role"], "content": mark} for m, mark in zip(messages, marks)]
        rendered = tokenizer.apply_chat_template(templated, tokenize=False, add_generation_prompt=True)
        pieces = re.split("\ue000(\\d+)\ue001", rendered)
        segs = []
        for j, piece in enumerate(pieces):
            m = messages[int(piece)] if j % 2 else None
            segs.append((m["content"], False, m["role"]) if m else (piece, True, None))
        return segs
    bos = tokenizer.bos_token or ""
    segs = [(f"{bos}{TRANSCRIPT_HEADER}\n", True, None)]
    if frame == "chat":
        segs += [("".join(f"\nUser: {q}\nAssistant: {a}" for q, a in CHAT_EXAMPLES), True, None)]
    for m in messages:
        # The space before the content belongs to the content, as in natural "User: Hi".
        segs += [(f"\n{TRANSCRIPT_ROLES[m['role']]}:", True, None), (" " + m["content"].strip(), False, m["role"])]
    segs.append(("\nAssistant:", True, None))
    return segs


def _tokenize(tokenizer, messages: list[dict], frame: str) -> list[int]:
    return _tokenize_with_replies(tokenizer, messages, frame)[0]


def _tokenize_with_replies(tokenizer, messages: list[dict], frame: str) -> tuple[list[int], list[tuple[int, int]]]:
    """(prompt ids, [(start, end)] of each earlier assistant turn's content in them)."""
    ids: list[int] = []
    replies: list[tuple[int, int]] = []
    for text, trusted, role in _segments(tokenizer, messages, frame):
        if text:
            start = len(ids)
            ids += _encode_text(tokenizer, text, trusted)
            if role == "assistant":
                replies.append((start, len(ids)))
    return ids, replies


def build_prompt(tokenizer, messages, max_tokens: int, frame: str = "chat") -> Prompt:
    """Token ids for `messages`, dropping the oldest turns (then clipping the oldest kept
    message from its start) so that at most `max_tokens` remain. `frame` ("chat" or "plain")
    applies to base models' transcripts (the chat frame's examples are left out first when the
    prompt is too long); a chat template is used as it is."""
    if frame not in FRAMES:
        raise PromptError(f"frame must be one of {', '.join(FRAMES)}, got {frame!r}")
    messages = sanitise_history(normalise(messages))
    stops = () if getattr(tokenizer, "chat_template", None) else CHAT_STOPS if frame == "chat" else TRANSCRIPT_STOPS
    system = [m for m in messages[:1] if m["role"] == "system"]
    turns = messages[len(system):]
    dropped = 0
    ids, replies = _tokenize_with_replies(tokenizer, system + turns, frame)
    if len(ids) > max_tokens and frame == "chat":
        # The example exchanges are the first thing to go: the conversation matters more.
        frame = "plain"
        ids, replies = _tokenize_with_replies(tokenizer, system + turns, frame)
    if len(ids) > max_tokens and len(turns) > 1:
        # The fewest oldest turns to drop, by bisection: dropping more never lengthens the prompt,
        # and re-tokenising the history once per dropped turn is quadratic (47 s at 1,000 turns).
        lo, hi = 1, len(turns) - 1  # keeping only the newest turn is the most we drop
        while lo < hi:
            mid = (lo + hi) // 2
            if len(_tokenize(tokenizer, system + turns[mid:], frame)) <= max_tokens:
                hi = mid
            else:
                lo = mid + 1
        turns, dropped = turns[lo:], lo
        ids, replies = _tokenize_with_replies(tokenizer, system + turns, frame)
    clipped = 0
    while len(ids) > max_tokens:
        # One message alone is too long: keep its newest tokens.
        body = _encode_text(tokenizer, turns[-1]["content"], trusted=False)
        overflow = len(ids) - max_tokens
        if overflow >= len(body):
            raise PromptError(f"the prompt format alone needs more than {max_tokens} tokens")
        clipped += overflow + 2  # slack: re-tokenising the clipped text can merge differently
        turns = turns[:-1] + [{"role": "user", "content": tokenizer.decode(body[overflow + 2:])}]
        ids, replies = _tokenize_with_replies(tokenizer, system + turns, frame)
    return Prompt(tuple(ids), stops, dropped, clipped, tuple(replies))


def reply_length(tokenizer, ids: list[int], stop_strings: tuple[str, ...], final: bool) -> int:
    """How many of the generated `ids` belong to the reply.

    Stops before the first special token (EOS, end-of-turn) and before the token where a stop
    string begins; a stop string of whitespace only (a blank line) counts after the reply's
    first visible character. While generating (`final=False`) it also holds back tokens that
    may be the start of a stop string, so streamed text never has to be taken back.
    """
    special = set(tokenizer.all_special_ids)
    n = next((i for i, t in enumerate(ids) if t in special), len(ids))
    if not stop_strings or n == 0:
        return n
    text = tokenizer.decode(ids[:n], skip_special_tokens=True)
    lead = len(text) - len(text.lstrip())
    found = (text.find(s, lead if s.isspace() else 0) for s in stop_strings)
    cut = min((i for i in found if i >= 0), default=-1)
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
