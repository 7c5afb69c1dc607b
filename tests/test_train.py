"""The training loop: a run killed mid-way resumes from its checkpoint to the same weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from latprune.train import TrainConfig, channels_last_is_safe, train


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


def _data() -> TensorDataset:
    gen = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(96, 1, 12, 12, generator=gen), torch.randint(0, 10, (96,), generator=gen))


class _DiesAfter(Dataset):
    """A dataset that raises after ``n`` items, as a killed process would stop."""

    def __init__(self, inner: TensorDataset, n: int) -> None:
        self.inner, self.left = inner, n

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.left -= 1
        if self.left < 0:
            raise KeyboardInterrupt
        return self.inner[i]


CONFIG = TrainConfig(epochs=3, batch_size=16, lr=0.05, seed=3)


def test_killed_training_resumes_to_the_same_weights(tmp_path: Path) -> None:
    whole = _model()
    whole_losses = train(whole, _data(), CONFIG)

    ckpt = tmp_path / "train.ckpt"
    killed = _model()
    with pytest.raises(KeyboardInterrupt):
        train(killed, _DiesAfter(_data(), 96 + 96 + 40), CONFIG, checkpoint=ckpt)  # dies in the third pass
    assert ckpt.is_file()
    assert torch.load(ckpt, weights_only=False)["step"] == 12  # two passes of 6 batches saved

    resumed = _model()
    resumed_losses = train(resumed, _data(), CONFIG, checkpoint=ckpt)
    assert resumed_losses == pytest.approx(whole_losses, rel=1e-5)
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name


def test_checkpoint_of_another_run_is_refused(tmp_path: Path) -> None:
    ckpt = tmp_path / "train.ckpt"
    with pytest.raises(KeyboardInterrupt):
        train(_model(), _DiesAfter(_data(), 100), CONFIG, checkpoint=ckpt)
    with pytest.raises(ValueError, match="another training run.*delete it"):
        train(_model(), _data(), TrainConfig(epochs=3, batch_size=16, lr=0.1, seed=3), checkpoint=ckpt)


def test_model_comes_back_contiguous_and_in_eval_mode() -> None:
    model = _model()
    train(model, _data(), TrainConfig(epochs=0.5, batch_size=16))
    assert not model.training
    assert all(p.is_contiguous() for p in model.parameters())


def test_narrow_convolutions_train_in_the_contiguous_format() -> None:
    """A 1×1 stride-2 convolution with 4 input channels crashes torch's channels-last
    backward on the AVX2 VM (heap corruption): such a model trains contiguous."""
    narrow = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 4, 3, padding=1),
                           nn.Conv2d(4, 8, 1, stride=2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    assert not channels_last_is_safe(narrow) and channels_last_is_safe(_model())
    rgb = nn.Sequential(nn.Conv2d(3, 8, 1, stride=2), nn.Conv2d(8, 8, 3))  # 3 → 8, 1×1, stride 2 crashed too
    assert not channels_last_is_safe(rgb)
    losses = train(narrow, _data(), TrainConfig(epochs=2, batch_size=16))
    assert len(losses) == 12 and all(torch.isfinite(torch.tensor(losses)))


def test_killed_gate_training_resumes_mid_pass_to_the_same_gates(tmp_path: Path) -> None:
    """Gate training (the latency penalty with the Taylor signal) killed in the middle of a
    pass, with a checkpoint after every step, resumes to the weights, gates and λ of an
    uninterrupted run."""
    from latprune.graph.channels import ChannelGraph, Grid
    from latprune.latency_lut.backends import get_backend
    from latprune.latency_lut.predict import Predictor, SoftLatency
    from latprune.latency_lut.profile import build_lut
    from latprune.latency_lut.store import Lut
    from latprune.pruner.gates import GateConfig, Gates, latency_penalty
    from latprune.train import Checkpoint

    config = TrainConfig(epochs=1, batch_size=16, lr=0.05, seed=3)
    shape = (1, 1, 12, 12)
    build_lut(ChannelGraph.build(_model(), shape), tmp_path / "t.lut", get_backend("fake", threads=1), levels=4,
              progress=False)

    def run(data: Dataset, checkpoint: Checkpoint | None) -> tuple[nn.Module, object, list[float]]:
        graph = ChannelGraph.build(_model(), shape)
        gates = Gates(graph).attach()
        soft = SoftLatency(Predictor(Lut.open(tmp_path / "t.lut"), graph), graph.options(Grid(4), blocks=True))
        budget = 0.5 * float(soft(gates.expected_widths(), gates.block_keep()).detach())
        penalty = latency_penalty(gates, soft, budget, GateConfig(lam=2.0))
        losses = train(graph.model, data, config, penalty=penalty, checkpoint=checkpoint)
        return graph.model, penalty, losses

    whole, whole_penalty, whole_losses = run(_data(), None)
    ckpt = Checkpoint(tmp_path / "gates.ckpt", every_s=0)
    with pytest.raises(KeyboardInterrupt):
        run(_DiesAfter(_data(), 16 * 4 + 5), ckpt)  # dies in the fifth of six batches
    assert torch.load(ckpt.path, weights_only=True)["step"] == 4
    resumed, resumed_penalty, resumed_losses = run(_data(), ckpt)
    assert resumed_losses == pytest.approx(whole_losses, rel=1e-5)
    assert resumed_penalty.lam == pytest.approx(whole_penalty.lam)
    for a, b in zip(whole_penalty.gates.parameters(), resumed_penalty.gates.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name
