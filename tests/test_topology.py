"""The shape of `pulumi up`: explicit providers, independent agent clusters, a critical path that does not grow."""

from __future__ import annotations

import functools

from helpers import kube_objects

from tools.offline import ProgramRun


class Graph:
    """What each resource waits for: its dependencies (a component stands for all it contains) and its provider."""

    def __init__(self, run: ProgramRun):
        self.run = run
        self.by_urn = {r.urn: r for r in run.resources}
        self.children: dict[str, list[str]] = {}
        for r in run.resources:
            self.children.setdefault(r.parent, []).append(r.urn)

    def custom_within(self, urn: str) -> set[str]:
        resource = self.by_urn.get(urn)
        if resource is not None and resource.custom:
            return {urn}
        found: set[str] = set()
        for child in self.children.get(urn, []):
            found |= self.custom_within(child)
        return found

    def waits_for(self, urn: str) -> set[str]:
        resource = self.by_urn[urn]
        direct: set[str] = set()
        for dependency in resource.dependencies:
            direct |= self.custom_within(dependency)
        if resource.provider:
            direct.add(resource.provider.rsplit("::", 1)[0])
        return direct & set(self.by_urn)

    def all_waits(self, urn: str) -> set[str]:
        seen: set[str] = set()
        stack = [urn]
        while stack:
            for dependency in self.waits_for(stack.pop()):
                if dependency not in seen:
                    seen.add(dependency)
                    stack.append(dependency)
        return seen

    def longest_chain(self) -> int:
        @functools.cache
        def depth(urn: str) -> int:
            return 1 + max((depth(d) for d in self.waits_for(urn)), default=0)

        return max(depth(r.urn) for r in self.run.resources if r.custom)


def test_every_custom_resource_names_an_explicit_provider(swtpm):
    providers = {r.urn for r in swtpm.resources if r.type.startswith("pulumi:providers:")}
    resources = [r for r in swtpm.resources if r.custom and not r.type.startswith("pulumi:providers:")]
    assert len(providers) >= 4 and len(resources) > 50
    for resource in resources:
        assert resource.provider.rsplit("::", 1)[0] in providers, resource.name


def test_each_cluster_gets_its_own_kubernetes_provider_keyed_to_its_cluster(run):
    program = run("swtpm", agentClusters=3)
    providers = program.of_type("pulumi:providers:kubernetes")
    assert sorted(p.name for p in providers) == ["agents-1-k8s", "agents-2-k8s", "agents-3-k8s", "infra-k8s"]
    for provider in providers:
        cluster = provider.name.removesuffix("-k8s")
        assert provider.plain["clusterIdentifier"] == f"{cluster}-cluster-id"
        # A refresh while Docker is down must fail, not drop the cluster's objects from the state.
        assert "deleteUnreachable" not in provider.plain
        (namespace,) = kube_objects(program, "Namespace", cluster)
        assert namespace.provider.startswith(provider.urn)


def test_no_agent_cluster_waits_for_another(run):
    program = run("swtpm", agentClusters=4)
    graph = Graph(program)
    agent_resources = [r for r in program.resources if r.custom and r.name.startswith("agents-")]
    assert {r.name.split("-")[1] for r in agent_resources} == {"1", "2", "3", "4"}
    for resource in agent_resources:
        own = resource.name.split("-")[:2]
        waits = [d.split("::")[-1] for d in graph.all_waits(resource.urn)]
        for name in waits:
            if name.startswith("agents-"):
                assert name.split("-")[:2] == own, (resource.name, name)


def test_agent_clusters_do_not_wait_for_the_infra_cluster(swtpm):
    graph = Graph(swtpm)
    agent_resources = [r for r in swtpm.resources if r.custom and r.name.startswith("agents-")]
    assert {r.name.split("-")[1] for r in agent_resources} == {"1", "2"}
    for resource in agent_resources:
        assert not any(d.split("::")[-1].startswith("infra-") for d in graph.all_waits(resource.urn)), resource.name


def test_certificates_and_images_wait_for_no_cluster(swtpm):
    graph = Graph(swtpm)
    independent = [r for r in swtpm.resources if r.custom and r.name.startswith(("pki-", "images-"))]
    assert {r.type for r in independent} >= {"tls:index/locallySignedCert:LocallySignedCert", "docker:index/image:Image"}
    for resource in independent:
        assert not any("-cluster" in d for d in graph.all_waits(resource.urn)), resource.name


def test_going_from_2_to_8_agent_clusters_adds_no_step_to_the_longest_chain(run):
    two, eight = Graph(run("swtpm", agentClusters=2)), Graph(run("swtpm", agentClusters=8))
    assert eight.longest_chain() == two.longest_chain()
    assert len(eight.run.resources) > len(two.run.resources)


def test_enrollment_waits_for_every_agent_daemon_set_and_the_tenant(run):
    program = run("swtpm", agentClusters=3)
    graph = Graph(program)
    waits = graph.all_waits(program.named("enrollment-enroll").urn)
    daemon_sets = kube_objects(program, "DaemonSet")
    assert len(daemon_sets) == 3
    for daemon_set in daemon_sets:
        assert daemon_set.urn in waits
    assert program.named("infra-tenant").urn in waits
