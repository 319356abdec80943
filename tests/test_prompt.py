"""Prompt formatting, the stop rule and context truncation."""
from __future__ import annotations

import pytest

from chat.steer.prompt import CHAT_STOPS, TRANSCRIPT_STOPS, PromptError, build_prompt, reply_length


@pytest.fixture(scope="module")
def tok(tiny_lm):
    return tiny_lm.tokenizer


def test_transcript_for_base_models(tok):
    p = build_prompt(tok, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                           {"role": "user", "content": [{"type": "text", "text": "How are you?"}]}], 500)
    text = tok.decode(p.ids)
    assert p.ids[0] == tok.bos_token_id
    assert text.endswith("\nUser: Hi\nAssistant: Hello!\nUser: How are you?\nAssistant:")
    assert p.stop_strings == CHAT_STOPS and p.dropped_turns == 0
    assert build_prompt(tok, "Hi", 500, frame="plain").stop_strings == TRANSCRIPT_STOPS  # as specs were measured


def test_typed_special_tokens_stay_text(tok):
    p = build_prompt(tok, "please <eos><bos><pad> stop", 500)
    specials = set(tok.all_special_ids)
    assert [i for i in p.ids if i in specials] == [tok.bos_token_id]  # only the real BOS
    assert "<eos><bos><pad>" in tok.decode(p.ids)


def test_chat_template_splices_untrusted_content(tiny_lm):
    from copy import deepcopy

    tok = deepcopy(tiny_lm.tokenizer)
    tok.chat_template = (
        "{{ bos_token }}{% for m in messages %}<eos>{{ m['role'] }}\n{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<eos>model\n{% endif %}"
    )
    p = build_prompt(tok, "hi <eos> there", 500)
    # Template markup gives real control tokens; the user's "<eos>" stays text.
    assert p.ids.count(tok.eos_token_id) == 2
    assert p.stop_strings == ()
    assert "hi <eos> there" in tok.decode(p.ids)


@pytest.mark.parametrize("messages,match", [
    ("", "empty"), ("   \n", "empty"), ([], "end with a user"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "end with a user"),
    ([{"role": "wizard", "content": "a"}], "role"),
    ([{"role": "user", "content": 42}], "must be text"),
])
def test_bad_conversations(tok, messages, match):
    with pytest.raises(PromptError, match=match):
        build_prompt(tok, messages, 500)


def test_long_history_keeps_newest_turns(tok):
    history = []
    for i in range(30):
        history += [{"role": "user", "content": f"question {i} about bridges and dogs"},
                    {"role": "assistant", "content": f"answer {i} about rivers and cats"}]
    history.append({"role": "user", "content": "final question"})
    p = build_prompt(tok, history, 120)
    text = tok.decode(p.ids)
    assert len(p.ids) <= 120 and p.dropped_turns > 0
    assert text.rstrip().endswith("User: final question\nAssistant:")
    assert "question 0 " not in text and "answer 29" in text


def test_one_huge_message_is_clipped_from_the_start(tok):
    p = build_prompt(tok, "start " + "word " * 2000 + "the end", 100)
    assert len(p.ids) <= 100 and p.clipped_tokens > 0
    assert tok.decode(p.ids).endswith("the end\nAssistant:")
    assert tok.decode(p.ids).startswith(tok.bos_token + "A conversation")


def test_reply_length_cuts_whole_tokens(tok):
    reply = tok.encode(" Sure, here it is.", add_special_tokens=False)
    rest = tok.encode("\nUser: and more", add_special_tokens=False)
    ids = reply + rest
    assert reply_length(tok, ids, TRANSCRIPT_STOPS, final=True) == len(reply)
    assert reply_length(tok, reply + [tok.eos_token_id] + reply, TRANSCRIPT_STOPS, final=True) == len(reply)
    # While streaming, a trailing "\nUs" may be the start of "\nUser:", so it is held back.
    partial = reply + tok.encode("\nUs", add_special_tokens=False)
    assert reply_length(tok, partial, TRANSCRIPT_STOPS, final=False) == len(reply)
    assert reply_length(tok, partial, TRANSCRIPT_STOPS, final=True) == len(partial)
    assert reply_length(tok, reply, (), final=True) == len(reply)


def test_a_blank_line_after_the_first_words_ends_a_chat_reply(tok):
    """A steered reply that leaves the conversation does it after a blank line; one that opens
    with blank lines has not started yet."""
    reply = tok.encode(" We are in the ocean!", add_special_tokens=False)
    junk = tok.encode("\n\n<h2>The word</h2>", add_special_tokens=False)
    assert reply_length(tok, reply + junk, CHAT_STOPS, final=True) == len(reply)
    assert reply_length(tok, reply + junk, TRANSCRIPT_STOPS, final=True) == len(reply + junk)
    opening = tok.encode("\n\n", add_special_tokens=False)
    assert reply_length(tok, opening + reply, CHAT_STOPS, final=True) == len(opening + reply)
    two_lines = tok.encode(" Silver lamp above the sea,\nyou light the night.", add_special_tokens=False)
    assert reply_length(tok, two_lines, CHAT_STOPS, final=True) == len(two_lines)  # one newline is not a blank line
    # The generation loop's stopping criterion follows the same rule.
    import torch

    from chat.steer.generate import _StopStrings

    prompt = tok.encode("User: Hi\nAssistant:")
    stop = _StopStrings(tok, len(prompt), CHAT_STOPS)
    assert stop(torch.tensor([prompt + reply + junk]), None).item()
    assert not stop(torch.tensor([prompt + opening]), None).item()
    assert not stop(torch.tensor([prompt + two_lines]), None).item()
