"""Handwritten digits for notebook 11: scikit-learn's 8×8 digits, and MNIST if it is on disk.

* :func:`load_digits_split` — the 1,797 8×8 images shipped *inside* scikit-learn (no download),
  with a fixed, stratified train/test split, as float tensors in ``[0, 1]``.
* :func:`load_mnist` — MNIST or Fashion-MNIST through ``torchvision``, **only if the files are
  already on disk**. It never downloads; when the files are missing it raises a
  ``FileNotFoundError`` that names the folder it looked in and says how to get them.

``python -m course_utils.doctor`` calls :func:`available`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from course_utils.checks import check_bool, check_int, check_real, describe

__all__ = ["DigitsSplit", "available", "default_data_root", "load_digits_split", "load_mnist"]

NOTEBOOKS = ("11_vision_transformer",)
FIX = (
    "the 8×8 digits ship with scikit-learn: run `make install` (or `pip install scikit-learn`). "
    "MNIST/Fashion-MNIST are optional; to use them, download them once while online with "
    "`python -c \"import torchvision; torchvision.datasets.MNIST('data', download=True)\"`"
)

_MNIST_NAMES = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "fashionmnist": "FashionMNIST"}


@dataclass(frozen=True)
class DigitsSplit:
    """A train/test split: images ``(N, 1, H, W)`` float32 in ``[0, 1]``, labels ``(N,)`` int64."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int = 10

    def __repr__(self) -> str:
        return (
            f"DigitsSplit(train {tuple(self.x_train.shape)}, test {tuple(self.x_test.shape)}, "
            f"{self.num_classes} classes)"
        )


def load_digits_split(test_size: float = 0.2, seed: int = 0) -> DigitsSplit:
    """scikit-learn's digits, split once, stratified by class, the same split on every machine.

    Pixels are scaled from 0..16 to ``[0, 1]``. With the defaults: 1,437 training and 360 test
    images (36 of each digit, within one).

    >>> split = load_digits_split()
    >>> split
    DigitsSplit(train (1437, 1, 8, 8), test (360, 1, 8, 8), 10 classes)
    >>> split.y_test.bincount().tolist()
    [36, 36, 35, 37, 36, 37, 36, 36, 35, 36]
    """
    check_real("test_size", test_size, 0.0, 1.0, low_open=True, high_open=True)
    check_int("seed", seed, low=0, high=2**32 - 1)  # NumPy's range for a random_state
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    n, classes = len(data.target), len(set(data.target.tolist()))
    n_test = math.ceil(test_size * n)
    if n_test < classes or n - n_test < classes:
        raise ValueError(
            f"test_size must leave at least one image of each of the {classes} digits in both splits "
            f"(a test share between {classes / n:.4f} and {1 - classes / n:.4f}), got {test_size} "
            f"({n_test} test and {n - n_test} training images of {n})"
        )
    images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (1797, 1, 8, 8)
    labels = torch.tensor(data.target, dtype=torch.long)  # (1797,)
    idx_train, idx_test = train_test_split(
        torch.arange(len(labels)).numpy(), test_size=test_size, random_state=seed,
        stratify=labels.numpy(),
    )
    idx_train, idx_test = torch.as_tensor(idx_train), torch.as_tensor(idx_test)
    return DigitsSplit(images[idx_train], labels[idx_train], images[idx_test], labels[idx_test])


def default_data_root() -> Path:
    """Where the course looks for downloaded data: ``$COURSE_DATA_DIR``, else ``data/`` in the repo."""
    override = os.environ.get("COURSE_DATA_DIR")
    if override:
        return Path(override)
    return Path(__file__).resolve().parent.parent.parent / "data"


def _mnist_class(name: str):
    key = name.lower()
    if key not in _MNIST_NAMES:
        raise ValueError(f"name must be 'mnist' or 'fashion-mnist', got {name!r}")
    import torchvision

    return getattr(torchvision.datasets, _MNIST_NAMES[key])


def load_mnist(
    root: str | Path | None = None, name: str = "mnist", train: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST or Fashion-MNIST from ``root`` as ``(images (N, 1, 28, 28) in [0, 1], labels (N,))``.

    Never downloads. ``root`` is the folder that holds ``MNIST/raw/`` (or ``FashionMNIST/raw/``),
    as torchvision lays it out; default :func:`default_data_root`.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as empty:
    ...     load_mnist(empty)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    FileNotFoundError: MNIST is not on disk: looked for .../MNIST/raw ...
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be 'mnist' or 'fashion-mnist', got {describe(name)}")
    if root is not None and not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"root must be a folder path (str or pathlib.Path) or None, got {describe(root)}")
    check_bool("train", train)
    cls = _mnist_class(name)
    root = Path(root) if root is not None else default_data_root()
    folder = root / cls.__name__ / "raw"
    try:
        dataset = cls(str(root), train=train, download=False)
    except (RuntimeError, AssertionError, ValueError, TypeError) as exc:
        if not (isinstance(exc, RuntimeError) and "not found" in str(exc)):
            # the files are there but do not parse: truncated or corrupt
            raise ValueError(
                f"the {cls.__name__} files in {folder} are corrupt or truncated "
                f"({type(exc).__name__}: {exc}). Delete them and download them again while online: "
                f"python -c \"import torchvision; torchvision.datasets.{cls.__name__}('{root}', "
                "download=True)\""
            ) from exc
        raise FileNotFoundError(
            f"{cls.__name__} is not on disk: looked for {folder} and found no "
            f"{'training' if train else 'test'} files there. The course never downloads at run time. "
            f"While online, run once: python -c \"import torchvision; "
            f"torchvision.datasets.{cls.__name__}('{root}', download=True)\" "
            f"(or copy the four *-ubyte files into {folder}), then call load_mnist again. "
            "Notebook 11 itself only needs scikit-learn's digits (load_digits_split)."
        ) from exc
    images = dataset.data.unsqueeze(1).float() / 255.0  # (N, 1, 28, 28)
    return images, dataset.targets.long()


def available() -> tuple[bool, str]:
    """For the doctor: are the digits there (they ship with scikit-learn), and is MNIST on disk?

    >>> ok, detail = available()
    >>> ok
    True
    """
    try:
        import sklearn
        from sklearn.datasets import load_digits

        n = len(load_digits().target)
    except Exception as exc:  # sklearn missing or broken
        return False, f"scikit-learn's digits could not be loaded ({type(exc).__name__}: {exc})"
    root = default_data_root()
    extra = []
    for key in ("mnist", "fashion-mnist"):
        folder = root / _MNIST_NAMES[key] / "raw"
        present = folder.is_dir() and any(folder.glob("*-ubyte*"))
        extra.append(f"{_MNIST_NAMES[key]} {'on disk' if present else 'absent (optional)'}")
    return True, f"digits: {n} images 8×8 from scikit-learn {sklearn.__version__}; " + ", ".join(extra)
