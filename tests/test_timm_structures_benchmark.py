"""benchmarks/timm_structures.py: a row per timm model, pruned or refused in one line, and every row renders."""

from __future__ import annotations

import pytest

from tests.conftest import load_benchmark


def test_a_timm_model_is_a_row_of_what_prunes_and_a_refusal_is_a_row_of_why() -> None:
    pytest.importorskip("timm")
    bench = load_benchmark("timm_structures")
    row = bench.child("resnet18", 32)
    assert row["status"] == "prunes" and row["input"] == [1, 3, 32, 32]
    assert row["groups"] > 0 and row["heads_groups"] == 0 and row["blocks"] > 0 and row["kept_full"] == 0
    refused = {"model": "cspresnet50", "input": [1, 3, 64, 64], "status": "refused",
               "why": "latprune cannot prune this model's structure yet: slimming it as its channel groups say failed"}
    lines = bench.table({"resnet18": row, "cspresnet50": refused}).splitlines()
    assert len(lines) == 4 and lines[2].startswith("| resnet18 | 32×32 | prunes |")
    assert lines[3].startswith("| cspresnet50 | 64×64 | refused |") and "slimming it" in lines[3]
