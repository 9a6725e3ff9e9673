"""The interface every routing policy implements, and what it sees of a request."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar, Protocol

if TYPE_CHECKING:
    from ..pool import Endpoint
    from ..routes import Route


class RoutingRequest(Protocol):
    """What a policy may read of a request (gateway.requests.ApiRequest provides it)."""

    model: str
    route: Route
    prompt_tokens: int  # an estimate

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


class Policy(ABC):
    """Picks one of `candidates` (never empty) for `request`; told what was picked."""

    name: ClassVar[str]

    def __init__(self, role: str) -> None:
        self.role = role
        self.load = load_measure(role)

    @abstractmethod
    def choose(self, request: RoutingRequest, candidates: Sequence[Endpoint]) -> Endpoint: ...

    def routed(self, request: RoutingRequest, endpoint: Endpoint) -> None:
        """The request was sent to `endpoint` (a policy that learns from its choices records it)."""
        return None

    def forget(self, endpoint: Endpoint) -> None:
        """`endpoint` left the pool."""
        return None
