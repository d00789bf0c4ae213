"""The one Vocab: fixed special ids, encode/decode contract, open (<unk>) and closed vocabularies."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from course_utils.datasets.vocab import BOS, EOS, PAD, UNK, Vocab


def test_special_ids_are_fixed_with_and_without_unk():
    open_v, closed = Vocab(["x", "y"]), Vocab(["x", "y"], unk=False)
    assert open_v.itos[:4] == [PAD, BOS, EOS, UNK] and (open_v.pad, open_v.bos, open_v.eos, open_v.unk) == (0, 1, 2, 3)
    assert closed.itos[:3] == [PAD, BOS, EOS] and closed.unk is None and closed.stoi["x"] == 3
    assert open_v.stoi["x"] == 4 and len(open_v) == 6 and len(closed) == 5
    assert open_v.specials == (PAD, BOS, EOS, UNK) and closed.specials == (PAD, BOS, EOS)


def test_build_orders_by_frequency_then_alphabet():
    v = Vocab.build([["b", "c", "a"], ["c", "a"], ["c"]])
    assert v.itos[4:] == ["c", "a", "b"]
    assert Vocab.build([["b", "a"], ["a", "b", "z"]], min_freq=2).itos[4:] == ["a", "b"]


def test_encode_adds_bos_eos_and_maps_unknown_to_unk():
    v = Vocab(["le", "chat"])
    assert v.encode(["le", "chat"]) == [4, 5]
    assert v.encode(["le", "zèbre"], add_bos=True, add_eos=True) == [1, 4, 3, 2]
    assert v.encode([]) == [] and v.encode([], add_eos=True) == [2]


def test_closed_vocabulary_names_the_unknown_token():
    v = Vocab(["a", "red", "circle"], unk=False)
    with pytest.raises(ValueError, match="'blue', which is not in this vocabulary"):
        v.encode(["a", "blue", "circle"])


def test_decode_strips_specials_and_stops_at_eos():
    v = Vocab(["l'", "homme", "dort", "."])
    ids = v.encode(["l'", "homme", "dort", "."], add_bos=True, add_eos=True) + [v.pad, v.pad]
    assert v.decode(ids) == ["l'", "homme", "dort", "."]
    assert v.decode(ids, strip=False) == [BOS, "l'", "homme", "dort", ".", EOS, PAD, PAD]
    assert v.decode(torch.tensor(ids)) == v.decode(ids)
    assert v.decode(np.array(ids)) == v.decode(ids)  # numpy ints are ids too
    assert v.decode([v.eos, 4]) == []  # nothing after the first <eos>


def test_round_trip_for_every_token():
    tokens = ["qu'", "il", "«", "Tom", "»", "aujourd'", "hui", ",", "?", "3,5"]
    v = Vocab.build([tokens])
    assert v.decode(v.encode(tokens, add_bos=True, add_eos=True)) == tokens


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda v: v.encode("le chat"), TypeError, "tokens must be a list of str"),
        (lambda v: v.encode(["le", 3]), TypeError, r"tokens\[1\] must be a str"),
        (lambda v: v.decode([4, 99]), ValueError, r"ids must be token ids in \[0, 6\), got 99"),
        (lambda v: v.decode([-1]), ValueError, "got -1"),
        (lambda v: v.decode([4.0]), ValueError, "got 4.0"),
        (lambda v: v.decode(torch.zeros(2, 3, dtype=torch.long)), ValueError, "1-D integer tensor"),
        (lambda v: v.decode(torch.zeros(3)), ValueError, "1-D integer tensor"),
        (lambda v: v.decode("4 5"), TypeError, "ids must be a list"),
        (lambda v: v.decode(None), TypeError, "ids must be a list"),
    ],
)
def test_bad_input_names_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call(Vocab(["le", "chat"]))


@pytest.mark.parametrize(
    "tokens, kwargs, error, message",
    [
        ("abc", {}, TypeError, "tokens must be a list of str"),
        (["a", "a"], {}, ValueError, "tokens must be distinct"),
        (["a", ""], {}, ValueError, "non-empty"),
        (["a", " b"], {}, ValueError, "surrounding spaces"),
        (["a"], {"unk": "no"}, TypeError, "unk must be True or False"),
    ],
)
def test_bad_construction(tokens, kwargs, error, message):
    with pytest.raises(error, match=message):
        Vocab(tokens, **kwargs)


def test_build_rejects_a_string_sentence_and_bad_min_freq():
    with pytest.raises(TypeError, match=r"sentences\[0\] must be a list of str"):
        Vocab.build(["le chat"])
    with pytest.raises(ValueError, match="min_freq must be a positive int"):
        Vocab.build([["a"]], min_freq=0)


def test_special_tokens_in_the_list_are_not_repeated():
    v = Vocab([PAD, "a", EOS, "b"])
    assert v.itos == [PAD, BOS, EOS, UNK, "a", "b"] and UNK in v and "c" not in v
