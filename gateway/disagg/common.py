"""Pieces both prefill/decode protocols share."""

from __future__ import annotations


def prefill_body(body: dict) -> dict:
    """The prefill leg's copy: one token, and nothing that only concerns the decode."""
    out = dict(body)
    out["max_tokens"] = 1
    if "max_completion_tokens" in out:
        out["max_completion_tokens"] = 1
    out.pop("min_tokens", None)
    return out


def merge_usage(decode: dict | None, prefill: dict | None) -> dict | None:
    """Decode's usage counts the prompt and every token once; add prefill's cache details."""
    if not decode:
        return decode
    details = (prefill or {}).get("prompt_tokens_details")
    if details and not decode.get("prompt_tokens_details"):
        decode = {**decode, "prompt_tokens_details": details}
    return decode
