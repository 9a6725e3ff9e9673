"""List and watch one pool's pods on the Kubernetes API (lightkube), feeding a Membership.

A list gives the whole truth and a resourceVersion; the watch from there gives changes.
When the watch's version is too old (410 Gone) the next step is a fresh list, at once;
when the API server cannot be reached or the stream breaks, a fresh list after a backoff.
Meanwhile the pool keeps the members it has: only a list or an event changes them.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from lightkube import AsyncClient, KubeConfig
from lightkube.core.exceptions import ApiError
from lightkube.resources.core_v1 import Pod

from .config import KubernetesDiscovery
from .members import Membership
from .pods import member

log = logging.getLogger("pd_gateway.discovery")


def make_client(config: KubernetesDiscovery) -> AsyncClient:
    """In-cluster service account, else $KUBECONFIG / ~/.kube/config, or the configured kubeconfig."""
    kube = KubeConfig.from_file(config.kubeconfig) if config.kubeconfig else KubeConfig.from_env()
    return AsyncClient(kube, namespace=config.namespace)


class PodWatcher:
    def __init__(
        self, pool: str, config: KubernetesDiscovery, membership: Membership, client: AsyncClient | None = None
    ) -> None:
        self.config = config
        self.membership = membership
        self.labels: dict[str, Any] = config.labels(pool)
        self.client = client or make_client(config)
        self.namespace = self.client.namespace  # the configured one, else the service account's / context's
        self.lists = 0  # completed lists, for status and tests
        self.watching = False  # a watch stream is open

    async def run(self) -> None:
        backoff = self.config.backoff_s
        while True:
            try:
                version = await self.relist()
                backoff = self.config.backoff_s
                await self.watch(version)
            except ApiError as err:
                if err.status.code == 410:
                    log.info("pods of %s: watch expired (410 Gone); listing afresh", self.labels)
                    continue
                log.warning(
                    "pods of %s: API error %s: %s; retrying in %gs",
                    self.labels,
                    err.status.code,
                    err.status.message,
                    backoff,
                )
            except Exception as err:  # unreachable API server, broken stream, bad answer: all retried
                log.warning("pods of %s: %r; listing afresh in %gs", self.labels, err, backoff)
            finally:
                self.watching = False
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.config.max_backoff_s)

    async def relist(self) -> str:
        pods = self.client.list(Pod, namespace=self.namespace, labels=self.labels)
        found = [m async for pod in pods if (m := member(pod, self.config.port)) is not None]
        self.membership.replace(found)
        self.lists += 1
        return pods.resourceVersion

    async def watch(self, version: str) -> None:
        """Apply events from `version` on; returns only by raising (lightkube re-opens a
        stream the server ended cleanly, from the last version it saw)."""
        self.watching = True
        events = self.client.watch(Pod, namespace=self.namespace, labels=self.labels, resource_version=version)
        async for kind, pod in events:
            if kind == "BOOKMARK":
                continue  # only moves the version on, which lightkube keeps
            m = member(pod, self.config.port)
            if kind == "DELETED" or m is None or m.url is None:
                if pod.metadata is not None and pod.metadata.name:
                    self.membership.remove(pod.metadata.name)
            else:
                self.membership.update(m)
