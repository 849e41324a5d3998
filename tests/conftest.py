"""Shared fixtures: the program evaluated under recording mocks (preview=False, a fresh event loop per run)."""

from __future__ import annotations

import pytest

from tools.offline import ProgramRun, run_program


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
