#!/usr/bin/env bash
# Stream locally built images into the VM's containerd (there is no registry between host and VM).
# Environment: VM_HOST, VM_USER, SSH_PRIVATE_KEY, SSH_HOST_PUBLIC_KEY (pinned, not trusted on first use), IMAGES.
set -euo pipefail
: "${VM_HOST:?}" "${VM_USER:?}" "${SSH_PRIVATE_KEY:?}" "${SSH_HOST_PUBLIC_KEY:?}" "${IMAGES:?}"

scratch="$(mktemp -d)"
trap 'rm -rf "${scratch}"' EXIT
(umask 077 && printf '%s\n' "${SSH_PRIVATE_KEY}" > "${scratch}/id")
printf '%s %s\n' "${VM_HOST}" "${SSH_HOST_PUBLIC_KEY}" > "${scratch}/known_hosts"

for image in ${IMAGES}; do
    echo "importing ${image} into ${VM_HOST}"
    docker save "${image}" | ssh -i "${scratch}/id" -o IdentitiesOnly=yes -o BatchMode=yes \
        -o StrictHostKeyChecking=yes -o UserKnownHostsFile="${scratch}/known_hosts" \
        "${VM_USER}@${VM_HOST}" sudo ctr --namespace k8s.io images import -
done
