"""`pd-gateway loadtest`: arguments, the run, and `loadtest compare A B`."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .workloads import WORKLOADS, Shape, make_workload

if TYPE_CHECKING:
    from .progress import Progress
    from .runner import LoadSpec, RunResult

# aiohttp, rich and matplotlib load only when a load test or a comparison runs, not with every
# `pd-gateway` command.


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "loadtest", help="llmperf-compatible streaming load test of an OpenAI endpoint", description=__doc__
    )
    _load_args(p)
    sub = p.add_subparsers(dest="loadtest_command")
    c = sub.add_parser("compare", help="two runs side by side, plotted together")
    c.add_argument("a", help="results dir (or *_summary.json) of run A")
    c.add_argument("b", help="results dir (or *_summary.json) of run B")
    c.add_argument("--out", help="where to write the comparison plots (default: no plots)")
    return p


def _load_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--base-url",
        action="append",
        default=[],
        help="OpenAI base URL, e.g. http://host:8000/v1; repeat it or separate with ';' "
        "to spread requests round-robin (default: $OPENAI_API_BASE)",
    )
    p.add_argument("--model", help="served model name")
    p.add_argument("--api-key", default=None, help="default: $OPENAI_API_KEY")
    p.add_argument("--api", choices=["chat", "completions"], default="chat")
    p.add_argument(
        "--concurrency",
        "--num-concurrent-requests",
        type=int,
        default=None,
        help="closed loop: concurrent streams (default 10); with --rate: cap on requests in flight",
    )
    p.add_argument("--rate", type=float, default=None, help="Poisson arrivals at this many requests/s")
    p.add_argument(
        "--max-requests",
        "--max-num-completed-requests",
        type=int,
        default=10,
        help="requests to run (0: no limit, until --timeout)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=90.0,
        help="test duration limit in seconds (llmperf's --timeout): no request starts after it",
    )
    p.add_argument("--request-timeout", type=float, default=180.0, help="per-request limit (s)")
    p.add_argument("--warmup", type=int, default=0, help="requests sent before measuring, not recorded")
    shape = Shape()
    for name in ("mean_input_tokens", "stddev_input_tokens", "mean_output_tokens", "stddev_output_tokens"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(shape, name))
    p.add_argument("--additional-sampling-params", default="{}", help="JSON merged into every request body")
    p.add_argument("--no-ignore-eos", action="store_true", help="do not send ignore_eos=true")
    p.add_argument("--workload", choices=WORKLOADS, default="random")
    p.add_argument("--turns", type=int, default=4, help="multi-turn: turns per conversation")
    p.add_argument("--sessions", type=int, default=8, help="multi-turn: conversations interleaved")
    p.add_argument("--system-tokens", type=int, default=1000, help="shared-prefix: system prompt tokens")
    p.add_argument("--tokenizer", help="the served model's tokenizer directory (tokenizer.json)")
    p.add_argument(
        "--no-special-tokens",
        action="store_true",
        help="count output tokens without the special tokens the tokenizer adds (llmperf counts its BOS)",
    )
    p.add_argument("--results-dir", help="write llmperf-layout results and PNG plots here")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument(
        "--seed",
        type=int,
        default=11111,
        help="prompts and lengths are drawn from it: the same seed sends the same prompts (a prefix cache remembers)",
    )
    p.add_argument(
        "--processes",
        type=int,
        default=1,
        help="spread the streams (or --rate's arrivals) over N worker processes, merged into one run: "
        "a CPU-starved single process measures its streams late (llmperf runs a process per stream)",
    )
    p.add_argument("--show-errors", type=int, default=5, help="print the first N failures")
    p.add_argument("--metadata", default="", help="k=v,k=v added to the summary (as llmperf)")


def _urls(args: argparse.Namespace) -> list[str]:
    bases = [u for item in (args.base_url or [os.environ.get("OPENAI_API_BASE", "")]) for u in item.split(";")]
    path = "chat/completions" if args.api == "chat" else "completions"
    return [f"{b.strip().rstrip('/')}/{path}" for b in bases if b.strip()]


def _workload_options(args: argparse.Namespace) -> dict[str, Any]:
    if args.workload == "multi-turn":
        return {"turns": args.turns, "sessions": args.sessions}
    if args.workload == "shared-prefix":
        return {"system_tokens": args.system_tokens}
    return {}


def _spec(args: argparse.Namespace, urls: list[str]) -> LoadSpec:
    from .runner import LoadSpec

    key = args.api_key or os.environ.get("OPENAI_API_KEY")
    return LoadSpec(
        urls=urls,
        model=args.model,
        api=args.api,
        headers={"Authorization": f"Bearer {key}"} if key else {},
        concurrency=args.concurrency if args.concurrency is not None else (None if args.rate else 10),
        rate=args.rate,
        max_requests=args.max_requests or None,
        duration_s=args.timeout or None,
        request_timeout_s=args.request_timeout,
        warmup=args.warmup,
        extra=json.loads(args.additional_sampling_params),
        ignore_eos=not args.no_ignore_eos,
        seed=args.seed,
        show_errors=args.show_errors,
    )


def _metadata(args: argparse.Namespace, spec: LoadSpec, counter_name: str, start: float) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "model": args.model,
        "mean_input_tokens": args.mean_input_tokens,
        "stddev_input_tokens": args.stddev_input_tokens,
        "mean_output_tokens": args.mean_output_tokens,
        "stddev_output_tokens": args.stddev_output_tokens,
        "num_concurrent_requests": spec.concurrency,
        "additional_sampling_params": spec.extra,
        "request_rate": spec.rate,
        "workload": args.workload,
        "api": args.api,
        "base_urls": ";".join(spec.urls),
        "tokenizer": counter_name,
        "warmup": spec.warmup,
        "start_timestamp": start,
        "num_processes": args.processes,
    }
    for item in filter(None, args.metadata.split(",")):
        k, _, v = item.partition("=")
        meta[k] = v
    return meta


def run_loadtest(args: argparse.Namespace) -> int:
    from .processes import check
    from .progress import make_progress
    from .report import print_table, summary_table
    from .results import run_name, summary_document, write_results
    from .runner import run_load
    from .stats import request_metrics, summarize
    from .tokens import load_counter

    urls = _urls(args)
    if not urls or not args.model:
        print("pd-gateway loadtest: --base-url (or $OPENAI_API_BASE) and --model are required", file=sys.stderr)
        return 2
    logging.basicConfig(level="INFO", format="%(levelname)s %(message)s")
    try:
        counter = load_counter(args.tokenizer, not args.no_special_tokens)
        spec = _spec(args, urls)
    except Exception as exc:  # a bad tokenizer directory or sampling-params JSON: say so, no traceback
        print(f"pd-gateway loadtest: {exc}", file=sys.stderr)
        return 2
    shape = Shape(args.mean_input_tokens, args.stddev_input_tokens, args.mean_output_tokens, args.stddev_output_tokens)
    if args.processes != 1:
        if problem := check(spec, args.processes):
            print(f"pd-gateway loadtest: {problem}", file=sys.stderr)
            return 2
        try:
            result = _run_processes(args, spec, shape, make_progress(spec.max_requests))
        except RuntimeError as exc:  # every worker process failed; each has said why
            print(f"pd-gateway loadtest: {exc}", file=sys.stderr)
            return 1
    else:
        requests = make_workload(args.workload, shape, counter, args.seed, **_workload_options(args))
        result = asyncio.run(run_load(spec, requests, make_progress(spec.max_requests)))
    rows = [request_metrics(r, counter, result.t0) for r in result.records]
    summary = summary_document(
        name := run_name(args.model, args.mean_input_tokens, args.mean_output_tokens),
        _metadata(args, spec, counter.name, result.t0_unix),
        summarize(rows, result.wall_s),
    )
    print_table(summary_table(summary, f"loadtest {args.model} ({len(urls)} URL(s))"), sys.stdout)
    if args.results_dir:
        paths = list(write_results(args.results_dir, name, summary, rows))
        if not args.no_plots:
            from .plots import write_plots

            paths += write_plots(args.results_dir, name, [(name, rows)])
        print("results: " + ", ".join(str(p) for p in paths))
    return 0 if summary["results_num_completed_requests"] else 1


def _run_processes(args: argparse.Namespace, spec: LoadSpec, shape: Shape, progress: Progress) -> RunResult:
    from .processes import WorkloadSpec, run_processes, shares

    workload = WorkloadSpec(
        args.workload, shape, args.tokenizer, not args.no_special_tokens, args.seed, _workload_options(args)
    )
    return run_processes(shares(spec, workload, args.processes), spec.show_errors, progress)


def run_compare(args: argparse.Namespace) -> int:
    from .report import compare_table, print_table
    from .results import load_run

    runs = [load_run(args.a), load_run(args.b)]
    print_table(compare_table([args.a, args.b], [r.summary for r in runs]), sys.stdout)
    if args.out:
        from .plots import write_plots

        paths = write_plots(args.out, "compare", [(Path(r.label).name or r.label, r.rows) for r in runs])
        print("plots: " + ", ".join(str(p) for p in paths))
    return 0


def run(args: argparse.Namespace) -> int:
    if getattr(args, "loadtest_command", None) == "compare":
        return run_compare(args)
    return run_loadtest(args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return run(parser.parse_args(["loadtest", *(argv if argv is not None else sys.argv[1:])]))
