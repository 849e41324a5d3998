#!/usr/bin/env python3
"""Enroll, re-enroll, remove and verify push-model agents through the keylime tenant.

    enroll.py add      wait (bounded) for EXPECTED_AGENTS registrations, enroll each one not yet enrolled,
                       and re-enroll each one enrolled with other policies than TPM_POLICY and MB_POLICY
    enroll.py update   the same (what a changed TPM_POLICY or MB_POLICY runs); with an MB_POLICY it re-enrolls
                       every enrolled agent, since the tenant cannot record which one it enrolled an agent with
    enroll.py delete   remove every agent from the verifier, best effort: succeeds when the infra cluster
                       is gone or its tenant cannot be reached (the enrollments go with the cluster)
    enroll.py verify   wait (bounded) until every registered agent is enrolled with TPM_POLICY (and MB_POLICY) and PASS

Which agents need (re-)enrolling and what counts as attested are decided by controller/enrollment.py, the
module the attestation controller decides with, so the two never disagree. The controller also removes
registrations of agents that do not run; this script cannot see the agent clusters and never removes any.

A kube.sh that cannot run at all (exit 126/127: no kubectl, no bash) fails every action, delete included.
Environment: TPM_POLICY (JSON), MB_POLICY (a measured-boot reference state, JSON; empty: none),
EXPECTED_AGENTS, WAIT_SECONDS (default 300), POLL_SECONDS (default 5), KUBE_SH (default: kube.sh beside
this file) and what kube.sh reads (KUBECONFIG_DATA).
add/update print {"enrolled": [...]} and verify prints {"agents": [...]} as JSON on stdout; progress
goes to stderr. Exit status: 0 done, 1 the agents did not get there (the message names each one and
why), 2 bad usage.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

# controller/ sits at the project's root, two levels up; the Command runs this file by path.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from controller.enrollment import FAIL, Policies, PolicyError, changes, verdict  # noqa: E402

# Registrar and verifier IDs: standard UUIDs, or 64-hex SHA-256 digests of the EK (uuid = "hash_ek").
AGENT_ID = re.compile(r"\b(?:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{64})\b")
PCR_MISMATCH = re.compile(r"PCR #\d+: \S+ from quote .* does not match expected value .*")
# What the verifier logs when a UEFI event log does not replay to the quoted PCRs, and when it breaks the
# measured-boot policy (the reference state it also logs is left out: it is what was enrolled).
LOG_NOT_QUOTED = re.compile(r"For PCR \d+ and hash \S+ the boot event log has value .* but the agent (?P<agent>\S+) returned .*")
BOOT_POLICY_FAILED = re.compile(
    r"Boot attestation failed for agent (?P<agent>\S+), policy (?P<policy>\S+), refstate=.*, reason=(?P<reason>.*)")


class Failure(Exception):  # noqa: N818 (the outcome, not a fault of the script: `except Failure` reads as it is meant)
    """The agents did not reach the wanted state; the message says which and why."""


class CannotRun(Exception):  # noqa: N818 (a state of this machine, as `except CannotRun` reads; not a fault of the script)
    """A local tool is missing: says nothing about the cluster, so no action may take it for an answer."""


# The shell's "found but not executable" and "not found".
SHELL_CANNOT_RUN = (126, 127)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def kube(*args: str, stdin: str | None = None) -> str:
    kube_sh = os.environ.get("KUBE_SH", str(Path(__file__).with_name("kube.sh")))
    try:
        result = subprocess.run([kube_sh, *args], input=stdin if stdin is not None else "", capture_output=True,
                                text=True, check=False)
    except OSError as error:
        raise CannotRun(f"cannot run {kube_sh}: {error}") from None
    output = result.stdout + result.stderr
    if result.returncode in SHELL_CANNOT_RUN:
        raise CannotRun(output.strip())
    if result.returncode != 0:
        raise Failure(f"kube.sh {' '.join(args[:3])} failed (exit {result.returncode}):\n{output.strip()}")
    return output


def tenant(*args: str) -> str:
    return kube("tenant", *args)


def json_after(output: str, marker: str) -> list[dict]:
    """The JSON objects keylime_tenant logs alone on the line after each `marker`.

    The image's logging.conf sends the log to stdout, keylime's fallback to stderr: callers pass both.
    """
    documents = []
    decoder = json.JSONDecoder()
    for match in re.finditer(re.escape(marker), output):
        rest = output[match.end():]
        start = rest.find("\n") + 1
        try:
            document, _ = decoder.raw_decode(rest[start:])
        except json.JSONDecodeError:
            continue
        if isinstance(document, dict):
            documents.append(document)
    return documents


def agent_ids(output: str) -> list[str]:
    """Agent IDs in the agent list that `-c reglist` / `-c cvlist` log."""
    found: list[str] = []
    for document in json_after(output, "retrieved:"):
        found.extend(AGENT_ID.findall(json.dumps(document)))
    return sorted(set(found))


def registered() -> list[str]:
    return agent_ids(tenant("-c", "reglist"))


def enrolled() -> list[str]:
    return agent_ids(tenant("-c", "cvlist"))


def status(agent: str) -> dict[str, object]:
    """The verifier's view of one agent, as `-c status --push-model` logs it."""
    output = tenant("-c", "status", "-u", agent, "--push-model")
    # The registrar's "Agent Info" comes first; the verifier's is the one with attestation fields.
    for document in json_after(output, "Agent Info from"):
        if isinstance(document.get(agent), dict) and "attestation_count" in document[agent]:
            return document[agent]
    raise Failure(f"agent {agent}: the verifier reported no attestation status:\n{output.strip()}")


def settings() -> tuple[int, float, float]:
    try:
        expected = int(os.environ["EXPECTED_AGENTS"])
        wait = float(os.environ.get("WAIT_SECONDS", "300"))
        poll = float(os.environ.get("POLL_SECONDS", "5"))
    except (KeyError, ValueError) as error:
        raise SystemExit(f"enroll.py: EXPECTED_AGENTS, WAIT_SECONDS and POLL_SECONDS must be numbers ({error})") from None
    return expected, wait, poll


def wait_for_registrations(expected: int, wait: float, poll: float) -> list[str]:
    deadline = time.monotonic() + wait
    while True:
        agents = registered()
        if len(agents) >= expected:
            return agents
        if time.monotonic() >= deadline:
            raise Failure(
                f"only {len(agents)} of {expected} agents registered within {wait:.0f} s "
                f"(registered: {', '.join(agents) or 'none'}); read the agent logs with "
                "kubectl --context kind-keylime-<stack>-agents-<n> -n keylime logs ds/keylime-agent -c agent"
            )
        log(f"{len(agents)} of {expected} agents registered; waiting")
        time.sleep(poll)


def policies() -> tuple[str, Policies]:
    """TPM_POLICY as the tenant takes it, and both policies as enrolled. A measured-boot policy selects PCRs by
    itself; without one, an empty TPM policy would select none, and such an agent never attests."""
    tpm_policy = os.environ.get("TPM_POLICY", "")
    try:
        return tpm_policy, Policies.parse(tpm_policy, os.environ.get("MB_POLICY", ""))
    except (ValueError, PolicyError):
        raise SystemExit("enroll.py: TPM_POLICY must be a JSON object naming a PCR when there is no MB_POLICY "
                         "(an empty policy never attests), and MB_POLICY a JSON object (a measured-boot reference "
                         "state) or empty") from None


def enroll(agent: str, tpm_policy: str, mb_policy: str | None, replace: bool = False) -> None:
    """`-c add` refuses an enrolled agent (409); `-c update` deletes and adds it again."""
    boot = " and a measured-boot policy" if mb_policy else ""
    log(f"{'re-enrolling' if replace else 'enrolling'} {agent} with TPM policy {tpm_policy}{boot}")
    args = ("-c", "update" if replace else "add", "--push-model", "-u", agent, "--tpm_policy", tpm_policy)
    if mb_policy:
        kube("tenant-with-mb-policy", *args, stdin=mb_policy)
    else:
        tenant(*args)


def add(renew_boot_policy: bool = False) -> dict[str, object]:
    """Enroll the registered agents not enrolled, re-enroll those on other policies (create and update alike).
    The tenant cannot record which measured-boot policy it enrolled an agent with (controller/enrollment.py):
    `renew_boot_policy` re-enrolls every enrolled agent when there is one (what a changed MB_POLICY needs)."""
    tpm_policy, wanted = policies()
    agents = wait_for_registrations(*settings())
    records = {agent: status(agent) for agent in enrolled()}
    todo = changes(agents, records, wanted)
    for agent in agents:
        renew = agent in records and renew_boot_policy and wanted.boot is not None
        if agent in todo.enroll or agent in todo.re_enroll or renew:
            enroll(agent, tpm_policy, wanted.boot, replace=agent in records)
        else:
            log(f"{agent} is already enrolled with this TPM policy{' and a measured-boot policy' if wanted.boot else ''}")
    return {"enrolled": agents}


def update() -> dict[str, object]:
    return add(renew_boot_policy=True)


def delete() -> dict[str, object]:
    try:
        kube("ping")
    except Failure:
        log("the infra cluster does not answer; its agents went with it, nothing to remove")
        return {"removed": []}
    removed: list[str] = []
    try:
        for agent in enrolled():
            log(f"removing {agent} from the verifier")
            tenant("-c", "delete", "-u", agent, "--push-model")
            removed.append(agent)
    except Failure as error:
        # The API answers but the tenant does not: its pod, or the whole cluster, is going away. What is
        # left enrolled lives in the verifier's database on that cluster; a destroy must not stop here.
        log(f"{error}\nthe tenant cannot be reached; left the enrollments not yet removed to go with the infra cluster")
    return {"removed": removed}


def failure_reason(agent: str) -> str:
    """The verifier records why an attestation failed only in its log: the reasons it gives for this agent's
    latest attestation, the log not matching the quote first (keylime's broken_evidence_chain), then the policies."""
    try:
        lines = kube("verifier-log").splitlines()
    except Failure as error:
        return f"(verifier log unavailable: {error})"
    started = [index for index, line in enumerate(lines) if "Starting verification of attestation" in line and agent in line]
    latest = lines[started[-1]:] if started else lines
    found: dict[int, str] = {}
    for line in latest:
        if (match := LOG_NOT_QUOTED.search(line)) and match["agent"] == agent:
            found[0] = "broken_evidence_chain: the UEFI event log does not replay to the quoted PCRs: " + match.group(0)
        elif (match := BOOT_POLICY_FAILED.search(line)) and match["agent"] == agent:
            found[1] = f"policy_violation: measured-boot policy {match['policy']}: {match['reason']}"
        elif (match := PCR_MISMATCH.search(line)) and f"(from agent {agent})" in line:
            found[2] = "policy_violation: " + match.group(0)
    if found:
        return found[min(found)]
    return "see kubectl -n keylime logs deploy/keylime-verifier"


def verify() -> dict[str, object]:
    """Only PASS is accepted: FAIL at once, and TIMEOUT, PENDING, an old policy or a registered agent that is not
    enrolled once the wait is over, each named with its reason."""
    expected, wait, poll = settings()
    _, wanted = policies()
    deadline = time.monotonic() + wait
    while True:
        agents = enrolled()
        states = {agent: status(agent) for agent in agents}
        failed = [agent for agent, state in states.items() if state.get("attestation_status") == FAIL]
        if failed:
            raise Failure("\n".join(f"agent {agent}: attestation FAIL, {failure_reason(agent)}" for agent in failed))
        problems = {agent: reason for agent in agents if (reason := verdict(states[agent], wanted)) is not None}
        problems.update({agent: "registered, not enrolled" for agent in registered() if agent not in states})
        if len(agents) >= expected and not problems:
            return {
                "agents": [
                    {
                        "uuid": agent,
                        "attestation_count": states[agent]["attestation_count"],
                        "attestation_status": states[agent].get("attestation_status"),
                    }
                    for agent in agents
                ]
            }
        if time.monotonic() >= deadline:
            lines = [f"agent {agent}: {reason}" for agent, reason in sorted(problems.items())]
            if len(agents) < expected:
                lines.append(f"only {len(agents)} of {expected} agents are enrolled")
            raise Failure(f"not every agent is PASS after {wait:.0f} s:\n" + "\n".join(lines))
        log(f"{len(agents) - len(problems)} of {expected} agents PASS; waiting")
        time.sleep(poll)


ACTIONS = {"add": add, "update": update, "delete": delete, "verify": verify}


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[1] not in ACTIONS:
        print(f"usage: {argv[0]} {'|'.join(ACTIONS)}", file=sys.stderr)
        return 2
    try:
        result = ACTIONS[argv[1]]()
    except (Failure, CannotRun) as error:
        print(f"enroll.py {argv[1]}: {error}", file=sys.stderr)
        return 1
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
