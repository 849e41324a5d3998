"""The Kubernetes provider of one cluster the program creates (a Kind cluster or the VM's kubeadm)."""

from __future__ import annotations

import pulumi
import pulumi_kubernetes as k8s


def cluster_provider(
    name: str, kubeconfig: pulumi.Input[str], identity: pulumi.Input[str], opts: pulumi.ResourceOptions
) -> k8s.Provider:
    return k8s.Provider(
        name,
        kubeconfig=pulumi.Output.secret(kubeconfig),
        # Only a new cluster (a new identity) replaces the provider and everything it deployed;
        # a refreshed kubeconfig for the same cluster does not.
        cluster_identifier=identity,
        # `pulumi destroy` after the cluster vanished (or never came up) must not fail on its objects.
        delete_unreachable=True,
        opts=opts,
    )
