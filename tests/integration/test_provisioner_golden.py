"""csi-provisioner on the test bed writes what the Go provisioner wrote (golden 01, 02, 08, 09, 12, 16).

One run of the real entrypoint with leader election, as in the golden capture: provision PVC
`default/data` of StorageClass `golden`; compare the PV (01), the bound PVC (02), the Lease (08),
/metrics (09), /healthz/leader-election (12) and the events (16); the secret's value never appears in
the `--v=5` log. Then SIGTERM: exit 0.
"""

from __future__ import annotations

import re
import socket
from typing import Any

import aiohttp
from kit import eventually, free_port, scrape
from prometheus_client.parser import text_string_to_metric_families
from provisioner_fixtures import (
    DRIVER,
    GOLDEN,
    PV_FINALIZER,
    comparable,
    golden,
    provisioner_bed,
    stop_cleanly,
)

from testbed.apiserver import ApiServer
from testbed.csidriver import TestDriver

COMPONENT = re.compile(rf"^{re.escape(DRIVER)}_{re.escape(socket.gethostname())}_[0-9a-f-]{{36}}$")


def series(text: str) -> dict[str, set[tuple[tuple[str, str], ...]]]:
    """Family → label sets (histogram `le` left out), for the families the provisioner itself defines."""
    found: dict[str, set[tuple[tuple[str, str], ...]]] = {}
    for family in text_string_to_metric_families(text):
        name = family.name + ("_total" if family.type == "counter" else "")
        if not name.startswith(("controller_", "csi_sidecar_operations", "workqueue_", "leader_election")):
            continue
        for sample in family.samples:
            labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le"))
            found.setdefault(name, set()).add(labels)
    return found


async def test_pv_pvc_events_lease_and_metrics_match_the_go_provisioner(
    apiserver: ApiServer, driver: TestDriver, sidecar: Any
) -> None:
    async with provisioner_bed(apiserver, driver, sidecar) as bed:
        port = free_port()
        process = bed.start(
            "--leader-election",
            "--leader-election-namespace=default",
            f"--http-endpoint=127.0.0.1:{port}",
            fast=False,
        )
        await bed.create_claim("data")
        pvc = await bed.wait_bound("data")
        pv = await bed.get("persistentvolumes", pvc["spec"]["volumeName"])
        assert pv is not None
        # 01: the PV, field for field.
        assert comparable(pv) == comparable(golden("01-provisioned-pv.json"))
        assert pv["metadata"]["name"] == f"pvc-{pvc['metadata']['uid']}"
        assert pv["metadata"]["finalizers"][0] == PV_FINALIZER
        # 02: the bound claim (our provisioning intent came and went).
        assert comparable(pvc) == comparable(golden("02-bound-pvc.json"))
        # 16: Provisioning, then ProvisioningSucceeded, from the library's recorder.
        succeeded = await bed.wait_event("data", "ProvisioningSucceeded")
        provisioning = await bed.wait_event("data", "Provisioning")
        library_events = [
            e for e in golden("16-events.json")["items"] if e["reason"].startswith("Provisioning")
        ]
        want = {e["reason"]: e for e in library_events}
        for event in (provisioning, succeeded):
            assert COMPONENT.match(event["source"]["component"]), event["source"]
            assert event["reportingComponent"] == event["source"]["component"]
            expected = want[event["reason"]]
            assert event["type"] == expected["type"] and event["count"] == 1
            assert event["involvedObject"]["kind"] == "PersistentVolumeClaim"
            assert event["involvedObject"]["uid"] == pvc["metadata"]["uid"]
        assert (
            provisioning["message"] == 'External provisioner is provisioning volume for claim "default/data"'
        )
        assert succeeded["message"] == f"Successfully provisioned volume {pv['metadata']['name']}"
        assert len(await bed.our_events("data")) == 2
        # 08: the Lease is the sanitized driver name, held by this host.
        lease = await bed.get("leases", "hostpath-csi-k8s-io", "default")
        assert lease is not None
        golden_lease = next(
            i for i in golden("08-leases.json")["items"] if i["metadata"]["name"] == "hostpath-csi-k8s-io"
        )
        assert lease["spec"]["leaseDurationSeconds"] == golden_lease["spec"]["leaseDurationSeconds"]
        assert lease["spec"]["holderIdentity"] == socket.gethostname()
        # 12: /healthz/leader-election.
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/healthz/leader-election") as response,
        ):
            assert (response.status, await response.text()) == (200, "ok")
        # 09: the provisioner's own families and series (process/go/apiserver ones aside).
        text = await eventually(lambda: scrape(port), message="/metrics")
        ours, theirs = series(text), series((GOLDEN / "09-provisioner-metrics.txt").read_text())
        for name, labels in theirs.items():
            if name == "leader_election_master_status":
                continue
            assert name in ours, name
            assert labels <= ours[name], (name, labels - ours[name])
        assert 'controller_persistentvolumeclaim_provision_total{class="golden",source=""} 1\n' in text
        await stop_cleanly(process)
        assert "s3cr3t-value-never-logged" not in process.log()
