"""Atomic file writes: a file the course writes is either the old one or the new one, never half.

Every writer of the course (notebooks saved by ``make execute``, the reports, the README's
course map, checkpoints) goes through these. The new content goes to a temporary file in the
same folder, is flushed to disk, and then replaces the old file with ``os.replace``, which is
atomic on Linux, macOS and Windows. If anything fails before that (a full disk, an exception,
Ctrl-C), the temporary file is removed and the old file is left byte for byte as it was.

>>> import tempfile, pathlib
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> atomic_write_json(folder / "scores.json", {"bleu": 92.4})
>>> (folder / "scores.json").read_text()
'{\\n  "bleu": 92.4\\n}\\n'
>>> sorted(p.name for p in folder.iterdir())      # no temporary file left behind
['scores.json']
"""

from __future__ import annotations

import codecs
import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from .checks import check_path, check_str, describe

__all__ = ["atomic_open", "atomic_write_bytes", "atomic_write_json", "atomic_write_many",
           "atomic_write_text"]


def _match_permissions(tmp: str, path: Path) -> None:
    """The new file gets the old file's permissions, or the usual ones for a new file
    (``mkstemp`` creates it readable by its owner only)."""
    if path.exists():
        mode = path.stat().st_mode & 0o777
    else:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    with contextlib.suppress(OSError):
        os.chmod(tmp, mode)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb", encoding: str | None = None) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on a clean exit it replaces ``path``.

    Use it for writers that need a file object (``torch.save``, ``nbformat.write``)::

        with atomic_open("checkpoint.pt") as f:
            torch.save(state, f)

    On an exception the temporary file is deleted and ``path`` is untouched.
    """
    path = check_path("path", path)
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    if encoding is not None:
        _check_encoding(encoding)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, encoding=encoding if mode == "w" else None,
                       newline="" if mode == "w" else None) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        _match_permissions(tmp, path)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _check_encoding(encoding: Any) -> None:
    check_str("encoding", encoding, allow_empty=False)
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise ValueError(f"encoding must be a text encoding such as 'utf-8', got {encoding!r}") from None


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    check_path("path", path)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {describe(data)} (write text with "
                        "atomic_write_text)")
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically (newlines written as given, on every platform)."""
    check_path("path", path)
    check_str("text", text)
    _check_encoding(encoding)
    with atomic_open(path, "w", encoding=encoding) as f:
        f.write(text)


def atomic_write_json(path: str | os.PathLike[str], data: Any, **dumps_kwargs: Any) -> None:
    """Write ``data`` as indented JSON (UTF-8, a final newline) to ``path`` atomically."""
    check_path("path", path)
    dumps_kwargs.setdefault("indent", 2)
    dumps_kwargs.setdefault("ensure_ascii", False)
    try:
        text = json.dumps(data, **dumps_kwargs)
    except (TypeError, ValueError) as exc:  # an object JSON cannot hold, NaN with allow_nan=False
        raise type(exc)(f"data cannot be written as JSON ({exc}); got {describe(data)}") from exc
    atomic_write_text(path, text + "\n")


def atomic_write_many(contents: dict[str | os.PathLike[str], str | bytes]) -> None:
    """Write several files as one change: all of them new, or (on any failure) none.

    Every new content is first written in full to a temporary file beside its target; only when
    all of them are on disk are they renamed over their targets. A rename does not run out of
    space, but it can be refused (on Windows, while another program holds the file open): each
    old file is kept (a hard link, or a copy) until every rename has succeeded, and a refused
    rename puts the files already renamed back as they were. ``make execute`` saves a notebook,
    the metrics, the run times and the README this way.

    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> atomic_write_many({folder / "a.txt": "A", folder / "b.bin": b"B"})
    >>> sorted(p.name for p in folder.iterdir()), (folder / "a.txt").read_text()
    (['a.txt', 'b.bin'], 'A')
    """
    if not isinstance(contents, Mapping):
        raise TypeError(f"contents must be a dict {{path: str or bytes}}, got {describe(contents)}")
    for target, data in contents.items():
        check_path("contents key", target)
        if not isinstance(data, (str, bytes, bytearray)):
            raise TypeError(f"contents[{str(target)!r}] must be str or bytes, got {describe(data)}")
    staged: list[tuple[str, Path]] = []
    try:
        for target, data in contents.items():
            path = Path(target)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            staged.append((tmp, path))
            raw = data.encode("utf-8") if isinstance(data, str) else data
            with os.fdopen(fd, "wb") as f:
                f.write(raw)
                f.flush()
                os.fsync(f.fileno())
            _match_permissions(tmp, path)
    except BaseException:
        _remove(tmp for tmp, _ in staged)
        raise
    _rename_all(staged)


def _rename_all(staged: list[tuple[str, Path]]) -> None:
    """Rename every staged file onto its target; on a failure, put the renamed ones back."""
    kept: list[str | None] = []  # the old file of each target (None: there was none)
    renamed = 0
    try:
        for tmp, path in staged:
            kept.append(_keep_old(path))
            os.replace(tmp, path)
            renamed += 1
    except BaseException:
        for (_, path), old in reversed(list(zip(staged[:renamed], kept, strict=False))):
            try:
                if old is None:
                    os.unlink(path)
                else:
                    os.replace(old, path)
            except OSError:  # cannot put it back: leave the old copy beside it, never delete it
                continue
        _remove([tmp for tmp, _ in staged[renamed:]] + [k for k in kept[renamed:] if k])
        raise
    _remove(k for k in kept if k)


def _keep_old(path: Path) -> str | None:
    """A second name for ``path``'s current content (a hard link, else a copy); None if none."""
    if not path.exists():
        return None
    fd, keep = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old.tmp")
    os.close(fd)
    try:
        os.unlink(keep)
        os.link(path, keep)
    except OSError:  # no hard links here (some file systems): a copy
        try:
            shutil.copy2(path, keep)
        except BaseException:
            _remove([keep])
            raise
    return keep


def _remove(paths: Iterable[str]) -> None:
    for p in paths:
        with contextlib.suppress(OSError):
            os.unlink(p)
