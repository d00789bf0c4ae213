"""Relational questions about the shapes scenes, answered from the scene graph (notebook 13).

The scenes are those of the captioning notebook (:mod:`course_utils.datasets.scenes`): a 32×32
canvas cut into a 4×4 grid, one coloured shape per occupied cell. Each question comes with a
scene built for it, so that its answer is known from the scene graph and the answers are
balanced (a model that reads only the question cannot do better than chance). Four kinds::

    exist    is there a triangle above the red square?            yes / no
    colour   what colour is the shape left of the blue circle?    red, green, ... (6)
    shape    what shape is below the cyan cross?                  circle, square, triangle, cross
    count    how many green shapes are there?                     0, 1, 2, 3

The first three are *relational*: the model has to find the reference object ("the red square",
unique in its scene), then look where the relation points. ``a left of b`` means ``a``'s column is
smaller than ``b``'s (any row); ``a above b`` means ``a``'s row is smaller (any column) — the
convention of CLEVR, on grid cells. For ``colour`` and ``shape`` exactly one object stands in the
relation; for ``exist`` the objects that stand in it are the ones to check.

**Nothing to learn from the question alone or from the bag of objects.** The answers of each
kind are balanced exactly (:func:`make_questions` deals them out in equal numbers), and every
scene has *distractors*: objects outside the relation, with random attributes. A "no" to an
``exist`` question always has the asked-for shape somewhere else in the scene, and a "yes" has
as many objects of that shape outside the relation, on average, as a "no": seeing *that* there
is a triangle does not tell whether it is above the red square.

**Compositional split.** The colour–shape pairs of :data:`~course_utils.datasets.scenes.
HELDOUT_COMBOS` (red triangle, green cross, blue circle, yellow square) never occur in the
``train``, ``valid`` and ``test`` scenes. In the ``compositional`` split, every question is
relational and its reference object is one of those pairs ("what colour is the shape left of
the red triangle?"): a combination of words the model has never been asked about, naming an
object it has never seen.

:func:`answer` computes the answer of a question from a scene's objects and :func:`focus` the
objects the question refers to (the reference object and those that stand in the relation, or
the objects counted): the grounding score of :mod:`course_utils.vqa` checks whether attention
lands on them.

>>> data = make_question_splits(seed=0, n_train=8, n_valid=4, n_test=4, n_compositional=4)
>>> train = data["train"]
>>> train.images.shape, train.tokens.shape[0], len(train.answer_names)   # (M, 3, H, W), N, A
(torch.Size([8, 3, 32, 32]), 8, 16)
>>> q = train.specs[0]
>>> q.text, train.answer_names[int(train.answers[0])] == answer(q, train.objects[0])
('what colour is the shape right of the cyan square?', True)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..checks import check_bool, check_int, check_one_of, check_positive_int, describe
from .scenes import (
    COLOURS,
    HELDOUT_COMBOS,
    SHAPES,
    SceneObject,
    check_rng,
    render_scene,
)
from .vocab import Vocab

__all__ = [
    "ANSWERS",
    "ANSWERS_BY_KIND",
    "FIX",
    "IllPosedQuestion",
    "KINDS",
    "NOTEBOOKS",
    "QUESTION_WORDS",
    "RELATIONS",
    "Question",
    "VQADataset",
    "answer",
    "available",
    "focus",
    "make_question",
    "make_questions",
    "make_question_splits",
    "question_vocab",
    "relation_holds",
]

NOTEBOOKS = ["13_visual_question_answering"]
FIX = "nothing to download: the questions and their scenes are generated from a seed"

KINDS: tuple[str, ...] = ("exist", "colour", "shape", "count")
RELATIONAL_KINDS: tuple[str, ...] = ("exist", "colour", "shape")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
COUNTS: tuple[str, ...] = ("0", "1", "2", "3")
ANSWERS_BY_KIND: dict[str, tuple[str, ...]] = {
    "exist": ("yes", "no"),
    "colour": tuple(COLOURS),
    "shape": SHAPES,
    "count": COUNTS,
}
#: every answer, in the order of the answer ids
ANSWERS: tuple[str, ...] = tuple(a for kind in KINDS for a in ANSWERS_BY_KIND[kind])
#: every word a question can use, in id order after ``<pad> <bos> <eos>``
QUESTION_WORDS: tuple[str, ...] = (
    "is", "there", "a", "the", "what", "colour", "shape", "how", "many", "shapes", "are",
    "left", "right", "of", "above", "below", *COLOURS, *SHAPES,
)


def available() -> tuple[bool, str]:
    """The doctor's check: the questions are generated, so they are always available.

    >>> available()[0]
    True
    """
    return True, "generated from a seed (no files needed)"


def question_vocab() -> Vocab:
    """The questions' vocabulary: the course's one :class:`~course_utils.datasets.vocab.Vocab`,
    closed (an unknown word is an error).

    >>> question_vocab().encode("what shape is above the red circle".split())[:3]
    [7, 9, 3]
    """
    return Vocab(QUESTION_WORDS, unk=False)


class IllPosedQuestion(ValueError):
    """The question has no single answer in this scene (its reference object is missing or not
    unique, or not exactly one object stands in the relation it asks about)."""


@dataclass(frozen=True)
class Question:
    """A question as the generator sees it: its kind, and the words that fill its template.

    * ``relation`` — one of :data:`RELATIONS` (``None`` for ``count``);
    * ``ref`` — ``(colour, shape)`` of the reference object (``None`` for ``count``);
    * ``query`` — the shape asked about (``exist``) or the colour counted (``count``).

    >>> Question("colour", "left of", ("blue", "circle")).text
    'what colour is the shape left of the blue circle?'
    """

    kind: str
    relation: str | None = None
    ref: tuple[str, str] | None = None
    query: str | None = None

    def __post_init__(self) -> None:
        check_one_of("kind", self.kind, KINDS)
        if self.kind == "count":
            check_one_of("query (the colour counted)", self.query, tuple(COLOURS))
            return
        check_one_of("relation", self.relation, RELATIONS)
        if (not isinstance(self.ref, tuple) or len(self.ref) != 2 or self.ref[0] not in COLOURS
                or self.ref[1] not in SHAPES):
            raise ValueError(f"ref must be a (colour, shape) pair, got {self.ref!r}")
        if self.kind == "exist":
            check_one_of("query (the shape asked about)", self.query, SHAPES)

    @property
    def text(self) -> str:
        the = f"the {self.ref[0]} {self.ref[1]}" if self.ref else ""
        if self.kind == "exist":
            return f"is there a {self.query} {self.relation} {the}?"
        if self.kind == "colour":
            return f"what colour is the shape {self.relation} {the}?"
        if self.kind == "shape":
            return f"what shape is {self.relation} {the}?"
        return f"how many {self.query} shapes are there?"

    @property
    def words(self) -> list[str]:
        """The question as tokens (the question mark dropped)."""
        return self.text.rstrip("?").split()


def relation_holds(a: SceneObject, relation: str, b: SceneObject) -> bool:
    """Is ``a`` *relation* ``b``? Columns decide left/right, rows decide above/below.

    >>> from course_utils.datasets.scenes import SceneObject
    >>> a = SceneObject("circle", "red", "small", 2, 0, 20, 4, (18, 2, 23, 7))
    >>> b = SceneObject("cross", "blue", "small", 0, 3, 4, 28, (2, 26, 7, 31))
    >>> relation_holds(a, "left of", b), relation_holds(a, "below", b), relation_holds(a, "above", b)
    (True, True, False)
    """
    check_one_of("relation", relation, RELATIONS)
    if relation == "left of":
        return a.col < b.col
    if relation == "right of":
        return a.col > b.col
    if relation == "above":
        return a.row < b.row
    return a.row > b.row


def _reference(question: Question, objects: Sequence[SceneObject]) -> int:
    found = [i for i, o in enumerate(objects) if (o.colour, o.shape) == question.ref]
    if len(found) != 1:
        raise IllPosedQuestion(f"the {question.ref[0]} {question.ref[1]} must occur exactly once in "
                               f"the scene, found {len(found)}")
    return found[0]


def _related(question: Question, objects: Sequence[SceneObject], ref: int) -> list[int]:
    return [i for i, o in enumerate(objects)
            if i != ref and relation_holds(o, question.relation, objects[ref])]


def answer(question: Question, objects: Sequence[SceneObject]) -> str:
    """The answer of ``question`` about a scene with these ``objects``, from the scene graph.

    Raises :class:`IllPosedQuestion` when the question has no single answer here.

    >>> from course_utils.datasets.scenes import SceneObject
    >>> red = SceneObject("circle", "red", "small", 1, 1, 12, 12, (10, 10, 15, 15))
    >>> left = SceneObject("cross", "green", "large", 3, 0, 28, 4, (25, 1, 32, 8))
    >>> answer(Question("colour", "left of", ("red", "circle")), [red, left])
    'green'
    >>> answer(Question("exist", "above", ("red", "circle"), "cross"), [red, left])
    'no'
    """
    if not isinstance(question, Question):
        raise TypeError(f"question must be a Question, got {describe(question)}")
    if question.kind == "count":
        return str(sum(o.colour == question.query for o in objects))
    ref = _reference(question, objects)
    related = _related(question, objects, ref)
    if question.kind == "exist":
        return "yes" if any(objects[i].shape == question.query for i in related) else "no"
    if len(related) != 1:
        raise IllPosedQuestion(f"exactly one object must be {question.relation} the "
                               f"{question.ref[0]} {question.ref[1]}, found {len(related)}")
    target = objects[related[0]]
    return target.colour if question.kind == "colour" else target.shape


def focus(question: Question, objects: Sequence[SceneObject]) -> list[int]:
    """The objects ``question`` refers to (indices into ``objects``): the reference object and
    every object that stands in the relation (``exist``, ``colour``, ``shape``), or the objects
    of the colour counted (``count``; none when the answer is 0).

    >>> from course_utils.datasets.scenes import SceneObject
    >>> red = SceneObject("circle", "red", "small", 1, 1, 12, 12, (10, 10, 15, 15))
    >>> left = SceneObject("cross", "green", "large", 3, 0, 28, 4, (25, 1, 32, 8))
    >>> far = SceneObject("square", "blue", "small", 0, 3, 4, 28, (2, 26, 7, 31))
    >>> focus(Question("shape", "left of", ("red", "circle")), [red, left, far])
    [0, 1]
    """
    if question.kind == "count":
        return [i for i, o in enumerate(objects) if o.colour == question.query]
    ref = _reference(question, objects)
    return sorted([ref, *_related(question, objects, ref)])


# ---------------------------------------------------------------------------------------------
# Generating a question and a scene that fit an answer
# ---------------------------------------------------------------------------------------------


def _region(cell: int, relation: str, grid: int) -> list[int]:
    """The cells that stand in ``relation`` to ``cell``."""
    row, col = divmod(cell, grid)
    keep = {
        "left of": lambda r, c: c < col,
        "right of": lambda r, c: c > col,
        "above": lambda r, c: r < row,
        "below": lambda r, c: r > row,
    }[relation]
    return [r * grid + c for r in range(grid) for c in range(grid) if keep(r, c)]


def _pick(rng: np.random.Generator, items: Sequence):
    return items[int(rng.integers(len(items)))]


def _pick_cells(rng: np.random.Generator, cells: Sequence[int], k: int) -> list[int]:
    return [int(c) for c in rng.choice(np.asarray(cells), size=k, replace=False)] if k else []


def make_question(
    rng: np.random.Generator,
    kind: str,
    target: str,
    grid: int = 4,
    n_objects: tuple[int, int] = (3, 4),
    pairs: Sequence[tuple[str, str]] | None = None,
    ref_pairs: Sequence[tuple[str, str]] | None = None,
) -> tuple[Question, list[tuple[int, str, str]]]:
    """A question of ``kind`` whose answer is ``target``, and a scene layout that fits it.

    Returns ``(question, layout)``, the layout as ``(cell, colour, shape)`` triples for
    :func:`~course_utils.datasets.scenes.render_scene`. Objects use the colour–shape ``pairs``
    (default: all); the reference object uses ``ref_pairs`` (default: ``pairs``) and is the only
    object of its pair in the scene.

    >>> q, layout = make_question(np.random.default_rng(0), "shape", "cross")
    >>> q.text, len(layout)
    ('what shape is above the green triangle?', 4)
    """
    check_rng(rng)
    check_one_of("kind", kind, KINDS)
    check_one_of(f"target (an answer to a {kind!r} question)", target, ANSWERS_BY_KIND[kind])
    check_positive_int("grid", grid)
    if (not isinstance(n_objects, (tuple, list)) or len(n_objects) != 2
            or not all(isinstance(n, int) and not isinstance(n, bool) for n in n_objects)
            or not 3 <= n_objects[0] <= n_objects[1] <= grid * grid):
        raise ValueError(f"n_objects must be (lo, hi) with 3 <= lo <= hi <= {grid * grid} (a reference, "
                         f"an object in the relation and a distractor), got {n_objects!r}")
    pairs = [(c, s) for c in COLOURS for s in SHAPES] if pairs is None else [tuple(p) for p in pairs]
    ref_pairs = pairs if ref_pairs is None else [tuple(p) for p in ref_pairs]
    if not pairs or not ref_pairs:
        raise ValueError("pairs and ref_pairs must not be empty")
    lo, hi = n_objects
    if kind == "count":
        return _count_question(rng, target, grid, lo, hi, pairs)
    n = int(rng.integers(lo, hi + 1))
    cells = range(grid * grid)
    for _ in range(100):  # a relation and a reference cell with room on both sides
        relation = _pick(rng, RELATIONS)
        ref_cell = int(rng.integers(grid * grid))
        region = _region(ref_cell, relation, grid)
        outside = [c for c in cells if c != ref_cell and c not in region]
        if region and len(outside) >= n - 2:
            break
    else:  # pragma: no cover - a 4×4 grid always has room; a tiny grid may not
        raise ValueError(f"no room for {n} objects and a relation on a {grid}×{grid} grid")
    ref = _pick(rng, ref_pairs)
    others = [p for p in pairs if p != ref]  # the reference is unique in its scene
    target_cell = _pick(rng, region)
    rest = _pick_cells(rng, outside, n - 2)
    if kind == "colour":
        obj = _pick(rng, [p for p in others if p[0] == target] or others)
        question = Question("colour", relation, ref)
    elif kind == "shape":
        obj = _pick(rng, [p for p in others if p[1] == target] or others)
        question = Question("shape", relation, ref)
    else:  # exist: the shape asked about also sits outside the relation, in both cases
        query = _pick(rng, SHAPES)
        with_query = [p for p in others if p[1] == query]
        without = [p for p in others if p[1] != query]
        obj = _pick(rng, with_query if target == "yes" else without)
        first = with_query if target == "no" else without  # "yes" balances it with a non-query
        layout_rest = [(rest[0], *_pick(rng, first))] + [(c, *_pick(rng, others)) for c in rest[1:]]
        question = Question("exist", relation, ref, query)
        return question, [(ref_cell, *ref), (target_cell, *obj), *layout_rest]
    return question, [(ref_cell, *ref), (target_cell, *obj), *[(c, *_pick(rng, others)) for c in rest]]


def _count_question(rng, target: str, grid: int, lo: int, hi: int, pairs):
    k = int(target)
    colours = sorted({c for c, _ in pairs}, key=list(COLOURS).index)
    colour = _pick(rng, colours)
    n = int(rng.integers(max(lo, k), hi + 1))
    cells = _pick_cells(rng, range(grid * grid), n)
    same = [p for p in pairs if p[0] == colour]
    other = [p for p in pairs if p[0] != colour]
    layout = [(c, *_pick(rng, same if i < k else other)) for i, c in enumerate(cells)]
    return Question("count", query=colour), layout


# ---------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------


@dataclass
class VQADataset:
    """Questions about images, one answer each, shared by easy-VQA and the relational scenes.

    * ``images`` ``(M, 3, H, W)`` uint8 (0–255; :meth:`batch` gives floats in [0, 1]);
    * ``image_index`` ``(N,)`` long: the image of question ``n`` (several questions may share one);
    * ``tokens`` ``(N, L)`` long: the question's word ids, then ``<pad>`` (0);
    * ``answers`` ``(N,)`` long, ids into ``answer_names``; ``kinds`` ``(N,)`` long, into ``kind_names``;
    * ``focus`` ``(N, cells)`` bool or None: the grid cells of the objects the question refers to;
    * ``objects`` (per image) and ``specs`` (per question), where the data is generated.
    """

    images: torch.Tensor
    image_index: torch.Tensor
    questions: list[str]
    tokens: torch.Tensor
    answers: torch.Tensor
    kinds: torch.Tensor
    vocab: Vocab
    answer_names: tuple[str, ...]
    kind_names: tuple[str, ...]
    focus: torch.Tensor | None = None
    grid: int | None = None
    objects: list[list[SceneObject]] | None = None
    specs: list[Question] | None = None

    def __len__(self) -> int:
        return len(self.answers)

    def batch(self, index: torch.Tensor, device: torch.device | str | None = None):
        """``(images (B, 3, H, W) float in [0, 1], tokens (B, L'), answers (B,))`` of the questions
        ``index``; the token columns that are padding for the whole batch are dropped."""
        tokens = self.tokens[index]
        length = max(int((tokens != self.vocab.pad).sum(1).max()), 1) if len(tokens) else 1
        images = self.images[self.image_index[index]].to(device).float().div_(255.0)
        return images, tokens[:, :length].to(device), self.answers[index].to(device)

    def subset(self, index: Sequence[int] | torch.Tensor) -> VQADataset:
        """The questions ``index`` (the images they use are kept, re-indexed)."""
        idx = torch.as_tensor(index, dtype=torch.long)
        if idx.dim() != 1 or (idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= len(self))):
            raise ValueError(f"index must be a 1-D list of question positions in [0, {len(self)}), "
                             f"got {describe(index)}")
        used, new_index = torch.unique(self.image_index[idx], return_inverse=True)
        pick = idx.tolist()
        return VQADataset(
            self.images[used], new_index, [self.questions[i] for i in pick], self.tokens[idx],
            self.answers[idx], self.kinds[idx], self.vocab, self.answer_names, self.kind_names,
            None if self.focus is None else self.focus[idx], self.grid,
            None if self.objects is None else [self.objects[i] for i in used.tolist()],
            None if self.specs is None else [self.specs[i] for i in pick],
        )

    def answer_counts(self) -> dict[str, dict[str, int]]:
        """``{kind: {answer: number of questions}}``: how balanced the answers are."""
        out: dict[str, dict[str, int]] = {k: {} for k in self.kind_names}
        for k, a in zip(self.kinds.tolist(), self.answers.tolist(), strict=True):
            name = self.answer_names[a]
            out[self.kind_names[k]][name] = out[self.kind_names[k]].get(name, 0) + 1
        return out


def encode_questions(word_lists: Sequence[Sequence[str]], vocab: Vocab) -> torch.Tensor:
    """Word lists -> ``(N, L)`` ids padded with ``<pad>`` (no ``<bos>``/``<eos>``).

    >>> encode_questions([["what", "shape"], ["is", "there", "a"]], question_vocab()).tolist()
    [[7, 9, 0], [3, 4, 5]]
    """
    ids = [vocab.encode(list(w)) for w in word_lists]
    tokens = torch.full((len(ids), max((len(i) for i in ids), default=1)), vocab.pad, dtype=torch.long)
    for n, row in enumerate(ids):
        tokens[n, : len(row)] = torch.tensor(row, dtype=torch.long)
    return tokens


def _deal(rng: np.random.Generator, n: int, kinds: Sequence[str]) -> list[tuple[str, str]]:
    """``n`` (kind, answer) pairs: kinds in equal numbers, and each kind's answers in equal
    numbers (up to one when ``n`` does not divide), in a random order."""
    jobs = []
    for k, kind in enumerate(kinds):
        quota = n // len(kinds) + (k < n % len(kinds))
        answers = ANSWERS_BY_KIND[kind]
        order = rng.permutation(len(answers))  # which answers get the remainder
        jobs += [(kind, answers[int(order[i % len(answers)])]) for i in range(quota)]
    return [jobs[int(i)] for i in rng.permutation(len(jobs))]


def make_questions(
    n: int,
    seed: int,
    compositional: bool = False,
    grid: int = 4,
    image_size: int = 32,
    n_objects: tuple[int, int] = (3, 4),
    noise: float = 0.03,
    kinds: Sequence[str] | None = None,
) -> VQADataset:
    """``n`` questions, each about its own scene, from ``seed``.

    ``compositional=False``: the four kinds in equal numbers, each kind's answers in equal
    numbers, and no object of a held-out pair anywhere. ``compositional=True``: relational
    questions only, each about a reference object of a held-out pair. ``kinds`` keeps only
    some kinds of question (default: all that the split allows).

    >>> data = make_questions(8, seed=1)
    >>> [data.kind_names[k] for k in data.kinds.tolist()].count("count")
    2
    """
    check_positive_int("n", n)
    check_int("seed", seed, low=0)
    check_bool("compositional", compositional)
    rng = np.random.default_rng(seed)
    seen = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in HELDOUT_COMBOS]
    every = [(c, s) for c in COLOURS for s in SHAPES]
    pairs, ref_pairs = (every, list(HELDOUT_COMBOS)) if compositional else (seen, seen)
    allowed = RELATIONAL_KINDS if compositional else KINDS
    if kinds is None:
        kinds = allowed
    else:
        if isinstance(kinds, str) or not isinstance(kinds, Sequence) or not kinds:
            raise ValueError(f"kinds must be a non-empty list of question kinds, got {describe(kinds)}")
        for kind in kinds:
            check_one_of("kinds[]", kind, allowed)
    vocab = question_vocab()
    images = np.empty((n, 3, image_size, image_size), dtype=np.uint8)
    specs, objects, answers, focus_cells = [], [], [], torch.zeros(n, grid * grid, dtype=torch.bool)
    for i, (kind, target) in enumerate(_deal(rng, n, kinds)):
        question, layout = make_question(rng, kind, target, grid, n_objects, pairs, ref_pairs)
        image, objs, _ = render_scene(rng, layout, image_size, grid, noise)
        got = answer(question, objs)
        if got != target:  # the generator and the scene graph disagree: a bug, never data
            raise AssertionError(f"generated {question.text!r} for {target!r}, the scene says {got!r}")
        images[i] = np.rint(image * 255.0)
        for k in focus(question, objs):  # every object lies inside its one cell
            focus_cells[i, objs[k].row * grid + objs[k].col] = True
        specs.append(question)
        objects.append(objs)
        answers.append(ANSWERS.index(target))
    return VQADataset(
        images=torch.from_numpy(images), image_index=torch.arange(n),
        questions=[q.text for q in specs], tokens=encode_questions([q.words for q in specs], vocab),
        answers=torch.tensor(answers), kinds=torch.tensor([KINDS.index(q.kind) for q in specs]),
        vocab=vocab, answer_names=ANSWERS, kind_names=KINDS, focus=focus_cells, grid=grid,
        objects=objects, specs=specs,
    )


def make_question_splits(
    seed: int = 0,
    n_train: int = 12000,
    n_valid: int = 1000,
    n_test: int = 2000,
    n_compositional: int = 1000,
    **kwargs,
) -> dict[str, VQADataset]:
    """``train``, ``valid``, ``test`` (seen colour–shape pairs only) and ``compositional``
    (questions about a held-out pair), each from its own seed derived from ``seed``."""
    check_int("seed", seed, low=0)
    sizes = {"train": n_train, "valid": n_valid, "test": n_test, "compositional": n_compositional}
    for name, size in sizes.items():
        check_positive_int(f"n_{name}", size)
    return {name: make_questions(size, seed=seed * 1000 + 500 + k, compositional=name == "compositional",
                                 **kwargs)
            for k, (name, size) in enumerate(sizes.items())}
