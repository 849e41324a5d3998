"""What "enrolled with the policy" and "attested" mean, written once.

Both the controller and the deploy-time enrollment Command (components/scripts/enroll.py) decide with these
functions, so they never disagree on which agent needs (re-)enrolling or on whether an agent passes.
Pure functions: no I/O, no keylime or Kubernetes imports (enroll.py runs with the standard library only).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping

PASS, FAIL, TIMEOUT, PENDING = "PASS", "FAIL", "TIMEOUT", "PENDING"
STATUSES = (PASS, FAIL, TIMEOUT, PENDING)
# The tenant adds the PCR mask it derives from the policy; it is not part of what the operator configured.
DERIVED_KEYS = ("mask",)


class PolicyError(ValueError):
    """A TPM policy that cannot be enrolled."""


def canonical_policy(policy: str | Mapping[str, object] | None) -> dict[str, list[str]]:
    """A TPM policy as a comparable value: PCR -> sorted lower-case digests, derived keys dropped.

    Accepts the configured form ({"8": "<hex>"} or lists) and the verifier's stored form ({"8": ["<hex>"], "mask": ...}).
    """
    if policy is None:
        return {}
    document = json.loads(policy) if isinstance(policy, str) else dict(policy)
    if not isinstance(document, dict):
        raise PolicyError(f"a TPM policy is a JSON object, got {type(document).__name__}")
    canonical = {}
    for pcr, digests in document.items():
        if pcr in DERIVED_KEYS:
            continue
        values = digests if isinstance(digests, list) else [digests]
        canonical[str(int(pcr))] = sorted(str(value).lower() for value in values)
    return dict(sorted(canonical.items(), key=lambda item: int(item[0])))


def enrollable_policy(policy: str | Mapping[str, object], measured_boot: bool = False) -> dict[str, list[str]]:
    """The canonical policy, refused when it names no PCR and there is no measured-boot policy (which selects
    PCRs of its own): a push agent enrolled so never attests (the verifier requests no evidence and answers
    403 challenges_expired)."""
    canonical = canonical_policy(policy)
    if not canonical and not measured_boot:
        raise PolicyError("the TPM policy names no PCR; an agent enrolled with it never attests")
    return canonical


def pcr_mask(policy: Mapping[str, list[str]]) -> str:
    return hex(sum(1 << int(pcr) for pcr in policy))


def stored_form(policy: Mapping[str, list[str]]) -> str:
    """The tpm_policy JSON the verifier keeps: each PCR with its digests, and the PCR mask."""
    return json.dumps({**policy, "mask": pcr_mask(policy)})


@dataclasses.dataclass(frozen=True)
class Changes:
    """What to do at the verifier so that exactly `desired` is enrolled with the policy."""

    enroll: tuple[str, ...]
    """Not enrolled yet."""
    re_enroll: tuple[str, ...]
    """Enrolled with another policy: delete and enroll again (no agent stays on an old policy)."""
    remove: tuple[str, ...]
    """Enrolled but not desired."""


def changes(desired: Iterable[str], enrolled: Mapping[str, str | Mapping[str, object] | None],
            policy: str | Mapping[str, object], measured_boot: bool = False) -> Changes:
    """`enrolled` maps each agent the verifier has to the tpm_policy it stores."""
    wanted = enrollable_policy(policy, measured_boot)
    desired = sorted(set(desired))
    return Changes(
        enroll=tuple(agent for agent in desired if agent not in enrolled),
        re_enroll=tuple(agent for agent in desired if agent in enrolled and canonical_policy(enrolled[agent]) != wanted),
        remove=tuple(sorted(agent for agent in enrolled if agent not in set(desired))),
    )


def verdict(record: Mapping[str, object] | None, policy: str | Mapping[str, object] | None = None) -> str | None:
    """None when the agent is trusted now: enrolled, with the policy if one is given, and PASS. Otherwise why not.

    Only PASS is accepted: PENDING (never attested), TIMEOUT (stopped attesting: dead or cut off) and FAIL are not.
    """
    if record is None:
        return "not enrolled at the verifier"
    status = record.get("attestation_status")
    # verifier JSON record: attestation_count is a number
    count = int(record.get("attestation_count") or 0)  # type: ignore[call-overload]
    # verifier JSON record: tpm_policy is a JSON string or object
    if policy is not None and canonical_policy(record.get("tpm_policy")) != canonical_policy(policy):  # type: ignore[arg-type]
        # verifier JSON record: tpm_policy is a JSON string or object
        return f"enrolled with another TPM policy ({json.dumps(canonical_policy(record.get('tpm_policy')))}), not re-enrolled yet"  # type: ignore[arg-type]
    if status == PASS:
        return None
    if status == FAIL:
        return "attestation FAIL"
    if status == TIMEOUT:
        return (f"attestation TIMEOUT: no evidence within {record.get('maximum_attestation_interval', 'the verifier timeout')}"
                f" (last success {record.get('last_successful_attestation') or 'never'}); the agent is dead or cut off")
    if count == 0:
        return f"enrolled, not attested yet ({status})"
    return f"attestation {status}"
