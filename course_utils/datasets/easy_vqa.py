"""easy-VQA (Victor Zhou, 2020, MIT licence): a real, externally made VQA dataset, offline.

The pip package ``easy-vqa`` (a dependency of the course) ships the whole dataset inside its
wheel: 4,000 training and 1,000 test images (64×64 RGB PNG, one shape per image: circle,
rectangle or triangle, in one of eight colours, on a light background) with 38,575 / 9,673
questions and 13 answers, about 74 % of the questions yes/no. This module reads it from the
installed package's data folder; nothing is downloaded.

The published split has no validation set: :func:`load_easy_vqa` keeps every tenth training
image (image id divisible by 10) and its questions apart as ``"valid"``, so that tuning never
sees the test set and no image is in two splits.

Four question kinds, from the question's words:

* ``what shape`` — "what shape is in the image?", "what is the blue shape?";
* ``what colour`` — "what color is the shape?", "what is the color of the circle?";
* ``yes/no shape`` — "is there a triangle?", "does the image not contain a circle?";
* ``yes/no colour`` — "is there a red shape?", "is no gray shape present?".

>>> data = load_easy_vqa("test")                                   # doctest: +SKIP
>>> data.images.shape, len(data), len(data.answer_names)           # doctest: +SKIP
(torch.Size([1000, 3, 64, 64]), 9673, 13)
"""

from __future__ import annotations

import importlib.util
import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from ..checks import check_one_of, check_path, describe
from .questions import VQADataset, encode_questions
from .vocab import Vocab

__all__ = [
    "FIX",
    "KINDS",
    "NOTEBOOKS",
    "answer_shares",
    "available",
    "data_dir",
    "load_easy_vqa",
    "load_easy_vqa_splits",
    "question_kind",
]

NOTEBOOKS = ["13_visual_question_answering"]
FIX = "pip install easy-vqa   (or: make lab, which installs the course's dependencies)"
KINDS: tuple[str, ...] = ("what shape", "what colour", "yes/no shape", "yes/no colour")
SPLITS = ("train", "valid", "test")
_COLOURS = ("red", "green", "blue", "black", "gray", "yellow", "teal", "brown")
_IMAGE_SIZE = 64


def data_dir() -> Path:
    """The ``data`` folder inside the installed ``easy_vqa`` package (no import of it needed).

    Raises ``FileNotFoundError`` saying what to install when the package is not there.
    """
    spec = importlib.util.find_spec("easy_vqa")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"the easy-VQA dataset comes with the pip package easy-vqa, which is "
                                f"not installed here. Fix: {FIX}")
    return Path(spec.origin).parent / "data"


def available() -> tuple[bool, str]:
    """The doctor's check: is the package installed, with its questions, answers and images?"""
    try:
        root = data_dir()
    except FileNotFoundError as exc:
        return False, str(exc)
    needed = [root / "answers.txt", root / "train" / "questions.json", root / "test" / "questions.json",
              root / "train" / "images", root / "test" / "images"]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        return False, f"the easy-vqa package is installed but lacks {', '.join(missing)}; reinstall it"
    return True, f"easy-VQA from the easy-vqa package ({root})"


def question_kind(question: str) -> str:
    """One of :data:`KINDS`, from the question's words.

    >>> question_kind("what is the color of the rectangle?"), question_kind("is no red shape present?")
    ('what colour', 'yes/no colour')
    >>> question_kind("what is the blue shape?"), question_kind("does the image contain a circle?")
    ('what shape', 'yes/no shape')
    """
    words = question.rstrip("?").split()
    if words and words[0] == "what":
        return "what colour" if "color" in words else "what shape"
    return "yes/no colour" if any(w in _COLOURS for w in words) else "yes/no shape"


def _read_json(path: Path) -> list:
    if not path.exists():
        raise FileNotFoundError(f"easy-VQA questions file {path} is missing; reinstall the package "
                                f"(pip install --force-reinstall easy-vqa)")
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"easy-VQA questions file {path} is not valid JSON ({exc}); reinstall the "
                         f"package (pip install --force-reinstall easy-vqa)") from exc
    bad = next((r for r in rows if not (isinstance(r, list) and len(r) == 3 and isinstance(r[0], str)
                                       and isinstance(r[1], str) and isinstance(r[2], int)
                                       and not isinstance(r[2], bool) and r[2] >= 0)), None) \
        if isinstance(rows, list) else rows
    if bad is not None:
        raise ValueError(f"easy-VQA questions file {path} must hold [question, answer, image id] rows, "
                         f"got {describe(bad)}")
    return rows


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError  # Pillow comes with matplotlib

    if not path.exists():
        raise FileNotFoundError(f"easy-VQA image {path} is missing; reinstall the package "
                                f"(pip install --force-reinstall easy-vqa)")
    try:
        with Image.open(path) as img:
            array = np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"easy-VQA image {path} is corrupt or not an image ({exc}); reinstall the "
                         f"package (pip install --force-reinstall easy-vqa)") from exc
    if array.shape != (_IMAGE_SIZE, _IMAGE_SIZE, 3):
        raise ValueError(f"easy-VQA image {path} must be {_IMAGE_SIZE}×{_IMAGE_SIZE} RGB, got an "
                         f"image of shape {array.shape}")
    return array


def load_easy_vqa(split: str, root: str | Path | None = None, vocab: Vocab | None = None) -> VQADataset:
    """One split of easy-VQA as a :class:`~course_utils.datasets.questions.VQADataset`.

    ``split`` is ``"train"`` (90 % of the published training images), ``"valid"`` (the other
    10 %: image ids divisible by 10) or ``"test"``. ``root`` is the dataset's ``data`` folder
    (default: the installed package's). The question vocabulary is built from the training
    questions (pass ``vocab`` to share one); answers keep the package's ``answers.txt`` order.
    A missing or corrupt file is an error that names it.
    """
    check_one_of("split", split, SPLITS)
    return load_easy_vqa_splits(root, vocab, splits=(split,))[split]


def load_easy_vqa_splits(root: str | Path | None = None, vocab: Vocab | None = None,
                         splits: tuple[str, ...] = SPLITS) -> dict[str, VQADataset]:
    """``{"train", "valid", "test"}`` (or the ``splits`` asked for), sharing one question
    vocabulary built from the training questions; each file is read once."""
    if isinstance(splits, str) or not isinstance(splits, (tuple, list)) or not splits:
        raise TypeError(f"splits must be a non-empty tuple of split names {SPLITS}, got "
                        f"{describe(splits)}")
    for split in splits:
        check_one_of("each of splits", split, SPLITS)
    root = data_dir() if root is None else check_path("root", root)
    if not root.is_dir():
        raise FileNotFoundError(f"root must be easy-VQA's data folder; {root} does not exist")
    answers_file = root / "answers.txt"
    if not answers_file.exists():
        raise FileNotFoundError(f"easy-VQA answers file {answers_file} is missing; reinstall the package")
    answer_names = tuple(a.strip() for a in answers_file.read_text(encoding="utf-8").splitlines() if a.strip())
    rows = {"test": _read_json(root / "test" / "questions.json")} if "test" in splits else {}
    if set(splits) - {"test"} or vocab is None:
        published = _read_json(root / "train" / "questions.json")
        rows["train"] = [r for r in published if int(r[2]) % 10]
        rows["valid"] = [r for r in published if int(r[2]) % 10 == 0]
    if vocab is None:
        vocab = Vocab.build(r[0].rstrip("?").split() for r in rows["train"])
    elif not isinstance(vocab, Vocab):
        raise TypeError(f"vocab must be a course_utils.datasets.vocab.Vocab, got {describe(vocab)}")
    return {split: _dataset(rows[split], root / ("test" if split == "test" else "train"), vocab,
                            answer_names, answers_file) for split in splits}


def _dataset(rows: list, folder: Path, vocab: Vocab, answer_names: tuple[str, ...],
             answers_file: Path) -> VQADataset:
    unknown = sorted({r[1] for r in rows} - set(answer_names))
    if unknown:
        raise ValueError(f"easy-VQA questions use answers {unknown} that {answers_file} does not list")
    image_ids = sorted({int(r[2]) for r in rows})
    position = {image_id: i for i, image_id in enumerate(image_ids)}
    images = np.stack([_read_image(folder / "images" / f"{i}.png") for i in image_ids])
    return VQADataset(
        images=torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),  # (M, 3, 64, 64) uint8
        image_index=torch.tensor([position[int(r[2])] for r in rows]),
        questions=[r[0] for r in rows],
        tokens=encode_questions([r[0].rstrip("?").split() for r in rows], vocab),
        answers=torch.tensor([answer_names.index(r[1]) for r in rows]),
        kinds=torch.tensor([KINDS.index(question_kind(r[0])) for r in rows]),
        vocab=vocab, answer_names=answer_names, kind_names=KINDS,
    )


def answer_shares(data: VQADataset) -> dict[str, float]:
    """The share of each answer among the questions (how much a blind guess could exploit)."""
    counts = Counter(data.answers.tolist())
    return {data.answer_names[a]: counts[a] / len(data) for a in sorted(counts)}
