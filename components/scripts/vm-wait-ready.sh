#!/usr/bin/env bash
# Run on the VM over SSH: wait for cloud-init's bootstrap, then for the node to be Ready.
# cloud-init runs the bootstrap once per instance; when that run failed, its log is shown and the bootstrap
# runs again here, so every `pulumi up` retries it. BOOTSTRAP and BOOTSTRAP_ENV: the script and its settings.
set -euo pipefail
: "${BOOTSTRAP:?}" "${BOOTSTRAP_ENV:?}"

status=0
cloud-init status --wait >/dev/null || status=$?
# 2: done, with recoverable errors (warnings such as deprecated keys); the bootstrap itself ran.
if [[ "${status}" != 0 && "${status}" != 2 ]]; then
    echo "cloud-init did not finish the bootstrap (status ${status}); its log:" >&2
    sudo tail -n 50 /var/log/cloud-init-output.log >&2 || true
    echo "running the bootstrap again" >&2
    sudo "${BOOTSTRAP}" "${BOOTSTRAP_ENV}"
fi
sudo kubectl --kubeconfig /etc/kubernetes/admin.conf wait node --all --for=condition=Ready --timeout=600s
