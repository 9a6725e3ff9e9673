"""The vLLM API routes the gateway serves: one table for the app, the short path, the parser
and the docs (docs/routes.md is generated from it: `python -m gateway.routes`).

Each route with a JSON body goes to the pool that serves the body's `model`, by the pool's
policy. In a prefill/decode pool, a route with `pd` goes P→D (the protocol carries
`kv_transfer_params` for it); every other route goes to a decode endpoint, which serves it
whole. Routes without a model in a JSON body (`admin`, `info`, `multipart`) are served by
their own handlers (gateway.passthrough, gateway.lora).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Route = str  # a route's name: its telemetry label and its key in SPECS
Kind = Literal["generate", "json", "multipart", "admin", "info"]


@dataclass(frozen=True)
class RouteSpec:
    name: str
    path: str
    kind: Kind
    pd: bool = False  # a prefill/decode pool splits it into a prefill and a decode leg
    streams: bool = False  # `"stream": true` answers with server-sent events
    named_events: bool = False  # its events are `event: <type>` + `data:`, with no [DONE]
    method: str = "POST"
    doc: str = ""


TABLE: tuple[RouteSpec, ...] = (
    RouteSpec("completions", "/v1/completions", "generate", pd=True, streams=True, doc="OpenAI completions"),
    RouteSpec("chat", "/v1/chat/completions", "generate", pd=True, streams=True, doc="OpenAI chat completions"),
    RouteSpec(
        "responses",
        "/v1/responses",
        "generate",
        streams=True,
        named_events=True,
        doc="OpenAI Responses; a stored response is fetched back from the worker that made it",
    ),
    RouteSpec("embeddings", "/v1/embeddings", "json", doc="OpenAI embeddings (pooling runner)"),
    RouteSpec("embed_v2", "/v2/embed", "json", doc="Cohere-style embed"),
    RouteSpec("pooling", "/pooling", "json", doc="raw pooler output"),
    RouteSpec("classify", "/classify", "json", doc="classification"),
    RouteSpec("score", "/score", "json", doc="score pairs"),
    RouteSpec("score_v1", "/v1/score", "json", doc="score pairs"),
    RouteSpec("rerank", "/rerank", "json", doc="Jina/Cohere-style rerank"),
    RouteSpec("rerank_v1", "/v1/rerank", "json", doc="rerank"),
    RouteSpec("rerank_v2", "/v2/rerank", "json", doc="rerank"),
    RouteSpec("tokenize", "/tokenize", "json", doc="prompt or messages to token ids"),
    RouteSpec("detokenize", "/detokenize", "json", doc="token ids to text"),
    RouteSpec(
        "transcriptions",
        "/v1/audio/transcriptions",
        "multipart",
        streams=True,
        doc="speech to text; multipart form, the model is a form field",
    ),
    RouteSpec(
        "translations",
        "/v1/audio/translations",
        "multipart",
        streams=True,
        doc="speech to English text; multipart form, the model is a form field",
    ),
    RouteSpec("load_lora", "/v1/load_lora_adapter", "admin", doc="admin: load an adapter on every worker of a pool"),
    RouteSpec("unload_lora", "/v1/unload_lora_adapter", "admin", doc="admin: unload an adapter everywhere"),
    RouteSpec("version", "/version", "info", method="GET", doc="the workers' vLLM version"),
    RouteSpec(
        "responses_get",
        "/v1/responses/{response_id}",
        "info",
        method="GET",
        doc="a stored response, from the worker that holds it",
    ),
    RouteSpec(
        "responses_cancel",
        "/v1/responses/{response_id}/cancel",
        "info",
        doc="cancel a background response, on the worker that runs it",
    ),
)
SPECS: dict[Route, RouteSpec] = {r.name: r for r in TABLE}
# The routes the Handler serves: a POST whose body (JSON, or a form) names its model; the
# short path's too.
PATHS: dict[Route, str] = {r.name: r.path for r in TABLE if r.kind in ("generate", "json", "multipart")}
ROUTES: dict[str, Route] = {path: route for route, path in PATHS.items()}


def markdown() -> str:
    """The route table as docs/routes.md shows it."""
    rows = ["| path | method | kind | prefill/decode pool | streams | what |", "|---|---|---|---|---|---|"]
    for r in TABLE:
        pd = "P→D" if r.pd else ("decode" if r.kind in ("generate", "json", "multipart") else "-")
        rows.append(f"| `{r.path}` | {r.method} | {r.kind} | {pd} | {'yes' if r.streams else 'no'} | {r.doc} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
