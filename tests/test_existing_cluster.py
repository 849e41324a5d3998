"""ExistingAgentCluster built alone from its Args: the agents on a cluster the user already has, hardware TPMs."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pulumi
import pulumi_docker as docker
import pulumi_kubernetes as k8s
import pytest
import yaml
from helpers import all_containers, checkov, env_of, kube_objects, pod_spec, validate_strictly
from test_manifests import waived_manifests, workloads

from components.agent_workload import TOLERATE_UNTRUSTED, AgentHost, AgentPodArgs
from components.device_plugin import NODE_STATE_CAPABILITIES
from components.existing_cluster import ExistingAgentCluster, ExistingAgentClusterArgs
from components.images import BuiltImage
from tools.offline import ProgramRun, is_secret, run_declarations, stack_config
from tools.policy_check import evaluate
from tools.render import write_manifests

API_SERVER = "https://edge.example.org:6443"
CONTEXT = "edge-admin@edge"
TOKEN = "kubeconfig-token-that-must-stay-secret"
# The user's kubeconfig: two contexts, the program is told which one is the agents' cluster.
KUBECONFIG = yaml.safe_dump({
    "apiVersion": "v1",
    "kind": "Config",
    "clusters": [{"name": "edge", "cluster": {"server": API_SERVER}}, {"name": "core", "cluster": {"server": "https://core:6443"}}],
    "users": [{"name": "admin", "user": {"token": TOKEN}}],
    "contexts": [{"name": CONTEXT, "context": {"cluster": "edge", "user": "admin"}},
                 {"name": "core", "context": {"cluster": "core", "user": "admin"}}],
    "current-context": "core",
})
TPM_NODES = {"keylime.dev/tpm": "true"}
UID, GID = 1234, 2345
IMAGE = "registry.example.org/keylime-agent:1"


def build(shown: dict[str, object], on_the_servers_cluster: bool = False) -> ProgramRun:
    """Only an ExistingAgentCluster, its image build a stand-in (with the servers' namespace, if on their cluster);
    `shown` receives what it shows as an AgentHost.

    The kubeconfig is handed over as a plain string: the component makes it a secret whatever it is given."""

    def declare() -> None:
        docker_provider = docker.Provider("docker")
        build = docker.Image("agent-build", image_name=IMAGE, skip_push=True,
                             opts=pulumi.ResourceOptions(provider=docker_provider))
        pod = AgentPodArgs(image=BuiltImage(IMAGE, build), agent_conf='[agent]\nuuid = "hash_ek"\n', uid=UID, gid=GID,
                           ca_cert_pem="CA")
        servers_namespace = None
        if on_the_servers_cluster:
            servers = k8s.Provider("servers-k8s", kubeconfig=KUBECONFIG, context=CONTEXT)
            servers_namespace = k8s.core.v1.Namespace("servers-namespace", metadata={"name": "keylime"},
                                                      opts=pulumi.ResourceOptions(provider=servers))
        host: AgentHost = ExistingAgentCluster(
            "edge",
            ExistingAgentClusterArgs(kubeconfig=KUBECONFIG, context=CONTEXT, api_server=API_SERVER,
                                     agent=pod, node_selector=TPM_NODES, servers_namespace=servers_namespace),
        )
        shown.update(host_name=host.host_name, api_server=host.api_server, machine=host.machine)
        host.identity.apply(lambda identity: shown.setdefault("identity", identity))
        host.provider.urn.apply(lambda urn: shown.setdefault("provider", urn))

    return run_declarations(declare)


@pytest.fixture(scope="module")
def existing() -> tuple[ProgramRun, dict[str, object]]:
    shown: dict[str, object] = {}
    return build(shown), shown


@pytest.fixture(scope="module")
def program(existing) -> ProgramRun:
    return existing[0]


def daemon_set(program: ProgramRun, name: str):
    (found,) = [d for d in kube_objects(program, "DaemonSet", "edge") if d.plain["metadata"]["name"] == name]
    return found


def agent_set(program):
    return daemon_set(program, "keylime-agent")


def plugin_set(program):
    return daemon_set(program, "generic-device-plugin")


def test_the_provider_is_the_users_context_with_the_kubeconfig_kept_secret(program):
    provider = program.named("edge-k8s")
    assert is_secret(provider.inputs["kubeconfig"]) and provider.plain["kubeconfig"] == KUBECONFIG
    assert provider.plain["context"] == CONTEXT
    # Rotated credentials or a renamed context update the provider; only another API server replaces it.
    assert provider.plain["clusterIdentifier"] == API_SERVER
    # Pinned, not read from the environment of whoever runs `pulumi up`: never adopt, force or forget objects.
    assert (provider.plain["deleteUnreachable"], provider.plain["upsertExistingObjects"]) == ("false", "false")
    assert (provider.plain["enablePatchForce"], provider.plain["enableServerSideApply"]) == ("false", "true")


def test_the_kubeconfig_reaches_nothing_but_the_provider(program):
    holding = [r.name for r in program.resources if TOKEN in repr(r.plain)]
    assert holding == ["edge-k8s"]
    assert not program.outputs


def test_every_kubernetes_object_goes_to_that_cluster(existing):
    program, shown = existing
    objects = [r for r in program.resources if r.type.startswith("kubernetes:") and r.custom]
    assert len(objects) == 6
    assert {r.provider.split("::")[-2] for r in objects} == {"edge-k8s"}
    assert {r.provider.rsplit("::", 1)[0] for r in objects} == {shown["provider"]}


def test_nothing_is_deleted_with_anything_so_destroy_deletes_every_object(existing):
    program, shown = existing
    assert [r.name for r in program.resources if r.deleted_with] == []
    assert shown["machine"] is None


def test_the_host_is_named_after_its_context_and_is_the_cluster_its_api_server_is(existing):
    _, shown = existing
    assert (shown["host_name"], shown["api_server"], shown["identity"]) == (CONTEXT, API_SERVER, API_SERVER)


def test_both_daemon_sets_run_only_on_the_selected_nodes_and_on_nodes_the_controller_gated(program):
    for found in (agent_set(program), plugin_set(program)):
        spec = pod_spec(found)
        assert spec["nodeSelector"] == TPM_NODES
        assert TOLERATE_UNTRUSTED in spec["tolerations"]


def test_the_agent_takes_the_hardware_tpm_as_its_non_root_user_with_nothing_extra(program):
    found = agent_set(program)
    spec = pod_spec(found)
    assert (spec["securityContext"]["runAsUser"], spec["securityContext"]["runAsGroup"]) == (UID, GID)
    assert spec["securityContext"]["runAsNonRoot"] is True and "supplementalGroups" not in spec["securityContext"]
    (agent,) = all_containers(found)
    assert agent["image"] == IMAGE
    assert env_of(agent)["TCTI"] == "device:/dev/tpmrm0"
    assert agent["resources"]["limits"]["squat.ai/tpm"] == "1"
    context = agent["securityContext"]
    assert (context["runAsUser"], context["runAsGroup"], context["runAsNonRoot"]) == (UID, GID, True)
    assert (context["privileged"], context["allowPrivilegeEscalation"]) == (False, False)
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert [v["hostPath"] for v in spec["volumes"] if "hostPath" in v] == [
        {"path": "/var/lib/keylime-push/agent", "type": "Directory"}
    ]


def test_only_the_device_plugin_is_privileged_or_root_and_it_says_why(program):
    privileged = {}
    for workload in kube_objects(program, "DaemonSet"):
        for container in all_containers(workload):
            context = container["securityContext"]
            if context.get("privileged") or context.get("runAsUser") == 0 or not context.get("runAsNonRoot"):
                privileged[container["name"]] = workload.plain["metadata"]["name"]
    assert privileged == {"node-state": "generic-device-plugin", "generic-device-plugin": "generic-device-plugin"}
    annotations = plugin_set(program).plain["metadata"]["annotations"]
    assert "ContainerCreating" in annotations["keylime-push.io/node-state"]
    waivers = dict(value.split("=", 1) for key, value in annotations.items() if key.startswith("checkov.io/skip"))
    for check in ("CKV_K8S_23", "CKV_K8S_37"):  # root, added capabilities: the node-state init container
        assert "node-state" in waivers[check] and "CHOWN" in waivers[check]


def test_the_node_state_container_has_only_what_its_script_needs(program):
    (init,) = pod_spec(plugin_set(program))["initContainers"]
    context = init["securityContext"]
    assert (context["runAsUser"], context["privileged"], context["allowPrivilegeEscalation"]) == (0, False, False)
    assert context["capabilities"] == {"drop": ["ALL"], "add": NODE_STATE_CAPABILITIES}
    assert context["readOnlyRootFilesystem"] is True and context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert init["image"] == IMAGE


def test_the_agent_starts_after_the_device_plugin_which_starts_after_its_image(program):
    assert plugin_set(program).urn in agent_set(program).dependencies
    assert program.named("agent-build").urn in plugin_set(program).dependencies


def test_on_the_servers_cluster_the_agents_join_their_namespace_and_declare_neither_it_nor_its_policy_again():
    program = build({}, on_the_servers_cluster=True)
    on_edge = [r for r in program.resources if r.type.startswith("kubernetes:") and r.provider.split("::")[-2] == "edge-k8s"]
    assert sorted(r.type.rsplit(":", 1)[-1] for r in on_edge) == ["ConfigMap", "DaemonSet", "DaemonSet", "Secret"]
    servers_namespace = program.named("servers-namespace").urn
    in_keylime = [r for r in on_edge if r.plain["metadata"]["namespace"] == "keylime"]
    assert len(in_keylime) == 3 and all(servers_namespace in r.dependencies for r in in_keylime)


def test_the_policy_pack_accepts_the_cluster_with_the_device_plugin_as_its_one_exception(program):
    assert [str(v) for v in evaluate(program, stack_config("hwtpm", {"agentUid": UID, "agentGid": GID}))] == []


# --- the node-state init container, run for real ---------------------------------------------------


def node_state_run(program: ProgramRun, node: Path, owner: tuple[int, int] = (UID, GID)):
    """The init container's command as the kubelet runs it, on `node` standing in for the node's filesystem:
    as root with the container's capabilities alone (setpriv), its hostPath mount moved under `node`."""
    spec = pod_spec(plugin_set(program))
    (init,) = spec["initContainers"]
    (mount,) = init["volumeMounts"]
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    assert volume["hostPath"]["type"] == "DirectoryOrCreate"
    on_node = node / volume["hostPath"]["path"].lstrip("/")
    on_node.mkdir(parents=True, exist_ok=True)  # the kubelet's DirectoryOrCreate
    command = [str(on_node) + a.removeprefix(mount["mountPath"]) if a.startswith(mount["mountPath"] + "/") else a
               for a in init["command"]]
    command[command.index(f"{UID}:{GID}")] = f"{owner[0]}:{owner[1]}"
    capabilities = ",".join(f"+{c.lower()}" for c in init["securityContext"]["capabilities"]["add"])
    setpriv = ["setpriv", "--reuid=0", "--regid=0", "--clear-groups", "--inh-caps=-all",
               f"--bounding-set=-all,{capabilities}", "--no-new-privs"]
    return subprocess.run([*setpriv, *command], capture_output=True, text=True, check=False)


def test_node_state_makes_the_agents_host_path_the_agents_on_a_fresh_node(program, tmp_path):
    result = node_state_run(program, tmp_path)
    assert result.returncode == 0, result.stderr
    # Exactly the hostPath the agent pod mounts as type Directory.
    (agent_path,) = [v["hostPath"]["path"] for v in pod_spec(agent_set(program))["volumes"] if "hostPath" in v]
    info = (tmp_path / agent_path.lstrip("/")).stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (UID, GID, 0o700)


def test_node_state_runs_again_on_every_start_and_hands_the_kept_state_to_a_new_agent_user(program, tmp_path):
    assert node_state_run(program, tmp_path).returncode == 0
    kept = tmp_path / "var/lib/keylime-push/agent/agent_data.json"
    kept.write_text("{}")
    os.chown(kept, UID, GID)
    kept.chmod(0o600)
    again = node_state_run(program, tmp_path, owner=(4321, 5432))
    assert again.returncode == 0, again.stderr
    assert (kept.stat().st_uid, kept.stat().st_gid) == (4321, 5432)
    assert stat.S_IMODE(kept.parent.stat().st_mode) == 0o700


# --- the manifests, validated offline --------------------------------------------------------------


@pytest.fixture(scope="module")
def manifests(program, tmp_path_factory) -> list[Path]:
    out = tmp_path_factory.mktemp("existing")
    assert write_manifests(program.resources, out) == 6
    return sorted((out / "manifests").rglob("*.yaml"))


def test_the_manifests_validate_strictly_for_the_kind_kubernetes_version(manifests):
    assert len(manifests) == 6
    result = validate_strictly(manifests)
    assert result.returncode == 0, result.stdout + result.stderr


def test_checkov_finds_nothing_beyond_the_annotated_waivers(manifests):
    failed, passed = checkov(manifests[0].parents[1])
    assert failed == [] and passed > 30


def test_every_waiver_is_an_annotation_with_its_reason_and_privilege_only_on_the_device_plugin(manifests):
    assert len(workloads(manifests)) == 2 and waived_manifests(manifests) >= workloads(manifests)
