"""`make preview`, and the PR workflow's scripts (.github/), driven with fake `pulumi` and `gh` on PATH.

The workflow itself has never run (no GitHub here); what it runs is here, every branch of it.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from helpers import ROOT

from tools import policy_check

FAKES = ROOT / "tests" / "fakes"
PREVIEW = ROOT / ".github" / "preview.sh"
PR_COMMENT = ROOT / ".github" / "pr-comment.sh"
SHARED = "s3://keylime-state?region=eu-north-1"


class Runner:
    def __init__(self, state: Path):
        self.state = state

    def run(self, argv: list[str], **env: str) -> subprocess.CompletedProcess:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("PULUMI_", "SHARED_", "FAKE_PULUMI"))}
        return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False,
                              env={**base, "PATH": f"{FAKES}:{os.environ['PATH']}", "FAKE_STATE": str(self.state), **env})

    def preview(self, stack: str = "swtpm", **env: str) -> tuple[subprocess.CompletedProcess, str]:
        comment = self.state / "comment.md"
        result = self.run([str(PREVIEW), stack, str(comment)], **env)
        return result, comment.read_text() if comment.exists() else ""

    def calls(self) -> list[dict]:
        log = self.state / "pulumi-calls.jsonl"
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.fixture
def runner(tmp_path) -> Runner:
    return Runner(tmp_path)


def test_without_a_shared_backend_the_preview_runs_on_a_throwaway_state_and_says_so(runner):
    result, comment = runner.preview("hwtpm", RUNNER_CONFIG_NOTE="libvirtUri is qemu:///session on the runner.")
    assert result.returncode == 0, result.stderr
    calls = runner.calls()
    assert [c["args"] for c in calls] == [
        ["stack", "select", "--create", "--secrets-provider", "passphrase", "hwtpm", "--non-interactive"],
        ["preview", "--stack", "hwtpm", "--diff", "--non-interactive", "--color", "never", "--policy-pack", "policy"],
    ]
    assert all(c["backend"] is None and c["passphrase"] == "preview-on-a-throwaway-runner" for c in calls)
    assert comment.startswith("### pulumi preview: hwtpm\n\nNo shared backend is configured")
    assert "every resource shows as a create" in comment
    assert "libvirtUri is qemu:///session on the runner." in comment
    assert "found no mandatory violation" in comment and "+ 61 to create" in comment


def test_the_cluster_stack_previews_on_the_example_config_with_its_secrets_set_as_secrets(runner):
    result, comment = runner.preview("cluster")
    assert result.returncode == 0, result.stderr
    config_calls = [c["args"] for c in runner.calls() if c["args"][:2] == ["config", "set"]]
    set_keys = {args[args.index("--") - 1]: "--secret" in args for args in config_calls}
    assert set_keys == {
        "keylime-push:kubeconfig": True,
        "keylime-push:serverContext": False,
        "keylime-push:agentContexts": False,
        "keylime-push:advertisedAddress": False,
        "keylime-push:imageRegistry": False,
        "keylime-push:ekTrustBundle": False,
    }
    assert runner.calls()[-1]["args"][0] == "preview"
    assert "previewed with the example configuration" in comment
    # A stack deployed in the shared backend keeps its own config: nothing is set there.
    runner.preview("cluster", SHARED_BACKEND_URL=SHARED, SHARED_PASSPHRASE="p", FAKE_PULUMI_STACKS="cluster")
    assert len([c for c in runner.calls() if c["args"][:2] == ["config", "set"]]) == len(config_calls)


def test_with_a_shared_backend_the_preview_diffs_against_the_deployed_stack(runner):
    result, comment = runner.preview(
        "swtpm", SHARED_BACKEND_URL=SHARED, SHARED_PASSPHRASE="real", FAKE_PULUMI_STACKS="swtpm,hwtpm"
    )
    assert result.returncode == 0, result.stderr
    calls = runner.calls()
    assert [c["args"] for c in calls] == [
        ["stack", "select", "swtpm", "--non-interactive"],
        ["preview", "--stack", "swtpm", "--diff", "--non-interactive", "--color", "never", "--policy-pack", "policy"],
    ]
    assert all(c["backend"] == SHARED and c["passphrase"] == "real" for c in calls)
    assert "Previewed against the deployed state of stack `swtpm` in the shared backend" in comment
    assert "No shared backend" not in comment


def test_a_stack_missing_from_the_shared_backend_is_not_created_there(runner):
    result, comment = runner.preview("hwtpm", SHARED_BACKEND_URL=SHARED, SHARED_PASSPHRASE="real", FAKE_PULUMI_STACKS="swtpm")
    assert result.returncode == 0, result.stderr
    calls = runner.calls()
    assert not [c for c in calls if "--create" in c["args"] and c["backend"] == SHARED]
    assert [(c["args"][:3], c["backend"]) for c in calls] == [
        (["stack", "select", "hwtpm"], SHARED),
        (["stack", "select", "--create"], None),
        (["preview", "--stack", "hwtpm"], None),
    ]
    assert "The shared backend has no stack `hwtpm` (not deployed yet)" in comment


def test_a_backend_without_its_passphrase_is_refused_before_any_pulumi_call(runner):
    result, comment = runner.preview("swtpm", SHARED_BACKEND_URL=SHARED)
    assert result.returncode == 2
    assert "PULUMI_BACKEND_URL secret is set but PULUMI_CONFIG_PASSPHRASE is not" in result.stderr
    assert runner.calls() == [] and comment == ""


def test_a_policy_violation_fails_the_check_and_the_comment_says_why(runner):
    result, comment = runner.preview("swtpm", FAKE_PULUMI_VIOLATION="1")
    assert result.returncode == 255
    assert "**The preview failed (exit status 255).** A mandatory policy violation" in comment
    assert "[mandatory]  host-ports-bound" in comment


def test_pr_comment_posts_once_then_updates_its_own_comment(runner):
    body = runner.state / "body.md"
    env = {"GITHUB_REPOSITORY": "me/keylime-push", "PR_NUMBER": "7"}
    (runner.state / "comments.json").write_text(json.dumps([{"id": 1, "body": "someone else's comment"}]))
    body.write_text("first")
    assert runner.run([str(PR_COMMENT), "preview-swtpm", str(body)], **env).returncode == 0
    body.write_text("second")
    assert runner.run([str(PR_COMMENT), "preview-swtpm", str(body)], **env).returncode == 0
    assert runner.run([str(PR_COMMENT), "render-diff", str(body)], **env).returncode == 0
    comments = json.loads((runner.state / "comments.json").read_text())
    assert [(c["id"], c["body"]) for c in comments] == [
        (1, "someone else's comment"),
        (101, "<!-- keylime-push preview-swtpm -->\nsecond"),
        (102, "<!-- keylime-push render-diff -->\nsecond"),
    ]
    assert comments[1]["path"] == "repos/me/keylime-push/issues/7/comments"


def test_make_preview_runs_pulumi_preview_with_the_policy_pack(runner, tmp_path):
    venvs = tmp_path / "venvs"
    # The virtualenvs and ./bin's pinned CLIs, as if installed: the fake pulumi on PATH is what runs.
    for venv in ("program", "policy", "bin"):
        (venvs / venv).mkdir(parents=True)
        (venvs / venv / ".installed").touch()
    passphrase = tmp_path / "passphrase"
    passphrase.write_text("x")
    result = runner.run(
        [
            "make",
            "--no-print-directory",
            "preview",
            "STACK=hwtpm",
            f"VENV={venvs / 'program'}",
            f"POLICY_VENV={venvs / 'policy'}",
            f"BIN={venvs / 'bin'}",
            f"PULUMI_CONFIG_PASSPHRASE_FILE={passphrase}",
        ]
    )
    assert result.returncode == 0, result.stdout + result.stderr
    calls = runner.calls()
    assert [c["args"] for c in calls] == [
        ["stack", "select", "--create", "--secrets-provider", "passphrase", "swtpm"],
        ["stack", "select", "--create", "--secrets-provider", "passphrase", "hwtpm"],
        ["stack", "select", "--create", "--secrets-provider", "passphrase", "cluster"],
        ["stack", "select", "swtpm"],
        ["preview", "--stack", "hwtpm", "--diff", "--policy-pack", "policy"],
    ]
    assert all(c["passphrase_file"] == str(passphrase) for c in calls)


def test_make_preview_fails_when_the_pack_refuses(runner, tmp_path):
    for venv in ("program", "policy", "bin"):
        (tmp_path / venv).mkdir()
        (tmp_path / venv / ".installed").touch()
    (tmp_path / "passphrase").write_text("x")
    result = runner.run(
        [
            "make",
            "preview",
            f"VENV={tmp_path / 'program'}",
            f"POLICY_VENV={tmp_path / 'policy'}",
            f"BIN={tmp_path / 'bin'}",
            f"PULUMI_CONFIG_PASSPHRASE_FILE={tmp_path / 'passphrase'}",
        ],
        FAKE_PULUMI_VIOLATION="1",
    )
    assert result.returncode != 0
    assert "host-ports-bound" in result.stdout


@pytest.mark.parametrize("stack", ["swtpm", "hwtpm"])
def test_policy_check_passes_the_programs_stacks_and_exits_0(capsys, stack):
    assert policy_check.main(["--stack", stack]) == 0
    assert capsys.readouterr().out.splitlines() == [f"policy pack on stack {stack} (under mocks): 0 mandatory violation(s)"]


def test_policy_check_refuses_bad_config_like_the_program(capsys):
    assert policy_check.main(["--stack", "swtpm", "--set", "agentUid=0"]) == 2
    assert "keylime-push:agentUid" in capsys.readouterr().err
