"""Emulated push agents attesting together against replicated verifiers, and what the verifiers' database says.

    fleet = PinnedFleet(lab, agents, replica_of={agent.uuid: 1, ...})
    watch = StatusWatch(lab.postgres); watch.start()
    fleet.run(seconds=8)                  # every agent attests at the verifier's pace, on its pod
    lab.infra.kill("verifier-1"); fleet.run(seconds=14)
    watch.stop(); watch.seen[uuid]        # every status the agent had, as keylime derives it

A Service with `sessionAffinity: ClientIP` sends each agent's connections to one verifier pod; when that
pod is gone, kube-proxy sends them to a pod still there. `PinnedFleet` does the same: each agent dials its pod's
address (`KeylimeInfra.replica_address`), and when its connection breaks because that pod is gone it moves
to a live one; a broken connection to a pod still running is an error.
"""

from __future__ import annotations

import dataclasses
import http.client
import threading
import time
from collections.abc import Callable

from .agent import EmulatedAgent
from .postgres import ThrowawayPostgres
from .push import PushClient

# What an agent's connection meets when its pod goes: refused, reset, or cut in the middle of TLS or HTTP.
CONNECTION_BROKEN = (OSError, http.client.HTTPException)
WATCH_PERIOD = 0.2


@dataclasses.dataclass
class Attestation:
    uuid: str
    replica: int
    started: float
    status: int


@dataclasses.dataclass
class Move:
    uuid: str
    from_replica: int
    to_replica: int


class PinnedFleet:
    def __init__(self, lab, agents: list[EmulatedAgent], replica_of: dict[str, int]):
        self.lab = lab
        self.agents = agents
        self.replica_of = dict(replica_of)
        # Pinned agents are registered, so each has its UUID.
        self.clients: dict[str, PushClient] = {
            agent.uuid: lab.push_client(agent, replica=replica_of[agent.uuid])  # type: ignore[misc, index]
            for agent in agents
        }
        self.attestations: list[Attestation] = []
        self.moves: list[Move] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()

    def live_replicas(self) -> list[int]:
        return sorted(
            int(name.rsplit("-", 1)[1]) if "-" in name else 0 for name in self.lab.infra.processes if name.startswith("verifier")
        )

    def pin(self, uuid: str, replica: int) -> None:
        """Send the agent's next connections to the verifier pod `replica` (its session affinity changed)."""
        self.replica_of[uuid] = replica
        self.clients[uuid].connect_to = self.lab.infra.replica_address(replica)

    def _one(self, uuid: str, deadline: float, wait_as_told: bool) -> None:
        client = self.clients[uuid]
        while time.monotonic() < deadline:
            replica = self.replica_of[uuid]
            started = time.monotonic()
            try:
                outcome = client.attest()
            except CONNECTION_BROKEN as broken:
                if replica in self.live_replicas():
                    with self._lock:
                        self.errors.append(f"{uuid} on verifier pod {replica}, which runs: {broken!r}")
                    return
                live = self.live_replicas()
                if not live:
                    with self._lock:
                        self.errors.append(f"{uuid}: verifier pod {replica} gone and no other")
                    return
                with self._lock:
                    self.moves.append(Move(uuid, replica, live[0]))
                self.pin(uuid, live[0])
                continue
            except Exception as error:  # noqa: BLE001 (recorded and asserted on by the caller)
                with self._lock:
                    self.errors.append(f"{uuid} on verifier pod {replica}: {error!r}")
                return
            with self._lock:
                self.attestations.append(Attestation(uuid, replica, started, outcome.status))
            if wait_as_told:
                time.sleep(max(0.0, min(outcome.seconds_to_next, deadline - time.monotonic())))

    def run(self, seconds: float, wait_as_told: bool = True, meanwhile: Callable[[], object] | None = None) -> None:
        """Every agent attests for `seconds`, in its own thread: at the pace the verifier asks for, or (for a
        benchmark) back to back. `meanwhile` runs in this thread while they do (an agent that stops attesting
        is rightly timed out, so the verifier's view is read while they attest)."""
        deadline = time.monotonic() + seconds
        threads = [threading.Thread(target=self._one, args=(agent.uuid, deadline, wait_as_told)) for agent in self.agents]
        for thread in threads:
            thread.start()
        try:
            if meanwhile is not None:
                meanwhile()
        finally:
            for thread in threads:
                thread.join()

    def accepted(self, uuid: str | None = None, after: float = 0.0) -> list[Attestation]:
        """Attestations the verifier accepted (202), of one agent or all, started at or after `after`."""
        return [a for a in self.attestations if a.status == 202 and (uuid is None or a.uuid == uuid) and a.started >= after]


def derived_status(accept_attestations: bool, attestation_count: int, consecutive_failures: int) -> str:
    """The push agent's attestation_status as keylime 7.14.3 derives it from its row (cloud_verifier_common)."""
    if not accept_attestations:
        return "FAIL" if consecutive_failures > 0 else "TIMEOUT"
    if consecutive_failures > 0:
        return "FAIL"
    return "PASS" if attestation_count > 0 else "PENDING"


class StatusWatch:
    """Reads every agent's row from the verifiers' shared database every WATCH_PERIOD seconds: a TIMEOUT or FAIL
    that lasts only until the next attestation is seen, which asking the tenant now and then would miss."""

    QUERY = (
        "SELECT agent_id, accept_attestations, attestation_count, COALESCE(consecutive_attestation_failures, 0) "
        "FROM verifiermain ORDER BY agent_id"
    )

    def __init__(self, database: ThrowawayPostgres, name: str = "keylime"):
        self.database, self.name = database, name
        self.seen: dict[str, list[tuple[float, str]]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch)

    def _watch(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            for line in self.database.sql(self.QUERY, database=self.name).splitlines():
                uuid, accept, count, failures = line.split("|")
                status = derived_status(accept == "t", int(count), int(failures))
                history = self.seen.setdefault(uuid, [])
                if not history or history[-1][1] != status:
                    history.append((now, status))
            self._stop.wait(WATCH_PERIOD)

    def start(self) -> StatusWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def statuses(self, uuid: str, after: float = 0.0) -> list[str]:
        """The agent's statuses in order: the one it had at `after`, then each change."""
        history = self.seen.get(uuid, [])
        before = [status for at, status in history if at <= after][-1:]
        return before + [status for at, status in history if at > after]
