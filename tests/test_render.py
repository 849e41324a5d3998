"""The offline render: what reviewers read without a Pulumi CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from helpers import ROOT

from tools.offline import run_program
from tools.render import render


def rendered_files(folder) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_render_writes_an_inventory_of_every_resource_with_secrets_redacted(tmp_path):
    resources, _ = render("swtpm", tmp_path, {})
    inventory = json.loads((tmp_path / "inventory.json").read_text())
    assert len(inventory["resources"]) == resources
    assert {r["type"] for r in inventory["resources"]} >= {"keylime:pki:KeylimePki", "tls:index/privateKey:PrivateKey"}
    text = (tmp_path / "inventory.json").read_text()
    assert "PRIVATE KEY" not in text
    assert '"privateKeyPem": "[secret]"' in text


def test_two_renders_with_identical_config_are_identical(tmp_path):
    render("swtpm", tmp_path / "a", {})
    render("swtpm", tmp_path / "b", {})
    assert rendered_files(tmp_path / "a") == rendered_files(tmp_path / "b")


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


def test_evaluating_the_swtpm_program_takes_at_most_one_and_a_half_seconds():
    run_program("swtpm")  # imports and provider SDK loading are paid once per process, as under the CLI
    started = time.perf_counter()
    run_program("swtpm")
    assert time.perf_counter() - started <= 1.5
