"""The Kubernetes manifests: valid objects, references that resolve, KEDA triggers on our keys.

Every kustomization (the queue variants and keda-prometheus, and each overlay under
`deploy/k8s/overlays/`) is built by kustomize itself (`kubectl kustomize`, the build
`kubectl apply -k` does), then:

- core kinds are validated strictly (unknown fields fail) against the Kubernetes JSON
  schemas shipped by `kubernetes-validate` (PyPI);
- custom resources (KEDA, Prometheus Operator) against their CRD schemas, compiled by
  the `@kubernetes-models/*` packages (npm, `deploy/validate`, installed by `make install`);
- every name one object uses (service account, config map, scale target, trigger
  authentication, monitored ports, volumes) exists, and the KEDA triggers watch the stream
  and consumer group, the hub and checkpoint container, or the queue gauge the code uses;
- the pods are locked down (non-root, read-only root filesystem, no capabilities, seccomp)
  and every workload has a disruption budget; the overlays hold every placeholder.

Without kubectl the build cannot run: skipped on a developer's machine, a failure in CI.
"""

from __future__ import annotations

import copy
import inspect
import json
import os
import re
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
from orchestrator.worker.health import Health
from tests.unit.test_deploy_observability import exported, selected

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
VALIDATE = K8S.parent / "validate"
VARIANTS = ("redis-streams", "eventhubs", "keda-prometheus")
OVERLAYS = tuple(sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir()))
BUILDS = VARIANTS + tuple(f"overlays/{name}" for name in OVERLAYS)
KUBERNETES = "1.31.0"
EXTERNAL_SECRETS = {"ptu-secrets"}
"""Created by the operator with kubectl (the base manifest says how), never committed."""
CUSTOM_GROUPS = ("keda.sh/", "monitoring.coreos.com/")
PLACEHOLDER = re.compile(r"<[a-z][a-z0-9-]*>")
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
    "prometheus": {
        "serverAddress", "query", "threshold", "activationThreshold", "namespace",
        "customHeaders", "ignoreNullValues", "queryParameters", "unsafeSsl", "authModes",
    },
}  # fmt: skip


def _kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("kubectl is needed to build the kustomizations")
        pytest.skip("kubectl is not installed: the kustomizations cannot be built")
    return found


def render(directory: Path) -> list[dict[str, Any]]:
    """The objects `kubectl apply -k directory` would apply, built by kustomize."""
    done = subprocess.run(
        [_kubectl(), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def filled(value: str) -> str:
    """`value` with each placeholder replaced as an operator would (`<redis-host>`: a host)."""
    return PLACEHOLDER.sub(lambda m: m.group(0)[1:-1], value)


def config_of(objects: list[dict[str, Any]]) -> dict[str, str]:
    (config,) = by_kind(objects, "ConfigMap").values()
    return {name: filled(value) for name, value in config["data"].items()}


def settings_of(objects: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings the processes would read from the manifests' ConfigMap, filled in."""
    for name, value in config_of(objects).items():
        monkeypatch.setenv(name, value)
    return load_settings()


@pytest.fixture(scope="module", params=BUILDS)
def objects(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return render(K8S / request.param)


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return render(K8S / "overlays" / request.param)


def test_each_variant_renders_unique_objects(objects: list[dict[str, Any]]) -> None:
    idents = [(o["kind"], o["metadata"]["name"]) for o in objects]
    assert len(idents) == len(set(idents))
    kinds = {kind for kind, _ in idents}
    assert {"ServiceAccount", "ConfigMap", "Deployment", "Service", "ScaledObject"} <= kinds
    assert "PodDisruptionBudget" in kinds
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
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
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
    overlay: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_of(overlay, monkeypatch)
    worker = by_kind(overlay, "Deployment")["ptu-worker"]["spec"]["template"]["spec"]
    (port,) = worker["containers"][0]["ports"]
    assert port["containerPort"] == settings.metrics_port


def test_redis_streams_triggers_watch_the_workers_stream_and_group(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    objects = render(K8S / "overlays" / "example-redis-keys")
    settings = settings_of(objects, monkeypatch)
    assert settings.queue_backend == "redis"
    assert settings.redis_auth == "key"  # KEDA's Redis scalers take a password only
    group = inspect.signature(RedisStreamsQueue).parameters["group"].default
    triggers = by_kind(objects, "ScaledObject")["ptu-worker"]["spec"]["triggers"]
    provisioned = [d.name for d in settings.deployments if d.kind == "provisioned"]
    watched = {(t["metadata"]["stream"], t["metadata"]["consumerGroup"]) for t in triggers}
    streams = {keys.tenant_queue(d, "default", c) for d in provisioned for c in WORK_CLASSES}
    assert watched == {(stream, group) for stream in streams}
    assert {"lagCount", "pendingEntriesCount"} <= {k for t in triggers for k in t["metadata"]}
    config = config_of(objects)
    for trigger in triggers:  # KEDA reads the address from the worker's environment
        assert trigger["metadata"]["addressFromEnv"] in config


def test_eventhubs_trigger_reads_the_blob_checkpoints_the_workers_write(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    objects = render(K8S / "overlays" / "example-eventhubs")
    settings = settings_of(objects, monkeypatch)
    config = config_of(objects)
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
        assert filled(meta["storageAccountName"]) == account.split(".")[0]
        assert config[meta["eventHubNamespaceFromEnv"]] == namespace


def _pods(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {n: d["spec"]["template"] for n, d in by_kind(objects, "Deployment").items()}


def test_pods_are_locked_down(objects: list[dict[str, Any]]) -> None:
    for name, pod in _pods(objects).items():
        spec = pod["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] == 10001, name  # deploy/Dockerfile's USER
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"] == {"drop": ["ALL"]}, name
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            assert "emptyDir" in volumes[mounts["/tmp"]], name  # the only writable scratch
            assert set(mounts.values()) <= set(volumes), name


def test_every_workload_has_a_disruption_budget(objects: list[dict[str, Any]]) -> None:
    budgets = by_kind(objects, "PodDisruptionBudget").values()
    for name, pod in _pods(objects).items():
        covering = [
            b for b in budgets
            if _labels_match(b["spec"]["selector"]["matchLabels"], pod["metadata"]["labels"])
        ]  # fmt: skip
        assert len(covering) == 1, name
    ingress = by_kind(objects, "PodDisruptionBudget")["ptu-ingress"]["spec"]
    replicas = by_kind(objects, "Deployment")["ptu-ingress"]["spec"]["replicas"]
    assert ingress["minAvailable"] < replicas  # a drain can always evict one


def test_the_worker_probes_are_paths_its_metrics_port_serves(
    objects: list[dict[str, Any]],
) -> None:
    (worker,) = _pods(objects)["ptu-worker"]["spec"]["containers"]
    health = Health()
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = worker[probe]["httpGet"]
        assert get["port"] == "metrics"
        assert health.answer(get["path"]) is not None, probe
    assert worker["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert worker["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_the_base_names_no_resource_of_yours() -> None:
    for path in [*(K8S / "base").glob("*.yaml"), *(K8S / "components").rglob("*.yaml")]:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        assert not PLACEHOLDER.findall(json.dumps(docs)), path


def test_an_overlay_holds_every_placeholder_it_leaves(overlay: list[dict[str, Any]]) -> None:
    declared: set[str] = set()
    for kustomization in (K8S / "overlays").glob("*/kustomization.yaml"):
        declared |= set(PLACEHOLDER.findall(kustomization.read_text()))
    left = set(PLACEHOLDER.findall(json.dumps(overlay)))
    assert left <= declared
    images = {c["image"] for p in _pods(overlay).values() for c in p["spec"]["containers"]}
    assert images == {"ghcr.io/<owner>/ptu-orchestrator:<version>"}  # the published image
    assert {o["metadata"].get("namespace") for o in overlay} == {"ptu"}


def test_the_example_is_keyless_and_shares_its_files(monkeypatch: pytest.MonkeyPatch) -> None:
    objects = render(K8S / "overlays" / "example")
    settings = settings_of(objects, monkeypatch)
    assert settings.redis_auth == "entra"
    assert urlsplit(settings.redis_url).password is None
    assert settings.blob_account_url is not None  # every replica sees the same files
    assert settings.azure_openai_api_key is None
    (account,) = by_kind(objects, "ServiceAccount").values()
    assert "azure.workload.identity/client-id" in account["metadata"]["annotations"]
    for auth in by_kind(objects, "TriggerAuthentication").values():
        assert auth["spec"] == {"podIdentity": {"provider": "azure-workload"}}


def test_the_prometheus_trigger_reads_a_gauge_the_worker_exports() -> None:
    objects = render(K8S / "keda-prometheus")
    (scaled,) = by_kind(objects, "ScaledObject").values()
    for trigger in scaled["spec"]["triggers"]:
        names = selected(trigger["metadata"]["query"])
        assert names == {"ptu_worker_queue_depth"}
        assert names <= exported()


def test_the_shared_volume_is_mounted_where_the_ingress_keeps_files(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    objects = render(K8S / "overlays" / "example-shared-volume")
    settings = settings_of(objects, monkeypatch)
    assert settings.blob_account_url is None
    (claim,) = by_kind(objects, "PersistentVolumeClaim").values()
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    spec = _pods(objects)["ptu-ingress"]["spec"]
    (ingress,) = spec["containers"]
    env = {e["name"]: e["value"] for e in ingress["env"]}
    volume = next(v for v in spec["volumes"] if "persistentVolumeClaim" in v)
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    mounts = {m["name"]: m["mountPath"] for m in ingress["volumeMounts"]}
    assert mounts[volume["name"]] == env["PTU_FILES_DIR"]
