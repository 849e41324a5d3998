"""Pods follow what they read: each pod template carries a digest of its ConfigMap and Secret data."""

from __future__ import annotations

from typing import Any

import pytest
from helpers import kube_objects, pod_spec

from components.rollout import INPUTS_ANNOTATION, inputs_digest
from tools.offline import is_secret


def workloads(program) -> dict[tuple[str, str], Any]:
    """(provider, name) -> each Deployment and DaemonSet the program declares that mounts a ConfigMap or Secret."""
    found = {}
    for workload in kube_objects(program, "Deployment") + kube_objects(program, "DaemonSet"):
        if any("configMap" in v or "secret" in v for v in pod_spec(workload)["volumes"]):
            found[(workload.provider.split("::")[-2], workload.plain["metadata"]["name"])] = workload
    return found


def annotation(workload) -> str:
    return workload.plain["spec"]["template"]["metadata"]["annotations"][INPUTS_ANNOTATION]


def declared(program, provider: str, kind: str, name: str) -> dict:
    (found,) = [
        o for o in kube_objects(program, kind) if o.provider.split("::")[-2] == provider and o.plain["metadata"]["name"] == name
    ]
    return found.plain


def what_the_pod_reads(program, provider: str, workload) -> dict:
    """Recomputed from the declared objects: each mounted ConfigMap's (selected) data, each mounted Secret's data."""
    read = {}
    for volume in pod_spec(workload)["volumes"]:
        if "configMap" in volume:
            data = declared(program, provider, "ConfigMap", volume["configMap"]["name"])["data"]
            keys = [item["key"] for item in volume["configMap"].get("items", [])] or list(data)
            read[volume["configMap"]["name"]] = {key: data[key] for key in keys}
        elif "secret" in volume:
            read[volume["secret"]["secretName"]] = declared(program, provider, "Secret", volume["secret"]["secretName"])[
                "stringData"
            ]
    return read


@pytest.mark.parametrize("stack", ["swtpm", "hwtpm"])
def test_every_pod_template_carries_the_digest_of_exactly_what_its_pods_read(run, stack):
    program = run(stack)
    found = workloads(program)
    assert {name for _, name in found} >= {"keylime-registrar", "keylime-verifier", "keylime-tenant", "keylime-agent"}
    for (provider, _), workload in found.items():
        assert annotation(workload) == inputs_digest(what_the_pod_reads(program, provider, workload))


def digests(program) -> dict[tuple[str, str], str]:
    return {key: annotation(workload) for key, workload in workloads(program).items()}


def changed(before, after) -> set[str]:
    return {name for (provider, name), digest in before.items() if after[provider, name] != digest}


def test_a_node_port_change_rolls_the_agents_that_dial_it(run, swtpm):
    assert changed(digests(swtpm), digests(run("swtpm", verifierNodePort=31881))) == {"keylime-agent"}


def test_the_session_limit_growing_past_12_agents_rolls_the_verifier_and_nothing_else_of_the_infra(run):
    twelve, thirteen = digests(run("swtpm", agentClusters=12)), digests(run("swtpm", agentClusters=13))
    infra = lambda d: {k: v for k, v in d.items() if k[0] == "infra-k8s"}  # noqa: E731
    # The attestation controller rolls too: a 13th cluster is a 13th kubeconfig it reads.
    assert changed(infra(twelve), infra(thirteen)) == {"keylime-verifier", "keylime-attestation-controller"}


def test_nothing_rolls_when_nothing_changes(run, swtpm):
    assert digests(run("swtpm")) == digests(swtpm)


def test_the_digest_is_not_secret_so_a_rollout_shows_in_the_preview(swtpm):
    for workload in workloads(swtpm).values():
        assert not is_secret(workload.inputs["spec"])
        assert not is_secret(workload.inputs["spec"]["template"]["metadata"]["annotations"][INPUTS_ANNOTATION])
