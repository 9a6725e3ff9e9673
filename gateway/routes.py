"""The OpenAI routes the gateway relays: one table for the app, the short path and the parser."""

from __future__ import annotations

from typing import Literal

Route = Literal["completions", "chat"]
PATHS: dict[Route, str] = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}
ROUTES: dict[str, Route] = {path: route for route, path in PATHS.items()}
