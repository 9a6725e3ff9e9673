"""CLI: python -m workers.sim --port 8100 --role prefill --itl-ms 20 ..."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from .config import config_from_args
from .server import start_sim

log = logging.getLogger("workers.sim")


async def _serve(argv: Sequence[str] | None) -> None:
    server = await start_sim(config_from_args(argv))
    cfg = server.config
    log.info("sim worker %s role=%s kv=%s model=%s on %s", cfg.engine_id, cfg.role,
             cfg.kv_protocol, cfg.model, server.url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.close()


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        stream=sys.stderr)
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve(argv))
    else:
        uvloop.run(_serve(argv))


if __name__ == "__main__":
    main()
