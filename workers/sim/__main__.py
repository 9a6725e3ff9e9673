"""CLI: python -m workers.sim --port 8100 --role prefill --itl-ms 20 ..."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence

from .config import SimConfig, config_from_args
from .cores import CoreClaim, CoreInUse, claim_cores, core_dir
from .server import start_sim

log = logging.getLogger("workers.sim")


def _claim(config: SimConfig) -> CoreClaim | None:
    """Hold --neuron-cores for the process lifetime, refusing cores a live worker holds."""
    if config.neuron_cores is None:
        return None
    try:
        return claim_cores(config.neuron_cores, core_dir(os.environ))
    except (CoreInUse, ValueError) as err:
        sys.exit(f"workers.sim: {err}")


async def _serve(config: SimConfig) -> None:
    server = await start_sim(config)
    cfg = server.config
    log.info(
        "sim worker %s role=%s kv=%s model=%s on %s", cfg.engine_id, cfg.role, cfg.kv_protocol, cfg.model, server.url
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.close()


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    config = config_from_args(argv)
    claim = _claim(config)  # before binding the port: vLLM, too, takes the cores first
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve(config))
    else:
        uvloop.run(_serve(config))
    if claim is not None:
        claim.release()


if __name__ == "__main__":
    main()
