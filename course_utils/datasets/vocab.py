"""One vocabulary for the whole course: tokens ↔ ids, with the special tokens at fixed ids.

The contract, for every model that reads or writes words (translation, captioning, VQA):

* **encode** takes *tokens* (a list of strings, already split) and returns a list of ids;
  ``add_bos`` / ``add_eos`` put ``<bos>`` / ``<eos>`` around them. A bare string is refused
  (it would be read as its characters). An unknown token becomes ``<unk>`` when the vocabulary
  has one (the default, for open text), and is an error naming the token when it has none
  (``unk=False``, for a closed language such as generated captions, where an unknown word is
  a bug).
* **decode** takes ids (a list or a 1-D tensor) and returns tokens; with ``strip`` (the
  default) it drops ``<pad>`` and ``<bos>`` and stops at the first ``<eos>``, so a decoder's
  padded output reads as the sentence it wrote. An id outside the vocabulary is an error.
* Joining tokens into text is the tokenizer's job, not the vocabulary's: ``" ".join`` for
  captions, :func:`course_utils.datasets.translation.detokenize` for French.

Ids ``0, 1, 2`` are always ``<pad> <bos> <eos>``, and ``3`` is ``<unk>`` when there is one; the
other tokens follow in the order given (:meth:`Vocab.build`: most frequent first).

>>> v = Vocab.build([["le", "chat"], ["le", "chien"]])
>>> v.encode(["le", "chat", "zèbre"], add_eos=True), len(v)
([4, 5, 3, 2], 7)
>>> v.decode([1, 4, 6, 2, 0])
['le', 'chien']
>>> closed = Vocab(["a", "red", "circle"], unk=False)
>>> closed.encode(["a", "red", "circle"], add_bos=True, add_eos=True)
[1, 3, 4, 5, 2]
>>> closed.encode(["a", "blue", "circle"])
Traceback (most recent call last):
...
ValueError: tokens contains 'blue', which is not in this vocabulary (it has no <unk>): known tokens are 'a', 'red', 'circle'
"""

from __future__ import annotations

import numbers
from collections import Counter
from collections.abc import Iterable, Sequence

import torch

from course_utils.checks import check_bool, check_positive_int, check_sequence_of_str, describe

__all__ = ["BOS", "EOS", "PAD", "SPECIALS", "UNK", "Vocab"]

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)  # ids 0, 1, 2 (and 3 when the vocabulary has <unk>)


class Vocab:
    """Token ↔ id with ``<pad>`` = 0, ``<bos>`` = 1, ``<eos>`` = 2 and (``unk=True``) ``<unk>`` = 3.

    ``tokens`` are the ordinary tokens, in id order; special tokens among them are skipped.
    """

    PAD, BOS, EOS, UNK = PAD, BOS, EOS, UNK

    def __init__(self, tokens: Sequence[str], unk: bool = True) -> None:
        check_sequence_of_str("tokens", tokens, allow_empty=True)
        check_bool("unk", unk)
        specials = SPECIALS if unk else SPECIALS[:3]
        words = [t for t in tokens if t not in SPECIALS]
        repeated = sorted({t for t in words if words.count(t) > 1}) if len(set(words)) < len(words) else []
        if repeated:
            raise ValueError(f"tokens must be distinct, got {repeated[:5]} more than once")
        empty = [i for i, t in enumerate(words) if not t or t != t.strip()]
        if empty:
            raise ValueError(f"tokens must be non-empty and without surrounding spaces, got "
                             f"{words[empty[0]]!r}")
        self.itos: list[str] = [*specials, *words]
        self.stoi: dict[str, int] = {t: i for i, t in enumerate(self.itos)}
        self.pad, self.bos, self.eos = 0, 1, 2
        self.unk: int | None = 3 if unk else None

    @classmethod
    def build(cls, sentences: Iterable[Sequence[str]], min_freq: int = 1, unk: bool = True) -> Vocab:
        """A vocabulary of every token seen at least ``min_freq`` times, most frequent first
        (ties in alphabetical order, so the same sentences give the same ids on every machine).

        >>> Vocab.build([["b", "a"], ["a"]]).itos
        ['<pad>', '<bos>', '<eos>', '<unk>', 'a', 'b']
        """
        check_positive_int("min_freq", min_freq)
        counts: Counter[str] = Counter()
        for i, sentence in enumerate(sentences):
            check_sequence_of_str(f"sentences[{i}]", sentence, allow_empty=True)
            counts.update(sentence)
        tokens = sorted((t for t, c in counts.items() if c >= min_freq), key=lambda t: (-counts[t], t))
        return cls(tokens, unk=unk)

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: object) -> bool:
        return token in self.stoi

    def __repr__(self) -> str:
        return f"Vocab({len(self)} tokens, specials {self.itos[: 4 if self.unk is not None else 3]})"

    @property
    def specials(self) -> tuple[str, ...]:
        """The special tokens of this vocabulary, in id order."""
        return tuple(self.itos[: 4 if self.unk is not None else 3])

    def encode(self, tokens: Sequence[str], add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Tokens → ids (``[<bos>] ids [<eos>]``); see the module docstring for unknown tokens."""
        check_sequence_of_str("tokens", tokens, allow_empty=True)
        ids = [self.stoi.get(t, -1) for t in tokens]
        if -1 in ids:
            bad = tokens[ids.index(-1)]
            if self.unk is None:
                known = ", ".join(map(repr, self.itos[3:13])) + (", ..." if len(self) > 13 else "")
                raise ValueError(f"tokens contains {bad!r}, which is not in this vocabulary (it has "
                                 f"no <unk>): known tokens are {known}")
            ids = [self.unk if i == -1 else i for i in ids]
        return [self.bos] * add_bos + ids + [self.eos] * add_eos

    def decode(self, ids: Iterable[int] | torch.Tensor, strip: bool = True) -> list[str]:
        """Ids → tokens; with ``strip``, drop ``<pad>``/``<bos>`` and stop at the first ``<eos>``."""
        if isinstance(ids, torch.Tensor):
            if ids.dim() != 1 or ids.is_floating_point() or ids.dtype == torch.bool:
                raise ValueError(f"ids must be a 1-D integer tensor (one sentence; decode a batch row "
                                 f"by row), got {describe(ids)}")
            ids = ids.tolist()
        elif isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
            raise TypeError(f"ids must be a list or a 1-D tensor of token ids, got {describe(ids)}")
        out = []
        for i in ids:
            if isinstance(i, bool) or not isinstance(i, numbers.Integral) or not 0 <= i < len(self.itos):
                raise ValueError(f"ids must be token ids in [0, {len(self.itos)}), got {i!r}")
            if strip and i == self.eos:
                break
            if strip and i in (self.pad, self.bos):
                continue
            out.append(self.itos[int(i)])
        return out
