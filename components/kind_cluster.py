"""KindCluster: one Kind cluster, its kubeconfig, its Kubernetes provider and the images loaded into it."""

from __future__ import annotations

import dataclasses

import pulumi
import pulumi_command as command
import pulumi_kubernetes as k8s

from components.images import BuiltImage
from components.kind import kind_config
from components.providers import cluster_provider

KIND_SCRIPT = "components/scripts/kind-cluster.sh"


@dataclasses.dataclass
class KindClusterArgs:
    cluster_name: str
    images: list[BuiltImage]
    """Each is loaded into the cluster's node once built."""
    host_ports: tuple[int, ...] = ()


class KindCluster(pulumi.ComponentResource):
    cluster: command.local.Command
    kubeconfig: pulumi.Output[str]
    provider: k8s.Provider
    images_loaded: command.local.Command

    def __init__(self, name: str, args: KindClusterArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("keylime:kind:KindCluster", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        config = kind_config(args.cluster_name, args.host_ports)
        environment = {"CLUSTER_NAME": args.cluster_name, "KIND_CONFIG": config}

        self.cluster = command.local.Command(
            f"{name}-cluster",
            create=f"{KIND_SCRIPT} create",
            delete=f"{KIND_SCRIPT} delete",
            environment=environment,
            # A changed Kind config needs a new cluster; the old one must go first, the name is a singleton.
            triggers=[config],
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(delete_before_replace=True)),
        )
        kubeconfig = command.local.Command(
            f"{name}-kubeconfig",
            create=f"{KIND_SCRIPT} kubeconfig",
            environment={"CLUSTER_NAME": args.cluster_name},
            triggers=[self.cluster.id],
            # The kubeconfig holds the cluster's admin credentials: secret in state, never in the log.
            logging=command.local.Logging.NONE,
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(additional_secret_outputs=["stdout"])),
        )
        self.kubeconfig = pulumi.Output.secret(kubeconfig.stdout)
        self.provider = cluster_provider(f"{name}-k8s", self.kubeconfig, self.cluster.id, child)
        tags = sorted(image.ref for image in args.images)
        self.images_loaded = command.local.Command(
            f"{name}-images",
            create=f"{KIND_SCRIPT} load",
            environment={"CLUSTER_NAME": args.cluster_name, "IMAGES": " ".join(tags)},
            # Tags carry the build's content hash: a new image means a new load, nothing else does.
            triggers=tags,
            opts=pulumi.ResourceOptions.merge(
                child, pulumi.ResourceOptions(depends_on=[self.cluster, *(image.build for image in args.images)])
            ),
        )
        self.register_outputs({"cluster_name": args.cluster_name})
