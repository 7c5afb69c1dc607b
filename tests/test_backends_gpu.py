"""GPU backends: real tests where a GPU (and TensorRT) is present, clear refusals where not.

Run the hardware tests with `pytest -m "gpu or tensorrt"` on a CUDA machine.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from latprune.cli import main
from latprune.errors import BackendError, MissingDependency
from latprune.graph.channels import ChannelGraph
from latprune.latency_lut.backends import get_backend
from tests.conftest import TINY_INPUT, tiny_resnet

HAS_CUDA = torch.cuda.is_available()
HAS_TRT = importlib.util.find_spec("tensorrt") is not None


@pytest.mark.skipif(HAS_CUDA, reason="this machine has a GPU")
def test_torch_cuda_without_gpu_says_what_to_do() -> None:
    with pytest.raises(BackendError, match="needs a CUDA GPU.*the ort-cpu backend"):
        get_backend("torch-cuda")


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed")
def test_tensorrt_without_package_says_how_to_install() -> None:
    with pytest.raises(MissingDependency, match=r"pip install 'latprune\[tensorrt\]'"):
        get_backend("tensorrt")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_torch_cuda_times_units_and_models() -> None:
    backend = get_backend("torch-cuda")
    graph = ChannelGraph.build(tiny_resnet(), TINY_INPUT)
    for unit in graph.units[:4]:
        lat = backend.measure_unit(unit.base)
        assert 0 < lat.p10_ms <= lat.median_ms <= lat.p90_ms < 50
        assert backend.last_mode == "cuda-graph"  # units and models are timed the same way
    whole = backend.measure_model(graph.model, TINY_INPUT)
    assert whole.median_ms > 0 and whole.repeats >= backend.model_timing.repeats
    assert backend.last_mode == "cuda-graph"
    fp = backend.fingerprint()
    assert fp["backend"] == "torch-cuda" and fp["device"] and fp["cuda"] and fp["cuda_graphs"] is True
    assert {"cudnn_tf32", "cudnn_benchmark"} <= set(fp) and fp["unit_repeats"] == backend.UNIT_REPEATS > 1
    # the model passed in is untouched (timed on a copy, on the GPU)
    assert next(graph.model.parameters()).device.type == "cpu"
    eager = type(backend)(cuda_graphs=False)
    assert eager.measure_unit(graph.units[0].base).median_ms > 0 and eager.last_mode == "eager"
    assert eager.fingerprint()["unit_repeats"] == 1


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_torch_cuda_profile_and_fidelity_cli(capsys: pytest.CaptureFixture[str], model_file: str,
                                            tmp_path: Path) -> None:
    lut = tmp_path / "cuda.lut"
    common = ["--input", "1x1x28x28", "--backend", "torch-cuda"]
    assert main(["profile", model_file, *common, "--levels", "3", "--passes", "1", "--calibration-samples", "4",
                 "-o", str(lut), "--json"]) == 0
    profile = json.loads(capsys.readouterr().out)
    assert profile["measured"] == profile["keys"] > 0 and profile["calibration"]["scale"] > 0
    assert main(["lut", "fidelity", model_file, *common, "--lut", str(lut), "--samples", "6", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["fingerprint"]["backend"] == "torch-cuda" and len(report["points"]) == 6
    assert all(p["measured_ms"] > 0 and p["predicted_ms"] > 0 for p in report["points"])


@pytest.mark.tensorrt
@pytest.mark.skipif(not (HAS_CUDA and HAS_TRT), reason="needs a CUDA GPU and tensorrt")
def test_tensorrt_engine_matches_pytorch_and_times_units() -> None:
    from latprune.exporters.onnx import to_onnx_bytes
    from latprune.runtime.tensorrt import TrtRunner, build_engine

    model = tiny_resnet()
    runner = TrtRunner(build_engine(to_onnx_bytes(model, TINY_INPUT)))
    x = torch.randn(*TINY_INPUT)
    (out,) = runner(input=x.cuda()).values()
    with torch.no_grad():
        assert torch.allclose(out.cpu(), model(x), atol=1e-3)
    backend = get_backend("tensorrt")
    graph = ChannelGraph.build(model, TINY_INPUT)
    assert backend.measure_unit(graph.units[1].base).median_ms > 0
