#!/usr/bin/env bash
# One Kind cluster's lifecycle for Pulumi Command resources.
#   kind-cluster.sh create      create CLUSTER_NAME from KIND_CONFIG (YAML text) and mark it as CLUSTER_OWNER's.
#                               An existing cluster is adopted only when it carries this owner's mark for the
#                               same configuration and answers; one of ours that is broken or was made from
#                               another configuration is recreated; anything else is refused, never touched.
#   kind-cluster.sh delete      delete CLUSTER_NAME unless another owner marked it; succeeds when it is already gone
#   kind-cluster.sh kubeconfig  print CLUSTER_NAME's kubeconfig (the caller keeps it secret)
#   kind-cluster.sh load        load IMAGES (space-separated) into CLUSTER_NAME's nodes
#   kind-cluster.sh node-state  run node-state.sh as root on the node: NODE_STATE_OWNER (UID:GID) gets NODE_STATE_DIRS
set -euo pipefail

cluster="${CLUSTER_NAME:?CLUSTER_NAME must be set}"
# Kind names the node container of a one-node cluster after the cluster.
node="${cluster}-control-plane"
# The mark lives on the node: it goes when the cluster goes, and only a finished create writes it.
mark_dir=/etc/keylime-push
mark_file="${mark_dir}/cluster"

cluster_exists() {
    local clusters
    # Fail loudly when kind cannot list clusters (Docker down): "gone" must mean gone.
    if ! clusters="$(kind get clusters 2>/dev/null)"; then
        echo "cannot list kind clusters; is Docker running?" >&2
        exit 1
    fi
    grep -qx -- "${cluster}" <<<"${clusters}"
}

wanted_mark() {
    local config_hash
    config_hash="$(printf '%s\n' "${KIND_CONFIG:?KIND_CONFIG must hold the Kind cluster configuration}" | sha256sum)"
    printf 'owner=%s config-sha256=%s\n' "${CLUSTER_OWNER:?CLUSTER_OWNER must name the stack}" "${config_hash%% *}"
}

# The mark on the node, or nothing when there is none or the node does not answer.
current_mark() {
    docker exec "${node}" cat "${mark_file}" 2>/dev/null || true
}

owner_of() {
    sed -n 's/^owner=\([^ ]*\) .*/\1/p' <<<"$1"
}

healthy() {
    docker exec "${node}" kubectl --kubeconfig /etc/kubernetes/admin.conf get --raw /readyz --request-timeout=10s \
        >/dev/null 2>&1
}

create_cluster() {
    # Global: the EXIT trap runs after this function has returned.
    config_file="$(mktemp)"
    trap 'rm -f "${config_file}"' EXIT
    printf '%s\n' "${KIND_CONFIG}" > "${config_file}"
    kind create cluster --name "${cluster}" --config "${config_file}" --wait 120s
    docker exec "${node}" mkdir -p "${mark_dir}"
    wanted_mark | docker exec -i "${node}" tee "${mark_file}" >/dev/null
}

case "${1:-}" in
create)
    wanted="$(wanted_mark)"
    if ! cluster_exists; then
        create_cluster
        exit 0
    fi
    mark="$(current_mark)"
    if [[ -z "${mark}" ]]; then
        echo "kind cluster ${cluster} exists but carries no keylime-push mark: it was made by hand, by an older" \
            "version, or its creation was interrupted, or its node ${node} is not running. Refusing to adopt it." \
            "If nothing of yours runs there: kind delete cluster --name ${cluster}; then pulumi up again." >&2
        exit 1
    fi
    if [[ "$(owner_of "${mark}")" != "${CLUSTER_OWNER}" ]]; then
        echo "kind cluster ${cluster} belongs to $(owner_of "${mark}"), not ${CLUSTER_OWNER}; refusing to adopt it" >&2
        exit 1
    fi
    if [[ "${mark}" != "${wanted}" ]]; then
        echo "kind cluster ${cluster} is ours but was made from another configuration; recreating it"
    elif ! healthy; then
        echo "kind cluster ${cluster} is ours but its API server does not answer; recreating it"
    else
        # A failed earlier `pulumi up` may have left it behind; adopting it lets the re-run finish.
        echo "kind cluster ${cluster} already exists, made by ${CLUSTER_OWNER} from this configuration; adopting it"
        exit 0
    fi
    kind delete cluster --name "${cluster}"
    create_cluster
    ;;
delete)
    if ! cluster_exists; then
        echo "kind cluster ${cluster} is already gone"
        exit 0
    fi
    owner="$(owner_of "$(current_mark)")"
    if [[ -n "${owner}" && "${owner}" != "${CLUSTER_OWNER:-}" ]]; then
        echo "kind cluster ${cluster} belongs to ${owner}, not ${CLUSTER_OWNER:-this stack}; not deleting it" >&2
        exit 1
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
node-state)
    # shellcheck disable=SC2086 # NODE_STATE_DIRS is a space-separated list of absolute paths
    docker exec -i "${node}" bash -s -- "${NODE_STATE_OWNER:?NODE_STATE_OWNER must be UID:GID}" \
        ${NODE_STATE_DIRS:?NODE_STATE_DIRS must list the directories} < "$(dirname "$0")/node-state.sh"
    ;;
*)
    echo "usage: $0 create|delete|kubeconfig|load|node-state" >&2
    exit 64
    ;;
esac
