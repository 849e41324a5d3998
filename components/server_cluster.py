"""ServerCluster: the keylime servers on a cluster the user already has (the `cluster` stack), on PostgreSQL.

The InfraCluster of clusters the program does not make: no Kind, images pulled from a registry, the registrar
and verifier replicated on one database (KeylimeDatabase), reached through a LoadBalancer or NodePort Service.
"""

from __future__ import annotations

import dataclasses

import pulumi
import pulumi_kubernetes as k8s

from components.images import SERVER_COMPONENTS, BuiltImage
from components.keylime_servers import (
    Exposure,
    KeylimeServers,
    KeylimeServersArgs,
    PostgresDatabase,
    ServerCertificates,
    keylime_namespace,
)
from components.postgres import KeylimeDatabase, KeylimeDatabaseArgs
from components.providers import existing_cluster_provider


@dataclasses.dataclass
class ServerClusterArgs:
    kubeconfig: pulumi.Input[str]
    """The user's kubeconfig, a Pulumi secret."""
    context: str
    """The context of the servers' cluster in it."""
    api_server: str
    """That context's API server URL: what identifies the cluster."""
    images: dict[str, BuiltImage]
    """The registrar, verifier and tenant images, and every other image the cluster runs (the controller's),
    pushed to the registry the cluster pulls from."""
    configs: dict[str, str]
    certificates: ServerCertificates
    uid: int
    gid: int
    exposure: Exposure
    registrar_replicas: int
    verifier_replicas: int
    storage_class: str
    storage_size: str
    """The in-cluster PostgreSQL's volume (unused with database_url)."""
    database_url: pulumi.Input[str] | None = None
    """The user's PostgreSQL (a Pulumi secret); None: one runs in the namespace."""


class ServerCluster(pulumi.ComponentResource):
    """An `InfraHost`: where the servers, the enrollment's tenant and the attestation controller run."""

    cluster_name: str
    kubeconfig: pulumi.Output[str]
    context: str
    identity: pulumi.Output[str]
    provider: k8s.Provider
    machine: pulumi.Resource | None
    namespace: k8s.core.v1.Namespace
    images_ready: list[pulumi.Resource]
    servers: KeylimeServers
    workloads: list[pulumi.Resource]

    def __init__(self, name: str, args: ServerClusterArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("keylime:infra:ServerCluster", name, None, opts)
        self.cluster_name = self.context = args.context
        self.kubeconfig = pulumi.Output.secret(args.kubeconfig)
        self.identity = pulumi.Output.from_input(args.api_server)
        # Nothing deletes these objects with the cluster: destroy deletes each, and leaves the cluster as it was.
        self.machine = None
        self.provider = existing_cluster_provider(
            f"{name}-k8s", args.kubeconfig, args.context, args.api_server, pulumi.ResourceOptions(parent=self)
        )
        # Pulled from the registry: the pods wait for the pushes, not for a `kind load`.
        self.images_ready = [image.build for image in args.images.values()]
        on_cluster = pulumi.ResourceOptions(parent=self, provider=self.provider)
        self.namespace = keylime_namespace(name, on_cluster)
        database = KeylimeDatabase(
            f"{name}-database",
            KeylimeDatabaseArgs(
                provider=self.provider,
                namespace=self.namespace,
                storage_class=args.storage_class,
                storage_size=args.storage_size,
                external_url=args.database_url,
            ),
            pulumi.ResourceOptions(parent=self),
        )
        self.servers = KeylimeServers(
            name,
            KeylimeServersArgs(
                images={component: args.images[component].ref for component in SERVER_COMPONENTS},
                configs=args.configs,
                certificates=args.certificates,
                uid=args.uid,
                gid=args.gid,
                namespace=self.namespace,
                exposure=args.exposure,
                database=PostgresDatabase(
                    secret_name=database.secret_name,
                    registrar_url_key=database.registrar_url_key,
                    verifier_url_key=database.verifier_url_key,
                    registrar_url=database.url,
                    verifier_url=database.url,
                    registrar_replicas=args.registrar_replicas,
                    verifier_replicas=args.verifier_replicas,
                ),
                deleted_with=None,
                ready=[*self.images_ready, *database.ready],
            ),
            on_cluster,
        )
        self.workloads = self.servers.workloads
        self.register_outputs({"cluster_name": self.cluster_name})
