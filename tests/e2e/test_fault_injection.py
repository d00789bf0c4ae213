"""Nothing lost: a failure injected into every writer of a file the course keeps leaves every file
byte for byte as it was (``fault_census.py`` holds the writers and the faults).

* Static: every call in ``course_utils``, ``scripts`` and ``benchmarks`` that writes a file goes
  through ``course_utils.files`` (or writes into one of its file objects, or into memory), or is
  listed in ``fault_census.EXEMPT`` with its reason (scratch folders, build output, /proc).
* Dynamic: each writer (the atomic primitives, ``record_result``, checkpoints, downloads, the
  translation cache, ``make execute``'s commit, ``update_readme``, ``list_exercises``) under
  each fault (disk full mid-write or at fsync, no room for the temporary file, a rename refused,
  a later rename refused, Ctrl-C mid-write), and under the file-size limit in a child process.
* The harness is checked on a plain ``Path.write_text``, which must be caught losing data.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import fault_census as F
import pytest

CASES = [(w, f) for w in F.WRITERS for f in F.FAULTS]
RESULTS: list[F.Result] = []


def test_every_writer_of_a_kept_file_is_atomic():
    sites = F.write_sites()
    direct = [f"{s.path}:{s.line} in {s.function}: {s.call}" for s in sites if s.exempt is None]
    assert not direct, ("files written directly, not through course_utils.files (atomic_write_*, "
                        "atomic_open): a failure half-way leaves half a file. Use course_utils.files, "
                        "or list the place in fault_census.EXEMPT with why it is safe:\n"
                        + "\n".join(direct))
    used = {(s.path, s.function) for s in sites} | {(s.path, "*") for s in sites}
    stale = sorted(k for k in F.EXEMPT if k not in used)
    assert not stale, f"EXEMPT lists places that no longer write a file: {stale}"


def test_the_scanner_finds_plain_writes():
    import ast

    code = ("def f(p, nb, model):\n"
            "    p.write_text('x')\n    open(p, 'w').write('x')\n    torch.save(model, p)\n"
            "    nbformat.write(nb, p)\n    shutil.copy(p, p)\n"
            "    with atomic_open(p) as g:\n        torch.save(model, g)\n"
            "    buf = io.BytesIO()\n    torch.save(model, buf)\n    open(p).read()\n")
    scan = F._Scan("x.py")
    scan.visit(ast.parse(code))
    assert [s.call for s in scan.sites] == ["write_text", "open(..., 'w')", "torch.save",
                                           "nbformat.write", "shutil.copy"]


@pytest.mark.parametrize("writer,fault", CASES, ids=[f"{w.name.split(' ')[0]}-{f}" for w, f in CASES])
def test_a_fault_leaves_every_file_as_it_was(writer, fault, tmp_path):
    result = F.run_case(writer, fault, tmp_path)
    RESULTS.append(result)
    assert result.outcome in ("survived", "not reached"), f"{result.outcome}: {result.detail}"


@pytest.mark.parametrize("writer", F.WRITERS, ids=[w.name.split(" ")[0] for w in F.WRITERS])
def test_each_writer_meets_the_faults_it_can(writer, tmp_path):
    reached = [f for f in F.FAULTS if F.run_case(writer, f, tmp_path / f.replace(" ", "_")).outcome
               != "not reached"]
    assert len(reached) >= 5, f"{writer.name}: the faults reached only {reached}"


def test_the_harness_catches_a_plain_write_losing_data(tmp_path):
    lost = [F.run_case(F.PLAIN, f, tmp_path / str(i)).outcome for i, f in enumerate(F.FAULTS)]
    assert lost.count("data lost") == 2  # mid-write: disk full and Ctrl-C (nothing else applies)


def test_a_refused_second_rename_puts_the_first_file_back(tmp_path):
    result = F.run_case(F.WRITERS[4], "a later rename refused", tmp_path)
    assert result.writer == "files.atomic_write_many" and result.outcome == "survived", result


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "darwin",
                    reason="RLIMIT_FSIZE with SIGXFSZ ignored: Linux")
@pytest.mark.parametrize("writer", [F.PLAIN] + [F.WRITERS[i] for i in (5, 6, 10, 11)],
                         ids=["plain-control", "record_result", "save_checkpoint", "make-execute",
                              "update_readme"])
def test_the_file_size_limit_loses_nothing(writer, tmp_path):
    result = F.run_file_size_limit(writer, tmp_path)
    expected = "data lost" if writer is F.PLAIN else "survived"
    assert result.outcome == expected, f"{result.outcome}: {result.detail}"


def test_zz_fault_counts(capsys):
    if len(RESULTS) < len(CASES):
        pytest.skip("the fault cases did not all run in this process")
    c = F.counts(RESULTS)
    with capsys.disabled():
        print(f"\nfaults injected {c['injected']} / survived {c['survived']} / data lost "
              f"{c['data lost']} / other {c['other']}")
    assert c["injected"] >= 60 and c["survived"] == c["injected"]


def test_fault_census_runs_from_the_repository_root():
    assert (F.REPO / "course_utils" / "files.py").is_file() and Path(F.__file__).parent.name == "e2e"
