"""The policy pack (policy/rules.py): on the program's own stacks, on minimal bad resources, on real breakages.

The program's resources reach the validate functions through tools/policy_check, which builds the
argument objects pulumi-policy builds from the engine's request (wire-format numbers, secrets
unwrapped, unknowns behind its proxy, the provider resource or the engine's default one).
"""

from __future__ import annotations

import copy
import dataclasses
import json

import pulumi
import pulumi_kubernetes as k8s
import pytest
from helpers import MEASURED
from pulumi.runtime import rpc
from pulumi_policy import (
    PolicyCustomTimeouts,
    PolicyProviderResource,
    PolicyResource,
    PolicyResourceOptions,
    ResourceValidationArgs,
    StackValidationArgs,
)
from pulumi_policy.proxy import UNKNOWN_STRING_VALUE

from components import agent_workload
from components.kind import kind_config
from policy import rules
from tools.example import with_example
from tools.offline import ProgramRun, run_program, stack_config
from tools.policy_check import Violation, engine_props, evaluate, resource_args, stack_args

ZEROS = "0" * 64
KEY = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIB\n-----END EC PRIVATE KEY-----\n"
KUBECONFIG = "apiVersion: v1\nkind: Config\nclusters: []\nusers:\n- name: admin\n  user: {token: x}\n"
EXPLICIT = PolicyProviderResource(
    "pulumi:providers:kubernetes", engine_props({}), "urn:pulumi:s::p::pulumi:providers:kubernetes::infra-k8s", "infra-k8s"
)
OPTIONS = PolicyResourceOptions(False, [], None, [], PolicyCustomTimeouts(0, 0, 0), [], None)


def args(resource_type: str, props: dict, name: str = "subject", provider=EXPLICIT, config=None) -> ResourceValidationArgs:
    """A minimal resource as pulumi-policy presents it."""
    return ResourceValidationArgs(
        resource_type, engine_props(props), f"urn:pulumi:s::p::{resource_type}::{name}", name, OPTIONS, provider, config or {}
    )


def violations(validate, validation_args) -> list[str]:
    found: list[str] = []
    validate(validation_args, lambda message, urn=None: found.append(message))
    return found


def summary(found: list[Violation]) -> set[tuple[str, str, int | str]]:
    """(policy, resource name, host port) for host-port violations; other violations keep their message."""
    result: set[tuple[str, str, int | str]] = set()
    for violation in found:
        name = violation.resource.rsplit("::", 1)[-1]
        port = next((int(word) for word in violation.message.split() if word.isdigit() and len(word) == 5), 0)
        result.add(
            (violation.policy, name, port)
            if violation.policy == "host-ports-bound"
            else (violation.policy, name, violation.message)
        )
    return result


@pytest.fixture(scope="module")
def stacks() -> dict[str, ProgramRun]:
    return {stack: run_program(stack, with_example(stack)) for stack in ("swtpm", "hwtpm", "cluster")}


def check(run: ProgramRun, stack: str, **overrides) -> list[Violation]:
    return evaluate(run, stack_config(stack, with_example(stack, overrides)))


def replaced(run: ProgramRun, name: str, change) -> ProgramRun:
    """`run` with the inputs of resource `name` changed by `change(inputs)` (a deep copy)."""
    resources = []
    for resource in run.resources:
        if resource.name == name:
            inputs = copy.deepcopy(resource.inputs)
            change(inputs)
            resource = dataclasses.replace(resource, inputs=inputs)
        resources.append(resource)
    return ProgramRun(resources=resources, outputs=run.outputs)


def unwrap(value):
    """A recorded input without its secret wrapper (tests edit the plain value inside)."""
    return value["value"] if isinstance(value, dict) and value.get(rpc._special_sig_key) == rpc._special_secret_sig else value


# --- the program's own stacks ---------------------------------------------------------------------


@pytest.mark.parametrize("stack", ["swtpm", "hwtpm", "cluster"])
def test_the_program_passes_every_policy(stacks, stack):
    assert summary(check(stacks[stack], stack)) == set()


@pytest.mark.parametrize("stack", ["swtpm", "hwtpm", "cluster"])
def test_every_resource_policy_applies_to_some_resource_of_the_program(stacks, stack):
    """No policy passes by finding nothing to look at: each one breaks on a resource the program declares."""
    run = stacks[stack]
    agent = next(r.name for r in run.resources if r.name.endswith("-agent") and r.type == "kubernetes:apps/v1:DaemonSet")
    breakages = {
        "agent-security-context": (
            agent,
            lambda i: i["spec"]["template"]["spec"]["containers"][0]["securityContext"].update(readOnlyRootFilesystem=False),
        ),
        "no-privilege-without-reason": (
            agent,
            lambda i: i["spec"]["template"]["spec"]["containers"][0]["securityContext"].update(privileged=True),
        ),
        "images-pinned": ("images-agent", lambda i: i.update(imageName="keylime-push/agent:latest")),
        "key-material-in-secrets": ("enrollment-enroll", lambda i: i.update(create=f"echo '{KEY}' | enroll.py add")),
        "tpm-policy-pcrs": ("enrollment-enroll", lambda i: unwrap(i["environment"]).update(TPM_POLICY=json.dumps({"10": ZEROS}))),
        "host-ports-bound": (
            agent,
            lambda i: i["spec"]["template"]["spec"]["containers"][0].update(ports=[{"containerPort": 1, "hostPort": 2}]),
        ),
    }
    # The Kind and VM stacks read a kubeconfig with a Command; the cluster stack has the user's, in its config.
    kubeconfig = {"swtpm": "infra-kubeconfig", "hwtpm": "vm-kubeconfig"}.get(stack)
    if kubeconfig is not None:
        breakages["key-material-in-secrets "] = (kubeconfig, lambda i: i.update(logging="stdoutAndStderr"))
    for policy, (name, change) in breakages.items():
        found = [
            v
            for v in check(replaced(run, name, change), stack)
            if v.policy == policy.strip() and v.resource.endswith(f"::{name}")
        ]
        assert found, policy


# --- a real breakage of the program, caught -------------------------------------------------------


def test_an_agent_made_root_is_refused(monkeypatch):
    def as_root(uid: int, gid: int) -> dict:
        return {**HARDENED, "runAsNonRoot": False, "runAsUser": 0, "runAsGroup": 0, "allowPrivilegeEscalation": True}

    monkeypatch.setattr(agent_workload, "container_security_context", as_root)
    found = [v for v in check(run_program("swtpm"), "swtpm") if v.policy != "host-ports-bound"]
    agent_violations = [v for v in found if v.policy == "agent-security-context"]
    assert {v.resource.rsplit("::", 1)[-1] for v in agent_violations} == {"agents-1-agent", "agents-2-agent"}
    assert len(agent_violations) == 6  # swtpm-init, swtpm and agent in each of the two DaemonSets
    message = next(v.message for v in agent_violations if "'agents-1-agent'" in v.message and "container 'agent'" in v.message)
    assert message == (
        "kubernetes:apps/v1:DaemonSet 'agents-1-agent' (keylime/keylime-agent), agent container 'agent': "
        "runAsNonRoot is not true; runAsUser is 0, not 490 (keylime-push:agentUid); runAsGroup is 0, not 490 "
        "(keylime-push:agentGid); allowPrivilegeEscalation is not false"
    )
    # The same workload is not a documented exception, so the general rule refuses it as well.
    assert {v.policy for v in found} == {"agent-security-context", "no-privilege-without-reason"}


def test_a_server_key_put_in_a_configmap_is_refused(monkeypatch):
    """The registrar's TLS files (a Pulumi secret) declared as a ConfigMap instead of a Secret."""
    real_secret = k8s.core.v1.Secret

    def secret_or_config_map(name, metadata=None, type=None, string_data=None, opts=None):
        if name == "infra-registrar-tls":
            return k8s.core.v1.ConfigMap(name, metadata=metadata, data=string_data, opts=opts)
        return real_secret(name, metadata=metadata, type=type, string_data=string_data, opts=opts)

    monkeypatch.setattr(k8s.core.v1, "Secret", secret_or_config_map)
    run = run_program("swtpm")
    assert run.named("infra-registrar-tls").type == "kubernetes:core/v1:ConfigMap"
    found = [v for v in check(run, "swtpm") if v.policy == "key-material-in-secrets"]
    assert [v.message for v in found] == [
        "kubernetes:core/v1:ConfigMap 'infra-registrar-tls' (keylime/keylime-registrar-tls): data.server-private.pem "
        "holds a private key; put it in a Kubernetes Secret (or a Command's environment) from a Pulumi secret, "
        "never in a plain object, a command line or a build argument"
    ]


def test_the_agent_uid_comes_from_the_stack_configuration(stacks):
    run = run_program("swtpm", {"agentUid": 1000, "agentGid": 1001})
    assert not [v for v in check(run, "swtpm", agentUid=1000, agentGid=1001) if v.policy == "agent-security-context"]
    # The same resources judged against another configured UID: every agent container is refused.
    found = [v for v in check(run, "swtpm", agentUid=2000, agentGid=1001) if v.policy == "agent-security-context"]
    assert len(found) == 6 and all("runAsUser is 1000, not 2000 (keylime-push:agentUid)" in v.message for v in found)


def test_without_a_stack_setting_the_policy_configuration_decides(stacks):
    pulumi.runtime.set_all_config({})
    daemon_set = stacks["swtpm"].named("agents-1-agent")
    assert violations(rules.validate_agent_security_context, resource_args(daemon_set, stacks["swtpm"])) == []
    found = violations(rules.validate_agent_security_context, resource_args(daemon_set, stacks["swtpm"], {"agentUid": 491}))
    assert len(found) == 3 and all("runAsUser is 490, not 491" in m for m in found)


def test_a_dropped_san_is_refused_with_the_address_the_agent_dials(stacks):
    def drop(name):
        return lambda inputs: inputs.update(
            dnsNames=[n for n in inputs["dnsNames"] if n != name], ipAddresses=[a for a in inputs["ipAddresses"] if a != name]
        )

    swtpm = replaced(stacks["swtpm"], "pki-verifier-csr", drop("keylime-swtpm-infra-control-plane"))
    found = [v for v in check(swtpm, "swtpm") if v.policy == "dialed-addresses-are-sans"]
    assert [v.message.split(", which")[0] for v in found] == [
        f"kubernetes:core/v1:ConfigMap 'agents-{n}-config' (keylime/keylime-agent-config): the agent dials the verifier at "
        "'keylime-swtpm-infra-control-plane'"
        for n in (1, 2)
    ]
    assert all(", which is not a SAN of tls:index/certRequest:CertRequest 'pki-verifier-csr'" in v.message for v in found)
    assert {v.resource for v in found} == {swtpm.named("pki-verifier-csr").urn}
    hwtpm = replaced(stacks["hwtpm"], "pki-registrar-csr", drop("192.168.150.1"))
    assert [("agent", "192.168.150.1")] == [
        ("agent", "192.168.150.1")
        for v in check(hwtpm, "hwtpm")
        if v.policy == "dialed-addresses-are-sans" and "the agent dials the registrar at '192.168.150.1'" in v.message
    ]


def test_the_documented_exception_must_keep_its_reason(stacks):
    def drop_privileged_reason(inputs):
        annotations = inputs["metadata"]["annotations"]
        for key in [k for k, v in annotations.items() if v.startswith("CKV_K8S_16=")]:
            del annotations[key]

    run = replaced(stacks["hwtpm"], "vm-device-plugin", drop_privileged_reason)
    messages = [v.message for v in check(run, "hwtpm") if v.policy == "no-privilege-without-reason"]
    assert messages == [
        "kubernetes:apps/v1:DaemonSet 'vm-device-plugin' (kube-system/generic-device-plugin) is a documented exception "
        "but does not say why: container 'generic-device-plugin' is privileged (annotate checkov.io/skipN: CKV_K8S_16=<why>)"
    ]


def test_binding_the_infra_ports_to_loopback_would_cut_the_vm_s_agent_off(stacks):
    """hwtpm's agent dials the host's libvirt address, so loopback-only publishing is refused as well."""

    def loopback(inputs):
        environment = unwrap(inputs["environment"])
        environment["KIND_CONFIG"] = environment["KIND_CONFIG"].replace("192.168.150.1", "127.0.0.1")

    hwtpm = check(replaced(stacks["hwtpm"], "infra-cluster", loopback), "hwtpm")
    assert [v.message for v in hwtpm] == [
        f"kubernetes:core/v1:ConfigMap 'vm-config' (keylime/keylime-agent-config): the agent dials the {server} at "
        f"192.168.150.1:{port} through the host, but Kind publishes that port on 127.0.0.1:{port}; publish it on 192.168.150.1"
        for server, port in (("registrar", 30890), ("verifier", 30881))
    ]
    # swtpm's agents reach the infra node on the kind network: loopback publishing is all they need.
    assert check(replaced(stacks["swtpm"], "infra-cluster", loopback), "swtpm") == []


def test_an_agent_port_without_a_node_port_is_refused(stacks):
    def move(inputs):
        inputs["spec"]["ports"][0]["nodePort"] = 30882

    found = [
        v.message
        for v in check(replaced(stacks["swtpm"], "infra-verifier-service", move), "swtpm")
        if v.policy == "agent-endpoints-published"
    ]
    assert found == [
        f"kubernetes:core/v1:ConfigMap 'agents-{n}-config' (keylime/keylime-agent-config): the agent dials the "
        "verifier on port 30881, "
        "but no NodePort or LoadBalancer Service exposes it"
        for n in (1, 2)
    ]


# --- each policy on a minimal bad resource ----------------------------------------------------------


def daemon_set(
    container_context: dict,
    pod_context: dict | None = None,
    labels=None,
    annotations=None,
    name="keylime-agent",
    namespace="keylime",
    image="keylime-push/agent:0.2.9-abc",
    **container,
) -> dict:
    return {
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels or {"app.kubernetes.io/name": "keylime-agent"},
            **({"annotations": annotations} if annotations else {}),
        },
        "spec": {
            "template": {
                "spec": {
                    "securityContext": pod_context or {},
                    "containers": [{"name": "agent", "image": image, "securityContext": container_context, **container}],
                }
            }
        },
    }


HARDENED = {
    "runAsNonRoot": True,
    "runAsUser": 490,
    "runAsGroup": 490,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


@pytest.fixture
def no_stack_config():
    pulumi.runtime.set_all_config({})


@pytest.mark.usefixtures("no_stack_config")
def test_agent_security_context_minimal():
    validate = rules.validate_agent_security_context
    assert violations(validate, args("kubernetes:apps/v1:DaemonSet", daemon_set(HARDENED))) == []
    for field, bad, said in (
        ("runAsNonRoot", False, "runAsNonRoot is not true"),
        ("runAsUser", 0, "runAsUser is 0, not 490"),
        ("runAsGroup", 0, "runAsGroup is 0, not 490"),
        ("allowPrivilegeEscalation", True, "allowPrivilegeEscalation is not false"),
        ("readOnlyRootFilesystem", False, "readOnlyRootFilesystem is not true"),
        ("capabilities", {"drop": ["NET_RAW"]}, "capabilities.drop does not contain ALL"),
        ("seccompProfile", {"type": "Unconfined"}, "seccompProfile.type is Unconfined, not RuntimeDefault"),
        ("privileged", True, "privileged is true"),
    ):
        found = violations(
            validate, args("kubernetes:apps/v1:DaemonSet", daemon_set({**HARDENED, field: bad}), name="agents-1-agent")
        )
        assert (
            len(found) == 1
            and said in found[0]
            and found[0].startswith(
                "kubernetes:apps/v1:DaemonSet 'agents-1-agent' (keylime/keylime-agent), agent container 'agent'"
            )
        ), (field, found)
    # Found by its command, too, without the label; the pod-level settings count where the container has none.
    unlabelled = daemon_set({**HARDENED, "runAsUser": None}, labels={"app": "x"}, command=["/bin/keylime_push_model_agent"])
    assert violations(validate, args("kubernetes:apps/v1:DaemonSet", unlabelled))[0].endswith(
        "runAsUser is None, not 490 (keylime-push:agentUid)"
    )
    unlabelled["spec"]["template"]["spec"]["securityContext"] = {"runAsUser": 490}
    assert violations(validate, args("kubernetes:apps/v1:DaemonSet", unlabelled)) == []


def test_no_privilege_without_reason_minimal():
    validate = rules.validate_no_privilege_without_reason
    assert violations(validate, args("kubernetes:apps/v1:Deployment", daemon_set(HARDENED, labels={"a": "b"}))) == []
    root = daemon_set({**HARDENED, "runAsUser": 0}, labels={"a": "b"}, name="tool", namespace="default")
    assert violations(validate, args("kubernetes:apps/v1:Deployment", root, name="tool")) == [
        "kubernetes:apps/v1:Deployment 'tool' (default/tool): container 'agent' may run as root (runAsNonRoot is not true, "
        "or runAsUser is 0). Only the documented exceptions ['kube-system/generic-device-plugin'] may; make this workload "
        "non-root and unprivileged"
    ]
    plugin = daemon_set(
        {"privileged": True},
        name="generic-device-plugin",
        namespace="kube-system",
        labels={"a": "b"},
        annotations={"checkov.io/skip1": "CKV_K8S_16=hands /dev/tpmrm0 to pods", "checkov.io/skip2": "CKV_K8S_20=privileged"},
    )
    found = violations(validate, args("kubernetes:apps/v1:DaemonSet", plugin))
    assert found == [
        "kubernetes:apps/v1:DaemonSet 'subject' (kube-system/generic-device-plugin) is a documented exception but does not "
        "say why: container 'agent' may run as root (runAsNonRoot is not true, or runAsUser is 0) (annotate "
        "checkov.io/skipN: CKV_K8S_23=<why>)"
    ]
    plugin["metadata"]["annotations"]["checkov.io/skip3"] = "CKV_K8S_23= "  # named, but no reason given
    assert (
        "(annotate checkov.io/skipN: CKV_K8S_23=<why>)" in violations(validate, args("kubernetes:apps/v1:DaemonSet", plugin))[0]
    )
    plugin["metadata"]["annotations"]["checkov.io/skip3"] = "CKV_K8S_23=its image runs as root"
    assert violations(validate, args("kubernetes:apps/v1:DaemonSet", plugin)) == []
    host_network = daemon_set(HARDENED, labels={"a": "b"})
    host_network["spec"]["template"]["spec"]["hostNetwork"] = True
    assert (
        "hostNetwork is true"
        in violations(
            validate,
            args(
                "kubernetes:core/v1:Pod", {"metadata": host_network["metadata"], "spec": host_network["spec"]["template"]["spec"]}
            ),
        )[0]
    )


def test_explicit_provider_minimal():
    validate = rules.validate_explicit_provider
    namespace = {"metadata": {"name": "keylime"}}
    assert violations(validate, args("kubernetes:core/v1:Namespace", namespace)) == []
    default = PolicyProviderResource(
        "pulumi:providers:kubernetes",
        engine_props({}),
        "urn:pulumi:s::p::pulumi:providers:kubernetes::default_4_34_2",
        "default_4_34_2",
    )
    assert violations(validate, args("kubernetes:core/v1:Namespace", namespace, name="ns", provider=default)) == [
        "kubernetes:core/v1:Namespace 'ns' (keylime) uses the default kubernetes provider "
        "(urn:pulumi:s::p::pulumi:providers:kubernetes::default_4_34_2); pass an explicit provider "
        "(a default Kubernetes provider deploys to whatever ~/.kube/config points at)"
    ]
    assert violations(validate, args("command:local:Command", {"create": "true"}, name="c", provider=None)) == [
        "command:local:Command 'c' names no provider"
    ]
    # A resource of the program's own components has no provider to check.
    assert violations(validate, args("keylime:pki:KeylimePki", {}, provider=None)) == []


def test_images_pinned_minimal():
    validate = rules.validate_images_pinned
    assert (
        violations(validate, args("kubernetes:apps/v1:DaemonSet", daemon_set(HARDENED, image="quay.io/x/y@sha256:" + "a" * 64)))
        == []
    )
    assert violations(validate, args("kubernetes:apps/v1:DaemonSet", daemon_set(HARDENED, image="localhost:5000/agent"))) == [
        "kubernetes:apps/v1:DaemonSet 'subject' (keylime/keylime-agent): container 'agent' image "
        "'localhost:5000/agent' has no tag (means latest); pin a version tag or a digest"
    ]
    assert (
        "is tagged latest"
        in violations(validate, args("kubernetes:apps/v1:DaemonSet", daemon_set(HARDENED, image="agent:latest")))[0]
    )
    image = {"imageName": "keylime-push/agent:0.2.9-abc", "build": {"args": {"BASE_IMAGE": "quay.io/keylime/keylime_agent"}}}
    assert violations(validate, args("docker:index/image:Image", image)) == [
        "docker:index/image:Image 'subject': build argument BASE_IMAGE 'quay.io/keylime/keylime_agent' has no tag "
        "(means latest); pin a version tag or a digest"
    ]
    kind = {"environment": {"KIND_CONFIG": "kind: Cluster\nnodes:\n- role: control-plane\n"}}
    assert violations(validate, args("command:local:Command", kind)) == [
        "command:local:Command 'subject': Kind node 0 image 'kindest/node (kind's default, unpinned)' has no tag "
        "(means latest); pin a version tag or a digest"
    ]


def test_key_material_in_secrets_minimal():
    validate = rules.validate_key_material_in_secrets
    data = {"metadata": {"name": "tls"}, "stringData": {"key.pem": KEY}}
    assert violations(validate, args("kubernetes:core/v1:Secret", data)) == []
    assert violations(
        validate, args("kubernetes:core/v1:ConfigMap", {"metadata": {"name": "tls"}, "data": {"key.pem": KEY}})
    ) == [
        "kubernetes:core/v1:ConfigMap 'subject' (tls): data.key.pem holds a private key; put it in a Kubernetes Secret "
        "(or a Command's environment) from a Pulumi secret, never in a plain object, a command line or a build argument"
    ]
    env = daemon_set(HARDENED, env=[{"name": "KUBECONFIG_DATA", "value": KUBECONFIG}])
    assert (
        "spec.template.spec.containers[0].env[0].value holds a kubeconfig"
        in violations(validate, args("kubernetes:apps/v1:DaemonSet", env))[0]
    )
    # A Command's environment is where the program hands it over (as a Pulumi secret); its command line is not.
    assert (
        violations(
            validate, args("command:local:Command", {"create": "enroll.py add", "environment": {"KUBECONFIG_DATA": KUBECONFIG}})
        )
        == []
    )
    assert (
        "triggers[0] holds a private key"
        in violations(validate, args("command:local:Command", {"create": "x", "triggers": [KEY]}))[0]
    )
    # A Command that prints a kubeconfig keeps it secret in the state and out of the log.
    prints = {"create": "kind-cluster.sh kubeconfig", "logging": "none"}
    secret_stdout = PolicyResourceOptions(False, [], None, [], PolicyCustomTimeouts(0, 0, 0), ["stdout"], None)
    kubeconfig_args = args("command:local:Command", prints, name="infra-kubeconfig")
    assert violations(validate, kubeconfig_args) == [
        "command:local:Command 'infra-kubeconfig' prints a kubeconfig: stdout is not in additionalSecretOutputs "
        "(the kubeconfig would sit in the state in plain text)"
    ]
    kubeconfig_args.opts = secret_stdout
    assert violations(validate, kubeconfig_args) == []
    kubeconfig_args.props = engine_props({"create": "kubectl --kubeconfig /etc/kubernetes/admin.conf wait node --all"})
    assert violations(validate, kubeconfig_args) == []  # uses one, prints none
    kubeconfig_args.props = engine_props({"create": "sudo cat /etc/kubernetes/admin.conf"})
    assert violations(validate, kubeconfig_args) == [
        "command:local:Command 'infra-kubeconfig' prints a kubeconfig: its logging shows stdout (set logging to none or stderr)"
    ]
    # Values other resources compute are unknown during preview: skipped, not an error (`up` sees them).
    assert violations(validate, args("command:local:Command", {"create": "x", "triggers": [UNKNOWN_STRING_VALUE]})) == []


def test_tpm_policy_minimal():
    validate = rules.validate_tpm_policy

    def enroll(policy) -> ResourceValidationArgs:
        return args(
            "command:local:Command",
            {"create": "enroll.py add", "environment": {"TPM_POLICY": json.dumps(policy)}},
            name="enrollment-enroll",
        )

    assert violations(validate, enroll({"8": ZEROS, "9": [ZEROS, "f" * 64]})) == []
    prefix = "command:local:Command 'enrollment-enroll': the TPM policy (environment TPM_POLICY) "
    assert violations(validate, enroll({})) == [
        prefix + "names no PCR (the verifier would accept any quote, and push agents fail with 'challenges expired')"
    ]
    assert violations(validate, enroll({"10": ZEROS})) == [prefix + "names PCR 10: IMA measurements change at runtime"]
    assert violations(validate, enroll({"16": ZEROS})) == [prefix + "names PCR 16: the debug PCR is resettable"]
    assert violations(validate, enroll({"24": ZEROS})) == [prefix + "PCR '24' is not 0..23"]
    assert violations(validate, enroll({"8": "zero"})) == [prefix + "PCR 8 is not a sha256 digest or a non-empty list of them"]
    assert violations(validate, args("command:local:Command", {"environment": {"TPM_POLICY": "[8]"}})) == [
        "command:local:Command 'subject': the TPM policy (environment TPM_POLICY) is not a JSON object of PCR -> digests"
    ]


def test_host_ports_bound_minimal():
    validate = rules.validate_host_ports_bound
    loopback = kind_config("keylime-infra", (30881,), "127.0.0.1")
    assert violations(validate, args("command:local:Command", {"environment": {"KIND_CONFIG": loopback}})) == []
    everywhere = kind_config("keylime-infra", (30881,), "0.0.0.0")
    assert violations(
        validate, args("command:local:Command", {"environment": {"KIND_CONFIG": everywhere}}, name="infra-cluster")
    ) == [
        "command:local:Command 'infra-cluster': Kind node 0 extraPortMappings publishes host port 30881 on every interface "
        "(listen address '0.0.0.0'); bind it to 127.0.0.1 or to the one address its clients dial"
    ]
    unset = "kind: Cluster\nnodes:\n- role: control-plane\n  extraPortMappings:\n  - {containerPort: 1, hostPort: 30881}\n"
    assert (
        "(listen address 'unset')"
        in violations(validate, args("command:local:Command", {"environment": {"KIND_CONFIG": unset}}))[0]
    )
    host_port = daemon_set(HARDENED, ports=[{"containerPort": 8080, "hostPort": 8080}])
    assert (
        "container 'agent' hostPort publishes host port 8080 on every interface"
        in violations(validate, args("kubernetes:apps/v1:DaemonSet", host_port))[0]
    )
    host_port["spec"]["template"]["spec"]["containers"][0]["ports"][0]["hostIP"] = "127.0.0.1"
    assert violations(validate, args("kubernetes:apps/v1:DaemonSet", host_port)) == []


def test_dialed_addresses_are_sans_minimal():
    def resource(resource_type: str, name: str, props: dict) -> PolicyResource:
        return PolicyResource(
            resource_type, engine_props(props), f"urn:pulumi:s::p::{resource_type}::{name}", name, OPTIONS, EXPLICIT, None, [], {}
        )

    agent_conf = '[agent]\nregistrar_ip = "infra"\nregistrar_port = 30890\nverifier_url = "https://[fd00::1]:30881"\n'
    config = resource(
        "kubernetes:core/v1:ConfigMap", "agents-1-config", {"metadata": {"name": "cfg"}, "data": {"agent.conf": agent_conf}}
    )

    def csr(server: str, dns: list[str], ips: list[str]) -> PolicyResource:
        return resource(
            "tls:index/certRequest:CertRequest",
            f"{server}-csr",
            {"subject": {"commonName": f"keylime-{server}"}, "dnsNames": dns, "ipAddresses": ips},
        )

    def run(*resources) -> list[tuple[str, str | None]]:
        found = []
        rules.validate_dialed_addresses_are_sans(
            # a callback with urn optional, as the engine's is; mypy cannot infer a lambda with a default against it
            StackValidationArgs(list(resources), {}), lambda m, urn=None: found.append((m, urn))  # type: ignore[misc]
        )
        return found

    assert run(config, csr("registrar", ["INFRA"], []), csr("verifier", [], ["fd00:0:0::1"])) == []
    assert run(config, csr("registrar", ["infra"], []), csr("verifier", ["infra"], [])) == [
        (
            "kubernetes:core/v1:ConfigMap 'agents-1-config' (cfg): the agent dials the verifier at 'fd00::1', which is "
            "not a SAN of "
            "tls:index/certRequest:CertRequest 'verifier-csr' (SANs: ['infra']); add it to the certificate "
            "(keylime-push:extraSans) or dial a listed name",
            "urn:pulumi:s::p::tls:index/certRequest:CertRequest::verifier-csr",
        )
    ]
    assert run(config, csr("registrar", ["infra"], [])) == [
        (
            "kubernetes:core/v1:ConfigMap 'agents-1-config' (cfg): the agent dials the verifier at 'fd00::1', but the "
            "stack issues no keylime-verifier certificate",
            None,
        )
    ]


def test_agent_endpoints_published_minimal():
    def resource(resource_type: str, name: str, props: dict) -> PolicyResource:
        return PolicyResource(
            resource_type, engine_props(props), f"urn:pulumi:s::p::{resource_type}::{name}", name, OPTIONS, EXPLICIT, None, [], {}
        )

    def agent(host: str) -> PolicyResource:
        conf = f'[agent]\nregistrar_ip = "{host}"\nregistrar_port = 30890\n'
        return resource("kubernetes:core/v1:ConfigMap", "cfg", {"metadata": {"name": "cfg"}, "data": {"agent.conf": conf}})

    def kind(address: str) -> PolicyResource:
        config = kind_config("keylime-infra", (30890,), address)
        return resource("command:local:Command", "infra-cluster", {"environment": {"KIND_CONFIG": config}})

    service = resource(
        "kubernetes:core/v1:Service", "svc", {"spec": {"type": "NodePort", "ports": [{"port": 8890, "nodePort": 30890}]}}
    )

    def run(*resources) -> list[str]:
        found: list[str] = []
        # a callback with urn optional, as the engine's is; mypy cannot infer a lambda with a default against it
        rules.validate_agent_endpoints_published(StackValidationArgs(list(resources), {}), lambda m, urn=None: found.append(m))  # type: ignore[misc]
        return found

    assert run(agent("192.168.150.1"), kind("192.168.150.1"), service) == []
    assert run(agent("192.168.150.1"), kind("0.0.0.0"), service) == []
    assert run(agent("keylime-infra-control-plane"), kind("127.0.0.1"), service) == []
    assert run(agent("192.168.150.1"), kind("127.0.0.1"), service) == [
        "kubernetes:core/v1:ConfigMap 'cfg' (cfg): the agent dials the registrar at 192.168.150.1:30890 through the host, "
        "but Kind publishes that port on 127.0.0.1:30890; publish it on 192.168.150.1"
    ]
    assert run(agent("keylime-infra-control-plane"), kind("127.0.0.1")) == [
        "kubernetes:core/v1:ConfigMap 'cfg' (cfg): the agent dials the registrar on port 30890, but no NodePort "
        "or LoadBalancer Service exposes it"
    ]
    # The user's own clusters: a LoadBalancer's port is what agents dial, at an address nothing here publishes.
    balancer = resource("kubernetes:core/v1:Service", "lb", {"spec": {"type": "LoadBalancer", "ports": [{"port": 30890}]}})
    assert run(agent("10.0.0.7"), balancer) == []
    internal = resource("kubernetes:core/v1:Service", "ip", {"spec": {"type": "ClusterIP", "ports": [{"port": 30890}]}})
    assert len(run(agent("10.0.0.7"), internal)) == 1


def test_secrets_reach_policies_unwrapped_as_pulumi_policy_presents_them(stacks):
    """The registrar's key is a Pulumi secret in the program; the policy reads it as plain text."""
    secret = stacks["swtpm"].named("infra-registrar-tls")
    assert unwrap(secret.inputs["stringData"]) != secret.inputs["stringData"]  # recorded with its secret mark
    props = resource_args(secret, stacks["swtpm"]).props
    assert props["stringData"]["server-private.pem"].startswith("-----BEGIN PRIVATE KEY-----")
    assert isinstance(stack_args(stacks["swtpm"]).resources[0], PolicyResource)


# --- measured boot (mbPolicy) -----------------------------------------------------------------------


@pytest.mark.parametrize("stack", ["swtpm", "hwtpm"])
def test_the_program_with_an_mb_policy_passes_every_policy(stack):
    assert summary(check(run_program(stack, MEASURED), stack, **MEASURED)) == set()


def test_tpm_policy_next_to_an_mb_policy_minimal():
    validate = rules.validate_tpm_policy

    def enroll(policy, mb_policy: str) -> ResourceValidationArgs:
        environment = {"TPM_POLICY": json.dumps(policy), "MB_POLICY": mb_policy}
        return args("command:local:Command", {"create": "enroll.py add", "environment": environment}, name="enrollment-enroll")

    assert violations(validate, enroll({}, MEASURED["mbPolicy"])) == []
    assert violations(validate, enroll({"23": ZEROS}, MEASURED["mbPolicy"])) == []
    assert violations(validate, enroll({"15": ZEROS}, MEASURED["mbPolicy"])) == [
        "command:local:Command 'enrollment-enroll': the TPM policy (environment TPM_POLICY) names PCR 15, which the "
        "measured-boot policy (MB_POLICY) accounts for: keylime_tenant refuses it"]
    assert len(violations(validate, enroll({}, ""))) == 1  # an empty MB_POLICY is none


@pytest.mark.usefixtures("no_stack_config")
def test_only_the_annotated_boot_log_reader_may_run_with_group_0():
    validate = rules.validate_agent_security_context
    reader = {"name": "boot-log", "image": "keylime-push/agent:0.2.9-abc", "securityContext": {**HARDENED, "runAsGroup": 0}}

    def with_init(container: dict, annotations=None) -> dict:
        workload = daemon_set(HARDENED, annotations=annotations)
        workload["spec"]["template"]["spec"]["initContainers"] = [container]
        return workload

    why = {rules.BOOT_LOG_ANNOTATION: "reads securityfs's 0440 root:root event log with group 0, nothing else"}
    assert violations(validate, args("kubernetes:apps/v1:DaemonSet", with_init(reader, why))) == []
    unexplained = violations(validate, args("kubernetes:apps/v1:DaemonSet", with_init(reader)))
    assert len(unexplained) == 1 and "agent container 'boot-log': runAsGroup is 0, not 490" in unexplained[0]
    other = violations(validate, args("kubernetes:apps/v1:DaemonSet", with_init({**reader, "name": "helper"}, why)))
    assert len(other) == 1 and "runAsGroup is 0" in other[0]
    root_reader = {**reader, "securityContext": {**HARDENED, "runAsGroup": 0, "runAsUser": 0}}
    as_root = violations(validate, args("kubernetes:apps/v1:DaemonSet", with_init(root_reader, why)))
    assert len(as_root) == 1 and "runAsUser is 0, not 490" in as_root[0]
