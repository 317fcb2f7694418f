"""The test bed's Kubernetes-faithful API server: a kube-apiserver stand-in the sidecars are tested against.

`Store` holds the semantics (resourceVersions, defaults, admission, validation, patches, finalizers,
watches, pagination) and is used directly by in-process control-plane stand-ins; `ApiServer` serves it
over HTTP(S) with discovery, a kubeconfig, fault injection (`Faults`) and a request log
(`RequestLog`). It imports nothing from `common` or `sidecars`: it is the independent referee.
"""

from testbed.apiserver.deletion import DeleteOptions
from testbed.apiserver.errors import (
    AlreadyExists,
    ApiError,
    BadRequest,
    Conflict,
    Expired,
    Forbidden,
    Invalid,
    NotFound,
    TooManyRequests,
)
from testbed.apiserver.faults import Faults
from testbed.apiserver.listing import ListOptions
from testbed.apiserver.requestlog import RequestLog, RequestRecord
from testbed.apiserver.resources import RESOURCES, Registry, ResourceType
from testbed.apiserver.server import ApiServer, ApiServerOptions
from testbed.apiserver.store import Store
from testbed.apiserver.watch import Watch, WatchEvent

__all__ = [
    "RESOURCES",
    "AlreadyExists",
    "ApiError",
    "ApiServer",
    "ApiServerOptions",
    "BadRequest",
    "Conflict",
    "DeleteOptions",
    "Expired",
    "Faults",
    "Forbidden",
    "Invalid",
    "ListOptions",
    "NotFound",
    "Registry",
    "RequestLog",
    "RequestRecord",
    "ResourceType",
    "Store",
    "TooManyRequests",
    "Watch",
    "WatchEvent",
]
