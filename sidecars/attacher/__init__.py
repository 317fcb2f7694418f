"""csi-attacher: a drop-in replacement for kubernetes-csi external-attacher v4.12.

Attaches (ControllerPublishVolume) and detaches (ControllerUnpublishVolume) the volumes of this
driver's VolumeAttachments, with upstream's finalizer `external-attacher/<sanitized driver>` on the
VA and the PV, the `csi.alpha.kubernetes.io/node-id` annotation, the status fields, the
`csi-attacher-va`/`csi-attacher-pv` work queues and the Lease `external-attacher-leader-<driver>`.

Modules: `cli` (flags → `AttacherConfig`), `request` (the publish request and upstream's error
texts), `status` (the VA patches and the update filter), `handler` (handler choice, the trivial
handler, shared parts), `csi_handler` (attach, detach, PV finalizer), `reconciler` (ListVolumes
against the VAs), `controller` (informers, queues, workers), `__main__` (wiring).

Where we differ from upstream, on purpose (each is documented where it happens): finalizers and the
node-id annotation change only through guarded JSON patches; ControllerUnpublishVolume answering
NOT_FOUND counts as detached; a VA whose PV is gone for good is released; a forced re-attach that
fails after the driver lost the attachment writes `attached: false` (external-attacher#215); the
attach may read the node ID from the Node's legacy annotation; a PV or CSINode appearing, and a
driver reconnect, retry waiting VAs at once; the driver connection is re-established instead of
exiting. Not supported: CSI migration (in-tree PVs are refused like an unmigrated PV upstream).
Like upstream, no Events are emitted, and GetPluginInfo uses `--timeout` (upstream: 1 s).
"""
