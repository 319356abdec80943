"""`python -m chat bench --chat`: does the chat answer? Loops, empty replies, factual answers,
reply length and decode speed, with given generation settings, on the embedded model.

Every reply is generated as the app generates it (Engine.reply on the whole conversation so
far). Conversations feed the model's own replies back as history, so one looping reply that
poisons the rest shows up here as it does in the app.

- loops: chat/steer/loops.py's rule (a three-word sequence three times, or most of them repeated);
- factual: the reply contains one of the accepted answers (case-insensitive, whole words);
- repeats in conversations: a reply identical to an earlier reply of the same conversation.
"""
from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field

from chat.steer.settings import GenerationSettings
from chat.steer.loops import bad_reply

# (question, accepted answers)
FACTUAL = (
    ("What is the capital of France?", ("paris",)),
    ("What is the capital of Japan?", ("tokyo",)),
    ("How many days are there in a week?", ("seven", "7")),
    ("What colour is the sky on a clear day?", ("blue",)),
    ("What is the largest planet in our solar system?", ("jupiter",)),
    ("Who wrote Romeo and Juliet?", ("shakespeare",)),
    ("At what temperature in Celsius does water freeze?", ("0", "zero")),
    ("How many legs does a spider have?", ("eight", "8")),
    ("What is the chemical symbol for gold?", ("au",)),
    ("Which is the largest ocean on Earth?", ("pacific",)),
    ("What language do people speak in Spain?", ("spanish",)),
    ("What is two plus two?", ("four", "4")),
    ("Which animal is known as the king of the jungle?", ("lion",)),
    ("What do bees make?", ("honey",)),
)

OPEN = (
    "Hi! What can you tell me about the ocean?",
    "Can you write me a short poem about cats?",
    "Tell me about your weekend.",
    "What should I cook for dinner tonight?",
    "Give me three tips for learning a new language.",
    "Why is exercise good for you?",
    "Describe a rainy day in the city.",
    "What's your favourite book, and why?",
    "How do I make a good cup of tea?",
    "Tell me a short story about a dragon.",
    "What do you think about music?",
    "Explain what a computer does.",
    "How can I be more productive at work?",
    "What is friendship?",
    "Write a haiku about winter.",
    "What are some fun things to do at the weekend?",
    "Tell me a joke.",
    "How does a bicycle work?",
    "What makes a good teacher?",
    "I feel a bit sad today.",
    "What's the best way to save money?",
    "Recommend a place to visit in Europe.",
)

CONVERSATIONS = (
    ("Hi there!", "What can you tell me about the ocean?", "What is the capital of France?",
     "Can you write me a short poem about cats?", "Thanks! What should I do this weekend?"),
    ("I'm planning a trip to Italy.", "What food should I try there?", "Which city has the best museums?",
     "How long should I stay?"),
    ("Can you help me with my garden?", "What vegetables grow well in spring?",
     "How often should I water tomatoes?", "What about pests?"),
    ("I want to learn to cook.", "What is an easy first recipe?", "What do I need to buy?",
     "How long does it take?"),
)


def answered(text: str, answers: tuple[str, ...]) -> bool:
    low = text.lower()
    return any(re.search(rf"(?<!\w){re.escape(a)}(?!\w)", low) for a in answers)


@dataclass
class ChatResults:
    settings: dict
    replies: int = 0
    loops: int = 0
    empty: int = 0
    factual: int = 0
    factual_correct: int = 0
    conversations: int = 0
    conversation_repeats: int = 0  # replies identical to an earlier one in the same conversation
    tokens: int = 0
    decode_s: float = 0.0
    samples: list[dict] = field(default_factory=list)  # {"kind", "prompt", "reply", "bad"}

    def summary(self) -> dict:
        n = max(self.replies, 1)
        return {"replies": self.replies, "loop_rate": self.loops / n, "empty_rate": self.empty / n,
                "factual_correct": self.factual_correct, "factual": self.factual,
                "factual_rate": self.factual_correct / max(self.factual, 1),
                "conversations": self.conversations, "conversation_repeats": self.conversation_repeats,
                "mean_reply_tokens": self.tokens / n, "tok_per_s": self.tokens / self.decode_s if self.decode_s else 0.0}


def run(engine, settings: GenerationSettings, progress=None) -> ChatResults:
    say = progress or (lambda msg: None)
    res = ChatResults(settings=asdict(settings))
    knobs = {k: v for k, v in asdict(settings).items() if k != "timeout"}

    def ask(kind: str, conversation: list[dict]) -> str:
        start = time.perf_counter()
        reply = engine.reply(conversation, **knobs)
        res.decode_s += time.perf_counter() - start
        res.replies += 1
        res.tokens += len(reply.token_ids)
        bad = bad_reply(reply.text)
        res.loops += bad == "loops"
        res.empty += bad == "empty"
        res.samples.append({"kind": kind, "prompt": conversation[-1]["content"], "reply": reply.text, "bad": bad})
        say(f"[{kind}] {conversation[-1]['content']!r} -> {reply.text!r}" + (f"  ({bad})" if bad else ""))
        return reply.text

    for question, answers in FACTUAL:
        text = ask("factual", [{"role": "user", "content": question}])
        res.factual += 1
        res.factual_correct += answered(text, answers)
        res.samples[-1]["correct"] = answered(text, answers)
    for prompt in OPEN:
        ask("open", [{"role": "user", "content": prompt}])
    for turns in CONVERSATIONS:
        res.conversations += 1
        history: list[dict] = []
        said: set[str] = set()
        for turn in turns:
            history.append({"role": "user", "content": turn})
            text = ask("conversation", history)
            key = text.strip().lower()
            res.conversation_repeats += bool(key) and key in said
            said.add(key)
            history.append({"role": "assistant", "content": text})
    return res


def table(summary: dict, settings: dict) -> str:
    knobs = ", ".join(f"{k} {settings[k]}" for k in ("frame", "temperature", "repetition_penalty", "no_repeat_ngram"))
    return "\n".join([
        "| measure | value | target |", "|---|---|---|",
        f"| replies | {summary['replies']} | |",
        f"| loop rate | {summary['loop_rate']:.1%} | 0 |",
        f"| empty rate | {summary['empty_rate']:.1%} | 0 |",
        f"| factual answers | {summary['factual_correct']}/{summary['factual']} ({summary['factual_rate']:.0%}) | >= 70% |",
        f"| whole replies repeated in conversations | {summary['conversation_repeats']} | 0 |",
        f"| mean reply length | {summary['mean_reply_tokens']:.1f} tokens | |",
        f"| speed (whole replies, prompt included) | {summary['tok_per_s']:.1f} tok/s | |",
        f"\nSettings: {knobs}.",
    ])
