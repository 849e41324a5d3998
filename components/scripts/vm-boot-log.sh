#!/usr/bin/env bash
# Print the VM's UEFI event log (binary), to make a measured-boot reference state from it
# (`make vm-boot-log > vm-boot.bin`, then `make mb-policy EVENT_LOG=vm-boot.bin`).
# Environment: VM_HOST, VM_USER, SSH_PRIVATE_KEY, SSH_HOST_PUBLIC_KEY (pinned, not trusted on first use).
set -euo pipefail
: "${VM_HOST:?}" "${VM_USER:?}" "${SSH_PRIVATE_KEY:?}" "${SSH_HOST_PUBLIC_KEY:?}"

scratch="$(mktemp -d)"
trap 'rm -rf "${scratch}"' EXIT
(umask 077 && printf '%s\n' "${SSH_PRIVATE_KEY}" > "${scratch}/id")
printf '%s %s\n' "${VM_HOST}" "${SSH_HOST_PUBLIC_KEY}" > "${scratch}/known_hosts"

# securityfs is readable by root only; the log does not change after boot.
ssh -i "${scratch}/id" -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=yes \
    -o UserKnownHostsFile="${scratch}/known_hosts" "${VM_USER}@${VM_HOST}" \
    sudo cat /sys/kernel/security/tpm0/binary_bios_measurements < /dev/null
