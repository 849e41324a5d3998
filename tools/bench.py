"""Attestations per second that keylime 7.14.3 verifier processes sustain on PostgreSQL, on this machine.

    python -m tools.bench --agents 8 --seconds 30 [--json out.json]      (make bench)

One run, one lab (tools/lab): the program's swtpm-stack servers on a throwaway PostgreSQL, K emulated push
agents (software TPMs) attesting back to back (the verifiers' quote_interval set to 0 for the measurement,
so that throughput, not cadence, limits them). Three phases, each after a warm-up:

  one-pinned   one verifier process, one worker, pinned to core 0
  two-pinned   two verifier processes, one worker each, pinned to cores 0 and 1 (agents split between them)
  one-default  one verifier process with keylime's default worker count (one per core), not pinned

Each phase reports verified attestations per second, the verifiers' CPU time per attestation, and the fleet
that rate carries at the stack's configured cadence (its rendered quote_interval) and at 60 s. The agents
share the machine's cores with the verifiers: on 2 cores the two-pinned phase is partly limited by them,
which the report states (load average and the agents' share of CPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from tools.lab.pinned import PinnedFleet
from tools.lab.servers import processes_in_group
from tools.lab.session import Lab

ADDRESS = "127.0.2.1"
WARM_UP = 3.0
BACK_TO_BACK = {"KEYLIME_VERIFIER_QUOTE_INTERVAL": "0"}
ONE_WORKER = {"KEYLIME_VERIFIER_MAX_WORKERS": "1"}
TICKS = os.sysconf("SC_CLK_TCK")
LONG_CADENCE = 60


@dataclasses.dataclass
class Phase:
    name: str
    verifiers: int
    workers: str
    pinned: str
    attestations: int
    seconds: float
    verifier_cpu_seconds: float
    own_cpu_seconds: float
    load_average: float
    cores: int
    """Cores the verifier processes may run on, added up over the processes."""

    @property
    def per_second(self) -> float:
        return self.attestations / self.seconds

    @property
    def cpu_ms_per_attestation(self) -> float:
        return 1000 * self.verifier_cpu_seconds / self.attestations if self.attestations else float("nan")

    @property
    def cpu_ceiling_per_second(self) -> float:
        """The rate at which the verifiers' own cores would be busy all the time: what they could carry with
        those cores to themselves (the machine here is shared with the agents, and was with other work)."""
        return 1000 * self.cores / self.cpu_ms_per_attestation if self.attestations else float("nan")


def cpu_seconds(pgids: list[int]) -> float:
    """user + system time of every live process in these process groups."""
    total = 0
    for pgid in pgids:
        for pid in processes_in_group(pgid):
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])
    return total / TICKS


def allowed_cores(pgid: int) -> set[int]:
    """The cores the server's processes may run on, as the kernel has them (not as asked)."""
    return set().union(*(os.sched_getaffinity(pid) for pid in processes_in_group(pgid)))


def pinned_to(cores: set[int]) -> str:
    """`0`, `1`, or `any` when that is every core."""
    return "any" if cores == set(range(os.cpu_count() or 1)) else ",".join(map(str, sorted(cores)))


def own_cpu_seconds() -> float:
    """This process and the tpm2-tools commands it ran: most of the agents' side (not the swtpm servers)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def measure(lab: Lab, agents, name: str, replicas: dict[int, tuple[dict[str, str], str | None]], seconds: float,
            workers: str) -> Phase:
    for replica, (env, cpus) in replicas.items():
        lab.infra.start_replica("verifier", replica, env={**BACK_TO_BACK, **env}, cpus=cpus)
    pods = sorted(replicas)
    fleet = PinnedFleet(lab, agents, {agent.uuid: pods[index % len(pods)] for index, agent in enumerate(agents)})
    fleet.run(WARM_UP, wait_as_told=False)
    pgids = [lab.infra.processes[f"verifier-{replica}"].pid for replica in pods]
    cpu_before, own_before, started = cpu_seconds(pgids), own_cpu_seconds(), time.monotonic()
    fleet.run(seconds, wait_as_told=False)
    elapsed = time.monotonic() - started
    cores = [allowed_cores(pgid) for pgid in pgids]
    phase = Phase(name, len(pods), workers, " / ".join(map(pinned_to, cores)),
                  len(fleet.accepted(after=started)), elapsed, cpu_seconds(pgids) - cpu_before,
                  own_cpu_seconds() - own_before, os.getloadavg()[0], sum(map(len, cores)))
    if fleet.errors:
        raise RuntimeError(f"{name}: {fleet.errors}")
    for replica in pods:
        lab.infra.kill(f"verifier-{replica}")
    return phase


def run(lab_bin: Path, agent_count: int, seconds: float) -> dict:
    lab = Lab("swtpm", lab_bin, listen_address=ADDRESS, on_postgres=True)
    try:
        agents = [lab.new_agent(f"bench-{index}") for index in range(agent_count)]
        for agent in agents:
            agent.register(lab.registrar_url)
        enrolled = lab.run_declared("enrollment-enroll", EXPECTED_AGENTS=str(agent_count))
        if enrolled.returncode != 0:
            raise RuntimeError(f"enrollment failed:\n{enrolled.stderr}")
        cadence = float(lab.infra.option("verifier", "quote_interval"))
        lab.infra.kill("verifier")  # the phases run their own verifier pods, pinned as each needs
        phases = [
            measure(lab, agents, "one-pinned", {1: (ONE_WORKER, "0")}, seconds, "1"),
            measure(lab, agents, "two-pinned", {2: (ONE_WORKER, "0"), 3: (ONE_WORKER, "1")}, seconds, "1 each"),
            measure(lab, agents, "one-default", {4: ({}, None)}, seconds, f"default ({os.cpu_count()} cores)"),
        ]
    finally:
        lab.close()
    return {
        "agents": agent_count,
        "seconds": seconds,
        "cores": os.cpu_count(),
        "configured_quote_interval": cadence,
        "phases": [{**dataclasses.asdict(p), "per_second": p.per_second, "cpu_ms_per_attestation": p.cpu_ms_per_attestation,
                    "cpu_ceiling_per_second": p.cpu_ceiling_per_second} for p in phases],
        "two_over_one": phases[1].per_second / phases[0].per_second if phases[0].attestations else None,
    }


def table(result: dict) -> str:
    cadence = result["configured_quote_interval"]
    lines = [
        f"| verifier processes | workers each | pinned to cores | attestations/s | verifier CPU ms / attestation "
        f"| CPU ceiling/s | agents at {cadence:g} s (configured) | agents at {LONG_CADENCE} s | load average (1 min) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for phase in result["phases"]:
        rate = phase["per_second"]
        lines.append(f"| {phase['verifiers']} | {phase['workers']} | {phase['pinned']} | {rate:.1f} "
                     f"| {phase['cpu_ms_per_attestation']:.0f} | {phase['cpu_ceiling_per_second']:.1f} "
                     f"| {int(rate * cadence)} | {int(rate * LONG_CADENCE)} "
                     f"| {phase['load_average']:.1f} |")
    lines.append("")
    lines.append(f"Two pinned processes / one: **{result['two_over_one']:.2f}x**; {result['agents']} emulated agents, "
                 f"{result['seconds']:g} s per phase on {result['cores']} cores.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    lab_bin = os.environ.get("LAB_BIN")
    if not lab_bin:
        print("LAB_BIN is not set: run `make bench`", file=sys.stderr)
        return 2
    result = run(Path(lab_bin), args.agents, args.seconds)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
