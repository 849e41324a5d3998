#!/usr/bin/env bash
# kubectl access to the infra cluster's keylime namespace, for enroll.py.
#   kube.sh tenant ARGS...   run `keylime_tenant ARGS...` in the tenant pod
#   kube.sh tenant-with-mb-policy ARGS...
#                            the same with `--mb-policy FILE`, FILE holding this script's stdin: the
#                            tenant reads a measured-boot policy only from a file in its own container
#   kube.sh verifier-log     print the verifier's recent log (PCR mismatches are only reported there)
#   kube.sh ping             succeed when the infra cluster's API server answers
# KUBECONFIG_DATA, when set, is the kubeconfig itself; it only ever lands in a private temporary file.
# KUBE_CONTEXT, when set, is the context of it to use (the cluster stack's kubeconfig holds several).
set -euo pipefail

namespace="${KEYLIME_NAMESPACE:-keylime}"

# Said apart from any answer of the cluster: a caller must never take a missing tool for a cluster that is gone.
if ! command -v kubectl >/dev/null; then
    echo "kube.sh: kubectl is not installed or not on PATH" >&2
    exit 127
fi

if [[ -n "${KUBECONFIG_DATA:-}" ]]; then
    kubeconfig="$(mktemp)"
    trap 'rm -f "${kubeconfig}"' EXIT
    chmod 600 "${kubeconfig}"
    printf '%s\n' "${KUBECONFIG_DATA}" > "${kubeconfig}"
    export KUBECONFIG="${kubeconfig}"
fi

context=()
if [[ -n "${KUBE_CONTEXT:-}" ]]; then
    context=(--context "${KUBE_CONTEXT}")
fi

case "${1:-}" in
tenant)
    shift
    kubectl "${context[@]}" --namespace "${namespace}" exec deploy/keylime-tenant --container tenant -- keylime_tenant "$@"
    ;;
tenant-with-mb-policy)
    shift
    # shellcheck disable=SC2016 # expanded by the tenant container's shell
    kubectl "${context[@]}" --namespace "${namespace}" exec -i deploy/keylime-tenant --container tenant -- /bin/sh -c \
        'policy="$(mktemp)" && cat > "${policy}" && keylime_tenant "$@" --mb-policy "${policy}"; status=$?; rm -f "${policy}"; exit "${status}"' \
        tenant-with-mb-policy "$@"
    ;;
verifier-log)
    # Every verifier pod's: with replicas, an agent's failure is logged by the pod it attests to.
    kubectl "${context[@]}" --namespace "${namespace}" logs --selector app.kubernetes.io/name=keylime-verifier \
        --tail="${LOG_LINES:-500}" --max-log-requests 32
    ;;
ping)
    kubectl "${context[@]}" get --raw /readyz --request-timeout=10s >/dev/null
    ;;
*)
    echo "usage: $0 tenant ARGS...|tenant-with-mb-policy ARGS...|verifier-log|ping" >&2
    exit 64
    ;;
esac
