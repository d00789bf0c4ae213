"""Every loader of a data file: a missing, truncated or corrupt file gives an error naming the file
and the fix (never a bare UnicodeDecodeError, BadZipFile, JSONDecodeError or AssertionError).

Loaders and the failure modes tested here:

* ``datasets.digits.load_mnist`` (MNIST / Fashion-MNIST idx files): folder absent, some files
  absent, truncated file, corrupt header.
* ``datasets.translation.load_tatoeba`` (Tatoeba/Anki TSV, plain or zipped): missing file, wrong
  columns (one column, comma-separated, empty side), bad encoding (plain and inside the zip),
  checksum mismatch, truncated text file, truncated/corrupt zip, zip without a text member,
  corrupt parse cache (recovered from).
* ``datasets.scenes``, ``datasets.digits.load_digits_split`` and the translation grammar corpus
  read no files (generated, or shipped inside scikit-learn): only their doctor entry is checked.
* ``results.load_metrics`` (``reports/metrics.json``): corrupt or truncated JSON.
* the torchrun trainer's checkpoint (``checkpoint.save_state``): missing and truncated file
  (``checkpoint.load_checkpoint`` has its own tests in test_checkpoint.py).
"""

from __future__ import annotations

import re
import zipfile

import pytest
import torch

from course_utils.datasets import data_sources
from course_utils.datasets.digits import load_mnist
from course_utils.datasets.translation import load_tatoeba, sha256_file

GOOD = "Go.\tVa !\tCC-BY 2.0 (France)\nI see the cat.\tJe vois le chat.\tCC-BY 2.0 (France)\n"


def _names(path) -> str:
    return re.escape(str(path))


# ---- MNIST ------------------------------------------------------------------------------------

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _idx(kind: str, n: int) -> bytes:
    """A valid idx file (the MNIST format): magic, sizes, then the uint8 data."""
    if kind == "images":
        header = bytes([0, 0, 8, 3]) + b"".join(x.to_bytes(4, "big") for x in (n, 28, 28))
        return header + bytes(n * 28 * 28)
    header = bytes([0, 0, 8, 1]) + n.to_bytes(4, "big")
    return header + bytes(range(n))


def _write_mnist(root, n=3, folder="MNIST"):
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    for name in MNIST_FILES:
        (raw / name).write_bytes(_idx("images" if "images" in name else "labels", n))
    return raw


def test_mnist_loads_good_files(tmp_path):
    _write_mnist(tmp_path, n=3)
    x, y = load_mnist(tmp_path)
    assert x.shape == (3, 1, 28, 28) and y.tolist() == [0, 1, 2]


def test_mnist_absent_names_the_folder_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_mnist(tmp_path, name="fashion-mnist")
    msg = str(err.value)
    assert str(tmp_path / "FashionMNIST" / "raw") in msg
    assert "download=True" in msg and "never downloads at run time" in msg


def test_mnist_some_files_absent(tmp_path):
    raw = _write_mnist(tmp_path)
    (raw / "t10k-images-idx3-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match=_names(raw) + ".*download=True"):
        load_mnist(tmp_path, train=False)


@pytest.mark.parametrize("damage", ["truncated", "bad header"])
def test_mnist_corrupt_file_names_the_file_and_the_fix(tmp_path, damage):
    raw = _write_mnist(tmp_path, n=5)
    victim = raw / "train-images-idx3-ubyte"
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x07\x07" + data[2:])
    with pytest.raises(ValueError) as err:
        load_mnist(tmp_path)
    msg = str(err.value)
    assert str(raw) in msg  # the folder with the damaged files
    assert "corrupt" in msg and "download" in msg  # what happened and the fix
    assert "not on disk" not in msg  # the files *are* there: don't send the learner looking


# ---- Tatoeba / Anki TSV -----------------------------------------------------------------------


def test_tatoeba_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=_names(tmp_path / "fra.txt") + ".*manythings.org/anki"):
        load_tatoeba(tmp_path / "fra.txt")


@pytest.mark.parametrize(
    "line, fields",
    [("Go.", "1 field"), ("Go.,Va !,CC-BY", "1 field"), ("Go.\t\tCC-BY", "3 fields"), ("\tVa !", "2 fields")],
)
def test_tatoeba_wrong_columns_name_file_line_and_format(tmp_path, line, fields):
    f = tmp_path / "fra.txt"
    f.write_text(GOOD + line + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=_names(f) + rf", line 3: expected 'english<TAB>french\[<TAB>attribution\]'.*{fields}"):
        load_tatoeba(f)


def test_tatoeba_bad_encoding_names_file_and_fix(tmp_path):
    f = tmp_path / "fra.txt"
    f.write_bytes(GOOD.encode("utf-8") + "Where is the station?\tOù est la gare ?\n".encode("latin-1"))
    with pytest.raises(ValueError) as err:
        load_tatoeba(f)
    msg = str(err.value)
    assert str(f) in msg and "UTF-8" in msg
    assert "line 3" in msg  # where the bad byte is
    assert isinstance(err.value, ValueError)


def test_tatoeba_bad_encoding_inside_a_zip(tmp_path):
    z = tmp_path / "fra-eng.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("fra.txt", "Où ?\tOù ?\n".encode("cp1252"))
    with pytest.raises(ValueError, match=_names(z) + ":fra.txt.*UTF-8"):
        load_tatoeba(z)


def test_tatoeba_checksum_mismatch_names_both_digests(tmp_path):
    f = tmp_path / "fra.txt"
    f.write_text(GOOD, encoding="utf-8")
    with pytest.raises(ValueError, match=_names(f) + f": expected sha256 {'a' * 64}, got {sha256_file(f)}.*download it again"):
        load_tatoeba(f, sha256="a" * 64)


def test_tatoeba_truncated_text_file_names_the_last_line(tmp_path):
    f = tmp_path / "fra.txt"
    f.write_text(GOOD + "The dog sleeps.\tLe ch", encoding="utf-8")
    full = f.read_bytes()
    f.write_bytes(full[: full.index(b"\tLe ch")])  # cut before the tab: only the English side left
    with pytest.raises(ValueError, match=_names(f) + r", line 3: .*'The dog sleeps\.'.*1 field"):
        load_tatoeba(f)


def test_tatoeba_truncated_mid_character_is_an_encoding_error_naming_the_file(tmp_path):
    f = tmp_path / "fra.txt"
    data = (GOOD + "Hi.\tSalut ça va\n").encode("utf-8")
    f.write_bytes(data[: data.index("ç".encode()) + 1])  # half of the two bytes of "ç"
    with pytest.raises(ValueError, match=_names(f) + ".*UTF-8"):
        load_tatoeba(f)


@pytest.mark.parametrize("damage", ["truncated", "not a zip"])
def test_tatoeba_corrupt_zip_names_the_file_and_fix(tmp_path, damage):
    z = tmp_path / "fra-eng.zip"
    with zipfile.ZipFile(z, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("fra.txt", GOOD * 200)
    data = z.read_bytes()
    z.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"<html>404</html>")
    with pytest.raises(ValueError) as err:
        load_tatoeba(z)
    msg = str(err.value)
    assert str(z) in msg and "zip" in msg and "download it again" in msg


def test_tatoeba_zip_without_a_text_member(tmp_path):
    z = tmp_path / "fra-eng.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("readme.md", "hello")
    with pytest.raises(ValueError, match=_names(z) + r" has no \.txt member"):
        load_tatoeba(z)


def test_tatoeba_corrupt_cache_is_rebuilt(tmp_path):
    f = tmp_path / "fra.txt"
    f.write_text(GOOD, encoding="utf-8")
    cache = tmp_path / "cache"
    expected = load_tatoeba(f, cache_dir=cache)
    (entry,) = cache.iterdir()
    entry.write_text('[["Go.", "V', encoding="utf-8")  # an interrupted write
    assert load_tatoeba(f, cache_dir=cache) == expected
    assert load_tatoeba(f, cache_dir=cache) == expected  # and the cache is good again
    assert [p.name for p in cache.iterdir()] == [entry.name]


# ---- data sources that read no files ------------------------------------------------------------


def test_every_data_source_tells_the_doctor_what_to_do():
    names = set()
    for module in data_sources():
        ok, detail = module.available()
        assert isinstance(ok, bool) and isinstance(detail, str) and detail, module.__name__
        assert isinstance(module.FIX, str) and module.FIX.strip(), module.__name__
        assert module.NOTEBOOKS, module.__name__
        names.add(module.__name__.rsplit(".", 1)[-1])
    assert {"digits", "scenes", "translation"} <= names


# ---- reports/metrics.json ----------------------------------------------------------------------


@pytest.mark.parametrize("content", ['{"results": [{"notebook": "01"', "", "not json"])
def test_corrupt_metrics_file_names_the_file_and_fix(tmp_path, content):
    from course_utils.results import load_metrics

    path = tmp_path / "metrics.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=_names(path) + ".*(delete|make execute)"):
        load_metrics(path)


# ---- the torchrun trainer's checkpoints --------------------------------------------------------


def _distributed_checkpoint(tmp_path):
    from course_utils.checkpoint import save_state

    model = torch.nn.Linear(64, 64)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return save_state(tmp_path / "ckpt.pt", model_state=model.state_dict(),
                           optimizer_state=opt.state_dict(), step=1, config={})


def test_distributed_checkpoint_missing(tmp_path):
    from course_utils.checkpoint import load_checkpoint

    with pytest.raises(FileNotFoundError, match=_names(tmp_path / "nope.pt")):
        load_checkpoint(tmp_path / "nope.pt")


def test_distributed_checkpoint_truncated_names_the_file(tmp_path):
    from course_utils.checkpoint import load_checkpoint

    path = _distributed_checkpoint(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=_names(path)):
        load_checkpoint(path)
