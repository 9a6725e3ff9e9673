"""A fake Kubernetes API server for pods: the real list and watch wire protocol on 127.0.0.1.

List: `GET /api/v1/namespaces/NS/pods?labelSelector=k=v,...` -> a PodList with
metadata.resourceVersion. Watch: the same with `watch=true` (and `resourceVersion`) -> a
chunked response of JSON event lines ({"type": ADDED|MODIFIED|DELETED|BOOKMARK|ERROR,
"object": ...}); a version older than the kept history gets an ERROR event with a 410 Gone
Status, as a real API server does after compaction. Tests change pods through methods
and can end watches cleanly (server timeout), cut them (connection dropped mid-stream),
expire them (compaction, so resuming gets 410) or send a bookmark.
"""

from __future__ import annotations

import asyncio
import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

_END, _CUT = "END", "CUT"


def _matches(pod: dict, selector: dict[str, str]) -> bool:
    labels = pod["metadata"].get("labels") or {}
    return all(labels.get(k) == v for k, v in selector.items())


def _parse_selector(text: str) -> dict[str, str]:
    out = {}
    for term in filter(None, text.split(",")):
        key, _, value = term.replace("==", "=").partition("=")
        out[key] = value
    return out


@dataclass
class Watch:
    selector: dict[str, str]
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)


class FakeKube:
    def __init__(self, namespace: str = "pd") -> None:
        self.namespace = namespace
        self.version = 100
        self.pods: dict[str, dict] = {}
        self.history: list[tuple[int, str, dict]] = []
        self.oldest = 0  # a watch from a version below this gets 410 Gone
        self.lists = 0
        self.watch_requests: list[dict[str, str]] = []  # query of every watch opened
        self.watches: list[Watch] = []  # open ones
        self.runner: web.AppRunner | None = None
        self.url = ""

    # --- serving ------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/api/v1/namespaces/{ns}/pods", self._pods)
        self.runner = web.AppRunner(app, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        for w in list(self.watches):
            w.queue.put_nowait(_CUT)
        if self.runner is not None:
            await self.runner.cleanup()

    def kubeconfig(self, path: Path) -> Path:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "tester", "user": {"token": "fake-token"}}],
            "contexts": [
                {"name": "fake", "context": {"cluster": "fake", "user": "tester", "namespace": self.namespace}}
            ],
            "current-context": "fake",
        }
        path.write_text(yaml.safe_dump(config))
        return path

    async def _pods(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["ns"] != self.namespace:
            return web.json_response(
                {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": str(self.version)}, "items": []}
            )
        selector = _parse_selector(request.query.get("labelSelector", ""))
        if request.query.get("watch") in ("true", "1"):
            return await self._watch(request, selector)
        self.lists += 1
        items = [copy.deepcopy(p) for p in self.pods.values() if _matches(p, selector)]
        return web.json_response(
            {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": str(self.version)}, "items": items}
        )

    async def _watch(self, request: web.Request, selector: dict[str, str]) -> web.StreamResponse:
        self.watch_requests.append(dict(request.query))
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        since = int(request.query.get("resourceVersion") or self.version)
        if since < self.oldest:
            gone = {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": f"too old resource version: {since} ({self.oldest})",
                "reason": "Expired",
                "code": 410,
            }
            await resp.write(json.dumps({"type": "ERROR", "object": gone}).encode() + b"\n")
            await resp.write_eof()
            return resp
        watch = Watch(selector)
        for version, kind, pod in self.history:
            if version > since and _matches(pod, selector):
                watch.queue.put_nowait((kind, pod))
        self.watches.append(watch)
        try:
            while True:
                item = await watch.queue.get()
                if item == _END:
                    await resp.write_eof()
                    return resp
                if item == _CUT:  # drop the connection without the last chunk
                    assert request.transport is not None
                    request.transport.abort()
                    return resp
                kind, obj = item
                await resp.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")
        finally:
            self.watches.remove(watch)

    # --- what tests do ----------------------------------------------------------------

    def _emit(self, kind: str, pod: dict) -> None:
        self.version += 1
        pod = copy.deepcopy(pod)
        pod["metadata"]["resourceVersion"] = str(self.version)
        if kind != "DELETED":
            self.pods[pod["metadata"]["name"]] = pod
        self.history.append((self.version, kind, pod))
        for w in self.watches:
            if _matches(pod, w.selector):
                w.queue.put_nowait((kind, pod))

    def add(self, name: str, port: int, labels: dict[str, str], ready: bool = False, ip: str = "127.0.0.1") -> None:
        pod: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": self.namespace, "uid": f"uid-{name}", "labels": labels},
            "spec": {
                "containers": [
                    {
                        "name": "worker",
                        "image": "pd-gateway-sim:test",
                        "ports": [{"name": "http", "containerPort": port}],
                    }
                ]
            },
            "status": {"phase": "Pending"},
        }
        self._emit("ADDED", pod)
        if ready:
            self.set_ready(name, True, ip)

    def set_ready(self, name: str, ready: bool, ip: str = "127.0.0.1") -> None:
        pod = copy.deepcopy(self.pods[name])
        pod["status"] = {
            "phase": "Running",
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        }
        self._emit("MODIFIED", pod)

    def delete(self, name: str) -> None:
        """Graceful deletion as the API server shows it: deletionTimestamp set, then gone."""
        pod = copy.deepcopy(self.pods.pop(name))
        pod["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
        self._emit("MODIFIED", pod)
        self._emit("DELETED", pod)

    def end_watches(self) -> None:
        """The server closes every watch cleanly (its timeoutSeconds): clients resume from their version."""
        for w in self.watches:
            w.queue.put_nowait(_END)

    def cut_watches(self) -> None:
        """Every watch connection drops mid-stream."""
        for w in self.watches:
            w.queue.put_nowait(_CUT)

    def compact(self) -> None:
        """Forget the history so far: resuming a watch from an older version gets 410 Gone."""
        self.oldest = self.version  # events after it are (none yet) in the history
        self.history.clear()

    def bookmark(self) -> int:
        """A BOOKMARK event (what a server sends when allowWatchBookmarks is set); returns its version."""
        self.version += 1
        mark = {"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": str(self.version)}}
        for w in self.watches:
            w.queue.put_nowait(("BOOKMARK", mark))
        return self.version
