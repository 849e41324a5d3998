"""Every Pulumi SDK internal the offline recorder (tools/offline.py) relies on, and nothing else.

The SDK's public mocks hand a program's registrations to `Mocks.new_resource` without their options
(parent, dependencies, provider, deleteBeforeReplace, ...), which the graph and lifecycle tests assert
on, so the recorder listens one level lower, on the mock monitor's gRPC requests, and reads the SDK's
secret marker off the wire format. Those are internals: `problems()` lists what no longer matches, and
tests/test_pulumi_internals.py fails with it, naming the pulumi version requirements.txt pins.
"""

from __future__ import annotations

import contextvars
import dataclasses
import inspect
import re
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import rpc
from pulumi.runtime.proto import resource_pb2

REQUIREMENTS = Path(__file__).resolve().parent.parent / "requirements.txt"
# The RegisterResourceRequest fields a Registration is read from.
REQUEST_FIELDS = (
    "type", "name", "parent", "custom", "object", "dependencies", "provider", "deleteBeforeReplace",
    "additionalSecretOutputs", "replaceOnChanges", "deletedWith",
)


def pinned_pulumi() -> str:
    (pinned,) = re.findall(r"^pulumi==(\S+)$", REQUIREMENTS.read_text(), re.MULTILINE)
    return pinned


def problems() -> list[str]:
    """What of the SDK this module uses is missing or different in the installed pulumi."""
    found = []
    installed = version("pulumi")
    if installed != pinned_pulumi():
        found.append(f"pulumi {installed} is installed")
    for name in ("_special_sig_key", "_special_secret_sig", "deserialize_properties", "serialize_property"):
        if not hasattr(rpc, name):
            found.append(f"pulumi.runtime.rpc.{name} is gone")
    if not callable(getattr(pulumi_mocks.MockMonitor, "RegisterResource", None)):
        found.append("pulumi.runtime.mocks.MockMonitor.RegisterResource is gone")
    if "monitor" not in inspect.signature(pulumi.runtime.set_mocks).parameters:
        found.append("pulumi.runtime.set_mocks takes no monitor")
    if not hasattr(pulumi.runtime, "get_root_resource"):
        found.append("pulumi.runtime.get_root_resource is gone")
    if not isinstance(getattr(pulumi.runtime.settings, "ROOT", None), contextvars.ContextVar):
        found.append("pulumi.runtime.settings.ROOT is no longer a ContextVar")
    fields = resource_pb2.RegisterResourceRequest.DESCRIPTOR.fields_by_name
    found.extend(f"RegisterResourceRequest has no field {name}" for name in REQUEST_FIELDS if name not in fields)
    return found


def is_secret(value: object) -> bool:
    """Whether a deserialized input is the SDK's wire form of a secret: {sig: secret marker, value: ...}."""
    return isinstance(value, dict) and value.get(rpc._special_sig_key) == rpc._special_secret_sig


@dataclasses.dataclass(frozen=True)
class Registration:
    """One resource registration as the engine would receive it: inputs and options."""

    type: str
    name: str
    urn: str
    parent: str
    custom: bool
    inputs: dict[str, Any]
    dependencies: list[str]
    provider: str
    delete_before_replace: bool
    additional_secret_outputs: list[str]
    replace_on_changes: list[str]
    ignore_changes: list[str]
    deleted_with: str
    alias_parents: list[str]
    """The parents each alias names (the URNs of components the resource used to be a child of)."""


class RegistrationMonitor(pulumi_mocks.MockMonitor):
    """The SDK's mock monitor, also handing every registration (but the stack's) to `on_register`."""

    def __init__(self, mocks: pulumi.runtime.Mocks, on_register: Callable[[Registration], None]):
        super().__init__(mocks)
        self.on_register = on_register

    def RegisterResource(self, request):  # noqa: N802 (gRPC method name)
        response = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            self.on_register(
                Registration(
                    type=request.type,
                    name=request.name,
                    urn=response.urn,
                    parent=request.parent,
                    custom=request.custom,
                    inputs=rpc.deserialize_properties(request.object),
                    dependencies=list(request.dependencies),
                    provider=request.provider,
                    delete_before_replace=request.deleteBeforeReplace,
                    additional_secret_outputs=list(request.additionalSecretOutputs),
                    replace_on_changes=list(request.replaceOnChanges),
                    ignore_changes=list(request.ignoreChanges),
                    deleted_with=request.deletedWith,
                    alias_parents=[
                        *(alias.spec.parentUrn for alias in request.aliases if alias.HasField("spec")),
                        *(urn.rsplit("::", 1)[0] for urn in request.aliasURNs),
                    ],
                )
            )
        return response


def forget_root_stack() -> None:
    """set_mocks makes a root stack only when there is none, so without this every run in a process would
    share the first run's stack, and its exports would show up in the outputs of the runs after it."""
    pulumi.runtime.settings.ROOT.set(None)


def stack_exports() -> dict[str, Any]:
    """What the program exported: under mocks nothing finalises the stack, so read them off its root resource."""
    # private runtime API: the root resource is a Stack, set before the program runs
    return dict(pulumi.runtime.get_root_resource().outputs)  # type: ignore[union-attr]
