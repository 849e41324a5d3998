"""Many push agents started at once, on a few software TPMs: the start-up storm, against the real servers.

    fleet = Fleet(lab, tpms, size=64, name="storm")
    fleet.register()                     # every agent registers at the registrar (and activates its AK)
    journal = fleet.start(retry_seconds) # every agent at once runs tools.lab.push.PushAgent's schedule
    ...                                  # enroll them, watch the verifier
    fleet.stop()                         # journal holds every login and attestation, fleet.errors what broke

What is emulated: agents on one TPM share its EK and AK (the registrar accepts one EK under many agent
IDs) and take turns on it, and their IDs are derived from the TPM's hash_ek rather than each being the
hash_ek of a TPM of its own. The real agent registers when it starts; here registration comes first, for
all, so that the agents then start their logins at the same moment. What the verifier sees is what that
many keylime_push_model_agents behind one source address send: PoP sessions over their own challenges,
negotiations and quotes.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .agent import EmulatedAgent
from .push import Journal, PushAgent

if TYPE_CHECKING:
    from .session import Lab

STOP_TIMEOUT = 60


class SharedTpm:
    """One agent pod's software TPM, serving several agents one command at a time."""

    def __init__(self, device: EmulatedAgent):
        self.device = device
        self.lock = threading.Lock()


class FleetAgent:
    """One agent on a shared TPM: its own agent ID and work directory (quotes), the TPM's EK and AK."""

    def __init__(self, tpm: SharedTpm, uuid: str, workdir: Path):
        self.shared, self.uuid, self.workdir = tpm, uuid, workdir
        workdir.mkdir(parents=True, exist_ok=True)
        for name in ("ak.pub", "ak.name"):  # what the agent advertises in its capabilities
            shutil.copy(tpm.device.workdir / name, workdir / name)

    def tpm(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        with self.shared.lock:
            return self.shared.device.tpm(*argv, check=check, cwd=self.workdir)

    def send(self, command: bytes) -> bytes:
        with self.shared.lock:
            return self.shared.device.send(command)

    def register(self, registrar: str) -> None:
        with self.shared.lock:
            self.shared.device.register(registrar, uuid=self.uuid)


class Fleet:
    def __init__(self, lab: Lab, tpms: list[EmulatedAgent], size: int, name: str):
        """`size` agents spread over `tpms`; `name` keeps their IDs apart from another fleet's on the same servers."""
        self.lab = lab
        shared = [SharedTpm(device) for device in tpms]
        self.agents = []
        for index in range(size):
            tpm = shared[index % len(shared)]
            uuid = hashlib.sha256(f"{tpm.device.uuid}/{name}/{index}".encode()).hexdigest()
            self.agents.append(FleetAgent(tpm, uuid, lab.root / "fleets" / name / str(index)))
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def uuids(self) -> list[str]:
        return [agent.uuid for agent in self.agents]

    def register(self) -> None:
        """Register every agent; agents on different TPMs at the same time."""
        registrar = self.lab.registrar_url
        by_tpm: dict[int, list[FleetAgent]] = {}
        for agent in self.agents:
            by_tpm.setdefault(id(agent.shared), []).append(agent)
        self._run_all(lambda agents: [agent.register(registrar) for agent in agents], list(by_tpm.values()))
        for thread in self._threads:
            thread.join()
        if self.errors:
            raise RuntimeError("registration failed:\n" + "\n".join(self.errors))

    def start(self, retry_seconds: float, attestations: int | None = None) -> Journal:
        """Start every agent's schedule at once (each stops after `attestations` accepted ones, if given);
        returns the journal they write to."""
        journal = Journal()
        self._stop.clear()
        self._run_all(
            lambda agent: PushAgent(self.lab.push_client(agent), retry_seconds, journal, attestations).run(self._stop),
            self.agents,
        )
        return journal

    def _run_all(self, work: Callable[[Any], object], items: list) -> None:
        def run(item: Any) -> None:
            try:
                work(item)
            except Exception as error:  # noqa: BLE001 (a thread's failure must reach the test, whatever it is)
                self.errors.append(f"{getattr(item, 'uuid', 'registration')}: {error!r}")

        self._threads = [threading.Thread(target=run, args=(item,), daemon=True) for item in items]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=STOP_TIMEOUT)
        stuck = [thread.name for thread in self._threads if thread.is_alive()]
        if stuck:
            raise RuntimeError(f"agents did not stop within {STOP_TIMEOUT} s: {stuck}")
