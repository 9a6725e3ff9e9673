"""OpenAI-style error envelopes: `{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations

import json

from starlette.responses import Response

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout_error",
}


def error_dict(message: str, status: int, code: str | None = None) -> dict:
    return {
        "error": {
            "message": message,
            "type": _TYPES.get(status, "server_error"),
            "param": None,
            "code": code or str(status),
        }
    }


class GatewayError(Exception):
    """An error the gateway itself answers with; carries its HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}

    def to_dict(self) -> dict:
        return error_dict(self.message, self.status, self.code)

    def to_response(self, request_id: str | None = None) -> Response:
        headers = dict(self.headers)
        if request_id:
            headers["x-request-id"] = request_id
        return Response(
            json.dumps(self.to_dict()).encode(),
            status_code=self.status,
            media_type="application/json",
            headers=headers,
        )


class UpstreamError(GatewayError):
    """A worker failed (connect error, timeout, broken stream, 5xx)."""

    def __init__(self, message: str, status: int = 502, code: str = "upstream_error") -> None:
        super().__init__(status, message, code)


class UpstreamStatus(Exception):
    """A worker answered with a non-2xx status; its status and body go to the client as-is."""

    def __init__(self, status: int, body: bytes, content_type: str) -> None:
        super().__init__(f"upstream answered {status}")
        self.status = status
        self.body = body
        self.content_type = content_type
