"""Pieces both prefill/decode protocols share."""

from __future__ import annotations

import json

from ..errors import UpstreamError


def dumps(obj: object) -> bytes:
    # vLLM serialises compactly and without ASCII escaping; match it byte for byte.
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def prefill_body(body: dict) -> dict:
    """The prefill leg's copy: one token, and nothing that only concerns the decode."""
    out = dict(body)
    out["max_tokens"] = 1
    if "max_completion_tokens" in out:
        out["max_completion_tokens"] = 1
    out.pop("min_tokens", None)
    return out


def load_json(raw: bytes, who: str) -> dict:
    try:
        obj = json.loads(raw)
    except ValueError:
        raise UpstreamError(f"{who} answered with invalid JSON") from None
    if not isinstance(obj, dict):
        raise UpstreamError(f"{who} answered with a JSON {type(obj).__name__}, not an object")
    return obj


def merge_usage(decode: dict | None, prefill: dict | None) -> dict | None:
    """Decode's usage counts the prompt and every token once; add prefill's cache details."""
    if not decode:
        return decode
    details = (prefill or {}).get("prompt_tokens_details")
    if details and not decode.get("prompt_tokens_details"):
        decode = {**decode, "prompt_tokens_details": details}
    return decode
