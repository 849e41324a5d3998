"""The agents' start-up storm: 64 push agents started before they are enrolled, against the real verifier.

Until an agent is enrolled every login fails, and keylime_push_model_agent 0.2.9 keeps trying: 3 sessions
1 s apart, then again after attestation_interval_seconds (tools/lab/push.py, PushAgent). keylime 7.14.3
counts new sessions per agent and per source address, refuses past its limits and blocks the agent or the
address for 60 s, doubling on every repeat. Behind one SNAT address the whole fleet shares one count.

The fleet (tools/lab/fleet.py): 64 agents on 2 software TPMs, registered at the registrar, started at once.
The servers are a lab of their own, the program evaluated for 64 agent clusters, listening on 127.0.0.2
beside the session's lab; every agent reaches them from 127.0.0.1, one address, as behind SNAT.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from components.enrollment import ATTESTATION_WAIT_SECONDS
from tools.lab.fleet import Fleet
from tools.lab.push import Request, most_within

from .conftest import open_lab

pytestmark = pytest.mark.lab

AGENTS = 64
TPMS = 2
LISTEN_ADDRESS = "127.0.0.2"
POLL_SECONDS = 3
# What the program rendered before it sized for the storm: agents waited quote_interval after a failed
# round of logins, and the verifier took 4 new sessions per agent and minute from their shared address.
SESSIONS_PER_AGENT_PER_IP_BEFORE = 4


@pytest.fixture(scope="module")
def storm_lab():
    lab = open_lab(overrides={"agentClusters": AGENTS}, listen_address=LISTEN_ADDRESS)
    yield lab
    lab.close()


@pytest.fixture(scope="module")
def fleet(storm_lab):
    """64 agents, registered (the registrar does not rate-limit), none logged in yet."""
    agents = Fleet(storm_lab, [storm_lab.new_agent(f"tpm-{index}") for index in range(TPMS)], AGENTS, "storm")
    agents.register()
    return agents


@pytest.fixture
def restart(storm_lab) -> Callable[..., object]:
    """Start the servers afresh, with verifier options overridden as given: the verifier keeps its session
    counts and blocks in memory, and an empty database (no agent enrolled) is what the fleet starts from."""

    def start(**verifier_options: object):
        infra = storm_lab.infra
        infra.stop()
        Path(infra.option("verifier", "database_url").removeprefix("sqlite:///")).unlink()
        infra.start({"verifier": verifier_options})
        return infra

    return start


Found = TypeVar("Found")


def wait_for(condition: Callable[[], Found | None], timeout: float) -> Found:
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout:.0f} s")
        time.sleep(0.5)
    return found


def logins_per_minute(sessions: list[Request], until: float) -> float:
    """Login attempts per agent and minute while waiting for enrollment: from each agent's first attempt to its
    first successful one, or to `until`."""
    attempts = waited = 0.0
    for agent in {r.agent for r in sessions}:
        own = [r for r in sessions if r.agent == agent]
        end = next((r.at for r in own if r.passed), until)
        attempts += len([r for r in own if r.at < end])
        waited += end - own[0].at
    return attempts / waited * 60


def passed(infra, uuids: list[str]) -> list[str]:
    """The agents the verifier has passed an attestation of, and not failed since: what `enroll.py verify`
    waits for (an agent that stopped attesting shows TIMEOUT, with its count)."""
    held = infra.verifier_agents()
    return [uuid for uuid in uuids if held.get(uuid, {}).get("attestation_count", 0) > 0
            and held[uuid]["attestation_status"] != "FAIL"]


def test_with_the_options_rendered_before_a_fleet_waiting_for_enrollment_gets_its_address_blocked(
    storm_lab, fleet, restart
):
    per_ip = max(50, SESSIONS_PER_AGENT_PER_IP_BEFORE * AGENTS)
    infra = restart(session_create_rate_limit_per_ip=per_ip)
    retry_seconds = int(infra.declared_option("verifier", "quote_interval"))
    journal = fleet.start(retry_seconds)
    try:
        first = wait_for(lambda: next((r for r in journal.requests("session") if r.status == 429), None), 120)
        # Every agent tries again within one round: its logins, then retry_seconds.
        time.sleep(2 + retry_seconds + 2)
    finally:
        fleet.stop()
    assert not fleet.errors, fleet.errors
    sessions = journal.requests("session")
    before_block = [r for r in sessions if r.at < first.at]
    late = [r for r in sessions if r.at > first.at + 1]
    print(f"\nbefore: {logins_per_minute(sessions, until=first.at):.0f} logins/min per agent until the block "
          f"(retry after {retry_seconds} s); {len(before_block)} sent before the first 429, "
          f"{first.at - sessions[0].at:.1f} s after the first login; Retry-After {first.retry_after:.0f} s")
    # Then every login of every agent was refused, though no agent had sent as many as the per-agent
    # limit: the block is on the address they share, for a minute at first.
    per_agent = int(infra.option("verifier", "session_create_rate_limit_per_agent"))
    assert max(len([r for r in before_block if r.agent == uuid]) for uuid in fleet.uuids) < per_agent
    assert late and all(r.status == 429 for r in late)
    assert {r.agent for r in late} == set(fleet.uuids)
    assert all(r.retry_after is not None and r.retry_after >= 50 for r in late)


def test_64_agents_started_before_enrollment_all_pass_within_the_verify_wait_and_no_login_is_refused(
    storm_lab, fleet, restart
):
    infra = restart()  # the options as the program renders them for 64 agents
    window = int(infra.option("verifier", "session_create_rate_limit_window_agent"))
    assert int(infra.option("verifier", "session_create_rate_limit_window_ip")) == window
    per_agent = int(infra.option("verifier", "session_create_rate_limit_per_agent"))
    per_ip = int(infra.option("verifier", "session_create_rate_limit_per_ip"))
    retry_seconds = storm_lab.agent_conf["attestation_interval_seconds"]
    policy = storm_lab.program.named("enrollment-enroll").plain["environment"]["TPM_POLICY"]
    started = time.monotonic()
    # Each agent stops once its first attestation is in: the verifier's steady load at 64 agents is
    # verifier-capacity.md's subject, and on the lab's shared cores it would slow enrollment and logins.
    journal = fleet.start(retry_seconds, attestations=1)
    try:
        # As `enroll.py add` does once every agent has registered: one by one, through the real tenant.
        statuses, output = infra.tenant_batch(
            [["-c", "add", "--push-model", "-u", uuid, "--tpm_policy", policy] for uuid in fleet.uuids], timeout=600
        )
        assert statuses == [0] * AGENTS, output[-4000:]
        enrolled = time.monotonic()
        deadline = enrolled + ATTESTATION_WAIT_SECONDS
        while len(attested := passed(infra, fleet.uuids)) < AGENTS and time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)
        all_passed_after = time.monotonic() - enrolled
    finally:
        fleet.stop()
    assert not fleet.errors, fleet.errors
    sessions = journal.requests("session")
    busiest = max(most_within([r for r in sessions if r.agent == uuid], window) for uuid in fleet.uuids)
    print(f"\nafter: {logins_per_minute(sessions, until=enrolled):.1f} logins/min per agent waiting for enrollment "
          f"(retry after {retry_seconds} s); busiest agent {busiest} and the address {most_within(sessions, window)} "
          f"logins within {window} s (limits {per_agent} and {per_ip}); enrolled in {enrolled - started:.0f} s; "
          f"{len(attested)} PASS {all_passed_after:.1f} s after the last was enrolled")
    assert sorted(attested) == sorted(fleet.uuids)
    assert all_passed_after <= ATTESTATION_WAIT_SECONDS
    assert [r for r in sessions if r.status == 429] == []
    assert busiest <= per_agent
    assert most_within(sessions, window) <= per_ip
