"""`scan serve` from the command line: refusals as one line, and a real server killed and restarted."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from scan.cli.main import main


def test_listening_beyond_loopback_without_a_token_is_refused(served_folder, capsys):
    assert main(["serve", str(served_folder / "photos.index"), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("scan: error:") and "--token" in err and "--insecure" in err


def test_a_missing_index_is_one_line(tmp_path, capsys):
    assert main(["serve", str(tmp_path / "nothing.index")]) == 2
    assert "no such index folder" in capsys.readouterr().err


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start(index, port) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "scan", "serve", str(index), "--port", str(port), "--no-access-log"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def get(url: str, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return json.loads(response.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_a_killed_server_restarts_on_an_intact_index_with_the_same_answers(served_folder):
    index = served_folder / "photos.index"
    files_before = {p.relative_to(index): p.read_bytes() for p in index.rglob("*") if p.is_file()}
    port = free_port()
    url = f"http://127.0.0.1:{port}/api/search?q=a+dog+runs+through+the+grass&k=5"
    server = start(index, port)
    try:
        before = get(url)["hits"]
        os.killpg(server.pid, signal.SIGKILL)  # no clean shutdown: as a crash or an OOM kill would
        server.wait(timeout=30)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
    server = start(index, port)
    try:
        after = get(url)["hits"]
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    assert [(h["id"], h["score"]) for h in after] == [(h["id"], h["score"]) for h in before]
    files_after = {p.relative_to(index): p.read_bytes() for p in index.rglob("*") if p.is_file()}
    assert files_after == files_before  # serving writes nothing into the index
