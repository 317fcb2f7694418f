"""Deploy manifests and image: every YAML parses, the overlay only swaps images, our parsers take every arg.

The overlay (deploy/kubernetes/overlays/python-sidecars) is built with the real `kubectl kustomize`
and compared with the base it patches (deploy/kubernetes/upstream, csi-driver-host-path's
deployment): the only differences allowed are the five sidecar images and the run-as-root
securityContext of those five containers. Every arg of those containers must then be accepted by
our own flag parser for that sidecar, and build its config, exactly as the real entrypoint would.
The Dockerfile is checked statically (no container engine here): five targets with the Go images'
entrypoints, a non-root user, no compilers in what ships.
"""

from __future__ import annotations

import importlib
import inspect
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from common.flags import FlagSet

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
OVERLAY = KUBERNETES / "overlays" / "python-sidecars"
BASE = KUBERNETES / "upstream"
OUR_REGISTRY = "localhost/python-csi-sidecars"

PROGRAMS = {
    "csi-provisioner": "provisioner",
    "csi-attacher": "attacher",
    "csi-resizer": "resizer",
    "csi-node-driver-registrar": "registrar",
    "livenessprobe": "livenessprobe",
}
"""Go binary name (= image name, = entrypoint path without the slash) → our package under sidecars/."""
OUR_PROGRAMS = {"csi-controller-sidecars": "combined"}
"""Programs of ours with no Go counterpart: a launcher and a target in the image, no overlay entry."""

Obj = dict[str, Any]


def all_yaml() -> list[Path]:
    return sorted(DEPLOY.rglob("*.yaml"))


@pytest.mark.parametrize("path", all_yaml(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_manifest_parses(path: Path) -> None:
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert documents, f"{path} holds no document"
    for document in documents:
        assert isinstance(document, dict)
        assert document.get("apiVersion") and document.get("kind"), f"{path}: {document}"
        if document["kind"] not in ("Kustomization", "Component"):
            assert document.get("metadata", {}).get("name"), f"{path}: object without a name"


def kustomize(directory: Path) -> list[Obj]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed")
    done = subprocess.run(
        ["kubectl", "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d is not None]


def by_key(objects: list[Obj]) -> dict[tuple[str, str, str], Obj]:
    return {(o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]): o for o in objects}


def statefulset(objects: list[Obj]) -> Obj:
    (found,) = [o for o in objects if o["kind"] == "StatefulSet"]
    return found


def containers(workload: Obj) -> list[Obj]:
    result: list[Obj] = workload["spec"]["template"]["spec"]["containers"]
    return result


def image_name(image: str) -> str:
    """`registry/path/name:tag` → `name`."""
    return image.rsplit("/", 1)[-1].split(":", 1)[0]


@pytest.fixture(scope="module")
def overlay() -> list[Obj]:
    return kustomize(OVERLAY)


@pytest.fixture(scope="module")
def base() -> list[Obj]:
    return kustomize(BASE)


def test_overlay_changes_only_images_and_run_as_root(overlay: list[Obj], base: list[Obj]) -> None:
    ours, theirs = by_key(overlay), by_key(base)
    added = set(ours) - set(theirs)
    assert set(theirs) <= set(ours), f"the overlay dropped {set(theirs) - set(ours)}"
    assert {kind for kind, _, _ in added} <= {"ClusterRole", "Role"}, f"unexpected additions {added}"
    for key, obj in theirs.items():
        if key[0] != "StatefulSet":
            assert ours[key] == obj, f"{key} changed"
    before, after = statefulset(base), statefulset(overlay)
    assert [c["name"] for c in containers(before)] == [c["name"] for c in containers(after)]
    swapped = set()
    for old, new in zip(containers(before), containers(after), strict=True):
        program = image_name(old["image"])
        if program not in PROGRAMS:
            assert new == old, f"container {old['name']} changed"
            continue
        assert new["image"] == f"{OUR_REGISTRY}/{program}:dev"
        assert new["args"] == old["args"]
        assert new.get("command") == old.get("command")
        assert new["securityContext"] == {**old.get("securityContext", {}), "runAsUser": 0, "runAsGroup": 0}
        rest = {k: v for k, v in new.items() if k not in ("image", "securityContext")}
        assert rest == {k: v for k, v in old.items() if k not in ("image", "securityContext")}
        swapped.add(program)
    assert swapped == set(PROGRAMS)
    before_spec = {k: v for k, v in before["spec"]["template"]["spec"].items() if k != "containers"}
    after_spec = {k: v for k, v in after["spec"]["template"]["spec"].items() if k != "containers"}
    assert after_spec == before_spec
    assert {k: v for k, v in after.items() if k != "spec"} == {k: v for k, v in before.items() if k != "spec"}


def test_overlay_adds_a_role_for_every_binding_of_our_sidecars(overlay: list[Obj]) -> None:
    """Each binding upstream makes to a provisioner/attacher/resizer role finds that role in the output."""
    roles = {(o["kind"], o["metadata"]["name"]) for o in overlay if o["kind"] in ("ClusterRole", "Role")}
    bindings = [o for o in overlay if o["kind"] in ("ClusterRoleBinding", "RoleBinding")]
    wanted = {
        (b["roleRef"]["kind"], b["roleRef"]["name"])
        for b in bindings
        if re.match(r"external-(provisioner|attacher|resizer)-", b["roleRef"]["name"])
    }
    assert len(wanted) == 6
    assert wanted <= roles


def expand(arg: str, env: dict[str, str]) -> str:
    """kubelet's `$(VAR)` expansion of container args from the container's env."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), arg)


def sidecar_cli(program: str) -> Any:
    module = importlib.import_module(f"sidecars.{PROGRAMS[program]}.cli")
    assert program == module.PROGRAM
    return module


def config_class(module: Any) -> Any:
    (found,) = [
        cls
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if cls.__module__ == module.__name__ and hasattr(cls, "from_flags")
    ]
    return found


def sidecar_containers() -> list[tuple[str, Obj]]:
    """(program, container) of each Go sidecar in the base deployment, read without kubectl.

    The overlay leaves args untouched (test_overlay_changes_only_images_and_run_as_root checks that
    with kubectl), so the base's args are the ones our images receive.
    """
    documents = [d for p in sorted(BASE.glob("csi-*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]
    found = [
        (image_name(c["image"]), c)
        for c in containers(statefulset(documents))
        if image_name(c["image"]) in PROGRAMS
    ]
    assert {program for program, _ in found} == set(PROGRAMS)
    return found


def test_every_arg_is_accepted_by_our_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAMESPACE", "default")
    for program, container in sidecar_containers():
        env = {e["name"]: e["value"] for e in container.get("env", ()) if "value" in e}
        args = [expand(a, env) for a in container.get("args", ())]
        cli = sidecar_cli(program)
        flagset: FlagSet = cli.build_flagset()
        assert flagset.program == program
        flags = flagset.parse(args)  # FlagError (what would exit 2) fails the test
        config_class(cli).from_flags(flags)  # ConfigError (exit 1) too
        for name in flags._seen:
            options = flagset._flag(name).options
            # Deprecated is fine (upstream warns too: livenessprobe's --health-port); unimplemented is not.
            assert options.get("implemented", True), f"{program}: {name} is accepted but not implemented"


# --- the image ---------------------------------------------------------------------------------


def dockerfile_stages() -> dict[str, tuple[str, list[str]]]:
    """Stage name → (FROM image or stage, instruction lines), continuation lines joined."""
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    stages: dict[str, tuple[str, list[str]]] = {}
    current: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"FROM\s+(\S+)\s+AS\s+(\S+)$", line, re.IGNORECASE)
        if match:
            current = []
            stages[match.group(2)] = (match.group(1), current)
        elif stages:
            current.append(line)
    return stages


def instructions(lines: list[str], keyword: str) -> list[str]:
    return [line[len(keyword) :].strip() for line in lines if line.upper().startswith(keyword + " ")]


def test_dockerfile_has_the_five_entrypoints() -> None:
    stages = dockerfile_stages()
    for program in {**PROGRAMS, **OUR_PROGRAMS}:
        parent, lines = stages[program]
        assert parent == "runtime"
        assert instructions(lines, "ENTRYPOINT") == [f'["/{program}"]']
    _, runtime = stages["runtime"]
    (launchers,) = [run for run in instructions(runtime, "RUN") if "ln -s" in run]
    for program in {**PROGRAMS, **OUR_PROGRAMS}:
        assert program in launchers
    assert '"/opt/venv/bin/${program}" "/${program}"' in launchers


def test_launchers_are_the_projects_console_scripts() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert {name: target.split(":")[0] for name, target in scripts.items()} == {
        program: f"sidecars.{package}.__main__" for program, package in {**PROGRAMS, **OUR_PROGRAMS}.items()
    }


def test_dockerfile_runs_as_non_root() -> None:
    stages = dockerfile_stages()
    (user,) = instructions(stages["runtime"][1], "USER")
    uid, _, gid = user.partition(":")
    assert uid == "65532" and gid == "65532"
    for name, (parent, lines) in stages.items():
        if name not in ("builder", "runtime"):
            assert parent == "runtime"
            assert not instructions(lines, "USER"), f"stage {name} changes the user"


COMPILERS = re.compile(r"\b(gcc|g\+\+|clang|cc|build-essential|make|cmake|rustc|cargo|python3?-dev)\b")


def test_no_compilers_in_the_shipped_stages() -> None:
    stages = dockerfile_stages()
    base, runtime = stages["runtime"]
    assert base == "${PYTHON_IMAGE}"
    default = re.search(r"ARG PYTHON_IMAGE=(\S+)", (DEPLOY / "Dockerfile").read_text())
    assert default and re.search(r"-slim|distroless", default.group(1))
    for name, (_, lines) in stages.items():
        if name == "builder":
            continue
        for run in instructions(lines, "RUN"):
            assert not re.search(r"apt-get install|apk add|dnf install|yum install", run), run
            assert not COMPILERS.search(run), f"stage {name}: {run}"
        for copy in instructions(lines, "COPY"):
            if copy.startswith("--from=builder"):
                assert copy.split()[1:] == ["/opt/venv", "/opt/venv"], copy
    assert "CMD []" in runtime
