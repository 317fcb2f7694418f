"""livenessprobe: the CSI driver's health as an HTTP /healthz for kubelet (no Kubernetes API).

Modules: `cli` (flags → LivenessProbeConfig), `controller` (the Prober over one shared channel),
`__main__` (wiring).
"""
