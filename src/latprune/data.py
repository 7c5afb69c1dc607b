"""Data specs: what the pruner fine-tunes and evaluates on.

- ``fashion-mnist`` (the default for the embedded model): read from the Debian
  package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``);
  where it is absent, scikit-learn's digits (upsampled to 28x28) stand in and
  a warning says so;
- ``digits``: scikit-learn's 8x8 digits, upsampled to 28x28;
- ``imagefolder:PATH``: ``PATH/train`` and ``PATH/val`` in torchvision's
  ImageFolder layout, at the model's input size: the standard training
  augmentation (random resized crop, horizontal flip) and evaluation
  transform (resize to size / 0.875, centre crop), ImageNet normalisation;
- ``python:module:fn``: ``fn()`` returns ``(train_dataset, test_dataset)``.

Nothing is downloaded.
"""

from __future__ import annotations

import gzip
import importlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset, TensorDataset

from latprune import parallel
from latprune.errors import SpecError

FASHION_MNIST_DIR = Path(os.environ.get("LATPRUNE_FMNIST_DIR", "/usr/share/datasets/fashion-mnist"))
FMNIST_MEAN, FMNIST_STD = 0.2860, 0.3530


@dataclass
class DataSpec:
    """Train and test sets with a one-line description of where they came from."""

    name: str
    train: Dataset
    test: Dataset
    num_classes: int
    note: str = ""


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _to_tensor_dataset(images: np.ndarray, labels: np.ndarray, mean: float, std: float) -> TensorDataset:
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)  # (N, 1, H, W)
    return TensorDataset((x - mean) / std, torch.from_numpy(labels.astype(np.int64)))


def fashion_mnist_available(root: Path = FASHION_MNIST_DIR) -> bool:
    return (root / "train-images-idx3-ubyte.gz").exists()


def fashion_mnist(root: Path = FASHION_MNIST_DIR) -> DataSpec:
    """Fashion-MNIST (60k train / 10k test, 1x28x28, normalised)."""
    parts = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = _read_idx(root / f"{prefix}-images-idx3-ubyte.gz")
        labels = _read_idx(root / f"{prefix}-labels-idx1-ubyte.gz")
        parts[split] = _to_tensor_dataset(images, labels, FMNIST_MEAN, FMNIST_STD)
    return DataSpec("fashion-mnist", parts["train"], parts["test"], 10, f"Fashion-MNIST from {root}")


def digits() -> DataSpec:
    """scikit-learn's digits (1797 images), upsampled from 8x8 to 28x28; 1500 train / 297 test."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    x = torch.nn.functional.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False)
    x = (x - x.mean()) / x.std()
    y = torch.from_numpy(bunch.target.astype(np.int64))
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(len(y), generator=gen)
    train, test = order[:1500], order[1500:]
    return DataSpec("digits", TensorDataset(x[train], y[train]), TensorDataset(x[test], y[test]), 10,
                    "scikit-learn digits upsampled to 28x28")


def load_data(spec: str | None, input_size: tuple[int, int] | None = None) -> DataSpec:
    """Resolve a data spec string (see the module docstring); ``input_size`` (H, W) sizes the
    images of ``imagefolder:`` data (default 224×224)."""
    if spec in (None, "fashion-mnist", "default"):
        if fashion_mnist_available():
            return fashion_mnist()
        warnings.warn(
            f"Fashion-MNIST not found in {FASHION_MNIST_DIR} (Debian package dataset-fashion-mnist); "
            "using scikit-learn digits instead",
            stacklevel=2,
        )
        return digits()
    if spec == "digits":
        return digits()
    if spec.startswith("imagefolder:"):
        return _imagefolder(Path(spec.split(":", 1)[1]), input_size or (224, 224))
    if spec.startswith("python:"):
        return _python_data(spec)
    raise SpecError(
        f"unknown data spec {spec!r}; use 'fashion-mnist', 'digits', 'imagefolder:PATH' or 'python:module:fn'"
    )


IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def _imagefolder(root: Path, size: tuple[int, int]) -> DataSpec:
    """Training images augmented (random resized crop to ``size``, horizontal flip), evaluation
    images resized to ``size / 0.875`` and centre-cropped: the usual ImageNet recipe at any size."""
    try:
        from torchvision import datasets, transforms
    except ImportError:
        from latprune.errors import MissingDependency

        raise MissingDependency("torchvision", "vision", "imagefolder data") from None
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise SpecError(f"imagefolder data needs {root / split}/CLASS/*.jpg; it is missing")
    normalise = [transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    train_tf = transforms.Compose([transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(),
                                   *normalise])
    eval_tf = transforms.Compose([transforms.Resize(tuple(round(s / 0.875) for s in size)),
                                  transforms.CenterCrop(size), *normalise])
    try:
        train = datasets.ImageFolder(str(root / "train"), train_tf)
        test = datasets.ImageFolder(str(root / "val"), eval_tf)
    except (FileNotFoundError, OSError) as exc:  # no class folders, or no image in them
        raise SpecError(f"imagefolder data at {root}: {exc}; it needs {root}/train/CLASS/*.jpg and "
                        f"{root}/val/CLASS/*.jpg") from None
    if train.classes != test.classes:
        raise SpecError(f"imagefolder data at {root}: train has classes {train.classes[:5]}…, val "
                        f"{test.classes[:5]}…; both need the same class folders")
    return DataSpec(f"imagefolder:{root}", train, test, len(train.classes), f"ImageFolder at {root}")


def _python_data(spec: str) -> DataSpec:
    parts = spec.split(":")
    if len(parts) != 3:
        raise SpecError(f"data spec {spec!r} must be python:module:function")
    _, module_name, fn_name = parts
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SpecError(f"cannot import {module_name!r} for data spec {spec!r}: {exc}") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise SpecError(f"module {module_name!r} has no function {fn_name!r}")
    result = fn()
    if not (isinstance(result, tuple) and len(result) == 2):
        raise SpecError(f"{spec!r} must return (train_dataset, test_dataset)")
    train, test = result
    labels = {int(train[i][1]) for i in range(min(len(train), 2000))}
    return DataSpec(spec, train, test, max(labels) + 1, f"{module_name}.{fn_name}()")


def subset(dataset: Dataset, limit: int | None, seed: int = 0) -> Dataset:
    """A fixed random subset of at most ``limit`` items (all when ``limit`` is None)."""
    n = len(dataset)  # type: ignore[arg-type]
    if limit is None or limit >= n:
        return dataset
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:limit]
    return Subset(dataset, idx.tolist())


def loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int = 0, workers: int = 0) -> DataLoader:
    """Batches of ``dataset``, shuffled by a generator seeded with ``seed``; ``workers`` processes
    decode them (pinned memory where CUDA is available, for the copies to a GPU). Under torchrun a
    shuffled (training) loader gives each rank its own share (a ``DistributedSampler``)."""
    if workers < 0:
        raise SpecError(f"workers must be 0 or more, not {workers}")
    gen = torch.Generator().manual_seed(seed)
    world = parallel.world()
    sampler = (DistributedSampler(dataset, world.size, world.rank, shuffle=True, seed=seed)
               if shuffle and world.distributed else None)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                      generator=gen, num_workers=workers, pin_memory=workers > 0 and torch.cuda.is_available(),
                      persistent_workers=workers > 0)
