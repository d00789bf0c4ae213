"""Text that ships with Python: the English help topics in ``pydoc_data.topics``.

``help("assert")`` in a Python shell prints a page of the language reference. Those pages live
in the standard-library module ``pydoc_data.topics`` as a dict ``{topic name: text}`` — about
465,000 characters of English prose and code examples in 79 topics (Python 3.11; other versions
differ slightly). Every Python install has them, so a language model can be trained on real
text with no download. Licence: the PSF License Agreement (the Python documentation).

* :func:`load_topics` — the dict, sorted by topic name;
* :func:`split_topics` — a deterministic train/validation split **by topic** (a topic is either
  wholly in training or wholly held out, so the validation text is text the model never saw);
* :func:`corpus_text` — one split as one string;
* :class:`CharTokenizer` — one id per character (the first model of notebook 07);
* :func:`train_bpe_tokenizer` — the course's byte-pair encoding (Hugging Face ``tokenizers``),
  trained on the training split only, as an option;
* :func:`random_windows` and :func:`sequential_windows` — batches of ``(x, y)`` with ``y`` the
  text shifted by one character: the next-token targets.

``python -m course_utils.doctor`` calls :func:`available`.
"""

from __future__ import annotations

import hashlib
import platform
from collections.abc import Iterable, Iterator, Sequence

import torch

from course_utils.checks import (
    check_positive_int,
    check_real,
    check_str,
    check_tensor,
    check_token_ids,
    describe,
)

__all__ = [
    "CharTokenizer",
    "available",
    "corpus_text",
    "fingerprint",
    "load_topics",
    "random_windows",
    "sequential_windows",
    "split_topics",
    "train_bpe_tokenizer",
]

NOTEBOOKS = ("07_gpt_from_scratch",)
FIX = (
    "pydoc_data is part of Python's standard library; a Python built without it (some minimal "
    "distributions strip it) cannot run notebook 07: install a full Python (python.org, conda, "
    "or your system's python3-full / python3-doc package)"
)
SEPARATOR = "\n\n"  # between two topics in corpus_text


def available() -> tuple[bool, str]:
    """``(True, what)`` when the help topics are importable, else ``(False, how to fix it)``."""
    try:
        topics = load_topics()
    except ImportError:
        return False, FIX
    chars = sum(len(t) for t in topics.values())
    return True, f"pydoc_data.topics: {len(topics)} topics, {chars:,} characters (Python {platform.python_version()})"


def load_topics() -> dict[str, str]:
    """``{topic: text}`` from ``pydoc_data.topics``, sorted by topic name.

    >>> topics = load_topics()
    >>> topics["assert"].splitlines()[0]
    'The "assert" statement'
    """
    from pydoc_data.topics import topics  # imported here: a stripped Python lacks it

    return {name: topics[name] for name in sorted(topics)}


def _bucket(name: str) -> float:
    """A number in [0, 1) fixed by the topic's name alone (the same on every machine)."""
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_topics(names: Iterable[str], valid_fraction: float = 0.1) -> tuple[list[str], list[str]]:
    """Split topic names into ``(train, valid)``, deterministically, by a hash of each name.

    A topic is held out when the SHA-256 of its name, read as a number in [0, 1), is below
    ``valid_fraction``. The decision depends on the name only, so it is the same on every
    machine and does not move when a Python version adds or removes other topics.

    >>> train, valid = split_topics(load_topics())
    >>> [name in valid for name in ("class", "for", "assert")]     # the same on every machine
    [True, True, False]
    >>> set(train) & set(valid)
    set()
    """
    check_real("valid_fraction", valid_fraction, 0.0, 1.0, low_open=True, high_open=True)
    if isinstance(names, str):
        raise TypeError(f"names must be an iterable of topic names, got a single str {names!r}")
    names = sorted(names)
    for i, name in enumerate(names):
        check_str(f"names[{i}]", name)
    valid = [n for n in names if _bucket(n) < valid_fraction]
    train = [n for n in names if _bucket(n) >= valid_fraction]
    if not train or not valid:
        raise ValueError(
            f"valid_fraction={valid_fraction} leaves an empty split for these {len(names)} topics "
            f"({len(train)} train, {len(valid)} valid): choose a fraction nearer 0.5"
        )
    return train, valid


def corpus_text(split: str = "train", valid_fraction: float = 0.1) -> str:
    """The text of one split (``"train"``, ``"valid"`` or ``"all"``): its topics joined by a blank line.

    >>> train, valid = corpus_text("train"), corpus_text("valid")
    >>> len(valid) / (len(train) + len(valid)) < 0.2
    True
    """
    if split not in ("train", "valid", "all"):
        raise ValueError(f"split must be one of 'train', 'valid', 'all', got {describe(split)}")
    topics = load_topics()
    if split == "all":
        names = list(topics)
    else:
        train, valid = split_topics(topics, valid_fraction)
        names = train if split == "train" else valid
    return SEPARATOR.join(topics[n] for n in names)


def fingerprint(text: str) -> str:
    """Python version, length and the start of the SHA-256 of ``text``: says which text a result came from.

    Results quoted by the course come from one Python version's help topics; a learner on
    another version trains on slightly different text and can see it here.

    >>> fingerprint("abc").split(", ")[1:]
    ['3 characters', 'sha256 ba7816bf8f01']
    """
    check_str("text", text)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
    return f"Python {platform.python_version()}, {len(text):,} characters, sha256 {digest}"


# ---------------------------------------------------------------------------------------------
# Tokenizers
# ---------------------------------------------------------------------------------------------


class CharTokenizer:
    """One id per character: ``encode("ab") -> [i_a, i_b]``, ``decode`` the inverse.

    The vocabulary is the sorted set of characters of the text it is built from (build it from
    the whole corpus, so that the validation text holds no character the model cannot output).
    Encoding a character outside the vocabulary raises a ``ValueError`` that names it.

    >>> tok = CharTokenizer("hello world")
    >>> tok.vocab_size, tok.encode("hello")
    (8, [3, 2, 4, 4, 5])
    >>> tok.decode(tok.encode("world"))
    'world'
    >>> tok.encode("hi!")
    Traceback (most recent call last):
    ...
    ValueError: text holds 2 characters outside the vocabulary of 8: 'i', '!'
    """

    def __init__(self, text: str) -> None:
        check_str("text", text, allow_empty=False)
        self.chars = sorted(set(text))
        self.stoi = {c: i for i, c in enumerate(self.chars)}

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"

    def encode(self, text: str) -> list[int]:
        check_str("text", text)
        unknown = [c for c in dict.fromkeys(text) if c not in self.stoi]
        if unknown:
            shown = ", ".join(repr(c) for c in unknown[:10])
            raise ValueError(
                f"text holds {len(unknown)} characters outside the vocabulary of "
                f"{self.vocab_size}: {shown}"
            )
        return [self.stoi[c] for c in text]

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        ids = _as_id_list("ids", ids, self.vocab_size)
        return "".join(self.chars[i] for i in ids)


class BPETokenizer:
    """The course's byte-pair encoding (Hugging Face ``tokenizers``) behind the same two methods.

    Build it with :func:`train_bpe_tokenizer`; ``encode(text) -> list[int]``,
    ``decode(ids) -> str``, ``vocab_size``.
    """

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size})"

    def encode(self, text: str) -> list[int]:
        check_str("text", text)
        return self.tokenizer.encode(text).ids

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        return self.tokenizer.decode(_as_id_list("ids", ids, self.vocab_size), skip_special_tokens=False)


def train_bpe_tokenizer(texts: Sequence[str], vocab_size: int = 1000) -> BPETokenizer:
    """The course's BPE (``course_utils.datasets.translation.train_bpe``) trained on ``texts``.

    Train it on the training topics only. Whitespace, newlines and indentation survive a round
    trip, as they must for a language model of documentation.

    >>> tok = train_bpe_tokenizer([corpus_text("train")], vocab_size=500)
    >>> text = corpus_text("valid")[:200]
    >>> tok.decode(tok.encode(text)) == text
    True
    >>> len(tok.encode(text)) < len(text) / 2          # fewer tokens than characters
    True
    """
    from course_utils.datasets.translation import train_bpe

    check_positive_int("vocab_size", vocab_size)
    if isinstance(texts, str):
        raise TypeError(f"texts must be a list of str, got a single str {texts[:40]!r}...: wrap it in a list")
    return BPETokenizer(train_bpe(texts, vocab_size=vocab_size))


def _as_id_list(name: str, ids: Sequence[int] | torch.Tensor, vocab_size: int) -> list[int]:
    if isinstance(ids, torch.Tensor):
        check_token_ids(name, ids, vocab_size)
        if ids.dim() > 1:
            raise ValueError(f"{name} must be one sequence (a 1-D tensor), got {describe(ids)}")
        return ids.tolist()
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence):
        raise TypeError(f"{name} must be a list of ints or a 1-D tensor, got {describe(ids)}")
    out = []
    for i, x in enumerate(ids):
        if isinstance(x, bool) or not isinstance(x, int):
            raise TypeError(f"{name}[{i}] must be an int, got {describe(x)}")
        if not 0 <= x < vocab_size:
            raise ValueError(f"{name}[{i}] must be a token id in [0, {vocab_size}), got {x}")
        out.append(x)
    return out


# ---------------------------------------------------------------------------------------------
# Batches of next-token targets
# ---------------------------------------------------------------------------------------------


def _check_data(data: torch.Tensor, block_size: int) -> None:
    check_tensor("data", data, dims=1)
    if data.is_floating_point() or data.is_complex() or data.dtype == torch.bool:
        raise TypeError(f"data must be a 1-D integer tensor of token ids, got {describe(data)}")
    check_positive_int("block_size", block_size)
    if data.numel() < block_size + 1:
        raise ValueError(
            f"data must hold at least block_size + 1 = {block_size + 1} tokens (inputs and their "
            f"shifted targets), got {data.numel()}"
        )


def random_windows(
    data: torch.Tensor, block_size: int, batch_size: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_size`` windows at random offsets: ``x (B, T)`` and the targets ``y = x`` shifted by one.

    ``y[b, t] = data[start_b + t + 1]``: the token that follows ``x[b, t]`` (as nanoGPT's
    ``get_batch``). Pass a seeded ``generator`` for the same batches on every run.

    >>> data = torch.arange(100)
    >>> x, y = random_windows(data, block_size=8, batch_size=2, generator=torch.Generator().manual_seed(0))
    >>> x.shape, torch.equal(y, x + 1)
    (torch.Size([2, 8]), True)
    """
    _check_data(data, block_size)
    check_positive_int("batch_size", batch_size)
    starts = torch.randint(data.numel() - block_size, (batch_size,), generator=generator)
    offsets = torch.arange(block_size)
    x = data[starts[:, None] + offsets]  # (B, T)
    y = data[starts[:, None] + offsets + 1]  # (B, T): the next token at every position
    return x, y


def sequential_windows(
    data: torch.Tensor, block_size: int, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Every non-overlapping window of ``data`` once, in order, in batches: for a validation loss
    over the whole held-out text (the last partial window is dropped).

    >>> batches = list(sequential_windows(torch.arange(21), block_size=4, batch_size=3))
    >>> [x.shape[0] for x, _ in batches], batches[0][0][1].tolist(), batches[0][1][1].tolist()
    ([3, 2], [4, 5, 6, 7], [5, 6, 7, 8])
    """
    _check_data(data, block_size)
    check_positive_int("batch_size", batch_size)
    n = (data.numel() - 1) // block_size  # windows whose targets exist
    x_all = data[: n * block_size].view(n, block_size)
    y_all = data[1 : n * block_size + 1].view(n, block_size)
    for i in range(0, n, batch_size):
        yield x_all[i : i + batch_size], y_all[i : i + batch_size]
