"""Every error the gateway answers with, and the one place that renders them.

    GatewayError (status, message, code, param, headers)   an answer the gateway gives itself
    ├── UpstreamError (502)                                 a worker failed
    │   ├── UpstreamTimeout (504)                           ... within one of the timeouts
    │   └── Retryable                                       ... before answering: another worker may take it
    │       ├── ConnectFailed                               ... could not be reached at all
    │       └── NoAnswer                                    ... broke the connection before answering
    └── UpstreamStatus                                      a worker answered non-2xx: a 4xx goes to the
                                                            client as-is, a 3xx or 5xx becomes a 502
    ClientGone                                              the client went away; nothing is sent
    ClientStalled                                           the client stopped reading; it is dropped

Everything else that escapes a request is a bug, answered as a 500 by `render`. Clients see
the OpenAI envelope `{"error": {"message", "type", "param", "code"}}`, as a response
(`render`) or, once a stream has started, as a last SSE event (`sse_event`).
"""

from __future__ import annotations

import json
import logging

from starlette.responses import Response

log = logging.getLogger("pd_gateway")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    431: "invalid_request_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout_error",
}
_DONE = b"data: [DONE]\n\n"


class GatewayError(Exception):
    """An error the gateway itself answers with; carries its HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}
        self.param = param

    def envelope(self) -> dict:
        return envelope(self.message, self.status, self.code, self.param)


class UpstreamError(GatewayError):
    """A worker failed (connect error, timeout, broken stream, garbage)."""

    kind = "broken_stream"  # for the upstream failure counter: connect, timeout, 5xx, broken_stream, invalid

    def __init__(self, message: str, status: int = 502, code: str = "upstream_error") -> None:
        super().__init__(status, message, code)


class UpstreamTimeout(UpstreamError):
    """A worker did not answer, or stopped sending, within a timeout."""

    kind = "timeout"

    def __init__(self, message: str) -> None:
        super().__init__(message, 504, "timeout")


class Retryable(UpstreamError):
    """The worker produced nothing: the request may go to another worker."""


class ConnectFailed(Retryable):
    """The worker could not be reached at all."""

    kind = "connect"

    def __init__(self, message: str) -> None:
        super().__init__(message, 502, "worker_unreachable")


class NoAnswer(Retryable):
    """The connection broke before the worker answered (it died, or closed a pooled connection)."""

    @classmethod
    def about(cls, url: str, err: Exception) -> NoAnswer:
        return cls(f"worker {url} failed before answering: {err}")


class UpstreamStatus(GatewayError):
    """A worker answered with a non-2xx status; `body` is what it said."""

    kind = "5xx"

    def __init__(self, status: int, body: bytes, content_type: str) -> None:
        detail = body[:500].decode(errors="replace")
        passed = 400 <= status < 500
        super().__init__(status if passed else 502, f"worker answered {status}: {detail}", "upstream_error")
        self.worker_status = status
        self.body = body
        self.content_type = content_type

    @property
    def passed_through(self) -> bool:
        """A worker's 4xx is the client's own fault: it goes back unchanged. A redirect is not
        followed nor passed on: the worker is misconfigured."""
        return 400 <= self.worker_status < 500


class ClientGone(Exception):
    """The client disconnected before its response started."""


class ClientStalled(Exception):
    """A write to the client did not drain in time (`timeouts.client_write_s`, or the request's
    total timeout came first): the client's fault, never the worker's."""


def envelope(message: str, status: int, code: str | None = None, param: str | None = None) -> dict:
    return {
        "error": {
            "message": message,
            "type": _TYPES.get(status, "server_error"),
            "param": param,
            "code": code or str(status),
        }
    }


def bad_request(message: str, param: str | None = None, code: str = "invalid_request") -> GatewayError:
    return GatewayError(400, message, code, param=param)


def internal_error() -> GatewayError:
    return GatewayError(500, "the gateway failed to handle the request; see its log", "internal_error")


def render(err: GatewayError, request_id: str | None = None) -> Response:
    """The HTTP response for `err`: the OpenAI envelope, or a worker's 4xx as it was."""
    headers = dict(err.headers)
    if request_id:
        headers["x-request-id"] = request_id
    if isinstance(err, UpstreamStatus) and err.passed_through:
        return Response(err.body, err.status, media_type=err.content_type, headers=headers)
    body = json.dumps(err.envelope()).encode()
    return Response(body, err.status, media_type="application/json", headers=headers)


def sse_event(err: GatewayError) -> bytes:
    """The in-band error a stream ends with once bytes have reached the client, then [DONE]."""
    return b"data: " + json.dumps(err.envelope(), separators=(",", ":")).encode() + b"\n\n" + _DONE
