"""Simulated vLLM OpenAI worker with prefill/decode (PD) KV-transfer semantics.

In-process use::

    server = await start_sim(SimConfig(role="prefill", itl_ms=20))
    ... server.url, server.port, server.stats ...
    await server.close()
"""

from .config import SimConfig, build_parser, config_from_args
from .engine import VOCAB, completion_text, count_tokens, render_chat, token_text
from .server import SimServer, start_sim

__all__ = [
    "SimConfig",
    "SimServer",
    "start_sim",
    "build_parser",
    "config_from_args",
    "VOCAB",
    "completion_text",
    "count_tokens",
    "render_chat",
    "token_text",
]
