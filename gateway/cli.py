"""`pd-gateway` console script: serve, plan, up, bench, loadtest."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from .config import ConfigError, GatewayConfig, load_config

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def _serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the gateway (with no config: an embedded demo on simulated workers)")
    p.add_argument("--config", help="gateway YAML config")
    p.add_argument("--host", help="listen address (listen.host)")
    p.add_argument("--port", type=int, help="listen port (listen.port)")
    p.add_argument("--worker", action="append", default=[], help="a replica URL (repeatable); makes a pool 'default'")
    p.add_argument("--connect-timeout", type=float, dest="connect_s")
    p.add_argument("--first-byte-timeout", type=float, dest="first_byte_s")
    p.add_argument("--between-chunks-timeout", type=float, dest="between_chunks_s")
    p.add_argument("--total-timeout", type=float, dest="total_s")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])


def _overrides(args: argparse.Namespace) -> dict:
    out: dict = {}
    if args.host:
        out["listen.host"] = args.host
    if args.port is not None:
        out["listen.port"] = args.port
    for key in ("connect_s", "first_byte_s", "between_chunks_s", "total_s"):
        if getattr(args, key) is not None:
            out[f"timeouts.{key}"] = getattr(args, key)
    if args.worker:
        out["pools"] = [{"name": "default", "kind": "replicas", "workers": args.worker}]
    if args.log_level:
        out["log_level"] = args.log_level
    return out


async def serve(config: GatewayConfig) -> None:
    from .server import start_gateway

    gateway = await start_gateway(config, install_signal_handlers=True)
    await gateway.wait()


async def _embedded(overrides: dict) -> None:
    """The accelerator-free default: two simulated replicas behind the gateway."""
    from workers.sim import SimConfig, start_sim

    sims = [await start_sim(SimConfig(port=0, model="sim-model", itl_ms=20, ttft_ms=50)) for _ in range(2)]
    overrides.setdefault("pools", [{"name": "sim", "kind": "replicas", "workers": [s.url for s in sims]}])
    config = load_config(None, overrides)
    logging.getLogger("pd_gateway").info(
        "embedded demo: simulated workers %s; try: curl http://%s:%d/v1/completions "
        "-H 'content-type: application/json' -d '{\"model\":\"sim-model\",\"prompt\":\"hi\",\"stream\":true}'",
        [s.url for s in sims], config.listen.host, config.listen.port,
    )
    try:
        await serve(config)
    finally:
        for s in sims:
            await s.close()


def _run(coro) -> None:
    try:
        import uvloop

        uvloop.run(coro)
    except ImportError:
        asyncio.run(coro)


def cmd_serve(args: argparse.Namespace) -> int:
    overrides = _overrides(args)
    logging.basicConfig(level=(args.log_level or "info").upper(), format=LOG_FORMAT)
    try:
        if args.config is None and not args.worker:
            _run(_embedded(overrides))
            return 0
        config = load_config(args.config, overrides)
    except ConfigError as err:
        print(f"pd-gateway: {err}", file=sys.stderr)
        return 2
    logging.getLogger().setLevel(config.log_level.upper())
    _run(serve(config))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pd-gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    commands = {"serve": cmd_serve}
    from workers.plan_cli import add_plan_parser, run_plan

    add_plan_parser(sub)
    commands["plan"] = run_plan
    from workers.up_cli import add_up_parser, run_up

    add_up_parser(sub)
    commands["up"] = run_up
    from bench.cli import add_bench_parser, run_bench

    add_bench_parser(sub)
    commands["bench"] = run_bench
    from loadtest import cli as loadtest_cli

    loadtest_cli.add_parser(sub)
    commands["loadtest"] = loadtest_cli.run
    args = parser.parse_args(argv)
    if argv is None and args.command == "serve":  # this process's own command line: safe to replace
        from .hugepages import reexec_on_huge_pages

        reexec_on_huge_pages()
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
