"""`pd-gateway`: serve, plan, up, bench, loadtest."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from .serve import add_serve_parser, run_serve

Command = Callable[[argparse.Namespace], int]


def _parser() -> tuple[argparse.ArgumentParser, dict[str, Command]]:
    parser = argparse.ArgumentParser(prog="pd-gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    add_serve_parser(sub)
    commands: dict[str, Command] = {}
    # Each command's own imports wait until it runs: `plan` needs no uvicorn.
    from workers.plan.cli import add_plan_parser, run_plan

    add_plan_parser(sub)
    commands["plan"] = run_plan
    from .up import add_up_parser, run_up

    add_up_parser(sub)
    commands["up"] = run_up
    from bench.cli import add_bench_parser, run_bench

    add_bench_parser(sub)
    commands["bench"] = run_bench
    from loadtest import cli as loadtest_cli

    loadtest_cli.add_parser(sub)
    commands["loadtest"] = loadtest_cli.run
    return parser, commands


def main(argv: list[str] | None = None) -> int:
    parser, commands = _parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        return run_serve(args, own_process=argv is None)
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
