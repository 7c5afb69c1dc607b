"""benchmarks/memory_peak.py: a child's row holds each step's memory, and the table renders it."""

from __future__ import annotations

import sys

import pytest

from tests.conftest import load_benchmark


@pytest.fixture(scope="module")
def memory_peak():
    return load_benchmark("memory_peak")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="memory is read from /proc")
def test_a_child_records_each_steps_memory_and_the_table_renders_it(memory_peak):
    row = memory_peak.child("resnet18", 32, "fake")
    steps = row["steps"]
    assert list(steps) == ["build", "profile", "prune"]
    assert all(s["peak_gb"] >= s["after_gb"] > 0 and s["peak_x_weights"] > 0 for s in steps.values())
    assert row["weights_gb"] == pytest.approx(0.047, abs=0.001)  # ResNet-18: 11.7 M parameters
    lines = memory_peak.table({"after:resnet18@32": {**row, "commit": "abc1234"}}).splitlines()
    assert len(lines) == 3 and lines[2].startswith("| after (`abc1234`) | resnet18@32 | 0.05 |")
