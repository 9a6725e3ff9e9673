"""`pd-gateway`: serve, plan, up, loadtest."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from gateway.extras import missing_extra

from .serve import add_serve_parser, run_serve

Command = Callable[[argparse.Namespace], int]

# `pd-gateway loadtest` needs the `loadtest` extra; these are the modules it brings.
LOADTEST_MODULES = ("aiohttp", "rich", "matplotlib", "tokenizers")


def _parser() -> tuple[argparse.ArgumentParser, dict[str, Command]]:
    parser = argparse.ArgumentParser(prog="pd-gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    add_serve_parser(sub)
    commands: dict[str, Command] = {}
    # Building a parser imports no command's dependencies: each loads them when it runs.
    from workers.plan.cli import add_plan_parser, run_plan

    add_plan_parser(sub)
    commands["plan"] = run_plan
    from .up import add_up_parser, run_up

    add_up_parser(sub)
    commands["up"] = run_up
    from loadtest import cli as loadtest_cli

    loadtest_cli.add_parser(sub)
    commands["loadtest"] = _needs_extra("loadtest", LOADTEST_MODULES, loadtest_cli.run)
    return parser, commands


def _needs_extra(extra: str, modules: tuple[str, ...], command: Command) -> Command:
    """`command`, or one line naming the extra to install and exit status 2 when it is missing."""

    def run(args: argparse.Namespace) -> int:
        line = missing_extra(extra, modules, f"pd-gateway {args.command}")
        if line is not None:
            print(f"pd-gateway: {line}", file=sys.stderr)
            return 2
        return command(args)

    return run


def main(argv: list[str] | None = None) -> int:
    parser, commands = _parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        return run_serve(args, own_process=argv is None)
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
