"""Run a command whose processes all end with it: on success, timeout, Ctrl-C, or a dead notebook.

``torchrun`` starts one worker process per rank, each in a session of its own. A plain
``subprocess.run(cmd, timeout=...)`` kills only the launcher on a timeout, and nothing at all
when the Jupyter kernel that called it dies: the workers keep running at full CPU as orphans.
:func:`run_process_tree` does instead:

* it starts the command in a **process group of its own** (a new session on Linux and macOS,
  ``CREATE_NEW_PROCESS_GROUP`` on Windows), so signals aimed at the notebook's group (a kernel
  restart) do not half-kill it;
* on a **timeout**, an **interrupt** (``KeyboardInterrupt``, the notebook's stop button) or any
  error while waiting, it ends the **whole tree** — the launcher and every process below it,
  found through ``psutil`` whatever session they put themselves in: politely first
  (``terminate``), then by force (``kill``);
* at **interpreter exit** (the kernel shutting down normally) it ends every tree still running;
* a small **watchdog** process, started beside each command, ends the tree when the calling
  process disappears without cleaning up (the kernel was killed).

This file needs only the standard library and ``psutil``: the watchdog runs it as a script
(``python process_guard.py --watch PARENT ROOT``) without importing ``course_utils`` or torch.
"""

from __future__ import annotations

import atexit
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import psutil

__all__ = ["ProcessTreeTimeout", "descendants", "end_process_tree", "run_process_tree"]

_WINDOWS = os.name == "nt"
_LIVE: dict[int, subprocess.Popen] = {}
_LIVE_LOCK = threading.Lock()


class ProcessTreeTimeout(subprocess.TimeoutExpired):
    """The command ran past its timeout; every process it had started was ended."""

    def __str__(self) -> str:
        return (f"{self.cmd[0] if self.cmd else 'command'} did not finish within {self.timeout:g} s; "
                "it and every process it started were ended")


# The watchdog runs this file without course_utils (and torch), so the argument checks it needs
# are here, worded as course_utils.checks words them.


def _describe(x: object) -> str:
    return "None" if x is None else f"{type(x).__name__} {x!r}"[:80]


def _check_pid(name: str, pid: object) -> None:
    """A process id: an int >= 0."""
    if isinstance(pid, bool) or not isinstance(pid, int):
        raise TypeError(f"{name} must be a process id (an int), got {_describe(pid)}")
    if pid < 0:
        raise ValueError(f"{name} must be a process id (an int >= 0), got {pid}")


def _check_seconds(name: str, x: object, low_open: bool) -> None:
    """A finite number of seconds, > 0 (``low_open``) or >= 0."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, got {_describe(x)}")
    if not math.isfinite(x) or (x <= 0 if low_open else x < 0):
        raise ValueError(f"{name} must be a finite number of seconds {'>' if low_open else '>='} 0, "
                         f"got {x}")


def descendants(pid: int) -> list[psutil.Process]:
    """Every living process below ``pid`` (children, grandchildren, ...); empty if it is gone.

    >>> descendants(os.getpid()) == [] or all(isinstance(p, psutil.Process) for p in descendants(os.getpid()))
    True
    """
    _check_pid("pid", pid)
    try:
        return psutil.Process(pid).children(recursive=True)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []


def _running(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _alive(processes: Sequence[psutil.Process]) -> list[psutil.Process]:
    return [p for p in processes if _running(p)]


def end_process_tree(root: int | psutil.Process, known: Sequence[psutil.Process] = (),
                     grace_s: float = 3.0) -> list[int]:
    """End ``root`` and every process below it (plus ``known`` ones seen earlier); return their pids.

    The tree is collected *before* anything is signalled (a killed parent's children are
    re-parented and could no longer be found), and again after, for processes started in
    between. Each gets ``terminate()`` (SIGTERM; ``TerminateProcess`` on Windows), and
    ``kill()`` if still alive after ``grace_s`` seconds.

    >>> end_process_tree(2**22 + 12345)   # a pid that does not exist: nothing to do
    []
    """
    if not isinstance(root, psutil.Process):
        _check_pid("root", root)
    if isinstance(known, (str, bytes)) or not isinstance(known, (Sequence, set, frozenset)):
        raise TypeError(f"known must be a list of psutil.Process, got {_describe(known)}")
    for i, p in enumerate(known):
        if not isinstance(p, psutil.Process):
            raise TypeError(f"known[{i}] must be a psutil.Process, got {_describe(p)}")
    _check_seconds("grace_s", grace_s, low_open=False)
    try:
        root_proc = root if isinstance(root, psutil.Process) else psutil.Process(root)
        tree = [root_proc, *root_proc.children(recursive=True)]
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        tree = []
    tree += [p for p in known if p not in tree]
    ended: set[int] = set()
    for _ in range(3):  # a launcher may start a process while we end it: look again
        alive = _alive(tree)
        if not alive:
            break
        for p in alive:
            try:
                tree += [c for c in p.children(recursive=True) if c not in tree]
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        alive = _alive(tree)
        for p in alive:
            try:
                p.terminate()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        _, still = psutil.wait_procs(alive, timeout=grace_s)
        for p in still:
            try:
                p.kill()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        psutil.wait_procs(still, timeout=grace_s)
        ended.update(p.pid for p in alive)
    return sorted(ended)


def _own_group_kwargs() -> dict:
    if _WINDOWS:
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
    return {"start_new_session": True}


def _start_watchdog(root_pid: int) -> subprocess.Popen | None:
    """A process that ends ``root_pid``'s tree if this process dies first (None if it cannot start)."""
    try:
        return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--watch", str(os.getpid()),
                                 str(root_pid)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, **_own_group_kwargs())
    except OSError:
        return None


def _end_all_at_exit() -> None:
    with _LIVE_LOCK:
        live = list(_LIVE.values())
    for proc in live:
        end_process_tree(proc.pid)


atexit.register(_end_all_at_exit)


def run_process_tree(cmd: Sequence[str], timeout: float, env: Mapping[str, str] | None = None,
                     cwd: str | os.PathLike | None = None, watchdog: bool = True) -> subprocess.CompletedProcess:
    """Run ``cmd`` to completion and return its exit code and output; never leave a process behind.

    Raises :class:`ProcessTreeTimeout` (a ``subprocess.TimeoutExpired``) after ending the whole
    tree when ``timeout`` seconds pass; re-raises ``KeyboardInterrupt`` after ending it.
    Output goes to temporary files, not pipes, so a grandchild that keeps a pipe open cannot
    make the wait hang.

    >>> result = run_process_tree([sys.executable, "-c", "print('hello')"], timeout=30, watchdog=False)
    >>> result.returncode, result.stdout.strip()
    (0, 'hello')
    """
    if isinstance(cmd, (str, bytes)) or not cmd or not all(isinstance(c, (str, os.PathLike)) for c in cmd):
        raise TypeError(f"cmd must be a non-empty list of strings (program and arguments), got {cmd!r}")
    _check_seconds("timeout", timeout, low_open=True)
    if env is not None and (not isinstance(env, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.items())):
        raise TypeError(f"env must be a dict of str to str (the environment) or None, got "
                        f"{_describe(env)}")
    if cwd is not None and (isinstance(cwd, bytes) or not isinstance(cwd, (str, os.PathLike))):
        raise TypeError(f"cwd must be a folder path (a str or pathlib.Path) or None, got {_describe(cwd)}")
    if cwd is not None and not os.path.isdir(cwd):
        raise ValueError(f"cwd must be an existing folder, got {os.fspath(cwd)!r}")
    if not isinstance(watchdog, bool):
        raise TypeError(f"watchdog must be True or False, got {_describe(watchdog)}")
    cmd = [os.fspath(c) for c in cmd]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, env=None if env is None else dict(env), cwd=cwd, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=err, **_own_group_kwargs())
        with _LIVE_LOCK:
            _LIVE[proc.pid] = proc
        guard = _start_watchdog(proc.pid) if watchdog else None
        try:
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                end_process_tree(proc.pid)
                proc.wait()
                raise ProcessTreeTimeout(cmd, timeout) from None
            except BaseException:  # KeyboardInterrupt, or anything else while waiting
                end_process_tree(proc.pid)
                proc.wait()
                raise
        finally:
            with _LIVE_LOCK:
                _LIVE.pop(proc.pid, None)
            if guard is not None:
                end_process_tree(guard.pid, grace_s=1.0)
                guard.wait()
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(cmd, proc.returncode, out.read().decode(errors="replace"),
                                           err.read().decode(errors="replace"))


def _watch(parent_pid: int, root_pid: int, interval_s: float = 0.2) -> int:
    """Poll until ``root_pid`` ends (then exit) or ``parent_pid`` dies (then end ``root_pid``'s tree)."""
    try:
        parent, root = psutil.Process(parent_pid), psutil.Process(root_pid)
    except psutil.NoSuchProcess:
        end_process_tree(root_pid)
        return 0
    known: list[psutil.Process] = []
    while True:
        if not _running(root):
            end_process_tree(root, known)  # orphans a crashed launcher left behind
            return 0
        try:
            known += [c for c in root.children(recursive=True) if c not in known]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
        if not _running(parent):
            end_process_tree(root, known)
            return 0
        time.sleep(interval_s)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--watch":
        sys.exit(_watch(int(sys.argv[2]), int(sys.argv[3])))
    print("usage: python process_guard.py --watch PARENT_PID ROOT_PID", file=sys.stderr)
    sys.exit(2)
