"""Kubernetes providers: of a cluster the program creates (a Kind cluster or the VM's kubeadm), and of a cluster
the user already has (the `cluster` stack)."""

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


def existing_cluster_provider(
    name: str, kubeconfig: pulumi.Input[str], context: str, api_server: str, opts: pulumi.ResourceOptions
) -> k8s.Provider:
    """The provider of a cluster the program does not own, through one context of the user's kubeconfig.

    The kubeconfig (which may hold other contexts too) stays a secret: in the state, never in an output.
    """
    return k8s.Provider(
        name,
        kubeconfig=pulumi.Output.secret(kubeconfig),
        context=context,
        # The cluster is the API server the context points at. Rotated credentials, or the same cluster under a
        # renamed context, only update the provider; replacing it would re-create every object on a cluster
        # where they still exist, which a create refuses (AlreadyExists). Another API server is another
        # cluster: everything is created there, and deleted from the old one through its old configuration.
        cluster_identifier=api_server,
        # Each of these is read from a PULUMI_K8S_* variable of whoever runs `pulumi up` when not given, so it
        # is given, and always the safe way round for objects on somebody else's cluster:
        # - an unreachable cluster fails the run instead of dropping its objects from the state, which would
        #   leave them running there, forgotten by the next destroy;
        delete_unreachable=False,
        # - an object of the same name that is already there (the user's own) is an error, never adopted: a
        #   later destroy would delete it;
        upsert_existing_objects=False,
        # - a field another manager owns is a conflict, never taken over;
        enable_patch_force=False,
        enable_server_side_apply=True,
        opts=opts,
    )
