"""Reproduce the embedded default's weights: ResNet-20 (32/64/128) on Fashion-MNIST.

    python scripts/train_default.py --epochs 3

Writes src/latprune/assets/resnet20_fmnist.pt (a state_dict) and
src/latprune/assets/resnet20_fmnist.json (test accuracy, training settings,
time taken). Needs the Debian package dataset-fashion-mnist.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch

from latprune._io import atomic_write_json, atomic_write_with
from latprune.data import fashion_mnist
from latprune.models import EMBEDDED_WEIGHTS, ResNetCifar
from latprune.train import EMBEDDED_RECIPE, evaluate, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=float, default=EMBEDDED_RECIPE.epochs)
    parser.add_argument("--lr", type=float, default=EMBEDDED_RECIPE.lr)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = fashion_mnist()
    model = ResNetCifar()
    config = replace(EMBEDDED_RECIPE, epochs=args.epochs, lr=args.lr)
    start = time.time()
    train(model, data.train, config, desc="train resnet20-fmnist")
    acc = evaluate(model, data.test)
    elapsed = time.time() - start
    atomic_write_with(EMBEDDED_WEIGHTS, lambda tmp: torch.save(model.state_dict(), tmp))
    atomic_write_json(EMBEDDED_WEIGHTS.with_suffix(".json"), {
        "model": "latprune:resnet20-fmnist", "widths": [32, 64, 128], "blocks_per_stage": 3,
        "input": [1, 1, 28, 28], "test_accuracy": round(acc, 4), "epochs": args.epochs,
        "lr": args.lr, "batch_size": config.batch_size, "train_seconds": round(elapsed, 1),
        "torch": torch.__version__, "threads": args.threads,
    })
    print(f"test accuracy {acc:.4f} after {elapsed:.0f} s")


if __name__ == "__main__":
    main()
