"""Atomic writes: a failure at any point leaves the old file byte for byte as it was."""

from __future__ import annotations

import pytest

from course_utils.files import atomic_open, atomic_write_bytes, atomic_write_json, atomic_write_text


def test_a_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "a.txt"
    atomic_write_text(path, "old\n")
    atomic_write_text(path, "new\n")
    assert path.read_text() == "new\n"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_an_exception_mid_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "a.bin"
    atomic_write_bytes(path, b"old")
    with pytest.raises(RuntimeError), atomic_open(path) as f:
        f.write(b"half of the new conten")
        raise RuntimeError("disk full")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_unserialisable_json_keeps_the_old_file(tmp_path):
    path = tmp_path / "m.json"
    atomic_write_json(path, {"a": 1})
    before = path.read_bytes()
    with pytest.raises(TypeError):
        atomic_write_json(path, {"a": object()})
    assert path.read_bytes() == before


def test_a_file_size_limit_keeps_the_old_file(tmp_path):
    resource = pytest.importorskip("resource")  # POSIX only: the limit stands in for a full disk
    import subprocess
    import sys

    path = tmp_path / "big.txt"
    atomic_write_text(path, "old\n")
    code = (
        "import resource; resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000));"
        "import signal; signal.signal(signal.SIGXFSZ, signal.SIG_IGN);"
        "from course_utils.files import atomic_write_text;"
        f"atomic_write_text({str(path)!r}, 'x' * 100_000)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["big.txt"]
    del resource


def test_mode_is_checked(tmp_path):
    with pytest.raises(ValueError, match="mode must be 'w' or 'wb', got 'a'"), atomic_open(tmp_path / "x", "a"):
        pass
