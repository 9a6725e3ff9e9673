"""PNG plots of a run, or two runs together (matplotlib, headless Agg backend)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .stats import E2E, ITL, TPOT, TTFT, time_series  # noqa: E402

Runs = Sequence[tuple[str, list[dict[str, Any]]]]


def _ok(rows: list[dict[str, Any]], key: str) -> list[float]:
    return [r[key] for r in rows if r.get("error_code") is None and r.get(key) is not None]


def _edges(values: list[float], bins: int = 40) -> list[float]:
    """Bins shared by every run of a plot; a run of equal values still gets a visible bar."""
    lo, hi = min(values), max(values)
    if hi - lo <= 1e-9 * max(abs(hi), 1e-9):
        hi = lo + max(abs(lo) * 0.01, 1e-6)
    return [lo + (hi - lo) * i / bins for i in range(bins + 1)]


def _histograms(runs: Runs, path: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, key, title in zip(
        axes,
        (TTFT, ITL, TPOT),
        ("TTFT (s)", "inter-token latency, llmperf (s)", "time per output token (s)"),
        strict=True,
    ):
        every = [v for _, rows in runs for v in _ok(rows, key)]
        for label, rows in runs:
            values = _ok(rows, key)
            if values:
                ax.hist(values, bins=_edges(every), alpha=0.6, label=label)
        ax.set_title(title)
        ax.set_ylabel("requests")
    axes[0].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _over_time(runs: Runs, path: Path) -> None:
    fig, (lat, tput) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for label, rows in runs:
        ok = [r for r in rows if r.get("error_code") is None]
        start = [r["start_s"] for r in ok]
        lat.scatter(start, [r[E2E] for r in ok], s=6, label=f"{label} e2e")
        lat.scatter(start, [r[TTFT] for r in ok], s=6, marker="x", label=f"{label} TTFT")
        series = time_series(rows)
        if series:
            tput.step([t for t, _ in series], [v for _, v in series], where="post", label=label)
    lat.set_ylabel("latency (s), by request start")
    lat.legend(fontsize="small")
    tput.set_ylabel("output tokens/s")
    tput.set_xlabel("seconds since the run started")
    tput.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_plots(directory: str | Path, stem: str, runs: Runs) -> list[Path]:
    """`<stem>_distributions.png` and `<stem>_over_time.png` in `directory`."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}_distributions.png", out / f"{stem}_over_time.png"]
    _histograms(runs, paths[0])
    _over_time(runs, paths[1])
    return paths
