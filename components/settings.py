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

import base64
import dataclasses
import functools
import ipaddress
import json
import os
import re
import uuid as uuid_module
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError, PydanticUndefined, core_schema

from components.libvirt_host import REACHABLE, localca_reader

NAMESPACE = "keylime-push"

TpmMode = Literal["swtpm", "hwtpm", "cluster"]
ImageSource = Literal["upstream", "local"]
TPM_MODES: tuple[TpmMode, ...] = ("swtpm", "hwtpm", "cluster")
ServiceType = Literal["LoadBalancer", "NodePort"]
SERVICE_TYPES: tuple[ServiceType, ...] = ("LoadBalancer", "NodePort")
# PostgreSQL with hash_ek push agents failed before 7.14.3 (keylime dd9e5c49): the cluster stack needs it.
CLUSTER_MIN_KEYLIME = (7, 14, 3)
ON_CLUSTER = ("tpm_mode", "cluster")
# The form keylime's SQLAlchemy needs: the upstream images carry psycopg2, and a bare postgresql:// loads psycopg 3.
DATABASE_URL_PREFIX = "postgresql+psycopg2://"
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




def _san_address(raw: str) -> str:
    """One address agents dial and the server certificates name: an IP address or a DNS name, nothing else."""
    value = raw.strip()
    if "://" in value or "/" in value:
        raise ValueError("a URL or path; give the bare host")
    if value.startswith("*"):
        raise ValueError("a wildcard; every agent dials one name, which the certificates must carry exactly")
    if is_ip_address(value):
        return value
    if value.count(":") == 1 and not value.endswith("]"):
        raise ValueError("a port; give the bare host (the ports follow serviceType)")
    if not is_dns_name(value):
        raise ValueError("neither an IP address nor a DNS name, so it cannot be a certificate SAN")
    return value.rstrip(".").lower()


def _kubeconfig(raw: str) -> SecretStr:
    """A kubeconfig's text; only its shape is checked here, and no part of it is ever quoted back."""
    try:
        document = yaml.safe_load(raw)
    except yaml.YAMLError:
        raise ValueError("not YAML") from None
    if not isinstance(document, dict) or not isinstance(document.get("contexts"), list):
        raise ValueError("no contexts: give a kubeconfig (kubectl config view --flatten)")
    if not kube_contexts(document):
        raise ValueError("no context names a cluster with a server URL")
    return SecretStr(raw)


def kube_contexts(document: Mapping[str, Any]) -> dict[str, str]:
    """Each context of a parsed kubeconfig -> the API server URL of its cluster."""
    servers = {
        entry.get("name"): (entry.get("cluster") or {}).get("server")
        for entry in document.get("clusters") or []
        if isinstance(entry, dict)
    }
    found = {}
    for entry in document.get("contexts") or []:
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            server = servers.get((entry.get("context") or {}).get("cluster"))
            if isinstance(server, str) and server.startswith("https://"):
                found[entry["name"]] = server
    return found


def _context_name(raw: str) -> str:
    if not raw.strip() or any(character.isspace() for character in raw):
        raise ValueError("")
    return raw


def _context_names(raw: str) -> tuple[str, ...]:
    names = json.loads(raw)
    if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
        raise ValueError("need a JSON list of context names")
    if len(set(names)) != len(names):
        raise ValueError("a context is named twice")
    return tuple(names)


_LABEL_NAME = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


def _node_label(raw: str) -> tuple[str, str]:
    key, equals, value = raw.partition("=")
    if not equals:
        raise ValueError("no '='")
    prefix = key.rpartition("/")[0]
    if not _LABEL_NAME.match(key) or len(prefix) > 253:
        raise ValueError(f"{key!r} is not a label key")
    if not _LABEL_VALUE.match(value):
        raise ValueError(f"{value!r} is not a label value")
    return key, value


def _database_url(raw: str) -> SecretStr:
    """Empty, or where keylime finds PostgreSQL; refusals name the part that is wrong, never the URL."""
    value = raw.strip()
    if not value:
        return SecretStr("")
    if not value.startswith(DATABASE_URL_PREFIX):
        raise ValueError(f"does not start with {DATABASE_URL_PREFIX}")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018  # raises on a port that is not a number
    except ValueError:
        raise ValueError("not a URL") from None
    if not parts.hostname or not parts.username:
        raise ValueError("no user@host")
    if not parts.path.strip("/") or "/" in parts.path.strip("/"):
        raise ValueError("no /database")
    return SecretStr(value)


_REGISTRY = re.compile(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]{1,5})?(/[a-z0-9]+([._-][a-z0-9]+)*)+$")


def _image_registry(raw: str) -> str:
    if "://" in raw or "@" in raw or ":" in raw.rpartition("/")[2]:
        raise ValueError("give a registry host and repository path, no scheme, tag or digest")
    if not _REGISTRY.match(raw):
        raise ValueError("")
    return raw


def _quantity(raw: str) -> str:
    if not re.fullmatch(r"[1-9]\d{0,5}(Mi|Gi|Ti)", raw):
        raise ValueError("")
    return raw


def _storage_class(raw: str) -> str:
    if raw and not is_dns_name(raw):
        raise ValueError("")
    return raw


_PEM_CERTIFICATE = re.compile(r"-----BEGIN CERTIFICATE-----\s+([A-Za-z0-9+/=\s]+?)-----END CERTIFICATE-----")


def _certificate_bundle(raw: str) -> str:
    """PEM certificates (keylime's own tpm_cert_store, or a TPM vendor's roots), or empty."""
    if not raw.strip():
        return ""
    bodies = _PEM_CERTIFICATE.findall(raw)
    if not bodies:
        raise ValueError("no PEM certificate in it")
    for index, body in enumerate(bodies):
        try:
            der = base64.b64decode("".join(body.split()), validate=True)
        except ValueError:
            raise ValueError(f"certificate {index + 1} is not base64") from None
        if not der.startswith(b"\x30"):
            raise ValueError(f"certificate {index + 1} is not DER")
    return raw.strip() + "\n"


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
    secret: bool = False
    """Set with `pulumi config set --secret`; refusals never quote its value."""

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
        "with a vTPM) | cluster (existing clusters whose nodes have TPMs). Set by each stack file.",
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
        # Every mode knows the CA its TPMs' EK certificates are signed by, so the check is on unless turned off.
        True,
        alias="requireEkCert",
        description="Only agents whose EK certificate chains to the EK trust store stay enrolled (the attestation "
        "controller checks, and removes any other enrollment; trust store: swtpm the program's TPM manufacturer CA, "
        "hwtpm the libvirt host's swtpm local CA, cluster ekTrustBundle).",
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

    # The cluster stack: existing clusters, hardware TPMs, PostgreSQL, replicated servers.
    kubeconfig: Annotated[
        SecretStr | None,
        Key(
            "a kubeconfig with the serverContext and every agentContexts entry, set as a secret "
            "(kubectl config view --flatten | pulumi config set --secret kubeconfig)",
            _kubeconfig,
            only_when=ON_CLUSTER,
            secret=True,
        ),
    ] = Field(
        None,
        alias="kubeconfig",
        description="cluster: a kubeconfig (secret) holding the contexts below; never printed or exported.",
    )
    server_context: Annotated[
        str | None, Key("a context name of kubeconfig", _context_name, only_when=ON_CLUSTER)
    ] = Field(
        None,
        alias="serverContext",
        description="cluster: the kubeconfig context the registrar, verifier, tenant and controller go to.",
    )
    agent_contexts: Annotated[
        tuple[str, ...] | None,
        Key("a list of distinct context names of kubeconfig ([]: the server's cluster)", _context_names, "array", ON_CLUSTER),
    ] = Field(  # type: ignore[assignment]  # pydantic validates the list default into a tuple
        [],
        alias="agentContexts",
        description="cluster: the kubeconfig contexts whose TPM nodes run agents; [] means the server's cluster.",
    )
    agent_node_label: Annotated[
        tuple[str, str] | None, Key("a node label key=value", _node_label, only_when=ON_CLUSTER)
    ] = Field(  # type: ignore[assignment]  # pydantic validates the text default into the pair
        "keylime.dev/tpm=true",
        alias="agentNodeLabel",
        description="cluster: agents (and the TPM device plugin) run on the nodes with this label, key=value.",
    )
    service_type: Annotated[
        ServiceType | None, Key(" | ".join(SERVICE_TYPES), _choice(SERVICE_TYPES), only_when=ON_CLUSTER)
    ] = Field(
        "LoadBalancer",
        alias="serviceType",
        description="cluster: how agents reach the registrar and verifier: LoadBalancer (ports 8890, 8891, 8881) | "
        "NodePort (registrarNodePort, verifierNodePort).",
    )
    advertised_address: Annotated[
        str | None,
        Key("an IP address or DNS name (no port, URL or wildcard): what agents dial, named in the server certificates",
            _san_address, only_when=ON_CLUSTER),
    ] = Field(
        None,
        alias="advertisedAddress",
        description="cluster: the address agents dial (the load balancer's, or a node's for NodePort): in the server "
        "certificates.",
    )
    image_registry: Annotated[
        str | None,
        Key("a registry and repository path the clusters can pull from, e.g. registry.example.com/keylime-push",
            _image_registry, only_when=ON_CLUSTER),
    ] = Field(
        None,
        alias="imageRegistry",
        description="cluster: where the program pushes its images (with your `docker login`) and the clusters pull "
        "them from, e.g. registry.example.com/keylime-push.",
    )
    database_url: Annotated[
        SecretStr | None,
        Key(
            f"empty (a PostgreSQL the program deploys), or {DATABASE_URL_PREFIX}user:password@host[:port]/database "
            "set as a secret",
            _database_url,
            only_when=ON_CLUSTER,
            secret=True,
        ),
    ] = Field(  # type: ignore[assignment]  # pydantic validates the text default
        "",
        alias="databaseUrl",
        description=f"cluster: an external PostgreSQL ({DATABASE_URL_PREFIX}..., secret) the registrar and verifier "
        "share; empty: the program deploys one.",
    )
    postgres_storage_class: Annotated[
        str | None, Key("empty (the cluster's default class) or a StorageClass name", _storage_class, only_when=ON_CLUSTER)
    ] = Field(
        "",
        alias="postgresStorageClass",
        description="cluster: StorageClass of the deployed PostgreSQL's volume; empty: the default.",
    )
    postgres_storage: Annotated[
        str | None, Key("a size such as 10Gi (Mi, Gi or Ti)", _quantity, only_when=ON_CLUSTER)
    ] = Field("10Gi", alias="postgresStorage", description="cluster: size of the deployed PostgreSQL's volume.")
    registrar_replicas: Annotated[
        int | None, Key("an integer 2..16 (one registrar is a single point of failure)", _integer(2, 16), "integer", ON_CLUSTER)
    ] = Field(2, alias="registrarReplicas", description="cluster: registrar pods, 2..16.")
    verifier_replicas: Annotated[
        int | None, Key("an integer 1..32", _integer(1, 32), "integer", ON_CLUSTER)
    ] = Field(
        2, alias="verifierReplicas", description="cluster: verifier pods (one worker process each), 1..32."
    )
    expected_agents: Annotated[
        int | None, Key("an integer 1..10000", _integer(1, 10000), "integer", ON_CLUSTER)
    ] = Field(
        10,
        alias="expectedAgents",
        description="cluster: how many agents (TPM nodes) to size cadence and rate limits for, 1..10000.",
    )
    ek_trust_bundle: Annotated[
        str | None,
        Key("PEM certificates of the TPM manufacturers' EK CAs (required when requireEkCert=true)",
            _certificate_bundle, only_when=ON_CLUSTER),
    ] = Field(
        "",
        alias="ekTrustBundle",
        description="cluster: PEM CA certificates EK certificates must chain to (e.g. keylime's tpm_cert_store).",
    )

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

    @property
    def agent_context_names(self) -> tuple[str, ...]:
        """cluster: the contexts whose TPM nodes run agents; none given means the server's own cluster."""
        assert self.server_context is not None, "only the cluster stack has contexts"
        return self.agent_contexts or (self.server_context,)

    @functools.cached_property
    def _api_servers(self) -> dict[str, str]:
        assert self.kubeconfig is not None, "only the cluster stack has a kubeconfig"
        return kube_contexts(yaml.safe_load(self.kubeconfig.get_secret_value()))

    def api_server(self, context: str) -> str:
        """cluster: the API server URL of a context of the kubeconfig (parsed once, for every context asked)."""
        return self._api_servers[context]


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


SECRET_SHOWN = "<secret>"


def _refusal(key: str, got: object, allowed: str) -> str:
    shown = SECRET_SHOWN if got is SECRET_SHOWN else repr(got)
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
    libvirt_uri = settings.get("libvirt_uri")
    if settings.get("tpm_mode") == "hwtpm" and settings.get("require_ek_cert") and libvirt_uri:
        try:
            localca_reader(libvirt_uri)
        except ValueError:
            yield _refusal("libvirtUri", libvirt_uri, f"with requireEkCert, {REACHABLE} (the vTPM's EK CA is read there)")
    agent_clusters = settings.get("agent_clusters", 1)
    if settings.get("tpm_mode") == "hwtpm" and agent_clusters != 1:
        yield _refusal("agentClusters", agent_clusters, "1 when tpmMode=hwtpm (the agents run in one VM)")
    agent_uuid = settings.get("uuid", "hash_ek")
    if settings.get("tpm_mode") == "cluster":
        yield from _cluster_problems(settings)
        if agent_uuid not in ("hash_ek", "generate"):
            yield _refusal("uuid", agent_uuid, "hash_ek | generate when tpmMode=cluster (every TPM node runs an agent)")
    elif agent_uuid not in ("hash_ek", "generate") and agent_clusters > 1:
        yield (
            f"{NAMESPACE}:uuid: the literal UUID {agent_uuid} would be shared by {agent_clusters} agents; "
            "allowed: hash_ek | generate, or a literal UUID with agentClusters=1"
        )


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def _cluster_problems(settings: Mapping[str, Any]) -> Iterator[str]:
    """The cluster stack: contexts that exist, a keylime that works on PostgreSQL, somewhere to check EKs against."""
    kubeconfig = settings.get("kubeconfig")
    if kubeconfig is not None:
        known = kube_contexts(yaml.safe_load(kubeconfig.get_secret_value()))
        wanted = [("serverContext", settings.get("server_context"))]
        wanted += [("agentContexts", name) for name in settings.get("agent_contexts") or ()]
        for key, name in wanted:
            if name is not None and name not in known:
                yield _refusal(key, name, f"a context of kubeconfig with an https server: {', '.join(sorted(known))}")
        # One cluster under two names would get every object twice: the second create fails (AlreadyExists).
        seen: dict[str, str] = {}
        for key, name in wanted:
            server = known.get(name) if name is not None else None
            if name is not None and server is not None and seen.setdefault(server, name) != name:
                yield _refusal(
                    key, name, f"one context per cluster: {seen[server]!r} names the same API server {server}"
                )
    version = settings.get("keylime_version")
    if version is not None and _version_tuple(version) < CLUSTER_MIN_KEYLIME:
        yield _refusal(
            "keylimeVersion",
            version,
            "7.14.3 or later when tpmMode=cluster (PostgreSQL with hash_ek push agents fails before it, keylime dd9e5c49)",
        )
    if settings.get("require_ek_cert") and settings.get("ek_trust_bundle") == "":
        yield _refusal(
            "ekTrustBundle",
            "",
            "PEM CA certificates when requireEkCert=true and tpmMode=cluster (e.g. cat keylime's tpm_cert_store/*.pem), "
            "or set requireEkCert=false",
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


def parse_settings(raw: Mapping[str, str | None], stack: str = "dev", secret_keys: Collection[str] = ()) -> Settings:
    """Validate raw config values (strings, as Pulumi stores them, keyed without namespace) of `stack`.

    `secret_keys` are the keys set with --secret: a secret key set in plain text is refused.
    """
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
        elif key.secret and text.strip() and field.alias not in secret_keys:
            plain_text = f"the value set with --secret, not in plain text: {key.allowed}"
            problems.append(_refusal(field.alias, SECRET_SHOWN, plain_text))  # type: ignore[arg-type]  # every field declares an alias
            continue
        try:
            settings[name] = _VALIDATORS[name].validate_python(text)
        except ValidationError as error:
            detail = error.errors()[0]["ctx"]["detail"]
            # every field of Settings declares an alias
            shown = SECRET_SHOWN if key.secret else text
            problems.append(_refusal(field.alias, shown, key.allowed + (f" ({detail})" if detail else "")))  # type: ignore[arg-type]
    problems.extend(_cross_key_problems(settings))
    if problems:
        raise SettingsError(problems)
    return Settings.model_construct(**settings, stack=stack)


def load_settings() -> Settings:
    """Read every key of the contract from the stack's Pulumi config."""
    import pulumi
    from pulumi.runtime.config import is_config_secret

    config = pulumi.Config(NAMESPACE)
    # KEYS are the fields' aliases, all declared
    raw = {key: value for key in KEYS if (value := config.get(key)) is not None}  # type: ignore[arg-type]
    secret_keys = [key for key in raw if is_config_secret(config.full_key(key))]  # type: ignore[arg-type]
    return parse_settings(raw, pulumi.get_stack(), secret_keys)  # type: ignore[arg-type]  # KEYS are the fields' aliases, all declared
