"""Shared fixtures: the program evaluated under recording mocks (preview=False, a fresh event loop per run)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from components.settings import Settings, parse_settings  # noqa: E402
from tools.offline import ProgramRun, run_program, stack_config  # noqa: E402


def settings_for(stack: str = "swtpm", **overrides: object) -> Settings:
    """The Settings a stack file (plus overrides) yields, read the way the program reads them."""
    namespaced = stack_config(stack, overrides)
    return parse_settings({key.split(":", 1)[1]: value for key, value in namespaced.items() if key.startswith("keylime-push:")})


@pytest.fixture
def run():
    """Evaluate the program: run(stack, **config overrides) -> ProgramRun."""

    def evaluate(stack: str = "swtpm", command_stdout=None, **overrides: object) -> ProgramRun:
        return run_program(stack, overrides, command_stdout=command_stdout)

    return evaluate


@pytest.fixture(scope="module")
def swtpm() -> ProgramRun:
    return run_program("swtpm")


@pytest.fixture(scope="module")
def hwtpm() -> ProgramRun:
    return run_program("hwtpm")


def pod_spec(resource) -> dict:
    return resource.plain["spec"]["template"]["spec"]


def all_containers(resource) -> list[dict]:
    spec = pod_spec(resource)
    return [*spec.get("initContainers", []), *spec["containers"]]


def kube_objects(run: ProgramRun, kind: str, cluster: str | None = None) -> list:
    """Kubernetes objects of `kind`, optionally only those sent through the provider `<cluster>-k8s`."""
    found = [r for r in run.resources if r.type.startswith("kubernetes:") and r.type.endswith(f":{kind}")]
    if cluster is not None:
        found = [r for r in found if r.provider.split("::")[-2] == f"{cluster}-k8s"]
    return found


def env_of(container: dict) -> dict[str, str]:
    return {item["name"]: item.get("value") for item in container.get("env", [])}
