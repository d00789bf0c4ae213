"""scikit-learn digits split (stratified, deterministic) and the offline-only MNIST loader."""

from __future__ import annotations

import pytest
import torch

from course_utils.datasets import data_sources, digits
from course_utils.datasets.digits import load_digits_split, load_mnist


def test_split_shapes_range_and_disjoint():
    s = load_digits_split()
    assert s.x_train.shape == (1437, 1, 8, 8) and s.x_test.shape == (360, 1, 8, 8)
    assert s.x_train.dtype == torch.float32 and s.y_train.dtype == torch.long
    assert 0.0 <= s.x_train.min() and s.x_train.max() <= 1.0
    # no test image is also a training image (the digits have no exact duplicates across the split)
    train = {tuple(x.flatten().tolist()) for x in s.x_train}
    assert sum(tuple(x.flatten().tolist()) in train for x in s.x_test) == 0


def test_split_is_stratified():
    s = load_digits_split(test_size=0.2)
    total = torch.cat([s.y_train, s.y_test]).bincount().float()
    test = s.y_test.bincount().float()
    # each class's share of the test set is within one image of 20% of that class
    assert torch.all((test - 0.2 * total).abs() <= 1.0), (test, total)


def test_split_is_deterministic_and_seeded():
    a, b = load_digits_split(), load_digits_split()
    assert torch.equal(a.x_test, b.x_test) and torch.equal(a.y_train, b.y_train)
    c = load_digits_split(seed=1)
    assert not torch.equal(a.y_test, c.y_test)


def test_bad_test_size():
    with pytest.raises(ValueError, match="test_size"):
        load_digits_split(test_size=1.5)


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_mnist_absent_gives_clear_error(tmp_path, name, folder):
    with pytest.raises(FileNotFoundError) as info:
        load_mnist(tmp_path, name=name)
    message = str(info.value)
    assert str(tmp_path / folder / "raw") in message  # names the path it looked in
    assert "download=True" in message  # says what to do
    assert not any(tmp_path.rglob("*ubyte*"))  # and downloaded nothing


def test_mnist_bad_name():
    with pytest.raises(ValueError, match="mnist"):
        load_mnist(name="cifar")


def test_doctor_sees_the_digits():
    assert digits in data_sources()
    ok, detail = digits.available()
    assert ok and "1797" in detail
    assert digits.NOTEBOOKS == ("11_vision_transformer",) and digits.FIX


@pytest.mark.parametrize("kwargs, error, says", [
    ({"test_size": 0.001}, ValueError, "test_size must leave at least one image of each of the 10 digits"),
    ({"test_size": 0.999}, ValueError, "(1796 test and 1 training images of 1797)"),
    ({"test_size": "0.2"}, TypeError, "test_size must be a real number, got str '0.2'"),
    ({"test_size": float("nan")}, ValueError, "test_size must be a real number in (0.0, 1.0), got nan"),
    ({"seed": -1}, ValueError, "seed must be an int in [0, 4294967295], got -1"),
    ({"seed": 1.5}, TypeError, "seed must be an int, got float 1.5"),
])
def test_split_bad_arguments_name_themselves(kwargs, error, says):
    with pytest.raises(error) as info:
        load_digits_split(**kwargs)
    assert says in str(info.value)


def test_smallest_valid_test_share_keeps_every_digit_in_both_splits():
    split = load_digits_split(test_size=0.0056)  # 11 test images: one of each digit at least
    assert split.y_test.unique().numel() == 10 and split.y_train.unique().numel() == 10


def test_mnist_bad_arguments(tmp_path):
    with pytest.raises(TypeError, match="name must be 'mnist' or 'fashion-mnist', got int 3"):
        load_mnist(tmp_path, name=3)
    with pytest.raises(TypeError, match="train must be True or False"):
        load_mnist(tmp_path, train="no")
    with pytest.raises(TypeError, match="root must be a folder path"):
        load_mnist(123)
