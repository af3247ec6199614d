"""The image build and publication: `make image` and `.github/workflows/release.yml` build
`deploy/Dockerfile`, tagged with the package's version, under the name the overlays use.

No container daemon or base image is reachable here, so the build itself is not run; what
is checked is what each piece says: the workflow's own version guard (run as written), the
`make` recipe, and that the Dockerfile's user is the one the pods are told to run as.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / ".github" / "workflows" / "release.yml"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def workflow() -> dict[str, Any]:
    doc: dict[Any, Any] = yaml.safe_load(WORKFLOW.read_text())
    doc["on"] = doc.pop(True, doc.get("on"))  # YAML 1.1 reads the key `on` as true
    return doc


def steps() -> list[dict[str, Any]]:
    (job,) = workflow()["jobs"].values()
    result: list[dict[str, Any]] = job["steps"]
    return result


def uses(action: str) -> dict[str, Any]:
    (step,) = [s for s in steps() if s.get("uses", "").startswith(action + "@")]
    return step


def test_a_version_tag_publishes_the_dockerfile_image() -> None:
    (pattern,) = workflow()["on"]["push"]["tags"]
    assert fnmatch.fnmatch(f"v{VERSION}", pattern)
    assert not fnmatch.fnmatch("main", pattern)
    build = uses("docker/build-push-action")["with"]
    assert (ROOT / build["file"]).is_file() and build["file"] == "deploy/Dockerfile"
    assert build["push"] is True
    assert "steps.meta.outputs.tags" in build["tags"]
    image = uses("docker/metadata-action")["with"]["images"]
    assert image == "ghcr.io/${{ github.repository_owner }}/ptu-orchestrator"
    assert uses("docker/login-action")["with"]["registry"] == "ghcr.io"
    assert workflow()["permissions"]["packages"] == "write"


def test_the_overlays_name_the_published_image() -> None:
    for kustomization in (ROOT / "deploy" / "k8s" / "overlays").glob("*/kustomization.yaml"):
        doc = yaml.safe_load(kustomization.read_text())
        for image in doc.get("images", []):
            assert image["name"] == "ptu-orchestrator"
            assert image["newName"] == "ghcr.io/<owner>/ptu-orchestrator", kustomization


@pytest.mark.parametrize(("tag", "ok"), [(f"v{VERSION}", True), ("v999.0.0", False)])
def test_the_workflow_refuses_a_tag_that_is_not_the_package_version(tag: str, ok: bool) -> None:
    (guard,) = [s for s in steps() if s.get("name") == "The tag is the package's version"]
    env = {**os.environ, "GITHUB_REF_NAME": tag}
    done = subprocess.run(
        ["bash", "-e", "-c", guard["run"]], cwd=ROOT, env=env, capture_output=True, timeout=30
    )
    assert (done.returncode == 0) is ok, done.stderr


def test_make_image_builds_the_dockerfile_with_the_package_version() -> None:
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    done = subprocess.run(
        # under `make test` (a sub-make) make would add "Entering/Leaving directory" lines
        [make, "--no-print-directory", "-n", "image", "IMAGE=registry.example/ptu-orchestrator"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    command = done.stdout.strip().splitlines()[-1].split()
    assert command[:2] == ["docker", "build"]
    assert command[command.index("-f") + 1] == "deploy/Dockerfile"
    assert command[command.index("-t") + 1] == f"registry.example/ptu-orchestrator:{VERSION}"


def test_the_image_runs_as_the_user_the_pods_require() -> None:
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    (user,) = re.findall(r"^USER (\S+)$", dockerfile, re.MULTILINE)
    manifest = (ROOT / "deploy" / "k8s" / "base" / "ptu-orchestrator.yaml").read_text()
    uids = set(re.findall(r"runAsUser: (\d+)", manifest))
    assert user == f"{min(uids)}:{min(uids)}" and len(uids) == 1
