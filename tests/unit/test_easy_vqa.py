"""easy-VQA, read offline from the installed easy-vqa package: the published counts, the answer
vocabulary, a split without leaks, and a clear error for every missing or corrupt file."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from course_utils.datasets import easy_vqa
from course_utils.datasets.easy_vqa import (
    KINDS,
    data_dir,
    load_easy_vqa,
    load_easy_vqa_splits,
    question_kind,
)

pytestmark = pytest.mark.skipif(not easy_vqa.available()[0], reason="the easy-vqa package is not installed")


@pytest.fixture(scope="module")
def splits():
    return load_easy_vqa_splits()


def test_the_published_counts(splits):
    # the dataset's README: 4,000 / 1,000 images, 38,575 / 9,673 questions, 13 answers
    train, valid, test = splits["train"], splits["valid"], splits["test"]
    assert len(train) + len(valid) == 38_575 and len(test) == 9_673
    assert train.images.size(0) + valid.images.size(0) == 4_000 and test.images.size(0) == 1_000
    assert train.images.shape[1:] == (3, 64, 64) and train.images.dtype == torch.uint8
    yes_no = sum(train.answer_names[a] in ("yes", "no") for d in (train, valid) for a in d.answers.tolist())
    assert yes_no == 28_407  # "28407 training questions that are yes/no"
    assert sum(test.answer_names[a] in ("yes", "no") for a in test.answers.tolist()) == 7_136


def test_answer_vocabulary(splits):
    answers = (data_dir() / "answers.txt").read_text().split()
    assert splits["train"].answer_names == tuple(answers) and len(answers) == 13
    assert set(answers) == {"yes", "no", "circle", "rectangle", "triangle", "red", "green", "blue",
                            "black", "gray", "yellow", "teal", "brown"}
    for split in splits.values():  # every answer id names the package's answer
        assert int(split.answers.max()) < 13 and split.answer_names == tuple(answers)


def test_questions_and_images_match_the_files(splits):
    rows = json.loads((data_dir() / "test" / "questions.json").read_text())
    test = splits["test"]
    for n in (0, 1, 500, len(rows) - 1):
        text, ans, image_id = rows[n]
        assert test.questions[n] == text and test.answer_names[int(test.answers[n])] == ans
        words = test.vocab.decode(test.tokens[n])
        assert words == text.rstrip("?").split()  # no word of the test questions is unknown
        with Image.open(data_dir() / "test" / "images" / f"{image_id}.png") as img:
            pixels = torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1)
        assert torch.equal(test.images[int(test.image_index[n])], pixels)


def test_validation_split_takes_whole_images_from_training(splits):
    rows = json.loads((data_dir() / "train" / "questions.json").read_text())
    valid_ids = {r[2] for r in rows if r[2] % 10 == 0}
    assert splits["valid"].images.size(0) == len(valid_ids) == 400
    assert Counter(r[2] % 10 == 0 for r in rows)[True] == len(splits["valid"])
    # the vocabulary comes from the training questions, and is shared by the three splits
    assert splits["train"].vocab is splits["valid"].vocab is splits["test"].vocab


def test_question_kinds(splits):
    kinds = Counter(KINDS[k] for k in splits["test"].kinds.tolist())
    assert set(kinds) == set(KINDS)
    for text, kind in [("what shape is present?", "what shape"), ("what is the red shape?", "what shape"),
                       ("what color is the triangle?", "what colour"),
                       ("is there not a teal shape in the image?", "yes/no colour"),
                       ("does the image not contain a rectangle?", "yes/no shape")]:
        assert question_kind(text) == kind
    test = splits["test"]
    for k, name in enumerate(KINDS):  # the answers of each kind are of the right sort
        answers = {test.answer_names[a] for a in test.answers[test.kinds == k].tolist()}
        expected = {"what shape": {"circle", "rectangle", "triangle"}, "yes/no shape": {"yes", "no"},
                    "yes/no colour": {"yes", "no"}}.get(name)
        if expected:
            assert answers == expected, name
        else:
            assert answers <= {"red", "green", "blue", "black", "gray", "yellow", "teal", "brown"}


@pytest.fixture
def small_copy(tmp_path):
    """A copy of the dataset's files with three test images and their questions."""
    src = data_dir()
    root = tmp_path / "data"
    for folder in ("train", "test"):
        (root / folder / "images").mkdir(parents=True)
        rows = [r for r in json.loads((src / folder / "questions.json").read_text()) if r[2] in (0, 1, 10)]
        (root / folder / "questions.json").write_text(json.dumps(rows))
        for i in (0, 1, 10):
            shutil.copy(src / folder / "images" / f"{i}.png", root / folder / "images" / f"{i}.png")
    shutil.copy(src / "answers.txt", root / "answers.txt")
    return root


def test_a_small_copy_loads(small_copy):
    data = load_easy_vqa_splits(small_copy)
    # ids 0 and 10 are divisible by 10: validation images; 1 is a training image
    assert data["train"].images.size(0) == 1 and data["valid"].images.size(0) == 2
    assert data["test"].images.size(0) == 3


def test_missing_image_names_the_file(small_copy):
    (small_copy / "test" / "images" / "1.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"easy-VQA image .*test/images/1\.png is missing"):
        load_easy_vqa("test", root=small_copy)


def test_corrupt_image_names_the_file(small_copy):
    (small_copy / "test" / "images" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(ValueError, match=r"easy-VQA image .*test/images/0\.png is corrupt"):
        load_easy_vqa("test", root=small_copy)


def test_truncated_image_names_the_file(small_copy):
    path = small_copy / "test" / "images" / "10.png"
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(ValueError, match=r"test/images/10\.png is corrupt"):
        load_easy_vqa("test", root=small_copy)


def test_wrong_image_size_names_the_file(small_copy):
    Image.new("RGB", (32, 32)).save(small_copy / "test" / "images" / "0.png")
    with pytest.raises(ValueError, match=r"test/images/0\.png must be 64×64 RGB"):
        load_easy_vqa("test", root=small_copy)


@pytest.mark.parametrize(
    ("damage", "error", "message"),
    [
        (lambda root: (root / "test" / "questions.json").write_text("[[1, 2"), ValueError, "is not valid JSON"),
        (lambda root: (root / "test" / "questions.json").write_text('[["q?", "yes"]]'), ValueError,
         r"must hold \[question, answer, image id\] rows"),
        (lambda root: (root / "test" / "questions.json").unlink(), FileNotFoundError, "questions file"),
        (lambda root: (root / "answers.txt").unlink(), FileNotFoundError, "answers file"),
        (lambda root: (root / "answers.txt").write_text("yes\nno\n"), ValueError, "does not list"),
    ],
)
def test_broken_files_are_named(small_copy, damage, error, message):
    damage(small_copy)
    with pytest.raises(error, match=message):
        load_easy_vqa("test", root=small_copy)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="split must be one of 'train', 'valid', 'test'"):
        load_easy_vqa("validation")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_easy_vqa("test", root=tmp_path / "nowhere")
    with pytest.raises(TypeError, match="vocab must be"):
        load_easy_vqa("test", vocab={"a": 1})


def test_doctor_hook():
    ok, message = easy_vqa.available()
    assert ok and "easy-vqa" in message
    assert easy_vqa.NOTEBOOKS == ["13_visual_question_answering"]
