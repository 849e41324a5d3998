#!/usr/bin/env bash
# Give the agent its state directories on a node: created if missing, owned by the agent's user, kept
# across pods for as long as the node lives. Runs as root on the node itself (`docker exec` into a Kind
# node, `sudo` on the VM), so no pod has to run as root or hold CAP_CHOWN to make a hostPath its own.
# Usage: node-state.sh UID:GID DIR...
set -euo pipefail

owner="${1:?usage: $0 UID:GID DIR...}"
shift
[[ "${owner}" =~ ^[0-9]+:[0-9]+$ ]] || { echo "node-state.sh: owner must be numeric UID:GID, got ${owner}" >&2; exit 64; }
[[ $# -gt 0 ]] || { echo "usage: $0 UID:GID DIR..." >&2; exit 64; }

for dir in "$@"; do
    mkdir -p "${dir}"
    # Recursive: an agentUid change hands the state kept so far to the new user.
    chown -R "${owner}" "${dir}"
    chmod 0700 "${dir}"
done
