"""Run llmperf (ray-project/llmperf, unmodified, from its own venv) and `pd-gateway loadtest` at the same time
against one endpoint with the same knobs, and record when llmperf measured.

loadtest starts when llmperf's progress bar appears (its Ray actors are up) and gets Ctrl-C when llmperf exits.
`OUT/meta.json` holds the bar's time, the first completion's time, llmperf's exit (epoch seconds) and the load
average every 5 s; `bench/llmperf_compare.py OUT...` compares the runs over llmperf's window.

    .venv/bin/python bench/llmperf_side_by_side.py --llmperf-src /tmp/llmperf-src \
      --llmperf-python /tmp/llmperf-venv/bin/python --base-url http://127.0.0.1:8080/v1 --model tiny-llama \
      --tokenizer .models/tiny-llama --requests 300 --out /tmp/lt/g1
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

SHAPE = {"mean_input_tokens": 150, "stddev_input_tokens": 30, "mean_output_tokens": 100, "stddev_output_tokens": 20}


def shape_flag(name: str) -> str:
    """The command-line flag of a SHAPE entry, spelt the same by llmperf, loadtest and this script."""
    return "--" + name.replace("_", "-")


def _knobs(args: argparse.Namespace) -> list[str]:
    """The flags both tools spell the same way: the request shape and the extra sampling parameters."""
    knobs: list[str] = []
    for name in SHAPE:
        knobs += [shape_flag(name), str(getattr(args, name))]
    return [*knobs, "--additional-sampling-params", args.sampling_params]


def _llmperf_cmd(args: argparse.Namespace, out: Path) -> list[str]:
    return [
        args.llmperf_python, "token_benchmark_ray.py", "--model", args.model, *_knobs(args),
        "--num-concurrent-requests", str(args.concurrency), "--max-num-completed-requests", str(args.requests),
        "--timeout", "900", "--results-dir", str(out / "llmperf"), "--llm-api", "openai",
    ]  # fmt: skip


def _loadtest_cmd(args: argparse.Namespace, out: Path, index: int) -> list[str]:
    """Process `index` of --loadtest-procs (each its share of the streams, its own seed and results dir)."""
    return [
        sys.executable, "-m", "loadtest", "--base-url", args.base_url, "--model", args.model,
        "--tokenizer", args.tokenizer, *_knobs(args), "--no-ignore-eos",
        "--concurrency", str(args.concurrency // args.loadtest_procs),
        "--max-requests", "0", "--timeout", "900", "--results-dir", str(out / f"loadtest{index or ''}"),
        "--no-plots", "--seed", str(args.seed + index), "--processes", str(args.loadtest_processes),
    ]  # fmt: skip


def _watch_bar(stream: IO[bytes], meta: dict[str, Any], bar_seen: threading.Event, log: IO[bytes]) -> None:
    """Read llmperf's stderr (tqdm writes '\\r  3/300 [...]'): stamp the bar's appearance and first completion."""
    buf = b""
    while chunk := stream.read1(4096):  # type: ignore[attr-defined]
        log.write(chunk)
        buf = (buf + chunk)[-512:]
        for done in re.findall(rb"\|\s*(\d+)/\d+ \[", buf):
            if "bar_s" not in meta:
                meta["bar_s"] = time.time()
                bar_seen.set()
            if int(done) > 0 and "first_result_s" not in meta:
                meta["first_result_s"] = time.time()


def _sample_load(meta: dict[str, Any], stop: threading.Event) -> None:
    while not stop.is_set():
        meta["loadavg"].append([round(time.time(), 1), *os.getloadavg()])
        stop.wait(5)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--llmperf-src", required=True, help="llmperf's work tree (holds token_benchmark_ray.py)")
    p.add_argument("--llmperf-python", required=True)
    p.add_argument("--base-url", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--requests", type=int, default=300, help="llmperf's --max-num-completed-requests")
    p.add_argument("--seed", type=int, default=11111, help="loadtest's seed")
    p.add_argument("--loadtest-procs", type=int, default=1, help="split loadtest's streams over N processes")
    p.add_argument("--loadtest-processes", type=int, default=1, help="loadtest's own --processes (one run, merged)")
    for name, default in SHAPE.items():
        p.add_argument(shape_flag(name), type=int, default=default)
    p.add_argument(
        "--sampling-params", default='{"ignore_eos": true}', help="JSON both tools add to every request body"
    )
    p.add_argument("--out", required=True)
    args = p.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OPENAI_API_BASE": args.base_url, "OPENAI_API_KEY": os.environ.get("OPENAI_API_KEY", "none")}
    meta: dict[str, Any] = {"loadavg": [], "argv": sys.argv, "start_s": time.time()}
    stop, bar_seen = threading.Event(), threading.Event()
    threading.Thread(target=_sample_load, args=(meta, stop), daemon=True).start()
    lp = subprocess.Popen(
        _llmperf_cmd(args, out), cwd=args.llmperf_src, env={**env, "PYTHONPATH": "src"},
        stdout=open(out / "llmperf.out", "wb"), stderr=subprocess.PIPE,
    )  # fmt: skip
    assert lp.stderr is not None
    watcher = threading.Thread(target=_watch_bar, args=(lp.stderr, meta, bar_seen, open(out / "llmperf.err", "wb")))
    watcher.start()
    while not bar_seen.wait(0.2):
        if lp.poll() is not None:
            print("llmperf exited before its progress bar", file=sys.stderr)
            return 1
    lts = [
        subprocess.Popen(_loadtest_cmd(args, out, i), env=env, stdout=open(out / f"loadtest{i or ''}.out", "wb"))
        for i in range(args.loadtest_procs)
    ]
    meta["llmperf_rc"] = lp.wait()
    meta["end_s"] = time.time()
    for lt in lts:
        lt.send_signal(signal.SIGINT)
    meta["loadtest_rc"] = max(lt.wait() for lt in lts)
    stop.set()
    watcher.join()
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    loads = [row[1] for row in meta["loadavg"]]
    print(f"{out}: llmperf rc {meta['llmperf_rc']}, loadtest rc {meta['loadtest_rc']}, "
          f"{meta['end_s'] - meta['bar_s']:.0f} s, load average (1 min) {min(loads):.1f}-{max(loads):.1f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
