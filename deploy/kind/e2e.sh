#!/usr/bin/env bash
# End to end on a kind cluster: csi-driver-host-path with the Python sidecars swapped in.
#
#   deploy/kind/e2e.sh                      # the whole run; the cluster is deleted at the end
#   KEEP_CLUSTER=true deploy/kind/e2e.sh    # keep it for a look (kind delete cluster --name ...)
#
# Needs kind, kubectl, git and docker or podman (for podman, kind needs
# KIND_EXPERIMENTAL_PROVIDER=podman; this script sets it when it picks podman).
#
# 1. create a kind cluster;
# 2. build the five images from deploy/Dockerfile and load them into the cluster;
# 3. deploy csi-driver-host-path with deploy/kubernetes/overlays/python-sidecars (our RBAC, our
#    images, args unchanged), plus the snapshot CRDs and the snapshotter's and health monitor's
#    RBAC from those projects; HOSTPATH_DIR=<csi-driver-host-path>/deploy/kubernetes-1.30/hostpath
#    uses a checkout of the real upstream manifests instead of deploy/kubernetes/upstream;
# 4. PVC -> Pod (provision, attach, register, mount) -> resize to 2Gi while in use -> delete, and
#    check that the driver container was never restarted by its liveness probe (our livenessprobe)
#    and that no sidecar logged a traceback;
# 5. if E2E_TEST points to a Kubernetes e2e.test binary, run its external-storage tests for the
#    driver (E2E_FOCUS / E2E_SKIP select them);
# 6. delete the cluster (on success and on failure; on failure, print diagnostics first).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CLUSTER=${CLUSTER:-python-csi-sidecars}
IMAGE_REGISTRY=${IMAGE_REGISTRY:-localhost/python-csi-sidecars}
IMAGE_TAG=${IMAGE_TAG:-dev}
CONTAINER_ENGINE=${CONTAINER_ENGINE:-$(command -v docker || command -v podman || true)}
KEEP_CLUSTER=${KEEP_CLUSTER:-false}
HOSTPATH_DIR=${HOSTPATH_DIR:-}
SNAPSHOTTER_VERSION=${SNAPSHOTTER_VERSION:-v8.2.1}
HEALTH_MONITOR_VERSION=${HEALTH_MONITOR_VERSION:-v0.15.0}
E2E_TEST=${E2E_TEST:-}
E2E_FOCUS=${E2E_FOCUS:-External.Storage.*hostpath.csi.k8s.io.*(provisioning|volume-expand|volumes)}
E2E_SKIP=${E2E_SKIP:-Disruptive|Serial|Slow|Feature:}
WAIT=${WAIT:-180s}

DRIVER=hostpath.csi.k8s.io
SIDECARS=(csi-provisioner csi-attacher csi-resizer csi-node-driver-registrar livenessprobe)
CONTAINERS=(csi-provisioner csi-attacher csi-resizer node-driver-registrar liveness-probe)
RAW=https://raw.githubusercontent.com/kubernetes-csi

log() { printf '\n=== %s\n' "$*" >&2; }
die() { printf 'e2e.sh: %s\n' "$*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || die "$1 is required"; }

need kind
need kubectl
need git
[ -n "$CONTAINER_ENGINE" ] || die "docker or podman is required (or set CONTAINER_ENGINE)"
if [ "$(basename "$CONTAINER_ENGINE")" = podman ]; then
    export KIND_EXPERIMENTAL_PROVIDER=${KIND_EXPERIMENTAL_PROVIDER:-podman}
fi

# The generated kustomization lives beside this script: kustomize takes only relative paths.
WORK=$(mktemp -d "$ROOT/deploy/kind/work.XXXXXX")
CREATED=false
KUBECONFIG_FILE="$WORK/kubeconfig"
export KUBECONFIG="$KUBECONFIG_FILE"

diagnose() {
    kubectl get pods,pvc,pv,volumeattachments -A -o wide || true
    kubectl describe pod csi-hostpathplugin-0 || true
    for container in "${CONTAINERS[@]}" hostpath; do
        printf '\n--- logs of %s ---\n' "$container"
        kubectl logs csi-hostpathplugin-0 -c "$container" --tail=100 || true
    done
}

cleanup() {
    local status=$?
    if [ "$status" -ne 0 ] && [ "$CREATED" = true ]; then
        log "FAILED (exit $status): diagnostics"
        diagnose
    fi
    if [ "$CREATED" = true ] && [ "$KEEP_CLUSTER" != true ]; then
        log "deleting cluster $CLUSTER"
        kind delete cluster --name "$CLUSTER" || true
    fi
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT

log "creating kind cluster $CLUSTER"
kind create cluster --name "$CLUSTER" --kubeconfig "$KUBECONFIG_FILE" --wait 120s
CREATED=true

log "building and loading the images ($IMAGE_REGISTRY/<sidecar>:$IMAGE_TAG)"
images=()
for sidecar in "${SIDECARS[@]}"; do
    image="$IMAGE_REGISTRY/$sidecar:$IMAGE_TAG"
    "$CONTAINER_ENGINE" build -f "$ROOT/deploy/Dockerfile" --target "$sidecar" -t "$image" "$ROOT"
    images+=("$image")
done
if [ "$(basename "$CONTAINER_ENGINE")" = podman ]; then
    "$CONTAINER_ENGINE" save --multi-image-archive -o "$WORK/images.tar" "${images[@]}"
else
    "$CONTAINER_ENGINE" save -o "$WORK/images.tar" "${images[@]}"
fi
kind load image-archive "$WORK/images.tar" --name "$CLUSTER"

log "deploying csi-driver-host-path with the Python sidecars"
retag() {
    echo "images:"
    for sidecar in "${SIDECARS[@]}"; do
        echo "  - {name: localhost/python-csi-sidecars/$sidecar, newName: $IMAGE_REGISTRY/$sidecar, newTag: \"$IMAGE_TAG\"}"
    done
}
if [ -n "$HOSTPATH_DIR" ]; then
    mkdir "$WORK/hostpath"
    cp "$HOSTPATH_DIR/csi-hostpath-plugin.yaml" "$HOSTPATH_DIR/csi-hostpath-driverinfo.yaml" "$WORK/hostpath/"
    cp "$ROOT/deploy/kubernetes/overlays/python-sidecars/run-as-root.yaml" "$WORK/"
    {
        echo "resources: [hostpath/csi-hostpath-driverinfo.yaml, hostpath/csi-hostpath-plugin.yaml, ../../kubernetes/rbac]"
        echo "components: [../../kubernetes/components/python-sidecars]"
        echo "patches: [{path: run-as-root.yaml}]"
        retag
    } >"$WORK/kustomization.yaml"
else
    {
        echo "resources: [../../kubernetes/overlays/python-sidecars]"
        retag
    } >"$WORK/kustomization.yaml"
fi
kubectl apply -k "https://github.com/kubernetes-csi/external-snapshotter/client/config/crd?ref=$SNAPSHOTTER_VERSION"
kubectl apply -f "$RAW/external-snapshotter/$SNAPSHOTTER_VERSION/deploy/kubernetes/csi-snapshotter/rbac-csi-snapshotter.yaml"
kubectl apply -f "$RAW/external-health-monitor/$HEALTH_MONITOR_VERSION/deploy/kubernetes/external-health-monitor-controller/rbac.yaml"
kubectl apply -k "$WORK"
kubectl rollout status statefulset/csi-hostpathplugin --timeout="$WAIT"
node=$(kubectl get pod csi-hostpathplugin-0 -o jsonpath='{.spec.nodeName}')
kubectl wait --for=jsonpath='{.spec.drivers[0].name}'="$DRIVER" "csinode/$node" --timeout="$WAIT"

log "PVC -> Pod -> resize -> delete"
kubectl apply -f - <<EOF
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: e2e-hostpath}
provisioner: $DRIVER
reclaimPolicy: Delete
volumeBindingMode: WaitForFirstConsumer
allowVolumeExpansion: true
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: e2e-claim, namespace: default}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: e2e-hostpath
  resources: {requests: {storage: 1Gi}}
---
apiVersion: v1
kind: Pod
metadata: {name: e2e-pod, namespace: default}
spec:
  containers:
    - name: app
      image: busybox:1.36
      command: [sh, -c, "echo hello > /data/file && sleep 3600"]
      volumeMounts: [{name: data, mountPath: /data}]
  volumes:
    - name: data
      persistentVolumeClaim: {claimName: e2e-claim}
EOF
kubectl wait --for=condition=Ready pod/e2e-pod --timeout="$WAIT"
kubectl wait --for=jsonpath='{.status.phase}'=Bound pvc/e2e-claim --timeout="$WAIT"
pv=$(kubectl get pvc e2e-claim -o jsonpath='{.spec.volumeName}')
kubectl get volumeattachments -o jsonpath='{range .items[*]}{.spec.source.persistentVolumeName} {.status.attached}{"\n"}{end}' \
    | grep -qx "$pv true" || die "no attached VolumeAttachment for $pv"
kubectl patch pvc e2e-claim --type=merge -p '{"spec":{"resources":{"requests":{"storage":"2Gi"}}}}'
kubectl wait --for=jsonpath='{.status.capacity.storage}'=2Gi pvc/e2e-claim --timeout="$WAIT"
[ "$(kubectl exec e2e-pod -- cat /data/file)" = hello ] || die "the data did not survive the resize"
kubectl delete pod e2e-pod --wait=true --timeout="$WAIT"
kubectl delete pvc e2e-claim --wait=true --timeout="$WAIT"
kubectl wait --for=delete "pv/$pv" --timeout="$WAIT"

log "checking the sidecars' health"
restarts=$(kubectl get pod csi-hostpathplugin-0 -o jsonpath='{.status.containerStatuses[*].restartCount}')
for count in $restarts; do
    [ "$count" -eq 0 ] || die "a container of csi-hostpathplugin-0 restarted (restart counts: $restarts)"
done
for container in "${CONTAINERS[@]}"; do
    if kubectl logs csi-hostpathplugin-0 -c "$container" | grep -q '^Traceback'; then
        die "$container logged a traceback"
    fi
done

if [ -n "$E2E_TEST" ]; then
    log "Kubernetes external-storage e2e ($E2E_FOCUS)"
    [ -x "$E2E_TEST" ] || die "E2E_TEST=$E2E_TEST is not an executable"
    cat >"$WORK/test-driver.yaml" <<EOF
StorageClass:
  FromName: true
DriverInfo:
  Name: $DRIVER
  SupportedSizeRange: {Min: 1Mi}
  TopologyKeys: [topology.hostpath.csi/node]
  Capabilities:
    persistence: true
    exec: true
    multipods: true
    singleNodeVolume: true
    topology: true
    controllerExpansion: true
    nodeExpansion: true
    onlineExpansion: true
    block: true
EOF
    "$E2E_TEST" \
        -kubeconfig="$KUBECONFIG_FILE" \
        -storage.testdriver="$WORK/test-driver.yaml" \
        -ginkgo.focus="$E2E_FOCUS" \
        -ginkgo.skip="$E2E_SKIP" \
        -ginkgo.timeout=1h
else
    log "E2E_TEST not set: skipping the Kubernetes external-storage e2e subset"
fi

log "PASSED"
