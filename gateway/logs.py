"""Log lines that carry client values: every such value is escaped before it is logged."""

from __future__ import annotations

import logging

log = logging.getLogger("pd_gateway")
_LIMIT = 200


def safe(value: object, limit: int = _LIMIT) -> str:
    """`value` as one printable line: control and non-ASCII characters escaped, long values cut."""
    text = str(value)
    if len(text) > limit:
        text = text[:limit] + f"...({len(text) - limit} more)"
    if text.isascii() and text.isprintable():
        return text
    return text.encode("unicode_escape").decode("ascii")
