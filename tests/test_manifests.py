"""Every manifest the program declares, validated offline: kubernetes-validate --strict and checkov."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from helpers import MEASURED, checkov, validate_strictly
from test_keylime_servers import replicated_on_postgres

from components.pod_security import WAIVERS
from tools.render import render, write_manifests


@pytest.fixture(
    scope="module", params=["swtpm", "hwtpm", "swtpm-measured-boot", "hwtpm-measured-boot", "servers-on-postgres"]
)
def manifests(request, tmp_path_factory) -> list[Path]:
    out = tmp_path_factory.mktemp(request.param)
    if request.param == "servers-on-postgres":
        # What only the cluster stack declares: replicas, budgets, load balancers, database URLs from a Secret.
        write_manifests(replicated_on_postgres().resources, out)
    else:
        stack, _, variant = request.param.partition("-")
        render(stack, out, MEASURED if variant else {})
    return sorted((out / "manifests").rglob("*.yaml"))


def test_every_manifest_validates_strictly_for_the_kind_kubernetes_version(manifests):
    result = validate_strictly(manifests)
    assert result.returncode == 0, result.stdout + result.stderr


def test_checkov_finds_nothing_beyond_the_annotated_waivers(manifests):
    failed, passed = checkov(manifests[0].parents[1])
    assert failed == []
    assert passed > 100


# Waivers of these checks admit privilege; only the device plugin may carry them.
PRIVILEGE_CHECKS = {"CKV_K8S_16", "CKV_K8S_20", "CKV_K8S_23", "CKV_K8S_25", "CKV_K8S_28", "CKV_K8S_37"}


def waived_manifests(manifests: list[Path]) -> set[Path]:
    """The manifests that waive checks, each waiver asserted to be an annotation with its reason and, if it
    admits privilege, on the device plugin only."""
    waivers = [
        (path, value)
        for path in manifests
        for key, value in yaml.safe_load(path.read_text())["metadata"].get("annotations", {}).items()
        if key.startswith("checkov.io/skip")
    ]
    for path, value in waivers:
        check, _, reason = value.partition("=")
        assert check.startswith("CKV_K8S_") and len(reason) > 20, (path.name, value)
        if check in PRIVILEGE_CHECKS:
            assert "generic-device-plugin" in path.name, (path.name, check)
        else:
            specific = ("CKV_K8S_8", "CKV_K8S_9", "CKV_K8S_21", "CKV_K8S_22", "CKV_K8S_35", "CKV_K8S_43")
            assert check in WAIVERS or check in specific, (
                path.name,
                check,
            )
    return {path for path, _ in waivers}


def workloads(manifests: list[Path]) -> set[Path]:
    return {path for path in manifests if path.name.startswith(("daemonset-", "deployment-"))}


def test_every_waiver_is_an_annotation_with_its_reason(manifests):
    # Every workload waives some check (at least the probes or the image digest), so each must show up here.
    assert len(workloads(manifests)) >= 3 and waived_manifests(manifests) >= workloads(manifests)
