"""Data specs: ImageFolder data at the model's input size, loaders with workers, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from latprune.data import load_data, loader
from latprune.errors import SpecError


def _image_folder(root: Path, sizes: tuple[tuple[int, int], ...] = ((40, 60), (64, 48))) -> Path:
    """``root``/{train,val}/{cat,dog}/*.png, RGB images of several sizes."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for label in ("cat", "dog"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i, (h, w) in enumerate(sizes):
                Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def test_imagefolder_data_comes_at_the_model_input_size(tmp_path: Path) -> None:
    pytest.importorskip("torchvision")
    data = load_data(f"imagefolder:{_image_folder(tmp_path / 'images')}", input_size=(32, 24))
    assert data.num_classes == 2 and len(data.train) == len(data.test) == 4
    torch.manual_seed(0)
    train = [data.train[i][0] for i in range(len(data.train))]
    test = [data.test[i][0] for i in range(len(data.test))]
    assert {tuple(x.shape) for x in train + test} == {(3, 32, 24)}
    assert torch.equal(test[0], data.test[0][0])  # evaluation: a fixed resize and centre crop
    assert not all(torch.equal(data.train[0][0], data.train[0][0]) for _ in range(3))  # training: augmented
    batches = list(loader(data.train, 2, shuffle=True, workers=2))
    assert [tuple(x.shape) for x, _ in batches] == [(2, 3, 32, 24)] * 2


def test_imagefolder_without_images_or_folders_is_refused(tmp_path: Path) -> None:
    pytest.importorskip("torchvision")
    with pytest.raises(SpecError, match="needs .*/train/CLASS/\\*.jpg; it is missing"):
        load_data(f"imagefolder:{tmp_path}")
    for split in ("train", "val"):
        (tmp_path / split / "cat").mkdir(parents=True)
    with pytest.raises(SpecError, match="imagefolder data at .*: .*it needs"):
        load_data(f"imagefolder:{tmp_path}")


def test_loader_refuses_negative_workers() -> None:
    with pytest.raises(SpecError, match="workers must be 0 or more"):
        loader(torch.utils.data.TensorDataset(torch.zeros(2, 1)), 1, shuffle=False, workers=-1)
