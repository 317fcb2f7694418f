"""Identity service: plugin name, plugin capabilities and the Probe readiness switch."""

from __future__ import annotations

from proto import csi_pb2
from testbed.csidriver.service import Service

_Service = csi_pb2.PluginCapability.Service
_Expansion = csi_pb2.PluginCapability.VolumeExpansion


class IdentityService(Service):
    """The csi.v1.Identity handlers."""

    def GetPluginInfo(self, request: csi_pb2.GetPluginInfoRequest) -> csi_pb2.GetPluginInfoResponse:
        return csi_pb2.GetPluginInfoResponse(name=self.config.name, vendor_version=self.config.vendor_version)

    def GetPluginCapabilities(
        self, request: csi_pb2.GetPluginCapabilitiesRequest
    ) -> csi_pb2.GetPluginCapabilitiesResponse:
        cfg = self.config
        caps: list[csi_pb2.PluginCapability] = []
        if cfg.controller_service:
            caps.append(csi_pb2.PluginCapability(service=_Service(type=_Service.CONTROLLER_SERVICE)))
        if cfg.topology:
            caps.append(
                csi_pb2.PluginCapability(service=_Service(type=_Service.VOLUME_ACCESSIBILITY_CONSTRAINTS))
            )
        if cfg.volume_expansion:
            expansion = _Expansion(type=cfg.volume_expansion)
            caps.append(csi_pb2.PluginCapability(volume_expansion=expansion))
        return csi_pb2.GetPluginCapabilitiesResponse(capabilities=caps)

    def Probe(self, request: csi_pb2.ProbeRequest) -> csi_pb2.ProbeResponse:
        response = csi_pb2.ProbeResponse()
        ready = self.plugin.ready
        if ready is not None:
            response.ready.value = ready
        return response
