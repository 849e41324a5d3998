"""The policy pack (policy/) evaluated against the program under mocks, without a Pulumi CLI.

    python -m tools.policy_check --stack swtpm [--set agentUid=1000 ...]

Each declared resource is handed to the pack's validate functions as the objects pulumi-policy builds
from the engine's request: inputs go over the wire format (a protobuf Struct, so every number arrives
as a float), are deserialised by pulumi-policy itself (secrets unwrapped, as in `Analyze`) and wrapped
in its unknown-checking proxy; the provider is the declared provider resource, or the engine's default
provider `default_<version>` when none was named. The stack's configuration is loaded into the Pulumi
runtime, as pulumi-policy does with the PULUMI_CONFIG the engine passes. Stack policies get every
resource with its inputs as its state, which is what the mocks echo back as outputs.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Mapping
from importlib.metadata import version
from typing import Any

import pulumi
from google.protobuf import json_format, struct_pb2
from pulumi_policy import (
    PolicyCustomTimeouts,
    PolicyProviderResource,
    PolicyResource,
    PolicyResourceOptions,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)
from pulumi_policy.deserialize import deserialize_properties
from pulumi_policy.proxy import unknown_checking_proxy

from components.settings import SettingsError
from policy.rules import POLICIES
from tools.example import with_example
from tools.offline import ProgramRun, Resource, run_program, stack_config
from tools.render import parse_overrides


@dataclasses.dataclass(frozen=True)
class Violation:
    policy: str
    resource: str
    """The URN reported with the violation (the validated resource's, for resource policies)."""
    message: str

    def __str__(self) -> str:
        return f"[{self.policy}] {self.message}"


def engine_props(inputs: Mapping[str, Any]) -> Any:
    """Inputs as a policy sees them: through the wire format, pulumi-policy's deserialiser and proxy."""
    wire = json_format.ParseDict(dict(inputs), struct_pb2.Struct())
    return unknown_checking_proxy(deserialize_properties(json_format.MessageToDict(wire)))


def default_provider(resource_type: str) -> PolicyProviderResource:
    """The provider the engine would use for a resource that names none (when defaults are enabled)."""
    package = resource_type.split(":", 1)[0]
    name = f"default_{version('pulumi_' + package).replace('.', '_')}"
    urn = f"urn:pulumi:stack::keylime-push::pulumi:providers:{package}::{name}"
    return PolicyProviderResource(f"pulumi:providers:{package}", engine_props({}), urn, name)


def provider_of(resource: Resource, run: ProgramRun) -> PolicyProviderResource | None:
    if resource.type.startswith("pulumi:providers:"):
        return None  # a provider is not managed through another
    if not resource.provider:
        return default_provider(resource.type)
    declared = run.by_urn(resource.provider.rsplit("::", 1)[0])  # a provider reference is `<urn>::<id>`
    return PolicyProviderResource(declared.type, engine_props(declared.inputs), declared.urn, declared.name)


def options_of(resource: Resource) -> PolicyResourceOptions:
    return PolicyResourceOptions(
        protect=False,
        ignore_changes=[],
        delete_before_replace=resource.delete_before_replace or None,
        aliases=[],
        custom_timeouts=PolicyCustomTimeouts(0, 0, 0),
        additional_secret_outputs=list(resource.additional_secret_outputs),
        parent=resource.parent or None,
    )


def resource_args(resource: Resource, run: ProgramRun, config: Mapping[str, Any] | None = None) -> ResourceValidationArgs:
    return ResourceValidationArgs(
        resource.type,
        engine_props(resource.inputs),
        resource.urn,
        resource.name,
        options_of(resource),
        provider_of(resource, run),
        dict(config or {}),
    )


def stack_args(run: ProgramRun, config: Mapping[str, Any] | None = None) -> StackValidationArgs:
    by_urn: dict[str, PolicyResource] = {}
    for resource in run.resources:
        by_urn[resource.urn] = PolicyResource(
            resource.type, engine_props(resource.inputs), resource.urn, resource.name, options_of(resource),
            provider_of(resource, run) if resource.custom else None, None, [], {},
        )
    for resource in run.resources:
        policy_resource = by_urn[resource.urn]
        policy_resource.parent = by_urn.get(resource.parent)
        policy_resource.dependencies = [by_urn[urn] for urn in resource.dependencies if urn in by_urn]
    return StackValidationArgs(list(by_urn.values()), dict(config or {}))


def evaluate(
    run: ProgramRun,
    configuration: Mapping[str, str],
    policy_config: Mapping[str, Mapping[str, Any]] | None = None,
    policies: list = POLICIES,
) -> list[Violation]:
    """Every violation the pack reports for `run`, evaluated with the stack's `configuration`."""
    pulumi.runtime.set_all_config(dict(configuration))
    policy_config = policy_config or {}
    violations: list[Violation] = []
    for policy in policies:
        config = policy_config.get(policy.name)
        if isinstance(policy, ResourceValidationPolicy):
            for resource in run.resources:
                if not resource.custom:
                    continue
                args = resource_args(resource, run, config)
                policy.validate(
                    # a callback with urn optional, as the engine's is; mypy cannot infer a lambda with a default against it
                    args, lambda message, urn=None, r=resource, p=policy: violations.append(Violation(p.name, r.urn, message))  # type: ignore[misc]
                )
        elif isinstance(policy, StackValidationPolicy):
            policy.validate(
                stack_args(run, config),
                # a callback with urn optional, as the engine's is; mypy cannot infer a lambda with a default against it
                lambda message, urn=None, p=policy: violations.append(Violation(p.name, urn or "", message)),  # type: ignore[misc]
            )
    return violations


def check_stack(stack: str, overrides: Mapping[str, object] | None = None, policy_config=None) -> list[Violation]:
    """The cluster stack is checked on the example clusters (tools/example), under any overrides given."""
    config = with_example(stack, overrides)
    return evaluate(run_program(stack, config), stack_config(stack, config), policy_config)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stack", required=True, choices=["swtpm", "hwtpm", "cluster"])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    try:
        violations = check_stack(args.stack, parse_overrides(args.overrides))
    except SettingsError as error:
        print(error, file=sys.stderr)
        return 2
    for violation in violations:
        print(violation)
    print(f"policy pack on stack {args.stack} (under mocks): {len(violations)} mandatory violation(s)")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
