#!/usr/bin/env bash
# Smoke test of the manifests on a throwaway kind cluster, for a machine with Docker,
# kind and kubectl. Not run by the test suite (CI has no Docker engine; the tests render
# and schema-check the same manifests offline instead).
#
#   infra/k8s/smoke-kind.sh            # cluster "fourm", image fourm:latest
#   FOURM_KIND_CLUSTER=x FOURM_IMAGE=fourm:dev infra/k8s/smoke-kind.sh
#
# It creates (or reuses) the kind cluster, builds the CPU image and loads it into the
# cluster, applies the local overlay (with its PLACEHOLDER Secrets), waits for MinIO,
# PostgreSQL, the Prefect server and worker and the bucket job, runs `fourm settings` in a
# pod of the image, then port-forwards MinIO and Prefect until you press Ctrl-C.
# Remove everything: kind delete cluster --name fourm
set -euo pipefail

CLUSTER="${FOURM_KIND_CLUSTER:-fourm}"
IMAGE="${FOURM_IMAGE:-fourm:latest}"
NAMESPACE=fourm
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

need() {
  command -v "$1" >/dev/null 2>&1 || { echo "smoke-kind: '$1' is not on PATH" >&2; exit 1; }
}
need docker
need kind
need kubectl

k() { kubectl --context "kind-${CLUSTER}" --namespace "${NAMESPACE}" "$@"; }

if kind get clusters 2>/dev/null | grep -qx "${CLUSTER}"; then
  echo "== reusing kind cluster ${CLUSTER}"
else
  echo "== creating kind cluster ${CLUSTER}"
  kind create cluster --name "${CLUSTER}" --wait 180s
fi

echo "== building ${IMAGE} (CPU) and loading it into the cluster"
docker build -f "${REPO}/infra/docker/Dockerfile.cpu" -t "${IMAGE}" "${REPO}"
kind load docker-image "${IMAGE}" --name "${CLUSTER}"

echo "== applying infra/k8s/overlays/local"
kubectl --context "kind-${CLUSTER}" apply -k "${REPO}/infra/k8s/overlays/local"

echo "== waiting for the services"
k rollout status statefulset/minio --timeout=300s
k rollout status statefulset/postgres --timeout=300s
k rollout status deployment/prefect-server --timeout=600s
k rollout status deployment/prefect-worker --timeout=300s
k wait --for=condition=complete job/minio-buckets --timeout=300s

echo "== fourm settings, from a pod of ${IMAGE} with the fourm-s3 Secret"
k delete pod fourm-smoke --ignore-not-found --wait=true >/dev/null
k run fourm-smoke --rm --attach --restart=Never --quiet --image="${IMAGE}" --overrides="$(cat <<JSON
{
  "apiVersion": "v1",
  "spec": {
    "serviceAccountName": "fourm-trainer",
    "securityContext": {"runAsNonRoot": true, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
    "containers": [{
      "name": "fourm-smoke",
      "image": "${IMAGE}",
      "imagePullPolicy": "IfNotPresent",
      "args": ["settings"],
      "envFrom": [{"secretRef": {"name": "fourm-s3"}}],
      "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}},
      "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}
    }]
  }
}
JSON
)"

echo "== port-forwarding MinIO (9000 API, 9001 console) and Prefect (4200)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "${pid}" 2>/dev/null || true; done
}
trap cleanup EXIT
k port-forward svc/minio 9000:9000 9001:9001 >/dev/null &
pids+=("$!")
k port-forward svc/prefect-server 4200:4200 >/dev/null &
pids+=("$!")
sleep 3

cat <<NEXT

fourm is up on kind-${CLUSTER} (namespace ${NAMESPACE}); the credentials are the
placeholders from infra/k8s/secrets/*.env.example.

  Prefect UI      http://localhost:4200
  MinIO console   http://localhost:9001   (MINIO_ROOT_USER / MINIO_ROOT_PASSWORD)

Next, in another shell at the repository root (. .venv/bin/activate):

  export PREFECT_API_URL=http://localhost:4200/api
  prefect work-pool ls                      # fourm-k8s, created by the in-cluster worker
  prefect deploy -n fourm-pretrain-k8s      # image ${IMAGE}, already in the cluster
  FOURM_S3_ENDPOINT=http://localhost:9000 FOURM_S3_ACCESS_KEY=CHANGE-ME-fourm \\
    FOURM_S3_SECRET_KEY=CHANGE-ME-fourm-s3-secret-key fourm tokenize   # shards to MinIO

then start fourm-pretrain-k8s from the UI with tokens=s3://fourm-tokens/<set>.
See docs/kubernetes.md. Ctrl-C stops the port-forwards (the cluster stays).
NEXT
wait
