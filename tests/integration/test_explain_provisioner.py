"""`csi-provisioner explain pvc NAMESPACE/NAME` (sidecars.provisioner.explain, called directly: the
entrypoint wiring is the lead's): one test per state the provisioner can leave a claim in.

Each test builds the state on the test-bed API server (the golden StorageClass, secret, node and
CSINode; claims annotated as the PV controller annotates them) with the CSI test driver serving, and
asserts on the explanation's headline and facts.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from provisioner_fixtures import (
    ANN_PROVISIONER,
    ANN_SELECTED_NODE,
    DRIVER,
    INTENT,
    PREFIX,
    claim,
    golden_objects,
    storage_class,
)

from common.explain import Report, Session
from common.kube.client import KubeClient
from common.kube.events import WARNING, object_reference
from common.kube.resources import (
    EVENTS,
    PERSISTENT_VOLUME_CLAIMS,
    PERSISTENT_VOLUMES,
    SECRETS,
    STORAGE_CLASSES,
)
from sidecars.provisioner import explain as provisioner_explain
from sidecars.provisioner.cli import PROGRAM, ProvisionerConfig, build_flagset
from sidecars.provisioner.explain import explain_pvc
from testbed.apiserver import ApiServer
from testbed.csidriver import DEFAULT_CONTROLLER_CAPABILITIES, DriverConfig, TestDriver

OURS = {ANN_PROVISIONER: DRIVER}


@pytest.fixture(autouse=True)
async def golden(apiserver: ApiServer) -> None:
    await golden_objects(apiserver.store)


async def explained(kubeconfig: str, address: str, name: str = "data") -> Report:
    flags = build_flagset().parse([f"--kubeconfig={kubeconfig}", f"--csi-address={address}"])
    config = ProvisionerConfig.from_flags(flags)
    async with Session.open(PROGRAM, config.standard) as session:
        return await explain_pvc(session, config, "default", name)


async def create(kube: KubeClient, body: dict[str, Any]) -> dict[str, Any]:
    return await kube.create(PERSISTENT_VOLUME_CLAIMS, body)


async def test_missing_claim(kubeconfig: str, driver: TestDriver) -> None:
    report = await explained(kubeconfig, driver.address, "nope")
    assert report.verdict == "Nothing to do: PersistentVolumeClaim default/nope does not exist."


async def test_ready_claim_would_be_provisioned(
    kube: KubeClient, kubeconfig: str, driver: TestDriver
) -> None:
    created = await create(kube, claim(annotations=OURS))
    report = await explained(kubeconfig, driver.address)
    name = f"pvc-{created['metadata']['uid']}"
    assert report.verdict == (
        f"Would provision: CreateVolume(name {name!r}, 1Gi, requisite topology "
        f"[{{'topology.hostpath.csi/node': 'node-1'}}]), then save PersistentVolume {name}."
    )
    assert "Finalizer kubernetes.io/pvc-protection: held by kube-controller-manager's pvc-protection " \
        "controller, removed once no pod uses the claim." in report.facts  # fmt: skip


async def test_claim_not_yet_annotated(kube: KubeClient, kubeconfig: str, driver: TestDriver) -> None:
    await create(kube, claim())
    report = await explained(kubeconfig, driver.address)
    assert report.verdict.startswith(
        f"Waiting: no provisioner was asked for this claim yet: it has no {ANN_PROVISIONER} annotation "
        f"(StorageClass 'golden' names '{DRIVER}')"
    )


async def test_claim_for_another_provisioner(kube: KubeClient, kubeconfig: str, driver: TestDriver) -> None:
    await create(kube, claim(annotations={ANN_PROVISIONER: "ebs.csi.aws.com"}))
    report = await explained(kubeconfig, driver.address)
    assert report.verdict == (
        f"Nothing to do: it asks for provisioner 'ebs.csi.aws.com' ({ANN_PROVISIONER}), not '{DRIVER}'."
    )


async def test_missing_storage_class(kube: KubeClient, kubeconfig: str, driver: TestDriver) -> None:
    await create(kube, claim(sc="fast", annotations=OURS))
    report = await explained(kubeconfig, driver.address)
    assert report.verdict == (
        'Waiting: storageClass "fast" not found; csi-provisioner retries with backoff and records '
        "ProvisioningFailed events."
    )


async def test_storage_class_of_another_provisioner(
    kube: KubeClient, kubeconfig: str, driver: TestDriver
) -> None:
    await kube.create(STORAGE_CLASSES, {**storage_class("theirs"), "provisioner": "other.example.com"})
    await create(kube, claim(sc="theirs", annotations=OURS))
    report = await explained(kubeconfig, driver.address)
    assert report.verdict == (
        "Nothing to do: csi-provisioner ignores the claim: unknown provisioner 'other.example.com' requested "
        "in the StorageClass."
    )


async def test_wait_for_first_consumer_without_a_node(
    kube: KubeClient, kubeconfig: str, driver: TestDriver
) -> None:
    await kube.create(STORAGE_CLASSES, storage_class("late", binding="WaitForFirstConsumer"))
    await create(kube, claim(sc="late", annotations=OURS))
    report = await explained(kubeconfig, driver.address)
    assert report.verdict == (
        "Waiting for a consumer: StorageClass 'late' binds WaitForFirstConsumer and no pod using the claim "
        f"has been scheduled yet (no {ANN_SELECTED_NODE} annotation; no pod uses it)."
    )


async def test_selected_node_that_does_not_exist(
    kube: KubeClient, kubeconfig: str, driver: TestDriver
) -> None:
    await kube.create(STORAGE_CLASSES, storage_class("late", binding="WaitForFirstConsumer"))
    await create(kube, claim(sc="late", annotations={**OURS, ANN_SELECTED_NODE: "node-9"}))
    report = await explained(kubeconfig, driver.address)
    assert report.verdict == (
        f'Waiting for the scheduler: node "node-9" not found; csi-provisioner removes {ANN_SELECTED_NODE} so '
        "that the pod is scheduled again (ProvisioningFailed event)."
    )


async def test_selected_node_without_the_driver(
    kube: KubeClient, kubeconfig: str, driver: TestDriver
) -> None:
    await kube.create(STORAGE_CLASSES, storage_class("late", binding="WaitForFirstConsumer"))
    await kube.request(
        "POST", "/api/v1/nodes", body={"apiVersion": "v1", "kind": "Node", "metadata": {"name": "bare"}}
    )
    await create(kube, claim(sc="late", annotations={**OURS, ANN_SELECTED_NODE: "bare"}))
    report = await explained(kubeconfig, driver.address)
    assert report.verdict.startswith(
        "Waiting for the scheduler: failed to get selected CSINode bare: "
        'csinode.storage.k8s.io "bare" not found;'
    )


async def test_missing_provisioner_secret(kube: KubeClient, kubeconfig: str, driver: TestDriver) -> None:
    await kube.delete(SECRETS, "prov-secret", namespace="default")
    await create(kube, claim(annotations=OURS))
    report = await explained(kubeconfig, driver.address)
    assert report.verdict.startswith("Waiting: error getting secret prov-secret in namespace default: ")
    assert report.verdict.endswith(
        "csi-provisioner retries with backoff and records ProvisioningFailed events."
    )


async def test_unknown_reserved_parameter(kube: KubeClient, kubeconfig: str, driver: TestDriver) -> None:
    sc = storage_class("odd", parameters={PREFIX + "bogus": "1"})
    await kube.create(STORAGE_CLASSES, sc)
    await create(kube, claim(sc="odd", annotations=OURS))
    report = await explained(kubeconfig, driver.address)
    assert f'found unknown parameter key "{PREFIX}bogus"' in report.verdict


async def test_claim_selector_is_not_supported(kube: KubeClient, kubeconfig: str, driver: TestDriver) -> None:
    body = claim(annotations=OURS)
    body["spec"]["selector"] = {"matchLabels": {"disk": "fast"}}
    await create(kube, body)
    report = await explained(kubeconfig, driver.address)
    assert report.verdict == (
        "Waiting: claim Selector is not supported; csi-provisioner retries with backoff and records "
        "ProvisioningFailed events."
    )


@pytest.mark.parametrize(
    "driver_config",
    [replace(DriverConfig(), controller_capabilities=DEFAULT_CONTROLLER_CAPABILITIES - {"MODIFY_VOLUME"})],
)
async def test_driver_lacks_modify_for_a_volume_attributes_class(
    kube: KubeClient, kubeconfig: str, driver: TestDriver
) -> None:
    body = claim(annotations=OURS)
    body["spec"]["volumeAttributesClassName"] = "gold"
    await create(kube, body)
    report = await explained(kubeconfig, driver.address)
    assert (
        "CSI driver does not support VolumeAttributesClass: controller MODIFY_VOLUME capability is not "
        "reported" in report.verdict
    )


@pytest.mark.parametrize(
    "driver_config",
    [
        replace(
            DriverConfig(), controller_capabilities=DEFAULT_CONTROLLER_CAPABILITIES - {"CREATE_DELETE_VOLUME"}
        )
    ],
)
async def test_driver_that_cannot_provision(kube: KubeClient, kubeconfig: str, driver: TestDriver) -> None:
    await create(kube, claim(annotations=OURS))
    report = await explained(kubeconfig, driver.address)
    assert report.verdict == (
        "Waiting: csi-provisioner does not start with this driver: CSI driver does not support dynamic "
        "provisioning: controller CREATE_DELETE_VOLUME capability is not reported."
    )


async def test_last_failure_is_retried(kube: KubeClient, kubeconfig: str, driver: TestDriver) -> None:
    created = await create(kube, claim(annotations=OURS))
    await kube.create(
        EVENTS,
        {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": "data.1", "namespace": "default"},
            "involvedObject": object_reference(created),
            "type": WARNING,
            "reason": "ProvisioningFailed",
            "message": "rpc error: code = ResourceExhausted desc = out of space",
            "count": 4,
            "source": {"component": "hostpath.csi.k8s.io_host_1234"},
        },
    )
    report = await explained(kubeconfig, driver.address)
    assert report.verdict.startswith("Retrying with backoff: would call CreateVolume(name ")
    assert report.verdict.endswith(
        "again; the last attempt failed: rpc error: code = ResourceExhausted desc = out of space"
    )
    assert any(f.startswith("Event Warning ProvisioningFailed (") and "4 times" in f for f in report.facts)


async def test_bound_claim(kube: KubeClient, kubeconfig: str, driver: TestDriver) -> None:
    body = claim(annotations=OURS)
    body["spec"]["volumeName"] = "pv-1"
    await create(kube, body)
    report = await explained(kubeconfig, driver.address)
    assert report.verdict == "Nothing to do: it is bound to PersistentVolume pv-1."


async def test_pv_already_saved(kube: KubeClient, kubeconfig: str, driver: TestDriver) -> None:
    created = await create(kube, claim(annotations=OURS))
    name = f"pvc-{created['metadata']['uid']}"
    pv = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteOnce"],
            "csi": {"driver": DRIVER, "volumeHandle": "vol-1"},
        },
    }
    await kube.create(PERSISTENT_VOLUMES, pv)
    report = await explained(kubeconfig, driver.address)
    assert report.verdict == (
        f"Nothing to do: PersistentVolume {name} already exists; the PV controller binds it to the claim."
    )


async def test_deleted_claim_with_the_intent_is_cleaned_up(
    kube: KubeClient, kubeconfig: str, driver: TestDriver
) -> None:
    created = await create(kube, claim(annotations=OURS, finalizers=[INTENT]))
    await kube.delete(PERSISTENT_VOLUME_CLAIMS, "data", namespace="default")
    report = await explained(kubeconfig, driver.address)
    name = f"pvc-{created['metadata']['uid']}"
    assert report.verdict.startswith(
        f"Would clean up: the claim is being deleted before its PV was saved, so csi-provisioner deletes the "
        f"volume {name} it may have created"
    )
    held = (
        "held by csi-provisioner (python-csi-sidecars), removed once the PV is saved or the volume is known"
    )
    assert f"Finalizer {INTENT}: {held} to be deleted." in report.facts


async def test_unreachable_driver(kube: KubeClient, kubeconfig: str, driver: TestDriver) -> None:
    await create(kube, claim(annotations=OURS))
    report = await explained(kubeconfig, driver.address.replace("csi.sock", "gone.sock"))
    assert report.verdict.startswith("Waiting: csi-provisioner cannot reach its CSI driver at ")


async def test_command_line(
    kube: KubeClient,
    kubeconfig: str,
    driver: TestDriver,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(provisioner_explain, "apply_logging_flags", lambda flags: None)  # keep pytest's
    await create(kube, claim(annotations=OURS))
    argv = ["pvc", "default/data", "--kubeconfig", kubeconfig, f"--csi-address={driver.address}"]
    assert await provisioner_explain.amain(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"PersistentVolumeClaim default/data (csi-provisioner for {DRIVER})"
    assert out[1].startswith("  Would provision: CreateVolume(name 'pvc-")
