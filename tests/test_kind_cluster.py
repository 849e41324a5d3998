"""Kind clusters as Commands: lifecycle options, secret kubeconfigs, image loads keyed to content."""

from __future__ import annotations

import subprocess
from urllib.parse import urlsplit

import pytest
import yaml
from helpers import all_containers

from components.images import git_head


def test_kind_configs_publish_the_node_ports_on_the_infra_node_only(swtpm):
    infra = yaml.safe_load(swtpm.named("infra-cluster").plain["environment"]["KIND_CONFIG"])
    assert infra["name"] == "keylime-swtpm-infra"
    (node,) = infra["nodes"]
    assert sorted(m["hostPort"] for m in node["extraPortMappings"]) == [30881, 30890, 30891]
    assert all(m["containerPort"] == m["hostPort"] for m in node["extraPortMappings"])
    agents = yaml.safe_load(swtpm.named("agents-2-cluster").plain["environment"]["KIND_CONFIG"])
    assert agents["name"] == "keylime-swtpm-agents-2" and "extraPortMappings" not in agents["nodes"][0]


def test_a_cluster_is_replaced_delete_first_when_its_config_changes(swtpm):
    for name in ("infra-cluster", "agents-1-cluster", "agents-2-cluster"):
        cluster = swtpm.named(name)
        assert cluster.delete_before_replace is True
        assert cluster.plain["triggers"] == [cluster.plain["environment"]["KIND_CONFIG"]]
        assert cluster.plain["create"].endswith("kind-cluster.sh create")
        assert cluster.plain["delete"].endswith("kind-cluster.sh delete")


def test_kubeconfigs_are_secret_and_never_logged(swtpm):
    for name in ("infra-kubeconfig", "agents-1-kubeconfig"):
        kubeconfig = swtpm.named(name)
        assert kubeconfig.additional_secret_outputs == ["stdout"]
        assert kubeconfig.plain["logging"] == "none"
        assert kubeconfig.plain["triggers"] == [f"{name.removesuffix('-kubeconfig')}-cluster-id"]
    assert swtpm.outputs["infraKubeconfig"].secret is True


def test_images_are_loaded_again_only_when_their_content_hash_changes(run):
    base, changed = run("swtpm"), run("swtpm", agentUid=1000)
    load, load_changed = base.named("agents-1-images").plain, changed.named("agents-1-images").plain
    tag = base.named("images-agent").plain["imageName"]
    assert load["triggers"] == [tag] and load["environment"]["IMAGES"] == tag
    assert load_changed["triggers"] != load["triggers"]
    assert base.named("infra-images").plain["triggers"] == run("swtpm", agentClusters=5).named("infra-images").plain["triggers"]


# A tag loaded into the node (kind load, or ctr import in the VM) is in no registry: `Always` would fail
# with ErrImagePull.
LOADED_TAG_PULL_POLICIES = ("IfNotPresent", "Never")


@pytest.mark.parametrize("stack", ["swtpm", "hwtpm"])
def test_workloads_use_the_loaded_tags_and_never_pull_them(run, stack):
    program = run(stack)
    built = {image.plain["imageName"] for image in program.of_type("docker:index/image:Image")}
    agent_images = set()
    checked = 0
    for resource in program.resources:
        if resource.type in ("kubernetes:apps/v1:DaemonSet", "kubernetes:apps/v1:Deployment"):
            for container in all_containers(resource):
                if container["image"] in built:
                    assert container.get("imagePullPolicy") in LOADED_TAG_PULL_POLICIES, (resource.name, container["name"])
                    checked += 1
                if resource.plain["metadata"]["name"] == "keylime-agent":
                    agent_images.add(container["image"])
    assert agent_images == {program.named("images-agent").plain["imageName"]}
    # swtpm: agent, swtpm-init and swtpm per agent cluster; both: registrar, verifier, tenant and the
    # attestation controller.
    assert checked == (3 * 2 + 4 if stack == "swtpm" else 1 + 4)


def test_local_images_build_from_the_clones_then_add_the_thin_layer(run, tmp_path):
    for clone, marker in (("keylime", "keylime/__init__.py"), ("rust-keylime", "docker/release/Dockerfile.fedora")):
        (tmp_path / clone / ".git").mkdir(parents=True)
        (tmp_path / clone / ".git" / "HEAD").write_text("0123456789abcdef\n")
        (tmp_path / clone / marker).parent.mkdir(parents=True)
        (tmp_path / clone / marker).write_text("FROM scratch\n")
    program = run(
        "swtpm", imageSource="local", keylimeGit=str(tmp_path / "keylime"), rustKeylimeGit=str(tmp_path / "rust-keylime")
    )
    source = program.named("images-agent-source").plain
    assert source["build"]["context"] == str(tmp_path / "rust-keylime")
    assert source["build"]["dockerfile"] == f"{tmp_path / 'rust-keylime'}/docker/release/Dockerfile.fedora"
    thin = program.named("images-agent")
    assert thin.plain["build"]["args"]["BASE_IMAGE"] == source["imageName"]
    assert program.named("images-agent-source").urn in thin.dependencies


def git(*args: str, cwd) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def test_a_local_clone_is_identified_by_the_commit_git_resolves_even_in_a_worktree(tmp_path):
    clone = tmp_path / "keylime"
    clone.mkdir()
    git("init", "--quiet", cwd=clone)
    (clone / "README").write_text("first\n")
    git("add", "README", cwd=clone)
    git("-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "--quiet", "-m", "first", cwd=clone)
    git("worktree", "add", "--quiet", "-b", "other", str(tmp_path / "worktree"), cwd=clone)
    (tmp_path / "worktree" / "README").write_text("second\n")
    git("-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "--quiet", "-am", "second", cwd=tmp_path / "worktree")
    git("pack-refs", "--all", cwd=clone)
    assert (tmp_path / "worktree" / ".git").is_file()
    assert git_head(str(clone)) == git("rev-parse", "HEAD", cwd=clone)
    assert git_head(str(tmp_path / "worktree")) == git("rev-parse", "HEAD", cwd=tmp_path / "worktree") != git_head(str(clone))
    assert git_head(str(tmp_path)) == "unknown-commit"


# --- each stack owns its clusters; ports stay on the host --------------------------------------

def kind_configs(program) -> dict[str, dict]:
    return {
        r.name: yaml.safe_load(r.plain["environment"]["KIND_CONFIG"])
        for r in program.of_type("command:local:Command")
        if r.name.endswith("-cluster")
    }


def test_the_two_stacks_never_share_a_cluster(swtpm, hwtpm):
    swtpm_names = sorted(config["name"] for config in kind_configs(swtpm).values())
    assert swtpm_names == ["keylime-swtpm-agents-1", "keylime-swtpm-agents-2", "keylime-swtpm-infra"]
    assert [config["name"] for config in kind_configs(hwtpm).values()] == ["keylime-hwtpm-infra"]
    assert swtpm.outputs["infraCluster"].value == "keylime-swtpm-infra"


def test_agents_dial_the_node_of_their_own_stacks_infra_cluster_and_its_certificate_names_it(swtpm):
    assert swtpm.outputs["verifierEndpoint"].value == "https://keylime-swtpm-infra-control-plane:30881"
    assert "keylime-swtpm-infra-control-plane" in swtpm.named("pki-verifier-csr").plain["dnsNames"]


def test_every_cluster_is_created_and_deleted_as_this_stacks_own(swtpm):
    for name in kind_configs(swtpm):
        assert swtpm.named(name).plain["environment"]["CLUSTER_OWNER"] == "keylime-push/swtpm"


def test_a_stack_name_that_cannot_name_a_kind_node_is_refused_before_anything_is_declared():
    from components.settings import SettingsError, parse_settings

    assert parse_settings({"tpmMode": "swtpm"}, "keylime-ci").stack == "keylime-ci"
    with pytest.raises(SettingsError) as refused:
        parse_settings({"tpmMode": "swtpm"}, "Prod_Cluster.1")
    assert "pulumi stack name: got 'Prod_Cluster.1'" in str(refused.value)


def test_swtpm_publishes_the_node_ports_on_loopback_only(swtpm):
    mappings = kind_configs(swtpm)["infra-cluster"]["nodes"][0]["extraPortMappings"]
    assert {m["listenAddress"] for m in mappings} == {"127.0.0.1"}


def test_hwtpm_publishes_them_only_on_the_address_the_vm_dials_once_its_network_exists(hwtpm):
    mappings = kind_configs(hwtpm)["infra-cluster"]["nodes"][0]["extraPortMappings"]
    vm_dials = urlsplit(hwtpm.outputs["verifierEndpoint"].value).hostname
    assert {m["listenAddress"] for m in mappings} == {vm_dials} == {"192.168.150.1"}
    assert hwtpm.named("vm-network").urn in hwtpm.named("infra-cluster").dependencies
