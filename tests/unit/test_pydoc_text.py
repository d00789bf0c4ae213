"""course_utils.datasets.pydoc_text: Python's help topics as a corpus, its split and tokenizers."""

from __future__ import annotations

import pytest
import torch

from course_utils.datasets import pydoc_text
from course_utils.datasets.pydoc_text import (
    CharTokenizer,
    corpus_text,
    fingerprint,
    load_topics,
    random_windows,
    sequential_windows,
    split_topics,
    train_bpe_tokenizer,
)


def test_topics_ship_with_python():
    topics = load_topics()
    assert len(topics) > 50
    assert sum(map(len, topics.values())) > 300_000
    assert list(topics) == sorted(topics)
    ok, what = pydoc_text.available()
    assert ok and "topics" in what


def test_split_is_by_topic_disjoint_complete_and_stable():
    topics = load_topics()
    train, valid = split_topics(topics)
    assert set(train).isdisjoint(valid)
    assert sorted(train + valid) == sorted(topics)
    assert 0.03 < sum(len(topics[n]) for n in valid) / sum(map(len, topics.values())) < 0.2
    # the decision for a topic depends on its name only: dropping other topics does not move it
    some = sorted(topics)[::3]
    train2, valid2 = split_topics(some)
    assert set(valid2) == set(valid) & set(some)
    assert split_topics(reversed(list(topics))) == (train, valid)


def test_corpus_splits_hold_the_topics_text():
    topics = load_topics()
    _, valid = split_topics(topics)
    text = corpus_text("valid")
    assert all(topics[n] in text for n in valid)
    assert topics[valid[0]] not in corpus_text("train")
    assert len(corpus_text("all")) >= sum(map(len, topics.values()))


@pytest.mark.parametrize("bad, error, fragment", [
    (0.0, ValueError, "valid_fraction"), (1.0, ValueError, "valid_fraction"),
    ("0.1", TypeError, "valid_fraction"),
])
def test_split_rejects_bad_fractions(bad, error, fragment):
    with pytest.raises(error, match=fragment):
        split_topics(load_topics(), bad)


def test_split_rejects_a_single_string_and_empty_splits():
    with pytest.raises(TypeError, match="single str"):
        split_topics("assert")
    with pytest.raises(ValueError, match="empty split"):
        split_topics(["assert"])
    with pytest.raises(ValueError, match="split must be one of"):
        corpus_text("test")


def test_char_tokenizer_round_trip_and_errors():
    text = corpus_text("all")
    tok = CharTokenizer(text)
    assert tok.vocab_size == len(set(text))
    sample = corpus_text("valid")[:5000]
    assert tok.decode(tok.encode(sample)) == sample
    assert tok.decode(torch.tensor(tok.encode("for x in y"))) == "for x in y"
    with pytest.raises(ValueError, match="outside the vocabulary.*'€'"):
        tok.encode("price: 5€")
    with pytest.raises(ValueError, match=r"ids\[1\] must be a token id in \[0, "):
        tok.decode([0, tok.vocab_size])
    with pytest.raises(TypeError, match="ids must be a list of ints"):
        tok.decode("abc")
    with pytest.raises(ValueError, match="1-D"):
        tok.decode(torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="non-empty"):
        CharTokenizer("")


def test_bpe_round_trips_the_validation_text_exactly():
    tok = train_bpe_tokenizer([corpus_text("train")], vocab_size=400)
    valid = corpus_text("valid")
    ids = tok.encode(valid)
    assert tok.decode(ids) == valid  # whitespace, newlines and indentation included
    assert len(ids) < 0.6 * len(valid)
    assert max(ids) < tok.vocab_size
    with pytest.raises(TypeError, match="single str"):
        train_bpe_tokenizer(corpus_text("train"))


def test_random_windows_are_shifted_targets_and_seeded():
    data = torch.arange(1000)
    x, y = random_windows(data, 16, 8, torch.Generator().manual_seed(3))
    assert x.shape == y.shape == (8, 16)
    assert torch.equal(y, x + 1)
    x2, _ = random_windows(data, 16, 8, torch.Generator().manual_seed(3))
    assert torch.equal(x, x2)
    assert int(y.max()) <= 999


def test_sequential_windows_cover_the_text_once():
    data = torch.arange(103)
    batches = list(sequential_windows(data, 10, 4))
    xs = torch.cat([x for x, _ in batches]).flatten()
    ys = torch.cat([y for _, y in batches]).flatten()
    assert torch.equal(xs, torch.arange(100)) and torch.equal(ys, torch.arange(1, 101))


@pytest.mark.parametrize("call, error, fragment", [
    (lambda: random_windows(torch.arange(5), 8, 2), ValueError, "at least block_size \\+ 1 = 9"),
    (lambda: random_windows(torch.zeros(50), 8, 2), TypeError, "integer tensor"),
    (lambda: random_windows(torch.arange(50).view(5, 10), 4, 2), ValueError, "1 dims"),
    (lambda: random_windows(torch.arange(50), 0, 2), ValueError, "block_size"),
    (lambda: list(sequential_windows(torch.arange(50), 4, 0)), ValueError, "batch_size"),
    (lambda: fingerprint(3), TypeError, "text must be a str"),
])
def test_bad_inputs_get_clear_errors(call, error, fragment):
    with pytest.raises(error, match=fragment):
        call()


def test_fingerprint_names_the_text():
    assert fingerprint("abc") != fingerprint("abd")
    assert "Python 3." in fingerprint("abc")
