"""Gator's gates in the caller's own loop (latprune.attach_gates), on a tiny ResNet and the fake
backend: the latency term trains the gates, finish() decides, slims and measures, the model
comes back without hooks; misuse is refused in one line; the example script runs."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import latprune
from latprune.errors import BudgetError, LutError, SpecError
from tests.conftest import TINY_INPUT, tiny_loader, tiny_mobilenet, tiny_resnet

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def lut(tiny_lut: latprune.LUT) -> latprune.LUT:
    return tiny_lut


def _loader(n: int = 64) -> DataLoader:
    return tiny_loader(n)


def _train(model: torch.nn.Module, gates: latprune.AttachedGates, steps: int, lr: float = 0.2) -> None:
    """The caller's loop: task loss plus the latency term, the model's and the gates' optimizers."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    gate_opt = gates.optimizer(lr=lr)
    model.train()
    done = 0
    while done < steps:
        for x, y in _loader():
            loss = F.cross_entropy(model(x), y) + gates.loss()
            opt.zero_grad()
            gate_opt.zero_grad()
            loss.backward()
            opt.step()
            gate_opt.step()
            done += 1
            if done == steps:
                break
    model.eval()


def _hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_the_latency_term_trains_the_gates_towards_the_budget(lut: latprune.LUT) -> None:
    model = tiny_resnet()
    gates = latprune.attach_gates(model, lut, "0.5x", example_input=TINY_INPUT, progress=False)
    start = gates.expected_ms
    assert gates.budget_ms == pytest.approx(0.5 * gates.base_ms) and gates.target_ms < gates.budget_ms < start
    model.train()
    model(torch.randn(4, *TINY_INPUT[1:]))
    term = gates.loss()
    assert term.dim() == 0 and term.requires_grad and float(term.detach()) > 0  # above the budget: the hinge is on
    term.backward()
    assert all(p.grad is not None for p in gates.parameters())
    _train(model, gates, steps=30)
    assert gates.steps == 31 and gates.expected_ms < 0.8 * start
    gates.detach()
    assert _hooks(model) == 0


def test_eval_mode_runs_on_the_hard_gates(lut: latprune.LUT) -> None:
    model = tiny_resnet()
    reference = copy.deepcopy(model)
    x = torch.randn(4, *TINY_INPUT[1:])
    gates = latprune.attach_gates(model, lut, "0.5x", example_input=TINY_INPUT, progress=False)
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x), atol=1e-6)  # every gate starts open
        for p in gates.parameters():
            p.fill_(-1.0)  # every gate closed: the hard-gated model drops every channel
        assert not torch.allclose(model(x), reference(x), atol=1e-3)
    gates.detach()
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x), atol=1e-6)


def test_finish_decides_slims_measures_and_detaches(lut: latprune.LUT) -> None:
    model = tiny_resnet()
    gates = latprune.attach_gates(model, lut, "0.6x", example_input=TINY_INPUT,
                                  config=latprune.GatorConfig(importance_batches=2), progress=False)
    _train(model, gates, steps=20)
    evaluated: list[int] = []
    result = gates.finish(_loader(), evaluate=lambda m: evaluated.append(1) or 0.25)
    assert isinstance(result, latprune.PruneResult) and _hooks(model) == 0 and not gates.attached
    m = result.metrics
    assert m["budget_ms"] == pytest.approx(gates.budget_ms) and m["measured_ms"] > 0
    assert m["budget_met"] == (m["measured_ms"] <= m["budget_ms"]) and m["accuracy"] == 0.25 and len(evaluated) == 2
    assert m["method"] == "gator" and m["config"]["gate_training"] == "the caller's loop"
    assert m["method_details"]["gates"]["steps"] == 20 and m["closed_loop"] and result.onnx is not None
    assert m["pruned"]["params"] < m["base"]["params"] and result.plan.method == "gator"
    x = torch.randn(3, *TINY_INPUT[1:])
    with torch.no_grad():
        assert result.model(x).shape == (3, 10)
        trained = tiny_resnet()
        trained.load_state_dict(model.state_dict())  # the caller's model: its trained weights, no gates
        assert torch.equal(model(x), trained(x))
    replayed = result.plan.apply_(tiny_resnet())
    assert [p.shape for p in replayed.parameters()] == [p.shape for p in result.model.parameters()]
    with pytest.raises(SpecError, match="these gates are finished"):
        gates.finish(_loader())
    with pytest.raises(SpecError, match="these gates are finished"):
        gates.loss()


def test_a_failed_finish_leaves_the_gates_attached(lut: latprune.LUT) -> None:
    model = tiny_resnet()
    gates = latprune.attach_gates(model, lut, "0.05x", example_input=TINY_INPUT,
                                  config=latprune.GatorConfig(importance_batches=1, max_iters=1), progress=False)
    hooks = _hooks(model)
    with pytest.raises(BudgetError):
        gates.finish(_loader())
    assert gates.attached and _hooks(model) == hooks
    gates.detach()
    gates.detach()  # idempotent
    assert _hooks(model) == 0
    with pytest.raises(SpecError, match="detached from the model"):
        gates.loss()


def test_misuse_is_refused_in_one_line(lut: latprune.LUT) -> None:
    model = tiny_resnet()
    gates = latprune.attach_gates(model, lut, "0.7x", example_input=TINY_INPUT, progress=False)
    with pytest.raises(SpecError, match=r"follows a forward pass of the model in training mode"):
        gates.loss()
    model.eval()
    model(torch.randn(1, *TINY_INPUT[1:]))
    with pytest.raises(SpecError, match=r"in training mode \(model.train\(\)\)"):
        gates.loss()  # an eval-mode pass draws no samples
    model.train()
    model(torch.randn(2, *TINY_INPUT[1:]))
    gates.loss()
    with pytest.raises(SpecError, match="once per step"):
        gates.loss()
    with pytest.raises(SpecError, match="already carries gates"):
        latprune.attach_gates(model, lut, "0.7x", example_input=TINY_INPUT, progress=False)
    with pytest.raises(SpecError, match="finish needs train_loader="):
        gates.finish(None)  # type: ignore[arg-type]
    with pytest.raises(SpecError, match="retries must be 0 or more"):
        gates.finish(_loader(), retries=-1)
    assert gates.attached  # refused before anything changed
    gates.detach()
    other = tiny_resnet()
    for call, error, match in [
        (dict(config=latprune.HalpConfig()), SpecError, "config must be a latprune.GatorConfig"),
        (dict(config=latprune.GatorConfig(gate_init="plan")), SpecError, "attach_gates starts every gate open"),
        (dict(budget="fast"), SpecError, "budget 'fast' is not understood"),
        (dict(model="resnet"), SpecError, "model must be a torch.nn.Module"),
        (dict(model=tiny_mobilenet()), LutError, "profile this model into it first"),
    ]:
        args = {"model": other, "budget": "0.7x", **call}
        with pytest.raises(error, match=match):
            latprune.attach_gates(args.pop("model"), lut, args.pop("budget"), example_input=TINY_INPUT,
                                  progress=False, **args)
        assert _hooks(other) == 0


def test_the_example_trains_in_its_own_loop_and_meets_the_budget(tmp_path: Path) -> None:
    run = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "own_loop.py"), "--backend", "fake", "--lut", str(tmp_path / "a.lut"),
         "--samples", "96", "--pretrain", "1", "--epochs", "2", "--finetune", "1", "--out", str(run)],
        cwd=tmp_path, env=os.environ.copy(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert [ln.split(":")[0] for ln in lines if ln.startswith("epoch")] == ["epoch 1", "epoch 2"]
    pruned = next(ln for ln in lines if ln.startswith("pruned: measured"))
    metrics = json.loads((run / "metrics.json").read_text())
    assert ("(met)" in pruned) == metrics["budget_met"] and metrics["measured_ms"] <= metrics["budget_ms"]
    assert metrics["config"]["finetune"] == "the caller's" and 0.0 <= metrics["accuracy"] <= 1.0
    assert sorted(p.name for p in run.iterdir()) == ["metrics.json", "model.onnx", "model.pt", "plan.json"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", [None, torch.bfloat16])
def test_a_model_on_cuda_trains_its_gates_there(lut: latprune.LUT, precision: torch.dtype | None) -> None:
    """The gates and the LUT stay on the CPU: the gates meet the activations on the GPU (at the
    autocast dtype), the latency term lands on the model's device, and finish decides on a CPU copy."""
    model = tiny_resnet().cuda()
    gates = latprune.attach_gates(model, lut, "0.6x", example_input=TINY_INPUT,
                                  config=latprune.GatorConfig(importance_batches=2), progress=False)
    opt, gate_opt = torch.optim.SGD(model.parameters(), lr=0.01), gates.optimizer(lr=0.2)
    model.train()
    start = gates.expected_ms
    for x, y in _loader():
        with torch.autocast("cuda", dtype=precision or torch.float32, enabled=precision is not None):
            task = F.cross_entropy(model(x.cuda()).float(), y.cuda())
        term = gates.loss()
        assert term.device.type == "cuda"
        opt.zero_grad()
        gate_opt.zero_grad()
        (task + term).backward()
        opt.step()
        gate_opt.step()
    assert gates.expected_ms < start and all(p.device.type == "cpu" for p in gates.parameters())
    result = gates.finish(_loader())
    assert all(p.device.type == "cuda" for p in model.parameters()) and _hooks(model) == 0
    assert all(p.device.type == "cpu" for p in result.model.parameters()) and result.metrics["measured_ms"] > 0
