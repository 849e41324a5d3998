"""The project around the program: stack files, PR previews, the Makefile's verbs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import yaml
from helpers import ROOT


def stacks() -> set[str]:
    return {path.name.split(".")[1] for path in ROOT.glob("Pulumi.*.yaml")}


def test_pull_requests_preview_every_stack_with_the_policy_pack_and_comment():
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "preview.yml").read_text())
    assert "pull_request" in workflow[True]  # YAML 1.1 reads the `on:` key as True
    job = workflow["jobs"]["pulumi-preview"]
    assert set(job["strategy"]["matrix"]["stack"]) == stacks() == {"swtpm", "hwtpm", "cluster"}
    runs = [step.get("run", "") for step in job["steps"]]
    # The branching (shared backend or throwaway state) lives in .github/preview.sh, tested in test_preview.py.
    assert '.github/preview.sh "${{ matrix.stack }}" preview.md' in runs
    assert '.github/pr-comment.sh "preview-${{ matrix.stack }}" preview.md' in runs
    assert any("policy/venv/bin/pip install -r policy/requirements.txt" in run for run in runs)
    assert job["env"]["SHARED_BACKEND_URL"] == "${{ secrets.PULUMI_BACKEND_URL }}"
    assert job["env"]["SHARED_PASSPHRASE"] == "${{ secrets.PULUMI_CONFIG_PASSPHRASE }}"
    # pulumi/actions only installs the CLI here: the preview itself is the script's.
    (action,) = [step for step in job["steps"] if str(step.get("uses", "")).startswith("pulumi/actions@")]
    assert "with" not in action
    assert "PULUMI_ACCESS_TOKEN" not in str(workflow)
    render = [step.get("run", "") for step in workflow["jobs"]["render-diff"]["steps"]]
    assert ".github/pr-comment.sh render-diff render-diff.md" in render


def git(*args: str, cwd) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout


def test_the_render_diff_script_compares_a_base_commit_with_the_working_tree_in_a_throwaway_clone(tmp_path):
    # Run it in a clone of this checkout (a worktree or not), so the developer's repository is not touched.
    checkout = tmp_path / "checkout"
    git("clone", "--quiet", "--shared", str(ROOT), str(checkout), cwd=tmp_path)
    git("checkout", "--quiet", "--detach", git("rev-parse", "HEAD", cwd=ROOT).strip(), cwd=checkout)
    (checkout / "venv").symlink_to(ROOT / "venv")
    base = git("rev-parse", "HEAD", cwd=checkout).strip()
    # The working tree differs from the base by one more agent cluster.
    stack_file = checkout / "Pulumi.swtpm.yaml"
    stack_file.write_text(stack_file.read_text() + "  keylime-push:agentClusters: 3\n")
    # git as usual, but every command the script runs is logged.
    bin_dir, log = tmp_path / "bin", tmp_path / "git.log"
    bin_dir.mkdir()
    (bin_dir / "git").write_text(f'#!/bin/sh\necho "$*" >> {log}\nexec {shutil.which("git")} "$@"\n')
    (bin_dir / "git").chmod(0o755)
    result = subprocess.run([str(ROOT / ".github" / "render-diff.sh"), base], cwd=checkout, capture_output=True,
                            text=True, check=False, env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("<details><summary>") == 2
    swtpm, hwtpm = result.stdout.split("<details><summary>")[1:]
    assert "+++ head/swtpm/manifests/agents-3-k8s/daemonset-keylime-keylime-agent.yaml" in swtpm
    assert "agents-3" not in hwtpm
    assert "clone" in log.read_text() and "worktree" not in log.read_text()


def test_make_verbs_wrap_pulumi_and_the_scripts():
    def dry_run(verb: str) -> str:
        return subprocess.run(["make", "-n", verb, "STACK=hwtpm"], cwd=ROOT, capture_output=True, text=True, check=True).stdout

    assert "pulumi up --stack swtpm --yes" in dry_run("swtpm")
    assert "pulumi up --stack hwtpm --yes" in dry_run("hwtpm")
    assert "enroll.py verify" in dry_run("verify") and "--stack hwtpm" in dry_run("verify")
    assert "pulumi destroy --stack" in dry_run("clean")
    assert "python -m pytest" in dry_run("test")
    assert dry_run("test").index("ruff check .") < dry_run("test").index("python -m pytest")
    assert "pulumi preview --stack hwtpm --diff --policy-pack policy" in dry_run("preview")
    assert "python -m tools.policy_check --stack hwtpm" in dry_run("policy")


def test_preflight_says_what_is_missing_instead_of_failing_halfway(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "tools.preflight", "--lab-bin", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )
    assert result.returncode == 2
    assert "preflight cannot run here" in result.stderr and "make venv-lab/.installed" in result.stderr
