"""Launch `python -m scan ...` under torchrun, as a user does: `torch.distributed.run --standalone`."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def torchrun(nproc: int, *args: str, **popen) -> subprocess.Popen:
    """Start `scan ARGS` on `nproc` processes of this machine (one torch thread each)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([*command, "-m", "scan", *args], env=env, **popen)


def run_torchrun(nproc: int, *args: str, timeout: float = 600) -> str:
    """`torchrun` to the end; its output (stdout and stderr), asserting that it succeeded."""
    process = torchrun(nproc, *args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, out
    return out


def descendants(pid: int) -> list[int]:
    """Every process started (directly or not) by `pid`, read from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # it ended while we looked
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def kill_everything(process: subprocess.Popen) -> None:
    """SIGKILL torchrun and its workers at once, as a power cut would.

    torchrun starts each worker in a session of its own, so killing torchrun's process group
    would leave the workers running on; each one is killed by pid.
    """
    pids = [process.pid, *descendants(process.pid)]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.wait()
    # A kill is delivered asynchronously: wait until every worker is gone (its files, and its
    # locks, closed), so that what the test does next cannot meet a dying worker.
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in pids[1:]):
        assert time.monotonic() < deadline, "torchrun's workers outlived SIGKILL"
        time.sleep(0.01)


def _alive(pid: int) -> bool:
    """Whether any thread of `pid` still runs.

    A process's files (and its flocks) are closed when its last thread exits; its main thread
    can be a zombie before the others are, so every thread is looked at.
    """
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            if stat.read_text().rsplit(")", 1)[1].split()[0] != "Z":
                return True
        except (OSError, IndexError):  # that thread is gone
            continue
    return False
