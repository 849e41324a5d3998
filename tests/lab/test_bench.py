"""`make bench` (tools/bench.py) kept working: the same three phases, short and with two agents."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tools import bench

pytestmark = pytest.mark.lab


def test_the_benchmark_measures_one_and_two_pinned_verifier_processes_and_the_default_one():
    result = bench.run(Path(os.environ["LAB_BIN"]), agent_count=2, seconds=1.5)
    one, two, default = result["phases"]
    assert [(p["name"], p["verifiers"], p["pinned"]) for p in result["phases"]] == [
        ("one-pinned", 1, "0"), ("two-pinned", 2, "0 / 1"), ("one-default", 1, "any")]
    for phase in result["phases"]:
        assert phase["attestations"] > 0 and phase["verifier_cpu_seconds"] > 0, phase
    assert result["two_over_one"] == pytest.approx(two["per_second"] / one["per_second"])
    assert result["configured_quote_interval"] == 2
    rows = bench.table(result).splitlines()
    assert rows[0].startswith("| verifier processes |") and len(rows) == 2 + 3 + 2
    assert f"| {int(one['per_second'] * 2)} | {int(one['per_second'] * 60)} |" in rows[2]
    assert one["cores"] == 1 and two["cores"] == 2 and default["cores"] == os.cpu_count()
    assert one["cpu_ceiling_per_second"] == pytest.approx(1000 / one["cpu_ms_per_attestation"])
