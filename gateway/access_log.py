"""One access log line per request, at its end: text (logfmt) or JSON, for Loki or ELK.

Values a client chose (the request id, the model name) are quoted and escaped, so a line
can never be split or forged: text values outside [A-Za-z0-9._:/@+-] are JSON strings. The
model name is cut to `logs.ECHO_LIMIT` characters (the request id is bounded when read).
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Literal

from .logs import clip
from .telemetry.trace import Trace

LogFormat = Literal["text", "json"]
ACCESS_LOGGER = "pd_gateway.access"
_BARE = re.compile(r"[A-Za-z0-9._:/@+-]+")


def fields(trace: Trace, total_s: float) -> dict[str, object]:
    """The line's fields, in order; times in milliseconds, absent values as None."""
    return {
        "request_id": trace.request_id,
        "trace_id": trace.trace_id,
        "route": trace.route,
        "model": clip(trace.model) or None,  # the client's value: bounded
        "pool": trace.pool or None,
        "prefill": trace.endpoints.get("prefill"),
        "decode": trace.endpoints.get("decode"),
        "replica": trace.endpoints.get("replica"),
        "status": trace.status,
        "outcome": trace.outcome,
        "stream": trace.stream,
        "prompt_tokens": trace.prompt_tokens,
        "completion_tokens": trace.completion_tokens,
        "retries": trace.retries,
        "replays": trace.replays,
        "queue_ms": _ms(trace.queued),
        "ttft_ms": _ms(trace.ttft),
        "total_ms": _ms(total_s),
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def text_line(values: dict[str, object]) -> str:
    return " ".join(f"{k}={_text(v)}" for k, v in values.items() if v is not None)


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    text = str(value)
    return text if _BARE.fullmatch(text) else json.dumps(text)


class AccessLog:
    def __init__(self, log_format: LogFormat) -> None:
        self.json = log_format == "json"
        self.log = logging.getLogger(ACCESS_LOGGER)

    def write(self, trace: Trace, total_s: float) -> None:
        if not self.log.isEnabledFor(logging.INFO):
            return
        values = fields(trace, total_s)
        if self.json:
            self.log.info(json.dumps(values, separators=(",", ":")), extra={"access": values})
        else:
            self.log.info(text_line(values))


class JsonFormatter(logging.Formatter):
    """Every log line as one JSON object; an access line's fields sit at its top level."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        access = getattr(record, "access", None)
        if isinstance(access, dict):
            out.update(access)
        else:
            out["message"] = record.getMessage()
            if record.exc_info:
                out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, separators=(",", ":"))


def configure_logging(log_format: LogFormat, level: str) -> None:
    """Root logging for `pd-gateway serve`: the usual text lines, or one JSON object per line."""
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
