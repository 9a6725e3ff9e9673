"""Where each stored response lives: vLLM keeps a response (`store: true`, the default) in the
memory of the worker that made it, so a later `GET /v1/responses/{id}` or cancel must reach
that worker. The gateway remembers the endpoint of the last `capacity` responses it relayed;
an id it does not know (older, or made before a restart) is asked of every endpoint."""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable

_ID = re.compile(rb'"id":\s*"(resp_[A-Za-z0-9_-]{1,128})"')


class ResponseHomes:
    """A bounded map from response id to the URL of the endpoint holding it, oldest dropped first."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._homes: OrderedDict[str, str] = OrderedDict()

    def remember(self, response_id: object, url: str) -> None:
        if not isinstance(response_id, str) or not response_id:
            return
        self._homes[response_id] = url
        self._homes.move_to_end(response_id)
        while len(self._homes) > self.capacity:
            self._homes.popitem(last=False)

    def home(self, response_id: str) -> str | None:
        return self._homes.get(response_id)

    def __len__(self) -> int:
        return len(self._homes)

    def recorder(self, where: Callable[[], str | None]) -> Callable[[bytes], bytes]:
        """A relay transform that remembers the id in a stream's first event (response.created),
        and the endpoint `where()` names then; the events pass unchanged."""
        seen = False

        def transform(run: bytes) -> bytes:
            nonlocal seen
            if not seen:
                found = _ID.search(run)
                url = where()
                if found is not None and url is not None:
                    self.remember(found.group(1).decode(), url)
                    seen = True
            return run

        return transform
