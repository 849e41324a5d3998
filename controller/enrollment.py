"""What "enrolled with the policy" and "attested" mean, written once.

Both the controller and the deploy-time enrollment Command (components/scripts/enroll.py) decide with these
functions, so they never disagree on which agent needs (re-)enrolling or on whether an agent passes.
Pure functions: no I/O, no keylime or Kubernetes imports (enroll.py runs with the standard library only).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Iterable, Mapping

PASS, FAIL, TIMEOUT, PENDING = "PASS", "FAIL", "TIMEOUT", "PENDING"
STATUSES = (PASS, FAIL, TIMEOUT, PENDING)
# The tenant adds the PCR mask it derives from the policy; it is not part of what the operator configured.
DERIVED_KEYS = ("mask",)
# keylime's config.MEASUREDBOOT_PCRS: with a measured-boot policy the tenant adds them to the mask, and the verifier
# quotes them and asks for the UEFI event log.
MEASURED_BOOT_PCRS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14, 15)
# The verifier shows only whether an agent has a measured-boot policy (has_mb_refstate), not which: whoever enrolls
# through the API records the policy's digest in the agent's metadata under this key, to tell an old one.
BOOT_POLICY_METADATA = "mb_policy_sha256"


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


def pcr_mask(policy: Mapping[str, list[str]], measured_boot: bool = False) -> str:
    pcrs = {int(pcr) for pcr in policy} | (set(MEASURED_BOOT_PCRS) if measured_boot else set())
    return hex(sum(1 << pcr for pcr in pcrs))


def stored_form(policy: Mapping[str, list[str]], measured_boot: bool = False) -> str:
    """The tpm_policy JSON the verifier keeps: each PCR with its digests, and the PCR mask (with a measured-boot
    policy, its PCRs too, as keylime_tenant --mb-policy adds them)."""
    return json.dumps({**policy, "mask": pcr_mask(policy, measured_boot)})


def _metadata(record: Mapping[str, object]) -> dict[str, object]:
    try:
        # verifier JSON record: meta_data is a JSON string
        document = json.loads(record.get("meta_data") or "{}")  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return {}
    return document if isinstance(document, dict) else {}


@dataclasses.dataclass(frozen=True)
class Policies:
    """The stack's policies, as every agent is to be enrolled with them."""

    tpm: dict[str, list[str]]
    """The TPM policy, canonical (canonical_policy)."""
    boot: str | None
    """The measured-boot reference state as keylime_tenant --mb-policy sends it (its JSON, re-serialised); None: none."""

    @classmethod
    def parse(cls, tpm_policy: str | Mapping[str, object], mb_policy: str = "") -> Policies:
        """From the configured texts; an empty `mb_policy` is none. PolicyError says what cannot be enrolled."""
        boot = None
        if mb_policy.strip():
            try:
                document = json.loads(mb_policy)
            except ValueError:
                document = None
            if not isinstance(document, dict):
                raise PolicyError("a measured-boot policy is a JSON object (a reference state)")
            boot = json.dumps(document)
        return cls(enrollable_policy(tpm_policy, measured_boot=boot is not None), boot)

    @functools.cached_property
    def boot_digest(self) -> str | None:
        if self.boot is None:
            return None
        return hashlib.sha256(json.dumps(json.loads(self.boot), sort_keys=True, separators=(",", ":")).encode()).hexdigest()

    def stored_tpm_policy(self) -> str:
        return stored_form(self.tpm, measured_boot=self.boot is not None)

    def metadata(self) -> dict[str, str]:
        """What an enrollment through the API records beside its own metadata, for `outdated` to read back."""
        return {BOOT_POLICY_METADATA: self.boot_digest} if self.boot_digest else {}

    def outdated(self, record: Mapping[str, object]) -> str | None:
        """None when the verifier's record is enrolled with these policies; otherwise how it differs.

        The measured-boot policy is compared by the digest recorded in the metadata; an agent enrolled through
        keylime_tenant (which records none) can only be judged by whether it has a measured-boot policy at all."""
        # verifier JSON record: tpm_policy is a JSON string or object
        stored = canonical_policy(record.get("tpm_policy"))  # type: ignore[arg-type]
        if stored != self.tpm:
            return f"enrolled with another TPM policy ({json.dumps(stored)})"
        has_boot_policy = bool(record.get("has_mb_refstate"))
        if self.boot is None:
            return "enrolled with a measured-boot policy, the stack has none" if has_boot_policy else None
        if not has_boot_policy:
            return "enrolled without the measured-boot policy"
        recorded = _metadata(record).get(BOOT_POLICY_METADATA)
        if recorded is not None and recorded != self.boot_digest:
            return f"enrolled with another measured-boot policy (sha256 {str(recorded)[:12]}...)"
        return None


@dataclasses.dataclass(frozen=True)
class Changes:
    """What to do at the verifier so that exactly `desired` is enrolled with the policy."""

    enroll: tuple[str, ...]
    """Not enrolled yet."""
    re_enroll: tuple[str, ...]
    """Enrolled with another policy: delete and enroll again (no agent stays on an old policy)."""
    remove: tuple[str, ...]
    """Enrolled but not desired."""


def changes(desired: Iterable[str], enrolled: Mapping[str, Mapping[str, object]], policies: Policies) -> Changes:
    """`enrolled` maps each agent the verifier has to its record there."""
    desired = sorted(set(desired))
    return Changes(
        enroll=tuple(agent for agent in desired if agent not in enrolled),
        re_enroll=tuple(agent for agent in desired if agent in enrolled and policies.outdated(enrolled[agent]) is not None),
        remove=tuple(sorted(agent for agent in enrolled if agent not in set(desired))),
    )


def verdict(record: Mapping[str, object] | None, policies: Policies | None = None) -> str | None:
    """None when the agent is trusted now: enrolled, with the policies if given, and PASS. Otherwise why not.

    Only PASS is accepted: PENDING (never attested), TIMEOUT (stopped attesting: dead or cut off) and FAIL are not.
    """
    if record is None:
        return "not enrolled at the verifier"
    status = record.get("attestation_status")
    # verifier JSON record: attestation_count is a number
    count = int(record.get("attestation_count") or 0)  # type: ignore[call-overload]
    if policies is not None and (outdated := policies.outdated(record)) is not None:
        return f"{outdated}, not re-enrolled yet"
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
