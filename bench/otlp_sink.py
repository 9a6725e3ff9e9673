"""An OTLP/HTTP receiver that takes every export and keeps nothing, for the relay benchmark's
`gw-trace` reference (the gateway exporting its spans). It exits when its parent does.

    python -m bench.otlp_sink --port 4318
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .procs import HOST


class _Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the exporter's session reuses its connection

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers.get("content-length", "0")))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def _exit_with(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.otlp_sink", description=__doc__)
    p.add_argument("--port", type=int, required=True)
    port = p.parse_args(argv).port
    threading.Thread(target=_exit_with, args=(os.getppid(),), daemon=True).start()
    ThreadingHTTPServer((HOST, port), _Sink).serve_forever()


if __name__ == "__main__":
    main()
