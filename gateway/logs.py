"""Log lines that carry client values: every such value is escaped before it is logged."""

from __future__ import annotations

import logging

log = logging.getLogger("pd_gateway")
_LIMIT = 200
ECHO_LIMIT = 256  # characters of a client's value (a model name) echoed in a log line or an answer


def clip(text: str, limit: int = ECHO_LIMIT) -> str:
    """`text` cut to `limit` characters, with a marker saying how many were left out."""
    return text if len(text) <= limit else text[:limit] + f"...({len(text) - limit} more)"


def safe(value: object, limit: int = _LIMIT) -> str:
    """`value` as one printable line: control and non-ASCII characters escaped, long values cut."""
    text = clip(str(value), limit)
    if text.isascii() and text.isprintable():
        return text
    return text.encode("unicode_escape").decode("ascii")
