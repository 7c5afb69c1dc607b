"""Tiny models and fixtures shared by the unit tests (CPU, seconds each)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator

import pytest
import torch
from torch import nn

from latprune.models import ResNetCifar, ViT

TINY_INPUT = (1, 1, 28, 28)

if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test`: one worker per core, each on one thread
    os.environ["OMP_NUM_THREADS"] = "1"    # the processes a test starts too
    torch.set_num_threads(1)


def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/NAME.py`` as a module, registered in ``sys.modules`` (its dataclasses look it up there)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def dense_block_predictor(path: Path, levels: int) -> Iterator[Any]:
    """A :class:`~latprune.latency_lut.predict.Predictor` over a one-block DenseNet (four layers,
    growth 16) profiled on the fake backend into ``path``: each layer's growth channels are
    joined into every later layer's input."""
    from torchvision.models import DenseNet

    from latprune.graph.channels import ChannelGraph
    from latprune.latency_lut.backends import get_backend
    from latprune.latency_lut.predict import Predictor
    from latprune.latency_lut.profile import build_lut
    from latprune.latency_lut.store import Lut

    model = DenseNet(growth_rate=16, block_config=(4,), num_init_features=32, bn_size=2, num_classes=10)
    graph = ChannelGraph.build(model.eval(), (1, 3, 32, 32))
    build_lut(graph, path, get_backend("fake", threads=1), levels=levels, progress=False, calibration_samples=2)
    with Lut.open(path) as lut:
        yield Predictor(lut, graph)


def tiny_resnet() -> nn.Module:
    """ResNet with two stages of one block each: a residual highway per stage."""
    torch.manual_seed(0)
    return ResNetCifar(widths=(8, 16, 16), blocks_per_stage=2, in_channels=1, num_classes=10).eval()


class InvertedResidual(nn.Module):
    def __init__(self, c: int, expand: int) -> None:
        super().__init__()
        h = c * expand
        self.pw = nn.Sequential(nn.Conv2d(c, h, 1, bias=False), nn.BatchNorm2d(h), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(h, h, 3, 1, 1, groups=h, bias=False), nn.BatchNorm2d(h), nn.ReLU6())
        self.pwl = nn.Sequential(nn.Conv2d(h, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pwl(self.dw(self.pw(x)))


def tiny_mobilenet() -> nn.Module:
    """Depthwise-separable blocks with residual adds, and a hidden linear layer."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6(),
        InvertedResidual(8, 3), InvertedResidual(8, 2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, 10),
    ).eval()


def tiny_vit() -> nn.Module:
    """A vision transformer: heads, MLP widths, the embedding across layers, removable layers.
    Its class token and LayerNorms are randomised so that no equality holds by accident."""
    torch.manual_seed(0)
    model = ViT(image_size=28, patch=7, dim=16, depth=2, heads=2, mlp_dim=24)
    with torch.no_grad():
        model.class_token.normal_()
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    return model.eval()


MODELS = {"resnet": tiny_resnet, "mobilenet": tiny_mobilenet, "vit": tiny_vit}


def cli_fails(capsys: pytest.CaptureFixture[str], argv: list[str], match: str) -> str:
    """Run the CLI on ``argv``; it must exit 2 with exactly one ``latprune: error:`` line
    containing ``match`` and no traceback. Returns that line."""
    from latprune.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("latprune: error:")]
    assert len(lines) == 1, err
    assert match in lines[0], lines[0]
    return lines[0]


def randomise_bn_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics, so that equalities are not satisfied by accident."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    return model


@pytest.fixture(params=sorted(MODELS))
def tiny_model(request: pytest.FixtureRequest) -> nn.Module:
    return randomise_bn_(MODELS[request.param]())


@pytest.fixture(scope="session")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A model spec 'file.py:factory' for the tiny ResNet (what users pass for their own models)."""
    path = tmp_path_factory.mktemp("models") / "tiny_model.py"
    path.write_text(textwrap.dedent("""
        import torch
        from latprune.models import ResNetCifar, ViT

        def make():
            torch.manual_seed(0)
            return ResNetCifar(widths=(8, 16, 16), blocks_per_stage=2, in_channels=1, num_classes=10)
    """))
    return f"{path}:make"


@pytest.fixture(scope="session")
def fake_lut(model_file: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A LUT of the tiny ResNet measured by the fake backend (1 thread), via the CLI."""
    from latprune.cli import main

    path = tmp_path_factory.mktemp("luts") / "fake.lut"
    assert main(["profile", model_file, "--input", "1x1x28x28", "--backend", "fake", "--threads", "1",
                 "--levels", "4", "-o", str(path), "--json"]) == 0
    return str(path)


TINY_RUN_BUDGET_MS = 50.0     # generous: the tiny model runs in well under a millisecond
TINY_RUN_PREDICTED_MS = 0.321


@pytest.fixture(scope="session")
def tiny_run(model_file: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory of the tiny ResNet with every group cut to half its channels,
    written as `latprune prune` writes one (plan.json, model.pt, metrics.json)
    without running the pruner."""
    import json

    from latprune.graph.channels import ChannelGraph
    from latprune.pruner.plan import GroupPlan, PruningPlan
    from latprune.specs import load_model

    run = tmp_path_factory.mktemp("tinyrun") / "run"
    run.mkdir()
    base = load_model(model_file, "x".join(map(str, TINY_INPUT)))
    graph = ChannelGraph.build(base.model, base.input_shape)
    groups = tuple(GroupPlan(g.root, g.size, tuple(range(0, g.size, 2))) for g in graph.groups)
    plan = PruningPlan(model=model_file, input_shape=TINY_INPUT, groups=groups, budget_ms=TINY_RUN_BUDGET_MS,
                       predicted_ms=TINY_RUN_PREDICTED_MS, signature=graph.signature())
    plan.save(run / "plan.json")
    slim = randomise_bn_(plan.apply_(load_model(model_file, "1x1x28x28").model))
    torch.save(slim.state_dict(), run / "model.pt")
    fingerprint = {"backend": "fake", "threads": 1}
    (run / "metrics.json").write_text(json.dumps({
        "lut": str(run.parent / "fake.lut"), "fingerprint": fingerprint,
        "budget": {"spec": "0.5x", "ms": TINY_RUN_BUDGET_MS},
        "pruned": {"predicted_ms": TINY_RUN_PREDICTED_MS,
                   "latency_ms": {"median_ms": 0.3, "p10_ms": 0.29, "p90_ms": 0.31, "repeats": 100}},
    }))
    return run


@pytest.fixture(scope="module")
def tiny_lut(tmp_path_factory: pytest.TempPathFactory) -> object:
    """A LUT of the tiny ResNet from the fake backend, profiled through the API (one per test module)."""
    import latprune

    path = tmp_path_factory.mktemp("lut") / "fake.lut"
    return latprune.profile(tiny_resnet(), torch.randn(*TINY_INPUT), backend="fake", threads=1, path=path, levels=4,
                            progress=False)


def tiny_loader(n: int = 64) -> object:
    """``n`` random images of the tiny models' input with random labels, in batches of 16."""
    from torch.utils.data import DataLoader, TensorDataset

    gen = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(n, *TINY_INPUT[1:], generator=gen),
                                    torch.randint(0, 10, (n,), generator=gen)), batch_size=16)
