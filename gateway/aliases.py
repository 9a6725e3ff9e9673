"""Public model names (config `aliases`): another served name, or a weighted split between
several (a canary), sticky per session key where the request has one."""

from __future__ import annotations

import hashlib
import random
import re

from .config import Split
from .payload import dumps
from .requests import ApiRequest


class ModelNames:
    def __init__(self, aliases: dict[str, str | Split]) -> None:
        self.aliases = aliases
        self._rng = random.Random()

    def served(self, public: str, session_key: str | None = None) -> str:
        """The served name a request for `public` goes to (itself when it is no alias)."""
        target = self.aliases.get(public)
        if target is None:
            return public
        if isinstance(target, str):
            return target
        weights = [t.weight for t in target.split]
        if session_key:
            digest = hashlib.blake2b(f"{public}\0{session_key}".encode(), digest_size=8).digest()
            point = int.from_bytes(digest, "big") / 2**64 * sum(weights)
        else:
            point = self._rng.random() * sum(weights)
        for t in target.split:
            point -= t.weight
            if point < 0 and t.weight:
                return t.model
        return next(t.model for t in reversed(target.split) if t.weight)

    def rewrite(self, req: ApiRequest) -> None:
        """Send `req` to its served name: the body's model is rewritten (a form's field too)."""
        if not req.model or req.model not in self.aliases:
            return
        public, served = req.model, self.served(req.model, req.session_key)
        req.model = served
        req.body["model"] = served
        if req.content_type is None:
            req.raw = dumps(req.body)
        else:
            req.raw = _replace_form_model(req.raw, public, served)


def _replace_form_model(raw: bytes, public: str, served: str) -> bytes:
    """The form with its `model` field's value replaced."""
    pattern = re.compile(rb'(name="model"\r\n(?:[^\r\n]+\r\n)*\r\n)' + re.escape(public.encode()) + rb"(\r\n)")
    return pattern.sub(lambda m: m.group(1) + served.encode() + m.group(2), raw, count=1)
