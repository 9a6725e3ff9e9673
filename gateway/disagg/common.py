"""Pieces both prefill/decode protocols share."""

from __future__ import annotations

from starlette.responses import Response

from ..payload import dumps


def prefill_body(body: dict) -> dict:
    """The prefill leg's copy: one token, and nothing that only concerns the decode."""
    out = dict(body)
    out["max_tokens"] = 1
    if "max_completion_tokens" in out:
        out["max_completion_tokens"] = 1
    out.pop("min_tokens", None)
    return out


def with_prefill_usage(p_usage: dict | None) -> bool:
    """Prefill's usage has details (cached tokens) that decode's lacks."""
    return bool((p_usage or {}).get("prompt_tokens_details"))


def merge_usage(decode: dict | None, prefill: dict | None) -> dict | None:
    """Decode's usage counts the prompt and every token once; add prefill's cache details."""
    if not decode:
        return decode
    details = (prefill or {}).get("prompt_tokens_details")
    if details and not decode.get("prompt_tokens_details"):
        decode = {**decode, "prompt_tokens_details": details}
    return decode


def merged_response(
    d_raw: bytes, d_answer: dict, p_usage: dict | None, status: int, content_type: str, request_id: str
) -> Response:
    """Decode's non-streaming answer, with prefill's usage details merged in when it has some."""
    headers = {"x-request-id": request_id}
    if not with_prefill_usage(p_usage):
        return Response(d_raw, status, media_type=content_type, headers=headers)
    d_answer["usage"] = merge_usage(d_answer.get("usage"), p_usage)
    return Response(dumps(d_answer), status, media_type="application/json", headers=headers)
