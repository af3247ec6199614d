"""The README's "Running in Azure" runs top to bottom: its commands, taken from README.md.

The blocks between `<!-- azure-walk... -->` and `<!-- /azure-walk -->` run as one bash script
in a copy of the checkout. Azure cannot be reached from here, so `az` is a recorder that
answers only what the templates define: `deployment group show` gives a value for an output
`deploy/bicep/main.bicep` declares (any other name fails, as Azure would), `deployment
group create` is recorded and its parameters are checked against the template afterwards
(every one declared, every required one given). `kubectl` builds and dry-runs instead of
applying: `apply -k` is `kubectl kustomize`, `create` gets `--dry-run=client -o yaml`, and
`get secret` reads back the Secret the script created. Then the built overlay must hold no
placeholder and give the processes valid settings.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.core.settings import load_settings
from tests.support.bicep import parse

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
BLOCK = re.compile(r"<!-- azure-walk(?::\w+)? -->\n(.*?)<!-- /azure-walk -->", re.S)
FENCE = re.compile(r"```bash\n(.*?)```", re.S)
PLACEHOLDER = re.compile(r"<[a-z][a-z0-9-]*>")
OUTPUTS = {
    "identityClientId": "0b2c1d4e-1111-4222-8333-944455556666",
    "redisUrl": "rediss://ptu-abc.westeurope.redis.azure.net:10000/0",
    "blobAccountUrl": "https://ptuckptabc.blob.core.windows.net/",
    "eventHubNamespace": "ptu-abc.servicebus.windows.net",
    "checkpointBlobUrl": "https://ptuckptabc.blob.core.windows.net/",
    "redisHost": "ptu-abc.westeurope.redis.azure.net",
    "azureResourceId": "/subscriptions/s/resourceGroups/ptu-rg/providers/x/accounts/a",
}
"""What `az deployment group show` answers for each output (the names must be declared)."""
QUERY_ENDPOINT = "https://ws-abc.westeurope.prometheus.monitor.azure.com"
OIDC_ISSUER = "https://westeurope.oic.prod-aks.azure.com/tenant/cluster/"

FAKE_AZ = r"""
import json, os, sys
args = sys.argv[1:]
with open(os.environ["WALK_LOG"], "a") as log:
    log.write(json.dumps(["az", *args]) + "\n")
outputs = json.loads(os.environ["WALK_OUTPUTS"])
def query():
    return args[args.index("--query") + 1]
if args[:2] == ["aks", "show"] and query() == "oidcIssuerProfile.issuerUrl":
    print(os.environ["WALK_OIDC"])
elif args[:3] == ["deployment", "group", "show"]:
    name = query().removeprefix("properties.outputs.").removesuffix(".value")
    if name not in outputs:
        sys.exit(f"az: the deployment has no output {name!r}")
    print(outputs[name])
elif args[:3] == ["monitor", "account", "show"] and query() == "metrics.prometheusQueryEndpoint":
    print(os.environ["WALK_PROMETHEUS"])
elif args[:3] == ["deployment", "group", "create"]:
    pass
else:
    sys.exit(f"az: the walk does not know {args}")
"""

FAKE_KUBECTL = r"""
import json, os, subprocess, sys, base64
import yaml
args = sys.argv[1:]
real = os.environ["WALK_KUBECTL"]
log_path = os.environ["WALK_LOG"]
with open(log_path, "a") as log:
    log.write(json.dumps(["kubectl", *args]) + "\n")
def run(cmd):
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        sys.exit(done.stderr)
    return done.stdout
if "create" in args:
    made = run([real, *args, "--dry-run=client", "-o", "yaml"])
    with open(os.environ["WALK_CREATED"], "a") as out:
        out.write(made + "\n---\n")
elif args[:2] == ["apply", "-k"]:
    with open(os.environ["WALK_BUILT"], "w") as out:
        out.write(run([real, "kustomize", args[2]]))
elif "get" in args and "secret" in args:
    docs = [d for d in yaml.safe_load_all(open(os.environ["WALK_CREATED"])) if d]
    (secret,) = [d for d in docs if d["kind"] == "Secret"]
    key = args[args.index("-o") + 1].split(".data.")[1].rstrip("}")
    sys.stdout.write(secret["data"][key])
else:
    sys.exit(f"kubectl: the walk does not know {args}")
"""


def walk_script() -> str:
    section = README.read_text().split("## Running in Azure\n", 1)[1].split("\n### ", 1)[0]
    blocks = BLOCK.findall(section)
    assert len(blocks) == 2, "the resources-to-processes walk and the APIM step"
    return "set -euo pipefail\n" + "\n".join(c for b in blocks for c in FENCE.findall(b))


def _tool(directory: Path, name: str, source: str) -> None:
    path = directory / name
    path.write_text(f"#!{sys.executable}\n{source}")
    path.chmod(0o755)


def _params(args: list[str]) -> dict[str, str]:
    given: dict[str, str] = {}
    if "-p" in args:
        for token in args[args.index("-p") + 1 :]:
            if token.startswith("-"):
                break
            name, _, value = token.partition("=")
            given[name] = value
    return given


@pytest.fixture(scope="module")
def walked(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        if os.environ.get("CI"):
            pytest.fail("kubectl is needed to build the overlay")
        pytest.skip("kubectl is not installed")
    tmp = tmp_path_factory.mktemp("azure-walk")
    checkout = tmp / "checkout"
    shutil.copytree(
        ROOT / "deploy", checkout / "deploy", ignore=shutil.ignore_patterns("node_modules")
    )
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, checkout / name)
    tools = tmp / "bin"
    tools.mkdir()
    _tool(tools, "az", FAKE_AZ)
    _tool(tools, "kubectl", FAKE_KUBECTL)
    files = {name: tmp / name for name in ("log", "created.yaml", "built.yaml")}
    files["created.yaml"].write_text("")
    env = {
        "PATH": f"{tools}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(tmp),
        "LANG": "C.UTF-8",
        "WALK_LOG": str(files["log"]),
        "WALK_CREATED": str(files["created.yaml"]),
        "WALK_BUILT": str(files["built.yaml"]),
        "WALK_KUBECTL": kubectl,
        "WALK_OUTPUTS": json.dumps(OUTPUTS),
        "WALK_OIDC": OIDC_ISSUER,
        "WALK_PROMETHEUS": QUERY_ENDPOINT,
    }
    done = subprocess.run(
        ["bash", "-c", walk_script()],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    calls = [json.loads(line) for line in files["log"].read_text().splitlines()]
    created = [d for d in yaml.safe_load_all(files["created.yaml"].read_text()) if d]
    built = [d for d in yaml.safe_load_all(files["built.yaml"].read_text()) if d]
    return {"calls": calls, "created": created, "built": built}


def test_the_bicep_outputs_it_reads_exist() -> None:
    template = parse((ROOT / "deploy" / "bicep" / "main.bicep").read_text())
    assert set(OUTPUTS) == set(template.outputs)  # the recorder knows exactly these


def test_every_deployment_names_a_template_and_its_parameters(walked: dict[str, Any]) -> None:
    creates = [c[1:] for c in walked["calls"] if c[:4] == ["az", "deployment", "group", "create"]]
    assert {c[c.index("-f") + 1] for c in creates} == {
        "deploy/bicep/main.bicep",
        "deploy/apim/backends.bicep",
    }
    for args in creates:
        template = parse((ROOT / args[args.index("-f") + 1]).read_text())
        given = _params(args)
        assert set(given) <= set(template.params), args
        required = {n for n, (_, default) in template.params.items() if default is None}
        assert required <= set(given), args
        assert all(value and not PLACEHOLDER.search(value) for value in given.values()), given
    main = next(c for c in creates if "deploy/bicep/main.bicep" in c)
    assert _params(main)["aksOidcIssuer"] == OIDC_ISSUER


def test_the_overlay_is_filled_in_and_gives_valid_settings(
    walked: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    built = walked["built"]
    assert built, "kubectl apply -k built nothing"
    assert not PLACEHOLDER.findall(json.dumps(built))
    (config,) = [o for o in built if o["kind"] == "ConfigMap"]
    for name, value in config["data"].items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert settings.redis_url == OUTPUTS["redisUrl"] and settings.redis_auth == "entra"
    assert settings.blob_account_url == OUTPUTS["blobAccountUrl"]
    (account,) = [o for o in built if o["kind"] == "ServiceAccount"]
    annotations = account["metadata"]["annotations"]
    assert annotations["azure.workload.identity/client-id"] == OUTPUTS["identityClientId"]
    images = {
        c["image"]
        for o in built
        if o["kind"] == "Deployment"
        for c in o["spec"]["template"]["spec"]["containers"]
    }
    assert images == {"ghcr.io/my-github-org/ptu-orchestrator:0.1.0"}
    (scaled,) = [o for o in built if o["kind"] == "ScaledObject"]
    assert scaled["spec"]["triggers"][0]["metadata"]["serverAddress"] == QUERY_ENDPOINT


def test_the_secret_holds_valid_settings_and_apim_gets_its_front_secret(
    walked: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    kinds = {(o["kind"], o["metadata"]["name"]) for o in walked["created"]}
    assert kinds == {("Namespace", "ptu"), ("Secret", "ptu-secrets")}
    (secret,) = [o for o in walked["created"] if o["kind"] == "Secret"]
    assert secret["metadata"]["namespace"] == "ptu"
    values = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert settings.api_keys == {"team-a-key": "team-a"}
    front = settings.trusted_front_secret
    assert front is not None and re.fullmatch(r"[0-9a-f]{64}", front.get_secret_value())
    apim = next(c for c in walked["calls"] if "deploy/apim/backends.bicep" in c)
    assert _params(apim[1:])["frontSecret"] == front.get_secret_value()
