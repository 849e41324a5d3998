"""The project around the program: stack files, PR previews, the Makefile's verbs."""

from __future__ import annotations

import subprocess
import sys

import yaml
from helpers import ROOT


def stacks() -> set[str]:
    return {path.name.split(".")[1] for path in ROOT.glob("Pulumi.*.yaml")}


def test_pull_requests_preview_every_stack_on_a_file_backend_and_comment():
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "preview.yml").read_text())
    assert "pull_request" in workflow[True]  # YAML 1.1 reads the `on:` key as True
    job = workflow["jobs"]["pulumi-preview"]
    assert set(job["strategy"]["matrix"]["stack"]) == stacks() == {"swtpm", "hwtpm"}
    (action,) = [step for step in job["steps"] if str(step.get("uses", "")).startswith("pulumi/actions@")]
    assert action["with"]["command"] == "preview"
    assert action["with"]["cloud-url"].startswith("file://")
    assert action["with"]["comment-on-pr"] is True and action["with"]["diff"] is True
    assert "PULUMI_ACCESS_TOKEN" not in str(workflow)


def test_the_render_diff_script_compares_a_base_commit_with_the_working_tree(tmp_path):
    base = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    result = subprocess.run([str(ROOT / ".github" / "render-diff.sh"), base], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("<details><summary>") == 2
    worktrees = subprocess.run(["git", "worktree", "list"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert len(worktrees.strip().splitlines()) == 1


def test_make_verbs_wrap_pulumi_and_the_scripts():
    def dry_run(verb: str) -> str:
        return subprocess.run(["make", "-n", verb, "STACK=hwtpm"], cwd=ROOT, capture_output=True, text=True, check=True).stdout

    assert "pulumi up --stack swtpm --yes" in dry_run("swtpm")
    assert "pulumi up --stack hwtpm --yes" in dry_run("hwtpm")
    assert "enroll.py verify" in dry_run("verify") and "--stack hwtpm" in dry_run("verify")
    assert "pulumi destroy --stack" in dry_run("clean")
    assert "python -m pytest" in dry_run("test")


def test_preflight_says_what_is_missing_instead_of_failing_halfway(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "tools.preflight", "--lab-bin", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )
    assert result.returncode == 2
    assert "preflight cannot run here" in result.stderr and "make venv-lab/.installed" in result.stderr
