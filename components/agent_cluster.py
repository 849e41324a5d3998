"""AgentCluster: one Kind cluster `keylime-<stack>-agents-<n>` running the push agent beside a software TPM."""

from __future__ import annotations

import dataclasses

import pulumi
import pulumi_kubernetes as k8s

from components.agent_workload import AgentPodArgs, declare_agent_workload, node_state_dirs
from components.kind_cluster import KindCluster, KindClusterArgs, NodeState
from components.pki import IssuedCertificate

KIND_API_SERVER_PORT = 6443


@dataclasses.dataclass
class AgentClusterArgs:
    cluster_name: str
    owner: str
    """The stack that owns the Kind cluster (see KindClusterArgs)."""
    agent: AgentPodArgs
    tpm_manufacturer_ca: IssuedCertificate | None
    """The CA the software TPMs' EK certificates are signed with (the controller's EK trust store); None: each
    pod's swtpm makes a CA of its own, which nothing can check EKs against."""


class AgentCluster(pulumi.ComponentResource):
    """An `AgentHost`: one Kind cluster whose one node runs one agent."""

    kind: KindCluster
    host_name: str
    identity: pulumi.Output[str]
    daemon_set: k8s.apps.v1.DaemonSet
    provider: k8s.Provider
    api_server: str
    machine: pulumi.Resource | None

    def __init__(self, name: str, args: AgentClusterArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("keylime:agents:AgentCluster", name, None, opts)
        self.host_name = args.cluster_name
        self.kind = KindCluster(
            name,
            KindClusterArgs(
                cluster_name=args.cluster_name,
                owner=args.owner,
                images=[args.agent.image],
                # The node keeps the software TPM and the AK, given to the agent's user before the pod starts.
                node_state=NodeState(args.agent.uid, args.agent.gid, node_state_dirs("swtpm")),
            ),
            pulumi.ResourceOptions(parent=self),
        )
        self.identity = self.kind.cluster.id
        self.provider = self.kind.provider
        self.machine = self.kind.cluster
        # Every Kind node is on the `kind` Docker network under its container's name, which kubeadm puts in the
        # API server's certificate: what `kind get kubeconfig --internal` dials.
        self.api_server = f"https://{self.host_name}-control-plane:{KIND_API_SERVER_PORT}"
        self.daemon_set = declare_agent_workload(
            name,
            args.agent,
            "swtpm",
            pulumi.ResourceOptions(
                parent=self,
                provider=self.kind.provider,
                # Objects go when the cluster goes; deleting them one by one first would only slow destroy.
                deleted_with=self.kind.cluster,
                depends_on=self.kind.node_ready,
            ),
            tpm_manufacturer_ca=args.tpm_manufacturer_ca,
        )
        self.register_outputs({"cluster_name": self.host_name})
