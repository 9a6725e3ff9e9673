"""What discovery reads from a pod: is it a serving worker, at which URL, in which role. Pure."""

from __future__ import annotations

from dataclasses import dataclass

from lightkube.resources.core_v1 import Pod

from .config import ROLE_LABEL

ROLES = ("replica", "prefill", "decode")


@dataclass(frozen=True)
class Member:
    """A pod that may serve: its role and URL (None while it cannot: not Ready, no IP, deleting)."""

    name: str
    role: str
    url: str | None


def _ip_if_ready(pod: Pod) -> str | None:
    """The pod's IP when it is Ready and not being deleted."""
    status, meta = pod.status, pod.metadata
    if status is None or not status.podIP or (meta is not None and meta.deletionTimestamp is not None):
        return None
    ready = any(c.type == "Ready" and c.status == "True" for c in status.conditions or [])
    return status.podIP if ready else None


def _port(pod: Pod, port: str | int) -> int | None:
    if isinstance(port, int):
        return port
    for container in pod.spec.containers if pod.spec else []:
        for p in container.ports or []:
            if p.name == port:
                return p.containerPort
    return None


def _host(ip: str) -> str:
    return f"[{ip}]" if ":" in ip else ip


def member(pod: Pod, port: str | int) -> Member | None:
    """The pod as a pool member; None when it has no (known) role label."""
    meta = pod.metadata
    role = (meta.labels or {}).get(ROLE_LABEL) if meta is not None else None
    if meta is None or not meta.name or role not in ROLES:
        return None
    number, ip = _port(pod, port), _ip_if_ready(pod)
    url = f"http://{_host(ip)}:{number}" if ip and number is not None else None
    return Member(meta.name, str(role), url)
