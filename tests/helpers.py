"""What the tests share besides fixtures: the stack's Settings, and ways into recorded Kubernetes objects."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pulumi
import pulumi_command as command
import pulumi_kubernetes as k8s
import pytest

from components import postgres
from components.keylime_servers import ServerCertificates
from components.kind import KUBERNETES_VERSION
from components.pki import IssuedCertificate
from components.settings import Settings, SettingsError, parse_settings
from tools.offline import ProgramRun, run_declarations, secret_config_keys, stack_config

ROOT = Path(__file__).resolve().parent.parent
# The shape `keylime-policy create measured-boot` writes (values shortened): what keylime's example policy reads.
REFSTATE = {
    "has_secureboot": True,
    "scrtm_and_bios": [{"scrtm": {"sha256": "0x2a"}, "platform_firmware": [{"sha256": "0xd0"}]}],
    "pk": [{"SignatureOwner": "6b65796c-696d-6570-7573-682d73796e74", "SignatureData": "0xfc"}],
    "kek": [],
    "db": [],
    "dbx": [],
    "vendor_db": [],
    "mokdig": [],
    "mokxdig": [],
    "kernels": [{
        "kernel_authcode_sha256": "0x01", "shim_authcode_sha256": "0x02", "grub_authcode_sha256": "0x03",
        "initrd_plain_sha256": "0x04", "kernel_cmdline": r"/vmlinuz\-6\.8\.0 ro",
    }],
}
# Config of a stack whose agents attest their boot.
MEASURED = {"mbPolicy": json.dumps(REFSTATE, indent=1), "tpmPolicy": "{}"}


# kubernetes-validate and checkov live in their own virtualenv (see requirements-validators.txt).
VALIDATORS = Path(os.environ.get("VALIDATORS_BIN", Path(sys.executable).parent))

# Two hash seeds under which the same set of a few names iterates in different orders.
HASH_SEEDS = ("1", "2")


def under_each_hash_seed(argv: list[str]) -> list[str]:
    """stdout of `argv` run in fresh interpreters, one per hash seed: a set's order changes between them
    as it does between two `pulumi up` runs, while two evaluations in one process would agree."""
    outputs = []
    for seed in HASH_SEEDS:
        result = subprocess.run(
            argv,
            cwd=ROOT,
            env={**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout)
    return outputs


def rendered_files(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


def settings_for(stack: str = "swtpm", **overrides: object) -> Settings:
    """The Settings a stack file (plus overrides) yields, read the way the program reads them."""
    namespaced = stack_config(stack, overrides)
    return parse_settings(
        {key.split(":", 1)[1]: value for key, value in namespaced.items() if key.startswith("keylime-push:")},
        stack,
        [key.split(":", 1)[1] for key in secret_config_keys(overrides)],
    )


def problems_for(stack: str = "swtpm", **overrides: object) -> list[str]:
    """The configuration problems a stack file (plus overrides) is refused with."""
    with pytest.raises(SettingsError) as raised:
        settings_for(stack, **overrides)
    return raised.value.problems


def pod_spec(resource) -> dict:
    return resource.plain["spec"]["template"]["spec"]


def all_containers(resource) -> list[dict]:
    spec = pod_spec(resource)
    return [*spec.get("initContainers", []), *spec["containers"]]


def kube_objects(run: ProgramRun, kind: str, cluster: str | None = None) -> list:
    """Kubernetes objects of `kind`, optionally only those sent through the provider `<cluster>-k8s`."""
    found = [r for r in run.resources if r.type.startswith("kubernetes:") and r.type.endswith(f":{kind}")]
    if cluster is not None:
        found = [r for r in found if r.provider.split("::")[-2] == f"{cluster}-k8s"]
    return found


def env_of(container: dict) -> dict[str, str]:
    return {item["name"]: item.get("value") for item in container.get("env", [])}


def validate_strictly(manifests: list[Path]) -> subprocess.CompletedProcess:
    """kubernetes-validate --strict against the Kubernetes version the Kind clusters run."""
    return subprocess.run(
        [str(VALIDATORS / "kubernetes-validate"), "--strict", "-k", KUBERNETES_VERSION, "--quiet", *map(str, manifests)],
        capture_output=True, text=True, check=False,
    )


def checkov(folder: Path) -> tuple[list[str], int]:
    """checkov's Kubernetes checks over every manifest under `folder`: the failed ones (`<check> <resource>`), and
    how many passed."""
    result = subprocess.run(
        [str(VALIDATORS / "checkov"), "-d", str(folder), "--framework", "kubernetes", "--skip-download", "--output",
         "json", "--quiet"],
        capture_output=True, text=True, check=False,
    )
    report = json.loads(result.stdout)
    reports = report if isinstance(report, list) else [report]
    failed = [f"{c['check_id']} {c['resource']}" for r in reports for c in r.get("results", {}).get("failed_checks", [])]
    return failed, sum(r.get("summary", {}).get("passed", 0) for r in reports)


def database_alone(
    password: str, external_url: str | None = None, urls: list[str] | None = None, **args: object
) -> tuple[ProgramRun, list[str]]:
    """Only a KeylimeDatabase (its generated password is `password`): what it declares, and the names of what
    its `ready` holds; `urls` receives its `url`."""
    ready: list[str] = []

    def declare() -> None:
        cluster = k8s.Provider("cluster", kubeconfig="kubeconfig")
        namespace = k8s.core.v1.Namespace(
            "namespace", metadata={"name": "keylime"}, opts=pulumi.ResourceOptions(provider=cluster)
        )
        database = postgres.KeylimeDatabase(
            "db",
            postgres.KeylimeDatabaseArgs(
                provider=cluster,
                namespace=namespace,
                external_url=None if external_url is None else pulumi.Output.secret(external_url),
                **{"storage_class": None, "storage_size": "8Gi", **args},  # type: ignore[arg-type]
            ),
            pulumi.ResourceOptions(providers=[command.Provider("command")]),
        )
        assert (database.secret_name, database.registrar_url_key, database.verifier_url_key) == (
            postgres.SECRET_NAME, postgres.REGISTRAR_URL_KEY, postgres.VERIFIER_URL_KEY,
        )
        ready.extend(resource.pulumi_resource_name for resource in database.ready)
        if urls is not None:
            database.url.apply(urls.append)

    run = run_declarations(declare, command_stdout=lambda name, inputs: password if name == "db-password" else "")
    return run, sorted(ready)


def certificates() -> ServerCertificates:
    """Stand-in certificates, plain values (`CERT <role>`, `KEY <role>` as a secret), for a component built alone."""

    def issued(role: str) -> IssuedCertificate:
        return IssuedCertificate(
            cert_pem=pulumi.Output.from_input(f"CERT {role}"), private_key_pem=pulumi.Output.secret(f"KEY {role}")
        )

    return ServerCertificates(
        ca_cert_pem="CA",
        registrar=issued("registrar"),
        verifier=issued("verifier"),
        verifier_client=issued("verifier-client"),
        tenant=issued("tenant"),
    )
