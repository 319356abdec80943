"""The topic-reply corpus (features/pipeline/topics.py): which words, what each document holds,
and a run that goes on where an interrupted one stopped."""
from __future__ import annotations

import pytest

from chat.engine import Engine
from features.catalog import Catalog, Feature
from features.dictionary import Dictionary
from features.lexicon import default
from features.pipeline.topics import QUESTIONS, done_words, questions, topic_words, vocabulary_words, write_corpus


@pytest.fixture
def engine(tiny_lm):
    catalog = Catalog(64, {i: Feature(i, f"f{i}", 4.0, 0.01) for i in range(64)})
    return Engine(tiny_lm, Dictionary.random(32, 64, seed=1, hook_layer=1), catalog, 1, "test")


def test_topic_words_are_common_nouns_of_one_token():
    lex = default()
    words = topic_words(lex, {"coffee", "anger", "wine", "quickly", "eat", "happy", "the", "Paris", "ox"})
    assert sorted(words) == ["anger", "coffee", "wine"]  # not an adverb, verb, adjective, function word, name, 2 letters
    assert topic_words(lex, {"coffee", "anger", "wine"}) == words  # a fixed order


def test_vocabulary_words_are_word_start_tokens(tiny_lm):
    words = vocabulary_words(tiny_lm.tokenizer)
    assert words and all(w.isalpha() for w in words)


def test_each_word_gets_one_question_in_turn():
    asked = list(questions(["rain", "coffee", "wine", "anger", "fear", "snow"]))
    assert [q for _, q in asked[:2]] == [QUESTIONS[0].format("rain"), QUESTIONS[1].format("coffee")]
    assert asked[5] == ("snow", QUESTIONS[0].format("snow"))


def test_corpus_is_appended_per_batch_and_resumes(engine, tmp_path):
    out = tmp_path / "topics.txt"
    assert write_corpus(engine, ["rain", "coffee", "wine"], out, batch=2, max_new_tokens=4) == 3
    text = out.read_text()
    assert text.count("User: ") == 3 and text.count("\nAssistant:") == 3
    assert done_words(out) == {"rain", "coffee", "wine"}
    # Interrupted runs go on: only the new word is asked about.
    assert write_corpus(engine, ["rain", "coffee", "wine", "anger"], out, batch=2, max_new_tokens=4) == 4
    assert out.read_text().startswith(text) and out.read_text().count("User: ") == 4
