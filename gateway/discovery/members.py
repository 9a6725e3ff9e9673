"""The pods of one pool as the API server last said, and the URL lists they make per role."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from .pods import Member

log = logging.getLogger("pd_gateway.discovery")

Publish = Callable[[str, list[str]], None]  # (role, URLs of its serving pods)


class Membership:
    """Pods by name; publishes a role's URL list whenever it changes (and only then)."""

    def __init__(self, pool: str, roles: Iterable[str], publish: Publish) -> None:
        self.pool = pool
        self.roles = tuple(roles)
        self.publish = publish
        self.pods: dict[str, Member] = {}
        self._published: dict[str, list[str]] = {}
        self._warned: set[str] = set()

    def replace(self, members: Iterable[Member]) -> None:
        """A fresh list: it is the whole truth, so pods missing from it leave."""
        self.pods = {m.name: m for m in members if self._fits(m)}
        self._sync()

    def update(self, m: Member) -> None:
        if self._fits(m):
            self.pods[m.name] = m
            self._sync()

    def remove(self, name: str) -> None:
        if self.pods.pop(name, None) is not None:
            self._sync()

    def urls(self, role: str) -> list[str]:
        return sorted({m.url for m in self.pods.values() if m.role == role and m.url})

    def _fits(self, m: Member) -> bool:
        if m.role in self.roles:
            return True
        if m.name not in self._warned:
            self._warned.add(m.name)
            log.warning(
                "pod %s has role %s, which pool %s does not have (%s); ignored",
                m.name,
                m.role,
                self.pool,
                "/".join(self.roles),
            )
        return False

    def _sync(self) -> None:
        for role in self.roles:
            urls = self.urls(role)
            if urls != self._published.get(role):
                self._published[role] = urls
                log.info("pool %s %s: %d serving pod(s): %s", self.pool, role, len(urls), " ".join(urls) or "-")
                self.publish(role, urls)
