"""`pd-gateway bench`: the relay benchmark (bench/relay.py) as a subcommand."""

from __future__ import annotations

import argparse
from typing import Any

from .relay import __doc__ as RELAY_DOC
from .relay import add_arguments, run


def add_bench_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "bench",
        help="relay benchmark: the same load direct to a simulated worker and through the gateway",
        description=RELAY_DOC,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(func=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    return run(args)
