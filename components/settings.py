"""The config contract: every `keylime-push:*` key is read and validated here, and nowhere else.

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
from typing import Callable, Literal, Mapping, TypeVar

NAMESPACE = "keylime-push"

TpmMode = Literal["swtpm", "hwtpm"]
ImageSource = Literal["upstream", "local"]
TPM_MODES: tuple[TpmMode, ...] = ("swtpm", "hwtpm")
IMAGE_SOURCES: tuple[ImageSource, ...] = ("upstream", "local")

ZERO_DIGEST = "0" * 64
# keylime's readPolicy refuses these: PCR 10 carries the IMA log and PCR 16 is the debug PCR.
FORBIDDEN_PCRS = {10: "IMA", 16: "debug"}
MAX_AGENT_CLUSTERS = 64
NODE_PORT_RANGE = range(30000, 32768)

# The defaults of the keys that have one; Pulumi.yaml declares the same values (a test keeps them equal).
DEFAULTS: dict[str, object] = {
    "agentClusters": 2,
    "tpmPolicy": json.dumps({"8": ZERO_DIGEST}),
    "agentUid": 490,
    "agentGid": 490,
    "uuid": "hash_ek",
    "keylimeVersion": "7.14.3",
    "agentVersion": "0.2.9",
    "registrarNodePort": 30890,
    "verifierNodePort": 30881,
    "extraSans": [],
    "imageSource": "upstream",
    "vmNetworkCidr": "192.168.150.0/24",
    # Ubuntu 24.04's GA cloud image, by its dated (immutable) release folder.
    "vmImage": "https://cloud-images.ubuntu.com/releases/noble/release-20240423/ubuntu-24.04-server-cloudimg-amd64.img",
    "vmCpus": 2,
    "vmMemoryMiB": 4096,
    "libvirtUri": "qemu:///system",
}
# Inside the VM, kubeadm's pod and service networks; the libvirt network must not overlap them.
VM_POD_CIDR = "10.244.0.0/16"
VM_SERVICE_CIDR = "10.96.0.0/12"
KEYS = (
    "tpmMode",
    "requireEkCert",
    *DEFAULTS,
    "keylimeGit",
    "rustKeylimeGit",
)

_VERSION = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]{0,127}$")
_DNS_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


@dataclasses.dataclass(frozen=True)
class Settings:
    """One stack's validated configuration. PCR digests are lower case; the policy is sorted by PCR."""

    tpm_mode: TpmMode
    agent_clusters: int
    tpm_policy: tuple[tuple[int, tuple[str, ...]], ...]
    agent_uid: int
    agent_gid: int
    uuid: str
    require_ek_cert: bool
    keylime_version: str
    agent_version: str
    registrar_node_port: int
    verifier_node_port: int
    extra_sans: tuple[str, ...]
    image_source: ImageSource
    keylime_git: str | None
    rust_keylime_git: str | None
    vm_network_cidr: str
    vm_image: str
    vm_cpus: int
    vm_memory_mib: int
    libvirt_uri: str

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


class SettingsError(ValueError):
    """Raised with every configuration problem at once."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__(
            f"invalid {NAMESPACE} configuration ({len(problems)} problem{'s' if len(problems) > 1 else ''}):\n"
            + "\n".join(f"  - {p}" for p in problems)
        )


T = TypeVar("T")


class _Reader:
    """Parses one raw value per key and collects problems instead of stopping at the first."""

    def __init__(self, raw: Mapping[str, str]):
        self.raw = raw
        self.problems: list[str] = []

    def value(self, key: str) -> str | None:
        value = self.raw.get(key)
        if value is None and key in DEFAULTS:
            default = DEFAULTS[key]
            return default if isinstance(default, str) else json.dumps(default)
        return value

    def problem(self, key: str, got: object, allowed: str) -> None:
        self.problems.append(f"{NAMESPACE}:{key}: got {got!r}; allowed: {allowed}")

    def parse(
        self, key: str, allowed: str, parser: Callable[[str], T], fallback: T, default: str | None = None
    ) -> T:
        raw = self.value(key)
        if raw is None:
            raw = default
        if raw is None:
            self.problems.append(f"{NAMESPACE}:{key}: not set; allowed: {allowed}")
            return fallback
        try:
            return parser(raw)
        except (ValueError, TypeError) as error:
            detail = f" ({error})" if str(error) else ""
            self.problem(key, raw, allowed + detail)
            return fallback


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
    if not isinstance(policy, dict) or not policy:
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


def parse_settings(raw: Mapping[str, str]) -> Settings:
    """Validate raw config values (strings, as Pulumi stores them, keyed without namespace)."""
    read = _Reader(raw)
    tpm_mode = read.parse("tpmMode", " | ".join(TPM_MODES), _choice(TPM_MODES), "swtpm")
    agent_clusters = read.parse(
        "agentClusters", f"an integer 1..{MAX_AGENT_CLUSTERS}", _integer(1, MAX_AGENT_CLUSTERS), 1
    )
    policy_allowed = (
        'a JSON object mapping PCR index 0..23 (not 10, IMA; not 16, debug) to a sha256 digest '
        '(64 hex) or a list of them, at least one PCR, e.g. {"8": "<64 zeros>"}'
    )
    tpm_policy = read.parse("tpmPolicy", policy_allowed, _tpm_policy, ())
    agent_uid = read.parse("agentUid", "an integer >= 1 (0 is root, which the agent must not be)", _integer(1), 1)
    agent_gid = read.parse("agentGid", "an integer >= 1 (0 is root's group, which the agent must not use)", _integer(1), 1)
    agent_uuid = read.parse("uuid", "hash_ek | generate | a literal UUID", _uuid, "hash_ek")
    require_ek_cert = read.parse(
        "requireEkCert", "true | false", _boolean, False, default="false" if tpm_mode == "swtpm" else "true"
    )
    keylime_version = read.parse("keylimeVersion", "a non-empty version string (image tag characters)", _version, "")
    agent_version = read.parse("agentVersion", "a non-empty version string (image tag characters)", _version, "")
    first_port, last_port = NODE_PORT_RANGE.start, NODE_PORT_RANGE.stop - 1
    registrar_port = read.parse(
        "registrarNodePort",
        f"an integer {first_port}..{last_port - 1} (its TLS NodePort is the next port)",
        _integer(first_port, last_port - 1),
        0,
    )
    verifier_port = read.parse(
        "verifierNodePort", f"an integer {first_port}..{last_port}", _integer(first_port, last_port), 0
    )
    extra_sans = read.parse("extraSans", "a list of IP addresses or DNS names", _sans, ())
    image_source = read.parse("imageSource", " | ".join(IMAGE_SOURCES), _choice(IMAGE_SOURCES), "upstream")
    vm_network = read.parse("vmNetworkCidr", "a private IPv4 network in CIDR form, /28 or larger", _vm_network, "")
    vm_image = read.parse("vmImage", "an http(s) URL or an absolute path of a qcow2 cloud image", _vm_image, "")
    vm_cpus = read.parse("vmCpus", "an integer 1..32", _integer(1, 32), 1)
    vm_memory = read.parse("vmMemoryMiB", "an integer 2048..131072 (kubeadm needs about 2 GiB)", _integer(2048, 131072), 0)
    libvirt_uri = read.parse("libvirtUri", "a QEMU libvirt URI, e.g. qemu:///system or qemu+ssh://host/system", _libvirt_uri, "")
    keylime_git = rust_keylime_git = None
    if image_source == "local":
        keylime_git = read.parse(
            "keylimeGit", "the path of a keylime clone (required when imageSource=local)", _clone("keylimeGit"), None
        )
        rust_keylime_git = read.parse(
            "rustKeylimeGit",
            "the path of a rust-keylime clone (required when imageSource=local)",
            _clone("rustKeylimeGit"),
            None,
        )

    if registrar_port and verifier_port and verifier_port in (registrar_port, registrar_port + 1):
        read.problems.append(
            f"{NAMESPACE}:verifierNodePort: {verifier_port} clashes with registrarNodePort {registrar_port} "
            f"(the registrar also publishes TLS on {registrar_port + 1}); allowed: distinct NodePorts"
        )
    if tpm_mode == "hwtpm" and agent_clusters != 1:
        read.problem("agentClusters", agent_clusters, "1 when tpmMode=hwtpm (the agents run in one VM)")
    if agent_uuid not in ("hash_ek", "generate") and agent_clusters > 1:
        read.problems.append(
            f"{NAMESPACE}:uuid: the literal UUID {agent_uuid} would be shared by {agent_clusters} agents; "
            "allowed: hash_ek | generate, or a literal UUID with agentClusters=1"
        )
    if read.problems:
        raise SettingsError(read.problems)
    return Settings(
        tpm_mode=tpm_mode,
        agent_clusters=agent_clusters,
        tpm_policy=tpm_policy,
        agent_uid=agent_uid,
        agent_gid=agent_gid,
        uuid=agent_uuid,
        require_ek_cert=require_ek_cert,
        keylime_version=keylime_version,
        agent_version=agent_version,
        registrar_node_port=registrar_port,
        verifier_node_port=verifier_port,
        extra_sans=extra_sans,
        image_source=image_source,
        keylime_git=keylime_git,
        rust_keylime_git=rust_keylime_git,
        vm_network_cidr=vm_network,
        vm_image=vm_image,
        vm_cpus=vm_cpus,
        vm_memory_mib=vm_memory,
        libvirt_uri=libvirt_uri,
    )


def load_settings() -> Settings:
    """Read every key of the contract from the stack's Pulumi config."""
    import pulumi

    config = pulumi.Config(NAMESPACE)
    raw = {key: value for key in KEYS if (value := config.get(key)) is not None}
    return parse_settings(raw)
