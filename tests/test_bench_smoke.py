"""The relay benchmark runs end to end with tiny numbers and prints its table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_relay_tiny_run(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    argv = [
        sys.executable,
        "-m",
        "bench.relay",
        "--streams",
        "1,4",
        "--tokens",
        "8",
        "--rounds",
        "1",
        "--seq-requests",
        "4",
        "--seq-tokens",
        "8",
        "--itl-ms",
        "5",
        "--pd-streams",
        "1,4",
        "--json",
        str(out),
        "--baseline",  # another checkout's gateway as a reference: this one's, for the plumbing
        str(ROOT),
    ]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    table = proc.stdout
    for text in (
        "SCENARIO",
        "VIA-DIRECT",
        "PIPE-DIRECT",
        "AIOHTTP-DIRECT",
        "GW-OFF-DIRECT",
        "GW-LOG-DIRECT",
        "BASE-DIRECT",
        "TARGET",
        "relay 1x8tok",
        "relay 4x8tok",
        "pd 1x8tok",
        "pd 4x8tok",
        "TTFT p50 ms",
        "ITL p50 ms",
        "gateway CPU-s / 1k chunks",
        "(vs client-run P->D)",
        "vs the gateway without telemetry",
        "errors",
        "a page read after 300 ms idle",
        "gateway heap on huge pages",
    ):
        assert text in table, f"{text!r} missing from:\n{table}"
    error_rows = [line.split() for line in table.splitlines() if line.split()[:1] == ["errors"]]
    assert len(error_rows) == 4 and all(set(r[1:4]) <= {"0"} for r in error_rows), table

    report = json.loads(out.read_text())
    assert report["total_errors"] == 0
    kinds = [(sc["kind"], sc["streams"]) for sc in report["scenarios"]]
    assert kinds == [("relay", 1), ("relay", 4), ("pd", 1), ("pd", 4)]
    for sc in report["scenarios"]:
        refs = ["pipe", "aiohttp", "gw-off", "gw-log", "base"]
        phases = ["direct", "via"] + (refs if sc["kind"] == "relay" else ["client_pd"])
        for phase in phases:
            ph = sc[phase]
            assert ph["errors"] == 0 and ph["ok"] == sc["requests"], (sc["kind"], phase, ph)
            # 8 content events + [DONE] per request
            assert ph["chunks"] == 9 * sc["requests"], (sc["kind"], phase, ph["chunks"])
            assert ph["ttft_p50_ms"] > 0 and ph["itl_p50_ms"] > 0
        assert sc["gateway_cpu_s_per_1k_chunks"] >= 0
