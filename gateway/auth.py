"""API keys: `Authorization: Bearer <key>`, compared in constant time, never logged."""

from __future__ import annotations

import hmac

from .errors import GatewayError


def bearer(header: str | None) -> str | None:
    if header and header[:7].lower() == "bearer ":
        return header[7:].strip()
    return None


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
