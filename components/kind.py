"""Kind cluster configurations, rendered from Python data (no YAML templating)."""

from __future__ import annotations

import yaml

# The Kubernetes version every cluster runs; manifests are validated against the same version.
KUBERNETES_VERSION = "1.32"
KIND_NODE_IMAGE = "kindest/node:v1.32.2"


def kind_config(cluster: str, host_ports: tuple[int, ...] = (), listen_address: str = "127.0.0.1") -> str:
    """One control-plane node; `host_ports` are NodePorts also published on the host, on `listen_address` only."""
    node: dict[str, object] = {"role": "control-plane", "image": KIND_NODE_IMAGE}
    if host_ports:
        node["extraPortMappings"] = [
            {"containerPort": port, "hostPort": port, "listenAddress": listen_address, "protocol": "TCP"}
            for port in host_ports
        ]
    config = {"kind": "Cluster", "apiVersion": "kind.x-k8s.io/v1alpha4", "name": cluster, "nodes": [node]}
    return yaml.safe_dump(config, sort_keys=False)
