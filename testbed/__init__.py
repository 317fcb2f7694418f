"""The test bed: a Kubernetes-faithful environment the sidecars run against, without a cluster.

`testbed.apiserver` is a kube-apiserver stand-in (store, HTTP(S) API, faults); `testbed.controllers`
are control-plane stand-ins on its store; `testbed.csidriver` is a CSI test driver with fault
injection. Nothing here imports `common` or `sidecars`: the test bed is the referee they are judged by.
"""
