"""ExistingAgentCluster: the push agent on a Kubernetes cluster the user already has, whose nodes have TPMs.

The program creates nothing but Kubernetes objects there, through one context of the user's kubeconfig: the
device plugin and the agent DaemonSet, on the nodes a label selects. It cannot log in to a node, so the device
plugin's pod (already the one privileged exception) prepares the agent's node directory (device_plugin.py).
"""

from __future__ import annotations

import dataclasses

import pulumi
import pulumi_kubernetes as k8s

from components.agent_workload import AgentPodArgs, declare_agent_workload, node_state_dirs
from components.device_plugin import NodeStatePreparation, declare_device_plugin
from components.providers import existing_cluster_provider


@dataclasses.dataclass
class ExistingAgentClusterArgs:
    kubeconfig: pulumi.Input[str]
    """The user's kubeconfig, a Pulumi secret; it may hold other contexts too."""
    context: str
    """The context of this cluster in it; also the host's name."""
    api_server: str
    """The context's API server URL (from the kubeconfig): what the attestation controller dials."""
    agent: AgentPodArgs
    node_selector: dict[str, str]
    """The labels of the nodes with a hardware TPM (/dev/tpmrm0), e.g. {"keylime.dev/tpm": "true"}."""
    servers_namespace: pulumi.Resource | None = None
    """The servers' keylime namespace when this is also their cluster: declared once, by them (with its deny-all
    ingress policy), so the agents join it; two declarations of one object would fail (AlreadyExists)."""


class ExistingAgentCluster(pulumi.ComponentResource):
    """An `AgentHost`: a cluster the program does not own, one agent on each selected node's hardware TPM."""

    host_name: str
    identity: pulumi.Output[str]
    daemon_set: k8s.apps.v1.DaemonSet
    provider: k8s.Provider
    api_server: str
    machine: pulumi.Resource | None

    def __init__(self, name: str, args: ExistingAgentClusterArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("keylime:agents:ExistingAgentCluster", name, None, opts)
        self.host_name = args.context
        self.api_server = args.api_server
        # Another API server is another cluster, with other TPMs: agents to enroll anew. Credentials rotated
        # or a context renamed are the same cluster (the provider's cluster_identifier says the same).
        self.identity = pulumi.Output.from_input(args.api_server)
        # Nothing deletes these objects with the cluster: destroy deletes each, and leaves the cluster as it was.
        self.machine = None
        self.provider = existing_cluster_provider(
            f"{name}-k8s", args.kubeconfig, args.context, args.api_server, pulumi.ResourceOptions(parent=self)
        )
        objects = pulumi.ResourceOptions(parent=self, provider=self.provider, depends_on=[args.agent.image.build])
        device_plugin = declare_device_plugin(
            name,
            objects,
            node_selector=args.node_selector,
            node_state=NodeStatePreparation(
                image=args.agent.image.ref, uid=args.agent.uid, gid=args.agent.gid, dirs=node_state_dirs("device")
            ),
        )
        self.daemon_set = declare_agent_workload(
            name,
            args.agent,
            "device",
            pulumi.ResourceOptions.merge(objects, pulumi.ResourceOptions(depends_on=[device_plugin])),
            node_selector=args.node_selector,
            shared_namespace=args.servers_namespace,
        )
        self.register_outputs({"context": args.context})
