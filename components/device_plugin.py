"""squat/generic-device-plugin on the agents' nodes: it advertises /dev/tpmrm0 as squat.ai/tpm, so that the agent
takes the TPM without privilege. Shared by VtpmVm and ExistingAgentCluster.

A function, not a component: it is one DaemonSet on the caller's cluster, with the caller's provider and
lifetime, and the VM's objects keep the URNs they had before it moved here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from components.agent_workload import NODE_STATE_ROOT, TOLERATE_UNTRUSTED, TPM_DEVICE
from components.pod_security import checkov_waivers, resources

DEVICE_PLUGIN_IMAGE = "ghcr.io/squat/generic-device-plugin:0.1.0"
DEVICE_PLUGIN_LABELS = {"app.kubernetes.io/name": "generic-device-plugin"}
PRIVILEGED = (
    "the device plugin registers with the kubelet and hands /dev/tpmrm0 to pods; it is the only privileged "
    "pod, so that the agent needs no privilege, capability or tss group"
)
NODE_STATE_SCRIPT = Path(__file__).with_name("scripts") / "node-state.sh"
# Where the node-state init container sees the node's NODE_STATE_ROOT.
NODE_STATE_MOUNT = "/node-state"
# What node-state.sh needs as root and nothing more: chown (CHOWN), chmod of a directory it has just given away
# (FOWNER), and, on a later start, walking into the agent's 0700 directory to hand it over again (DAC_READ_SEARCH).
NODE_STATE_CAPABILITIES = ["CHOWN", "DAC_READ_SEARCH", "FOWNER"]
NODE_STATE_ROOT_WHY = (
    "its node-state init container runs as root with CHOWN, DAC_READ_SEARCH and FOWNER only, to give the agent's "
    "hostPath to the agent's user on a node the program cannot log in to (keylime-push.io/node-state)"
)
NODE_STATE_WHY = (
    f"The node-state init container creates {NODE_STATE_ROOT}/agent and gives it to the agent's UID/GID (mode 0700) "
    "each time this pod starts on a node, before the device plugin advertises the TPM: on a cluster the program "
    "did not make nobody else prepares the node, and this pod is already the one exception to non-root. It runs "
    "node-state.sh as root with three capabilities, no privilege, escalation or writable root filesystem, and "
    f"mounts only {NODE_STATE_ROOT}. The agent's pod mounts that directory as type Directory, so on a node where it "
    "does not exist yet the agent waits in ContainerCreating, and the kubelet retries the mount until it does."
)


@dataclasses.dataclass(frozen=True)
class NodeStatePreparation:
    """The node directories the agent pod needs, made by the device plugin's pod (clusters the program did not make)."""

    image: str
    """An image with bash: the agent's."""
    uid: int
    gid: int
    dirs: tuple[str, ...]
    """Directories under NODE_STATE_ROOT, as agent_workload.node_state_dirs gives them."""


def _node_state_init(preparation: NodeStatePreparation) -> dict[str, Any]:
    inside = [f"{NODE_STATE_MOUNT}/{Path(d).relative_to(NODE_STATE_ROOT)}" for d in preparation.dirs]
    return {
        "name": "node-state",
        "image": preparation.image,
        "imagePullPolicy": "IfNotPresent",
        # The script itself, so that a change to it rolls the pods out and reruns it.
        "command": ["/bin/bash", "-c", NODE_STATE_SCRIPT.read_text(), "node-state.sh",
                    f"{preparation.uid}:{preparation.gid}", *inside],
        "securityContext": {
            "runAsUser": 0,
            "runAsGroup": 0,
            "runAsNonRoot": False,
            "privileged": False,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"], "add": NODE_STATE_CAPABILITIES},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "resources": resources("10m", "16Mi", "100m", "32Mi"),
        "volumeMounts": [{"name": "node-state", "mountPath": NODE_STATE_MOUNT}],
    }


def declare_device_plugin(
    name: str,
    opts: pulumi.ResourceOptions,
    node_selector: dict[str, str] | None = None,
    node_state: NodeStatePreparation | None = None,
) -> k8s.apps.v1.DaemonSet:
    """The device plugin DaemonSet in kube-system, on the nodes `node_selector` picks (every node without one)."""
    root_why = f"{PRIVILEGED}; {NODE_STATE_ROOT_WHY}" if node_state else PRIVILEGED
    device = f"name: tpm\ngroups:\n  - paths:\n      - path: {TPM_DEVICE}\n"
    node_state_waivers = {
        "CKV_K8S_25": NODE_STATE_ROOT_WHY,
        "CKV_K8S_15": "the node-state init container runs the agent's image, whose tag carries its build's content "
                      "hash, pulled as the agent pulls it",
    } if node_state else {}
    annotations = checkov_waivers(
        CKV_K8S_43="pinned to the upstream release tag 0.1.0; its digest cannot be checked offline here",
        CKV_K8S_16=PRIVILEGED,
        CKV_K8S_28=PRIVILEGED,
        CKV_K8S_20=PRIVILEGED,
        CKV_K8S_23=root_why,
        CKV_K8S_37=root_why,
        CKV_K8S_40=root_why,
        CKV_K8S_22="it writes its socket into the kubelet's device-plugins directory",
        CKV_K8S_21="node infrastructure lives in kube-system, beside the kubelet's other plugins",
        **node_state_waivers,
    )
    volumes: list[dict[str, Any]] = [
        {"name": "device-plugins", "hostPath": {"path": "/var/lib/kubelet/device-plugins"}},
        {"name": "dev", "hostPath": {"path": "/dev"}},
    ]
    pod: dict[str, Any] = {
        "priorityClassName": "system-node-critical",
        "automountServiceAccountToken": False,
        "tolerations": [{"operator": "Exists", "effect": "NoSchedule"}, TOLERATE_UNTRUSTED],
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
    }
    if node_selector:
        pod["nodeSelector"] = node_selector
    if node_state:
        annotations["keylime-push.io/node-state"] = NODE_STATE_WHY
        pod["initContainers"] = [_node_state_init(node_state)]
        volumes.append({"name": "node-state", "hostPath": {"path": NODE_STATE_ROOT, "type": "DirectoryOrCreate"}})
    pod["containers"] = [
        {
            "name": "generic-device-plugin",
            "image": DEVICE_PLUGIN_IMAGE,
            # Pulled by the node from the registry, unlike the images built here.
            "imagePullPolicy": "Always",
            # Advertised as squat.ai/tpm, one per node: the resource-managed TPM device.
            "args": ["--device", device],
            "ports": [{"name": "http", "containerPort": 8080}],
            "livenessProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 20},
            "readinessProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 10},
            "securityContext": {"privileged": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "resources": resources("50m", "16Mi", "100m", "64Mi"),
            "volumeMounts": [
                {"name": "device-plugins", "mountPath": "/var/lib/kubelet/device-plugins"},
                {"name": "dev", "mountPath": "/dev"},
            ],
        }
    ]
    pod["volumes"] = volumes
    return k8s.apps.v1.DaemonSet(
        f"{name}-device-plugin",
        metadata={"name": "generic-device-plugin", "namespace": "kube-system", "labels": DEVICE_PLUGIN_LABELS,
                  "annotations": annotations},
        spec={
            "selector": {"matchLabels": DEVICE_PLUGIN_LABELS},
            "template": {"metadata": {"labels": DEVICE_PLUGIN_LABELS}, "spec": pod},
        },
        opts=opts,
    )
