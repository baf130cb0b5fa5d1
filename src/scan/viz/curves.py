"""Training curves from ``metrics.jsonl``: loss by step and validation rsum, for one or many runs.

``scan train`` appends one JSON object per line to ``<run_dir>/metrics.jsonl``: training lines every
``log_every_steps`` (``step``, ``epoch``, ``lr``, ``time``, ``loss`` and the loss's named terms)
and validation lines (``step``, ``epoch``, ``split``, ``rsum``, ``i2t_r1`` ... ``t2i_r10``). rsum,
the sum of the six recalls, is what SCAN's authors select checkpoints by (Sec. 4). This module reads
those files and draws both series side by side so runs can be compared at a glance.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from scan.viz.attention import save_figure

__all__ = ["moving_average", "plot_training_curves", "read_metrics", "split_metrics"]


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (or of a run directory holding one), in file order.

    A last line that does not parse is dropped: it is a write cut short by a crash, and the run is
    still worth plotting. A bad line anywhere else means the file is not a metrics log, so it
    raises ``ValueError`` naming the line.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    lines = path.read_text().splitlines()
    records: list[dict[str, Any]] = []
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    for number, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            if number == last:
                break
            raise ValueError(f"{path}:{number + 1}: not JSON ({error})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{number + 1}: expected a JSON object, got {type(record).__name__}")
        records.append(record)
    return records


def split_metrics(records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(training, validation)`` records, each sorted by step.

    Validation lines are those with ``rsum``, training lines those with ``loss``; anything else
    (no step) is ignored.
    """

    def by_step(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return sorted(rows, key=lambda row: row["step"])

    with_step = [r for r in records if isinstance(r.get("step"), (int, float))]
    validation = [r for r in with_step if "rsum" in r]
    training = [r for r in with_step if "loss" in r and "rsum" not in r]
    return by_step(training), by_step(validation)


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average over ``window`` points.

    The window shrinks at the ends: no lag, no padding artefacts, the same length as ``values``.
    """
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    if window <= 1 or n == 0:
        return values.copy()
    half = window // 2
    sums = np.concatenate([[0.0], np.cumsum(values)])  # (n + 1,)
    idx = np.arange(n)
    lo, hi = np.maximum(idx - half, 0), np.minimum(idx + half + 1, n)
    return (sums[hi] - sums[lo]) / (hi - lo)


def _auto_window(n: int) -> int:
    """Light smoothing: about 1/25 of the points, at least 3 once there are enough, at most 101."""
    return int(min(max(n // 25, 3 if n >= 15 else 1), 101))


def plot_training_curves(
    runs: Mapping[str, str | Path],
    out_path: str | Path,
    *,
    title: str | None = None,
    smooth: int | None = None,
    dpi: float = 130,
) -> Path:
    """Draw training loss and validation rsum against step, one colour per run, as a PNG.

    Args:
        runs: run name -> its ``metrics.jsonl`` (or run directory).
        out_path: the PNG to write (atomically; folders are created).
        title: figure title.
        smooth: moving-average window in logged points (``None``: about 1/25 of the points); the
            raw loss is drawn faintly underneath.
        dpi: resolution.

    Returns:
        ``out_path``.
    """
    from matplotlib.figure import Figure

    if not runs:
        raise ValueError("no runs to plot")
    fig = Figure(figsize=(12, 4.6), layout="constrained")
    loss_ax, rsum_ax = fig.subplots(1, 2)
    colours = [f"C{i % 10}" for i in range(len(runs))]
    any_loss = any_rsum = False
    for colour, (name, path) in zip(colours, runs.items(), strict=False):
        training, validation = split_metrics(read_metrics(path))
        points = [
            (r["step"], r["loss"]) for r in training if isinstance(r["loss"], (int, float)) and math.isfinite(r["loss"])
        ]
        if points:
            any_loss = True
            steps, loss = (np.array(v, dtype=np.float64) for v in zip(*points, strict=False))
            loss_ax.plot(steps, loss, color=colour, alpha=0.22, linewidth=0.8)
            window = _auto_window(len(loss)) if smooth is None else smooth
            loss_ax.plot(steps, moving_average(loss, window), color=colour, linewidth=1.8, label=name)
        if validation:
            any_rsum = True
            steps = np.array([r["step"] for r in validation], dtype=np.float64)
            rsum = np.array([r["rsum"] for r in validation], dtype=np.float64)
            best = int(np.nanargmax(rsum))
            rsum_ax.plot(
                steps,
                rsum,
                color=colour,
                marker="o",
                markersize=4.5,
                linewidth=1.4,
                label=f"{name} (best {rsum[best]:.1f} @ {int(steps[best])})",
            )
            rsum_ax.plot(
                steps[best],
                rsum[best],
                color=colour,
                marker="*",
                markersize=14,
                markeredgecolor="black",
                markeredgewidth=0.6,
                zorder=3,
            )
        elif points:
            rsum_ax.plot([], [], color=colour, marker="o", linewidth=1.4, label=f"{name} (no validation)")

    for ax, label, has, empty in (
        (loss_ax, "training loss", any_loss, "no training loss logged"),
        (rsum_ax, "validation rsum (R@1+5+10, both directions)", any_rsum, "no validation yet"),
    ):
        ax.set_xlabel("step", fontsize=11)
        ax.set_title(label, fontsize=12)
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelsize=10)
        if not has:
            ax.text(0.5, 0.5, empty, transform=ax.transAxes, ha="center", va="center", fontsize=12, color="0.5")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=9, frameon=False)
    # A run that switches loss (sum over negatives, then hardest only) spans orders of magnitude.
    low, high = loss_ax.get_ylim()
    if any_loss and all(line.get_ydata().min() > 0 for line in loss_ax.get_lines()) and high / max(low, 1e-12) > 30:
        loss_ax.set_yscale("log")
        loss_ax.set_title("training loss (log scale)", fontsize=12)
    if title:
        fig.suptitle(title, fontsize=14)
    return save_figure(fig, out_path, dpi=dpi)
