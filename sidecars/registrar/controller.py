"""Registration: the kubelet plugin-registration service of one CSI driver, and its health verdicts.

Kubelet's plugin watcher finds `<driver>-reg.sock` in its plugin directory, calls `GetInfo` (here:
type `CSIPlugin`, the driver's name, `endpoint` = `--kubelet-registration-path`, versions
["1.0.0"]), calls NodeGetInfo on that endpoint itself, writes the CSINode, and reports the outcome
with `NotifyRegistrationStatus`. A refusal (`plugin_registered=false`) is logged and ends the process
with exit 1, as upstream does, so that the container restarts and kubelet retries.

/healthz goes beyond upstream (which only checks that GetInfo on the socket works): it stays
unhealthy (500 "registration not yet confirmed by kubelet") until kubelet confirmed the registration
of the current socket; a missing socket is 404, as upstream answers. `socket_verdict` and
`info_verdict` are the pure halves of that check; the socket I/O lives in `server`.
"""

from __future__ import annotations

import asyncio
import os
import stat
from dataclasses import dataclass, field
from typing import Any, NoReturn

from common.csi import describe
from common.errors import SidecarError
from common.logging import get_logger
from proto import pluginregistration_pb2

log = get_logger(__name__)

CSI_PLUGIN = "CSIPlugin"
"""registerapi.CSIPlugin: the plugin type kubelet hands to its CSI plugin handler."""
SUPPORTED_VERSIONS = ("1.0.0",)
"""The CSI plugin API versions announced to kubelet (upstream `supportedVersions`)."""
NOT_CONFIRMED = "registration not yet confirmed by kubelet"
"""The /healthz body (500) before kubelet's NotifyRegistrationStatus(true) for the current socket."""
SOCKET_MISSING = "registration socket does not exist"
"""The /healthz body (404) while the registration socket is missing (upstream's text)."""

Verdict = tuple[int, str]


class RegistrationFailed(SidecarError):
    """Kubelet reported that it could not register the plugin: exit 1 so the container restarts."""


@dataclass(kw_only=True)
class Registration:
    """What kubelet is told about the driver, and what kubelet answered."""

    driver_name: str
    """The driver's name from GetPluginInfo; the socket is `<driver_name>-reg.sock`."""
    endpoint: str
    """`--kubelet-registration-path`: the driver socket as kubelet sees it on the host."""
    confirmed: bool = False
    """True once kubelet reported a successful registration of the current socket."""
    _failure: asyncio.Future[str] | None = field(default=None, repr=False)

    def info(self) -> Any:
        """The PluginInfo GetInfo answers."""
        return pluginregistration_pb2.PluginInfo(
            type=CSI_PLUGIN,
            name=self.driver_name,
            endpoint=self.endpoint,
            supported_versions=list(SUPPORTED_VERSIONS),
        )

    def notify(self, *, registered: bool, error: str) -> None:
        """Kubelet's verdict. A failure is logged here and ends `wait_failed()`."""
        if registered:
            if not self.confirmed:
                log.info("kubelet confirmed the registration", driver=self.driver_name)
            self.confirmed = True
            return
        self.confirmed = False
        log.error(
            "Registration process failed with error, restarting registration container",
            driver=self.driver_name,
            error=error,
        )
        failure = self._failure_future()
        if not failure.done():
            failure.set_result(error)

    def reset(self) -> None:
        """The socket was recreated: kubelet registers the new one again, so wait for its word."""
        self.confirmed = False

    async def wait_failed(self) -> NoReturn:
        """Wait until kubelet refuses the registration, then raise RegistrationFailed (exit 1)."""
        error = await self._failure_future()
        raise RegistrationFailed(
            f"kubelet failed to register plugin {self.driver_name}: {error or 'no reason given'}"
        )

    def _failure_future(self) -> asyncio.Future[str]:
        if self._failure is None:
            self._failure = asyncio.get_running_loop().create_future()
        return self._failure


class RegistrationServicer:
    """The `pluginregistration.Registration` gRPC service (grpc.aio handlers) over a `Registration`."""

    def __init__(self, registration: Registration) -> None:
        self._registration = registration

    async def GetInfo(self, request: Any, context: Any) -> Any:
        log.info("Received GetInfo call", driver=self._registration.driver_name)
        return self._registration.info()

    async def NotifyRegistrationStatus(self, request: Any, context: Any) -> Any:
        log.info(
            "Received NotifyRegistrationStatus call",
            plugin_registered=bool(request.plugin_registered),
            error=str(request.error),
        )
        self._registration.notify(registered=bool(request.plugin_registered), error=str(request.error))
        return pluginregistration_pb2.RegistrationStatusResponse()


def socket_verdict(path: str, *, confirmed: bool) -> Verdict | None:
    """The /healthz answer decided before dialling the socket, or None to go on with GetInfo.

    Missing socket: 404 (upstream); a file that is not a socket, or a failed stat: 500 with
    upstream's texts; socket present but not confirmed by kubelet: 500 `NOT_CONFIRMED`.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return 404, SOCKET_MISSING
    except OSError as err:
        return 500, f"failed to stat the socket {path} with error: {err}"
    if not stat.S_ISSOCK(mode):
        return 500, f"file exists in socketPath {path} but it's not a socket."
    if not confirmed:
        return 500, NOT_CONFIRMED
    return None


def info_verdict(info: Any, *, driver_name: str) -> Verdict:
    """The answer once GetInfo on our own socket returned `info`: 200 when it names our driver."""
    if info.name == driver_name:
        return 200, "ok"
    return 500, f"invalid driver name {info.name}"


def info_error_verdict(error: BaseException) -> Verdict:
    """The answer when GetInfo on our own socket failed (upstream's wording)."""
    return 500, f"error getting info from node-registrar socket: {describe(error)}"
