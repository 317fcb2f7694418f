"""csi-provisioner against fuzzed input: StorageClass parameters and secret templates, claim sizes and
annotations, and CreateVolume answers (empty volume_id, less capacity than asked, odd topology).

Each case runs the claim controller's `sync` with fakes (no API server, no driver) and must end in
a PV, or in a `ProvisioningFailed` event whose text is readable (no traceback, no Python repr) and
the retry the worker loop gives a raised `ProvisionError` — never in any other exception. No volume
the fake driver created may be left behind: it has a PV, or was deleted, or its claim is still being
provisioned under the same name. Secret values never reach an event.
"""

from __future__ import annotations

import base64
import re
from typing import Any

import grpc
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_provisioner_provision import DRIVER, UID, FakeController, rpc_error

from common.controller import Requeue
from common.kube.client import ApiError
from common.kube.informer import InformerFactory
from common.metrics import Metrics
from common.runtime import StandardConfig
from proto import csi_pb2
from sidecars.provisioner import names
from sidecars.provisioner.claim import ClaimController
from sidecars.provisioner.cli import ProvisionerConfig
from sidecars.provisioner.intent import Intent
from sidecars.provisioner.provision import Provisioner
from sidecars.provisioner.request import Driver, RequestBuilder
from sidecars.provisioner.state import ProvisionError
from sidecars.provisioner.topology import NodeView, TopologyCache
from sidecars.provisioner.volume import PVSettings

Obj = dict[str, Any]
SECRET_VALUE = "s3cr3t-fuzz-value"
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
UNREADABLE = re.compile(r"Traceback|object at 0x|<[a-zA-Z_.]+ object")


class Kube:
    """The API writes the claim controller makes, and `get` of the secrets that exist."""

    def __init__(self, secrets: dict[tuple[str, str], Obj]) -> None:
        self.secrets = secrets
        self.writes: list[tuple[str, str, Obj]] = []

    async def get(self, resource: Any, name: str, *, namespace: str | None = None) -> Obj:
        assert resource.plural == "secrets"
        secret = self.secrets.get((namespace or "", name))
        if secret is None:
            raise ApiError(404, "NotFound", f'secrets "{name}" not found')
        return secret

    async def create(self, resource: Any, obj: Obj) -> Obj:
        self.writes.append(("create", resource.plural, obj))
        return obj

    async def update(self, resource: Any, obj: Obj, **kw: Any) -> Obj:
        self.writes.append(("update", resource.plural, obj))
        return obj


class Events:
    def __init__(self) -> None:
        self.recorded: list[tuple[str, str, str]] = []

    def event(self, obj: Obj, event_type: str, reason: str, message: str) -> None:
        self.recorded.append((event_type, reason, message))


def controller_for(
    kube: Kube, driver: FakeController, *, topology: bool = False
) -> tuple[ClaimController, Events]:
    events = Events()
    config = ProvisionerConfig(standard=StandardConfig(), worker_threads=1)
    plugin = {"CONTROLLER_SERVICE"} | ({"VOLUME_ACCESSIBILITY_CONSTRAINTS"} if topology else set())
    capabilities = Driver(name=DRIVER, plugin_capabilities=frozenset(plugin))
    view = NodeView(
        {"n1": {"spec": {"drivers": [{"name": DRIVER, "topologyKeys": ["zone"]}]}}},
        {"n1": {"metadata": {"name": "n1", "labels": {"zone": "a"}}}},
    )
    cache = TopologyCache()
    builder = RequestBuilder(config=config, driver=capabilities, kube=kube, nodes=view, topology_cache=cache)  # type: ignore[arg-type]
    settings_ = PVSettings(driver=DRIVER, identity="1-2-" + DRIVER, topology=topology)
    provisioner = Provisioner(
        controller=driver, builder=builder, settings=settings_, timeout=1.0, topology_cache=cache
    )
    claims = ClaimController(
        config=config,
        provisioner=provisioner,
        intent=Intent(kube=kube, provisioner=provisioner, enabled=True),  # type: ignore[arg-type]
        factory=InformerFactory(kube),  # type: ignore[arg-type]
        recorder=events,  # type: ignore[arg-type]
        metrics=Metrics(),
    )
    return claims, events


def claim(*, size: str, annotations: dict[str, str], name: str = "data") -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": name,
            "namespace": "default",
            "uid": UID,
            "resourceVersion": "5",
            "annotations": {**annotations, names.ANN_STORAGE_PROVISIONER: DRIVER},
        },
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": size}},
            "storageClassName": "sc",
        },
    }


def storage_class(parameters: dict[str, str]) -> Obj:
    return {
        "metadata": {"name": "sc", "uid": "sc-uid"},
        "provisioner": DRIVER,
        "reclaimPolicy": "Delete",
        "parameters": parameters,
    }


async def sync_once(claims: ClaimController) -> BaseException | None:
    """One sync; the exception it raised (what the worker loop would retry with backoff), if any."""
    try:
        await claims.sync(UID)
    except (ProvisionError, Requeue) as err:
        return err
    return None


def readable(message: str) -> bool:
    return bool(message.strip()) and not UNREADABLE.search(message)


def check_outcome(
    claims: ClaimController, kube: Kube, events: Events, driver: FakeController, raised: BaseException | None
) -> None:
    pvs = [obj for verb, plural, obj in kube.writes if (verb, plural) == ("create", "persistentvolumes")]
    if isinstance(raised, ProvisionError) and not raised.stop:
        assert events.recorded, "a failure without an event"
        event_type, reason, message = events.recorded[-1]
        assert (event_type, reason) == ("Warning", "ProvisioningFailed")
        assert readable(message), message
    if raised is None and not pvs:
        assert not driver.requests["CreateVolume"] or UID in claims.in_progress or events.recorded
    for _, _, message in events.recorded:
        assert SECRET_VALUE not in message
    handles = {pv["spec"]["csi"]["volumeHandle"] for pv in pvs}
    deleted = {r.volume_id for r in driver.requests["DeleteVolume"]}
    for answer in driver.created:
        assert answer in handles or answer in deleted or UID in claims.in_progress or answer == "", answer


class Driver_(FakeController):
    """The fake driver, remembering the volume ids it handed out."""

    def __init__(self) -> None:
        super().__init__()
        self.created: list[str] = []

    async def CreateVolume(self, request: Any, *, timeout: float) -> Any:
        answer = await super().CreateVolume(request, timeout=timeout)
        self.created.append(answer.volume.volume_id)
        return answer


# --- strategies ------------------------------------------------------------------------------------

TOKENS = [
    "${pvc.name}",
    "${pvc.namespace}",
    "${pv.name}",
    "${pvc.annotations['team']}",
    "${pvc.uid}",
    "$",
    "${",
    "}",
    "$$",
]
template = st.lists(st.sampled_from(TOKENS) | st.text(alphabet="abcz-.9_/A ", max_size=5), max_size=4).map(
    "".join
)
SECRET_OPS = [
    "provisioner",
    "controller-publish",
    "node-stage",
    "node-publish",
    "controller-expand",
    "node-expand",
    "",
]
secret_keys = st.sampled_from(
    [
        f"csi.storage.k8s.io/{op}{'-' if op else ''}secret-{part}"
        for op in SECRET_OPS
        for part in ("name", "namespace")
    ]
)
OTHER_KEYS = ["csi.storage.k8s.io/fstype", "csi.storage.k8s.io/unknown", "csiProvisionerSecretName", "type"]
param_keys = (
    secret_keys | st.sampled_from([*OTHER_KEYS, "csiProvisionerSecretNamespace"]) | st.text(max_size=12)
)
parameters = st.dictionaries(param_keys, template | st.text(max_size=10), max_size=6)
sizes = st.sampled_from(
    [
        "10E",  # found by this test: more than an int64, which the CreateVolumeRequest cannot carry
        "9223372036854775808",
        "1Gi",
        "500Mi",
        "1",
        "0",
        "1e3",
        "1.5Gi",
        "100m",
        "",
        "abc",
        "-1Gi",
        "1.5.5",
        "Gi",
        "9999999999999999Ei",
        "1E+3",
    ]
) | st.text(max_size=6)
annotation_maps = st.dictionaries(
    st.sampled_from(["team", "x", names.ANN_SELECTED_NODE, ""]) | st.text(max_size=8),
    st.text(max_size=10),
    max_size=3,
)


def secret(data_ok: bool) -> Obj:
    value = base64.b64encode(SECRET_VALUE.encode()).decode() if data_ok else "not base64 %%%"
    return {"metadata": {"name": "sec"}, "data": {"password": value}}


@FUZZ
@given(params=parameters, size=sizes, annotations=annotation_maps, data_ok=st.booleans())
async def test_storage_class_parameters_secret_templates_sizes_and_annotations(
    params: dict[str, str], size: str, annotations: dict[str, str], data_ok: bool
) -> None:
    kube = Kube({("default", "sec"): secret(data_ok), ("default", "data"): secret(data_ok)})
    driver = Driver_()
    claims, events = controller_for(kube, driver)
    claims.classes.store.put(storage_class(params))
    claims.claims.store.put(claim(size=size, annotations=annotations))
    raised = await sync_once(claims)
    check_outcome(claims, kube, events, driver, raised)
    if raised is None and driver.requests["CreateVolume"]:
        request = driver.requests["CreateVolume"][0]
        assert not any(key.startswith("csi.storage.k8s.io/") for key in request.parameters)


segments = st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=3)


@FUZZ
@given(
    volume_id=st.just("") | st.text(min_size=1, max_size=20),
    capacity=st.sampled_from([0, 1, 2**30 - 1, 2**30, 2**31, 2**62]),
    topology=st.lists(segments, max_size=3),
    context=st.dictionaries(st.text(max_size=8), st.text(max_size=20), max_size=4),
    delete_fails=st.booleans(),
    with_topology=st.booleans(),
)
async def test_create_volume_answers(
    volume_id: str,
    capacity: int,
    topology: list[dict[str, str]],
    context: dict[str, str],
    delete_fails: bool,
    with_topology: bool,
) -> None:
    kube = Kube({})
    driver = Driver_()
    answer = csi_pb2.CreateVolumeResponse(
        volume=csi_pb2.Volume(volume_id=volume_id, capacity_bytes=capacity, volume_context=context)
    )
    for segment in topology:
        answer.volume.accessible_topology.add(segments=segment)
    driver.answers["CreateVolume"].append(answer)
    if delete_fails:
        driver.answers["DeleteVolume"].append(rpc_error(grpc.StatusCode.UNAVAILABLE, "gone fishing"))
    claims, events = controller_for(kube, driver, topology=with_topology)
    claims.classes.store.put(storage_class({}))
    claims.claims.store.put(claim(size="1Gi", annotations={}))
    raised = await sync_once(claims)
    check_outcome(claims, kube, events, driver, raised)
    pvs = [obj for verb, plural, obj in kube.writes if (verb, plural) == ("create", "persistentvolumes")]
    if not volume_id:
        assert isinstance(raised, ProvisionError) and not pvs
    elif 0 < capacity < 2**30:
        assert isinstance(raised, ProvisionError) and not pvs
        assert [r.volume_id for r in driver.requests["DeleteVolume"]][:1] == [volume_id]
    for pv in pvs:
        assert pv["spec"]["csi"]["volumeHandle"] == volume_id
        assert pv["spec"]["capacity"]["storage"]
        for term in ((pv["spec"].get("nodeAffinity") or {}).get("required") or {}).get(
            "nodeSelectorTerms", []
        ):
            for expression in term["matchExpressions"]:
                assert valid_label_key(expression["key"]), expression
                assert all(valid_label_value(v) for v in expression["values"]), expression


@FUZZ
@given(code=st.sampled_from(list(grpc.StatusCode)), details=st.text(max_size=30))
async def test_create_volume_errors_end_in_a_readable_event(code: grpc.StatusCode, details: str) -> None:
    assume(code is not grpc.StatusCode.OK)
    kube, driver = Kube({}), Driver_()
    driver.answers["CreateVolume"].append(rpc_error(code, details))
    claims, events = controller_for(kube, driver)
    claims.classes.store.put(storage_class({}))
    claims.claims.store.put(claim(size="1Gi", annotations={}))
    raised = await sync_once(claims)
    assert isinstance(raised, ProvisionError)
    check_outcome(claims, kube, events, driver, raised)


_QUALIFIED = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")


def valid_label_value(value: str) -> bool:
    return value == "" or (len(value) <= 63 and _QUALIFIED.fullmatch(value) is not None)


def valid_label_key(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    if prefix and (
        len(prefix) > 253
        or not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*", prefix)
    ):
        return False
    return bool(name) and len(name) <= 63 and _QUALIFIED.fullmatch(name) is not None


async def test_an_answer_with_an_invalid_topology_is_deleted_and_reported() -> None:
    """Found by the fuzzing above: such a PV would be refused by the API server on every save."""
    kube, driver = Kube({}), Driver_()
    answer = csi_pb2.CreateVolumeResponse(volume=csi_pb2.Volume(volume_id="v-odd", capacity_bytes=2**30))
    answer.volume.accessible_topology.add(segments={"topology.example.com/zone": "eu west"})
    driver.answers["CreateVolume"].append(answer)
    claims, events = controller_for(kube, driver, topology=True)
    claims.classes.store.put(storage_class({}))
    claims.claims.store.put(claim(size="1Gi", annotations={}))
    raised = await sync_once(claims)
    assert isinstance(raised, ProvisionError)
    assert [r.volume_id for r in driver.requests["DeleteVolume"]] == ["v-odd"]
    assert events.recorded[-1] == (
        "Warning",
        "ProvisioningFailed",
        'CSI driver returned an invalid accessible topology: segment value "eu west" of '
        '"topology.example.com/zone" is not a valid label value',
    )
    assert not [w for w in kube.writes if w[:2] == ("create", "persistentvolumes")]


async def test_a_request_beyond_int64_is_refused_with_an_event() -> None:
    kube, driver = Kube({}), Driver_()
    claims, events = controller_for(kube, driver)
    claims.classes.store.put(storage_class({}))
    claims.claims.store.put(claim(size="10E", annotations={}))
    raised = await sync_once(claims)
    assert isinstance(raised, ProvisionError)
    assert events.recorded[-1] == (
        "Warning",
        "ProvisioningFailed",
        "storage request '10E' is 10000000000000000000 bytes, "
        "more than CSI can ask for (9223372036854775807)",
    )
    assert not driver.requests["CreateVolume"]
