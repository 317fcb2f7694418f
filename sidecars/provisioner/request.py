"""The CreateVolumeRequest for a claim: external-provisioner's `prepareProvision`, check by check.

In upstream's order, each failure with upstream's text and provisioning state:

1. data source: another kind than VolumeSnapshot / PersistentVolumeClaim means an external
   populator provisions the volume (Normal `Provisioning` event, claim ignored); a snapshot or a
   clone source is checked and becomes `volume_content_source`, then gets its protection finalizer
   (sidecars.provisioner.datasource) — after the capacity, before the topology, as upstream;
2. the driver's capabilities (CONTROLLER_SERVICE, CREATE_DELETE_VOLUME, MODIFY_VOLUME for a VAC);
3. `spec.selector` is not supported; the volume name `<prefix>-<uid>`;
4. fsType: `csi.storage.k8s.io/fstype` (or the deprecated `fstype`, not both), else `--default-fstype`;
5. `capacity_range.required_bytes` = the storage request; one volume capability per access mode:
   Block, or Mount{fs_type, mount_flags = StorageClass mountOptions};
6. accessibility requirements (sidecars.provisioner.topology), a missing CSINode → RESCHEDULE;
7. secrets (sidecars.provisioner.secrets): the provisioner secret's data goes into the request, the
   other references onto the PV; failures are NO_CHANGE;
8. parameters without the `csi.storage.k8s.io/` keys (an unknown one is an error), plus
   `csi.storage.k8s.io/pvc/name`, `/pvc/namespace`, `/pv/name` with `--extra-create-metadata`;
9. `mutable_parameters` from the claim's VolumeAttributesClass (its driver must be ours).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from common.kube.client import ApiError, KubeClient
from common.kube.resources import VOLUME_ATTRIBUTES_CLASSES
from common.logging import get_logger
from common.quantity import QuantityError, to_bytes
from proto import csi_pb2
from sidecars.provisioner import names, secrets
from sidecars.provisioner.cli import ProvisionerConfig
from sidecars.provisioner.datasource import DataSources
from sidecars.provisioner.state import IgnoredClaim, ProvisionError, ProvisioningState
from sidecars.provisioner.topology import NodeView, TopologyCache, TopologyError, TopologyRequest
from sidecars.provisioner.topology import accessibility_requirements as topology_requirements

log = get_logger(__name__)

Obj = dict[str, Any]
FINISHED = ProvisioningState.FINISHED
NO_CHANGE = ProvisioningState.NO_CHANGE
_MODE = csi_pb2.VolumeCapability.AccessMode


@dataclass(frozen=True, kw_only=True)
class Driver:
    """The driver as GetPluginInfo and the capability calls described it."""

    name: str
    plugin_capabilities: frozenset[str] = frozenset({"CONTROLLER_SERVICE"})
    controller_capabilities: frozenset[str] = frozenset({"CREATE_DELETE_VOLUME"})
    topology_gate: bool = True
    """Feature gate `Topology`."""
    node_id: str = ""
    """`--node-deployment`: NodeGetInfo's node_id."""
    node_topology: tuple[tuple[str, str], ...] = ()
    """`--node-deployment`: NodeGetInfo's accessible_topology segments, sorted."""

    @property
    def topology(self) -> bool:
        """upstream `SupportsTopology`: VOLUME_ACCESSIBILITY_CONSTRAINTS and the Topology gate."""
        return self.topology_gate and "VOLUME_ACCESSIBILITY_CONSTRAINTS" in self.plugin_capabilities

    @property
    def attach_required(self) -> bool:
        """PUBLISH_UNPUBLISH_VOLUME: deletion waits until no VolumeAttachment names the PV."""
        return "PUBLISH_UNPUBLISH_VOLUME" in self.controller_capabilities

    def check(self, *, snapshot: bool = False, clone: bool = False, modify: bool = False) -> None:
        """upstream `checkDriverCapabilities` (FINISHED errors)."""
        missing = "CSI driver does not support {}: {} capability is not reported"
        wanted = [
            (True, "dynamic provisioning", "plugin CONTROLLER_SERVICE", self.plugin_capabilities),
            (True, "dynamic provisioning", "controller CREATE_DELETE_VOLUME", self.controller_capabilities),
            (snapshot, "snapshot restore", "controller CREATE_DELETE_SNAPSHOT", self.controller_capabilities),
            (clone, "clone operations", "controller CLONE_VOLUME", self.controller_capabilities),
            (modify, "VolumeAttributesClass", "controller MODIFY_VOLUME", self.controller_capabilities),
        ]
        for needed, what, capability, have in wanted:
            if needed and capability.split()[1] not in have:
                raise ProvisionError(missing.format(what, capability), FINISHED)


@dataclass(frozen=True, kw_only=True)
class Prepared:
    """A CreateVolumeRequest and what the PV needs besides the response."""

    request: Any
    """The csi_pb2.CreateVolumeRequest."""
    fs_type: str
    secret_refs: Mapping[str, Mapping[str, str]]
    """`spec.csi` secret references (controllerPublishSecretRef, ...) that are set."""
    deletion_secret: tuple[str, str]
    """(name, namespace) of the provisioner secret, ("", "") when there is none."""


def data_source(claim: Mapping[str, Any], *, cross_namespace: bool) -> dict[str, str] | None:
    """upstream `dataSource`: {kind, name, apiGroup, namespace} from dataSource or dataSourceRef."""
    spec = claim.get("spec") or {}
    namespace = str((claim.get("metadata") or {}).get("namespace", ""))
    if spec.get("dataSource"):
        ref = spec["dataSource"]
    elif spec.get("dataSourceRef"):
        ref = spec["dataSourceRef"]
        if ref.get("namespace") and not cross_namespace:
            raise ProvisionError(
                "dataSourceRef namespace specified but the CrossNamespaceVolumeDataSource feature is "
                "disabled",
                FINISHED,
            )
        namespace = str(ref.get("namespace") or namespace)
    else:
        return None
    return {
        "kind": str(ref.get("kind", "")),
        "name": str(ref.get("name", "")),
        "apiGroup": str(ref.get("apiGroup") or ""),
        "namespace": namespace,
    }


def fs_type(sc_params: Mapping[str, str], default: str) -> str:
    """The filesystem type from the StorageClass parameters, else `default`."""
    found = [v for k, v in sc_params.items() if k.lower() == "fstype" or k == names.PREFIXED_FSTYPE]
    if any(k.lower() == "fstype" for k in sc_params):
        secrets.warn_deprecated("fstype", names.PREFIXED_FSTYPE)
    if len(found) > 1:
        raise ProvisionError(
            f'fstype specified in parameters with both "fstype" and "{names.PREFIXED_FSTYPE}" keys', FINISHED
        )
    return (found[0] if found else "") or default


def access_mode(mode: str, *, single_node_multi_writer: bool) -> csi_pb2.VolumeCapability.AccessMode.Mode:
    """csi-lib-utils `accessmodes.ToCSIAccessMode` for one Kubernetes access mode."""
    table = {
        "ReadWriteOncePod": _MODE.SINGLE_NODE_SINGLE_WRITER
        if single_node_multi_writer
        else _MODE.SINGLE_NODE_WRITER,
        "ReadWriteMany": _MODE.MULTI_NODE_MULTI_WRITER,
        "ReadOnlyMany": _MODE.MULTI_NODE_READER_ONLY,
        "ReadWriteOnce": _MODE.SINGLE_NODE_MULTI_WRITER
        if single_node_multi_writer
        else _MODE.SINGLE_NODE_WRITER,
    }
    if mode not in table:
        raise ProvisionError(f"unsupported AccessMode combination: [{mode}]", FINISHED)
    return table[mode]


def volume_capabilities(
    claim: Mapping[str, Any], mount_options: list[str], fs: str, *, single_node_multi_writer: bool
) -> list[Any]:
    """One VolumeCapability per access mode of the claim (upstream `getVolumeCapabilities`)."""
    caps = []
    for mode in (claim.get("spec") or {}).get("accessModes") or []:
        cap = csi_pb2.VolumeCapability(
            access_mode=csi_pb2.VolumeCapability.AccessMode(
                mode=access_mode(mode, single_node_multi_writer=single_node_multi_writer)
            )
        )
        if names.is_block(claim):
            cap.block.SetInParent()
        else:
            cap.mount.fs_type = fs
            cap.mount.mount_flags.extend(mount_options)
        caps.append(cap)
    return caps


def strip_parameters(sc_params: Mapping[str, str]) -> dict[str, str]:
    """upstream `removePrefixedParameters`: drop the known `csi.storage.k8s.io/` keys, reject others."""
    kept: dict[str, str] = {}
    for key, value in sc_params.items():
        if key.startswith(names.CSI_PARAMETER_PREFIX):
            if key not in secrets.KNOWN_PREFIXED_KEYS:
                raise ProvisionError(
                    "failed to strip CSI Parameters of prefixed keys: found unknown parameter key "
                    f'"{key}" with reserved namespace {names.CSI_PARAMETER_PREFIX}',
                    FINISHED,
                )
        else:
            kept[key] = value
    return kept


def requested_bytes(claim: Mapping[str, Any]) -> int:
    request = (((claim.get("spec") or {}).get("resources") or {}).get("requests") or {}).get("storage")
    if request is None:
        return 0
    try:
        size = to_bytes(str(request))
    except QuantityError as err:
        raise ProvisionError(f"invalid storage request {request!r}: {err}", FINISHED) from None
    if size > MAX_CSI_BYTES:  # capacity_range is an int64: the protobuf field refuses more
        raise ProvisionError(
            f"storage request {request!r} is {size} bytes, more than CSI can ask for ({MAX_CSI_BYTES})",
            FINISHED,
        )
    return size


MAX_CSI_BYTES = 2**63 - 1
"""The largest `capacity_range.required_bytes` (int64)."""


PopulatorHook = Callable[[Obj], None]


class RequestBuilder:
    """Builds the CreateVolumeRequest for a claim (see the module docstring)."""

    def __init__(
        self,
        *,
        config: ProvisionerConfig,
        driver: Driver,
        kube: KubeClient,
        nodes: NodeView | None,
        topology_cache: TopologyCache,
        on_populator: PopulatorHook | None = None,
        sources: DataSources | None = None,
    ) -> None:
        self.config = config
        self.driver = driver
        self.kube = kube
        self.nodes = nodes
        self.topology_cache = topology_cache
        self.on_populator = on_populator
        self.sources = sources
        """Snapshot and clone sources; None refuses them (FINISHED)."""

    def volume_name(self, claim: Mapping[str, Any]) -> str:
        cfg = self.config
        try:
            return names.volume_name(
                cfg.volume_name_prefix, names.claim_uid(claim), cfg.volume_name_uuid_length
            )
        except names.VolumeNameError as err:
            raise ProvisionError(str(err), FINISHED) from None

    def _check_data_source(self, claim: Obj) -> tuple[bool, bool, dict[str, str] | None]:
        source = data_source(claim, cross_namespace=self.config.cross_namespace_data_source)
        if source is None:
            return False, False, None
        if not source["name"]:
            raise ProvisionError(f"the PVC source not found for PVC {claim['metadata']['name']}", FINISHED)
        if source["kind"] == "VolumeSnapshot":
            if source["apiGroup"] != "snapshot.storage.k8s.io":
                raise ProvisionError(
                    "the PVC source does not belong to the right APIGroup. Expected "
                    f"snapshot.storage.k8s.io, Got {source['apiGroup']}",
                    FINISHED,
                )
            return True, False, source
        if source["kind"] == "PersistentVolumeClaim":
            return False, True, source
        if self.on_populator is not None:
            self.on_populator(claim)
        raise IgnoredClaim(f"data source ({source['kind']}) is not handled by the provisioner")

    async def prepare(
        self, claim: Obj, sc: Mapping[str, Any], selected_node: str, *, protect: bool = True
    ) -> Prepared:
        """The request for `claim` of StorageClass `sc`; raises ProvisionError or IgnoredClaim.

        `protect`: put the protection finalizer on a snapshot or clone source (False for look-ups
        that will not provision: a capacity check, a deleted claim's volume)."""
        snapshot, clone, source = self._check_data_source(claim)
        spec = claim.get("spec") or {}
        vac_name = (
            str(spec.get("volumeAttributesClassName") or "") if self.config.volume_attributes_class else ""
        )
        self.driver.check(snapshot=snapshot, clone=clone, modify=bool(vac_name))
        if spec.get("selector") is not None:
            raise ProvisionError("claim Selector is not supported", FINISHED)
        pv_name = self.volume_name(claim)
        sc_params: Mapping[str, str] = sc.get("parameters") or {}
        fs = fs_type(sc_params, self.config.default_fstype)
        single_writer = "SINGLE_NODE_MULTI_WRITER" in self.driver.controller_capabilities
        request = csi_pb2.CreateVolumeRequest(
            name=pv_name,
            volume_capabilities=volume_capabilities(
                claim, list(sc.get("mountOptions") or []), fs, single_node_multi_writer=single_writer
            ),
        )
        request.capacity_range.required_bytes = requested_bytes(claim)
        if source is not None:
            if self.sources is None:
                raise ProvisionError(
                    f"volume data sources are not supported: cannot provision from {source['kind']} "
                    f'"{source["name"]}"',
                    FINISHED,
                    stop=True,
                )
            resolved = await self.sources.resolve(claim, sc, source)
            request.volume_content_source.CopyFrom(resolved.content_source)
            if protect:
                await self.sources.protect(resolved)
        if self.driver.topology:
            requirement = self._topology(claim, sc, selected_node)
            if requirement is not None:
                for term in requirement["requisite"]:
                    request.accessibility_requirements.requisite.add(segments=term)
                for term in requirement["preferred"]:
                    request.accessibility_requirements.preferred.add(segments=term)
        refs, deletion = await self._secrets(claim, sc_params, pv_name, request)
        request.parameters.update(strip_parameters(sc_params))
        if self.config.extra_create_metadata:
            meta = claim.get("metadata") or {}
            request.parameters[names.PVC_NAME_KEY] = str(meta.get("name", ""))
            request.parameters[names.PVC_NAMESPACE_KEY] = str(meta.get("namespace", ""))
            request.parameters[names.PV_NAME_KEY] = pv_name
        if vac_name:
            request.mutable_parameters.update(await self._vac_parameters(vac_name))
        return Prepared(request=request, fs_type=fs, secret_refs=refs, deletion_secret=deletion)

    def _topology(self, claim: Obj, sc: Mapping[str, Any], selected_node: str) -> dict[str, Any] | None:
        meta = claim.get("metadata") or {}
        req = TopologyRequest(
            driver=self.driver.name,
            pvc_uid=str(meta.get("uid", "")),
            pvc_name=str(meta.get("name", "")),
            allowed_topologies=list(sc.get("allowedTopologies") or []),
            selected_node=selected_node,
            strict=self.config.strict_topology,
            immediate=self.config.immediate_topology,
        )
        try:
            return topology_requirements(req, self.nodes or NodeView({}, {}), self.topology_cache)
        except TopologyError as err:
            if err.not_found:
                raise ProvisionError(str(err), ProvisioningState.RESCHEDULE) from None
            raise ProvisionError(f"error generating accessibility requirements: {err}", NO_CHANGE) from None

    async def _secrets(
        self, claim: Obj, sc_params: Mapping[str, str], pv_name: str, request: Any
    ) -> tuple[dict[str, Mapping[str, str]], tuple[str, str]]:
        try:
            ref = secrets.secret_reference(secrets.PROVISIONER, sc_params, pv_name, claim)
            data = await secrets.credentials(self.kube, ref)
            refs: dict[str, Mapping[str, str]] = {}
            for field, params in secrets.PV_SECRET_REFS:
                other = secrets.secret_reference(params, sc_params, pv_name, claim)
                if other is not None:
                    refs[field] = other
        except secrets.SecretError as err:
            raise ProvisionError(str(err), NO_CHANGE) from None
        if data:
            request.secrets.update(data)
        return refs, (ref["name"], ref["namespace"]) if ref else ("", "")

    async def _vac_parameters(self, vac_name: str) -> Mapping[str, str]:
        try:
            vac = await self.kube.get(VOLUME_ATTRIBUTES_CLASSES, vac_name)
        except ApiError as err:
            raise ProvisionError(str(err), NO_CHANGE) from None
        if vac.get("driverName") != self.driver.name:
            raise ProvisionError(
                f"VAC {vac_name} referenced in PVC is for driver {vac.get('driverName', '')} which does not "
                f"match driver name {self.driver.name}",
                FINISHED,
            )
        params: Mapping[str, str] = vac.get("parameters") or {}
        return params
