"""The policy pack as Pulumi runs it: policy/__main__.py serving the Analyzer gRPC service.

The Pulumi CLI (the engine) is not here; these tests play its part with the engine's own requests:
inputs in the wire format with their secret marks, the provider, and the stack's configuration in
PULUMI_CONFIG, as the engine starts a pack. pulumi-policy's servicer builds the policy arguments.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import empty_pb2, json_format, struct_pb2
from helpers import ROOT
from pulumi.runtime.proto import analyzer_pb2, analyzer_pb2_grpc

from tools.offline import ProgramRun, Resource, run_program, stack_config

MANDATORY = analyzer_pb2.EnforcementLevel.MANDATORY


def start_pack(configuration: dict[str, str]) -> tuple[subprocess.Popen, analyzer_pb2_grpc.AnalyzerStub]:
    env = {**os.environ, "PULUMI_CONFIG": json.dumps(configuration), "PULUMI_PROJECT": "keylime-push",
           "PULUMI_STACK": "swtpm", "PULUMI_DRY_RUN": "true"}
    pack = subprocess.Popen([sys.executable, "__main__.py"], cwd=ROOT / "policy", env=env, stdout=subprocess.PIPE)
    # stdout=PIPE above, so never None; the pack prints the port it serves on, as the engine expects
    port = int(pack.stdout.readline())  # type: ignore[union-attr]
    return pack, analyzer_pb2_grpc.AnalyzerStub(grpc.insecure_channel(f"127.0.0.1:{port}"))


@pytest.fixture
def pack_with() -> Iterator:
    started: list[subprocess.Popen] = []

    def start(configuration: dict[str, str]) -> analyzer_pb2_grpc.AnalyzerStub:
        pack, stub = start_pack(configuration)
        started.append(pack)
        return stub

    yield start
    for pack in started:
        pack.kill()
        pack.wait()


@pytest.fixture(scope="module")
def swtpm() -> ProgramRun:
    return run_program("swtpm")


def wire(inputs: dict) -> struct_pb2.Struct:
    return json_format.ParseDict(inputs, struct_pb2.Struct())


def request(resource: Resource, run: ProgramRun) -> analyzer_pb2.AnalyzeRequest:
    provider = run.by_urn(resource.provider.rsplit("::", 1)[0])
    return analyzer_pb2.AnalyzeRequest(
        type=resource.type,
        name=resource.name,
        urn=resource.urn,
        properties=wire(resource.inputs),
        options=analyzer_pb2.AnalyzerResourceOptions(
            parent=resource.parent, additionalSecretOutputs=resource.additional_secret_outputs
        ),
        provider=analyzer_pb2.AnalyzerProviderResource(
            type=provider.type, name=provider.name, urn=provider.urn, properties=wire(provider.inputs)
        ),
    )


def diagnostics(response: analyzer_pb2.AnalyzeResponse) -> list[tuple[str, str]]:
    assert all(d.enforcementLevel == MANDATORY for d in response.diagnostics)
    return [(d.policyName, d.message) for d in response.diagnostics]


def test_the_pack_serves_every_policy_as_mandatory(pack_with):
    info = pack_with({}).GetAnalyzerInfo(empty_pb2.Empty())
    assert info.name == "keylime-push"
    assert {p.name: p.enforcementLevel for p in info.policies} == {
        name: MANDATORY
        for name in (
            "agent-security-context",
            "no-privilege-without-reason",
            "explicit-provider",
            "images-pinned",
            "key-material-in-secrets",
            "tpm-policy-pcrs",
            "host-ports-bound",
            "dialed-addresses-are-sans",
            "agent-endpoints-published",
        )
    }


def test_the_engine_s_requests_for_the_program_pass(pack_with, swtpm):
    stub = pack_with(stack_config("swtpm"))
    found = [d for r in swtpm.resources if r.custom and r.provider for d in diagnostics(stub.Analyze(request(r, swtpm)))]
    assert found == []
    stack = analyzer_pb2.AnalyzeStackRequest(
        resources=[
            analyzer_pb2.AnalyzerResource(type=r.type, name=r.name, urn=r.urn, properties=wire(r.inputs), parent=r.parent)
            for r in swtpm.resources
        ]
    )
    assert diagnostics(stub.AnalyzeStack(stack)) == []


def test_the_stack_configuration_reaches_the_pack(pack_with, swtpm):
    """The engine passes the stack's config as PULUMI_CONFIG; an agent at 490 is wrong for a stack at 1000."""
    stub = pack_with(stack_config("swtpm", {"agentUid": 1000}))
    found = diagnostics(stub.Analyze(request(swtpm.named("agents-1-agent"), swtpm)))
    assert [policy for policy, _ in found] == ["agent-security-context"] * 3
    assert all("runAsUser is 490, not 1000 (keylime-push:agentUid)" in message for _, message in found)


def test_a_secret_key_in_a_configmap_is_refused_through_the_wire(pack_with, swtpm):
    """The registrar's TLS files, still marked secret on the wire, sent as a ConfigMap's data."""
    secret = swtpm.named("infra-registrar-tls")
    as_config_map = {**secret.inputs, "kind": "ConfigMap", "data": secret.inputs["stringData"]}
    del as_config_map["stringData"], as_config_map["type"]
    assert "4dabf18193072939515e22adb298388d" in json.dumps(as_config_map["data"])  # the secret mark
    resource = Resource(**{**secret.__dict__, "type": "kubernetes:core/v1:ConfigMap", "inputs": as_config_map})
    found = diagnostics(pack_with(stack_config("swtpm")).Analyze(request(resource, swtpm)))
    assert [policy for policy, _ in found] == ["key-material-in-secrets"]
    assert "data.server-private.pem holds a private key" in found[0][1]
