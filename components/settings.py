"""The config contract: every `keylime-push:*` key is defined here once, and read nowhere else.

Each key is one field of `Settings`: its type, its parser (which says what is wrong with a value),
the text every refusal quotes as allowed, its Pulumi type, its default and its one-line description.
Pulumi.yaml's config block, the README's table (tools/config_docs.py) and the offline render's stack
config (tools/offline.py) are projections of these fields.

`parse_settings` is pure (raw strings in, one typed `Settings` out) so tests and the offline render
use it without Pulumi; `load_settings` only feeds it from `pulumi.Config`. Every problem found is
reported at once, each naming its key and what is allowed, before the program declares anything.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re
import uuid as uuid_module
from collections.abc import Callable, Iterator, Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError, PydanticUndefined, core_schema

NAMESPACE = "keylime-push"

TpmMode = Literal["swtpm", "hwtpm"]
ImageSource = Literal["upstream", "local"]
TPM_MODES: tuple[TpmMode, ...] = ("swtpm", "hwtpm")
TaintEffect = Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]
TAINT_EFFECTS: tuple[TaintEffect, ...] = ("NoSchedule", "PreferNoSchedule", "NoExecute")
IMAGE_SOURCES: tuple[ImageSource, ...] = ("upstream", "local")
PulumiType = Literal["string", "integer", "boolean", "array"]

ZERO_DIGEST = "0" * 64
# keylime's readPolicy refuses these: PCR 10 carries the IMA log and PCR 16 is the debug PCR.
FORBIDDEN_PCRS = {10: "IMA", 16: "debug"}
MAX_AGENT_CLUSTERS = 64
NODE_PORT_RANGE = range(30000, 32768)
FIRST_NODE_PORT, LAST_NODE_PORT = NODE_PORT_RANGE.start, NODE_PORT_RANGE.stop - 1
# Inside the VM, kubeadm's pod and service networks; the libvirt network must not overlap them.
VM_POD_CIDR = "10.244.0.0/16"
VM_SERVICE_CIDR = "10.96.0.0/12"
POLICY_ALLOWED = (
    'a JSON object mapping PCR index 0..23 (not 10, IMA; not 16, debug) to a sha256 digest '
    '(64 hex) or a list of them, at least one PCR, e.g. {"8": "<64 zeros>"} (with an mbPolicy: {} or PCRs 17..23)'
)
# keylime's config.MEASUREDBOOT_PCRS: the PCRs a measured-boot policy accounts for. keylime_tenant refuses a
# tpm_policy naming any of them next to an mb policy (keylime/cli/policies.py, enforce_pcrs).
MEASURED_BOOT_PCRS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14, 15)
MB_POLICY_ALLOWED = (
    "empty (no measured boot), or a reference state as `keylime-policy create measured-boot` writes it for "
    "keylime's example policy (make mb-policy): a JSON object with has_secureboot, scrtm_and_bios, pk, kek, db, "
    "dbx, mokdig, mokxdig and at least one kernel"
)
_REFSTATE_LISTS = ("scrtm_and_bios", "pk", "kek", "db", "dbx", "mokdig", "mokxdig")
# What keylime's example policy reads of each kernel, with Secure Boot and without.
_KERNEL_KEYS = {
    True: ("shim_authcode_sha256", "grub_authcode_sha256", "kernel_authcode_sha256", "initrd_plain_sha256", "kernel_cmdline"),
    False: ("shim_authcode_sha256", "grub_authcode_sha256", "vmlinuz_plain_sha256", "initrd_plain_sha256", "kernel_cmdline"),
}
VERSION_ALLOWED = "a non-empty version string (image tag characters)"

_VERSION = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]{0,127}$")
_DNS_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def _integer(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        if not re.fullmatch(r"\s*-?\d+\s*", raw):
            raise ValueError("not an integer")
        value = int(raw)
        if value < low or (high is not None and value > high):
            raise ValueError("out of range")
        return value

    return parse


def _choice(choices: tuple[str, ...]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw not in choices:
            raise ValueError("")
        return raw

    return parse


def _boolean(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered not in ("true", "false"):
        raise ValueError("")
    return lowered == "true"


def _version(raw: str) -> str:
    if not _VERSION.match(raw):
        raise ValueError("")
    return raw


def _uuid(raw: str) -> str:
    if raw in ("hash_ek", "generate"):
        return raw
    return str(uuid_module.UUID(raw))


def _tpm_policy(raw: str) -> tuple[tuple[int, tuple[str, ...]], ...]:
    try:
        policy = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ValueError(f"malformed JSON: {error.msg}") from None
    if not isinstance(policy, dict):
        raise ValueError("need a JSON object with at least one PCR")
    entries = []
    for key, digests in policy.items():
        if not re.fullmatch(r"\d{1,2}", key) or int(key) > 23:
            raise ValueError(f"PCR {key!r} is not an index 0..23")
        pcr = int(key)
        if pcr in FORBIDDEN_PCRS:
            raise ValueError(f"PCR {pcr} ({FORBIDDEN_PCRS[pcr]}) is refused by keylime")
        listed = [digests] if isinstance(digests, str) else digests
        if not isinstance(listed, list) or not listed or not all(isinstance(d, str) for d in listed):
            raise ValueError(f"PCR {pcr} needs a digest or a non-empty list of digests")
        for digest in listed:
            if len(digest) != 64:
                raise ValueError(f"PCR {pcr} digest has {len(digest)} characters, sha256 needs 64")
            if not re.fullmatch(r"[0-9a-fA-F]{64}", digest):
                raise ValueError(f"PCR {pcr} digest is not hexadecimal")
        entries.append((pcr, tuple(dict.fromkeys(d.lower() for d in listed))))
    return tuple(sorted(entries))


def _mb_policy(raw: str) -> str:
    """The reference state, checked as keylime's example policy reads it; compact JSON with sorted keys."""
    if not raw.strip():
        return ""
    try:
        refstate = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ValueError(f"malformed JSON: {error.msg}") from None
    if not isinstance(refstate, dict):
        raise ValueError("need a JSON object")
    if not refstate.get("kernels"):
        # keylime-policy writes none, and still exits 0, when the log lacks the boot applications it expects
        # (shim and grub, and with Secure Boot the kernel).
        raise ValueError("no kernels: keylime-policy found no shim, grub and kernel boot in the event log")
    if not isinstance(refstate.get("has_secureboot"), bool):
        raise ValueError("has_secureboot must be true or false")
    for key in _REFSTATE_LISTS:
        if not isinstance(refstate.get(key), list):
            raise ValueError(f"{key} must be a list")
    if not refstate["scrtm_and_bios"]:
        raise ValueError("scrtm_and_bios is empty")
    if not isinstance(refstate["kernels"], list):
        raise ValueError("kernels must be a list")
    for index, kernel in enumerate(refstate["kernels"]):
        missing = [key for key in _KERNEL_KEYS[refstate["has_secureboot"]] if not isinstance(kernel, dict) or key not in kernel]
        if missing:
            raise ValueError(f"kernels[{index}] lacks {', '.join(missing)}")
    return json.dumps(refstate, sort_keys=True, separators=(",", ":"))


def is_ip_address(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def is_dns_name(value: str) -> bool:
    name = value.rstrip(".").lower()
    return 0 < len(name) <= 253 and all(_DNS_LABEL.match(label) for label in name.split("."))


def _sans(raw: str) -> tuple[str, ...]:
    names = json.loads(raw)
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError("need a JSON list of strings")
    bad = [n for n in names if not (is_ip_address(n) or is_dns_name(n))]
    if bad:
        raise ValueError(f"not an IP address or DNS name: {', '.join(map(repr, bad))}")
    return tuple(dict.fromkeys(n if is_ip_address(n) else n.rstrip(".").lower() for n in names))


def _vm_network(raw: str) -> str:
    network = ipaddress.ip_network(raw, strict=True)
    if network.version != 4 or not network.is_private or network.prefixlen > 28:
        raise ValueError("need a private IPv4 network of /28 or larger")
    for inside in (VM_POD_CIDR, VM_SERVICE_CIDR):
        if network.overlaps(ipaddress.ip_network(inside)):
            raise ValueError(f"overlaps {inside}, which kubeadm uses inside the VM")
    return str(network)


def _vm_image(raw: str) -> str:
    if re.fullmatch(r"https?://\S+", raw) or (raw.startswith("/") and os.path.isfile(raw)):
        return raw
    raise ValueError("neither an http(s) URL nor the absolute path of an existing file")


def _libvirt_uri(raw: str) -> str:
    if not re.fullmatch(r"qemu(\+[a-z]+)?://[^\s]*/(system|session)(\?\S*)?", raw):
        raise ValueError("")
    return raw


# The file of each clone that the local image build starts from.
CLONE_MARKERS = {"keylimeGit": "keylime/__init__.py", "rustKeylimeGit": "docker/release/Dockerfile.fedora"}


def _clone(key: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if not raw or not os.path.isdir(raw):
            raise ValueError("not an existing directory")
        if not os.path.isfile(os.path.join(raw, CLONE_MARKERS[key])):
            raise ValueError(f"no {CLONE_MARKERS[key]} in it")
        return raw

    return parse




def config_text(value: object) -> str:
    """A config value as the Pulumi engine hands it to the program: a string, structured values as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


@dataclasses.dataclass(frozen=True)
class Key:
    """How one key's raw config string becomes its setting, and what a refusal of it says is allowed."""

    allowed: str
    parse: Callable[[str], Any]
    pulumi_type: PulumiType = "string"
    only_when: tuple[str, str] | None = None
    """(setting, value): the key is read, and required, only then; otherwise its setting is None."""

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> core_schema.CoreSchema:
        return core_schema.no_info_before_validator_function(self._parse, handler(source))

    def _parse(self, raw: object) -> Any:
        try:
            return self.parse(config_text(raw))
        except (ValueError, TypeError) as error:
            raise PydanticCustomError("keylime_push_config", "{detail}", {"detail": str(error)}) from None


def _integer_key(low: int, high: int | None, allowed: str) -> Key:
    return Key(allowed, _integer(low, high), "integer")


class Settings(BaseModel):
    """One stack's validated configuration. PCR digests are lower case; the policy is sorted by PCR.

    Fields are in the order their problems are reported; defaults are written as Pulumi.yaml declares them.
    """

    model_config = ConfigDict(frozen=True, validate_default=True)

    tpm_mode: Annotated[TpmMode, Key(" | ".join(TPM_MODES), _choice(TPM_MODES))] = Field(
        alias="tpmMode",
        description="swtpm (agents in Kind clusters beside a software TPM) | hwtpm (agents in a QEMU/libvirt VM "
        "with a vTPM). Set by each stack file.",
    )
    agent_clusters: Annotated[
        int, _integer_key(1, MAX_AGENT_CLUSTERS, f"an integer 1..{MAX_AGENT_CLUSTERS}")
    ] = Field(2, alias="agentClusters", description="Number of agent Kind clusters, one agent each: 1..64 (hwtpm: 1, the VM).")
    tpm_policy: Annotated[tuple[tuple[int, tuple[str, ...]], ...], Key(POLICY_ALLOWED, _tpm_policy)] = Field(
        json.dumps({"8": ZERO_DIGEST}),  # type: ignore[arg-type]  # pydantic validates the JSON text default into the tuple form
        alias="tpmPolicy",
        description="JSON object: PCR index 0..23 (not 10, IMA; not 16, debug) -> sha256 digest (64 hex) or a list "
        "of them; at least one PCR; digests are lower-cased.",
    )
    mb_policy: Annotated[str, Key(MB_POLICY_ALLOWED, _mb_policy)] = Field(
        "",
        alias="mbPolicy",
        description="Measured-boot reference state (JSON) every agent is enrolled with (`keylime_tenant --mb-policy`): "
        "make it with `make mb-policy` from a known-good machine's event log; empty: PCR policy only. With it, "
        "tpmPolicy may be {} and must not name PCRs 0-9 or 11-15.",
    )
    agent_uid: Annotated[
        int, _integer_key(1, None, "an integer >= 1 (0 is root, which the agent must not be)")
    ] = Field(490, alias="agentUid", description="UID the agent and the server pods run as (>= 1; matches the image user).")
    agent_gid: Annotated[
        int, _integer_key(1, None, "an integer >= 1 (0 is root's group, which the agent must not use)")
    ] = Field(490, alias="agentGid", description="GID the agent and the server pods run as (>= 1).")
    uuid: Annotated[str, Key("hash_ek | generate | a literal UUID", _uuid)] = Field(
        "hash_ek",
        alias="uuid",
        description="Agent identity: hash_ek (SHA-256 of the EK, stable across restarts) | generate | a literal UUID "
        "(agentClusters=1 only).",
    )
    require_ek_cert: Annotated[bool, Key("true | false", _boolean, "boolean")] = Field(
        # Production (hwtpm) requires EK certificates; swtpm's are signed by the program's "TPM manufacturer" CA.
        default_factory=lambda settings: settings.get("tpm_mode") == "hwtpm",
        alias="requireEkCert",
        description="Only agents whose EK certificate chains to the EK trust store are enrolled (the attestation "
        "controller checks; swtpm: the program's TPM manufacturer CA). Stack files set it: false for swtpm, true for hwtpm.",
    )
    taint_effect: Annotated[TaintEffect, Key(" | ".join(TAINT_EFFECTS), _choice(TAINT_EFFECTS))] = Field(
        "NoSchedule",
        alias="taintEffect",
        description="Effect of the attestation controller's taint attestation.keylime.dev/untrusted on a node whose "
        "agent is FAIL, TIMEOUT or refused: NoSchedule | PreferNoSchedule | NoExecute (evicts what does not tolerate it).",
    )
    prometheus_operator: Annotated[bool, Key("true | false", _boolean, "boolean")] = Field(
        False,
        alias="prometheusOperator",
        description="The infra cluster has the Prometheus Operator's CRDs: declare the controller's ServiceMonitor and "
        "its alerts (PrometheusRule).",
    )
    keylime_version: Annotated[str, Key(VERSION_ALLOWED, _version)] = Field(
        "7.14.3", alias="keylimeVersion", description="Keylime server release (image tag v<version>)."
    )
    agent_version: Annotated[str, Key(VERSION_ALLOWED, _version)] = Field(
        "0.2.9",
        alias="agentVersion",
        description="rust-keylime release whose keylime_push_model_agent runs in the agents (image tag v<version>).",
    )
    registrar_node_port: Annotated[
        int,
        _integer_key(
            FIRST_NODE_PORT,
            LAST_NODE_PORT - 1,
            f"an integer {FIRST_NODE_PORT}..{LAST_NODE_PORT - 1} (its TLS NodePort is the next port)",
        ),
    ] = Field(
        30890,
        alias="registrarNodePort",
        description="Registrar HTTP NodePort agents register on, 30000..32766; its TLS port is published on the next port.",
    )
    verifier_node_port: Annotated[
        int, _integer_key(FIRST_NODE_PORT, LAST_NODE_PORT, f"an integer {FIRST_NODE_PORT}..{LAST_NODE_PORT}")
    ] = Field(
        30881,
        alias="verifierNodePort",
        description="Verifier HTTPS NodePort agents attest to, 30000..32767, distinct from the registrar's two.",
    )
    extra_sans: Annotated[tuple[str, ...], Key("a list of IP addresses or DNS names", _sans, "array")] = Field(
        [],  # type: ignore[arg-type]  # pydantic validates the list default into a tuple
        alias="extraSans",
        description="Extra IP addresses or DNS names added to the server certificates (and dialable by clients).",
    )
    image_source: Annotated[ImageSource, Key(" | ".join(IMAGE_SOURCES), _choice(IMAGE_SOURCES))] = Field(
        "upstream",
        alias="imageSource",
        description="upstream (thin images FROM the pinned quay.io/keylime releases) | local (built from keylimeGit "
        "and rustKeylimeGit).",
    )
    vm_network_cidr: Annotated[str, Key("a private IPv4 network in CIDR form, /28 or larger", _vm_network)] = Field(
        "192.168.150.0/24",
        alias="vmNetworkCidr",
        description="hwtpm: the libvirt NAT network (/28 or larger, not overlapping 10.244.0.0/16 or 10.96.0.0/12); "
        "its first address is the host the VM's agent dials; the VM is the 10th.",
    )
    vm_image: Annotated[str, Key("an http(s) URL or an absolute path of a qcow2 cloud image", _vm_image)] = Field(
        # Ubuntu 24.04's GA cloud image, by its dated (immutable) release folder.
        "https://cloud-images.ubuntu.com/releases/noble/release-20240423/ubuntu-24.04-server-cloudimg-amd64.img",
        alias="vmImage",
        description="hwtpm: the VM's cloud image, an http(s) URL or an absolute path (qcow2; Ubuntu 24.04 expected "
        "by the cloud-init).",
    )
    vm_cpus: Annotated[int, _integer_key(1, 32, "an integer 1..32")] = Field(
        2, alias="vmCpus", description="hwtpm: vCPUs of the VM, 1..32."
    )
    vm_memory_mib: Annotated[
        int, _integer_key(2048, 131072, "an integer 2048..131072 (kubeadm needs about 2 GiB)")
    ] = Field(4096, alias="vmMemoryMiB", description="hwtpm: memory of the VM in MiB, 2048..131072.")
    libvirt_uri: Annotated[
        str, Key("a QEMU libvirt URI, e.g. qemu:///system or qemu+ssh://host/system", _libvirt_uri)
    ] = Field("qemu:///system", alias="libvirtUri", description="hwtpm: the libvirt connection, e.g. qemu:///system.")
    keylime_git: Annotated[
        str | None,
        Key(
            "the path of a keylime clone (required when imageSource=local)",
            _clone("keylimeGit"),
            only_when=("image_source", "local"),
        ),
    ] = Field(None, alias="keylimeGit", description="Path of a keylime clone; required when imageSource=local.")
    rust_keylime_git: Annotated[
        str | None,
        Key(
            "the path of a rust-keylime clone (required when imageSource=local)",
            _clone("rustKeylimeGit"),
            only_when=("image_source", "local"),
        ),
    ] = Field(None, alias="rustKeylimeGit", description="Path of a rust-keylime clone; required when imageSource=local.")

    stack: str = Field(
        "dev",
        description="The Pulumi stack. Not a config key: it names the stack's Kind clusters, so two stacks never share one.",
    )

    @property
    def registrar_tls_node_port(self) -> int:
        """The registrar's TLS port is published on the NodePort right after its HTTP one."""
        return self.registrar_node_port + 1

    @property
    def tpm_policy_json(self) -> str:
        """The policy as `keylime_tenant --tpm_policy` takes it: one digest as a string, several as a list."""
        return json.dumps(
            {str(pcr): digests[0] if len(digests) == 1 else list(digests) for pcr, digests in self.tpm_policy},
            separators=(",", ":"),
        )


# The config keys: every field but `stack`, which comes from the Pulumi stack itself.
FIELDS: dict[str, FieldInfo] = {
    name: field for name, field in Settings.model_fields.items() if any(isinstance(item, Key) for item in field.metadata)
}
# A Kind node is named `keylime-<stack>-agents-<n>-control-plane`: its hostname, and the infra node's name is a
# certificate SAN, so it must stay one DNS label (63 characters).
STACK_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,29}[a-z0-9])?$")


def key_of(field: FieldInfo) -> Key:
    return next(item for item in field.metadata if isinstance(item, Key))


KEYS = tuple(field.alias for field in FIELDS.values())
# The keys with a default of their own (the others are set by the stack files, or only apply under a condition).
DEFAULTS: dict[str, object] = {
    # every field of Settings declares an alias
    field.alias: field.default for field in FIELDS.values() if field.default not in (None, PydanticUndefined)  # type: ignore[misc]
}
# What Pulumi.yaml declares: Pulumi config has no null, so a key that only applies under a condition is "".
DECLARED_DEFAULTS: dict[str, object] = {
    # every field of Settings declares an alias
    field.alias: DEFAULTS.get(field.alias, "") for field in FIELDS.values() if field.alias in DEFAULTS or key_of(field).only_when  # type: ignore[misc, arg-type]
}
# Each setting validated on its own, through the field's own definition: a bad value must not hide another problem.
# a runtime-built Annotated type, which mypy cannot follow
_VALIDATORS = {name: TypeAdapter(Annotated[field.annotation, *field.metadata]) for name, field in FIELDS.items()}  # type: ignore[var-annotated, arg-type]


class SettingsError(ValueError):
    """Raised with every configuration problem at once."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__(
            f"invalid {NAMESPACE} configuration ({len(problems)} problem{'s' if len(problems) > 1 else ''}):\n"
            + "\n".join(f"  - {p}" for p in problems)
        )


def _refusal(key: str, got: object, allowed: str) -> str:
    shown = repr(got)
    if len(shown) > 160:  # a reference state runs to kilobytes: its start says which value was meant
        shown = f"{shown[:80]}... ({len(str(got))} characters)"
    return f"{NAMESPACE}:{key}: got {shown}; allowed: {allowed}"


def _cross_key_problems(settings: Mapping[str, Any]) -> Iterator[str]:
    """Rules between keys, each checked only when the settings it compares are valid on their own."""
    yield from _policy_problems(settings)
    registrar_port, verifier_port = settings.get("registrar_node_port"), settings.get("verifier_node_port")
    if registrar_port and verifier_port and verifier_port in (registrar_port, registrar_port + 1):
        yield (
            f"{NAMESPACE}:verifierNodePort: {verifier_port} clashes with registrarNodePort {registrar_port} "
            f"(the registrar also publishes TLS on {registrar_port + 1}); allowed: distinct NodePorts"
        )
    agent_clusters = settings.get("agent_clusters", 1)
    if settings.get("tpm_mode") == "hwtpm" and agent_clusters != 1:
        yield _refusal("agentClusters", agent_clusters, "1 when tpmMode=hwtpm (the agents run in one VM)")
    agent_uuid = settings.get("uuid", "hash_ek")
    if agent_uuid not in ("hash_ek", "generate") and agent_clusters > 1:
        yield (
            f"{NAMESPACE}:uuid: the literal UUID {agent_uuid} would be shared by {agent_clusters} agents; "
            "allowed: hash_ek | generate, or a literal UUID with agentClusters=1"
        )


def _policy_problems(settings: Mapping[str, Any]) -> Iterator[str]:
    """tpmPolicy next to mbPolicy: the quote must name some PCR, and the tenant refuses the boot log's PCRs twice."""
    tpm_policy, mb_policy = settings.get("tpm_policy"), settings.get("mb_policy")
    if tpm_policy is None or mb_policy is None:
        return
    got = json.dumps({str(pcr): list(digests) for pcr, digests in tpm_policy})
    if not tpm_policy and not mb_policy:
        yield _refusal(
            "tpmPolicy", got, "at least one PCR when there is no mbPolicy (an agent with no PCR to quote never attests)"
        )
    claimed = [pcr for pcr, _ in tpm_policy if pcr in MEASURED_BOOT_PCRS]
    if mb_policy and claimed:
        yield _refusal(
            "tpmPolicy",
            got,
            f"{{}} or PCRs 17..23 next to an mbPolicy (keylime_tenant refuses PCR {', '.join(map(str, claimed))}: "
            "the boot log accounts for PCRs 0-9 and 11-15)",
        )


def parse_settings(raw: Mapping[str, str | None], stack: str = "dev") -> Settings:
    """Validate raw config values (strings, as Pulumi stores them, keyed without namespace) of `stack`."""
    settings: dict[str, Any] = {}
    problems: list[str] = []
    if not STACK_NAME.fullmatch(stack):
        problems.append(
            f"pulumi stack name: got {stack!r}; allowed: 1..31 lower-case letters, digits and inner hyphens "
            "(it names the stack's Kind clusters and their nodes)"
        )
    for name, field in FIELDS.items():
        key = key_of(field)
        if key.only_when is not None and settings.get(key.only_when[0]) != key.only_when[1]:
            settings[name] = None
            continue
        text = raw.get(field.alias)  # type: ignore[arg-type]  # every field of Settings declares an alias
        if text is None:
            if field.default_factory is not None:
                settings[name] = field.get_default(call_default_factory=True, validated_data=settings)
                continue
            if field.default is None or field.default is PydanticUndefined:
                problems.append(f"{NAMESPACE}:{field.alias}: not set; allowed: {key.allowed}")
                continue
            text = config_text(field.default)
        try:
            settings[name] = _VALIDATORS[name].validate_python(text)
        except ValidationError as error:
            detail = error.errors()[0]["ctx"]["detail"]
            # every field of Settings declares an alias
            problems.append(_refusal(field.alias, text, key.allowed + (f" ({detail})" if detail else "")))  # type: ignore[arg-type]
    problems.extend(_cross_key_problems(settings))
    if problems:
        raise SettingsError(problems)
    return Settings.model_construct(**settings, stack=stack)


def load_settings() -> Settings:
    """Read every key of the contract from the stack's Pulumi config."""
    import pulumi

    config = pulumi.Config(NAMESPACE)
    # KEYS are the fields' aliases, all declared
    raw = {key: value for key in KEYS if (value := config.get(key)) is not None}  # type: ignore[arg-type]
    return parse_settings(raw, pulumi.get_stack())  # type: ignore[arg-type]  # KEYS are the fields' aliases, all declared
