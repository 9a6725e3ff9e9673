"""Compare `pd-gateway loadtest` runs with llmperf runs (token_benchmark_ray.py) of the same load.

Reads both tools' results (llmperf's layout, which loadtest also writes) and prints, per metric, both tools'
means with their standard errors, the ratio loadtest/llmperf and the difference in standard errors of the
difference (|z| < 2: no difference shown at this sample size).

    .venv/bin/python bench/llmperf_compare.py RUN_DIR [RUN_DIR ...]    # bench/llmperf_side_by_side.py outputs
    .venv/bin/python bench/llmperf_compare.py LLMPERF_DIR LOADTEST_DIR [--window START END]

A side-by-side run's directory holds `llmperf/`, `loadtest/` and `meta.json`; only the loadtest requests that
started inside llmperf's measuring window are kept (llmperf's rows carry no timestamps): from its first
completion minus its median e2e minus 1 s to its exit minus its median e2e. Several runs are also pooled.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loadtest.results import load_run  # noqa: E402
from loadtest.stats import E2E, IN_TOKENS, ITL, OUT_TOKENS, TTFT  # noqa: E402

METRICS = (TTFT, ITL, E2E, OUT_TOKENS, IN_TOKENS)


@dataclass
class Pair:
    name: str
    llmperf: list[dict]
    loadtest: list[dict]
    load: tuple[float, float] | None = None  # 1-min load average, min and max during the run


def _ok(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r.get("error_code") is None]


def _mean_se(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) / len(values) ** 0.5


def _in_window(rows: list[dict], t0: float, start: float, end: float) -> list[dict]:
    return [r for r in rows if start <= t0 + r["start_s"] <= end]


def side_by_side(run_dir: Path) -> Pair:
    """A bench/llmperf_side_by_side.py run, loadtest cut to llmperf's window."""
    meta = json.loads((run_dir / "meta.json").read_text())
    lp = load_run(run_dir / "llmperf")
    med = statistics.median(r[E2E] for r in _ok(lp.rows))
    start, end = meta["first_result_s"] - med - 1.0, meta["end_s"] - med
    loads = [row[1] for row in meta["loadavg"] if meta["bar_s"] <= row[0] <= meta["end_s"]] or [float("nan")]
    rows = []
    for lt in map(load_run, sorted(d for d in run_dir.glob("loadtest*") if d.is_dir())):  # one per process
        rows += _in_window(lt.rows, lt.summary["start_timestamp"], start, end)
    return Pair(run_dir.name, _ok(lp.rows), _ok(rows), (min(loads), max(loads)))


def report(pair: Pair) -> None:
    load = f", load average {pair.load[0]:.1f}-{pair.load[1]:.1f}" if pair.load else ""
    print(f"== {pair.name}: {len(pair.llmperf)} llmperf, {len(pair.loadtest)} loadtest requests{load}")
    print(f"{'metric (mean +- std. error)':24} {'llmperf':>22} {'loadtest':>22} {'ratio':>6} {'z':>6}")
    for m in METRICS:
        (a, sa), (b, sb) = _mean_se([r[m] for r in pair.llmperf]), _mean_se([r[m] for r in pair.loadtest])
        se = (sa**2 + sb**2) ** 0.5
        z = (b - a) / se if se else 0.0 if a == b else math.copysign(math.inf, b - a)  # e.g. a fixed input length
        print(f"{m:24} {a:>11.5g} +- {sa:<7.2g} {b:>11.5g} +- {sb:<7.2g} {b / a:>6.3f} {z:>6.2f}")
    a, b = (statistics.median(r[TTFT] for r in rows) for rows in (pair.llmperf, pair.loadtest))
    print(f"{'p50 ' + TTFT:24} {a:>22.5g} {b:>22.5g} {b / a:>6.3f}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="side-by-side run directories, or LLMPERF_DIR LOADTEST_DIR")
    p.add_argument("--window", nargs=2, type=float, metavar=("START", "END"), help="with LLMPERF_DIR LOADTEST_DIR")
    args = p.parse_args()
    paths = [Path(r) for r in args.runs]
    if all((d / "meta.json").exists() for d in paths):
        pairs = [side_by_side(d) for d in paths]
    elif len(paths) == 2:
        lp, lt = load_run(paths[0]), load_run(paths[1])
        rows = lt.rows
        if args.window:
            rows = _in_window(rows, lt.summary["start_timestamp"], *args.window)
        pairs = [Pair(f"{paths[0]} vs {paths[1]}", _ok(lp.rows), _ok(rows))]
    else:
        p.error("give side-by-side run directories (each with meta.json) or LLMPERF_DIR LOADTEST_DIR")
    for pair in pairs:
        report(pair)
    if len(pairs) > 1:
        report(Pair("pooled", [r for x in pairs for r in x.llmperf], [r for x in pairs for r in x.loadtest]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
