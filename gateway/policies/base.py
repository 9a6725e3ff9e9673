"""The interface every routing policy implements, and what it sees of a request."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

if TYPE_CHECKING:
    from ..pool import Endpoint
    from ..routes import Route


class RoutingRequest(Protocol):
    """What a policy may read of a request (gateway.requests.ApiRequest provides it)."""

    model: str
    route: Route
    prompt_tokens: int  # an estimate
    body: dict  # the parsed JSON body (precise_prefix tokenizes its prompt or messages)

    @property
    def session_key(self) -> str | None:
        """`X-Session-Id`, else the OpenAI `user` field, else None."""

    @property
    def prefix_text(self) -> str:
        """The prompt as one string (chat: the messages rendered in order), built on first use."""


def load_measure(role: str) -> str:
    """The Endpoint attribute that measures a role's load: prefill is compute-bound on the
    prompt (tokens in flight), decode and replicas on concurrent sequences (requests)."""
    return "outstanding_tokens" if role == "prefill" else "outstanding"


def requests_load(e: Endpoint) -> int:
    """Requests on the worker: the gateway's own in flight, plus those the worker reported
    beyond them at its last /metrics poll (other gateway replicas' requests; 0 unpolled)."""
    return e.outstanding + e.foreign


class LoadScore:
    """A role's load of an endpoint, with the worker's own report folded in.

    Replicas and decode count requests. Prefill counts prompt tokens: the gateway's own in
    flight, plus the worker's other requests at the mean prompt length seen here.
    """

    def __init__(self, role: str) -> None:
        self.tokens = load_measure(role) == "outstanding_tokens"
        self.mean_prompt = 256.0  # an EMA of routed requests' prompt estimates

    def of(self, e: Endpoint) -> float:
        if self.tokens:
            return e.outstanding_tokens + e.foreign * self.mean_prompt
        return e.outstanding + e.foreign

    def note(self, prompt_tokens: int) -> None:
        self.mean_prompt += (prompt_tokens - self.mean_prompt) / 64

    def least(self, candidates: Sequence[Endpoint], turn: int) -> Endpoint:
        """The least loaded; among equals the one with the emptiest KV cache, then by turns."""
        keys = [(self.of(e), e.kv_usage) for e in candidates]
        low = min(keys)
        ties = [e for e, key in zip(candidates, keys, strict=True) if key == low]
        return ties[turn % len(ties)]


class Policy(ABC):
    """Picks one of `candidates` (never empty) for `request`; told what was picked."""

    name: ClassVar[str]

    def __init__(self, role: str) -> None:
        self.role = role
        self.load = load_measure(role)
        self.score = LoadScore(role)

    @abstractmethod
    def choose(self, request: RoutingRequest, candidates: Sequence[Endpoint]) -> Endpoint: ...

    def routed(self, request: RoutingRequest, endpoint: Endpoint) -> None:
        """The request was sent to `endpoint` (a policy that learns from its choices records it;
        an override calls this too)."""
        self.score.note(request.prompt_tokens)

    def background(self, endpoints: Sequence[Endpoint]) -> list[Coroutine[Any, Any, None]]:
        """Tasks the policy needs running while the gateway serves (e.g. event subscribers)."""
        return []

    def forget(self, endpoint: Endpoint) -> None:
        """`endpoint` left the pool."""
        return None
