"""KindCluster: one Kind cluster, its kubeconfig, its Kubernetes provider and the images loaded into it."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pulumi
import pulumi_command as command
import pulumi_kubernetes as k8s

from components.images import BuiltImage
from components.kind import kind_config
from components.providers import cluster_provider

KIND_SCRIPT = "components/scripts/kind-cluster.sh"


@dataclasses.dataclass(frozen=True)
class NodeState:
    """Directories on the node that outlive pods, given to one user (see scripts/node-state.sh)."""

    uid: int
    gid: int
    directories: tuple[str, ...]


@dataclasses.dataclass
class KindClusterArgs:
    cluster_name: str
    owner: str
    """Who may adopt or delete the cluster (`<project>/<stack>`); kind-cluster.sh marks the node with it."""
    images: list[BuiltImage]
    """Each is loaded into the cluster's node once built."""
    host_ports: tuple[int, ...] = ()
    listen_address: str = "127.0.0.1"
    """The one host address `host_ports` are published on."""
    after: Sequence[pulumi.Resource] = ()
    """What must exist before the cluster is created (e.g. the network that brings `listen_address`)."""
    node_state: NodeState | None = None


class KindCluster(pulumi.ComponentResource):
    cluster: command.local.Command
    kubeconfig: pulumi.Output[str]
    provider: k8s.Provider
    images_loaded: command.local.Command
    node_ready: list[pulumi.Resource]
    """What workloads wait for: the images, and the node's state directories when there are any."""

    def __init__(self, name: str, args: KindClusterArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("keylime:kind:KindCluster", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        config = kind_config(args.cluster_name, args.host_ports, args.listen_address)
        environment = {"CLUSTER_NAME": args.cluster_name, "CLUSTER_OWNER": args.owner, "KIND_CONFIG": config}

        self.cluster = command.local.Command(
            f"{name}-cluster",
            create=f"{KIND_SCRIPT} create",
            delete=f"{KIND_SCRIPT} delete",
            environment=environment,
            # A changed Kind config needs a new cluster; the old one must go first, the name is a singleton.
            triggers=[config],
            opts=pulumi.ResourceOptions.merge(
                child, pulumi.ResourceOptions(delete_before_replace=True, depends_on=list(args.after))
            ),
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
        self.node_ready = [self.images_loaded]
        if args.node_state is not None:
            state = args.node_state
            self.node_ready.append(
                command.local.Command(
                    f"{name}-node-state",
                    create=f"{KIND_SCRIPT} node-state",
                    # A new owner (agentUid/agentGid) reruns it, handing the kept state to the new user.
                    environment={
                        "CLUSTER_NAME": args.cluster_name,
                        "NODE_STATE_OWNER": f"{state.uid}:{state.gid}",
                        "NODE_STATE_DIRS": " ".join(state.directories),
                    },
                    triggers=[self.cluster.id],
                    opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[self.cluster])),
                )
            )
        self.register_outputs({"cluster_name": args.cluster_name})
