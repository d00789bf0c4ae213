"""Optional downloads for online learners: verified, atomic, never a half-written file.

No notebook downloads anything at run time (the course runs offline). A learner who *wants*
real data (e.g. the Tatoeba/Anki English-French pairs) fetches it once, while online, with
:func:`fetch`, which

1. streams the response into a temporary file **in the destination folder** (so the final
   rename never crosses a file system),
2. checks that it received as many bytes as the server announced (``Content-Length``),
3. verifies the SHA-256 when one is given,
4. renames the temporary file onto ``dest`` with ``os.replace`` (atomic: other readers see the
   old file or the complete new one, never a prefix),

and, whatever goes wrong (a cut connection, a timeout, a checksum mismatch, Ctrl-C), deletes
the temporary file, so no partial file is ever left behind. Each error names the URL, the
destination and the fix.

A file that is already at ``dest`` (and matches ``sha256``, when given) is not downloaded again:
``dest`` is a cache. :func:`verify_file` checks a file you copied by hand.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from .checks import check_bool, check_path

__all__ = ["ChecksumError", "DownloadError", "fetch", "sha256_file", "verify_file"]

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 16


class DownloadError(OSError):
    """A download failed (network error, HTTP error, cut connection, timeout)."""


class ChecksumError(ValueError):
    """A file's SHA-256 differs from the expected one; the message gives both digests."""


def _check_sha256(sha256: object) -> str:
    if not isinstance(sha256, str) or not _HEX64.match(sha256.strip().lower()):
        raise ValueError(
            f"sha256 must be a string of 64 hexadecimal digits, got {sha256!r}"
        )
    return sha256.strip().lower()


def sha256_file(path: str | Path) -> str:
    """The SHA-256 hex digest of a file, read in chunks (large files never sit in memory).

    >>> import tempfile, pathlib
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "hello.txt"
    >>> _ = f.write_bytes(b"hello")
    >>> sha256_file(f)[:16]
    '2cf24dba5fb0a30e'
    """
    path = check_path("path", path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_file(path: str | Path, sha256: str) -> str:
    """Check that ``path`` exists and has SHA-256 ``sha256``; return the digest.

    A missing file raises ``FileNotFoundError`` and a different digest raises
    :class:`ChecksumError` (a ``ValueError``); both name the file and say what to do.

    >>> import tempfile, pathlib
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "hello.txt"
    >>> _ = f.write_bytes(b"hello")
    >>> verify_file(f, "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824")[:8]
    '2cf24dba'
    >>> verify_file(f, "0" * 64)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    course_utils.download.ChecksumError: checksum mismatch for .../hello.txt: expected sha256 000..., got 2cf24dba...
    """
    expected = _check_sha256(sha256)
    path = check_path("path", path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist (or is not a file): download it again, or copy it there by hand "
            f"(expected sha256 {expected})"
        )
    got = sha256_file(path)
    if got != expected:
        raise ChecksumError(
            f"checksum mismatch for {path}: expected sha256 {expected}, got {got}. The file is "
            "corrupt, truncated or a different version: delete it and download it again."
        )
    return got


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def fetch(
    url: str,
    dest: str | Path,
    sha256: str | None = None,
    *,
    timeout: float = 60.0,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Download ``url`` to ``dest`` safely (see the module docstring); return ``dest``.

    * ``sha256``: the expected hex digest; the download is verified before it becomes ``dest``.
      A mismatch raises :class:`ChecksumError` and leaves no file (an older ``dest`` is kept).
    * ``dest`` already there: returned as is (``sha256`` given: only if it matches; a corrupt
      cached file is downloaded again and replaced). ``overwrite=True`` always downloads.
    * ``timeout``: seconds without data before giving up (``DownloadError``).
    * ``progress``: show a ``tqdm`` progress bar.

    ``http(s)://`` and ``file://`` URLs work.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> src = d / "src.txt"; _ = src.write_text("Go.\\tVa !\\n", encoding="utf-8")
    >>> out = fetch(src.as_uri(), d / "cache" / "fra.txt", sha256=sha256_file(src))
    >>> out.read_text(encoding="utf-8"), sorted(p.name for p in out.parent.iterdir())
    ('Go.\\tVa !\\n', ['fra.txt'])
    """
    if not isinstance(url, str) or not url:
        raise TypeError(f"url must be a non-empty string, got {url!r}")
    expected = _check_sha256(sha256) if sha256 is not None else None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < math.inf:
        # (NaN or inf would never time out)
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    check_bool("overwrite", overwrite)
    check_bool("progress", progress)
    dest = check_path("dest", dest)
    if dest.is_dir():
        raise IsADirectoryError(f"dest must be a file path, got the folder {dest} (add a file name)")

    if dest.is_file() and not overwrite:
        if expected is None or sha256_file(dest) == expected:
            return dest  # cached

    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    where = f"{url} to {dest}"
    fix = (
        "Check the address and your connection and run it again (nothing was written), "
        f"or download the file by hand and save it as {dest}."
    )
    try:
        with os.fdopen(fd, "wb") as out:
            h = hashlib.sha256()
            req = urllib.request.Request(url, headers={"User-Agent": "course-utils"})
            try:
                response = urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 (learner's URL)
            except urllib.error.HTTPError as exc:
                raise DownloadError(f"could not download {where}: HTTP {exc.code} {exc.reason}. {fix}") from exc
            except (urllib.error.URLError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                raise DownloadError(f"could not download {where}: {reason}. {fix}") from exc
            with response:
                length = response.headers.get("Content-Length")
                expected_bytes = int(length) if length and length.isdigit() else None
                bar = None
                if progress:
                    from tqdm.auto import tqdm

                    bar = tqdm(total=expected_bytes, unit="B", unit_scale=True, desc=dest.name)
                received = 0
                try:
                    while True:
                        try:
                            chunk = response.read(_CHUNK)
                        except Exception as exc:  # IncompleteRead, timeout, reset
                            raise DownloadError(
                                f"the connection broke while downloading {where} after {received} "
                                f"bytes ({type(exc).__name__}: {exc}). {fix}"
                            ) from exc
                        if not chunk:
                            break
                        out.write(chunk)
                        h.update(chunk)
                        received += len(chunk)
                        if bar is not None:
                            bar.update(len(chunk))
                finally:
                    if bar is not None:
                        bar.close()
            if expected_bytes is not None and received != expected_bytes:
                raise DownloadError(
                    f"incomplete download of {where}: got {received} of {expected_bytes} bytes "
                    f"(the connection was cut). {fix}"
                )
            out.flush()
            os.fsync(out.fileno())
        got = h.hexdigest()
        if expected is not None and got != expected:
            raise ChecksumError(
                f"checksum mismatch for {where}: expected sha256 {expected}, got {got} "
                f"({received} bytes). The server sent a different or corrupt file; nothing was "
                "saved. Check the URL and the expected checksum, then try again."
            )
        os.chmod(tmp, 0o644)  # mkstemp makes it private (0600); a data file is readable
        os.replace(tmp, dest)
    except BaseException:  # including KeyboardInterrupt: never leave the .part file behind
        _remove(tmp)
        raise
    return dest
