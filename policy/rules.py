"""The production guide and keylime-push's security rules as CrossGuard policies, all mandatory.

Each validate function is a plain function of pulumi-policy's own argument objects, so tests call it
directly; `__main__.py` only wraps POLICIES into the PolicyPack (which starts a server and never returns).

What the engine hands a Python policy, and what follows for these rules:
- `props` are the resource's inputs, secrets already unwrapped (pulumi-policy deserialises them without
  keeping the secret mark), so no rule can ask "is this value a Pulumi secret?". The key-material rule
  therefore checks where keys and kubeconfigs land: only in Kubernetes Secrets and in the inputs that
  pulumi-tls, the Kubernetes provider and Commands' environments take, never in plain objects or in
  anything shown in logs or diffs.
- During `pulumi preview`, values computed by other resources (certificates, kubeconfigs, cluster ids)
  are unknown; reading one raises UnknownValueError. Rules that scan values skip unknown ones, because
  `pulumi up` analyses every resource again with its inputs resolved, before creating it.
- The stack's configuration reaches the pack (the engine passes it as PULUMI_CONFIG and pulumi-policy
  loads it), so the agent's UID/GID are read from `keylime-push:agentUid`/`agentGid`, as the program
  reads them; the policy's own `agentUid`/`agentGid` config (default 490, the program's default) is used
  only when the stack does not set them.
"""

from __future__ import annotations

import configparser
import ipaddress
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import pulumi
import yaml
from pulumi_policy import (
    EnforcementLevel,
    PolicyConfigSchema,
    PolicyResource,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)
from pulumi_policy.proxy import UnknownValueError

PROJECT = "keylime-push"
DEFAULT_AGENT_ID = 490
# The documented exceptions: the only workloads that may run privileged or as root (README, "The hwtpm stack").
DEFAULT_EXCEPTIONS = ["kube-system/generic-device-plugin"]
AGENT_LABEL = ("app.kubernetes.io/name", "keylime-agent")
AGENT_BINARY = "keylime_push_model_agent"
WAIVER_ANNOTATION = re.compile(r"^checkov\.io/skip\d+$")

# The checkov rule each relaxation waives; an exception names it with its reason, the way the program
# already annotates its manifests (`checkov.io/skipN: CKV_K8S_16=<why>`).
PRIVILEGED, ESCALATION, ROOT, ADDED_CAPABILITIES = "CKV_K8S_16", "CKV_K8S_20", "CKV_K8S_23", "CKV_K8S_37"
HOST_PID, HOST_IPC, HOST_NETWORK = "CKV_K8S_17", "CKV_K8S_18", "CKV_K8S_19"

# Packages whose resources talk to something real through a provider; a default provider would pick
# up ambient credentials (for Kubernetes: ~/.kube/config, whatever cluster that points at).
PROVIDER_PACKAGES = ("kubernetes", "command", "docker", "tls", "libvirt")
SECRET_TYPE = "kubernetes:core/v1:Secret"
COMMAND_TYPES = ("command:local:Command", "command:remote:Command")
DOCKER_IMAGE_TYPE = "docker:index/image:Image"
CERT_REQUEST_TYPE = "tls:index/certRequest:CertRequest"
CONFIG_MAP_TYPE = "kubernetes:core/v1:ConfigMap"

# Where a pod spec sits in each workload kind (Patch variants are shaped the same).
POD_SPEC_PATHS = {
    "Pod": ("spec",),
    "Deployment": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "ReplicaSet": ("spec", "template", "spec"),
    "ReplicationController": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
}
CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")

PCR_RANGE = range(0, 24)
# PCR 10 holds IMA's running measurements and PCR 16 is the debug PCR: neither is a stable reference.
FORBIDDEN_PCRS = {10: "IMA measurements change at runtime", 16: "the debug PCR is resettable"}
# keylime's MEASUREDBOOT_PCRS: with a measured-boot policy (MB_POLICY) the boot log accounts for them, and
# keylime_tenant refuses a tpm_policy naming any of them.
MEASURED_BOOT_PCRS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14, 15)
# The one agent-pod container that may run with group 0 (to read securityfs's 0440 root:root UEFI event log),
# when the workload says why in this annotation; it stays non-root with every other rule.
BOOT_LOG_READER = "boot-log"
BOOT_LOG_ANNOTATION = "keylime-push/boot-log"
SHA256_HEX = re.compile(r"^[0-9a-fA-F]{64}$")
WILDCARD_ADDRESSES = ("", "0.0.0.0", "::", "[::]")
PRIVATE_KEY_PEM = re.compile(r"-----BEGIN ([A-Z0-9 ]+ )?PRIVATE KEY-----")


# ---------------------------------------------------------------------------------------------
# Reading values as pulumi-policy presents them (proxies that raise on unknown values)


def get(value: Any, *path: str | int, default: Any = None) -> Any:
    """`value[path[0]][path[1]]...`, or `default` when a step is missing or unknown at preview."""
    for step in path:
        try:
            if isinstance(step, int):
                value = value[step] if _is_sequence(value) else None
            else:
                value = value[step] if _is_mapping(value) and step in value else None
        except (UnknownValueError, IndexError):
            return default
        if value is None:
            return default
    return value


def _is_mapping(value: Any) -> bool:
    return isinstance(value, Mapping)


def _is_sequence(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


def items(value: Any) -> list[Any]:
    """The elements of a list value, known ones only."""
    if not _is_sequence(value):
        return []
    found = []
    for index in range(len(value)):
        element = get(value, index)
        if element is not None:
            found.append(element)
    return found


def leaves(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every known scalar under `value` with its path; unknown values are skipped (analysed again at `up`)."""
    if _is_mapping(value):
        for key in value:
            try:
                child = value[key]
            except UnknownValueError:
                continue
            yield from leaves(child, f"{path}.{key}" if path else str(key))
    elif _is_sequence(value):
        for index in range(len(value)):
            try:
                child = value[index]
            except UnknownValueError:
                continue
            yield from leaves(child, f"{path}[{index}]")
    else:
        yield path, value


def describe(args: ResourceValidationArgs | PolicyResource) -> str:
    """`<type> <name>`, and for Kubernetes objects their namespace/name, for messages."""
    kubernetes_name = object_name(args.props)
    return f"{args.resource_type} '{args.name}'" + (f" ({kubernetes_name})" if kubernetes_name else "")


def object_name(props: Any) -> str:
    name = get(props, "metadata", "name")
    if not isinstance(name, str):
        return ""
    namespace = get(props, "metadata", "namespace")
    return f"{namespace}/{name}" if isinstance(namespace, str) else name


def kind_of(resource_type: str) -> str:
    """`kubernetes:apps/v1:DaemonSet` -> `DaemonSet` (and `DaemonSetPatch` -> `DaemonSet`)."""
    if not resource_type.startswith("kubernetes:"):
        return ""
    return resource_type.rsplit(":", 1)[-1].removesuffix("Patch")


def pod_spec(resource_type: str, props: Any) -> Any:
    path = POD_SPEC_PATHS.get(kind_of(resource_type))
    return get(props, *path) if path else None


def containers(spec: Any) -> Iterator[Any]:
    for field in CONTAINER_LISTS:
        yield from items(get(spec, field))


def command_environment(props: Any) -> Any:
    return get(props, "environment", default={})


def stack_setting(key: str) -> str | None:
    """The stack's own configuration value for `keylime-push:<key>`, as the program reads it."""
    return pulumi.Config(PROJECT).get(key)


# ---------------------------------------------------------------------------------------------
# Agent containers: non-root at the configured UID/GID, no escalation, no capabilities, RuntimeDefault,
# read-only root filesystem.


def is_agent_pod(props: Any, spec: Any) -> bool:
    labels = [get(props, "metadata", "labels", default={}), get(props, "spec", "template", "metadata", "labels", default={})]
    if any(get(found, AGENT_LABEL[0]) == AGENT_LABEL[1] for found in labels):
        return True
    for container in containers(spec):
        command = [str(part) for part in items(get(container, "command")) + items(get(container, "args"))]
        if any(part.endswith(AGENT_BINARY) for part in command):
            return True
    return False


def configured_id(args: ResourceValidationArgs, key: str) -> int:
    value = stack_setting(key)
    if value is None:
        value = args.get_config().get(key, DEFAULT_AGENT_ID)
    return int(value)


def validate_agent_security_context(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    spec = pod_spec(args.resource_type, args.props)
    if spec is None or not is_agent_pod(args.props, spec):
        return
    uid, gid = configured_id(args, "agentUid"), configured_id(args, "agentGid")
    pod_context = get(spec, "securityContext", default={})
    for container in containers(spec):
        context = get(container, "securityContext", default={})

        def effective(field: str, context: Any = context) -> Any:
            own = get(context, field)
            return own if own is not None else get(pod_context, field)

        problems = []
        if effective("runAsNonRoot") is not True:
            problems.append("runAsNonRoot is not true")
        if effective("runAsUser") != uid:
            problems.append(f"runAsUser is {_plain(effective('runAsUser'))}, not {uid} (keylime-push:agentUid)")
        if effective("runAsGroup") != gid and not (effective("runAsGroup") == 0 and reads_boot_log(args.props, container)):
            problems.append(f"runAsGroup is {_plain(effective('runAsGroup'))}, not {gid} (keylime-push:agentGid)")
        if get(context, "allowPrivilegeEscalation") is not False:
            problems.append("allowPrivilegeEscalation is not false")
        if get(context, "privileged") is True:
            problems.append("privileged is true")
        if "ALL" not in items(get(context, "capabilities", "drop")):
            problems.append("capabilities.drop does not contain ALL")
        if items(get(context, "capabilities", "add")):
            problems.append(f"capabilities.add is {list(items(get(context, 'capabilities', 'add')))}")
        seccomp = get(context, "seccompProfile", "type") or get(pod_context, "seccompProfile", "type")
        if seccomp != "RuntimeDefault":
            problems.append(f"seccompProfile.type is {seccomp}, not RuntimeDefault")
        if get(context, "readOnlyRootFilesystem") is not True:
            problems.append("readOnlyRootFilesystem is not true")
        if problems:
            report_violation(f"{describe(args)}, agent container '{get(container, 'name')}': " + "; ".join(problems), None)


def reads_boot_log(props: Any, container: Any) -> bool:
    """The boot-log init step, on a workload whose annotation says why it reads securityfs with group 0."""
    reason = get(props, "metadata", "annotations", BOOT_LOG_ANNOTATION)
    return get(container, "name") == BOOT_LOG_READER and isinstance(reason, str) and len(reason) > 20


def _plain(value: Any) -> Any:
    """Numbers cross the wire as floats; print 0 rather than 0.0."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


# ---------------------------------------------------------------------------------------------
# Nothing privileged or root, except the documented exceptions, each with its reason annotated.


def waivers(props: Any) -> dict[str, str]:
    """check -> reason, from the workload's `checkov.io/skipN: CHECK=reason` annotations."""
    found: dict[str, str] = {}
    for key, value in leaves(get(props, "metadata", "annotations", default={})):
        if WAIVER_ANNOTATION.match(key) and isinstance(value, str) and "=" in value:
            check, reason = value.split("=", 1)
            found[check.strip()] = reason.strip()
    return found


def relaxations(spec: Any) -> list[tuple[str, str]]:
    """(check, what) for every privilege the pod spec asks for."""
    found: list[tuple[str, str]] = []
    for field, check in (("hostPID", HOST_PID), ("hostIPC", HOST_IPC), ("hostNetwork", HOST_NETWORK)):
        if get(spec, field) is True:
            found.append((check, f"{field} is true"))
    pod_context = get(spec, "securityContext", default={})
    for container in containers(spec):
        name = get(container, "name")
        context = get(container, "securityContext", default={})
        non_root = get(context, "runAsNonRoot", default=get(pod_context, "runAsNonRoot"))
        user = get(context, "runAsUser", default=get(pod_context, "runAsUser"))
        if get(context, "privileged") is True:
            found.append((PRIVILEGED, f"container '{name}' is privileged"))
        if get(context, "allowPrivilegeEscalation") is not False:
            found.append((ESCALATION, f"container '{name}' may escalate privileges (allowPrivilegeEscalation is not false)"))
        if user == 0 or non_root is not True:
            found.append((ROOT, f"container '{name}' may run as root (runAsNonRoot is not true, or runAsUser is 0)"))
        added = items(get(context, "capabilities", "add"))
        if added:
            found.append((ADDED_CAPABILITIES, f"container '{name}' adds capabilities {list(added)}"))
    return found


def validate_no_privilege_without_reason(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    spec = pod_spec(args.resource_type, args.props)
    if spec is None:
        return
    asked = relaxations(spec)
    if not asked:
        return
    exceptions = list(args.get_config().get("exceptions", DEFAULT_EXCEPTIONS))
    name = object_name(args.props)
    if name not in exceptions:
        report_violation(
            f"{describe(args)}: " + "; ".join(what for _, what in asked)
            + f". Only the documented exceptions {exceptions} may; make this workload non-root and unprivileged",
            None,
        )
        return
    reasons = waivers(args.props)
    unexplained = [f"{what} (annotate checkov.io/skipN: {check}=<why>)" for check, what in asked if not reasons.get(check)]
    if unexplained:
        report_violation(f"{describe(args)} is a documented exception but does not say why: " + "; ".join(unexplained), None)


# ---------------------------------------------------------------------------------------------
# Explicit providers.


def validate_explicit_provider(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    package = args.resource_type.split(":", 1)[0]
    if package not in PROVIDER_PACKAGES:
        return
    provider = args.provider
    if provider is None:
        report_violation(f"{describe(args)} names no provider", None)
    elif provider.name == "default" or provider.name.startswith("default_"):
        report_violation(
            f"{describe(args)} uses the default {package} provider ({provider.urn}); pass an explicit provider "
            + ("(a default Kubernetes provider deploys to whatever ~/.kube/config points at)" if package == "kubernetes" else ""),
            None,
        )


# ---------------------------------------------------------------------------------------------
# Images pinned to a version or a digest.


def image_problem(reference: str) -> str | None:
    """Why `reference` is not pinned, or None. A digest pins; otherwise a tag other than `latest` must be there."""
    if "@sha256:" in reference:
        return None
    last = reference.rsplit("/", 1)[-1]
    if ":" not in last:
        return "has no tag (means latest)"
    if last.rsplit(":", 1)[1] in ("", "latest"):
        return "is tagged latest"
    return None


def kind_configs(props: Any) -> list[dict[str, Any]]:
    """The Kind cluster configuration a Command passes to kind (environment KIND_CONFIG)."""
    text = get(command_environment(props), "KIND_CONFIG")
    if not isinstance(text, str):
        return []
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError:
        return []
    return [config] if isinstance(config, dict) and config.get("kind") == "Cluster" else []


def validate_images_pinned(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    found: list[tuple[str, str]] = []
    spec = pod_spec(args.resource_type, args.props)
    if spec is not None:
        found += [(f"container '{get(c, 'name')}' image", get(c, "image")) for c in containers(spec)]
    if args.resource_type == DOCKER_IMAGE_TYPE:
        found.append(("imageName", get(args.props, "imageName")))
        for key, value in leaves(get(args.props, "build", "args", default={})):
            if key.endswith("IMAGE"):
                found.append((f"build argument {key}", value))
    if args.resource_type in COMMAND_TYPES:
        for config in kind_configs(args.props):
            for index, node in enumerate(config.get("nodes") or []):
                found.append((f"Kind node {index} image", node.get("image") or "kindest/node (kind's default, unpinned)"))
    for where, reference in found:
        if not isinstance(reference, str):
            continue
        problem = image_problem(reference)
        if problem:
            report_violation(f"{describe(args)}: {where} '{reference}' {problem}; pin a version tag or a digest", None)


# ---------------------------------------------------------------------------------------------
# Private keys and kubeconfigs only where secrets belong.


def key_material(value: Any) -> str | None:
    """'a private key' or 'a kubeconfig' when the string is one (or holds one), else None."""
    if not isinstance(value, str):
        return None
    if PRIVATE_KEY_PEM.search(value):
        return "a private key"
    if "clusters:" in value and "users:" in value:
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            return None
        if isinstance(parsed, dict) and parsed.get("kind") == "Config" and "users" in parsed:
            return "a kubeconfig"
    return None


def places_shown(args: ResourceValidationArgs) -> Iterator[tuple[str, Any]]:
    """Inputs that end up readable outside a secret: plain Kubernetes objects, command lines (logged and
    diffed), Commands' triggers, Docker build arguments (kept in the image's history)."""
    if args.resource_type.startswith("kubernetes:") and args.resource_type != SECRET_TYPE:
        yield from leaves(args.props)
    elif args.resource_type in COMMAND_TYPES:
        for field in ("create", "update", "delete", "triggers"):
            yield from leaves(get(args.props, field), field)
    elif args.resource_type == DOCKER_IMAGE_TYPE:
        yield from leaves(get(args.props, "build", "args", default={}), "build.args")


# A command line that prints a kubeconfig: `kind get kubeconfig`, `kind-cluster.sh kubeconfig`, `cat .../admin.conf`.
# A `--kubeconfig <file>` flag only uses one, and does not count.
READS_KUBECONFIG = re.compile(r"(?<![-\w])kubeconfig\b|\bcat\s+\S*(?:admin\.conf|\.kube/config)")
QUIET_LOGGING = ("none", "stderr")


def validate_key_material_in_secrets(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    for path, value in places_shown(args):
        what = key_material(value)
        if what:
            report_violation(
                f"{describe(args)}: {path} holds {what}; put it in a Kubernetes Secret (or a Command's environment) "
                "from a Pulumi secret, never in a plain object, a command line or a build argument",
                None,
            )
    if args.resource_type in COMMAND_TYPES and READS_KUBECONFIG.search(str(get(args.props, "create", default=""))):
        problems = []
        if "stdout" not in list(args.opts.additional_secret_outputs):
            problems.append("stdout is not in additionalSecretOutputs (the kubeconfig would sit in the state in plain text)")
        if get(args.props, "logging", default="stdoutAndStderr") not in QUIET_LOGGING:
            problems.append("its logging shows stdout (set logging to none or stderr)")
        if problems:
            report_violation(f"{describe(args)} prints a kubeconfig: " + "; ".join(problems), None)


# ---------------------------------------------------------------------------------------------
# The TPM policy agents are enrolled with.


def tpm_policy_problems(text: str, measured_boot: bool = False) -> list[str]:
    try:
        policy = json.loads(text)
    except json.JSONDecodeError as error:
        return [f"is not JSON ({error.msg})"]
    if not isinstance(policy, dict):
        return ["is not a JSON object of PCR -> digests"]
    problems = []
    pcrs = {key: value for key, value in policy.items() if key != "mask"}
    if not pcrs and not measured_boot:
        problems.append("names no PCR (the verifier would accept any quote, and push agents fail with 'challenges expired')")
    for key, digests in pcrs.items():
        if not key.isdigit() or int(key) not in PCR_RANGE:
            problems.append(f"PCR '{key}' is not 0..23")
            continue
        if int(key) in FORBIDDEN_PCRS:
            problems.append(f"names PCR {key}: {FORBIDDEN_PCRS[int(key)]}")
        if measured_boot and int(key) in MEASURED_BOOT_PCRS:
            problems.append(
                f"names PCR {key}, which the measured-boot policy (MB_POLICY) accounts for: keylime_tenant refuses it"
            )
        values = digests if isinstance(digests, list) else [digests]
        if not values or not all(isinstance(v, str) and SHA256_HEX.match(v) for v in values):
            problems.append(f"PCR {key} is not a sha256 digest or a non-empty list of them")
    return problems


def validate_tpm_policy(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    if args.resource_type not in COMMAND_TYPES:
        return
    text = get(command_environment(args.props), "TPM_POLICY")
    if text is None:
        return
    measured_boot = bool(get(command_environment(args.props), "MB_POLICY"))
    for problem in tpm_policy_problems(str(text), measured_boot):
        report_violation(f"{describe(args)}: the TPM policy (environment TPM_POLICY) {problem}", None)


# ---------------------------------------------------------------------------------------------
# Host ports never published on every interface.


def validate_host_ports_bound(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    published: list[tuple[str, Any, Any]] = []
    for config in kind_configs(args.props) if args.resource_type in COMMAND_TYPES else []:
        for index, node in enumerate(config.get("nodes") or []):
            for mapping in node.get("extraPortMappings") or []:
                # kind's own default listenAddress is 0.0.0.0.
                published.append(
                    (f"Kind node {index} extraPortMappings", mapping.get("hostPort"), mapping.get("listenAddress", ""))
                )
    spec = pod_spec(args.resource_type, args.props)
    for container in containers(spec) if spec is not None else []:
        for port in items(get(container, "ports")):
            if get(port, "hostPort") is not None:
                published.append(
                    (f"container '{get(container, 'name')}' hostPort", get(port, "hostPort"), get(port, "hostIP", default=""))
                )
    for where, port, address in published:
        if str(address) in WILDCARD_ADDRESSES:
            report_violation(
                f"{describe(args)}: {where} publishes host port {_plain(port)} on every interface "
                f"(listen address '{address or 'unset'}'); bind it to 127.0.0.1 or to the one address its clients dial",
                None,
            )


# ---------------------------------------------------------------------------------------------
# Stack: every address a client dials is a SAN of that server's certificate.


class Dialed(NamedTuple):
    """One address a keylime client is configured to dial, and the ConfigMap that says so."""

    client: str
    server: str
    host: str
    port: int | None
    where: str


def dialed_addresses(resources: list[PolicyResource]) -> list[Dialed]:
    """Every address in the keylime configuration files the stack ships in ConfigMaps."""
    found: list[Dialed] = []
    for resource in resources:
        if resource.resource_type != CONFIG_MAP_TYPE:
            continue
        data = get(resource.props, "data", default={})
        where = describe(resource)
        agent = _ini(get(data, "agent.conf", default="")).get("agent", {})
        if agent.get("registrar_ip"):
            found.append(Dialed("agent", "registrar", agent["registrar_ip"], _port(agent.get("registrar_port")), where))
        if agent.get("verifier_url"):
            host, port = _url_address(agent["verifier_url"])
            found.append(Dialed("agent", "verifier", host, port, where))
        tenant = _ini(get(data, "tenant.conf", default="")).get("tenant", {})
        for server in ("registrar", "verifier"):
            if tenant.get(f"{server}_ip"):
                found.append(Dialed("tenant", server, tenant[f"{server}_ip"], _port(tenant.get(f"{server}_port")), where))
        verifier = _ini(get(data, "verifier.conf", default="")).get("verifier", {})
        if verifier.get("registrar_ip"):
            found.append(Dialed("verifier", "registrar", verifier["registrar_ip"], _port(verifier.get("registrar_port")), where))
    return found


def _ini(text: Any) -> dict[str, dict[str, str]]:
    """keylime's INI files and the agent's flat TOML both read as sections of `key = value`."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(text if isinstance(text, str) else "")
    except configparser.Error:
        return {}
    return {section: {k: v.strip().strip('"') for k, v in parser[section].items()} for section in parser.sections()}


def _port(text: str | None) -> int | None:
    return int(text) if text and text.isdigit() else None


def _url_address(url: str) -> tuple[str, int | None]:
    """`https://[fd00::1]:30881/` -> ('fd00::1', 30881)."""
    rest = url.split("://", 1)[-1].split("/", 1)[0]
    if rest.startswith("["):
        host, _, tail = rest[1:].partition("]")
        return host, _port(tail.removeprefix(":"))
    host, _, port = rest.rpartition(":")
    return (host, _port(port)) if host else (rest, None)


def server_certificates(resources: list[PolicyResource]) -> dict[str, tuple[PolicyResource, set[str]]]:
    """server -> (its certificate request, its SANs); the program names them CN keylime-<server>."""
    found: dict[str, tuple[PolicyResource, set[str]]] = {}
    for resource in resources:
        if resource.resource_type != CERT_REQUEST_TYPE:
            continue
        common_name = get(resource.props, "subject", "commonName")
        if isinstance(common_name, str) and common_name.startswith("keylime-"):
            sans = {str(v) for v in items(get(resource.props, "dnsNames")) + items(get(resource.props, "ipAddresses"))}
            found[common_name.removeprefix("keylime-")] = (resource, sans)
    return found


def _same_address(host: str, sans: set[str]) -> bool:
    if host in sans:
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host.lower() in {s.lower() for s in sans}
    return any(_is_ip(s) and ipaddress.ip_address(s) == address for s in sans)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def validate_dialed_addresses_are_sans(args: StackValidationArgs, report_violation: ReportViolation) -> None:
    certificates = server_certificates(list(args.resources))
    for client, server, host, _, where in dialed_addresses(list(args.resources)):
        if server not in certificates:
            report_violation(
                f"{where}: the {client} dials the {server} at '{host}', but the stack issues no keylime-{server} certificate",
                None,
            )
            continue
        request, sans = certificates[server]
        if not _same_address(host, sans):
            report_violation(
                f"{where}: the {client} dials the {server} at '{host}', which is not a SAN of {describe(request)} "
                f"(SANs: {sorted(sans)}); add it to the certificate (keylime-push:extraSans) or dial a listed name",
                request.urn,
            )


def kind_clusters(resources: list[PolicyResource]) -> dict[str, list[tuple[int, str]]]:
    """Kind cluster name -> its host-published ports as (hostPort, listenAddress)."""
    found: dict[str, list[tuple[int, str]]] = {}
    for resource in resources:
        if resource.resource_type not in COMMAND_TYPES:
            continue
        for config in kind_configs(resource.props):
            mappings = [m for node in config.get("nodes") or [] for m in node.get("extraPortMappings") or []]
            found[str(config.get("name", "kind"))] = [
                (int(m["hostPort"]), str(m.get("listenAddress", ""))) for m in mappings if "hostPort" in m
            ]
    return found


def exposed_ports(resources: list[PolicyResource]) -> set[int]:
    """What a client outside the cluster can dial: every NodePort, and a LoadBalancer's own ports."""
    ports = set()
    for resource in resources:
        service_type = get(resource.props, "spec", "type")
        if resource.resource_type != "kubernetes:core/v1:Service" or service_type not in ("NodePort", "LoadBalancer"):
            continue
        for port in items(get(resource.props, "spec", "ports")):
            ports |= {int(get(port, "nodePort"))} if get(port, "nodePort") is not None else set()
            ports |= {int(get(port, "port"))} if service_type == "LoadBalancer" and get(port, "port") is not None else set()
    return ports


def validate_agent_endpoints_published(args: StackValidationArgs, report_violation: ReportViolation) -> None:
    resources = list(args.resources)
    clusters, exposed = kind_clusters(resources), exposed_ports(resources)
    for dialed in dialed_addresses(resources):
        if dialed.client != "agent" or dialed.port is None:
            continue
        if dialed.port not in exposed:
            report_violation(
                f"{dialed.where}: the agent dials the {dialed.server} on port {dialed.port}, but no NodePort or "
                "LoadBalancer Service exposes it",
                None,
            )
        # A Kind node's container name is reached directly on the `kind` network; anything else goes through the host.
        # Without Kind (the user's own clusters) the address is theirs: nothing here publishes it.
        if not clusters or any(dialed.host == f"{name}-control-plane" for name in clusters) or not _is_ip(dialed.host):
            continue
        published = [(port, address) for mappings in clusters.values() for port, address in mappings if port == dialed.port]
        if not any(address in WILDCARD_ADDRESSES or _same_address(dialed.host, {address}) for _, address in published):
            shown = ", ".join(f"{address or 'unset'}:{port}" for port, address in published) or "nowhere"
            report_violation(
                f"{dialed.where}: the agent dials the {dialed.server} at {dialed.host}:{dialed.port} through the host, but "
                f"Kind publishes that port on {shown}; publish it on {dialed.host}",
                None,
            )


# ---------------------------------------------------------------------------------------------


def _resource_policy(
    name: str, description: str, validate: Callable[..., None], config: PolicyConfigSchema | None = None
) -> ResourceValidationPolicy:
    return ResourceValidationPolicy(
        name=name,
        description=description,
        validate=validate,
        enforcement_level=EnforcementLevel.MANDATORY,
        config_schema=config,
    )


POLICIES = [
    _resource_policy(
        "agent-security-context",
        "Agent containers run non-root at the configured UID/GID (keylime-push:agentUid/agentGid), with no "
        "privilege escalation, capabilities.drop [ALL], RuntimeDefault seccomp and a read-only root filesystem.",
        validate_agent_security_context,
        PolicyConfigSchema(
            properties={
                "agentUid": {"type": "integer", "minimum": 1, "default": DEFAULT_AGENT_ID},
                "agentGid": {"type": "integer", "minimum": 1, "default": DEFAULT_AGENT_ID},
            }
        ),
    ),
    _resource_policy(
        "no-privilege-without-reason",
        "Nothing runs privileged, as root, with added capabilities or host namespaces, except the documented "
        "exceptions, and each of those says why in a checkov.io/skipN annotation.",
        validate_no_privilege_without_reason,
        PolicyConfigSchema(
            properties={
                "exceptions": {"type": "array", "items": {"type": "string"}, "default": DEFAULT_EXCEPTIONS},
            }
        ),
    ),
    _resource_policy(
        "explicit-provider",
        "Every Kubernetes (and other provider-backed) resource names an explicit provider, never a default one.",
        validate_explicit_provider,
    ),
    _resource_policy(
        "images-pinned",
        "Every image (containers, Docker builds and their bases, Kind nodes) is pinned to a version tag or a digest, "
        "never latest or untagged.",
        validate_images_pinned,
    ),
    _resource_policy(
        "key-material-in-secrets",
        "Private keys and kubeconfigs reach resources only as secrets: never in a plain Kubernetes object, a command line, "
        "Command triggers or a build argument; a Command that prints a kubeconfig keeps its stdout secret and out of the log.",
        validate_key_material_in_secrets,
    ),
    _resource_policy(
        "tpm-policy-pcrs",
        "The TPM policy agents are enrolled with names at least one PCR (0..23, sha256 digests) and never PCR 10 or 16.",
        validate_tpm_policy,
    ),
    _resource_policy(
        "host-ports-bound",
        "Host ports (Kind extraPortMappings, container hostPorts) are never published on every interface.",
        validate_host_ports_bound,
    ),
    StackValidationPolicy(
        name="dialed-addresses-are-sans",
        description="Every address a client (agent, tenant, verifier) is configured to dial is a SAN of that server's "
        "certificate.",
        validate=validate_dialed_addresses_are_sans,
        enforcement_level=EnforcementLevel.MANDATORY,
    ),
    StackValidationPolicy(
        name="agent-endpoints-published",
        description="Every port an agent dials is a NodePort or a LoadBalancer's port, and an address it dials through the "
        "host is one Kind publishes that port on.",
        validate=validate_agent_endpoints_published,
        enforcement_level=EnforcementLevel.MANDATORY,
    ),
]
