"""`pd-gateway serve`: the gateway, on a config, on worker URLs, or as the embedded default."""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import sys
from collections.abc import Callable

from gateway.access_log import configure_logging
from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.hugepages import reexec_on_huge_pages


def add_serve_parser(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument("--processes", type=int, help="gateway processes on the one port (processes); limits are shared out")
    p.add_argument("--check-config", action="store_true", help="validate the config, print it, and exit")


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
    if getattr(args, "processes", None) is not None:
        out["processes"] = args.processes
    return out


async def serve(config: GatewayConfig, source: Callable[[], GatewayConfig] | None = None) -> None:
    """`source` reads the config again on SIGHUP and `POST /admin/config/reload`."""
    from gateway.server import start_gateway  # uvicorn + FastAPI: loaded only to serve

    gateway = await start_gateway(config, install_signal_handlers=True, source=source)
    await gateway.wait()


async def _embedded(overrides: dict) -> None:
    """The accelerator-free default: two simulated replicas (`sim-model`) and a simulated
    1P1D prefill/decode pool (`sim-pd-model`, nixl) behind the gateway."""
    from workers.sim import SimConfig, start_sim

    sims = [await start_sim(SimConfig(port=0, model="sim-model", itl_ms=20, ttft_ms=50)) for _ in range(2)]
    p = await start_sim(SimConfig(port=0, model="sim-pd-model", role="prefill", kv_protocol="nixl", ttft_ms=50))
    d = await start_sim(
        SimConfig(port=0, model="sim-pd-model", role="decode", kv_protocol="nixl", itl_ms=20, kv_peers=[p.url])
    )
    overrides.setdefault(
        "pools",
        [
            {"name": "sim", "kind": "replicas", "models": ["sim-model"], "workers": [s.url for s in sims]},
            {
                "name": "sim-pd",
                "kind": "pd",
                "protocol": "nixl",
                "models": ["sim-pd-model"],
                "prefill": [p.url],
                "decode": [d.url],
                "disaggregate_min_tokens": 0,  # the demo shows the P->D path for any prompt
            },
        ],
    )
    sims += [p, d]
    config = load_config(None, overrides)
    for line in embedded_banner(config.listen.host, config.listen.port):
        logging.getLogger("pd_gateway").info("%s", line)
    try:
        await serve(config)
    finally:
        for s in sims:
            await s.close()


def embedded_banner(host: str, port: int) -> list[str]:
    """The embedded demo's first log lines: where the dashboard is, and a request for each pool."""
    url = f"http://{'localhost' if host in ('127.0.0.1', '0.0.0.0') else host}:{port}"
    body = '{"model":"%s","prompt":"hi","max_tokens":16,"stream":true}'
    curl = f"curl -N {url}/v1/completions -H 'content-type: application/json' -d '{body}'"
    return [
        "embedded demo: 2 simulated replicas serve 'sim-model'; a simulated 1P1D pool (nixl) serves 'sim-pd-model'",
        f"live status: {url}/dashboard   metrics: {url}/metrics",
        f"disaggregated (prefill -> decode) request: {curl % 'sim-pd-model'}",
        f"data-parallel request: {curl % 'sim-model'}",
    ]


def _run(coro) -> None:
    try:
        import uvloop

        uvloop.run(coro)
    except ImportError:
        asyncio.run(coro)


def run_serve(args: argparse.Namespace, own_process: bool = False) -> int:
    """`own_process`: this is the process's own command line, which may be re-executed."""
    overrides = _overrides(args)
    configure_logging("text", args.log_level or "info")
    if args.config is None and not args.worker and not args.check_config:
        _run(_embedded(overrides))
        return 0
    try:
        config = load_config(args.config, overrides)
    except ConfigError as err:
        print(f"pd-gateway: {err}", file=sys.stderr)
        return 2
    if own_process and config.tuning.huge_pages:
        reexec_on_huge_pages()
    if args.check_config:
        print(config.model_dump_json(indent=2))
        return 0
    configure_logging(config.log_format, config.log_level)
    source = functools.partial(load_config, args.config, overrides)  # read again on SIGHUP
    if config.processes > 1:
        from gateway.processes import serve_processes

        return serve_processes(config, source)
    _run(serve(config, source))
    return 0
