#!/usr/bin/env bash
# The swtpm sidecar of an agent that attests its boot. Serves the pod's software TPM (this script's
# arguments are swtpm's command line) and, every time it starts, extends the PCRs with the events of
# the synthetic boot log the agent sends, as a machine's firmware extends its TPM while it boots: a
# restarted sidecar is a TPM reset and is measured again. The startup probe waits for BOOTED_MARKER.
#   BOOT_LOG_EXTENDS   the log's events, one `pcr:sha256=digest` a line, in log order
#   BOOTED_MARKER      exists while the running TPM holds the boot (the pod's /tmp outlives a restart)
#   TPM2TOOLS_TCTI     how tpm2_pcrextend reaches the TPM the arguments serve
set -euo pipefail

extends="${BOOT_LOG_EXTENDS:?BOOT_LOG_EXTENDS must name the list of PCR extends}"
booted="${BOOTED_MARKER:?BOOTED_MARKER must name the file that says the boot is measured}"
rm -f "${booted}"

"$@" &
swtpm_pid=$!
trap 'rm -f "${booted}"' EXIT
trap 'kill -TERM "${swtpm_pid}" 2>/dev/null || true' TERM INT

for _ in $(seq 100); do
    if tpm2_pcrread sha256:0 >/dev/null 2>&1; then
        break
    fi
    kill -0 "${swtpm_pid}"  # swtpm exited: fail, and the kubelet restarts the sidecar
    sleep 0.1
done
mapfile -t events < "${extends}"
tpm2_pcrextend "${events[@]}"
touch "${booted}"
echo "PCRs extended with the ${#events[@]} events of the boot log"
# A trapped signal ends the first wait early; the second lets swtpm save its state before the script exits.
wait "${swtpm_pid}" || wait "${swtpm_pid}"
