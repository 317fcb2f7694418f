"""Control-plane stand-ins: the parts of kube-controller-manager, scheduler and kubelet the sidecars need.

They run in the API server's process and act on its `Store` directly, through its public async methods
(so the request log holds only what the sidecars and tests sent over HTTP), following the API rules:
optimistic concurrency (a Conflict re-reads and retries), finalizers, `/status` for status.

* `PersistentVolumeController` — the PV binder: provisioner annotations and the ExternalProvisioning
  event, binding both sides, Released volumes, WaitForFirstConsumer.
* `PVCProtectionController`, `PVProtectionController` — the finalizers that let deletes complete.
* `VolumeScheduler` — `volume.kubernetes.io/selected-node` for scheduled pods' delayed claims.
* `AttachDetachController` — VolumeAttachments named `csi-<sha256(handle+driver+node)>`.
* `Kubelet` — plugin registration (GetInfo, NotifyRegistrationStatus, NodeGetInfo, CSINode and Node
  annotation), NodeStage/NodePublish, node expansion, pod lifecycle.
* `ControlPlane` runs any subset as named tasks; `start_testbed`/`run_testbed` add an API server;
  `python -m testbed.controllers` runs it all as a process.

Modules: `base` (informer, queue, worker), `events`, `storage` (shared names and predicates),
`matching`, `persistentvolume`, `protection`, `scheduler`, `attachdetach`, `nodeinfo`, `plugins`,
`csi`, `volumes`, `expansion`, `kubelet`, `plane`. Nothing here imports `common` or `sidecars`.
"""

from testbed.controllers.attachdetach import AttachDetachController
from testbed.controllers.base import Controller, Informer, KeyQueue
from testbed.controllers.events import EventRecorder
from testbed.controllers.kubelet import Kubelet, KubeletConfig
from testbed.controllers.nodeinfo import NodeInfoManager
from testbed.controllers.persistentvolume import PersistentVolumeController
from testbed.controllers.plane import (
    ALIASES,
    CONTROLLER_NAMES,
    ControlPlane,
    Testbed,
    TestbedOptions,
    expand_names,
    run_testbed,
    start_testbed,
)
from testbed.controllers.plugins import Driver, PluginManager
from testbed.controllers.protection import PVCProtectionController, PVProtectionController
from testbed.controllers.scheduler import VolumeScheduler
from testbed.controllers.storage import attachment_name

__all__ = [
    "ALIASES",
    "CONTROLLER_NAMES",
    "AttachDetachController",
    "ControlPlane",
    "Controller",
    "Driver",
    "EventRecorder",
    "Informer",
    "KeyQueue",
    "Kubelet",
    "KubeletConfig",
    "NodeInfoManager",
    "PVCProtectionController",
    "PVProtectionController",
    "PersistentVolumeController",
    "PluginManager",
    "Testbed",
    "TestbedOptions",
    "VolumeScheduler",
    "attachment_name",
    "expand_names",
    "run_testbed",
    "start_testbed",
]
