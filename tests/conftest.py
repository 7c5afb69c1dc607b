"""Tiny models and fixtures shared by the unit tests (CPU, seconds each)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from latprune.models import ResNetCifar

TINY_INPUT = (1, 1, 28, 28)


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


MODELS = {"resnet": tiny_resnet, "mobilenet": tiny_mobilenet}


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
        from latprune.models import ResNetCifar

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
