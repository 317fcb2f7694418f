"""The CSI client library: the channel to the driver, error classes and secret stripping.

    conn = await CSIConnection.connect(address, call_timeout=10, recorder=metrics)
    await conn.probe_forever()
    info = await conn.plugin_info()
    rsp = await conn.controller.CreateVolume(request, timeout=config.timeout)

Modules: `connection` (CSIConnection, PluginInfo, NodeInfo), `errors` (Outcome, classify,
is_final, is_infeasible, code_name, describe), `sanitize` (strip_secrets, truncate), `interceptor`
(CallInterceptor, OperationRecorder).
"""

from common.csi.connection import CSIConnection, Endpoint, NodeInfo, PluginInfo, parse_address
from common.csi.errors import (
    NON_GRPC,
    Outcome,
    classify,
    code_name,
    describe,
    is_final,
    is_infeasible,
    status_code,
)
from common.csi.interceptor import UNKNOWN_DRIVER, CallInterceptor, OperationRecorder
from common.csi.sanitize import STRIPPED, strip_secrets, truncate

__all__ = [
    "NON_GRPC",
    "STRIPPED",
    "UNKNOWN_DRIVER",
    "CSIConnection",
    "CallInterceptor",
    "Endpoint",
    "NodeInfo",
    "OperationRecorder",
    "Outcome",
    "PluginInfo",
    "classify",
    "code_name",
    "describe",
    "is_final",
    "is_infeasible",
    "parse_address",
    "status_code",
    "strip_secrets",
    "truncate",
]
