"""Importing latprune is cheap; the embedded default and data loaders work offline."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from latprune.data import digits, fashion_mnist_available, load_data
from latprune.errors import SpecError


def test_import_is_cheap_and_side_effect_free() -> None:
    # latprune.cli too: `latprune --help` lists the method configs' choices (pruner.configs) without loading torch
    code = ("import sys, latprune, latprune.cli; heavy = [m for m in ('onnxruntime', 'torchvision', 'tensorrt', 'torch', 'onnx') "
            "if m in sys.modules]; print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_public_api_resolves() -> None:
    import latprune

    for name in latprune.__all__:
        assert getattr(latprune, name) is not None
    with pytest.raises(AttributeError):
        latprune.nothing_here  # noqa: B018


def test_digits_fallback_shapes() -> None:
    d = digits()
    x, y = d.train[0]
    assert x.shape == (1, 28, 28) and 0 <= int(y) < 10 and len(d.train) == 1500 and len(d.test) == 297


@pytest.mark.skipif(not fashion_mnist_available(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_from_debian_package() -> None:
    d = load_data("fashion-mnist")
    assert (len(d.train), len(d.test)) == (60000, 10000)
    x, _ = d.train[0]
    assert x.shape == (1, 28, 28) and abs(float(torch.stack([d.train[i][0] for i in range(500)]).mean())) < 0.3


def test_unknown_data_spec() -> None:
    with pytest.raises(SpecError, match="unknown data spec"):
        load_data("cifar1000")


def test_embedded_default_loads_with_its_recorded_accuracy() -> None:
    import json

    from latprune.models import EMBEDDED_WEIGHTS, registered_model

    spec = registered_model("default")
    assert spec is not None
    assert spec.input_shape == (1, 1, 28, 28)
    with torch.no_grad():
        assert spec.model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    meta = json.loads(EMBEDDED_WEIGHTS.with_suffix(".json").read_text())
    assert meta["test_accuracy"] > 0.85
    assert EMBEDDED_WEIGHTS.stat().st_size < 8 * 2**20
    if fashion_mnist_available():  # the shipped weights really reach the recorded accuracy
        from latprune.data import subset
        from latprune.train import evaluate

        acc = evaluate(spec.model, subset(load_data("fashion-mnist").test, 2000))
        assert acc == pytest.approx(meta["test_accuracy"], abs=0.02)
