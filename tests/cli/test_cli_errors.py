"""The command line: a user's mistake is one line and exit status 2, a bug keeps its traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from scan.cli.common import report_user_errors
from scan.cli.main import main
from scan.errors import DataError, ExtractionError


def test_no_command_is_a_usage_error(capsys):
    assert main([]) == 2
    assert "usage: scan <command>" in capsys.readouterr().err


def test_scan_errors_are_one_line_with_their_exit_status(capsys):
    @report_user_errors
    def failing(error):
        raise error

    assert failing(DataError("bad caption", path="caps.txt", line=3)) == 2
    assert capsys.readouterr().err == "scan: error: caps.txt:3: bad caption\n"
    assert failing(ExtractionError("2 images unreadable")) == 1
    with pytest.raises(ZeroDivisionError):  # a bug is not dressed up as a user error
        failing(ZeroDivisionError("bug"))


def test_warnings_are_one_line(capsys):
    import warnings

    @report_user_errors
    def warns():
        warnings.warn("half of the words are unknown", stacklevel=1)
        return 0

    assert warns() == 0
    assert capsys.readouterr().err == "scan: warning: half of the words are unknown\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--config", "synthetic", "train.epochs=-1"], "train.epochs: must be >= 1"),
        (["train", "--config", "synthetic", "data.batch_size=0"], "data.batch_size"),
        (["train", "--config", "synthetic", "model.agg=Summ"], "model.agg"),
        (["train", "--config", "no_such_recipe"], "no packaged recipe"),
        (["eval", "--model", "/nonexistent/run", "--data", "/nonexistent"], "no model found"),
    ],
)
def test_bad_input_through_the_installed_command(argv, message):
    result = subprocess.run([sys.executable, "-m", "scan.cli.main", *argv], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr


def test_a_closed_pipe_is_not_a_traceback():
    """`scan train --print-config | head -1`: the reader leaves early; no BrokenPipeError trace."""
    command = f"{sys.executable} -m scan train --config f30k_t2i_avg --print-config | head -1"
    result = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, timeout=120)
    assert result.stdout == "data:\n"
    assert "Traceback" not in result.stderr
