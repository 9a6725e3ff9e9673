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


def _ready(pod: Pod) -> bool:
    status = pod.status
    if status is None or not status.podIP or pod.metadata.deletionTimestamp is not None:
        return False
    return any(c.type == "Ready" and c.status == "True" for c in status.conditions or [])


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
    role = (pod.metadata.labels or {}).get(ROLE_LABEL)
    if role not in ROLES:
        return None
    number = _port(pod, port)
    url = None
    if _ready(pod) and number is not None:
        url = f"http://{_host(pod.status.podIP)}:{number}"
    return Member(pod.metadata.name, role, url)
