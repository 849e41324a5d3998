"""The agent DaemonSet as declared: non-root everywhere, the push agent's environment, swtpm beside it."""

from __future__ import annotations

import inspect
import tomllib

import pulumi
import pulumi_command as command
import pulumi_docker as docker
import pytest
from helpers import ROOT, all_containers, env_of, kube_objects, pod_spec, settings_for

from components import keylime_conf
from components.agent_cluster import AgentCluster, AgentClusterArgs
from components.agent_workload import AgentHost, AgentPodArgs
from components.existing_cluster import ExistingAgentCluster
from components.images import BuiltImage
from components.vtpm_vm import VtpmVm
from tools.offline import ProgramRun, fake_pem, run_declarations


def agent_daemon_sets(run):
    return kube_objects(run, "DaemonSet")


def test_one_agent_daemon_set_per_agent_cluster(run):
    program = run("swtpm", agentClusters=3)
    clusters = sorted(r.provider.split("::")[-2] for r in agent_daemon_sets(program))
    assert clusters == ["agents-1-k8s", "agents-2-k8s", "agents-3-k8s"]


@pytest.mark.parametrize(("uid", "gid"), [(490, 490), (1234, 2345)])
def test_every_container_runs_as_the_configured_non_root_user_with_nothing_extra(run, uid, gid):
    daemon_sets = agent_daemon_sets(run("swtpm", agentUid=uid, agentGid=gid))
    assert len(daemon_sets) == 2
    for daemon_set in daemon_sets:
        pod = pod_spec(daemon_set)["securityContext"]
        assert (pod["runAsUser"], pod["runAsGroup"], pod["fsGroup"], pod["runAsNonRoot"]) == (uid, gid, gid, True)
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
        assert "supplementalGroups" not in pod
        for container in all_containers(daemon_set):
            context = container["securityContext"]
            assert (context["runAsUser"], context["runAsGroup"]) == (uid, gid), container["name"]
            assert context["runAsNonRoot"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["privileged"] is False
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}
            assert context["readOnlyRootFilesystem"] is True


def test_the_agent_gets_the_push_model_environment(swtpm):
    (agent,) = [c for c in pod_spec(agent_daemon_sets(swtpm)[0])["containers"] if c["name"] == "agent"]
    env = env_of(agent)
    assert agent["command"] == ["/bin/keylime_push_model_agent"]
    # Exactly what 0.2.9 reads (agent_workload.agent_env says where); the rest is agent.conf's.
    assert env == {
        "KEYLIME_AGENT_CONTACT_IP": None,  # from the node (valueFrom), asserted below
        "KEYLIME_AGENT_CONFIG": f"{keylime_conf.CONF_DIR}/agent.conf",
        "TCTI": "swtpm:host=localhost,port=2321",
        "RUST_LOG": "keylime_push_model_agent=info,keylime=info",
    }
    mounts = {m["mountPath"]: m["name"] for m in agent["volumeMounts"]}
    assert mounts[keylime_conf.TLS_DIR] == "ca" and mounts[keylime_conf.CONF_DIR] == "config"


def test_the_ca_the_agent_trusts_comes_from_a_secret_holding_the_pki_ca(swtpm):
    volumes = {v["name"]: v for v in pod_spec(agent_daemon_sets(swtpm)[0])["volumes"]}
    secret_name = volumes["ca"]["secret"]["secretName"]
    (secret,) = [s for s in kube_objects(swtpm, "Secret", "agents-1") if s.plain["metadata"]["name"] == secret_name]
    assert set(secret.plain["stringData"]) == {keylime_conf.CA_CERT}
    assert secret.plain["stringData"][keylime_conf.CA_CERT] == fake_pem("CERTIFICATE", "pki-ca")


def test_agent_conf_in_the_config_map_is_the_rendered_one(run):
    program = run("swtpm", uuid="generate", verifierNodePort=31881)
    (config,) = kube_objects(program, "ConfigMap", "agents-1")
    agent = tomllib.loads(config.plain["data"]["agent.conf"])["agent"]
    assert (
        agent == tomllib.loads(keylime_conf.agent_conf(settings_for("swtpm", uuid="generate", verifierNodePort=31881)))["agent"]
    )
    assert agent["uuid"] == "generate" and agent["verifier_url"].endswith(":31881")


def test_swtpm_is_a_native_sidecar_started_after_its_state_and_before_the_agent(swtpm):
    spec = pod_spec(agent_daemon_sets(swtpm)[0])
    init, sidecar = spec["initContainers"]
    assert init["name"] == "swtpm-init" and "restartPolicy" not in init
    assert sidecar["name"] == "swtpm" and sidecar["restartPolicy"] == "Always"
    assert sidecar["startupProbe"]["exec"]["command"][0] == "swtpm_ioctl"
    command = " ".join(sidecar["command"])
    assert "type=tcp,port=2321,bindaddr=127.0.0.1" in command and "type=tcp,port=2322,bindaddr=127.0.0.1" in command


def test_the_swtpm_init_container_runs_the_repository_script(swtpm):
    (config,) = kube_objects(swtpm, "ConfigMap", "agents-2")
    script = (ROOT / "components" / "scripts" / "swtpm-init.sh").read_text()
    assert config.plain["data"]["swtpm-init.sh"] == script
    init = pod_spec(agent_daemon_sets(swtpm)[0])["initContainers"][0]
    assert init["command"] == ["/bin/bash", "/opt/keylime-push/swtpm-init.sh"]


def test_no_agent_pod_can_be_reached_from_outside(swtpm):
    policies = kube_objects(swtpm, "NetworkPolicy", "agents-1")
    assert [p.plain["spec"] for p in policies] == [{"podSelector": {}, "policyTypes": ["Ingress"]}]


def test_agent_pods_take_no_service_links_and_no_api_token(swtpm):
    daemon_sets = agent_daemon_sets(swtpm)
    assert len(daemon_sets) == 2
    for daemon_set in daemon_sets:
        spec = pod_spec(daemon_set)
        assert spec["enableServiceLinks"] is False
        assert spec["automountServiceAccountToken"] is False


@pytest.mark.parametrize("stack", ["swtpm", "hwtpm"])
def test_the_agent_registers_its_nodes_address_and_runs_on_a_node_the_controller_gated(run, stack):
    from controller.kube import TAINT_KEY

    for daemon_set in agent_daemon_sets(run(stack)):
        if daemon_set.plain["metadata"]["name"] != "keylime-agent":
            continue
        spec = pod_spec(daemon_set)
        (agent,) = [c for c in spec["containers"] if c["name"] == "agent"]
        (contact,) = [e for e in agent["env"] if e["name"] == "KEYLIME_AGENT_CONTACT_IP"]
        assert contact == {"name": "KEYLIME_AGENT_CONTACT_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}}
        assert {"key": TAINT_KEY, "operator": "Exists"} in spec["tolerations"]


def test_the_device_plugin_runs_on_a_node_the_controller_gated(hwtpm):
    from controller.kube import TAINT_KEY

    (plugin,) = [d for d in kube_objects(hwtpm, "DaemonSet", "vm") if d.plain["metadata"]["name"] == "generic-device-plugin"]
    assert {"key": TAINT_KEY, "operator": "Exists"} in pod_spec(plugin)["tolerations"]


# --- AgentCluster alone, from its Args -------------------------------------------------------------

ALONE_AGENT_CONF = '[agent]\nuuid = "alone"\n'


@pytest.fixture(scope="module")
def agent_cluster_alone() -> tuple[ProgramRun, dict[str, object]]:
    """Only an AgentCluster (the third), its image build a stand-in; also what it shows as an AgentHost."""
    shown: dict[str, object] = {}

    def declare() -> None:
        command_provider, docker_provider = command.Provider("command"), docker.Provider("docker")
        build = docker.Image("agent-build", image_name="example/agent:1", skip_push=True,
                             opts=pulumi.ResourceOptions(provider=docker_provider))
        pod = AgentPodArgs(image=BuiltImage("example/agent:1", build), agent_conf=ALONE_AGENT_CONF, uid=1234, gid=2345,
                           ca_cert_pem="CA")
        host: AgentHost = AgentCluster("alone", AgentClusterArgs("keylime-ci-agents-3", "keylime-push/ci", agent=pod,
                                                                   tpm_manufacturer_ca=None),
                                       pulumi.ResourceOptions(providers=[command_provider, docker_provider]))
        shown["host_name"] = host.host_name
        host.identity.apply(lambda identity: shown.setdefault("identity", identity))
        host.daemon_set.urn.apply(lambda urn: shown.setdefault("daemon_set", urn))

    return run_declarations(declare), shown


def test_alone_the_cluster_is_named_and_owned_as_told_and_runs_the_agent_from_its_args(agent_cluster_alone):
    program, _ = agent_cluster_alone
    environment = program.named("alone-cluster").plain["environment"]
    assert (environment["CLUSTER_NAME"], environment["CLUSTER_OWNER"]) == ("keylime-ci-agents-3", "keylime-push/ci")
    assert program.named("alone-node-state").plain["environment"]["NODE_STATE_OWNER"] == "1234:2345"
    (config,) = kube_objects(program, "ConfigMap", "alone")
    assert config.plain["data"]["agent.conf"] == ALONE_AGENT_CONF
    (secret,) = kube_objects(program, "Secret", "alone")
    assert secret.plain["stringData"] == {keylime_conf.CA_CERT: "CA"}
    (daemon_set,) = kube_objects(program, "DaemonSet", "alone")
    for container in all_containers(daemon_set):
        assert container["image"] == "example/agent:1"
        assert (container["securityContext"]["runAsUser"], container["securityContext"]["runAsGroup"]) == (1234, 2345)
    load = program.named("alone-images")
    assert program.named("agent-build").urn in load.dependencies and load.urn in daemon_set.dependencies


def test_alone_the_agent_host_is_the_cluster_its_identity_and_its_daemon_set(agent_cluster_alone):
    program, shown = agent_cluster_alone
    (daemon_set,) = kube_objects(program, "DaemonSet", "alone")
    assert shown == {"host_name": "keylime-ci-agents-3", "identity": "alone-cluster-id", "daemon_set": daemon_set.urn}


@pytest.mark.parametrize("host", [AgentCluster, VtpmVm, ExistingAgentCluster])
def test_every_agent_host_declares_the_agent_host_members_with_their_types(host):
    wanted = inspect.get_annotations(AgentHost, eval_str=True)
    assert set(wanted) == {"host_name", "identity", "daemon_set", "provider", "api_server", "machine"}
    hints = inspect.get_annotations(host, eval_str=True)
    assert {name: hints.get(name) for name in wanted} == wanted


# --- the agent's identity lives on the node --------------------------------------------------


def host_paths(daemon_set) -> dict[str, str]:
    """volume name -> hostPath of the agent pod, each of which must be of type Directory."""
    found = {}
    for volume in pod_spec(daemon_set)["volumes"]:
        if "hostPath" in volume:
            assert volume["hostPath"]["type"] == "Directory", volume
            found[volume["name"]] = volume["hostPath"]["path"]
    return found


def mount_of(daemon_set, container: str, volume: str) -> str:
    (found,) = [c for c in all_containers(daemon_set) if c["name"] == container]
    (mount,) = [m["mountPath"] for m in found["volumeMounts"] if m["name"] == volume]
    return mount


@pytest.mark.parametrize("stack", ["swtpm", "hwtpm"])
def test_the_agents_ak_file_lies_on_a_node_directory_not_in_the_pod(run, stack):
    program = run(stack)
    daemon_set = next(d for d in agent_daemon_sets(program) if d.plain["metadata"]["name"] == "keylime-agent")
    (config,) = [c for c in kube_objects(program, "ConfigMap") if c.plain["metadata"]["name"] == "keylime-agent-config"][:1]
    agent_data = tomllib.loads(config.plain["data"]["agent.conf"])["agent"]["agent_data_path"]
    mount = mount_of(daemon_set, "agent", "agent-state")
    assert agent_data.startswith(mount + "/")
    assert host_paths(daemon_set)["agent-state"] == "/var/lib/keylime-push/agent"


def test_the_software_tpms_state_lies_on_a_node_directory_for_every_container_that_uses_it(swtpm):
    for daemon_set in agent_daemon_sets(swtpm):
        assert host_paths(daemon_set) == {
            "agent-state": "/var/lib/keylime-push/agent",
            "swtpm-state": "/var/lib/keylime-push/swtpm",
        }
        init = next(c for c in all_containers(daemon_set) if c["name"] == "swtpm-init")
        assert mount_of(daemon_set, "swtpm-init", "swtpm-state") == env_of(init)["SWTPM_STATE_DIR"]
        assert mount_of(daemon_set, "swtpm", "swtpm-state") == env_of(init)["SWTPM_STATE_DIR"]


@pytest.mark.parametrize(("uid", "gid"), [(490, 490), (1234, 2345)])
def test_each_agent_clusters_node_is_prepared_for_exactly_those_directories_and_that_user_first(run, uid, gid):
    program = run("swtpm", agentUid=uid, agentGid=gid)
    for daemon_set in agent_daemon_sets(program):
        cluster = daemon_set.name.removesuffix("-agent")
        prepare = program.named(f"{cluster}-node-state")
        assert prepare.plain["create"].endswith("kind-cluster.sh node-state")
        assert prepare.plain["environment"]["NODE_STATE_OWNER"] == f"{uid}:{gid}"
        assert prepare.plain["environment"]["NODE_STATE_DIRS"].split() == sorted(host_paths(daemon_set).values())
        assert prepare.plain["triggers"] == [f"{cluster}-cluster-id"]
        assert prepare.urn in daemon_set.dependencies


def test_the_daemon_set_says_why_no_container_needs_root_for_its_host_paths(swtpm):
    for daemon_set in agent_daemon_sets(swtpm):
        why = daemon_set.plain["metadata"]["annotations"]["keylime-push.io/node-state"]
        assert "/var/lib/keylime-push/agent" in why and "CAP_CHOWN" in why and "node-state" in why
