"""course_utils.download.fetch against a local HTTP server on 127.0.0.1: good file, a connection
cut mid-file, wrong content, HTTP errors, a stalled server, Ctrl-C — never a partial file left."""

from __future__ import annotations

import hashlib
import http.server
import threading
import time

import pytest

from course_utils import download
from course_utils.download import ChecksumError, DownloadError, fetch, sha256_file, verify_file

PAYLOAD = ("Go.\tVa !\tCC-BY 2.0\n" * 2000).encode("utf-8")  # ~40 kB: several chunks
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    hits: dict[str, int] = {}

    def log_message(self, *args):  # keep pytest's output clean
        pass

    def do_GET(self):  # noqa: N802 (http.server's name)
        _Handler.hits[self.path] = _Handler.hits.get(self.path, 0) + 1
        if self.path == "/good.txt":
            self._send(PAYLOAD)
        elif self.path == "/wrong.txt":  # right length, different bytes
            self._send(PAYLOAD.replace(b"Va", b"Vb"))
        elif self.path == "/cut.txt":
            # announce the whole file, send a third of it, then hang up
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD[: len(PAYLOAD) // 3])
            self.wfile.flush()
            self.close_connection = True
        elif self.path == "/stall.txt":
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD[:100])
            self.wfile.flush()
            time.sleep(3)  # longer than the client's timeout
            self.close_connection = True
        else:
            self.send_error(404, "Not Found")

    def _send(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _files(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_good_file_is_verified_and_renamed_into_place(server, tmp_path):
    dest = tmp_path / "cache" / "fra.txt"
    assert fetch(f"{server}/good.txt", dest, sha256=SHA) == dest
    assert dest.read_bytes() == PAYLOAD
    assert _files(dest.parent) == ["fra.txt"]  # no temporary file left
    assert verify_file(dest, SHA.upper()) == SHA  # upper-case digests are accepted


def test_cached_file_is_not_downloaded_again(server, tmp_path):
    dest = tmp_path / "fra.txt"
    fetch(f"{server}/good.txt", dest, sha256=SHA)
    before = _Handler.hits.get("/good.txt", 0)
    fetch(f"{server}/good.txt", dest, sha256=SHA)
    fetch(f"{server}/good.txt", dest)
    assert _Handler.hits.get("/good.txt", 0) == before


def test_corrupt_cached_file_is_replaced(server, tmp_path):
    dest = tmp_path / "fra.txt"
    dest.write_bytes(PAYLOAD[:100])  # a truncated file from some earlier tool
    fetch(f"{server}/good.txt", dest, sha256=SHA)
    assert dest.read_bytes() == PAYLOAD and _files(tmp_path) == ["fra.txt"]


def test_cut_connection_leaves_no_partial_file(server, tmp_path):
    dest = tmp_path / "dl" / "fra.txt"
    with pytest.raises(DownloadError) as err:
        fetch(f"{server}/cut.txt", dest)  # even without a checksum, the length gives it away
    msg = str(err.value)
    assert f"{server}/cut.txt" in msg and str(dest) in msg
    assert "run it again" in msg
    assert _files(dest.parent) == []


def test_cut_connection_keeps_an_older_good_file(server, tmp_path):
    dest = tmp_path / "fra.txt"
    dest.write_bytes(b"old but complete")
    with pytest.raises(DownloadError):
        fetch(f"{server}/cut.txt", dest, overwrite=True)
    assert dest.read_bytes() == b"old but complete" and _files(tmp_path) == ["fra.txt"]


def test_wrong_content_fails_the_checksum_and_leaves_nothing(server, tmp_path):
    dest = tmp_path / "fra.txt"
    with pytest.raises(ChecksumError) as err:
        fetch(f"{server}/wrong.txt", dest, sha256=SHA)
    msg = str(err.value)
    assert f"expected sha256 {SHA}" in msg and f"{server}/wrong.txt" in msg and str(dest) in msg
    assert isinstance(err.value, ValueError)
    assert _files(tmp_path) == []


def test_http_error_names_the_status_and_url(server, tmp_path):
    with pytest.raises(DownloadError, match=r"HTTP 404.*missing\.txt|missing\.txt.*HTTP 404"):
        fetch(f"{server}/missing.txt", tmp_path / "x.txt")
    assert _files(tmp_path) == []


def test_refused_connection_is_a_clear_error(tmp_path):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with pytest.raises(DownloadError, match=rf"could not download http://127\.0\.0\.1:{port}/a"):
        fetch(f"http://127.0.0.1:{port}/a", tmp_path / "a.txt", timeout=5)
    assert _files(tmp_path) == []


def test_stalled_server_times_out_and_leaves_nothing(server, tmp_path):
    with pytest.raises(DownloadError, match=r"connection broke while downloading .*stall\.txt.*timed out"):
        fetch(f"{server}/stall.txt", tmp_path / "s.txt", timeout=0.5)
    assert _files(tmp_path) == []


def test_ctrl_c_mid_download_leaves_nothing(server, tmp_path, monkeypatch):
    real_sha256 = hashlib.sha256

    class Interrupting:
        def __init__(self):
            self.calls = 0
            self._h = real_sha256()

        def update(self, chunk):
            self.calls += 1
            if self.calls == 1:  # after the first chunk has been written
                raise KeyboardInterrupt
            self._h.update(chunk)

        def hexdigest(self):
            return self._h.hexdigest()

    monkeypatch.setattr(download.hashlib, "sha256", Interrupting)
    with pytest.raises(KeyboardInterrupt):
        fetch(f"{server}/good.txt", tmp_path / "fra.txt")
    assert _files(tmp_path) == []


def test_file_urls_work(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(PAYLOAD)
    out = fetch(src.as_uri(), tmp_path / "out" / "copy.bin", sha256=SHA)
    assert out.read_bytes() == PAYLOAD


def test_bad_arguments_name_what_was_expected(tmp_path):
    with pytest.raises(ValueError, match="64 hexadecimal digits, got 'abc'"):
        fetch("http://127.0.0.1:1/x", tmp_path / "x", sha256="abc")
    with pytest.raises(TypeError, match="url must be a non-empty string"):
        fetch(None, tmp_path / "x")  # type: ignore[arg-type]
    with pytest.raises(IsADirectoryError, match="add a file name"):
        fetch("http://127.0.0.1:1/x", tmp_path)
    with pytest.raises(ValueError, match="timeout must be a positive"):
        fetch("http://127.0.0.1:1/x", tmp_path / "x", timeout=0)


def test_verify_file_missing_and_mismatch(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.txt does not exist.*download it again"):
        verify_file(tmp_path / "nope.txt", SHA)
    f = tmp_path / "f.txt"
    f.write_bytes(b"other")
    with pytest.raises(ChecksumError, match=rf"f\.txt: expected sha256 {SHA}, got {sha256_file(f)}.*download it again"):
        verify_file(f, SHA)
