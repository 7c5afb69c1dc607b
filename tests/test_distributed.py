"""``torchrun -m latprune prune`` on 2 CPU processes (gloo): every rank ends with the same weights,
rank 0 alone writes the run; ranks given different arguments are refused."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

TORCHRUN = Path(sys.executable).with_name("torchrun")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _argv(model_file: str, lut: str, out: Path, budget: str = "0.75x") -> list[str]:
    return ["prune", model_file, "--input", "1x1x28x28", "--lut", lut, "--budget", budget, "-o", str(out),
            "--data", "digits", "--epochs", "0.5", "--batch-size", "32", "--gate-epochs", "0.25",
            "--importance-batches", "2", "--device", "cpu", "--backend", "fake", "--threads", "1", "--json"]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def test_torchrun_prune_on_two_gloo_ranks_ends_with_identical_weights(model_file: str, fake_lut: str,
                                                                      tmp_path: Path) -> None:
    out = tmp_path / "run"
    done = subprocess.run([str(TORCHRUN), "--nproc_per_node=2", f"--master_port={_free_port()}", "-m", "latprune",
                           *_argv(model_file, fake_lut, out)], env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "model.onnx", "model.pt", "plan.json"]
    assert not list(tmp_path.glob(".run*"))  # checkpoints gone, nothing half-written
    metrics = json.loads((out / "metrics.json").read_text())
    world = metrics["distributed"]
    assert world["world_size"] == 2 and world["backend"] == "gloo"
    digests = world["weights_sha256"]  # each rank's final pruned model
    assert len(digests) == 2 and digests[0] == digests[1]
    assert metrics["method_details"]["gates"]["steps"] > 0 and metrics["budget_met"]
    assert json.loads(done.stdout)["budget_met"]  # rank 0 alone printed the report
    assert world["max_difference_before_sync"]["gate training"] == 0.0  # DDP kept the ranks' weights and gates equal
    assert world["max_difference_before_sync"]["fine-tune"] == 0.0
    state = torch.load(out / "model.pt", weights_only=True)
    assert state and all(torch.isfinite(t.float()).all() for t in state.values())


def test_ranks_given_different_arguments_are_refused(model_file: str, fake_lut: str, tmp_path: Path) -> None:
    """Two processes of one world (as two nodes would be launched), one given another budget:
    each refuses in one line and exits 2, and nothing is written."""
    port = str(_free_port())
    procs = []
    for rank, budget in ((0, "0.75x"), (1, "0.5x")):
        env = {**_env(), "RANK": str(rank), "LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": port}
        procs.append(subprocess.Popen([sys.executable, "-m", "latprune",
                                       *_argv(model_file, fake_lut, tmp_path / "run", budget)],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 2, err
        lines = [ln for ln in err.splitlines() if ln.startswith("latprune: error:")]
        assert len(lines) == 1 and "Traceback" not in err, err
        assert "other arguments than rank 0 (they differ in: budget)" in lines[0]
    assert not list(tmp_path.iterdir())


def test_torchrun_rank_training_runs_on_every_rank(model_file: str, tmp_path: Path) -> None:
    """``--method trp`` trains towards low rank on both ranks (its projections and nuclear-norm
    term keep them equal), and rank 0 alone decides the ranks."""
    from latprune.cli import main

    lut = tmp_path / "lowrank.lut"
    assert main(["profile", model_file, "--input", "1x1x28x28", "--backend", "fake", "--threads", "1", "--levels",
                 "2", "--calibration-samples", "4", "--lowrank", "-o", str(lut), "--json"]) == 0
    out = tmp_path / "run"
    argv = [a for a in _argv(model_file, str(lut), out, budget="50ms") if a not in ("--gate-epochs", "0.25")]
    done = subprocess.run([str(TORCHRUN), "--nproc_per_node=2", f"--master_port={_free_port()}", "-m", "latprune",
                           *argv, "--method", "trp", "--trp-epochs", "0.25", "--trp-period", "2"], env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    world = metrics["distributed"]
    assert world["weights_sha256"][0] == world["weights_sha256"][1]
    assert world["max_difference_before_sync"]["rank training"] == 0.0
    assert metrics["method_details"]["trp"]["projections"] > 0 and metrics["budget_met"]
