"""The real kubectl against the test bed, through its kubeconfig: what works on a cluster works here."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from testbed.apiserver import ApiServer

KUBECTL = shutil.which("kubectl")
pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")

CLAIM = """\
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: data
  labels: {tier: "%s"}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Gi}}
"""
SNAPSHOT_CLASS = """\
apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshotClass
metadata: {name: fast}
driver: hostpath.csi.k8s.io
deletionPolicy: %s
"""


class Kubectl:
    def __init__(self, server: ApiServer, home: Path):
        self.base = [
            str(KUBECTL),
            f"--kubeconfig={server.kubeconfig}",
            f"--cache-dir={home / 'cache'}",
            "-n",
            "default",
        ]
        self.home = home

    async def run(self, *args: str, stdin: str | None = None, check: bool = True) -> tuple[int, str, str]:
        process = await asyncio.create_subprocess_exec(
            *self.base,
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={"HOME": str(self.home), "PATH": "/usr/bin:/bin"},
        )
        out, err = await asyncio.wait_for(process.communicate(stdin.encode() if stdin else None), 20)
        code = process.returncode or 0
        if check and code != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({code}): {err.decode()}")
        return code, out.decode(), err.decode()

    async def json(self, *args: str) -> Any:
        return json.loads((await self.run(*args, "-o", "json"))[1])


@pytest.fixture
async def kubectl(apiserver: ApiServer, tmp_path: Path) -> AsyncIterator[Kubectl]:
    yield Kubectl(apiserver, tmp_path)


async def test_get_create_apply(kubectl: Kubectl) -> None:
    namespaces = await kubectl.json("get", "namespaces")
    assert "default" in [n["metadata"]["name"] for n in namespaces["items"]]
    _, out, _ = await kubectl.run("create", "-f", "-", stdin=CLAIM % "a")
    assert out.strip() == "persistentvolumeclaim/data created"
    claim = await kubectl.json("get", "pvc", "data")
    assert claim["spec"]["volumeMode"] == "Filesystem" and claim["metadata"]["finalizers"] == [
        "kubernetes.io/pvc-protection"
    ]
    _, out, _ = await kubectl.run("apply", "-f", "-", stdin=CLAIM % "b")
    assert out.strip() == "persistentvolumeclaim/data configured"
    _, out, _ = await kubectl.run("apply", "-f", "-", stdin=CLAIM % "c")
    applied = await kubectl.json("get", "pvc", "data")
    assert applied["metadata"]["labels"] == {"tier": "c"}
    assert "kubectl.kubernetes.io/last-applied-configuration" in applied["metadata"]["annotations"]
    for policy in ("Delete", "Retain"):
        await kubectl.run("apply", "-f", "-", stdin=SNAPSHOT_CLASS % policy)
    snapshot_class = await kubectl.json("get", "volumesnapshotclass", "fast")
    assert snapshot_class["deletionPolicy"] == "Retain" and snapshot_class["metadata"]["generation"] == 2


async def test_patch_types_and_status(kubectl: Kubectl) -> None:
    await kubectl.run("create", "-f", "-", stdin=CLAIM % "a")
    await kubectl.run("patch", "pvc", "data", "--type=merge", "-p", '{"metadata":{"annotations":{"m":"1"}}}')
    await kubectl.run("patch", "pvc", "data", "-p", '{"metadata":{"finalizers":["example.com/s"]}}')
    json_patch = '[{"op":"add","path":"/metadata/finalizers/-","value":"example.com/j"}]'
    await kubectl.run("patch", "pvc", "data", "--type=json", "-p", json_patch)
    await kubectl.run(
        "patch", "pvc", "data", "--subresource=status", "--type=merge", "-p", '{"status":{"phase":"Bound"}}'
    )
    claim = await kubectl.json("get", "pvc", "data")
    assert claim["metadata"]["annotations"]["m"] == "1"
    assert claim["metadata"]["finalizers"] == [
        "example.com/s",
        "kubernetes.io/pvc-protection",
        "example.com/j",
    ]
    assert claim["status"]["phase"] == "Bound"
    code, _, err = await kubectl.run(
        "patch",
        "pvc",
        "data",
        "--type=json",
        "-p",
        '[{"op":"test","path":"/spec/volumeMode","value":"Block"}]',
        check=False,
    )
    assert code != 0 and "the server rejected our request due to an error in our request" in err


async def test_replace_stale_and_delete_with_finalizers(kubectl: Kubectl, tmp_path: Path) -> None:
    await kubectl.run("create", "-f", "-", stdin=CLAIM % "a")
    stale = (await kubectl.run("get", "pvc", "data", "-o", "yaml"))[1]
    await kubectl.run("annotate", "pvc", "data", "touched=yes")
    code, _, err = await kubectl.run("replace", "-f", "-", stdin=stale, check=False)
    assert code != 0 and "Conflict" in err and "the object has been modified" in err
    _, out, _ = await kubectl.run("delete", "pvc", "data", "--wait=false")
    assert out.strip() == 'persistentvolumeclaim "data" deleted'
    held = await kubectl.json("get", "pvc", "data")
    assert held["metadata"]["deletionTimestamp"] and held["metadata"]["finalizers"] == [
        "kubernetes.io/pvc-protection"
    ]
    await kubectl.run("patch", "pvc", "data", "--type=merge", "-p", '{"metadata":{"finalizers":null}}')
    code, _, err = await kubectl.run("get", "pvc", "data", check=False)
    assert code != 0 and 'persistentvolumeclaims "data" not found' in err


async def test_delete_waits_for_the_object_to_go(kubectl: Kubectl) -> None:
    settings = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {a: b}\n"
    await kubectl.run("create", "-f", "-", stdin=settings)
    _, out, _ = await kubectl.run("delete", "configmap", "settings", "--timeout=10s")
    assert out.strip() == 'configmap "settings" deleted'
    _, out, _ = await kubectl.run("get", "configmaps", "-o", "name")
    assert out.strip() == ""


async def test_typed_generators_send_protobuf_which_is_refused(kubectl: Kubectl) -> None:
    """`kubectl create configmap` encodes with protobuf; the test bed speaks JSON only and says so (415)."""
    code, _, err = await kubectl.run("create", "configmap", "settings", "--from-literal=a=b", check=False)
    assert code != 0 and "accepted media types include: application/json" in err


async def test_api_resources(kubectl: Kubectl) -> None:
    _, out, _ = await kubectl.run("api-resources", "--no-headers")
    rows = {line.split()[0]: line for line in out.splitlines()}
    assert {"persistentvolumeclaims", "volumeattachments", "csinodes", "leases", "volumesnapshots"} <= set(
        rows
    )
    assert "storage.k8s.io/v1" in rows["volumeattachments"]


async def test_watch_with_output_watch_events(kubectl: Kubectl, apiserver: ApiServer) -> None:
    process = await asyncio.create_subprocess_exec(
        *kubectl.base,
        "get",
        "pvc",
        "-w",
        "--output-watch-events",
        "-o",
        "json",
        stdout=asyncio.subprocess.PIPE,
        env={"HOME": str(kubectl.home), "PATH": "/usr/bin:/bin"},
    )
    try:
        await asyncio.sleep(0.5)
        body = yaml.safe_load(CLAIM % "w")
        await apiserver.store.create("persistentvolumeclaims", body, namespace="default")
        await apiserver.store.delete("persistentvolumeclaims", "data", namespace="default")
        assert process.stdout is not None
        decoder, text = json.JSONDecoder(), ""
        events: list[dict[str, Any]] = []
        async with asyncio.timeout(10):
            while len(events) < 2:
                text += (await process.stdout.read(4096)).decode()
                while text.strip():
                    try:
                        event, end = decoder.raw_decode(text.lstrip())
                    except ValueError:
                        break
                    events.append(event)
                    text = text.lstrip()[end:]
        assert [e["type"] for e in events[:2]] == ["ADDED", "MODIFIED"]
        assert events[1]["object"]["metadata"]["deletionTimestamp"]
    finally:
        process.terminate()
        await process.wait()


async def test_kubectl_over_tls_with_the_token(tmp_path: Path) -> None:
    async with ApiServer(tls=True) as server:
        _, out, _ = await Kubectl(server, tmp_path).run("get", "namespaces", "-o", "name")
    assert "namespace/default" in out.split()
