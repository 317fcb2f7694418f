"""csi-provisioner, a drop-in external-provisioner: PVCs become CSI volumes and PVs; released PVs are deleted.

Modules: `cli` (flags → ProvisionerConfig), `names` (annotations, finalizers, keys, volume names),
`secrets` (secret parameters and templates), `topology` (accessibility requirements, node
affinity), `request` (the CreateVolumeRequest), `volume` (the PV), `state` (provisioning states),
`provision` (CreateVolume → PV), `intent` (the provisioning-intent finalizer: no leak across
restarts), `volumestore` (saving PVs, `unsavedpvs`), `claim` (the claim controller, `claims`),
`deleter` (the volume controller, `volumes`), `datasource` (snapshot and clone sources),
`snapshots` (snapshot-finalizer release and orphan sweep), `clone` (the cloning-protection
controller), `capacity` (CSIStorageCapacity objects), `segments` (capacity topology segments),
`owner` (the capacity objects' owner), `nodedeployment` (`--node-deployment`), `controller`
(wiring), `__main__` (entrypoint).
"""
