"""The config contract: defaults, normalisation, and one clear refusal per bad value class."""

from __future__ import annotations

import json

import pytest
import yaml
from helpers import ROOT, problems_for, settings_for

from components.settings import DEFAULTS, KEYS, NAMESPACE, ZERO_DIGEST, SettingsError, parse_settings
from tools import config_docs
from tools.offline import run_program, stack_config

UPPER_DIGEST = "AB" * 32


def test_swtpm_stack_defaults_match_the_original_poc():
    settings = settings_for("swtpm")
    assert settings.tpm_mode == "swtpm"
    assert settings.agent_clusters == 2
    assert settings.tpm_policy == ((8, (ZERO_DIGEST,)),)
    assert (settings.agent_uid, settings.agent_gid) == (490, 490)
    assert settings.uuid == "hash_ek"
    assert settings.require_ek_cert is True  # every software TPM's EK is signed by the program's manufacturer CA
    assert (settings.registrar_node_port, settings.registrar_tls_node_port, settings.verifier_node_port) == (
        30890,
        30891,
        30881,
    )
    assert (settings.keylime_version, settings.agent_version) == ("7.14.3", "0.2.9")


def test_hwtpm_stack_requires_ek_certificates_and_runs_one_vm():
    settings = settings_for("hwtpm")
    assert settings.tpm_mode == "hwtpm"
    assert settings.require_ek_cert is True
    assert settings.agent_clusters == 1


def test_require_ek_cert_is_on_in_both_modes_when_a_stack_file_omits_it():
    assert parse_settings({"tpmMode": "swtpm"}).require_ek_cert is True
    assert parse_settings({"tpmMode": "hwtpm", "agentClusters": "1"}).require_ek_cert is True
    assert parse_settings({"tpmMode": "swtpm", "requireEkCert": "false"}).require_ek_cert is False


def test_policy_digests_are_lower_cased_and_lists_kept_in_order():
    settings = settings_for(tpmPolicy=json.dumps({"8": UPPER_DIGEST, "0": [ZERO_DIGEST, "F" * 64]}))
    assert settings.tpm_policy == ((0, (ZERO_DIGEST, "f" * 64)), (8, ("ab" * 32,)))
    assert json.loads(settings.tpm_policy_json) == {"0": [ZERO_DIGEST, "f" * 64], "8": "ab" * 32}


def test_literal_uuid_is_accepted_for_a_single_agent():
    assert settings_for(uuid="D432FBB3-D2F1-4A97-9EF7-75BD81C00000", agentClusters=1).uuid == (
        "d432fbb3-d2f1-4a97-9ef7-75bd81c00000"
    )


@pytest.mark.parametrize(
    ("key", "value", "explains"),
    [
        ("tpmMode", "tpm", "swtpm | hwtpm"),
        ("agentClusters", "two", "not an integer"),
        ("agentClusters", "0", "1..64"),
        ("agentClusters", "65", "1..64"),
        ("tpmPolicy", "{8: zeros}", "malformed JSON"),
        ("tpmPolicy", "{}", "at least one PCR"),
        ("tpmPolicy", '["8"]', "at least one PCR"),
        ("tpmPolicy", json.dumps({"8": "g" * 64}), "not hexadecimal"),
        ("tpmPolicy", json.dumps({"8": "0" * 40}), "sha256 needs 64"),
        ("tpmPolicy", json.dumps({"10": ZERO_DIGEST}), "PCR 10 (IMA)"),
        ("tpmPolicy", json.dumps({"16": ZERO_DIGEST}), "PCR 16 (debug)"),
        ("tpmPolicy", json.dumps({"24": ZERO_DIGEST}), "0..23"),
        ("tpmPolicy", json.dumps({"8": []}), "non-empty list"),
        ("agentUid", "0", "0 is root"),
        ("agentGid", "0", "0 is root's group"),
        ("agentUid", "-5", ">= 1"),
        ("uuid", "not-a-uuid", "hash_ek | generate | a literal UUID"),
        ("requireEkCert", "yes", "true | false"),
        ("keylimeVersion", "", "non-empty version"),
        ("agentVersion", "0.2.9 beta", "non-empty version"),
        ("registrarNodePort", "8890", "30000..32766"),
        ("registrarNodePort", "32767", "30000..32766"),
        ("verifierNodePort", "40000", "30000..32767"),
        ("extraSans", json.dumps(["10.0.0.300x", "bad_name.example"]), "not an IP address or DNS name"),
        ("extraSans", '"host.example"', "list of strings"),
        ("imageSource", "quay", "upstream | local"),
        ("vmNetworkCidr", "8.8.8.0/24", "private IPv4"),
        ("vmNetworkCidr", "10.100.0.0/24", "overlaps 10.96.0.0/12"),
        ("vmNetworkCidr", "192.168.150.0/30", "/28 or larger"),
        ("vmImage", "ubuntu.img", "an http(s) URL or an absolute path"),
        ("vmImage", "/nonexistent/ubuntu.img", "an http(s) URL or an absolute path"),
        ("vmCpus", "0", "1..32"),
        ("vmMemoryMiB", "1024", "2048..131072"),
        ("libvirtUri", "xen:///system", "a QEMU libvirt URI"),
    ],
)
def test_each_bad_value_is_refused_naming_the_key_and_what_is_allowed(key, value, explains):
    problems = problems_for(**{key: value})
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{NAMESPACE}:{key}:")
    assert explains in problems[0]


def test_clashing_node_ports_are_refused_including_the_registrar_tls_port():
    same = problems_for(registrarNodePort=30881, verifierNodePort=30881)
    tls_port = problems_for(registrarNodePort=30880, verifierNodePort=30881)
    for problems in (same, tls_port):
        assert len(problems) == 1 and problems[0].startswith(f"{NAMESPACE}:verifierNodePort:")
        assert "clashes with registrarNodePort" in problems[0]


def test_local_images_need_both_clones(tmp_path):
    (tmp_path / "keylime").mkdir()
    (tmp_path / "keylime" / "keylime" / "__init__.py").parent.mkdir()
    (tmp_path / "keylime" / "keylime" / "__init__.py").write_text("")
    problems = problems_for(imageSource="local", keylimeGit=str(tmp_path / "keylime"), rustKeylimeGit=str(tmp_path / "missing"))
    assert [p.split(":")[1] for p in problems] == ["rustKeylimeGit"]
    assert "required when imageSource=local" in problems[0] and "not an existing directory" in problems[0]


def test_a_folder_that_is_not_the_named_clone_is_refused(tmp_path):
    problems = problems_for(imageSource="local", keylimeGit=str(tmp_path), rustKeylimeGit=str(tmp_path))
    assert [p.split(":")[1] for p in problems] == ["keylimeGit", "rustKeylimeGit"]
    assert "no docker/release/Dockerfile.fedora in it" in problems[1]


def test_a_literal_uuid_shared_by_several_agents_is_refused():
    problems = problems_for(uuid="d432fbb3-d2f1-4a97-9ef7-75bd81c00000", agentClusters=3)
    assert len(problems) == 1 and "shared by 3 agents" in problems[0]


def test_hwtpm_refuses_more_than_one_agent_cluster():
    problems = problems_for("hwtpm", agentClusters=2)
    assert problems == [f"{NAMESPACE}:agentClusters: got 2; allowed: 1 when tpmMode=hwtpm (the agents run in one VM)"]


def test_all_problems_are_reported_together():
    problems = problems_for(agentClusters=0, agentUid=0, tpmPolicy="{", extraSans='["a b"]', imageSource="x")
    assert sorted(p.split(":")[1] for p in problems) == sorted(
        ["agentClusters", "agentUid", "tpmPolicy", "extraSans", "imageSource"]
    )


def test_a_missing_tpm_mode_is_refused_with_the_choices():
    with pytest.raises(SettingsError, match=r"keylime-push:tpmMode: not set; allowed: swtpm \| hwtpm"):
        parse_settings({})


def test_bad_config_stops_the_program_before_any_resource_is_declared():
    declared: list = []
    with pytest.raises(SettingsError, match="keylime-push:agentClusters"):
        run_program("swtpm", {"agentClusters": "100"}, declared=declared)
    assert declared == []


def test_pulumi_yaml_declares_every_key_with_the_same_defaults():
    declared = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"]
    project_keys = {key for key in declared if ":" not in key}
    assert project_keys == set(KEYS)
    for key, default in DEFAULTS.items():
        assert declared[key]["default"] == default, key
    # The stack files choose the mode; nothing else may be left without a default.
    assert {key for key in project_keys if "default" not in declared[key]} == {"tpmMode"}


@pytest.mark.parametrize(("path", "generate"), [("Pulumi.yaml", config_docs.project_file), ("README.md", config_docs.readme)])
def test_pulumi_yaml_and_the_readme_table_show_the_one_definition(path, generate):
    current = (ROOT / path).read_text()
    assert generate(current) == current, f"{path} drifted from components/settings.py: python -m tools.config_docs --write"


def test_the_drift_check_names_a_changed_description_and_rewrites_it(tmp_path, monkeypatch, capsys):
    drifted = (ROOT / "Pulumi.yaml").read_text().replace("Number of agent Kind clusters", "Number of clusters")
    monkeypatch.setattr(config_docs, "PROJECT_FILE", tmp_path / "Pulumi.yaml")
    monkeypatch.setattr(config_docs, "README", ROOT / "README.md")
    (tmp_path / "Pulumi.yaml").write_text(drifted)
    assert config_docs.main([]) == 1
    assert capsys.readouterr().err.startswith("Pulumi.yaml differ")
    assert config_docs.main(["--write"]) == 0
    assert config_docs.main([]) == 0
    assert (tmp_path / "Pulumi.yaml").read_text() == (ROOT / "Pulumi.yaml").read_text()


def test_the_offline_stack_config_takes_the_declared_defaults_then_the_stack_file():
    config = stack_config("hwtpm", {"vmCpus": 4})
    assert config["keylime-push:mbPolicy"] == ""  # a declared default
    assert config["keylime-push:tpmPolicy"] == json.dumps({"23": ZERO_DIGEST})  # the stack file's (UEFI uses PCR 8)
    assert config["keylime-push:keylimeGit"] == ""
    assert (config["keylime-push:agentClusters"], config["keylime-push:requireEkCert"]) == ("1", "true")
    assert config["keylime-push:vmCpus"] == "4"
    assert {key.split(":", 1)[1] for key in config} == set(KEYS)


def test_default_providers_are_disabled_for_every_package():
    declared = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())
    assert declared["config"]["pulumi:disable-default-providers"] == {"value": ["*"]}
    assert declared["backend"]["url"].startswith("file://")
