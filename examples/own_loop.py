"""Gator's gates trained in your own plain-PyTorch training loop.

A small residual CNN learns a synthetic 10-class task. latprune profiles it,
attaches its gates, and the loop below adds the latency term to the task loss;
``gates.finish`` then decides the widths from the trained gates, slims the
model, and measures its export against the budget.

    python examples/own_loop.py                          # ONNX Runtime on this CPU, 0.6x
    python examples/own_loop.py --budget 0.5x --epochs 6 --out runs/own-loop
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import latprune


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class SmallNet(nn.Module):
    """stem (1 -> 16) , two residual blocks at 16, a stride-2 widening to 32, one block, head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.stage1 = nn.Sequential(Block(16), Block(16))
        self.down = nn.Sequential(nn.Conv2d(16, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.stage2 = Block(32)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, 28, 28) -> (B, 10)
        return self.head(self.stage2(self.down(self.stage1(self.stem(x)))))


def synthetic_data(n: int, seed: int) -> TensorDataset:
    """Stripes at one of ten orientations (the label), at a random phase, in noise: a task a
    small CNN learns in a few passes."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=gen)
    angle = (y.float() * math.pi / 10).view(-1, 1, 1)
    phase = (torch.rand(n, generator=gen) * 2 * math.pi).view(-1, 1, 1)
    pixels = torch.arange(28.0)
    along = pixels.view(1, 28, 1) * torch.sin(angle) + pixels.view(1, 1, 28) * torch.cos(angle)  # (N, 28, 28)
    x = torch.sin(2 * math.pi * along / 6 + phase) + 0.5 * torch.randn(n, 28, 28, generator=gen)
    return TensorDataset(x.unsqueeze(1), y)


@torch.no_grad()
def accuracy(model: nn.Module, loader: DataLoader, device: torch.device) -> float:
    model.eval()
    correct = sum(int((model(x.to(device)).argmax(1).cpu() == y).sum()) for x, y in loader)
    return correct / len(loader.dataset)


def fit(model: nn.Module, loader: DataLoader, epochs: int, device: torch.device) -> None:
    """Plain training, without gates: before pruning, and to fine-tune the pruned model."""
    model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    for _ in range(epochs):
        for xb, yb in loader:
            opt.zero_grad()
            F.cross_entropy(model(xb.to(device)), yb.to(device)).backward()
            opt.step()
    model.cpu().eval()


def arguments(doc: str) -> argparse.ArgumentParser:
    """The options of this example and of ``own_loop_torchrun.py``."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", default="0.6x", help="a fraction of the measured base latency, or '2ms'")
    parser.add_argument("--epochs", type=int, default=3, help="passes over the training set with the gates attached")
    parser.add_argument("--pretrain", type=int, default=3, help="passes before (the model you start from)")
    parser.add_argument("--finetune", type=int, default=2, help="passes fine-tuning the pruned model")
    parser.add_argument("--samples", type=int, default=512, help="training images")
    parser.add_argument("--backend", default="ort-cpu", help="the latency backend to profile and measure on")
    parser.add_argument("--lut", default="own_loop.lut", help="the LUT file (created, or extended)")
    parser.add_argument("--out", default=None, help="save the pruned run directory here")
    return parser


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where your loop trains")
    args = parser.parse_args()
    torch.manual_seed(0)
    device = torch.device(args.device)
    train = DataLoader(synthetic_data(args.samples, seed=0), batch_size=32, shuffle=True)
    val = DataLoader(synthetic_data(256, seed=1), batch_size=64)
    model = SmallNet()
    fit(model, train, args.pretrain, device)
    print(f"base model: accuracy {accuracy(model, val, torch.device('cpu')):.3f}")

    x = torch.randn(1, 1, 28, 28)
    lut = latprune.profile(model, x, backend=args.backend, threads=1, path=args.lut, levels=2, passes=1,
                           calibration_samples=7, progress=False)  # quick and coarse; the defaults are finer
    gates = latprune.attach_gates(model, lut, args.budget, example_input=x, progress=False)  # hooks into `model`
    print(f"base {gates.base_ms:.4f} ms, budget {gates.budget_ms:.4f} ms")

    model.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    gate_opt = gates.optimizer(lr=0.2)  # a short run: faster than gator's 0.05
    for epoch in range(args.epochs):
        model.train()  # in training mode each forward pass draws the step's gate samples
        for xb, yb in train:
            xb, yb = xb.to(device), yb.to(device)
            task = F.cross_entropy(model(xb), yb)
            loss = task + gates.loss()  # the latency term, on the model's device
            opt.zero_grad()
            gate_opt.zero_grad()
            loss.backward()
            opt.step()
            gate_opt.step()
        # in eval mode the model runs on its hard gates: the network the decision starts from
        print(f"epoch {epoch + 1}: task loss {task.item():.3f}, expected latency {gates.expected_ms:.4f} ms, "
              f"gated accuracy {accuracy(model, val, device):.3f}")

    result = gates.finish(train, finetune=lambda m: fit(m, train, args.finetune, device),
                          evaluate=lambda m: accuracy(m, val, torch.device("cpu")))
    m = result.metrics
    print(f"pruned: measured {m['measured_ms']:.4f} ms against a budget of {m['budget_ms']:.4f} ms "
          f"({'met' if m['budget_met'] else 'missed'}), {m['speedup']:.2f}x faster than the base, "
          f"accuracy {m['accuracy']:.3f}, {m['pruned']['params']} of {m['base']['params']} parameters")
    if args.out:
        print(f"saved to {result.save(args.out, overwrite=True)}")


if __name__ == "__main__":
    main()
