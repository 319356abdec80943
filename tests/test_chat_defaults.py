"""The chat's defaults: loop detection and trimming, the transcript frames, repetition handling
restricted to the reply, and that a spec keeps its own (plain greedy) settings."""
from __future__ import annotations

import pytest
import torch

from chat.measure.check import parse_spec
from chat.steer.generate import _NoRepeatNGram, _ReplyRepetitionPenalty
from chat.steer.settings import GenerationSettings
from chat.steer.loops import bad_reply, loops, trim
from chat.steer.prompt import CHAT_EXAMPLES, build_prompt, sanitise_history

MARINE = "Well, I'm a marine biologist. I'm a marine biologist. I'm a marine biologist. I'm a marine"


def test_loops_by_the_issue_rule():
    assert loops(MARINE)
    assert loops("the cat sat on the mat and the cat sat on the mat")  # most trigrams repeat
    assert not loops("The capital of France is Paris.")
    assert not loops("I like the sea. I like the sky.")  # one trigram twice is not a loop
    assert not loops("")


def test_trim_keeps_the_first_instance_only():
    assert trim(MARINE) == "Well, I'm a marine biologist."
    assert trim("Paris is lovely.") == "Paris is lovely."
    assert bad_reply("   ") == "empty" and bad_reply(MARINE) == "loops" and bad_reply("Hello!") is None


def test_history_is_sanitised():
    history = [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": MARINE},
        {"role": "user", "content": "And?"}, {"role": "assistant", "content": "  "},
        {"role": "user", "content": "Capital of France?"},
    ]
    assert sanitise_history(history) == [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Well, I'm a marine biologist."},
        {"role": "user", "content": "Capital of France?"},
    ]


def test_frames(tiny_lm):
    tok = tiny_lm.tokenizer
    chat = tok.decode(build_prompt(tok, "Hello", 2000).ids)
    plain = tok.decode(build_prompt(tok, "Hello", 2000, frame="plain").ids)
    question, answer = CHAT_EXAMPLES[0]
    assert f"\nUser: {question}\nAssistant: {answer}" in chat and question not in plain
    assert chat.endswith("\nUser: Hello\nAssistant:") and plain.endswith("\nUser: Hello\nAssistant:")
    looping = build_prompt(tok, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": MARINE},
                                 {"role": "user", "content": "Go on"}], 2000)
    assert tok.decode(looping.ids).count("marine biologist") == 1


def test_penalty_and_ngram_guard_see_the_reply_only():
    scores = torch.tensor([[4.0, 4.0, -4.0, 1.0]])
    ids = torch.tensor([[0, 2, 1]])  # prompt [0], reply [2, 1]
    out = _ReplyRepetitionPenalty(prompt_len=1, penalty=2.0)(ids, scores)
    assert out.tolist() == [[4.0, 2.0, -8.0, 1.0]] and scores.tolist() == [[4.0, 4.0, -4.0, 1.0]]  # pure
    guard = _NoRepeatNGram(prompt_len=1, n=2)
    assert guard(torch.tensor([[3, 1, 3]]), torch.zeros(1, 4))[0].tolist() == [0, 0, 0, 0]  # 3 1 is in the prompt
    assert guard(torch.tensor([[0, 3, 1, 3]]), torch.zeros(1, 4))[0, 1] == float("-inf")
    with pytest.raises(ValueError):
        _ReplyRepetitionPenalty(0, 0.5)


def test_settings_validate_and_greedy_is_plain():
    g = GenerationSettings.greedy(max_new_tokens=5)
    assert (g.temperature, g.repetition_penalty, g.no_repeat_ngram, g.frame) == (0.0, 1.0, 0, "plain")
    for bad in ({"frame": "fancy"}, {"no_repeat_ngram": 1}, {"repetition_penalty": 0.9}):
        with pytest.raises(ValueError):
            GenerationSettings(**bad)


def test_defaults_do_not_loop_where_greedy_does(tiny_lm):
    """On the tiny model greedy decoding repeats itself; the chat defaults' guard never repeats
    a token n-gram of the reply."""
    from app_helpers import tiny_engine

    engine = tiny_engine(tiny_lm)
    d = GenerationSettings()
    reply = engine.reply("Hello there", max_new_tokens=48)
    ids, n = reply.token_ids, d.no_repeat_ngram
    grams = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
    assert n and len(grams) == len(set(grams))


def test_specs_keep_plain_greedy_unless_they_say_otherwise():
    base = {"case": [{"feature": 1, "strength": 2.0, "terms": ["x"], "prompts": ["Hi"]}]}
    case = parse_spec(base).cases[0]
    assert case.settings(0) == {"seed": 0, "temperature": 0.0, "max_new_tokens": 32, "repetition_penalty": 1.0,
                                "no_repeat_ngram": 0, "frame": "plain"}
    stated = parse_spec(base | {"frame": "chat", "repetition_penalty": 1.3}).cases[0]
    assert stated.frame == "chat" and stated.repetition_penalty == 1.3
    with pytest.raises(ValueError, match="frame must be one of"):
        parse_spec(base | {"frame": "odd"})


@pytest.mark.parametrize("text,why", [
    ("SATOVENTIUM… FRIBTERONEUISEATOB… ARKENTOLIUM", "capitalised non-words"),
    ("I'm a\u2063\u2063", "invisible characters"),
    ("- - – - - –", "mostly punctuation"),
    ("The USA and NASA sent a rocket to the moon.", None),
    ("I'm a", None),
])
def test_garbled_replies_are_told_apart(text, why):
    from chat.steer.loops import garbled

    assert garbled(text) == why


def test_a_garbled_steered_reply_carries_a_warning(tiny_lm, monkeypatch):
    """Steering far past a feature's range can break a reply; the reply then says so."""
    import chat.engine
    from app_helpers import tiny_engine
    from chat.steer.generate import Reply

    engine = tiny_engine(tiny_lm)
    real = chat.engine.generate

    def garbling(*args, **kwargs) -> Reply:
        reply = real(*args, **kwargs)
        reply.text = "- - – - -"
        return reply

    monkeypatch.setattr(chat.engine, "generate", garbling)
    steered = engine.reply("Hi", steer={1: 2.0}, max_new_tokens=2)
    assert any("garbled (mostly punctuation)" in w for w in steered.warnings)
    assert not any("garbled" in w for w in engine.reply("Hi", max_new_tokens=2).warnings)  # unsteered: not ours to say
