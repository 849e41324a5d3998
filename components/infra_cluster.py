"""InfraCluster: the Kind cluster `keylime-<stack>-infra` with the keylime servers (KeylimeServers) on it."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol

import pulumi
import pulumi_kubernetes as k8s

from components.images import SERVER_COMPONENTS, BuiltImage
from components.keylime_servers import (
    Exposure,
    KeylimeServers,
    KeylimeServersArgs,
    NodePorts,
    ServerCertificates,
    SqliteDatabase,
    keylime_namespace,
)
from components.kind_cluster import KindCluster, KindClusterArgs


class InfraHost(Protocol):
    """Where the servers run (an InfraCluster on Kind, or a ServerCluster on the user's cluster): what the
    enrollment Command and the attestation controller need of it."""

    cluster_name: str
    kubeconfig: pulumi.Output[str]
    """Admin access for the program's own kubectl (a secret; never exported in plain text)."""
    context: str
    """The context of kubeconfig to use; empty: its current one."""
    identity: pulumi.Output[str]
    """Changes when the cluster is replaced, which means new servers and new enrollments."""
    provider: k8s.Provider
    machine: pulumi.Resource | None
    """What deletes the cluster's objects with it (a Kind cluster); None: each is deleted for real."""
    namespace: k8s.core.v1.Namespace
    images_ready: list[pulumi.Resource]
    """What puts the images where the cluster's nodes find them."""
    workloads: list[pulumi.Resource]
    """What is up once the servers serve."""


@dataclasses.dataclass
class InfraClusterArgs:
    cluster_name: str
    owner: str
    """The stack that owns the Kind cluster (see KindClusterArgs)."""
    images: dict[str, BuiltImage]
    """The registrar, verifier and tenant images, and every other image the cluster runs: all are kind-loaded."""
    configs: dict[str, str]
    """Each server's rendered keylime configuration: registrar.conf, verifier.conf, tenant.conf."""
    certificates: ServerCertificates
    uid: int
    gid: int
    """The user and group the servers run as."""
    registrar_node_port: int
    registrar_tls_node_port: int
    verifier_node_port: int
    listen_address: str
    """The one host address the NodePorts are published on."""
    listen_address_from: Sequence[pulumi.Resource] = ()
    """What brings `listen_address` to the host (hwtpm: the libvirt network): Docker cannot bind before it."""


class InfraCluster(pulumi.ComponentResource):
    """An `InfraHost` the program makes: one Kind cluster."""

    cluster_name: str
    kubeconfig: pulumi.Output[str]
    context: str
    identity: pulumi.Output[str]
    provider: k8s.Provider
    machine: pulumi.Resource | None
    images_ready: list[pulumi.Resource]
    kind: KindCluster
    servers: KeylimeServers
    namespace: k8s.core.v1.Namespace
    tenant: k8s.apps.v1.Deployment
    workloads: list[pulumi.Resource]

    def __init__(self, name: str, args: InfraClusterArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("keylime:infra:InfraCluster", name, None, opts)
        self.cluster_name = args.cluster_name
        self.kind = KindCluster(
            name,
            KindClusterArgs(
                cluster_name=args.cluster_name,
                owner=args.owner,
                images=list(args.images.values()),
                # Published on the host too: for the operator (swtpm), for the VM on its libvirt network (hwtpm).
                host_ports=(args.registrar_node_port, args.registrar_tls_node_port, args.verifier_node_port),
                listen_address=args.listen_address,
                after=args.listen_address_from,
            ),
            pulumi.ResourceOptions(parent=self),
        )
        self.kubeconfig, self.context, self.identity = self.kind.kubeconfig, "", self.kind.cluster.id
        self.provider, self.machine, self.images_ready = self.kind.provider, self.kind.cluster, [self.kind.images_loaded]
        # Objects go when the cluster goes; deleting them one by one first would only slow destroy down.
        on_cluster = pulumi.ResourceOptions(parent=self, provider=self.kind.provider, deleted_with=self.kind.cluster)
        self.namespace = keylime_namespace(name, on_cluster)
        self.servers = KeylimeServers(
            name,
            KeylimeServersArgs(
                images={component: args.images[component].ref for component in SERVER_COMPONENTS},
                configs=args.configs,
                certificates=args.certificates,
                uid=args.uid,
                gid=args.gid,
                exposure=Exposure(
                    "NodePort",
                    NodePorts(
                        registrar=args.registrar_node_port,
                        registrar_tls=args.registrar_tls_node_port,
                        verifier=args.verifier_node_port,
                    ),
                ),
                namespace=self.namespace,
                # One sqlite writer per server, on the node's local-path storage.
                database=SqliteDatabase(),
                deleted_with=self.kind.cluster,
                ready=[self.kind.images_loaded],
            ),
            on_cluster,
        )
        self.tenant = self.servers.tenant
        self.workloads = self.servers.workloads
        self.register_outputs({"cluster_name": args.cluster_name})
