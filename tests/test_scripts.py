"""The shell the program runs (kind, kubectl exec), driven with stateful fake `kind` and `kubectl` on PATH."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT

from components.kind import kind_config

FAKES = ROOT / "tests" / "fakes"
KIND_SCRIPT = ROOT / "components" / "scripts" / "kind-cluster.sh"
ENROLL = ROOT / "components" / "scripts" / "enroll.py"
KUBE = ROOT / "components" / "scripts" / "kube.sh"
ZEROS = "0" * 64
AGENT_A = "a" * 64
AGENT_B = "d432fbb3-d2f1-4a97-9ef7-75bd81c00000"


class Fakes:
    def __init__(self, state: Path):
        self.state = state
        self.keylime = state / "keylime.json"
        self.keylime.write_text(json.dumps({"registered": [], "enrolled": {}, "pcrs": {"8": ZEROS}}))

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "PATH": f"{FAKES}:{os.environ['PATH']}", "FAKE_STATE": str(self.state), **extra}

    def run(self, argv: list[str], **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(argv, env=self.env(**extra), capture_output=True, text=True, check=False, cwd=ROOT)

    def clusters(self) -> set[str]:
        return {p.name for p in (self.state / "clusters").iterdir()} if (self.state / "clusters").exists() else set()

    def model(self) -> dict:
        return json.loads(self.keylime.read_text())

    def set(self, **values) -> None:
        self.keylime.write_text(json.dumps({**self.model(), **values}))

    def calls(self) -> str:
        log = self.state / "calls.log"
        return log.read_text() if log.exists() else ""


@pytest.fixture
def fakes(tmp_path) -> Fakes:
    return Fakes(tmp_path)


OWNER = "keylime-push/swtpm"


def kind_cluster(fakes: Fakes, verb: str, name: str = "keylime-agents-1", **extra: str):
    env = {"CLUSTER_NAME": name, "KIND_CONFIG": kind_config(name), "CLUSTER_OWNER": OWNER, **extra}
    return fakes.run([str(KIND_SCRIPT), verb], **env)


def node_file(fakes: Fakes, path: str, name: str = "keylime-agents-1") -> Path:
    return fakes.state / "nodes" / f"{name}-control-plane" / path.lstrip("/")


def enroll(fakes: Fakes, action: str, expected: int = 2, policy: str = json.dumps({"8": ZEROS}), **extra: str):
    env = {"EXPECTED_AGENTS": str(expected), "TPM_POLICY": policy, "WAIT_SECONDS": "1", "POLL_SECONDS": "0.1",
           "KUBECONFIG_DATA": "apiVersion: v1\nkind: Config\n# fake", **extra}
    return fakes.run([str(ENROLL), action], **env)


# --- kind-cluster.sh ---------------------------------------------------------------------------

def test_create_makes_the_cluster_from_the_generated_config(fakes):
    result = kind_cluster(fakes, "create")
    assert result.returncode == 0, result.stderr
    assert fakes.clusters() == {"keylime-agents-1"}
    assert (fakes.state / "clusters" / "keylime-agents-1").read_text().strip() == kind_config("keylime-agents-1").strip()


def test_create_marks_the_cluster_with_its_owner_and_configuration(fakes):
    assert kind_cluster(fakes, "create").returncode == 0
    mark = node_file(fakes, "/etc/keylime-push/cluster").read_text()
    config_hash = hashlib.sha256((kind_config("keylime-agents-1") + "\n").encode()).hexdigest()
    assert mark == f"owner={OWNER} config-sha256={config_hash}\n"


def test_create_adopts_a_healthy_cluster_it_made_from_the_same_configuration(fakes):
    kind_cluster(fakes, "create")
    again = kind_cluster(fakes, "create")
    assert again.returncode == 0 and "adopting" in again.stdout
    assert fakes.calls().count("create cluster") == 1


def test_create_refuses_a_cluster_another_stack_made_and_leaves_it_alone(fakes):
    kind_cluster(fakes, "create", CLUSTER_OWNER="keylime-push/hwtpm")
    result = kind_cluster(fakes, "create")
    assert result.returncode == 1
    assert "belongs to keylime-push/hwtpm, not keylime-push/swtpm; refusing to adopt it" in result.stderr
    assert "delete cluster" not in fakes.calls() and fakes.calls().count("create cluster") == 1


def test_create_refuses_a_cluster_without_a_mark(fakes):
    kind_cluster(fakes, "create", FAKE_KIND_FAIL="interrupted")
    result = kind_cluster(fakes, "create")
    assert result.returncode == 1 and "carries no keylime-push mark" in result.stderr
    assert "kind delete cluster --name keylime-agents-1" in result.stderr
    assert "delete cluster" not in fakes.calls() and fakes.clusters() == {"keylime-agents-1"}


def test_create_recreates_its_own_cluster_when_the_api_server_does_not_answer(fakes):
    kind_cluster(fakes, "create")
    node_file(fakes, ".unhealthy").touch()
    result = kind_cluster(fakes, "create")
    assert result.returncode == 0, result.stderr
    assert "does not answer; recreating it" in result.stdout
    assert fakes.calls().count("create cluster") == 2 and fakes.calls().count("delete cluster") == 1
    assert not node_file(fakes, ".unhealthy").exists() and node_file(fakes, "/etc/keylime-push/cluster").exists()


def test_create_recreates_its_own_cluster_made_from_another_configuration(fakes):
    kind_cluster(fakes, "create", KIND_CONFIG=kind_config("keylime-agents-1") + "# older\n")
    result = kind_cluster(fakes, "create")
    assert result.returncode == 0 and "another configuration; recreating it" in result.stdout
    assert (fakes.state / "clusters" / "keylime-agents-1").read_text().strip() == kind_config("keylime-agents-1").strip()


def test_delete_leaves_a_cluster_another_stack_made(fakes):
    kind_cluster(fakes, "create", CLUSTER_OWNER="keylime-push/hwtpm")
    result = kind_cluster(fakes, "delete")
    assert result.returncode == 1 and "belongs to keylime-push/hwtpm" in result.stderr
    assert fakes.clusters() == {"keylime-agents-1"}


def test_node_state_gives_the_directories_to_the_agents_user_on_the_node(fakes):
    kind_cluster(fakes, "create")
    dirs = "/var/lib/keylime-push/agent /var/lib/keylime-push/swtpm"
    result = kind_cluster(fakes, "node-state", NODE_STATE_OWNER="490:491", NODE_STATE_DIRS=dirs)
    assert result.returncode == 0, result.stderr
    for path in dirs.split():
        info = node_file(fakes, path).stat()
        assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (490, 491, 0o700)
    assert "docker exec -i keylime-agents-1-control-plane bash -s -- 490:491 " + dirs in fakes.calls()


def test_node_state_hands_kept_state_to_a_new_agent_user(fakes):
    kind_cluster(fakes, "create")
    kind_cluster(fakes, "node-state", NODE_STATE_OWNER="490:490", NODE_STATE_DIRS="/var/lib/keylime-push/agent")
    kept = node_file(fakes, "/var/lib/keylime-push/agent/agent_data.json")
    kept.write_text("{}")
    os.chown(kept, 490, 490)
    kind_cluster(fakes, "node-state", NODE_STATE_OWNER="1000:1000", NODE_STATE_DIRS="/var/lib/keylime-push/agent")
    assert (kept.stat().st_uid, kept.stat().st_gid) == (1000, 1000)


def test_delete_succeeds_when_the_cluster_is_already_gone(fakes):
    kind_cluster(fakes, "create")
    assert kind_cluster(fakes, "delete").returncode == 0
    assert fakes.clusters() == set()
    gone = kind_cluster(fakes, "delete")
    assert gone.returncode == 0 and "already gone" in gone.stdout


def test_delete_fails_loudly_when_kind_cannot_list_clusters(fakes):
    kind_cluster(fakes, "create")
    result = kind_cluster(fakes, "delete", FAKE_KIND_FAIL="get-clusters")
    assert result.returncode == 1 and "is Docker running" in result.stderr
    assert fakes.clusters() == {"keylime-agents-1"}


def test_a_failed_create_fails_the_command(fakes):
    result = kind_cluster(fakes, "create", FAKE_KIND_FAIL="create")
    assert result.returncode != 0 and "Docker daemon" in result.stderr


def test_load_puts_every_image_into_the_cluster(fakes):
    kind_cluster(fakes, "create")
    result = kind_cluster(fakes, "load", IMAGES="keylime-push/agent:0.2.9-abc keylime-push/tenant:7.14.3-def")
    assert result.returncode == 0, result.stderr
    loaded = (fakes.state / "loaded-keylime-agents-1").read_text().split()
    assert loaded == ["keylime-push/agent:0.2.9-abc", "keylime-push/tenant:7.14.3-def"]


def test_kubeconfig_prints_the_clusters_kubeconfig(fakes):
    kind_cluster(fakes, "create")
    result = kind_cluster(fakes, "kubeconfig")
    assert result.returncode == 0 and "current-context: kind-keylime-agents-1" in result.stdout


def test_missing_inputs_are_refused(fakes):
    result = fakes.run([str(KIND_SCRIPT), "create"])
    assert result.returncode != 0 and "CLUSTER_NAME must be set" in result.stderr
    assert fakes.run([str(KIND_SCRIPT), "explode"], CLUSTER_NAME="x").returncode == 64


# --- enroll.py ---------------------------------------------------------------------------------

def test_add_waits_for_every_agent_then_enrolls_each_with_the_policy(fakes):
    fakes.set(registered=[AGENT_A, AGENT_B])
    result = enroll(fakes, "add")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"enrolled": sorted([AGENT_A, AGENT_B])}
    assert sorted(fakes.model()["adds"]) == sorted([[AGENT_A, json.dumps({"8": ZEROS})], [AGENT_B, json.dumps({"8": ZEROS})]])


def test_a_second_add_enrolls_nothing_twice(fakes):
    fakes.set(registered=[AGENT_A, AGENT_B])
    enroll(fakes, "add")
    again = enroll(fakes, "add")
    assert again.returncode == 0
    assert len(fakes.model()["adds"]) == 2
    assert again.stderr.count("already enrolled") == 2


def test_add_fails_naming_the_count_when_agents_do_not_register_in_time(fakes):
    fakes.set(registered=[AGENT_A])
    result = enroll(fakes, "add")
    assert result.returncode == 1
    assert f"only 1 of 2 agents registered within 1 s (registered: {AGENT_A})" in result.stderr
    assert "adds" not in fakes.model()


def test_update_re_enrolls_every_agent_with_the_new_policy(fakes):
    fakes.set(registered=[AGENT_A, AGENT_B])
    enroll(fakes, "add")
    new_policy = json.dumps({"8": "1" * 64})
    assert enroll(fakes, "update", policy=new_policy).returncode == 0
    assert {agent: record["policy"] for agent, record in fakes.model()["enrolled"].items()} == {
        AGENT_A: new_policy,
        AGENT_B: new_policy,
    }


def test_an_empty_policy_is_refused_because_it_can_never_attest(fakes):
    fakes.set(registered=[AGENT_A, AGENT_B])
    result = enroll(fakes, "add", policy="{}")
    assert result.returncode != 0 and "empty policy never attests" in result.stderr


def test_delete_removes_every_enrolled_agent(fakes):
    fakes.set(registered=[AGENT_A, AGENT_B])
    enroll(fakes, "add")
    result = enroll(fakes, "delete")
    assert result.returncode == 0
    assert fakes.model()["enrolled"] == {}
    assert sorted(fakes.model()["deletes"]) == sorted([AGENT_A, AGENT_B])


def test_delete_succeeds_when_the_infra_cluster_is_gone(fakes):
    fakes.set(reachable=False)
    result = enroll(fakes, "delete")
    assert result.returncode == 0 and "nothing to remove" in result.stderr


def test_delete_is_best_effort_when_the_api_answers_but_the_tenant_cannot_be_reached(fakes):
    fakes.set(registered=[AGENT_A], tenant=False)
    result = enroll(fakes, "delete")
    assert result.returncode == 0, result.stderr
    assert 'container not found ("tenant")' in result.stderr and "left the enrollments" in result.stderr


def test_a_missing_kubectl_never_passes_for_a_cluster_that_is_gone(fakes, tmp_path):
    # Everything kube.sh needs but kubectl.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "mktemp", "chmod", "rm"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    (bin_dir / "python3").symlink_to(os.path.realpath(sys.executable))
    for action in ("delete", "add", "verify"):
        result = enroll(fakes, action, PATH=str(bin_dir))
        assert result.returncode == 1, (action, result.stderr)
        assert "kubectl is not installed or not on PATH" in result.stderr


def test_verify_passes_when_every_agent_attested(fakes):
    fakes.set(registered=[AGENT_A, AGENT_B])
    enroll(fakes, "add")
    result = enroll(fakes, "verify")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)["agents"]
    assert {a["uuid"] for a in summary} == {AGENT_A, AGENT_B}
    assert all(a["attestation_count"] > 0 and a["attestation_status"] == "PASS" for a in summary)


def test_verify_fails_naming_the_agent_and_the_pcr_the_verifier_saw(fakes):
    fakes.set(registered=[AGENT_A], pcrs={"8": "f" * 64})
    enroll(fakes, "add", expected=1)
    result = enroll(fakes, "verify", expected=1)
    assert result.returncode == 1
    assert f"agent {AGENT_A}: attestation FAIL, policy_violation: PCR #8: {'f' * 64} from quote" in result.stderr


def test_verify_reports_agents_enrolled_but_not_attested(fakes):
    fakes.set(registered=[AGENT_A], attests=False)
    enroll(fakes, "add", expected=1)
    result = enroll(fakes, "verify", expected=1)
    assert result.returncode == 1
    assert f"agent {AGENT_A}: enrolled, not attested yet (PENDING)" in result.stderr


def test_verify_fails_when_fewer_agents_are_enrolled_than_expected(fakes):
    fakes.set(registered=[AGENT_A])
    enroll(fakes, "add", expected=1)
    result = enroll(fakes, "verify", expected=2)
    assert result.returncode == 1 and "only 1 of 2 agents are enrolled" in result.stderr


def test_the_kubeconfig_reaches_kubectl_only_through_a_private_temporary_file(fakes, tmp_path):
    temporary = tmp_path / "tmpdir"
    temporary.mkdir()
    fakes.set(registered=[AGENT_A])
    assert enroll(fakes, "add", expected=1, TMPDIR=str(temporary)).returncode == 0
    calls = fakes.calls().splitlines()
    assert "kubeconfig-content apiVersion: v1|kind: Config|# fake|" in calls
    modes = {line for line in calls if line.startswith("kubeconfig-mode ")}
    assert modes == {"kubeconfig-mode 600"}
    paths = {line.split("KUBECONFIG=")[1] for line in calls if line.startswith("kubectl ")}
    assert paths and all(Path(p).parent == temporary for p in paths)
    assert not any(Path(p).exists() for p in paths)


def test_every_kubectl_call_names_the_configured_context_and_only_then(fakes):
    fakes.set(registered=[AGENT_A])
    assert enroll(fakes, "add", expected=1, KUBE_CONTEXT="datacenter").returncode == 0
    with_context = [line for line in fakes.calls().splitlines() if line.startswith("kubectl ")]
    assert with_context and all(line.startswith("kubectl --context datacenter ") for line in with_context)
    (fakes.state / "calls.log").unlink()
    assert enroll(fakes, "add", expected=1).returncode == 0
    assert "--context" not in fakes.calls()


def test_the_verifier_log_is_read_from_every_verifier_pod(fakes):
    result = fakes.run([str(KUBE), "verifier-log"], KUBE_CONTEXT="datacenter")
    assert result.returncode == 0, result.stderr
    (call,) = [line for line in fakes.calls().splitlines() if line.startswith("kubectl ")]
    assert "logs --selector app.kubernetes.io/name=keylime-verifier --tail=500 --max-log-requests 32" in call


def test_bad_usage_exits_2(fakes):
    assert fakes.run([str(ENROLL), "enrol"]).returncode == 2


def test_add_re_enrolls_exactly_the_agents_on_another_policy_and_leaves_the_rest(fakes):
    new_policy = json.dumps({"8": "1" * 64})
    fakes.set(registered=[AGENT_A, AGENT_B], enrolled={
        AGENT_A: {"policy": json.dumps({"8": ZEROS}), "attestation_count": 1, "attestation_status": "PASS"},
        AGENT_B: {"policy": json.dumps({"8": ["1" * 64], "mask": "0x100"}), "attestation_count": 1,
                  "attestation_status": "PASS"}})
    result = enroll(fakes, "add", policy=new_policy)
    assert result.returncode == 0, result.stderr
    assert f"re-enrolling {AGENT_A}" in result.stderr and f"{AGENT_B} is already enrolled with this TPM policy" in result.stderr
    assert [agent for agent, _ in fakes.model()["adds"]] == [AGENT_A]


def test_verify_does_not_accept_an_agent_that_stopped_attesting(fakes):
    fakes.set(registered=[AGENT_A])
    enroll(fakes, "add", expected=1)
    assert enroll(fakes, "verify", expected=1).returncode == 0
    fakes.set(stopped=[AGENT_A])
    result = enroll(fakes, "verify", expected=1)
    assert result.returncode == 1
    assert f"agent {AGENT_A}: attestation TIMEOUT: no evidence within 10s" in result.stderr


def test_verify_names_a_registered_agent_that_is_not_enrolled(fakes):
    fakes.set(registered=[AGENT_A])
    enroll(fakes, "add", expected=1)
    fakes.set(registered=[AGENT_A, AGENT_B])
    result = enroll(fakes, "verify", expected=1)
    assert result.returncode == 1 and f"agent {AGENT_B}: registered, not enrolled" in result.stderr


def test_verify_does_not_accept_an_agent_left_on_an_old_policy(fakes):
    fakes.set(registered=[AGENT_A], pcrs={"8": ZEROS, "9": ZEROS})
    enroll(fakes, "add", expected=1)
    result = enroll(fakes, "verify", expected=1, policy=json.dumps({"8": ZEROS, "9": ZEROS}))
    assert result.returncode == 1 and f"agent {AGENT_A}: enrolled with another TPM policy" in result.stderr
