"""Preflight: the chosen stack's servers, certificates and TPM policy, tried for real in under a minute.

    make preflight [STACK=swtpm] [SET='tpmPolicy={"8":"<64 hex>"}'] [MB_POLICY_FILE=refstate.json] [EVENT_LOG=boot.bin]
    venv/bin/python -m tools.preflight --stack swtpm [--set KEY=VALUE ...] [--mb-policy FILE] [--event-log FILE]

Renders the stack, issues its certificates from the program's own pulumi-tls inputs, starts the pinned
keylime registrar and push-mode verifier on this machine with the rendered configuration, and runs one
software-TPM agent (the agent pod's own swtpm-init.sh and sidecar command line) through registration,
the program's enrollment Command with your tpmPolicy (and mbPolicy), two attestations and the program's
verify Command. With an mbPolicy the agent's TPM boots the swtpm stack's synthetic event log, or with
--event-log yours (a machine's binary_bios_measurements): its PCRs are extended with the log's events
and the agent sends the log, so the verifier judges your reference state against that boot. Prints PASS,
or FAIL with the reason; stops everything it started. Needs root (each server
runs as the pod's user in its own mount namespace), swtpm, swtpm-tools, tpm2-tools and ./venv-lab.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from components import boot_log
from components.settings import SettingsError
from tools.lab.push import ProtocolError
from tools.lab.session import ROOT, Lab, LabUnavailable, NoMeasuredBoot
from tools.render import parse_overrides


class Failed(Exception):  # noqa: N818 (the preflight's verdict, printed as FAIL; not a fault of the tool)
    pass


def step(name: str, detail: str, started: float) -> None:
    print(f"  {name:<13}{detail} ({time.monotonic() - started:.1f} s)", flush=True)


def preflight(lab: Lab) -> dict:
    started = time.monotonic()
    environment = lab.program.named("enrollment-enroll").plain["environment"]
    boot = "; with an mbPolicy" if environment.get("MB_POLICY") else ""
    print(
        f"preflight {lab.stack}: agents dial {lab.program.outputs['registrarEndpoint'].value} and "
        f"{lab.program.outputs['verifierEndpoint'].value}; tpmPolicy {environment['TPM_POLICY']}{boot}"
    )
    step("certificates", f"{len(lab.pki.pems)} keys, requests and certificates from the program's pulumi-tls inputs", started)
    lab.infra  # noqa: B018 (start the servers)
    step("servers", "registrar and push-mode verifier running on the rendered configuration", started)
    agent = lab.agent
    if not agent.registered:
        agent.register(lab.registrar_url)
    step("agent", f"software TPM initialised by swtpm-init.sh, registered as {agent.uuid} (hash_ek)", started)
    if lab.agent_boot_log is not None:
        source = "your event log" if lab.boot_log is not None else "the synthetic event log of its pod"
        events = len(boot_log.extends(lab.agent_boot_log.read_bytes()))
        step("boot", f"PCRs extended with the {events} events of {source}, which the agent sends", started)
    enrolled = lab.run_declared("enrollment-enroll")
    if enrolled.returncode != 0:
        raise Failed(f"enrollment failed:\n{enrolled.stderr.strip()}")
    step("enrollment", f"enroll.py add: enrolled with the configured tpmPolicy{' and mbPolicy' if boot else ''}", started)
    try:
        outcomes = lab.push_client(agent).attest_times(2, timeout=40)
    except ProtocolError as error:
        raise Failed(f"the verifier refused the agent: {error}") from None
    step("attestation", f"{len(outcomes)} quotes of PCRs {outcomes[0].selected_pcrs} taken for verification", started)
    with lab.push_client(agent).attesting():  # the agent lives on while verify checks it
        verified = lab.run_declared("enrollment-verify", WAIT_SECONDS="20")
    if verified.returncode != 0:
        raise Failed(verified.stderr.strip())
    (summary,) = json.loads(verified.stdout)["agents"]
    step(
        "verify", f"enroll.py verify: {summary['attestation_status']}, attestation_count {summary['attestation_count']}", started
    )
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--stack",
        default="swtpm",
        choices=["swtpm"],
        help="the stack to check (hwtpm's agent runs on a vTPM the preflight cannot emulate)",
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--mb-policy",
        type=Path,
        metavar="FILE",
        help="a measured-boot reference state to try as keylime-push:mbPolicy (make mb-policy writes one)",
    )
    parser.add_argument(
        "--event-log",
        type=Path,
        metavar="FILE",
        help="a UEFI event log (binary_bios_measurements) to boot the agent's TPM with; needs an mbPolicy",
    )
    parser.add_argument("--lab-bin", type=Path, default=Path(os.environ.get("LAB_BIN", ROOT / "venv-lab" / "bin")))
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        overrides = parse_overrides(args.overrides)
        if args.mb_policy:
            overrides["mbPolicy"] = args.mb_policy.read_text()
        log = args.event_log.read_bytes() if args.event_log else None
        if log is not None:
            boot_log.extends(log)
        lab = Lab(args.stack, args.lab_bin, overrides, boot_log=log)
    except LabUnavailable as missing:
        print(f"preflight cannot run here: {missing}", file=sys.stderr)
        return 2
    except (OSError, boot_log.BootLogError) as error:
        print(f"preflight: {error}", file=sys.stderr)
        return 2
    try:
        preflight(lab)
    except (SettingsError, NoMeasuredBoot) as error:
        print(error, file=sys.stderr)
        return 2
    except Failed as failure:
        print(f"FAIL ({time.monotonic() - started:.1f} s)\n{failure}")
        return 1
    finally:
        lab.close()
    print(f"PASS ({time.monotonic() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
