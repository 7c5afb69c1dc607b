"""``torchrun -m latprune prune`` on 2 CPU processes (gloo): every rank ends with the same weights,
rank 0 alone writes the run; ranks given different arguments are refused. Gates attached to the
caller's model train alike on every rank of the caller's DDP loop."""

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


EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "own_loop_torchrun.py"


def test_gates_in_the_callers_ddp_loop_train_alike_on_every_rank(tmp_path: Path) -> None:
    """``examples/own_loop_torchrun.py`` on 2 gloo ranks: the caller's DDP loop trains the attached
    gates for 8 steps (past the Taylor signal's warm-up, where each rank's own batches reach the
    gates), ``gates.optimizer()`` averages their gradients, and the ranks end with one decision."""
    run = tmp_path / "run"
    done = subprocess.run([str(TORCHRUN), "--nproc_per_node=2", f"--master_port={_free_port()}", str(EXAMPLE),
                           "--backend", "fake", "--lut", str(tmp_path / "a.lut"), "--samples", "256", "--pretrain",
                           "1", "--epochs", "2", "--finetune", "1", "--out", str(run)],
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "the ranks' pruned weights alike" in done.stdout
    metrics = json.loads((run / "metrics.json").read_text())
    world = metrics["distributed"]
    assert world["world_size"] == 2 and world["weights_sha256"][0] == world["weights_sha256"][1]
    assert metrics["method_details"]["gates"]["steps"] == 8
    assert world["max_difference_before_sync"]["gate training"] == 0.0  # the averaged gates stayed equal
    assert metrics["config"]["gate_training"] == "the caller's loop" and metrics["measured_ms"] > 0
    assert sorted(p.name for p in run.iterdir()) == ["metrics.json", "model.onnx", "model.pt", "plan.json"]


_UNAVERAGED = """
import sys
from pathlib import Path
import torch
import torch.distributed as dist
sys.path.insert(0, sys.argv[2])
from own_loop import SmallNet
import latprune
from latprune.errors import SpecError

dist.init_process_group("gloo")
model, x = SmallNet(), torch.randn(1, 1, 28, 28)
if dist.get_rank() == 0:
    latprune.profile(model, x, backend="fake", threads=1, path=sys.argv[1], levels=2, passes=1,
                     calibration_samples=4, progress=False)
dist.barrier()
gates = latprune.attach_gates(model, sys.argv[1], "0.6x", example_input=x, progress=False)
gate_opt = torch.optim.Adam(gates.parameters(), lr=0.1)  # not gates.optimizer(): nothing averages
model.train()
model(torch.randn(4, 1, 28, 28))  # a training-mode forward pass, as loss() asks
try:
    gates.loss()
except SpecError as exc:  # one file per rank: their prints would interleave
    Path(sys.argv[1]).with_name(f"refused{dist.get_rank()}.txt").write_text(str(exc))
dist.destroy_process_group()
"""


def test_gates_stepped_by_an_optimizer_that_does_not_average_them_are_refused(tmp_path: Path) -> None:
    script = tmp_path / "unaveraged.py"
    script.write_text(_UNAVERAGED)
    done = subprocess.run([str(TORCHRUN), "--nproc_per_node=2", f"--master_port={_free_port()}", str(script),
                           str(tmp_path / "a.lut"), str(EXAMPLE.parent)], env=_env(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in (0, 1):
        refusal = (tmp_path / f"refused{rank}.txt").read_text()
        assert f"under torchrun (rank {rank} of 2) step the gates with gates.optimizer()" in refusal


def test_torchrun_graph_rl_trains_its_pruningnet_on_every_rank(model_file: str, fake_lut: str,
                                                              tmp_path: Path) -> None:
    """``--method graph-rl``: the PruningNet and the shared weights train in DDP, each rank on its
    share of the samples the search does not hold out; rank 0 alone searches, and every rank
    ends with its decision."""
    out = tmp_path / "run"
    argv = [a for a in _argv(model_file, fake_lut, out) if a not in ("--gate-epochs", "0.25")]
    done = subprocess.run([str(TORCHRUN), "--nproc_per_node=2", f"--master_port={_free_port()}", "-m", "latprune",
                           *argv, "--method", "graph-rl", "--search-epochs", "0.5", "--search-candidates", "4",
                           "--score-batches", "1", "--calib-batches", "1"], env=_env(), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "every rank trains on the same batches" not in done.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    world = metrics["distributed"]
    assert world["weights_sha256"][0] == world["weights_sha256"][1]
    assert world["max_difference_before_sync"]["pruningnet"] == 0.0  # DDP and the averaged PruningNet held
    search = metrics["method_details"]["search"]
    assert search["candidates_scored"] >= 1 and "held out" in search["scored_on"] and metrics["budget_met"]
    # half an epoch over each rank's half of digits' 1,500 training samples less the 32 held out: 12 steps of 32
    # samples (one process takes 23)
    assert search["pruningnet_steps"] == 12


def test_torchrun_halp_recovers_on_rank_0_alone(model_file: str, fake_lut: str, tmp_path: Path) -> None:
    """``--method halp`` decides on rank 0 alone, its recovery training between rounds included:
    rank 0 trains there without DDP (the other ranks wait for its decision), then every rank
    fine-tunes."""
    out = tmp_path / "run"
    argv = [a for a in _argv(model_file, fake_lut, out) if a not in ("--gate-epochs", "0.25")]
    done = subprocess.run([str(TORCHRUN), "--nproc_per_node=2", f"--master_port={_free_port()}", "-m", "latprune",
                           *argv, "--method", "halp", "--recover-epochs", "0.1"], env=_env(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "recover: " in done.stderr  # rank 0's progress bars
    metrics = json.loads((out / "metrics.json").read_text())
    world = metrics["distributed"]
    assert world["weights_sha256"][0] == world["weights_sha256"][1] and metrics["budget_met"]
    assert world["max_difference_before_sync"]["fine-tune"] == 0.0
