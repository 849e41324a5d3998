"""The offline render: what reviewers read without a Pulumi CLI."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

import pulumi
from helpers import ROOT, under_each_hash_seed

from tools.offline import run_declarations, run_program
from tools.render import render


def test_render_writes_an_inventory_of_every_resource_with_secrets_redacted(tmp_path):
    resources, _ = render("swtpm", tmp_path, {})
    inventory = json.loads((tmp_path / "inventory.json").read_text())
    assert len(inventory["resources"]) == resources
    assert {r["type"] for r in inventory["resources"]} >= {"keylime:pki:KeylimePki", "tls:index/privateKey:PrivateKey"}
    text = (tmp_path / "inventory.json").read_text()
    assert "PRIVATE KEY" not in text
    assert '"privateKeyPem": "[secret]"' in text


def test_two_render_runs_with_identical_config_write_identical_files(tmp_path):
    """As two `pulumi up` runs would see it: each render in its own process, with its own hash seed."""
    code = ("import json, os, sys; from pathlib import Path; from tools.render import render; "
            "from helpers import rendered_files; out = Path(sys.argv[1]) / os.environ['PYTHONHASHSEED']; "
            "render('swtpm', out, {'extraSans': '[\"a.example\", \"b.example\"]'}); print(json.dumps(rendered_files(out)))")
    listings = under_each_hash_seed([sys.executable, "-c", code, str(tmp_path)])
    first, second = (json.loads(listing) for listing in listings)
    assert first == second
    assert "inventory.json" in first and "a.example" in first["inventory.json"]


def test_overrides_reach_the_program(tmp_path):
    render("swtpm", tmp_path, {"extraSans": '["attest.example.org"]'})
    assert "attest.example.org" in (tmp_path / "inventory.json").read_text()


def test_the_render_command_refuses_bad_config_with_the_key_named(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "tools.render", "--stack", "swtpm", "--out", str(tmp_path / "out"),
         "--set", "agentUid=0", "--set", "tpmPolicy={\"16\": \"00\"}"],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )
    assert result.returncode == 2
    assert "keylime-push:agentUid" in result.stderr and "keylime-push:tpmPolicy" in result.stderr
    assert not (tmp_path / "out").exists()


def test_the_render_command_prints_where_it_wrote(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "tools.render", "--stack", "hwtpm", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )
    assert result.stdout.startswith("rendered stack hwtpm:")
    assert json.loads((tmp_path / "inventory.json").read_text())["stack"] == "hwtpm"


def bare_resources(count: int):
    def declare() -> None:
        provider = pulumi.ProviderResource("bare", "bare", {})
        for index in range(count):
            pulumi.CustomResource(
                "bare:index:Thing", f"thing-{index}", {"index": index}, pulumi.ResourceOptions(provider=provider)
            )

    return declare


def cpu_seconds(declare) -> float:
    """CPU time of this process and of the processes it waited for: what another busy process cannot inflate."""

    def now() -> float:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return time.process_time() + children.ru_utime + children.ru_stime

    started = now()
    declare()
    return now() - started


def test_evaluating_the_swtpm_program_costs_at_most_eight_times_registering_as_many_bare_resources():
    # A ratio of two CPU timings taken side by side in one run, so neither a slow nor a busy machine moves
    # it. Today it is about 4: the program's own work (configs, Outputs, certificates) on top of the mocks.
    run_program("swtpm")  # imports and provider SDK loading are paid once per process, as under the CLI
    resources = len(run_program("swtpm").resources)
    run_declarations(bare_resources(resources))
    program = min(cpu_seconds(lambda: run_program("swtpm")) for _ in range(5))
    bare = min(cpu_seconds(lambda: run_declarations(bare_resources(resources))) for _ in range(5))
    assert program <= 8 * bare, (program, bare)
