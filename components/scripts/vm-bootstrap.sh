#!/usr/bin/env bash
# Turn a fresh Ubuntu cloud VM into a one-node kubeadm cluster on containerd (run by cloud-init).
# Usage: vm-bootstrap.sh ENV_FILE   (KUBERNETES_MINOR, POD_CIDR, SERVICE_CIDR, NODE_ADDRESS)
# BOOTSTRAP_ROOT prefixes every file this script writes; the tests point it at a scratch folder.
set -euo pipefail

# shellcheck source=/dev/null
source "${1:?usage: $0 ENV_FILE}"
root="${BOOTSTRAP_ROOT:-}"
: "${KUBERNETES_MINOR:?}" "${POD_CIDR:?}" "${SERVICE_CIDR:?}" "${NODE_ADDRESS:?}"

# Kernel prerequisites of a Kubernetes node.
mkdir -p "${root}/etc/modules-load.d" "${root}/etc/sysctl.d"
printf 'overlay\nbr_netfilter\n' > "${root}/etc/modules-load.d/kubernetes.conf"
printf 'net.bridge.bridge-nf-call-iptables = 1\nnet.bridge.bridge-nf-call-ip6tables = 1\nnet.ipv4.ip_forward = 1\n' \
    > "${root}/etc/sysctl.d/kubernetes.conf"
modprobe overlay
modprobe br_netfilter
sysctl --system
swapoff -a

# kubeadm, kubelet, kubectl and the CNI plugins, pinned to one minor release.
mkdir -p "${root}/etc/apt/keyrings" "${root}/etc/apt/sources.list.d"
curl -fsSL "https://pkgs.k8s.io/core:/stable:/${KUBERNETES_MINOR}/deb/Release.key" \
    | gpg --dearmor --yes -o "${root}/etc/apt/keyrings/kubernetes.gpg"
echo "deb [signed-by=/etc/apt/keyrings/kubernetes.gpg] https://pkgs.k8s.io/core:/stable:/${KUBERNETES_MINOR}/deb/ /" \
    > "${root}/etc/apt/sources.list.d/kubernetes.list"
apt-get update
apt-get install -y kubelet kubeadm kubectl kubernetes-cni
apt-mark hold kubelet kubeadm kubectl

# containerd: systemd cgroups, and devices handed to a pod owned by its runAsUser/runAsGroup, which
# is what lets the non-root agent open /dev/tpmrm0. Both keys exist in the default configuration and
# are changed in place: a second copy of a key would stop containerd from starting.
config="${root}/etc/containerd/config.toml"
mkdir -p "$(dirname "${config}")"
containerd config default > "${config}"
for key in SystemdCgroup device_ownership_from_security_context; do
    if [[ "$(grep -c "^\s*${key} = " "${config}")" != 1 ]]; then
        echo "containerd's default configuration does not have exactly one ${key}; refusing to guess" >&2
        exit 1
    fi
    sed -i "s/^\(\s*${key} = \)false$/\1true/" "${config}"
    grep -q "^\s*${key} = true$" "${config}"
done
systemctl restart containerd

if [[ ! -f "${root}/etc/kubernetes/admin.conf" ]]; then
    # An earlier run stopped inside kubeadm init: its static pods and files would fail init's preflight.
    if [[ -n "$(ls -A "${root}/etc/kubernetes/manifests" 2>/dev/null)" ]]; then
        kubeadm reset --force
    fi
    kubeadm init \
        --pod-network-cidr "${POD_CIDR}" \
        --service-cidr "${SERVICE_CIDR}" \
        --apiserver-advertise-address "${NODE_ADDRESS}" \
        --apiserver-cert-extra-sans "${NODE_ADDRESS}"
fi
# One node: workloads run on the control plane. (On a re-run the taint is already gone, which kubectl reports as an error.)
kubectl --kubeconfig "${root}/etc/kubernetes/admin.conf" taint nodes --all node-role.kubernetes.io/control-plane- || true
echo "keylime-push: kubeadm node ready for workloads"
