"""The Kubernetes manifests: valid objects, references that resolve, KEDA triggers on our keys.

Both variants (`deploy/k8s/redis-streams`, `deploy/k8s/eventhubs`) are rendered the way
`kubectl apply -k` would (resources, then strategic-merge patches of whole objects),
then:

- core kinds are validated strictly (unknown fields fail) against the Kubernetes JSON
  schemas shipped by `kubernetes-validate` (PyPI);
- custom resources (KEDA, Prometheus Operator) against their CRD schemas, compiled by
  the `@kubernetes-models/*` packages (npm, `deploy/validate`, installed by `make install`);
- every name one object uses (service account, config map, scale target, trigger
  authentication, monitored ports) exists, and the KEDA triggers watch the stream and
  consumer group, or the hub and checkpoint container, the code actually uses.
"""

from __future__ import annotations

import copy
import inspect
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from orchestrator.core import keys
from orchestrator.core.schemas import WORK_CLASSES
from orchestrator.core.settings import Settings, load_settings
from orchestrator.queues.eventhubs.queue import hub_name
from orchestrator.queues.redis_streams import RedisStreamsQueue

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
VALIDATE = K8S.parent / "validate"
VARIANTS = ("redis-streams", "eventhubs")
KUBERNETES = "1.31.0"
EXTERNAL_SECRETS = {"ptu-secrets"}
"""Created by the operator with kubectl (the base manifest says how), never committed."""
CUSTOM_GROUPS = ("keda.sh/", "monitoring.coreos.com/")
KEDA_METADATA = {
    # the trigger metadata each scaler reads (KEDA 2.x docs); anything else is ignored
    # by KEDA without a word, so a typo would silently fall back to a default
    "redis-streams": {
        "address", "addressFromEnv", "host", "hostFromEnv", "port", "portFromEnv",
        "usernameFromEnv", "passwordFromEnv", "stream", "consumerGroup",
        "pendingEntriesCount", "streamLength", "lagCount", "activationLagCount",
        "enableTLS", "unsafeSsl", "databaseIndex",
    },
    "azure-eventhub": {
        "connectionFromEnv", "storageConnectionFromEnv", "consumerGroup",
        "unprocessedEventThreshold", "activationUnprocessedEventThreshold", "blobContainer",
        "eventHubNamespace", "eventHubNamespaceFromEnv", "eventHubName", "eventHubNameFromEnv",
        "storageAccountName", "checkpointStrategy", "cloud", "endpointSuffix",
        "storageEndpointSuffix",
    },
}  # fmt: skip


def _load(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _merge(base: Any, patch: Any) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            out[key] = _merge(base.get(key), value) if key in base else value
        return out
    return copy.deepcopy(patch)


def render(directory: Path) -> list[dict[str, Any]]:
    """The objects `kubectl apply -k directory` would apply."""
    (kustomization,) = _load(directory / "kustomization.yaml")
    assert kustomization["kind"] == "Kustomization"
    assert set(kustomization) <= {"apiVersion", "kind", "resources", "patches"}
    objects: list[dict[str, Any]] = []
    for entry in kustomization.get("resources", []):
        target = (directory / entry).resolve()
        objects += render(target) if target.is_dir() else _load(target)
    for patch in kustomization.get("patches", []):
        for change in _load(directory / patch["path"]):
            ident = (change["kind"], change["metadata"]["name"])
            matches = [
                i for i, o in enumerate(objects) if (o["kind"], o["metadata"]["name"]) == ident
            ]
            assert len(matches) == 1, f"patch {patch['path']} targets {ident}"
            objects[matches[0]] = _merge(objects[matches[0]], change)
    return objects


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def settings_of(objects: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings the processes would read from the manifests' ConfigMap."""
    (config,) = by_kind(objects, "ConfigMap").values()
    for name, value in config["data"].items():
        monkeypatch.setenv(name, value)
    return load_settings()


@pytest.fixture(params=VARIANTS)
def objects(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return render(K8S / request.param)


def test_each_variant_renders_unique_objects(objects: list[dict[str, Any]]) -> None:
    idents = [(o["kind"], o["metadata"]["name"]) for o in objects]
    assert len(idents) == len(set(idents))
    kinds = {kind for kind, _ in idents}
    assert {"ServiceAccount", "ConfigMap", "Deployment", "Service", "ScaledObject"} <= kinds
    assert {"TriggerAuthentication", "ServiceMonitor", "PrometheusRule"} <= kinds


def test_core_objects_match_the_kubernetes_schemas_strictly(
    objects: list[dict[str, Any]],
) -> None:
    core = [o for o in objects if not o["apiVersion"].startswith(CUSTOM_GROUPS)]
    assert len(core) >= 7
    for obj in core:
        kubernetes_validate.validate(obj, KUBERNETES, strict=True)
    broken = copy.deepcopy(by_kind(objects, "Deployment")["ptu-worker"])
    broken["spec"]["template"]["spec"]["serviceAcountName"] = "typo"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES, strict=True)


def _validate_custom(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    node = shutil.which("node")
    if node is None or not (VALIDATE / "node_modules").is_dir():
        pytest.skip("the npm validators are not installed (make install runs npm ci)")
    done = subprocess.run(
        [node, str(VALIDATE / "validate.mjs")],
        input=json.dumps(objects),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    results: list[dict[str, Any]] = json.loads(done.stdout)
    return results


def test_custom_resources_match_their_crd_schemas(objects: list[dict[str, Any]]) -> None:
    custom = [o for o in objects if o["apiVersion"].startswith(CUSTOM_GROUPS)]
    results = _validate_custom(custom)
    assert all(r["covered"] for r in results), results
    assert [r for r in results if r["error"]] == []
    broken = copy.deepcopy(by_kind(objects, "ScaledObject")["ptu-worker"])
    broken["spec"]["minReplicaCount"] = "1"
    (checked,) = _validate_custom([broken])
    assert "minReplicaCount must be integer" in checked["error"]


def _labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_pods_name_only_what_exists(objects: list[dict[str, Any]]) -> None:
    accounts = by_kind(objects, "ServiceAccount")
    maps = by_kind(objects, "ConfigMap")
    deployments = by_kind(objects, "Deployment")
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]
        assert _labels_match(
            deployment["spec"]["selector"]["matchLabels"], pod["metadata"]["labels"]
        )
        assert pod["spec"]["serviceAccountName"] in accounts, name
        for container in pod["spec"]["containers"]:
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in maps
                if "secretRef" in source:
                    assert source["secretRef"]["name"] in EXTERNAL_SECRETS
            ports = {p["name"] for p in container.get("ports", []) if "name" in p}
            for probe in ("readinessProbe", "livenessProbe"):
                if probe in container:
                    assert container[probe]["httpGet"]["port"] in ports, (name, probe)


def test_services_and_the_monitor_reach_named_ports(objects: list[dict[str, Any]]) -> None:
    deployments = by_kind(objects, "Deployment")
    services = by_kind(objects, "Service")
    for name, service in services.items():
        pods = [
            d["spec"]["template"]
            for d in deployments.values()
            if _labels_match(
                service["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"]
            )
        ]
        assert pods, f"service {name} selects no pods"
        named = {p["name"] for pod in pods for c in pod["spec"]["containers"] for p in c["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in named, (name, port)
    (monitor,) = by_kind(objects, "ServiceMonitor").values()
    selected = [
        s for s in services.values()
        if _labels_match(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
    ]  # fmt: skip
    offered = {p["name"] for s in selected for p in s["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= offered
    assert {"ptu-ingress", "ptu-worker-metrics"} <= {s["metadata"]["name"] for s in selected}


def test_keda_objects_name_only_what_exists(objects: list[dict[str, Any]]) -> None:
    deployments = by_kind(objects, "Deployment")
    auths = by_kind(objects, "TriggerAuthentication")
    for auth in auths.values():
        for ref in auth["spec"].get("secretTargetRef", []):
            assert ref["name"] in EXTERNAL_SECRETS
    for scaled in by_kind(objects, "ScaledObject").values():
        assert scaled["spec"]["scaleTargetRef"]["name"] in deployments
        for trigger in scaled["spec"]["triggers"]:
            assert trigger["authenticationRef"]["name"] in auths
            assert set(trigger["metadata"]) <= KEDA_METADATA[trigger["type"]], trigger


def test_the_worker_serves_the_metrics_port_it_declares(
    objects: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_of(objects, monkeypatch)
    worker = by_kind(objects, "Deployment")["ptu-worker"]["spec"]["template"]["spec"]
    (port,) = worker["containers"][0]["ports"]
    assert port["containerPort"] == settings.metrics_port


def test_redis_streams_triggers_watch_the_workers_stream_and_group(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    objects = render(K8S / "redis-streams")
    settings = settings_of(objects, monkeypatch)
    assert settings.queue_backend == "redis"
    group = inspect.signature(RedisStreamsQueue).parameters["group"].default
    triggers = by_kind(objects, "ScaledObject")["ptu-worker"]["spec"]["triggers"]
    provisioned = [d.name for d in settings.deployments if d.kind == "provisioned"]
    watched = {(t["metadata"]["stream"], t["metadata"]["consumerGroup"]) for t in triggers}
    streams = {keys.tenant_queue(d, "default", c) for d in provisioned for c in WORK_CLASSES}
    assert watched == {(stream, group) for stream in streams}
    assert {"lagCount", "pendingEntriesCount"} <= {k for t in triggers for k in t["metadata"]}


def test_eventhubs_trigger_reads_the_blob_checkpoints_the_workers_write(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    objects = render(K8S / "eventhubs")
    settings = settings_of(objects, monkeypatch)
    assert settings.queue_backend == "eventhubs"
    assert settings.eventhub_checkpoint_store == "blob"
    assert settings.eventhub_checkpoint_blob_url is not None
    account = urlsplit(settings.eventhub_checkpoint_blob_url).hostname or ""
    namespace = (settings.eventhub_namespace or "").split(".")[0]
    triggers = by_kind(objects, "ScaledObject")["ptu-worker"]["spec"]["triggers"]
    provisioned = [d.name for d in settings.deployments if d.kind == "provisioned"]
    assert {t["metadata"]["eventHubName"] for t in triggers} == {
        hub_name(settings.eventhub_name, d, "default", c) for d in provisioned for c in WORK_CLASSES
    }
    for trigger in triggers:
        meta = trigger["metadata"]
        assert meta["checkpointStrategy"] == "blobMetadata"  # the v5 SDKs' blob store
        assert meta["blobContainer"] == settings.eventhub_checkpoint_container
        assert meta["consumerGroup"] == settings.eventhub_consumer_group
        assert meta["storageAccountName"] == account.split(".")[0]
        assert meta["eventHubNamespace"] == namespace
