"""Result tables and JSON files for retrieval metrics (the layout of the SCAN paper's Tables 1-2).

The paper prints one row per model variant with R@1, R@5, R@10 for sentence retrieval (i2t) and
image retrieval (t2i); we add the median ranks and ``rsum``. :func:`format_table` renders
``{name: metrics}`` (the dicts of :mod:`scan.evaluate.metrics` / :mod:`scan.evaluate.protocols`)
as aligned plain text for terminals and logs, :func:`format_markdown_table` as Markdown for docs,
and :func:`write_json` saves the same structure atomically so a crash never leaves half a file.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from scan.atomic import write_text_atomic

__all__ = ["TABLE_COLUMNS", "format_markdown_table", "format_table", "write_json"]

TABLE_COLUMNS: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    ("i2t", (("i2t_r1", "R@1"), ("i2t_r5", "R@5"), ("i2t_r10", "R@10"), ("i2t_medr", "medr"))),
    ("t2i", (("t2i_r1", "R@1"), ("t2i_r5", "R@5"), ("t2i_r10", "R@10"), ("t2i_medr", "medr"))),
    ("", (("rsum", "rsum"),)),
)
"""Column groups: (group label, ((metric key, column label), ...)). Mean ranks are left out, as
in the paper; they stay in the JSON."""


def _cell(metrics: Mapping[str, Any], key: str) -> str:
    """One decimal, or ``-`` for a metric the row does not have (e.g. a t2i-only run)."""
    value = metrics.get(key)
    if value is None:
        return "-"
    value = float(value)
    return f"{value:.1f}" if math.isfinite(value) else str(value)


def format_table(results: Mapping[str, Mapping[str, Any]], *, name_header: str = "model") -> str:
    """Render ``{name: metrics}`` as an aligned plain-text table, one row per name.

    Columns are ``i2t R@1 R@5 R@10 medr | t2i R@1 R@5 R@10 medr | rsum`` with one decimal; the
    group label is written once, on its first column, so the header stays one line. Extra keys
    (``"folds"``, mean ranks) are ignored.

    Returns:
        The table, lines joined by ``\\n``, without a trailing newline.
    """
    names = [str(n) for n in results]
    keys = [key for _, cols in TABLE_COLUMNS for key, _ in cols]
    rows = [[_cell(m, k) for k in keys] for m in results.values()]
    labels = [
        f"{group} {label}".strip() if i == 0 else label
        for group, cols in TABLE_COLUMNS
        for i, (_, label) in enumerate(cols)
    ]
    # At least 5 wide ("100.0"), so the same columns line up across tables of different runs.
    widths = [max([5, len(lbl)] + [len(r[c]) for r in rows]) for c, lbl in enumerate(labels)]
    name_width = max([len(name_header)] + [len(n) for n in names])

    def line(name: str, cells: list[str], fill: str = " ", sep: str = " | ") -> str:
        parts, c = [], 0
        for _, cols in TABLE_COLUMNS:
            span = slice(c, c + len(cols))
            parts.append(fill.join(v.rjust(w, fill) for v, w in zip(cells[span], widths[span], strict=True)))
            c += len(cols)
        return sep.join([name.ljust(name_width, fill), *parts])

    out = [line(name_header, labels), line("", ["" for _ in labels], fill="-", sep="-+-")]
    out += [line(n, r) for n, r in zip(names, rows, strict=True)]
    return "\n".join(out)


def format_markdown_table(results: Mapping[str, Mapping[str, Any]], *, name_header: str = "model") -> str:
    """Render ``{name: metrics}`` as a Markdown table with the columns of :func:`format_table`.

    Markdown has no column groups, so every header carries its direction (``i2t R@5``), and
    numbers are right-aligned. ``|`` in a name is escaped so it cannot split the row.

    Returns:
        The table, lines joined by ``\\n``, without a trailing newline.
    """
    keys = [key for _, cols in TABLE_COLUMNS for key, _ in cols]
    labels = [f"{group} {label}".strip() for group, cols in TABLE_COLUMNS for _, label in cols]
    out = [
        "| " + " | ".join([name_header, *labels]) + " |",
        "|" + "|".join([" --- "] + [" ---: "] * len(labels)) + "|",
    ]
    for name, metrics in results.items():
        cells = [str(name).replace("|", "\\|")] + [_cell(metrics, k) for k in keys]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def _json_default(obj: Any) -> Any:
    # Metrics often arrive as numpy scalars or arrays (or torch tensors via .tolist()).
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serialisable")


def write_json(results: Mapping[str, Any], path: str | os.PathLike[str], *, indent: int = 2) -> Path:
    """Write ``{name: metrics}`` to ``path`` as JSON, atomically.

    The text goes to a temporary file in the destination directory, is flushed and fsynced, and
    then ``os.replace``-d over ``path``: readers (a dashboard, a concurrent run) see the old file
    or the new one, never a truncated one, even if the process dies mid-write. The parent
    directory is created if missing.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(dict(results), indent=indent, default=_json_default) + "\n"
    return write_text_atomic(path, text)
