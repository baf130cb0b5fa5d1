"""What every subcommand shares: bad input as one clear line, warnings as one line each.

A `ScanError` is the user's to fix, so it prints `scan: error: <message>` and exits with its
`exit_code` (2, like argparse's usage errors); anything else is a bug and keeps its traceback.
A missing optional part (`ImportError`: its message names the pip command) and an operating
system's refusal of a path the user gave (missing, not permitted) are the user's too.
"""

from __future__ import annotations

import functools
import os
import sys
import warnings
from collections.abc import Callable
from typing import Any

from scan.errors import ScanError

# Errors of the user's making that are not ours to wrap: an optional part not installed, or a
# path the operating system refuses.
OUTSIDE_ERRORS = (ImportError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
INTERRUPTED = 130  # the shell's code for a process stopped by Ctrl-C


def _one_line_warning(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
    print(f"scan: warning: {message}", file=sys.stderr)


def report_user_errors(function: Callable[..., int]) -> Callable[..., int]:
    """Run a subcommand: errors the user can fix become one line and an exit status, not a traceback."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> int:
        previous = warnings.showwarning
        warnings.showwarning = _one_line_warning
        try:
            return function(*args, **kwargs)
        except ScanError as error:
            print(f"scan: error: {error}", file=sys.stderr)
            return error.exit_code
        except OUTSIDE_ERRORS as error:
            print(f"scan: error: {error}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("scan: interrupted", file=sys.stderr)
            return INTERRUPTED
        except BrokenPipeError:
            # The reader went away (`scan ... | head`): stop quietly, as the Python docs advise.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1
        finally:
            warnings.showwarning = previous

    return wrapper


def relaunch_with_torchrun(command: str, argv: list[str] | None, processes: int) -> int:
    """`scan COMMAND --nproc N ...`: the same command under `torchrun --standalone` with N processes.

    torchrun starts and watches the processes (one failing stops the others); this is only the
    shorthand for its command line on one machine, printed so it can be reused on others.
    """
    import shlex
    import subprocess

    if processes < 1:
        print("scan: error: --nproc must be at least 1", file=sys.stderr)
        return 2
    rest = list(sys.argv[2:] if argv is None else argv)
    for i, value in enumerate(rest):  # drop "--nproc N" / "--nproc=N"
        if value == "--nproc":
            del rest[i : i + 2]
            break
        if value.startswith("--nproc="):
            del rest[i]
            break
    line = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    line += ["-m", "scan", command, *rest]
    print("scan: running " + shlex.join(["torchrun", *line[3:]]), file=sys.stderr)
    return subprocess.call(line)
