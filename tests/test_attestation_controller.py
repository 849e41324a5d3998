"""The attestation controller as the program deploys it: its image, certificate, RBAC, policy and metrics."""

from __future__ import annotations

import base64
import json
import re

import pulumi
import pulumi_command as command
import pulumi_kubernetes as k8s
import pytest
import yaml
from helpers import ROOT, env_of, kube_objects, pod_spec, settings_for
from test_topology import Graph

from components import images as images_module
from components.attestation_controller import AttestationController, AttestationControllerArgs, WatchedCluster
from components.images import KeylimeImagesArgs, build_specs, tree_digest
from components.pki import IssuedCertificate
from components.rollout import INPUTS_ANNOTATION
from components.settings import TAINT_EFFECTS, SettingsError
from tools.offline import ProgramRun, fake_pem, is_secret, run_declarations


def test_the_controller_image_is_built_from_controller_and_loaded_into_the_infra_cluster_only(swtpm):
    built = swtpm.named("images-controller").plain
    tag = built["imageName"]
    assert built["build"]["context"] == "controller"
    assert built["build"]["dockerfile"] == "images/controller/Dockerfile"
    assert built["skipPush"] is True
    infra_load = swtpm.named("infra-images")
    assert tag in infra_load.plain["triggers"] and tag in infra_load.plain["environment"]["IMAGES"].split()
    assert swtpm.named("images-controller").urn in infra_load.dependencies
    for load in swtpm.resources:
        if load.name.startswith("agents-") and load.name.endswith("-images"):
            assert tag not in load.plain["environment"]["IMAGES"].split()


def test_the_controller_tag_follows_its_sources_and_nothing_else(tmp_path, monkeypatch):
    (tmp_path / "controller" / "__pycache__").mkdir(parents=True)
    (tmp_path / "controller" / "reconcile.py").write_text("first\n")
    (tmp_path / "controller" / "requirements.txt").write_text("kubernetes==32.0.1\n")
    monkeypatch.setattr(images_module, "ROOT", tmp_path)
    first = tree_digest("controller")
    (tmp_path / "controller" / "__pycache__" / "reconcile.cpython-311.pyc").write_bytes(b"\0bytecode")
    assert tree_digest("controller") == first
    (tmp_path / "controller" / "reconcile.py").write_text("second\n")
    assert tree_digest("controller") != first
    (tmp_path / "controller" / "reconcile.py").write_text("first\n")
    (tmp_path / "controller" / "requirements.txt").write_text("kubernetes==33.1.0\n")
    assert tree_digest("controller") != first


def test_the_controller_image_runs_as_the_configured_user_from_a_pinned_python():
    (spec,) = build_specs(KeylimeImagesArgs(keylime_version="7.14.3", agent_version="0.2.9", uid=1234, gid=4321))["controller"]
    args = dict(spec.args)
    assert (args["KEYLIME_UID"], args["KEYLIME_GID"]) == ("1234", "4321")
    assert args["BASE_IMAGE"].startswith("docker.io/library/python:3.11.")
    assert spec.source_revision == tree_digest("controller")


# --- The component alone, from its Args --------------------------------------------------------------

CONTROLLER = "keylime-attestation-controller"
NODE_RULES = [
    {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "patch"]},
    {"apiGroups": [""], "resources": ["nodes/status"], "verbs": ["patch"]},
]
POD_RULES = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]
EVENT_RULES = [{"apiGroups": [""], "resources": ["events"], "verbs": ["create"]}]


def declare_alone(clusters: tuple[str, ...] = ("east", "west"), policy: str = '{"8": "aa"}', effect: str = "NoSchedule",
                  prometheus_operator: bool = False, ek_trust: str | None = None, mb_policy: str = "",
                  not_owned: tuple[str, ...] = ()) -> ProgramRun:
    """`not_owned`: clusters the program did not make (the `cluster` stack's), whose objects nothing deletes for it."""

    def declare() -> None:
        command_provider = command.Provider("command")
        local = pulumi.ResourceOptions(provider=command_provider)

        def cluster(name: str) -> tuple[k8s.Provider, command.local.Command]:
            machine = command.local.Command(f"{name}-cluster", create="true", opts=local)
            return k8s.Provider(f"{name}-k8s", kubeconfig="stand-in", opts=pulumi.ResourceOptions(depends_on=[machine])), machine

        infra_provider, infra_machine = cluster("infra")
        watched = []
        for name in clusters:
            provider, machine = cluster(name)
            namespace = k8s.core.v1.Namespace(f"{name}-namespace", metadata={"name": "keylime"},
                                              opts=pulumi.ResourceOptions(provider=provider))
            watched.append(WatchedCluster(name=name, api_server=f"https://{name}.example:6443", provider=provider,
                                          agent_namespace_ready=namespace,
                                          deleted_with=None if name in not_owned else machine))
        AttestationController(
            "alone",
            AttestationControllerArgs(
                image="example/controller:1",
                infra_provider=infra_provider,
                infra_ready=[infra_machine],
                infra_cluster=infra_machine,
                registrar_url="https://registrar.example:8891",
                verifier_url="https://verifier.example:8881",
                ca_cert_pem="CA",
                client_cert=IssuedCertificate(cert_pem=pulumi.Output.from_input("CERT"),
                                              private_key_pem=pulumi.Output.secret("KEY")),
                tpm_policy_json=policy,
                mb_policy_json=mb_policy,
                clusters=watched,
                uid=1234,
                gid=2345,
                taint_effect=effect,
                ek_trust_pem=ek_trust,
                prometheus_operator=prometheus_operator,
            ),
        )

    return run_declarations(declare)


@pytest.fixture(scope="module")
def alone() -> ProgramRun:
    return declare_alone()


def named(run: ProgramRun, kind: str, name: str, cluster: str | None = None):
    (found,) = [r for r in kube_objects(run, kind, cluster) if r.plain["metadata"]["name"] == name]
    return found


def test_alone_the_controller_runs_non_root_read_only_with_probes_on_its_metrics_port(alone):
    deployment = named(alone, "Deployment", CONTROLLER, "infra")
    assert deployment.plain["spec"]["replicas"] == 1
    spec = pod_spec(deployment)
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"] == {"runAsNonRoot": True, "runAsUser": 1234, "runAsGroup": 2345, "fsGroup": 2345,
                                       "seccompProfile": {"type": "RuntimeDefault"}}
    (container,) = spec["containers"]
    assert container["image"] == "example/controller:1"
    assert container["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": 1234, "runAsGroup": 2345, "allowPrivilegeEscalation": False,
        "privileged": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert set(container["resources"]) == {"requests", "limits"}
    metrics_port = env_of(container)["METRICS_PORT"]
    assert container["ports"] == [{"name": "metrics", "containerPort": int(metrics_port)}]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/metrics", "port": int(metrics_port)}
    service = named(alone, "Service", f"{CONTROLLER}-metrics", "infra").plain["spec"]
    assert service["ports"] == [{"name": "metrics", "port": int(metrics_port), "targetPort": int(metrics_port)}]
    assert service["selector"] == deployment.plain["spec"]["selector"]["matchLabels"]


def test_alone_every_file_the_controller_is_told_to_read_is_mounted_from_what_the_component_declares():
    alone = declare_alone(ek_trust="EK CA")
    spec = pod_spec(named(alone, "Deployment", CONTROLLER, "infra"))
    (container,) = spec["containers"]
    env = env_of(container)
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    config_maps = kube_objects(alone, "ConfigMap", "infra")
    sources = {("configMap", c.plain["metadata"]["name"]): set(c.plain["data"]) for c in config_maps}
    secrets = {s.plain["metadata"]["name"]: s.plain["stringData"] for s in kube_objects(alone, "Secret", "infra")}
    sources.update({("secret", name): set(data) for name, data in secrets.items()})
    for key in ("KEYLIME_CA", "CLIENT_CERT", "CLIENT_KEY", "POLICY_FILE", "MB_POLICY_FILE", "CLUSTERS_FILE", "EK_TRUST_DIR"):
        if key == "EK_TRUST_DIR":
            folder, file = env[key], "tpm-manufacturer.pem"
        else:
            folder, file = env[key].rsplit("/", 1)
        volume = volumes[mounts[folder]]
        source = (
            ("configMap", volume["configMap"]["name"]) if "configMap" in volume else ("secret", volume["secret"]["secretName"])
        )
        assert file in sources[source], key
    clusters = json.loads(secrets[f"{CONTROLLER}-clusters"]["clusters.json"])
    assert clusters == {name: f"{env['CLUSTERS_FILE'].rsplit('/', 1)[0]}/{name}.kubeconfig" for name in ("east", "west")}
    assert env["TAINT_EFFECT"] == "NoSchedule"
    assert (env["REGISTRAR_URL"], env["VERIFIER_URL"]) == ("https://registrar.example:8891", "https://verifier.example:8881")
    assert secrets[f"{CONTROLLER}-ek-trust"] == {"tpm-manufacturer.pem": "EK CA"}


def test_alone_without_a_trust_store_the_controller_is_not_told_to_check_eks(alone):
    (container,) = pod_spec(named(alone, "Deployment", CONTROLLER, "infra"))["containers"]
    assert "EK_TRUST_DIR" not in env_of(container)
    assert f"{CONTROLLER}-ek-trust" not in {s.plain["metadata"]["name"] for s in kube_objects(alone, "Secret", "infra")}


def test_alone_rbac_per_agent_cluster_is_exactly_what_the_controller_calls(alone):
    for cluster in ("east", "west"):
        (account,) = kube_objects(alone, "ServiceAccount", cluster)
        assert account.plain["metadata"] == {
            "name": CONTROLLER,
            "namespace": "keylime",
            "labels": account.plain["metadata"]["labels"],
        }
        (cluster_role,) = kube_objects(alone, "ClusterRole", cluster)
        assert cluster_role.plain["rules"] == NODE_RULES
        roles = {
            (r.plain["metadata"]["namespace"], r.plain["metadata"]["name"]): r.plain["rules"]
            for r in kube_objects(alone, "Role", cluster)
        }
        assert roles == {("keylime", f"{CONTROLLER}-pods"): POD_RULES, ("default", f"{CONTROLLER}-events"): EVENT_RULES}
        bindings = kube_objects(alone, "ClusterRoleBinding", cluster) + kube_objects(alone, "RoleBinding", cluster)
        assert len(bindings) == 3
        for binding in bindings:
            assert binding.plain["subjects"] == [{"kind": "ServiceAccount", "name": CONTROLLER, "namespace": "keylime"}]
    for kind in ("ServiceAccount", "ClusterRole", "Role", "ClusterRoleBinding", "RoleBinding"):
        assert kube_objects(alone, kind, "infra") == [], kind


def test_no_rule_anywhere_grants_secrets_or_a_wildcard(run):
    for program in (run("swtpm", agentClusters=3), run("hwtpm")):
        rules = [rule for kind in ("ClusterRole", "Role") for r in kube_objects(program, kind) for rule in r.plain["rules"]]
        assert rules
        for rule in rules:
            assert "secrets" not in rule["resources"] and "*" not in rule["resources"], rule
            assert "*" not in rule["verbs"] and "*" not in rule["apiGroups"], rule


def test_alone_each_cluster_s_kubeconfig_carries_only_its_own_service_account_token(alone):
    (clusters,) = [s for s in kube_objects(alone, "Secret", "infra") if s.plain["metadata"]["name"] == f"{CONTROLLER}-clusters"]
    assert is_secret(clusters.inputs["stringData"])
    for cluster in ("east", "west"):
        (token,) = kube_objects(alone, "Secret", cluster)
        assert token.plain["type"] == "kubernetes.io/service-account-token"
        assert token.plain["metadata"]["annotations"]["kubernetes.io/service-account.name"] == CONTROLLER
        assert "data" in token.additional_secret_outputs
        config = yaml.safe_load(clusters.plain["stringData"][f"{cluster}.kubeconfig"])
        ((entry,),) = [config["clusters"]]
        assert entry["cluster"]["server"] == f"https://{cluster}.example:6443"
        assert (
            entry["cluster"]["certificate-authority-data"]
            == base64.b64encode(fake_pem("CERTIFICATE", f"{token.name}-cluster-ca").encode()).decode()
        )
        ((user,),) = [config["users"]]
        assert user["user"] == {"token": f"token-of-{token.name}"}


def test_alone_the_policy_config_map_follows_both_policies_and_the_pod_restarts_exactly_on_a_change():
    first, changed, same, boot_changed = (
        declare_alone(policy='{"8": "aa"}', mb_policy='{"kernels": []}'),
        declare_alone(policy='{"8": "bb"}', mb_policy='{"kernels": []}'),
        declare_alone(policy='{"8": "aa"}', mb_policy='{"kernels": []}'),
        declare_alone(policy='{"8": "aa"}', mb_policy='{"kernels": [{}]}'),
    )

    def policy(run):
        return named(run, "ConfigMap", f"{CONTROLLER}-policy", "infra").plain["data"]

    def checksum(run):
        return named(run, "Deployment", CONTROLLER, "infra").plain["spec"]["template"]["metadata"]["annotations"][
            INPUTS_ANNOTATION
        ]

    assert policy(first) == {"tpm_policy.json": '{"8": "aa"}', "mb_policy.json": '{"kernels": []}'}
    assert policy(changed)["tpm_policy.json"] == '{"8": "bb"}'
    assert policy(boot_changed) == {"tpm_policy.json": '{"8": "aa"}', "mb_policy.json": '{"kernels": [{}]}'}
    assert checksum(first) == checksum(same)
    assert checksum(first) != checksum(changed) and checksum(first) != checksum(boot_changed)
    assert checksum(first) != checksum(declare_alone(clusters=("east",)))


def test_alone_prometheus_objects_exist_only_when_the_cluster_has_the_operator(alone):
    assert [r for r in alone.resources if r.type.startswith("kubernetes:monitoring.coreos.com")] == []
    program = declare_alone(prometheus_operator=True)
    (monitor,) = program.of_type("kubernetes:monitoring.coreos.com/v1:ServiceMonitor")
    (service,) = [s for s in kube_objects(program, "Service", "infra")]
    assert monitor.plain["spec"]["selector"]["matchLabels"].items() <= service.plain["metadata"]["labels"].items()
    assert [e["port"] for e in monitor.plain["spec"]["endpoints"]] == [p["name"] for p in service.plain["spec"]["ports"]]
    (rule,) = program.of_type("kubernetes:monitoring.coreos.com/v1:PrometheusRule")
    ((group,),) = [rule.plain["spec"]["groups"]]
    alerts = {alert["alert"]: alert["expr"] for alert in group["rules"]}
    assert set(alerts) == {"KeylimeAttestationFailed", "KeylimeAttestationStale", "KeylimeVerifierDown"}
    assert 'status="FAIL"' in alerts["KeylimeAttestationFailed"]
    exported = (ROOT / "controller" / "metrics.py").read_text()
    for expr in alerts.values():
        for metric in re.findall(r"\bkeylime_[a-z_]+", expr):
            assert f'"{metric}"' in exported, metric


# --- In the whole stack ------------------------------------------------------------------------------


def test_the_stack_deploys_one_controller_in_keylime_infra_with_its_policy_and_taint_effect(run):
    program = run("swtpm", tpmPolicy={"8": "ab" * 32}, taintEffect="NoExecute")
    policies = named(program, "ConfigMap", f"{CONTROLLER}-policy", "infra").plain["data"]
    assert json.loads(policies["tpm_policy.json"]) == {"8": "ab" * 32}
    enrollment = program.named("enrollment-enroll").plain["environment"]
    assert policies == {"tpm_policy.json": enrollment["TPM_POLICY"], "mb_policy.json": enrollment["MB_POLICY"]}
    (container,) = pod_spec(named(program, "Deployment", CONTROLLER, "infra"))["containers"]
    assert container["image"] == program.named("images-controller").plain["imageName"]
    env = env_of(container)
    assert env["TAINT_EFFECT"] == "NoExecute"
    assert env["REGISTRAR_URL"] == "https://keylime-registrar.keylime.svc.cluster.local:8891"
    assert env["VERIFIER_URL"] == "https://keylime-verifier.keylime.svc.cluster.local:8881"
    tls = named(program, "Secret", f"{CONTROLLER}-tls", "infra")
    assert tls.plain["stringData"]["client-cert.crt"] == fake_pem("CERTIFICATE", "pki-attestation-controller-cert")
    assert is_secret(tls.inputs["stringData"])


def test_each_agent_cluster_grants_the_controller_through_its_own_provider_and_is_dialled_by_its_node_name(run):
    program = run("swtpm", agentClusters=3)
    clusters = named(program, "Secret", f"{CONTROLLER}-clusters", "infra").plain["stringData"]
    assert set(json.loads(clusters["clusters.json"])) == {f"keylime-swtpm-agents-{index}" for index in (1, 2, 3)}
    for index in (1, 2, 3):
        assert [r.plain["rules"] for r in kube_objects(program, "ClusterRole", f"agents-{index}")] == [NODE_RULES]
        config = yaml.safe_load(clusters[f"keylime-swtpm-agents-{index}.kubeconfig"])
        assert config["clusters"][0]["cluster"]["server"] == f"https://keylime-swtpm-agents-{index}-control-plane:6443"
    hwtpm = run("hwtpm")
    assert [r.plain["rules"] for r in kube_objects(hwtpm, "ClusterRole", "vm")] == [NODE_RULES]


def test_the_monitoring_objects_follow_the_prometheus_operator_key(run):
    assert not [r for r in run("swtpm").resources if "monitoring.coreos.com" in r.type]
    with_operator = run("swtpm", prometheusOperator=True)
    monitors = [r for r in with_operator.resources if "monitoring.coreos.com" in r.type]
    assert sorted(r.plain["kind"] for r in monitors) == ["PrometheusRule", "ServiceMonitor"]
    assert all(r.provider.split("::")[-2] == "infra-k8s" for r in monitors)


def test_the_taint_effects_allowed_are_the_ones_the_controller_accepts():
    from controller.kube import TAINT_EFFECTS as CONTROLLER_EFFECTS

    assert TAINT_EFFECTS == CONTROLLER_EFFECTS
    with pytest.raises(SettingsError) as refused:
        settings_for("swtpm", taintEffect="NoExec", prometheusOperator="maybe")
    assert str(refused.value).count("keylime-push:") == 2
    assert "keylime-push:taintEffect: got 'NoExec'; allowed: NoSchedule | PreferNoSchedule | NoExecute" in str(refused.value)
    assert "keylime-push:prometheusOperator: got 'maybe'; allowed: true | false" in str(refused.value)


def test_the_controller_does_not_lengthen_or_join_the_agent_clusters_path(run):
    two, eight = Graph(run("swtpm", agentClusters=2)), Graph(run("swtpm", agentClusters=8))
    assert eight.longest_chain() == two.longest_chain()
    for graph in (two, eight):
        grants = [r for r in graph.run.resources if r.custom and r.name.startswith("controller-keylime-swtpm-agents-")]
        assert len(grants) >= 7 * len([r for r in graph.run.resources if r.type == "keylime:agents:AgentCluster"])
        for resource in graph.run.resources:
            if resource.custom and resource.name.startswith("agents-"):
                assert not any(d.split("::")[-1].startswith("controller-") for d in graph.all_waits(resource.urn)), resource.name
            if resource.custom and resource.name.startswith("controller-keylime-swtpm-agents-"):
                own = resource.name.split("-")[4]
                waited = {d.split("::")[-1] for d in graph.all_waits(resource.urn)}
                assert not any(w.startswith("infra-") for w in waited), resource.name
                assert not any(w.startswith("agents-") and w.split("-")[1] != own for w in waited), resource.name


def test_the_controller_acts_only_after_the_deploy_time_enrollment_and_does_not_wait_for_its_verdict(swtpm):
    graph = Graph(swtpm)
    enroll, verify = swtpm.named("enrollment-enroll").urn, swtpm.named("enrollment-verify").urn
    for name in ("controller-deployment", "controller-policy", "controller-clusters"):
        waits = graph.all_waits(swtpm.named(name).urn)
        assert enroll in waits and verify not in waits, name
    grants = [r for r in swtpm.resources if r.name.startswith("controller-keylime-swtpm-agents-")]
    assert grants
    for resource in grants:
        assert enroll not in graph.all_waits(resource.urn), resource.name


def test_swtpm_eks_are_signed_by_the_program_s_manufacturer_ca_which_the_controller_trusts_when_required(run):
    program = run("swtpm", agentClusters=2)  # the stack file requires EK certificates
    ca = program.named("pki-tpm-manufacturer-ca")
    assert ca.plain["isCaCertificate"] is True and ca.plain["setSubjectKeyId"] is True
    assert ca.plain["privateKeyPem"] == fake_pem("PRIVATE KEY", "pki-tpm-manufacturer-key")
    trust = named(program, "Secret", f"{CONTROLLER}-ek-trust", "infra")
    assert trust.plain["stringData"] == {"tpm-manufacturer.pem": fake_pem("CERTIFICATE", "pki-tpm-manufacturer-ca")}
    (container,) = pod_spec(named(program, "Deployment", CONTROLLER, "infra"))["containers"]
    assert "EK_TRUST_DIR" in env_of(container)
    for index in (1, 2):
        secret = named(program, "Secret", "keylime-tpm-manufacturer-ca", f"agents-{index}")
        assert secret.plain["stringData"] == {
            "signkey.pem": fake_pem("PRIVATE KEY", "pki-tpm-manufacturer-key"),
            "issuercert.pem": fake_pem("CERTIFICATE", "pki-tpm-manufacturer-ca"),
        }
        assert is_secret(secret.inputs["stringData"])
        (daemon_set,) = kube_objects(program, "DaemonSet", f"agents-{index}")
        spec = pod_spec(daemon_set)
        init = next(c for c in spec["initContainers"] if c["name"] == "swtpm-init")
        folder = env_of(init)["TPM_MANUFACTURER_CA_DIR"]
        mount = next(m for m in init["volumeMounts"] if m["mountPath"] == folder)
        volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
        assert volume["secret"]["secretName"] == "keylime-tpm-manufacturer-ca"
        for other in spec["containers"] + [c for c in spec["initContainers"] if c["name"] != "swtpm-init"]:
            assert mount["name"] not in {m["name"] for m in other.get("volumeMounts", [])}, other["name"]
    not_required = run("swtpm", requireEkCert=False)
    (container,) = pod_spec(named(not_required, "Deployment", CONTROLLER, "infra"))["containers"]
    assert "EK_TRUST_DIR" not in env_of(container)
    assert not [r for r in run("hwtpm").resources if "tpm-manufacturer" in r.name]


def test_alone_rbac_goes_with_a_cluster_the_program_made_and_is_deleted_one_by_one_on_one_it_did_not():
    run = declare_alone(not_owned=("west",))
    for cluster, deleted_with in (("east", run.named("east-cluster").urn), ("west", "")):
        granted = [r for r in run.resources if r.name.startswith(f"alone-{cluster}-")]
        assert len(granted) == 8
        assert {r.deleted_with for r in granted} == {deleted_with}, cluster


def test_hwtpm_eks_are_checked_against_the_local_ca_read_from_the_libvirt_host_after_the_vm(run):
    program = run("hwtpm", command_stdout=lambda name, inputs: "LOCALCA PEM\n" if name == "vm-ek-issuer" else "")
    reader = program.named("vm-ek-issuer")
    assert program.named("vm-domain").urn in reader.dependencies
    assert reader.plain["triggers"] == ["vm-domain-id"]  # read again for a new VM, and only then
    trust = named(program, "Secret", f"{CONTROLLER}-ek-trust", "infra")
    assert trust.plain["stringData"] == {"tpm-manufacturer.pem": "LOCALCA PEM\n"}
    (container,) = pod_spec(named(program, "Deployment", CONTROLLER, "infra"))["containers"]
    assert "EK_TRUST_DIR" in env_of(container)
    not_required = run("hwtpm", requireEkCert=False)
    assert not [r for r in not_required.resources if r.name == "vm-ek-issuer"]
    (container,) = pod_spec(named(not_required, "Deployment", CONTROLLER, "infra"))["containers"]
    assert "EK_TRUST_DIR" not in env_of(container)


def test_kubeadm_style_context_names_become_valid_secret_keys_that_stay_apart():
    names = ("kubernetes-admin@kubernetes", "kubernetes-admin_kubernetes", "edge")
    run = declare_alone(clusters=names)
    secrets = {s.plain["metadata"]["name"]: s.plain["stringData"] for s in kube_objects(run, "Secret", "infra")}
    files = secrets[f"{CONTROLLER}-clusters"]
    paths = json.loads(files["clusters.json"])
    assert set(paths) == set(names)
    keys = [path.rsplit("/", 1)[1] for path in paths.values()]
    assert len(set(keys)) == 3 and all(re.fullmatch(r"[-._a-zA-Z0-9]+", key) and key in files for key in keys)
    assert paths["edge"].endswith("/edge.kubeconfig")
