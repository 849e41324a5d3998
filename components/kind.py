"""Kind cluster configurations, rendered from Python data (no YAML templating)."""

from __future__ import annotations

import yaml

# The Kubernetes version every cluster runs; manifests are validated against the same version.
KUBERNETES_VERSION = "1.32"
KIND_NODE_IMAGE = "kindest/node:v1.32.2"


def kind_config(cluster: str, host_ports: tuple[int, ...] = ()) -> str:
    """One control-plane node; `host_ports` are NodePorts also published on every host address.

    Publishing on 0.0.0.0 is what lets a libvirt VM reach the NodePorts through the host's address on
    its network; agent Kind clusters reach them directly on the node's address on the `kind` network.
    """
    node: dict[str, object] = {"role": "control-plane", "image": KIND_NODE_IMAGE}
    if host_ports:
        node["extraPortMappings"] = [
            {"containerPort": port, "hostPort": port, "listenAddress": "0.0.0.0", "protocol": "TCP"}
            for port in host_ports
        ]
    config = {"kind": "Cluster", "apiVersion": "kind.x-k8s.io/v1alpha4", "name": cluster, "nodes": [node]}
    return yaml.safe_dump(config, sort_keys=False)
