"""The Pulumi SDK internals the offline recorder relies on (tools/pulumi_internals.py), checked against the pinned SDK."""

from __future__ import annotations

import pulumi

from tools import pulumi_internals
from tools.offline import run_declarations

WRITTEN_FOR = (
    f"tools/pulumi_internals.py is written against pulumi {pulumi_internals.pinned_pulumi()} (pinned in "
    "requirements.txt); fix it there for the installed SDK"
)


def test_the_sdk_internals_the_recorder_uses_are_those_of_the_pinned_pulumi():
    found = pulumi_internals.problems()
    assert not found, f"{WRITTEN_FOR}: " + "; ".join(found)


def test_a_registration_is_recorded_with_every_option_and_secrets_marked():
    def declare() -> None:
        provider = pulumi.ProviderResource("probe", "probe-provider", {})
        parent = pulumi.ComponentResource("probe:index:Parent", "parent")
        first = pulumi.CustomResource("probe:index:Thing", "first", {}, pulumi.ResourceOptions(provider=provider))
        pulumi.CustomResource(
            "probe:index:Thing",
            "second",
            {"plain": "value", "hidden": pulumi.Output.secret("s3cret")},
            pulumi.ResourceOptions(
                parent=parent,
                provider=provider,
                depends_on=[first],
                delete_before_replace=True,
                additional_secret_outputs=["result"],
                replace_on_changes=["plain"],
                deleted_with=first,
            ),
        )

    program = run_declarations(declare)
    first, second = program.named("first"), program.named("second")
    recorded = {
        "parent": second.parent,
        "custom": second.custom,
        "dependencies": second.dependencies,
        "provider": second.provider.split("::")[-2],
        "delete_before_replace": second.delete_before_replace,
        "additional_secret_outputs": second.additional_secret_outputs,
        "replace_on_changes": second.replace_on_changes,
        "deleted_with": second.deleted_with,
        "plain": second.inputs.get("plain"),
        "hidden is secret": pulumi_internals.is_secret(second.inputs.get("hidden")),
        "hidden": second.plain.get("hidden"),
    }
    assert recorded == {
        "parent": program.named("parent").urn,
        "custom": True,
        "dependencies": [first.urn],
        "provider": "probe-provider",
        "delete_before_replace": True,
        "additional_secret_outputs": ["result"],
        "replace_on_changes": ["plain"],
        "deleted_with": first.urn,
        "plain": "value",
        "hidden is secret": True,
        "hidden": "s3cret",
    }, WRITTEN_FOR
