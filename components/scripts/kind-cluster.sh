#!/usr/bin/env bash
# One Kind cluster's lifecycle for Pulumi Command resources.
#   kind-cluster.sh create      create CLUSTER_NAME from KIND_CONFIG (YAML text); adopt it if it exists
#   kind-cluster.sh delete      delete CLUSTER_NAME; succeeds when it is already gone
#   kind-cluster.sh kubeconfig  print CLUSTER_NAME's kubeconfig (the caller keeps it secret)
#   kind-cluster.sh load        load IMAGES (space-separated) into CLUSTER_NAME's nodes
set -euo pipefail

cluster="${CLUSTER_NAME:?CLUSTER_NAME must be set}"

cluster_exists() {
    local clusters
    # Fail loudly when kind cannot list clusters (Docker down): "gone" must mean gone.
    if ! clusters="$(kind get clusters 2>/dev/null)"; then
        echo "cannot list kind clusters; is Docker running?" >&2
        exit 1
    fi
    grep -qx -- "${cluster}" <<<"${clusters}"
}

case "${1:-}" in
create)
    if cluster_exists; then
        # A failed earlier `pulumi up` may have left it behind; adopting it lets the re-run finish.
        echo "kind cluster ${cluster} already exists; adopting it"
        exit 0
    fi
    config_file="$(mktemp)"
    trap 'rm -f "${config_file}"' EXIT
    printf '%s\n' "${KIND_CONFIG:?KIND_CONFIG must hold the Kind cluster configuration}" > "${config_file}"
    kind create cluster --name "${cluster}" --config "${config_file}" --wait 120s
    ;;
delete)
    if ! cluster_exists; then
        echo "kind cluster ${cluster} is already gone"
        exit 0
    fi
    kind delete cluster --name "${cluster}"
    ;;
kubeconfig)
    kind get kubeconfig --name "${cluster}"
    ;;
load)
    for image in ${IMAGES:?IMAGES must list the images to load}; do
        kind load docker-image "${image}" --name "${cluster}"
    done
    ;;
*)
    echo "usage: $0 create|delete|kubeconfig|load" >&2
    exit 64
    ;;
esac
