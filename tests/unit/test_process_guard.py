"""No process outlives its launcher: on a timeout, an interrupt, or when the caller is killed.

The fake launcher below behaves as ``torchrun`` does: it starts two workers, each in a session
of its own (so a signal to the launcher's process group misses them), and one worker starts a
process of its own (a DataLoader worker). All of them would sleep for ten minutes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest
from conftest import REPO  # noqa: E402

from course_utils.process_guard import (
    ProcessTreeTimeout,
    descendants,
    end_process_tree,
    run_process_tree,
)

FAKE_LAUNCHER = textwrap.dedent("""
    import os, subprocess, sys, time
    pids_file = sys.argv[1]
    sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
    spawner = [sys.executable, "-c",
               "import subprocess, sys, time; subprocess.Popen(%r); time.sleep(600)" % (sleeper,)]
    kw = {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP} if os.name == "nt" else {"start_new_session": True}
    workers = [subprocess.Popen(spawner, **kw), subprocess.Popen(sleeper, **kw)]
    time.sleep(1.0)  # let the first worker start its own child
    with open(pids_file + ".tmp", "w") as f:
        f.write(" ".join(str(p) for p in [os.getpid(), *[w.pid for w in workers]]))
    os.replace(pids_file + ".tmp", pids_file)
    time.sleep(600)
""")


def _tree_pids(pids_file, wait_s: float = 30.0) -> list[int]:
    deadline = time.monotonic() + wait_s
    while not pids_file.exists():
        assert time.monotonic() < deadline, "the fake launcher never started its workers"
        time.sleep(0.1)
    pids = [int(p) for p in pids_file.read_text().split()]
    grandchildren = [c.pid for c in psutil.Process(pids[1]).children(recursive=True)]
    assert grandchildren, "the first worker should have started a process of its own"
    return pids + grandchildren


def _survivors(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            p = psutil.Process(pid)
            if p.status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def _wait_for_no_survivors(pids: list[int], within_s: float) -> list[int]:
    deadline = time.monotonic() + within_s
    while (alive := _survivors(pids)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


@pytest.fixture
def launcher(tmp_path):
    script = tmp_path / "fake_launcher.py"
    script.write_text(FAKE_LAUNCHER)
    pids_file = tmp_path / "pids"
    yield [sys.executable, str(script), str(pids_file)], pids_file
    if pids_file.exists():  # whatever the test did, leave nothing behind
        for pid in [int(p) for p in pids_file.read_text().split()]:
            end_process_tree(pid, grace_s=0.5)


@pytest.mark.slow
def test_a_timeout_ends_the_launcher_and_every_worker(launcher):
    cmd, pids_file = launcher
    seen: list[int] = []

    def watch():  # collect the tree while it runs, as a learner's `ps` would show it
        seen.extend(_tree_pids(pids_file))

    watcher = threading.Thread(target=watch)
    watcher.start()
    start = time.monotonic()
    with pytest.raises(ProcessTreeTimeout, match="did not finish within 4 s; it and every process it started were ended"):
        run_process_tree(cmd, timeout=4)
    watcher.join()
    assert time.monotonic() - start < 30
    assert len(seen) == 4  # launcher, two workers, one grandchild
    assert _survivors(seen) == [], "processes survived the timeout"


@pytest.mark.slow
def test_plain_subprocess_run_would_leave_orphans(launcher):
    """Why the guard exists: subprocess.run's timeout kills the launcher only."""
    cmd, pids_file = launcher
    with pytest.raises(subprocess.TimeoutExpired):
        subprocess.run(cmd, timeout=4, **({"start_new_session": True} if os.name != "nt" else {}))
    pids = [int(p) for p in pids_file.read_text().split()]
    assert _survivors(pids[1:]), "the workers should have outlived the launcher here"
    end_process_tree(pids[1], grace_s=0.5)
    end_process_tree(pids[2], grace_s=0.5)


def test_success_returns_output_and_leaves_nothing():
    code = "import sys; print('rank 0 says hi'); print('warn', file=sys.stderr); sys.exit(3)"
    # processes this test process had already (another test's multiprocessing resource tracker,
    # in the same pytest worker) are not the call's to end
    before = {c.pid for c in psutil.Process().children(recursive=True)}
    result = run_process_tree([sys.executable, "-c", code], timeout=60)
    assert (result.returncode, result.stdout.strip(), result.stderr.strip()) == (3, "rank 0 says hi", "warn")
    time.sleep(0.3)
    new = [c for c in psutil.Process().children(recursive=True) if c.pid not in before]
    assert not [c for c in new if c.status() != psutil.STATUS_ZOMBIE]


@pytest.mark.slow
def test_an_interrupt_ends_the_tree(launcher, monkeypatch):
    cmd, pids_file = launcher
    real_wait = subprocess.Popen.wait
    pids: list[int] = []

    def interrupted_wait(self, timeout=None):
        if timeout is not None and self.args == cmd:  # the notebook's stop button, while waiting
            pids.extend(_tree_pids(pids_file))
            raise KeyboardInterrupt
        return real_wait(self, timeout)

    monkeypatch.setattr(subprocess.Popen, "wait", interrupted_wait)
    with pytest.raises(KeyboardInterrupt):
        run_process_tree(cmd, timeout=120)
    assert len(pids) == 4 and _survivors(pids) == []


@pytest.mark.slow
@pytest.mark.skipif(os.name == "nt", reason="kills a process group with SIGKILL, as Jupyter does on POSIX")
def test_a_killed_caller_leaves_no_orphans(launcher, tmp_path):
    """The kernel dies (SIGKILL to its whole process group, as a Jupyter restart does): the watchdog ends the tree."""
    cmd, pids_file = launcher
    kernel_code = (f"import sys; sys.path.insert(0, {str(REPO)!r}); "
                   "from course_utils.process_guard import run_process_tree; "
                   f"run_process_tree({cmd!r}, timeout=600)")
    kernel = subprocess.Popen([sys.executable, "-c", kernel_code], start_new_session=True,
                              env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        pids = _tree_pids(pids_file)
        assert _survivors(pids) == pids
        os.killpg(kernel.pid, signal.SIGKILL)
        kernel.wait()
        alive = _wait_for_no_survivors(pids, within_s=15)
        assert alive == [], f"processes outlived the killed caller: {alive}"
    finally:
        if kernel.poll() is None:
            kernel.kill()


def test_bad_arguments_are_named():
    with pytest.raises(TypeError, match="cmd must be a non-empty list of strings"):
        run_process_tree("python -c pass", timeout=1)
    with pytest.raises(ValueError, match="timeout must be a finite number of seconds > 0, got 0"):
        run_process_tree([sys.executable, "-c", "pass"], timeout=0)
    with pytest.raises(ValueError, match="timeout must be a finite number of seconds > 0, got inf"):
        run_process_tree([sys.executable, "-c", "pass"], timeout=float("inf"))
    with pytest.raises(ValueError, match="cwd must be an existing folder"):
        run_process_tree([sys.executable, "-c", "pass"], timeout=5, cwd="no/such/folder")
    with pytest.raises(TypeError, match="watchdog must be True or False"):
        run_process_tree([sys.executable, "-c", "pass"], timeout=5, watchdog="no")


def test_end_process_tree_refuses_a_missing_root():
    # psutil.Process(None) is the calling process: ending "None" would end the caller itself.
    with pytest.raises(TypeError, match="root must be a process id"):
        end_process_tree(None)
    with pytest.raises(ValueError, match="grace_s must be a finite number of seconds >= 0"):
        end_process_tree(2**22 + 12345, grace_s=float("nan"))
    with pytest.raises(TypeError, match="pid must be a process id"):
        descendants(None)
