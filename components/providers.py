"""The Kubernetes provider of one cluster the program creates (a Kind cluster or the VM's kubeadm)."""

from __future__ import annotations

import pulumi
import pulumi_kubernetes as k8s


def cluster_provider(
    name: str, kubeconfig: pulumi.Input[str], identity: pulumi.Input[str], opts: pulumi.ResourceOptions
) -> k8s.Provider:
    # No delete_unreachable: with it, one `pulumi refresh` while Docker is down drops every object from the
    # state and the next `up` fails with AlreadyExists. Destroy does not need it: every object is
    # deleted_with its cluster, so its delete is skipped. For a cluster that is really gone, see the README.
    return k8s.Provider(
        name,
        kubeconfig=pulumi.Output.secret(kubeconfig),
        # Only a new cluster (a new identity) replaces the provider and everything it deployed;
        # a refreshed kubeconfig for the same cluster does not.
        cluster_identifier=identity,
        opts=opts,
    )
