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
