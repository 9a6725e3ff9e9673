"""JSON bodies from and to workers."""

from __future__ import annotations

import json

from .errors import UpstreamError


def dumps(obj: object) -> bytes:
    # vLLM serialises compactly and without ASCII escaping; match it byte for byte.
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def load_json(raw: bytes, who: str) -> dict:
    try:
        obj = json.loads(raw)
    except ValueError:
        raise UpstreamError(f"{who} answered with invalid JSON") from None
    if not isinstance(obj, dict):
        raise UpstreamError(f"{who} answered with a JSON {type(obj).__name__}, not an object")
    return obj
