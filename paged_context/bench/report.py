"""Printing and writing benchmark results: the I/O edge of every benchmark."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    xs = list(values)
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The nearest-rank `q` quantile (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], title: str | None = None, digits: int = 3) -> str:
    """A markdown table, columns padded so it also reads well in a terminal."""
    cells = [list(headers)] + [[fmt(c, digits) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return (f"\n{title}\n\n" if title else "") + "\n".join(lines)


def write_json(out: Path, name: str, data: dict) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return path


def publish(result: dict, text: str, out: Path | None, name: str, plot: Callable[[dict, Path], Path]) -> dict:
    """Print the report; with an output folder, also write `<name>.json` and the plot."""
    print(text)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        print(f"\nwrote {write_json(out, f'{name}.json', result)} and {plot(result, out / f'{name}.png')}")
    return result


def pyplot():
    """matplotlib without a display, imported only when a plot is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_panels(fig, axes, path: Path, **legend) -> Path:
    """A light grid and a legend on each panel, then `save_figure`."""
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(**legend)
    return save_figure(fig, path)


def save_figure(fig, path: Path) -> Path:
    """Lay out, write and close a figure."""
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    pyplot().close(fig)
    return path
