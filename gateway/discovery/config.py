"""`discovery:` in a pool's config: where the pool's workers come from when not listed by URL."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

POOL_LABEL = "pd-gateway/pool"
ROLE_LABEL = "pd-gateway/role"


class KubernetesDiscovery(BaseModel):
    """Pods selected by label: `pd-gateway/pool: <pool name>` plus `selector`; each pod's
    `pd-gateway/role` label (replica | prefill | decode) says which group it joins.

    `discovery: kubernetes` is short for `{kind: kubernetes}`.
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal["kubernetes"] = "kubernetes"
    # None: the gateway pod's own namespace (service account), else the kubeconfig context's.
    namespace: str | None = None
    # Extra labels every selected pod must carry; pd-gateway/pool is added from the pool's name.
    selector: dict[str, str] = {}
    # The worker's port: a container port's name (looked up in the pod spec) or a number.
    port: str | int = "http"
    # None: in-cluster service account, else $KUBECONFIG or ~/.kube/config.
    kubeconfig: str | None = None
    # Reconnect backoff after a failed list or a broken watch: doubles up to the max.
    backoff_s: float = Field(0.5, gt=0)
    max_backoff_s: float = Field(30.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: object) -> object:
        return {"kind": value} if isinstance(value, str) else value

    def labels(self, pool: str) -> dict[str, str]:
        """The label selector of `pool`'s pods."""
        return {**self.selector, POOL_LABEL: pool}
