"""deploy/k8s: every overlay renders with `kubectl kustomize`, every object validates against the
Kubernetes schemas (kubernetes-validate, strict), and the rendered objects say what the
topology says. kubectl comes from scripts/test.sh (Debian's kubernetes-client when absent)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from gateway.config import parse_config
from workers.plan import plan
from workers.plan.k8s import render_k8s
from workers.topology import load_topology

K8S = Path(__file__).resolve().parent.parent / "deploy" / "k8s"
OVERLAYS = ["sim", "nixl-1p1d", "dp2-tp32", "dp4-tp16"]
KUBE_VERSION = "1.30"  # EKS standard support
NO_SCHEMA = {"ServiceMonitor"}  # a CRD of the Prometheus operator: checked by hand below
CLUSTER_ENV = {"NEURON_RT_VISIBLE_CORES", "VLLM_NIXL_SIDE_CHANNEL_HOST", "PYTHONPATH"}


def render(path: Path) -> tuple[str, list[dict]]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is needed (scripts/test.sh installs Debian's kubernetes-client)"
    text = subprocess.run([kubectl, "kustomize", str(path)], check=True, capture_output=True, text=True).stdout
    return text, [d for d in yaml.safe_load_all(text) if d]


def kinds(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


@pytest.mark.parametrize("where", ["base", *(f"overlays/{o}" for o in OVERLAYS)])
def test_renders_and_every_object_validates(where: str) -> None:
    text, docs = render(K8S / where)
    assert "REPLACE_ME" not in text
    for doc in docs:
        assert "namespace" not in doc["metadata"], doc["metadata"]  # `kubectl apply -k ... -n NS` decides
        if doc["kind"] in NO_SCHEMA:
            with pytest.raises(kubernetes_validate.SchemaNotFoundError):
                kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
            continue
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    (monitor,) = kinds(docs, "ServiceMonitor")
    (service,) = kinds(docs, "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {p["name"] for p in service["spec"]["ports"]}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_volumes_and_config_maps_are_defined(overlay: str) -> None:
    _, docs = render(K8S / "overlays" / overlay)
    claims = {d["metadata"]["name"] for d in kinds(docs, "PersistentVolumeClaim")}
    config_maps = {d["metadata"]["name"] for d in kinds(docs, "ConfigMap")}
    for deployment in kinds(docs, "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for c in pod["containers"]:
            assert ":" in c["image"].rsplit("/", 1)[-1], c["image"]  # a tag, set by the overlay
            assert {m["name"] for m in c.get("volumeMounts", [])} <= set(volumes)
        for v in volumes.values():
            if "persistentVolumeClaim" in v:
                assert v["persistentVolumeClaim"]["claimName"] in claims
            if "configMap" in v:
                assert v["configMap"]["name"] in config_maps


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_workers_say_what_the_topology_says(overlay: str) -> None:
    topology = load_topology(K8S / "topologies" / f"{overlay}.yaml")
    result = plan(topology)
    _, docs = render(K8S / "overlays" / overlay)
    workers = {d["metadata"]["name"]: d for d in kinds(docs, "Deployment") if d["metadata"]["name"] != "pd-gateway"}
    config = parse_config(yaml.safe_load(kinds(docs, "ConfigMap")[0]["data"]["gateway.yaml"]))
    pools = {p.name: p for p in config.pools}
    for spec in result.workers:
        d = workers[f"{spec.pool}-{spec.role}"]
        pod = d["spec"]["template"]
        labels = pod["metadata"]["labels"]
        assert labels["pd-gateway/pool"] == spec.pool and labels["pd-gateway/role"] == spec.role
        assert d["spec"]["replicas"] == sum(1 for w in result.workers if (w.pool, w.role) == (spec.pool, spec.role))
        (c,) = pod["spec"]["containers"]
        assert {
            "name": "http",
            "containerPort": next(w.port for w in result.workers if (w.pool, w.role) == (spec.pool, spec.role)),
        } in c["ports"]
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert {k: v for k, v in env.items() if k not in CLUSTER_ENV | {"POD_IP"}} == {
            k: v for k, v in spec.env.items() if k not in CLUSTER_ENV
        }
        assert "NEURON_RT_VISIBLE_CORES" not in env  # the device plugin sets it
        if "--tensor-parallel-size" in spec.argv and topology.all_hosts[0].is_neuron:
            tp = int(spec.argv[spec.argv.index("--tensor-parallel-size") + 1])
            assert c["resources"]["limits"]["aws.amazon.com/neuroncore"] == tp
            assert "--device" not in c["command"]
        discovery = pools[spec.pool].discovery
        assert discovery is not None and discovery.labels(spec.pool).items() <= labels.items()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_committed_overlays_are_what_the_planner_emits(overlay: str) -> None:
    topology = load_topology(K8S / "topologies" / f"{overlay}.yaml")
    files = render_k8s(topology, plan(topology))
    on_disk = {p.name: p.read_text() for p in (K8S / "overlays" / overlay).iterdir()}
    assert on_disk == files, (
        f"regenerate: pd-gateway plan deploy/k8s/topologies/{overlay}.yaml --emit k8s "
        f"--out deploy/k8s/overlays/{overlay}"
    )


def test_gateway_probes_rbac_and_disruption_budget() -> None:
    _, docs = render(K8S / "base")
    (gw,) = kinds(docs, "Deployment")
    assert gw["spec"]["replicas"] >= 2
    pod = gw["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert pod["securityContext"]["runAsNonRoot"] is True
    (role,) = kinds(docs, "Role")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]
    (binding,) = kinds(docs, "RoleBinding")
    assert binding["subjects"][0]["name"] == pod["serviceAccountName"]
    (pdb,) = kinds(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= gw["spec"]["template"]["metadata"]["labels"].items()
