"""csi-node-driver-registrar: registers a CSI driver with kubelet's plugin watcher (no Kubernetes API).

Modules: `cli` (flags → RegistrarConfig), `controller` (the Registration service and the /healthz
verdicts), `server` (the registration socket: serve, keep in place, self-check), `__main__` (wiring).
"""
