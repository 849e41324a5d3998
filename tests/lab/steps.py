"""Steps the lab tests share: the program's declared enrollment Commands, run for real, and the verifier's view."""

from __future__ import annotations

import json

from tools.lab.session import run_enrollment as run_enroll

__all__ = ["as_verifier_stores", "command", "registrar_view", "run_enroll", "verifier_policy", "verifier_view"]


def command(run, name: str) -> dict:
    """A declared enrollment Command's inputs (create, update, delete, environment)."""
    return run.named(name).plain


def verifier_view(infra, uuid: str) -> dict | None:
    """The verifier's record of the agent (`keylime_tenant -c status --push-model`), or None if it has none."""
    result = infra.tenant("-c", "status", "-u", uuid, "--push-model")
    marker = "Agent Info from Verifier"
    if marker not in result.stdout:
        return None
    return json.loads(result.stdout.split(marker, 1)[1].split("\n", 2)[1])[uuid]


def registrar_view(infra, uuid: str) -> dict:
    """The registrar's record of an activated agent, as `keylime_tenant -c status` shows it."""
    result = infra.tenant("-c", "status", "-u", uuid, "--push-model")
    marker = "Agent Info from Registrar"
    assert marker in result.stdout, result.stdout + result.stderr
    return json.loads(result.stdout.split(marker, 1)[1].split("\n", 2)[1])[uuid]


def verifier_policy(infra, uuid: str) -> dict:
    record = verifier_view(infra, uuid)
    assert record is not None, f"the verifier does not have {uuid}"
    policy = json.loads(record["tpm_policy"])
    policy.pop("mask")  # the PCR mask the tenant derives from the policy
    return policy


def as_verifier_stores(tpm_policy: str) -> dict:
    """A TPM_POLICY as the verifier keeps it: each PCR with a list of digests."""
    return {pcr: digests if isinstance(digests, list) else [digests] for pcr, digests in json.loads(tpm_policy).items()}
