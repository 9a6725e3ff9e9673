"""API keys: `Authorization: Bearer <key>`, compared in constant time, never logged."""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping, Sequence

from .config import Auth
from .errors import GatewayError

HeaderList = Sequence[tuple[bytes, bytes]]


def bearer(header: str | None) -> str | None:
    if header and header[:7].lower() == "bearer ":
        return header[7:].strip()
    return None


def authorization(headers: Mapping[bytes, bytes], header_list: HeaderList) -> str:
    """The one Authorization header (names lower-case, as ASGI has them); two are refused,
    since a proxy and the gateway might each read a different one."""
    if len(headers) != len(header_list) and sum(1 for name, _ in header_list if name == b"authorization") > 1:
        raise GatewayError(400, "the request has more than one Authorization header", "duplicate_authorization")
    return headers.get(b"authorization", b"").decode("latin-1")


def authorization_of(header_list: HeaderList) -> str:
    """`authorization` for a route that has only the header list (the FastAPI routes)."""
    return authorization(dict(header_list), header_list)


def check_key(header: str | None, keys: list[str], what: str = "API key") -> None:
    """Raise 401 unless the header carries one of `keys` (no keys configured: open)."""
    if not keys:
        return
    given = (bearer(header) or "").encode()
    # Compare against every key so the time taken does not tell which one nearly matched.
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(given, key.encode())
    if not ok:
        raise GatewayError(401, f"missing or invalid {what}; send 'Authorization: Bearer <key>'", "invalid_api_key")


def check_access(
    access: str, auth: Auth, header: str, what: str, api_key: Callable[[str], object] | None = None
) -> None:
    """Guard a non-API route (metrics, docs) by its `Access` setting: open, an API key, an admin
    key, or off (404). With no keys of the asked kind configured, the route is open. `api_key`
    checks an API key (a tenant's included) in place of `auth.api_keys`."""
    if access == "off":
        raise GatewayError(404, f"{what} is turned off (auth.{what}: off)", "not_found")
    if access == "key":
        if api_key is not None:
            api_key(header)
        else:
            check_key(header, auth.api_keys)
    elif access == "admin":
        check_key(header, auth.admin_keys, "admin key")
