"""`make demo`: the five sidecars working end to end on the test bed, with no cluster needed.

    python -m testbed.demo [--keep] [--v N]

Starts the test bed as processes (API server with the PV controller, scheduler, attach-detach
controller and a kubelet; the CSI test driver named hostpath.csi.k8s.io), then the five real sidecar
processes with the args csi-driver-host-path's deployment gives them (read from the vendored
`deploy/kubernetes/upstream/csi-hostpath-plugin.yaml`; only the socket paths and a kubeconfig are
adapted), and walks the life of a volume as a user would follow it with kubectl. Every step waits
for the real objects to change and prints what it saw; a summary table ends the run.

`--keep` leaves everything running and prints the kubeconfig for kubectl; Ctrl-C stops it. Either
way no process or socket is left behind.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import yaml

from common.backoff import TokenBucket
from common.kube.client import ApiError, KubeClient
from common.kube.config import load_cluster_config
from common.kube.resources import (
    CSI_NODES,
    EVENTS,
    PERSISTENT_VOLUME_CLAIMS,
    PERSISTENT_VOLUMES,
    PODS,
    STORAGE_CLASSES,
    VOLUME_ATTACHMENTS,
)
from testbed.launch import DRIVER_NAME, NODE, ROOT, Cluster

T = TypeVar("T")
PLUGIN_YAML = ROOT / "deploy" / "kubernetes" / "upstream" / "csi-hostpath-plugin.yaml"
SIDECARS = {  # container name in csi-driver-host-path → our module
    "csi-provisioner": "provisioner",
    "csi-attacher": "attacher",
    "csi-resizer": "resizer",
    "node-driver-registrar": "registrar",
    "liveness-probe": "livenessprobe",
}
STEP_TIMEOUT = 60.0
BOLD, DIM, GREEN, RED, RESET = "\033[1m", "\033[2m", "\033[32m", "\033[31m", "\033[0m"


def _styled(text: str, style: str) -> str:
    return f"{style}{text}{RESET}" if sys.stdout.isatty() else text


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def hostpath_args(socket_path: Path) -> dict[str, list[str]]:
    """Each sidecar's container args from csi-driver-host-path's deployment, socket path adapted."""
    containers: dict[str, list[str]] = {}
    for doc in yaml.safe_load_all(PLUGIN_YAML.read_text()):
        if not doc or doc.get("kind") not in ("StatefulSet", "DaemonSet", "Deployment"):
            continue
        for container in doc["spec"]["template"]["spec"]["containers"]:
            if container["name"] in SIDECARS:
                env = {e["name"]: e.get("value", "") for e in container.get("env", []) if "value" in e}
                args = []
                for arg in container.get("args", []):
                    for name, value in env.items():
                        arg = arg.replace(f"$({name})", value)
                    args.append(arg.replace("/csi/csi.sock", str(socket_path)))
                containers[SIDECARS[container["name"]]] = args
    return containers


class Demo:
    """The walk-through: each step prints what happened and how long it took."""

    def __init__(self, cluster: Cluster, kube: KubeClient) -> None:
        self.cluster = cluster
        self.kube = kube
        self.timings: list[tuple[str, float]] = []
        self.started = time.monotonic()

    def say(self, text: str) -> None:
        elapsed = time.monotonic() - self.started
        print(f"{_styled(f'{elapsed:6.2f}s', DIM)}  {text}", flush=True)

    async def step(self, title: str, wait: Callable[[], Awaitable[T | None]], done: Callable[[T], str]) -> T:
        self.say(_styled(title, BOLD))
        begun = time.monotonic()
        result = await until(wait, title)
        seconds = time.monotonic() - begun
        self.timings.append((title, seconds))
        self.say(f"  {_styled('✓', GREEN)} {done(result)}")
        return result

    async def get(self, resource: Any, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        try:
            return await self.kube.get(resource, name, namespace=namespace)
        except ApiError as exc:
            if exc.not_found:
                return None
            raise

    async def run(self, args: dict[str, list[str]]) -> None:
        kube, ns = self.kube, "default"

        async def registered() -> dict[str, Any] | None:
            node = await self.get(CSI_NODES, NODE)
            drivers = (node or {}).get("spec", {}).get("drivers") or []
            return next((d for d in drivers if d["name"] == DRIVER_NAME), None)

        await self.step(
            "node-driver-registrar registers the driver with kubelet",
            registered,
            lambda d: (
                f"CSINode {NODE}: driver {d['name']}, nodeID {d['nodeID']}, topology {d.get('topologyKeys')}"
            ),
        )
        port = next(a.split("=", 1)[1] for a in args["livenessprobe"] if a.startswith("--health-port="))

        async def healthy() -> str | None:
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"http://127.0.0.1:{port}/healthz") as answer,
            ):
                return f"{answer.status} {await answer.text()}" if answer.status == 200 else None

        await self.step("livenessprobe answers /healthz", healthy, lambda r: f"GET :{port}/healthz → {r}")
        await kube.create(
            STORAGE_CLASSES,
            {
                "apiVersion": "storage.k8s.io/v1",
                "kind": "StorageClass",
                "metadata": {"name": "csi-hostpath-sc"},
                "provisioner": DRIVER_NAME,
                "reclaimPolicy": "Delete",
                "volumeBindingMode": "Immediate",
                "allowVolumeExpansion": True,
            },
        )
        self.say("kubectl apply StorageClass csi-hostpath-sc (Immediate, Delete, allowVolumeExpansion)")
        claim = await kube.create(
            PERSISTENT_VOLUME_CLAIMS,
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": "csi-pvc", "namespace": ns},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": "1Gi"}},
                    "storageClassName": "csi-hostpath-sc",
                },
            },
        )
        self.say(f"kubectl apply PVC {ns}/csi-pvc 1Gi → phase {claim['status']['phase']}")

        async def bound() -> dict[str, Any] | None:
            pvc = await self.get(PERSISTENT_VOLUME_CLAIMS, "csi-pvc", ns)
            return pvc if pvc and pvc["status"].get("phase") == "Bound" else None

        pvc = await self.step(
            "csi-provisioner provisions a volume and the PV controller binds it",
            bound,
            lambda c: f"PVC Bound to {c['spec']['volumeName']} ({c['status']['capacity']['storage']})",
        )
        pv_name = pvc["spec"]["volumeName"]
        pv = await kube.get(PERSISTENT_VOLUMES, pv_name)
        self.say(
            f"  PV {pv_name}: volumeHandle {pv['spec']['csi']['volumeHandle']}, "
            f"finalizers {pv['metadata']['finalizers']}"
        )
        await kube.create(
            PODS,
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "my-csi-app", "namespace": ns},
                "spec": {
                    "nodeName": NODE,
                    "containers": [
                        {
                            "name": "app",
                            "image": "busybox",
                            "volumeMounts": [{"mountPath": "/data", "name": "vol"}],
                        }
                    ],
                    "volumes": [{"name": "vol", "persistentVolumeClaim": {"claimName": "csi-pvc"}}],
                },
            },
        )
        self.say(f"kubectl apply Pod {ns}/my-csi-app on {NODE}")

        async def attached() -> dict[str, Any] | None:
            listed = await kube.list(VOLUME_ATTACHMENTS)
            items: list[dict[str, Any]] = listed["items"]
            mine = [va for va in items if va["spec"]["source"].get("persistentVolumeName") == pv_name]
            return next((va for va in mine if va.get("status", {}).get("attached")), None)

        va = await self.step(
            "attach-detach controller asks, csi-attacher attaches",
            attached,
            lambda v: (
                f"VolumeAttachment {v['metadata']['name'][:20]}… attached, "
                f"finalizers {v['metadata']['finalizers']}"
            ),
        )

        async def running() -> dict[str, Any] | None:
            pod = await self.get(PODS, "my-csi-app", ns)
            return pod if pod and pod["status"].get("phase") == "Running" else None

        await self.step(
            "kubelet stages and publishes the volume, the pod runs", running, lambda p: "Pod Running"
        )
        await kube.patch(
            PERSISTENT_VOLUME_CLAIMS,
            "csi-pvc",
            {"spec": {"resources": {"requests": {"storage": "2Gi"}}}},
            namespace=ns,
        )
        self.say("kubectl patch PVC csi-pvc → requests 2Gi")

        async def controller_grown() -> dict[str, Any] | None:
            volume = await kube.get(PERSISTENT_VOLUMES, pv_name)
            return volume if volume["spec"]["capacity"]["storage"] == "2Gi" else None

        await self.step(
            "csi-resizer expands the volume (ControllerExpandVolume)",
            controller_grown,
            lambda v: f"PV capacity {v['spec']['capacity']['storage']}",
        )

        async def node_grown() -> dict[str, Any] | None:
            pvc = await self.get(PERSISTENT_VOLUME_CLAIMS, "csi-pvc", ns)
            return pvc if pvc and pvc["status"].get("capacity", {}).get("storage") == "2Gi" else None

        await self.step(
            "kubelet finishes the file system resize (NodeExpandVolume)",
            node_grown,
            lambda c: (
                f"PVC capacity {c['status']['capacity']['storage']}, "
                f"conditions {[x['type'] for x in c['status'].get('conditions', [])] or 'none'}"
            ),
        )
        await self.show_events(ns)
        await kube.delete(PODS, "my-csi-app", namespace=ns)
        self.say("kubectl delete Pod my-csi-app")

        async def detached() -> bool:
            return await self.get(VOLUME_ATTACHMENTS, va["metadata"]["name"]) is None

        await self.step(
            "csi-attacher detaches, the VolumeAttachment goes", detached, lambda _: "VolumeAttachment deleted"
        )
        await kube.delete(PERSISTENT_VOLUME_CLAIMS, "csi-pvc", namespace=ns)
        self.say("kubectl delete PVC csi-pvc")

        async def volume_gone() -> int | None:
            if await self.get(PERSISTENT_VOLUMES, pv_name) is not None:
                return None
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"{self.cluster.driver_control}/state") as answer,
            ):
                state = await answer.json()
            return len(state.get("volumes", {})) + 1 if not state.get("volumes") else None

        await self.step(
            "csi-provisioner deletes the volume (DeleteVolume) and the PV",
            volume_gone,
            lambda _: "PV deleted, the driver holds 0 volumes",
        )

    async def show_events(self, namespace: str) -> None:
        """What `kubectl get events` shows for the claim: who did what, in the sidecars' own words."""
        listed = await self.kube.list(EVENTS, namespace=namespace)
        rows = [e for e in listed["items"] if e["involvedObject"].get("kind") == "PersistentVolumeClaim"]
        rows.sort(key=lambda e: (e.get("firstTimestamp") or "", e["metadata"]["name"]))
        self.say("kubectl get events --field-selector involvedObject.name=csi-pvc")
        for event in rows:
            source = (event.get("source") or {}).get("component", "")
            self.say(
                f"    {event['type']:<7} {event['reason']:<26} {source[:34]:<34} {event['message'][:70]}"
            )

    def summary(self) -> None:
        print()
        width = max(len(title) for title, _ in self.timings)
        print(_styled(f"{'step'.ljust(width)}  seconds", BOLD))
        for title, seconds in self.timings:
            print(f"{title.ljust(width)}  {seconds:7.2f}")
        print(f"{'total'.ljust(width)}  {sum(s for _, s in self.timings):7.2f}")


async def until(probe: Callable[[], Awaitable[T | None]], what: str) -> T:
    """Poll `probe` until it returns something; a process not listening yet is "not yet", not an error."""
    deadline = time.monotonic() + STEP_TIMEOUT
    while True:
        try:
            result = await probe()
        except (aiohttp.ClientError, OSError, ApiError):
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"step did not finish within {STEP_TIMEOUT:.0f}s: {what}")
        await asyncio.sleep(0.05)


def start_sidecars(cluster: Cluster, args: dict[str, list[str]], *, verbosity: int) -> None:
    kubeconfig = f"--kubeconfig={cluster.kubeconfig}"
    for module, container_args in args.items():
        extra = []
        if module in ("provisioner", "attacher", "resizer"):
            extra = [kubeconfig, f"--http-endpoint=127.0.0.1:{free_port()}"]
        elif module == "registrar":
            extra = [
                f"--plugin-registration-path={cluster.registration_dir}",
                f"--http-endpoint=127.0.0.1:{free_port()}",
            ]
        container_args = [a for a in container_args if not a.startswith(("-v=", "--v="))] + [
            f"--v={verbosity}"
        ]
        cluster.sidecar(f"csi-{module}", module, [*container_args, *extra])


async def amain(options: argparse.Namespace) -> int:
    cluster = Cluster(keep=options.keep, verbosity=options.v)
    try:
        print(_styled("Python CSI sidecars — the life of a volume on the embedded test bed", BOLD))
        await cluster.start_testbed()
        print(
            f"test bed: API server {cluster.control_plane['url']}, driver {DRIVER_NAME} on {cluster.socket}"
        )
        args = hostpath_args(cluster.socket)
        args["livenessprobe"] = [
            f"--health-port={free_port()}" if a.startswith("--health-port=") else a
            for a in args["livenessprobe"]
        ]
        start_sidecars(cluster, args, verbosity=options.v)
        for module, container_args in args.items():
            print(f"  {_styled(module.ljust(14), BOLD)} {' '.join(container_args)}")
        kube = KubeClient(
            await load_cluster_config(kubeconfig=str(cluster.kubeconfig)),
            limiter=TokenBucket(math.inf, 1),
            user_agent="demo",
        )
        demo = Demo(cluster, kube)
        try:
            await demo.run(args)
        except Exception:
            for name, proc in cluster.processes.items():
                print(f"--- {name} (log tail) ---\n{proc.tail(15)}", file=sys.stderr)
            raise
        finally:
            await kube.close()
        demo.summary()
        if options.keep:
            print(
                f"\nStill running. Try:  kubectl --kubeconfig {cluster.kubeconfig} "
                "get pv,pvc,volumeattachments"
            )
            print(f"Logs: {cluster.logs}/   Ctrl-C stops everything.")
            await asyncio.Event().wait()
        return 0
    finally:
        codes = await cluster.stop()
        bad = {name: code for name, code in codes.items() if code not in (0, None)}
        print(json.dumps({"stopped": len(codes), "non_zero_exits": bad}))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m testbed.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="leave the test bed running for kubectl")
    parser.add_argument(
        "--v", type=int, default=2, help="sidecar log verbosity (their logs are in the work dir)"
    )
    options = parser.parse_args()
    try:
        sys.exit(asyncio.run(amain(options)))
    except KeyboardInterrupt:
        sys.exit(130)
    except TimeoutError as exc:
        print(_styled(f"demo failed: {exc}", RED), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
