"""Terminal tables: one run's summary, or two runs side by side (rich)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table

from .stats import E2E, IN_TOKENS, ITL, OUT_TOKENS, REQ_TPUT, TPOT, TTFT

ROWS = (
    (TTFT, "TTFT (s)"),
    (ITL, "inter-token latency (s, llmperf)"),
    (TPOT, "time per output token (s)"),
    (E2E, "end-to-end latency (s)"),
    (REQ_TPUT, "request output tok/s"),
    (IN_TOKENS, "input tokens"),
    (OUT_TOKENS, "output tokens"),
)
STATS = ("mean", "quantiles_p50", "quantiles_p90", "quantiles_p99")
TOTALS = (
    ("results_mean_output_throughput_token_per_s", "output throughput (tok/s)"),
    ("results_num_completed_requests", "completed requests"),
    ("results_mean_requests_in_flight", "requests in flight (mean)"),
    ("results_number_errors", "errors"),
    ("results_error_rate", "error rate"),
)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def summary_table(summary: dict[str, Any], title: str = "loadtest") -> Table:
    table = Table(title=title)
    table.add_column("metric")
    for stat in STATS:
        table.add_column(stat.removeprefix("quantiles_"), justify="right")
    for key, label in ROWS:
        table.add_row(label, *(_fmt(summary.get(f"results_{key}_{stat}")) for stat in STATS))
    for key, label in TOTALS:
        table.add_row(label, _fmt(summary.get(key)), "", "", "")
    return table


def compare_table(labels: Sequence[str], summaries: Sequence[dict[str, Any]]) -> Table:
    a, b = summaries
    table = Table(title="loadtest compare")
    table.add_column("metric")
    for label in labels:
        table.add_column(label, justify="right")
    table.add_column("B/A", justify="right")
    keys = [(f"results_{k}_{s}", f"{label} {s.removeprefix('quantiles_')}") for k, label in ROWS for s in STATS]
    for key, label in [*keys, *TOTALS]:
        va, vb = a.get(key), b.get(key)
        ratio = vb / va if isinstance(va, int | float) and isinstance(vb, int | float) and va else None
        table.add_row(label, _fmt(va), _fmt(vb), _fmt(ratio))
    return table


def print_table(table: Table, stream: TextIO) -> None:
    Console(file=stream, width=max(100, Console(file=stream).width)).print(table)
