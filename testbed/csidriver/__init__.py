"""CSI test driver: an in-memory CSI plugin with fault injection, the sidecars' storage backend in tests.

It behaves like csi-driver-host-path as csi-sanity sees it (idempotent CreateVolume by name, capacity
per topology segment, snapshots, clones, attachment limits, node staging bookkeeping), every
capability can be switched off per test, and every RPC can be delayed, failed, hung, answered with a
lost response, or made to crash the driver (`faults`). It records every call (`calls`) and exposes
its backend (`volumes`, `snapshots`, `publications`).

In process::

    driver = TestDriver(DriverConfig(node_expansion_required=False))
    async with driver.serve(f"unix://{tmp_path}/csi.sock"):
        driver.faults.add("CreateVolume", "succeed_then_timeout", count=1)

Out of process: ``python -m testbed.csidriver --endpoint unix:///tmp/csi.sock --control-address
127.0.0.1:0`` (flags in `testbed.csidriver.__main__`, HTTP API in `testbed.csidriver.control`).

Modules: `config` (DriverConfig), `state` (the backend), `service`/`identity`/`controller`/
`snapshots`/`node` (the RPC handlers), `faults`, `calls`, `server` (grpc.aio and the call wrapper),
`driver` (TestDriver lifecycle), `control` (HTTP control endpoint), `client` (stubs for
tests). This package never imports
`common` or `sidecars`: it is the referee the sidecars are tested against.
"""

from testbed.csidriver.calls import Call, CallLog
from testbed.csidriver.client import Stubs, connect
from testbed.csidriver.config import (
    DEFAULT_CONTROLLER_CAPABILITIES,
    DEFAULT_NODE_CAPABILITIES,
    DEFAULT_TOPOLOGY_KEY,
    DriverConfig,
    GiB,
)
from testbed.csidriver.driver import TestDriver
from testbed.csidriver.faults import Fault, FaultKind, Faults
from testbed.csidriver.state import Attachment, CsiError, DriverState, Mount, Snapshot, Volume

CSITestDriver = TestDriver

__all__ = [
    "DEFAULT_CONTROLLER_CAPABILITIES",
    "DEFAULT_NODE_CAPABILITIES",
    "DEFAULT_TOPOLOGY_KEY",
    "Attachment",
    "CSITestDriver",
    "Call",
    "CallLog",
    "CsiError",
    "DriverConfig",
    "DriverState",
    "Fault",
    "FaultKind",
    "Faults",
    "GiB",
    "Mount",
    "Snapshot",
    "Stubs",
    "TestDriver",
    "Volume",
    "connect",
]
