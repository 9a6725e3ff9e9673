"""`pd-gateway bench`: the relay benchmark (bench/relay.py), and `pd-gateway bench routing`,
the routing benchmark (bench/routing.py)."""

from __future__ import annotations

import argparse
from typing import Any

from . import routing
from .relay import __doc__ as RELAY_DOC
from .relay import add_arguments, run


def add_bench_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "bench",
        help="relay benchmark: the same load direct to a simulated worker and through the gateway "
        "(`bench routing`: routing policies on simulated workers with a prefix cache)",
        description=RELAY_DOC,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(func=run_bench)
    kinds = p.add_subparsers(dest="bench_kind", metavar="{routing}")
    r = kinds.add_parser(
        "routing",
        help="routing policies against least_outstanding on simulated workers with a prefix cache",
        description=routing.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    routing.add_arguments(r)


def run_bench(args: argparse.Namespace) -> int:
    if args.bench_kind == "routing":
        return routing.run(args)
    return run(args)
