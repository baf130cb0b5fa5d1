"""read_utf8_text: the one place text files are decoded, naming the line of a bad byte."""

from __future__ import annotations

from pathlib import Path

import pytest

from scan.data.text import read_utf8_text
from scan.errors import DataError


def test_reads_utf8(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("caf\u00e9\nna\u00efve\n", encoding="utf-8")
    assert read_utf8_text(path) == "caf\u00e9\nna\u00efve\n"


@pytest.mark.parametrize("data,line", [(b"\xff", 1), (b"ok\nok\r\nbad \x80\n", 3), (b"a\n\nb\xc3", 3)])
def test_bad_byte_names_its_line(tmp_path: Path, data: bytes, line: int) -> None:
    path = tmp_path / "b.txt"
    path.write_bytes(data)
    with pytest.raises(DataError) as caught:
        read_utf8_text(path)
    assert caught.value.line == line and caught.value.path == str(path)
    assert str(caught.value).startswith(f"{path}:{line}: not valid UTF-8")
    assert "save it as UTF-8" in str(caught.value)


def test_missing_file_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_utf8_text(tmp_path / "nowhere.txt")
