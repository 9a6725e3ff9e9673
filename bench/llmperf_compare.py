"""Compare a `pd-gateway loadtest` run with an llmperf run (token_benchmark_ray.py) of the same load.

Reads both results directories (llmperf's layout, which loadtest also writes) and prints, per metric,
both tools' means and the ratio loadtest/llmperf. For runs made at the same time against the same server,
`--window START END` (epoch seconds) keeps only the loadtest requests that started inside llmperf's
measuring window (llmperf's rows carry no timestamps; loadtest's summary has `start_timestamp`).

    .venv/bin/python bench/llmperf_compare.py LLMPERF_DIR LOADTEST_DIR [--window START END]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loadtest.results import load_run  # noqa: E402
from loadtest.stats import E2E, IN_TOKENS, ITL, OUT_TOKENS, REQ_TPUT, TTFT  # noqa: E402

METRICS = (TTFT, ITL, E2E, OUT_TOKENS, IN_TOKENS, REQ_TPUT)


def _means(rows: list[dict], wall_s: float) -> dict[str, float]:
    ok = [r for r in rows if r.get("error_code") is None]
    out = {m: statistics.fmean(r[m] for r in ok) for m in METRICS}
    for m in (TTFT, ITL, E2E):
        out[f"  +- (std. error of {m})"] = statistics.stdev(r[m] for r in ok) / len(ok) ** 0.5
    out["p50 " + TTFT] = statistics.median(r[TTFT] for r in ok)
    out["requests"] = len(ok)
    out["mean requests in flight"] = sum(r[E2E] for r in ok) / wall_s
    return out


def _wall_s(summary: dict) -> float:
    """The run's wall time, as both tools define it (completed requests over requests per minute)."""
    return summary["results_num_completed_requests"] / summary["results_num_completed_requests_per_min"] * 60


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("llmperf")
    p.add_argument("loadtest")
    p.add_argument("--window", nargs=2, type=float, metavar=("START", "END"))
    p.add_argument(
        "--llmperf-startup",
        type=float,
        default=0.0,
        help="seconds of llmperf's wall time before its first result (Ray actors starting)",
    )
    args = p.parse_args()
    lp, lt = load_run(args.llmperf), load_run(args.loadtest)
    rows = lt.rows
    if args.window:
        t0 = lt.summary["start_timestamp"]
        rows = [r for r in rows if args.window[0] <= t0 + r["start_s"] <= args.window[1]]
    wall_b = _wall_s(lt.summary)
    if args.window:
        wall_b = max(r["start_s"] + r[E2E] for r in rows) - min(r["start_s"] for r in rows)
    a, b = _means(lp.rows, _wall_s(lp.summary) - args.llmperf_startup), _means(rows, wall_b)
    print(f"{'metric (mean unless said)':34} {'llmperf':>12} {'loadtest':>12} {'ratio':>7}")
    for key in a:
        ratio = f"{b[key] / a[key]:>7.3f}" if not key.startswith(" ") else ""
        print(f"{key:34} {a[key]:>12.5g} {b[key]:>12.5g} {ratio}")
    tput_a = lp.summary["results_mean_output_throughput_token_per_s"]
    tput_b = lt.summary["results_mean_output_throughput_token_per_s"]
    print(f"{'run output throughput (tok/s)':34} {tput_a:>12.5g} {tput_b:>12.5g} {tput_b / tput_a:>7.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
