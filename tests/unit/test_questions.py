"""Relational questions: answers from the scene graph, balanced answers, nothing to learn from the
question or the bag of objects alone, and a compositional split that keeps its promise."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from course_utils.datasets.questions import (
    ANSWERS,
    ANSWERS_BY_KIND,
    KINDS,
    QUESTION_WORDS,
    RELATIONS,
    IllPosedQuestion,
    Question,
    answer,
    focus,
    make_question,
    make_question_splits,
    make_questions,
    question_vocab,
    relation_holds,
)
from course_utils.datasets.scenes import HELDOUT_COMBOS, SceneObject, cell_masks, render_scene


def _obj(colour: str, shape: str, row: int, col: int) -> SceneObject:
    cy, cx = row * 8 + 4, col * 8 + 4
    return SceneObject(shape, colour, "small", row, col, cy, cx, (cy - 2, cx - 2, cy + 3, cx + 3))


# A hand-built scene on the 4×4 grid:
#     col:   0              1              2              3
# row 0:  .              blue square    .              .
# row 1:  red circle     .              .              green cross
# row 2:  .              .              red triangle   .
# row 3:  yellow circle  .              .              .
SCENE = [_obj("blue", "square", 0, 1), _obj("red", "circle", 1, 0), _obj("green", "cross", 1, 3),
         _obj("red", "triangle", 2, 2), _obj("yellow", "circle", 3, 0)]


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        (Question("colour", "above", ("red", "circle")), "blue"),  # only the blue square is in row 0
        (Question("shape", "below", ("red", "triangle")), "circle"),  # only the yellow circle (row 3)
        (Question("colour", "right of", ("red", "triangle")), "green"),  # col 3: the green cross
        (Question("shape", "left of", ("blue", "square")), "circle"),  # col 0... two objects: ill-posed
        (Question("exist", "left of", ("green", "cross"), "triangle"), "yes"),  # the triangle is in col 2
        (Question("exist", "above", ("red", "circle"), "cross"), "no"),  # the cross is in row 1, not above
        (Question("exist", "below", ("blue", "square"), "circle"), "yes"),  # two circles below: yes
        (Question("exist", "right of", ("green", "cross"), "square"), "no"),  # nothing right of col 3
        (Question("count", query="red"), "2"),
        (Question("count", query="cyan"), "0"),
        (Question("count", query="green"), "1"),
    ],
)
def test_answers_agree_with_the_hand_built_scene_graph(question, expected):
    if question.kind == "shape" and question.relation == "left of":
        # two objects are left of the blue square (both circles, in column 0): no single answer
        with pytest.raises(IllPosedQuestion, match="exactly one object must be left of the blue square"):
            answer(question, SCENE)
        return
    assert answer(question, SCENE) == expected


def test_relations_read_rows_and_columns():
    a, b = _obj("red", "circle", 2, 0), _obj("blue", "cross", 0, 3)
    assert relation_holds(a, "left of", b) and relation_holds(b, "right of", a)
    assert relation_holds(b, "above", a) and relation_holds(a, "below", b)
    same_row = _obj("green", "square", 2, 3)
    assert not relation_holds(a, "above", same_row) and not relation_holds(a, "below", same_row)
    assert relation_holds(a, "left of", same_row)


def test_ill_posed_questions_are_refused():
    with pytest.raises(IllPosedQuestion, match="must occur exactly once"):
        answer(Question("colour", "above", ("cyan", "cross")), SCENE)  # no cyan cross
    twice = [*SCENE, _obj("red", "circle", 3, 3)]
    with pytest.raises(IllPosedQuestion, match="found 2"):
        answer(Question("exist", "above", ("red", "circle"), "cross"), twice)


def test_focus_is_the_reference_and_what_stands_in_the_relation():
    assert focus(Question("colour", "above", ("red", "circle")), SCENE) == [0, 1]
    # exist: every object in the relation is looked at, whatever its shape
    assert focus(Question("exist", "below", ("blue", "square"), "cross"), SCENE) == [0, 1, 2, 3, 4]
    assert focus(Question("exist", "right of", ("green", "cross"), "square"), SCENE) == [2]
    assert focus(Question("count", query="red"), SCENE) == [1, 3]
    assert focus(Question("count", query="cyan"), SCENE) == []


def test_question_text_and_vocabulary():
    q = Question("exist", "right of", ("yellow", "square"), "triangle")
    assert q.text == "is there a triangle right of the yellow square?"
    assert q.words == ["is", "there", "a", "triangle", "right", "of", "the", "yellow", "square"]
    vocab = question_vocab()
    assert vocab.unk is None and vocab.itos[3:] == list(QUESTION_WORDS)
    assert Question("count", query="blue").text == "how many blue shapes are there?"
    assert ANSWERS == tuple(a for k in KINDS for a in ANSWERS_BY_KIND[k]) and len(set(ANSWERS)) == 16


@pytest.fixture(scope="module")
def splits():
    return make_question_splits(seed=2, n_train=800, n_valid=40, n_test=200, n_compositional=300)


def test_every_generated_answer_is_what_the_scene_graph_says(splits):
    for data in splits.values():
        for i, (spec, objects) in enumerate(zip(data.specs, data.objects, strict=True)):
            assert data.answer_names[int(data.answers[i])] == answer(spec, objects)
            assert data.questions[i] == spec.text
            assert data.vocab.decode(data.tokens[i]) == spec.words


def test_the_images_show_the_scene_graph(splits):
    data = splits["test"]
    for i in range(20):
        image = data.images[int(data.image_index[i])].float() / 255  # (3, 32, 32)
        for obj in data.objects[i]:
            y0, x0, y1, x1 = obj.box
            patch = image[:, y0:y1, x0:x1].reshape(3, -1)
            brightest = patch[:, patch.sum(0).argmax()]  # a pixel of the shape, not the background
            from course_utils.datasets.scenes import COLOURS

            colour = torch.tensor(COLOURS[obj.colour])
            assert (brightest / brightest.max() - colour / colour.max()).abs().max() < 0.25
            assert y0 >= obj.row * 8 and y1 <= obj.row * 8 + 8 and x0 >= obj.col * 8 and x1 <= obj.col * 8 + 8


def test_focus_cells_are_the_cells_of_the_focus_objects(splits):
    data = splits["train"]
    rng = np.random.default_rng(0)
    for i in range(0, 200, 7):
        spec, objects = data.specs[i], data.objects[i]
        # redraw the scene to get its pixel masks, and check the cells against cell_masks
        _, redrawn, masks = render_scene(rng, [(o.row * 4 + o.col, o.colour, o.shape) for o in objects])
        cells = cell_masks(torch.from_numpy(masks)).flatten(1)
        expected = torch.zeros(16, dtype=torch.bool)
        for k in focus(spec, redrawn):
            expected |= cells[k]
        assert torch.equal(data.focus[i], expected)


def test_answers_are_balanced_exactly(splits):
    counts = splits["train"].answer_counts()
    assert {k: sum(v.values()) for k, v in counts.items()} == {k: 200 for k in KINDS}
    for kind, by_answer in counts.items():
        assert set(by_answer) == set(ANSWERS_BY_KIND[kind])
        assert max(by_answer.values()) - min(by_answer.values()) <= 1, kind


def test_the_question_alone_does_not_tell_the_answer(splits):
    """A blind model's best guess: the commonest answer for each question text. It must not
    beat the chance of its kind by more than sampling noise."""
    data = make_questions(4000, seed=11)
    by_text: dict[str, Counter] = {}
    for text, a in zip(data.questions, data.answers.tolist(), strict=True):
        by_text.setdefault(text, Counter())[a] += 1
    # the answer of each kind, guessed from the template alone (reference, relation, query hidden)
    for k, kind in enumerate(KINDS):
        answers = data.answers[data.kinds == k]
        top = Counter(answers.tolist()).most_common(1)[0][1] / len(answers)
        assert top <= 1 / len(ANSWERS_BY_KIND[kind]) + 0.01, kind
    # and from the words: per reference colour/shape, relation and query, no answer dominates
    for kind in ("exist", "colour", "shape"):
        for field in ("relation", "ref", "query"):
            groups: dict = {}
            for spec, a in zip(data.specs, data.answers.tolist(), strict=True):
                if spec.kind == kind and getattr(spec, field) is not None:
                    groups.setdefault(getattr(spec, field), Counter())[a] += 1
            for value, counter in groups.items():
                n = sum(counter.values())
                if n >= 60:
                    share = counter.most_common(1)[0][1] / n
                    chance = 1 / len(ANSWERS_BY_KIND[kind])
                    assert share < chance + 4 * (chance * (1 - chance) / n) ** 0.5 + 0.02, (kind, field, value)


def test_a_no_has_the_asked_shape_elsewhere_as_often_as_a_yes():
    """Seeing that a triangle is in the scene must not tell whether it is above the reference."""
    data = make_questions(2000, seed=12)
    present, extra = {"yes": [], "no": []}, {"yes": [], "no": []}
    for spec, objects, a in zip(data.specs, data.objects, data.answers.tolist(), strict=True):
        if spec.kind != "exist":
            continue
        name = ANSWERS[a]
        n_query = sum(o.shape == spec.query and (o.colour, o.shape) != spec.ref for o in objects)
        present[name].append(n_query > 0)
        extra[name].append(n_query)
    assert all(present["yes"]) and all(present["no"])
    assert abs(np.mean(extra["yes"]) - np.mean(extra["no"])) < 0.1


def test_colour_and_shape_questions_have_distractors(splits):
    data = splits["train"]
    for spec, objects in zip(data.specs, data.objects, strict=True):
        if spec.kind in ("colour", "shape"):
            assert len(objects) >= 3 and len(focus(spec, objects)) == 2  # one more outside the relation


def test_the_compositional_split_keeps_its_promise(splits):
    heldout = set(HELDOUT_COMBOS)
    for name in ("train", "valid", "test"):
        for objects in splits[name].objects:
            assert not any((o.colour, o.shape) in heldout for o in objects), name
        assert not any(spec.ref in heldout for spec in splits[name].specs if spec.ref)
    comp = splits["compositional"]
    assert all(spec.ref in heldout for spec in comp.specs)  # every question names a held-out pair
    assert {spec.kind for spec in comp.specs} == {"exist", "colour", "shape"}
    seen_texts = set(splits["train"].questions)
    assert not seen_texts & set(comp.questions)  # no compositional question was asked in training
    counts = comp.answer_counts()
    for kind in ("exist", "colour", "shape"):
        by_answer = counts[kind]
        assert max(by_answer.values()) - min(by_answer.values()) <= 1, kind


def test_generation_is_deterministic_and_seeds_differ():
    a, b, c = make_questions(30, seed=4), make_questions(30, seed=4), make_questions(30, seed=5)
    assert torch.equal(a.images, b.images) and a.questions == b.questions
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.focus, b.focus)
    assert a.questions != c.questions


def test_batches_and_subsets():
    data = make_questions(10, seed=6)
    images, tokens, answers = data.batch(torch.tensor([3, 1]))
    assert images.shape == (2, 3, 32, 32) and images.dtype == torch.float32 and images.max() <= 1
    assert torch.equal(answers, data.answers[[3, 1]])
    assert tokens.size(1) == int((data.tokens[[3, 1]] != 0).sum(1).max())  # padding columns trimmed
    sub = data.subset([3, 1])
    assert len(sub) == 2 and sub.questions == [data.questions[3], data.questions[1]]
    assert torch.equal(sub.images[sub.image_index], data.images[data.image_index[[3, 1]]])
    with pytest.raises(ValueError, match=r"question positions in \[0, 10\)"):
        data.subset([10])


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: make_questions(0, seed=1), ValueError, "n must be a positive int"),
        (lambda: make_questions(4, seed=-1), ValueError, "seed"),
        (lambda: make_questions(4, seed=1, compositional="yes"), TypeError, "compositional"),
        (lambda: make_question(np.random.default_rng(0), "where", "yes"), ValueError, "kind must be one of"),
        (lambda: make_question(np.random.default_rng(0), "exist", "red"), ValueError,
         r"target \(an answer to a 'exist' question\) must be one of 'yes', 'no'"),
        (lambda: make_question(np.random.default_rng(0), "colour", "red", n_objects=(2, 3)), ValueError,
         "n_objects must be"),
        (lambda: make_question(np.random.default_rng(0), "colour", "red", n_objects=(3, 40)), ValueError,
         "n_objects must be"),
        (lambda: make_question(0, "colour", "red"), TypeError, "rng must be a numpy Generator"),
        (lambda: make_question_splits(n_test=0), ValueError, "n_test must be a positive int"),
        (lambda: Question("colour", "near", ("red", "circle")), ValueError, "relation must be one of"),
        (lambda: Question("colour", "above", ("purple", "circle")), ValueError, "ref must be a"),
        (lambda: Question("exist", "above", ("red", "circle")), ValueError, "query"),
        (lambda: Question("count"), ValueError, "query"),
        (lambda: answer("what colour?", SCENE), TypeError, "question must be a Question"),
        (lambda: relation_holds(SCENE[0], "beside", SCENE[1]), ValueError, "relation must be one of"),
    ],
)
def test_bad_input_gets_a_clear_error(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_relations_cover_both_axes():
    assert set(RELATIONS) == {"left of", "right of", "above", "below"}
