"""A prune killed at any point resumes from its checkpoints to the model an uninterrupted prune has."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from latprune.cli import main
from tests.conftest import cli_fails

FAKE = ["--backend", "fake", "--threads", "1"]

# Training data whose every image takes a few milliseconds to load, so that a fine-tuning
# of a tiny model lasts long enough to be killed in the middle.
SLOW_DATA = """
    import time
    import torch
    from torch.utils.data import Dataset

    class Slow(Dataset):
        def __init__(self, n, seed):
            gen = torch.Generator().manual_seed(seed)
            self.x = torch.randn(n, 1, 28, 28, generator=gen)
            self.y = torch.randint(0, 10, (n,), generator=gen)

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            time.sleep(0.002)
            return self.x[i], self.y[i]

    def data():
        return Slow(256, 0), Slow(64, 1)
"""


def _argv(model_file: str, lut: str, out: Path) -> list[str]:
    return ["prune", model_file, "--input", "1x1x28x28", "--lut", lut, "--budget", "0.75x", "-o", str(out),
            "--data", "python:slow_data:data", "--epochs", "1", "--batch-size", "16", "--gate-epochs", "0.25",
            "--importance-batches", "2", "--checkpoint-every", "0", *FAKE, "--json"]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "model.pt", weights_only=True)


def test_a_prune_killed_during_fine_tuning_resumes_to_the_same_model(model_file: str, fake_lut: str,
                                                                     tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "slow_data.py").write_text(textwrap.dedent(SLOW_DATA))
    monkeypatch.syspath_prepend(str(tmp_path))
    whole = tmp_path / "whole"
    assert main(_argv(model_file, fake_lut, whole)) == 0

    run = tmp_path / "run"
    checkpoint = tmp_path / ".run.checkpoints" / "attempt1-finetune.pt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([sys.executable, "-m", "latprune", *_argv(model_file, fake_lut, run)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not checkpoint.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # a few steps more: killed between two saves, or in the middle of one
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL and not run.exists()
    state = torch.load(checkpoint, weights_only=True)
    assert 0 < state["step"] < state["steps"]  # killed in the middle of fine-tuning
    stages = {p.name for p in checkpoint.parent.iterdir()}
    assert {"arguments.json", "base.json", "attempt1-gates.pt", "attempt1-decision.pt"} <= stages

    assert main(_argv(model_file, fake_lut, run)) == 0
    assert not checkpoint.parent.exists()  # the run directory is written: its checkpoints are gone
    plans = [json.loads((r / "plan.json").read_text())["groups"] for r in (run, whole)]
    assert plans[0] == plans[1]
    ours, theirs = _weights(run), _weights(whole)
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name
    metrics = [json.loads((r / "metrics.json").read_text()) for r in (run, whole)]
    assert metrics[0]["accuracy"] == metrics[1]["accuracy"]
    assert metrics[0]["checkpoints"]["resumed"] == ["base", "base-score", "attempt1-decision"]


def test_a_prune_with_other_arguments_does_not_resume(capsys: pytest.CaptureFixture[str], model_file: str,
                                                      fake_lut: str, tmp_path: Path) -> None:
    """Checkpoints of another prune are refused by name, and left for the user to resume or delete;
    a prune refused for bad input leaves none behind."""
    from latprune.pruner.resume import Journal

    out = tmp_path / "run"
    Journal.open(tmp_path / ".run.checkpoints", {"budget": "0.5x"})
    argv = ["prune", model_file, "--input", "1x1x28x28", "--lut", fake_lut, "--budget", "0.75x", "-o", str(out),
            "--method", "halp", "--importance", "l1", "--epochs", "0", *FAKE]
    line = cli_fails(capsys, argv, "holds the checkpoints of another prune (it differs in: ")
    assert "budget" in line and "delete the directory" in line
    assert (tmp_path / ".run.checkpoints" / "arguments.json").is_file() and not out.exists()

    (tmp_path / ".run.checkpoints" / "arguments.json").unlink()
    (tmp_path / ".run.checkpoints").rmdir()
    cli_fails(capsys, [*argv[:7], "0.0001ms", *argv[8:]], "smallest reachable latency")
    assert not list(tmp_path.iterdir())
    cli_fails(capsys, [*argv, "--checkpoint-every", "-1"], "--checkpoint-every must be 0 or more")


def test_resuming_a_finished_stage_skips_it(model_file: str, fake_lut: str, tmp_path: Path) -> None:
    """The API's checkpoints: a prune run again on a directory whose every stage is done measures
    nothing anew and returns the same model."""
    import latprune
    from latprune.specs import load_model

    spec = load_model(model_file, "1x1x28x28")
    kwargs = dict(example_input=spec.input_shape, method=latprune.HalpConfig(importance="l1"),
                  checkpoints=tmp_path / "ckpt", progress=False)
    first = latprune.prune(spec.model, latprune.LUT.open(fake_lut, "fake", 1), "0.75x", **kwargs)
    second = latprune.prune(spec.model, latprune.LUT.open(fake_lut, "fake", 1), "0.75x", **kwargs)
    assert first.plan.groups == second.plan.groups and first.onnx == second.onnx
    assert first.metrics["checkpoints"]["resumed"] == []
    assert second.metrics["checkpoints"]["resumed"] == [  # nothing decided or measured again
        "base", "base-score", "attempt1-decision", "attempt1-finetuned", "attempt1-export"]
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values()):
        assert torch.equal(a, b)
