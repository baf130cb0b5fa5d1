"""Launch `python -m scan ...` under torchrun, as a user does: `torch.distributed.run --standalone`."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
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
    for pid in [process.pid, *descendants(process.pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.wait()
