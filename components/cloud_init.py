"""cloud-init for the hwtpm VM, rendered from Python data: a one-node kubeadm cluster on containerd.

The bootstrap itself is `scripts/vm-bootstrap.sh`, delivered as a file with its settings beside it,
so the same script runs in the VM and in the tests (with stand-ins for apt-get, kubeadm and friends).
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import yaml

from components.endpoints import network_host_address
from components.kind import KUBERNETES_VERSION
from components.settings import VM_POD_CIDR, VM_SERVICE_CIDR

VM_USER = "keylime-push"
VM_HOSTNAME = "keylime-vtpm"
BOOTSTRAP_SCRIPT = Path(__file__).with_name("scripts") / "vm-bootstrap.sh"
BOOTSTRAP_PATH = "/usr/local/sbin/keylime-push-bootstrap"
BOOTSTRAP_ENV_PATH = "/etc/keylime-push/bootstrap.env"
CNI_CONFIG_PATH = "/etc/cni/net.d/10-keylime-push-bridge.conflist"


def vm_address(network_cidr: str) -> str:
    """The VM's static address: the tenth of its network (the first is the host)."""
    return str(list(ipaddress.ip_network(network_cidr).hosts())[9])


def bridge_cni_config() -> str:
    """One node needs no overlay: a bridge with host-local addresses from the pod network is enough,
    and it comes with kubernetes-cni, so nothing is fetched from outside the package repositories."""
    pod_subnet = str(next(ipaddress.ip_network(VM_POD_CIDR).subnets(new_prefix=24)))
    return json.dumps(
        {
            "cniVersion": "1.0.0",
            "name": "keylime-push",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "cni0",
                    "isGateway": True,
                    "ipMasq": True,
                    "ipam": {"type": "host-local", "ranges": [[{"subnet": pod_subnet}]], "routes": [{"dst": "0.0.0.0/0"}]},
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        },
        indent=2,
    )


def bootstrap_env(network_cidr: str) -> str:
    values = {
        "KUBERNETES_MINOR": f"v{KUBERNETES_VERSION}",
        "POD_CIDR": VM_POD_CIDR,
        "SERVICE_CIDR": VM_SERVICE_CIDR,
        "NODE_ADDRESS": vm_address(network_cidr),
    }
    return "".join(f"{key}={value}\n" for key, value in values.items())


def user_data(network_cidr: str, ssh_authorized_key: str, host_key_private: str, host_key_public: str) -> str:
    """#cloud-config for the VM. The SSH host key is ours, so the host can pin it instead of trusting on first use."""
    config = {
        "hostname": VM_HOSTNAME,
        "users": [
            {
                "name": VM_USER,
                "shell": "/bin/bash",
                "lock_passwd": True,
                # The bootstrap, kubeconfig retrieval and image import run through sudo over SSH.
                "sudo": "ALL=(ALL) NOPASSWD:ALL",
                "ssh_authorized_keys": [ssh_authorized_key.strip()],
            }
        ],
        "ssh_pwauth": False,
        "disable_root": True,
        "ssh_deletekeys": True,
        # Only the host key type we provide (and pin); no other host keys to trust.
        "ssh_genkeytypes": ["ed25519"],
        "ssh_keys": {"ed25519_private": host_key_private, "ed25519_public": host_key_public.strip()},
        "package_update": True,
        "packages": ["containerd", "apt-transport-https", "ca-certificates", "curl", "gpg"],
        "write_files": [
            {"path": BOOTSTRAP_ENV_PATH, "permissions": "0644", "content": bootstrap_env(network_cidr)},
            {"path": BOOTSTRAP_PATH, "permissions": "0755", "content": BOOTSTRAP_SCRIPT.read_text()},
            {"path": CNI_CONFIG_PATH, "permissions": "0644", "content": bridge_cni_config()},
        ],
        "runcmd": [[BOOTSTRAP_PATH, BOOTSTRAP_ENV_PATH]],
    }
    return "#cloud-config\n" + yaml.safe_dump(config, sort_keys=False)


def network_config(network_cidr: str) -> str:
    """Netplan v2: a static address, so the VM's address is known before it boots."""
    prefix = ipaddress.ip_network(network_cidr).prefixlen
    host = network_host_address(network_cidr)
    config = {
        "version": 2,
        "ethernets": {
            "primary": {
                "match": {"name": "en*"},
                "addresses": [f"{vm_address(network_cidr)}/{prefix}"],
                "routes": [{"to": "default", "via": host}],
                "nameservers": {"addresses": [host]},
            }
        },
    }
    return yaml.safe_dump(config, sort_keys=False)
