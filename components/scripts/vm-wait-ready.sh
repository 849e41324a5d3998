#!/usr/bin/env bash
# Run on the VM over SSH: wait for cloud-init's bootstrap, then for the node to be Ready.
set -euo pipefail
cloud-init status --wait >/dev/null || { sudo tail -n 50 /var/log/cloud-init-output.log >&2; exit 1; }
sudo kubectl --kubeconfig /etc/kubernetes/admin.conf wait node --all --for=condition=Ready --timeout=600s
