"""Run the Pulumi program without a Pulumi CLI: providers are replaced by recording mocks.

Used by `tools/render.py` (the offline render reviewers read) and by the tests. The mocks stand in
for providers only: they echo inputs back as state and invent the few outputs a provider would
compute (certificates, command stdout), deterministically, so two runs record identical inputs.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import json
import runpy
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pulumi
import yaml

from components import settings
from tools import pulumi_internals
from tools.pulumi_internals import is_secret

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "keylime-push"
SECRET_PLACEHOLDER = "[secret]"


@dataclasses.dataclass(frozen=True)
class Secret:
    """A config override set as `pulumi config set --secret` would set it."""

    value: str


def secret_config_keys(overrides: Mapping[str, object] | None = None) -> list[str]:
    """The namespaced keys of the overrides that are secrets."""
    return [key if ":" in key else f"{PROJECT}:{key}" for key, value in (overrides or {}).items() if isinstance(value, Secret)]


def stack_config(stack: str, overrides: Mapping[str, object] | None = None) -> dict[str, str]:
    """The config a `pulumi up -s <stack>` would see: the declared defaults, then the stack file, then overrides.

    The defaults are the ones Pulumi.yaml declares, taken from their one definition in components/settings.py.
    Values are strings, as the Pulumi engine hands them to the program; keys are namespaced.
    """
    merged: dict[str, object] = {f"{PROJECT}:{key}": default for key, default in settings.DECLARED_DEFAULTS.items()}
    stack_file = ROOT / f"Pulumi.{stack}.yaml"
    merged.update((yaml.safe_load(stack_file.read_text()) or {}).get("config", {}))
    for key, value in (overrides or {}).items():
        merged[key if ":" in key else f"{PROJECT}:{key}"] = value
    return {key: config_string(value) for key, value in merged.items() if value is not None}


def config_string(value: object) -> str:
    """A config value as `pulumi config set` takes it (and as the engine hands it back)."""
    if isinstance(value, Secret):
        return value.value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def integral(value: Any) -> Any:
    """The engine's wire format (protobuf Struct) carries every number as a float; give integers back."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [integral(v) for v in value]
    return value


def reveal(value: Any) -> Any:
    """Inputs as the provider would receive them, secrets unwrapped."""
    if is_secret(value):
        return reveal(value["value"])
    if isinstance(value, dict):
        return {k: reveal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [reveal(v) for v in value]
    return value


def redact(value: Any) -> Any:
    """Inputs as a reviewer may see them: every secret replaced by a placeholder (a secret map keeps its keys)."""
    if is_secret(value):
        inner = value["value"]
        return {k: SECRET_PLACEHOLDER for k in inner} if isinstance(inner, dict) else SECRET_PLACEHOLDER
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


@dataclasses.dataclass(frozen=True)
class Resource(pulumi_internals.Registration):
    """One resource the program declared, with the options the engine would see; numbers as the program wrote them."""

    @property
    def plain(self) -> dict[str, Any]:
        return reveal(self.inputs)

    def inventory_entry(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "name": self.name,
            "urn": self.urn,
            "parent": self.parent,
            "provider": self.provider.split("::")[0] if self.provider else "",
            "dependsOn": sorted(self.dependencies),
            "deleteBeforeReplace": self.delete_before_replace,
            "inputs": redact(self.inputs),
        }


SERVICE_ACCOUNT_TOKEN = "kubernetes.io/service-account-token"


def fake_pem(kind: str, name: str) -> str:
    digest = hashlib.sha256(f"{kind}:{name}".encode()).hexdigest()
    return f"-----BEGIN {kind}-----\n{digest}\n-----END {kind}-----\n"


class RecordingMocks(pulumi.runtime.Mocks):
    """Providers stand-in: state = inputs plus deterministic stand-ins for computed outputs."""

    def __init__(self, command_stdout: Callable[[str, dict[str, Any]], str] | None = None):
        self.command_stdout = command_stdout or (lambda name, inputs: "")

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        state = dict(args.inputs)
        if args.typ == "tls:index/privateKey:PrivateKey":
            state["privateKeyPem"] = fake_pem("PRIVATE KEY", args.name)
            state["publicKeyPem"] = fake_pem("PUBLIC KEY", args.name)
            state["privateKeyOpenssh"] = fake_pem("OPENSSH PRIVATE KEY", args.name)
            state["publicKeyOpenssh"] = f"ssh-ed25519 {hashlib.sha256(args.name.encode()).hexdigest()}\n"
        elif args.typ == "tls:index/certRequest:CertRequest":
            state["certRequestPem"] = fake_pem("CERTIFICATE REQUEST", args.name)
        elif args.typ in ("tls:index/selfSignedCert:SelfSignedCert", "tls:index/locallySignedCert:LocallySignedCert"):
            state["certPem"] = fake_pem("CERTIFICATE", args.name)
        elif args.typ == "kubernetes:core/v1:Secret" and args.inputs.get("type") == SERVICE_ACCOUNT_TOKEN:
            # What the cluster's token controller writes into a token Secret (the provider waits for it).
            state["data"] = {
                "token": base64.b64encode(f"token-of-{args.name}".encode()).decode(),
                "ca.crt": base64.b64encode(fake_pem("CERTIFICATE", f"{args.name}-cluster-ca").encode()).decode(),
            }
        elif args.typ == "command:local:Command":
            state["stdout"] = self.command_stdout(args.name, reveal(args.inputs))
            state["stderr"] = ""
        return f"{args.name}-id", state

    # pulumi's Mocks.call declares (outputs, failures); its runtime (mocks.py) also takes the plain outputs dict
    def call(self, args: pulumi.runtime.MockCallArgs) -> dict[str, Any]:  # type: ignore[override]
        raise NotImplementedError(f"the program makes no invokes; got {args.token}")


@dataclasses.dataclass(frozen=True)
class StackOutput:
    value: Any
    secret: bool


@dataclasses.dataclass
class ProgramRun:
    resources: list[Resource]
    outputs: dict[str, StackOutput]

    def of_type(self, type_: str) -> list[Resource]:
        return [r for r in self.resources if r.type == type_]

    def named(self, name: str) -> Resource:
        matches = [r for r in self.resources if r.name == name]
        if len(matches) != 1:
            raise KeyError(f"{len(matches)} resources named {name!r}")
        return matches[0]

    def by_urn(self, urn: str) -> Resource:
        return next(r for r in self.resources if r.urn == urn)


def run_program(
    stack: str,
    overrides: Mapping[str, object] | None = None,
    command_stdout: Callable[[str, dict[str, Any]], str] | None = None,
    main: Path = ROOT / "__main__.py",
    declared: list[Resource] | None = None,
) -> ProgramRun:
    """Evaluate `__main__.py` for `stack` under mocks (preview=False, so every apply runs).

    `declared` receives each registration as it happens, so a caller can see what existed when the
    program raised.
    """
    return run_declarations(
        lambda: runpy.run_path(str(main), run_name="__main__"),
        stack=stack,
        config=stack_config(stack, overrides),
        secret_keys=secret_config_keys(overrides),
        command_stdout=command_stdout,
        declared=declared,
    )


def run_declarations(
    declare: Callable[[], object],
    stack: str = "test",
    config: Mapping[str, str] | None = None,
    command_stdout: Callable[[str, dict[str, Any]], str] | None = None,
    declared: list[Resource] | None = None,
    secret_keys: list[str] | None = None,
) -> ProgramRun:
    """Run `declare` (the program, or one component with its Args) under mocks and record what it declares."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    mocks = RecordingMocks(command_stdout)
    recorded = declared if declared is not None else []

    def record(registration: pulumi_internals.Registration) -> None:
        recorded.append(Resource(**{**vars(registration), "inputs": integral(registration.inputs)}))

    monitor = pulumi_internals.RegistrationMonitor(mocks, record)
    pulumi_internals.forget_root_stack()
    pulumi.runtime.set_mocks(mocks, project=PROJECT, stack=stack, preview=False, monitor=monitor)
    pulumi.runtime.set_all_config(dict(config or {}), secret_keys or [])

    outputs: dict[str, StackOutput] = {}

    @pulumi.runtime.test
    async def evaluate() -> None:
        declare()
        for name, value in pulumi_internals.stack_exports().items():
            output = pulumi.Output.from_input(value)
            outputs[name] = StackOutput(await output.future(), await output.is_secret())

    try:
        evaluate()
    finally:
        loop.close()
    resources = sorted(recorded, key=lambda r: r.urn)
    return ProgramRun(resources=resources, outputs=outputs)
