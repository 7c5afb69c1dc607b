"""TensorRT export: everything around the `tensorrt` package is tested here on the CPU
(refusals, calibration data, the calibrator and the builder's use of the TensorRT 10
API against a recording stand-in); the engine itself under `-m tensorrt` on a GPU."""

from __future__ import annotations

import importlib.util
import json
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from latprune.cli import main
from latprune.errors import MissingDependency, SpecError
from latprune.exporters import tensorrt as bundle_trt
from latprune.exporters.tensorrt import calibration_batches
from latprune.runtime import tensorrt as trt_mod
from latprune.runtime.tensorrt import EngineConfig, build_engine, make_calibrator
from tests.conftest import TINY_INPUT

HAS_CUDA = torch.cuda.is_available()
HAS_TRT = importlib.util.find_spec("tensorrt") is not None


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed")
def test_export_without_tensorrt_says_how_to_install(model_file: str, capsys: pytest.CaptureFixture[str],
                                                     tiny_run: Path,
                                                     tmp_path: Path) -> None:
    out = tmp_path / "trt"
    for extra in ([], ["--fp16"], ["--int8", "--data", "digits", "--dynamic-batch"]):
        assert main(["export", str(tiny_run), "--model", model_file, "--format", "tensorrt", "-o", str(out),
                     *extra]) == 2
        err = capsys.readouterr().err
        assert "pip install 'latprune[tensorrt]'" in err and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.iterdir())
    assert not (tiny_run / "bundle-tensorrt").exists()


def test_int8_needs_calibration_data(model_file: str, capsys: pytest.CaptureFixture[str], tiny_run: Path,
                                     tmp_path: Path) -> None:
    assert main(["export", str(tiny_run), "--model", model_file, "--format", "tensorrt", "--int8", "-o",
                 str(tmp_path / "b")]) == 2
    assert "int8 needs calibration data: a data spec" in capsys.readouterr().err
    assert main(["export", str(tiny_run), "--model", model_file, "--format", "onnx", "--int8", "--data", "digits",
                 "-o", str(tmp_path / "b")]) == 2
    assert "apply to format tensorrt only" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_calibration_batches_come_from_the_data_at_the_input_shape() -> None:
    batches = calibration_batches("digits", (2, 1, 28, 28), 3)
    assert len(batches) == 3 and all(b.shape == (2, 1, 28, 28) and b.dtype == torch.float32 for b in batches)
    assert not torch.equal(batches[0], batches[1])  # distinct images, not one batch repeated
    with pytest.raises(SpecError, match=r"yields inputs of shape \(1, 28, 28\), the model takes \(3, 224, 224\)"):
        calibration_batches("digits", (1, 3, 224, 224), 2)
    with pytest.raises(SpecError, match="at least 1"):
        calibration_batches("digits", TINY_INPUT, 0)


class _Recorder:
    """Records every attribute call made on it (and on what it returns)."""

    def __init__(self, name: str, log: list[tuple[Any, ...]], returns: dict[str, Any] | None = None) -> None:
        self._name, self._log, self._returns = name, log, returns or {}

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("_"):
            raise AttributeError(attr)

        def call(*args: Any, **kwargs: Any) -> Any:
            self._log.append((f"{self._name}.{attr}", args, kwargs))
            result = self._returns.get(attr)
            return result(*args) if callable(result) else result
        return call

    def __setattr__(self, attr: str, value: Any) -> None:
        if attr.startswith("_"):
            object.__setattr__(self, attr, value)
        else:
            self._log.append((f"{self._name}.{attr}=", (value,), {}))


def _fake_tensorrt(log: list[tuple[Any, ...]], input_shape: tuple[int, ...]) -> types.SimpleNamespace:
    """The part of the TensorRT 10 Python API that build_engine uses, recording its calls."""
    class Calibrator:
        def __init__(self) -> None:
            log.append(("IInt8EntropyCalibrator2.__init__", (), {}))

    tensor = types.SimpleNamespace(name="input", shape=(-1, *input_shape[1:]))
    network = _Recorder("network", log, {"get_input": lambda i: tensor})
    object.__setattr__(network, "num_inputs", 1)
    cache = _Recorder("cache", log, {"serialize": b"timing-cache-v2"})
    config = _Recorder("config", log, {"create_timing_cache": cache, "get_timing_cache": cache})
    profile = _Recorder("profile", log)
    builder = _Recorder("builder", log, {"create_network": network, "create_builder_config": config,
                                         "create_optimization_profile": profile,
                                         "build_serialized_network": b"ENGINE"})
    parser = _Recorder("parser", log, {"parse": True})
    flags = types.SimpleNamespace(FP16="FP16", INT8="INT8", TF32="TF32")
    return types.SimpleNamespace(
        Logger=type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None}),
        Builder=lambda logger: builder, OnnxParser=lambda net, logger: parser, BuilderFlag=flags,
        MemoryPoolType=types.SimpleNamespace(WORKSPACE="WORKSPACE"), IInt8EntropyCalibrator2=Calibrator)


def test_build_engine_configures_tensorrt_as_documented(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    log: list[tuple[Any, ...]] = []
    monkeypatch.setattr(trt_mod, "trt", lambda: _fake_tensorrt(log, (4, 1, 28, 28)))
    cache_file = tmp_path / "x.lut.trt-timing-cache"
    cache_file.write_bytes(b"timing-cache-v1")
    batches = [torch.randn(4, 1, 28, 28) for _ in range(2)]
    config = EngineConfig(fp16=True, int8=True, tf32=False, timing_cache=str(cache_file),
                          calibration_cache=str(tmp_path / "calibration.cache"), dynamic_batch=(1, 4, 16))
    assert build_engine(b"onnx", config, batches) == b"ENGINE"
    calls = [c[0] for c in log]
    args = {c[0]: c[1] for c in log}
    assert args["parser.parse"] == (b"onnx",)
    assert ("config.set_flag", ("FP16",), {}) in log and ("config.set_flag", ("INT8",), {}) in log
    assert ("config.clear_flag", ("TF32",), {}) in log
    assert args["config.create_timing_cache"] == (b"timing-cache-v1",)  # read before the build ...
    assert cache_file.read_bytes() == b"timing-cache-v2"                # ... written after it
    assert args["profile.set_shape"] == ("input", (1, 1, 28, 28), (4, 1, 28, 28), (16, 1, 28, 28))
    assert "config.add_optimization_profile" in calls and "config.set_calibration_profile" in calls
    calibrator = args["config.int8_calibrator="][0]
    assert calibrator.get_batch_size() == 4
    assert calls.index("config.int8_calibrator=") < calls.index("builder.build_serialized_network")


def test_build_engine_refuses_int8_without_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trt_mod, "trt", lambda: _fake_tensorrt([], TINY_INPUT))
    with pytest.raises(SpecError, match="int8 engine needs calibration batches"):
        build_engine(b"onnx", EngineConfig(int8=True))


def test_calibrator_feeds_device_pointers_and_keeps_its_cache(monkeypatch: pytest.MonkeyPatch,
                                                              tmp_path: Path) -> None:
    monkeypatch.setattr(trt_mod, "trt", lambda: _fake_tensorrt([], TINY_INPUT))
    cache = tmp_path / "calibration.cache"
    batches = [torch.full((2, 1, 4, 4), float(i)) for i in range(3)]
    calibrator = make_calibrator(batches, str(cache), device="cpu")  # "cuda" on a GPU; the logic is the same
    assert calibrator.get_batch_size() == 2 and calibrator.read_calibration_cache() is None
    pointers = []
    for i in range(3):
        (ptr,) = calibrator.get_batch(["input"])
        assert ptr == calibrator._current.data_ptr() and float(calibrator._current[0, 0, 0, 0]) == i
        pointers.append(ptr)
    assert calibrator.get_batch(["input"]) is None  # no more batches: calibration ends
    calibrator.write_calibration_cache(memoryview(b"scales"))
    assert cache.read_bytes() == b"scales" and calibrator.read_calibration_cache() == b"scales"
    with pytest.raises(SpecError, match="one shape"):
        make_calibrator([torch.zeros(1, 1, 4, 4), torch.zeros(2, 1, 4, 4)])


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed")
def test_runtime_entry_points_say_how_to_install() -> None:
    with pytest.raises(MissingDependency, match=r"pip install 'latprune\[tensorrt\]'"):
        trt_mod.require_tensorrt()
    with pytest.raises(MissingDependency, match="tensorrt"):
        bundle_trt.TrtArtifactRunner("model.engine", "fp32")


# ---------------------------------------------------------------- on a GPU with tensorrt

@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
@pytest.mark.tensorrt
@pytest.mark.skipif(not (HAS_CUDA and HAS_TRT), reason="needs a GPU and tensorrt")
def test_tensorrt_bundle_builds_checks_and_runs(model_file: str, capsys: pytest.CaptureFixture[str], tiny_run: Path,
                                                tmp_path: Path, precision: str) -> None:
    out = tmp_path / f"trt-{precision}"
    extra = {"fp32": [], "fp16": ["--fp16"], "int8": ["--int8", "--data", "digits", "--calibration-batches", "4"]}
    cache = tmp_path / "timing.cache"
    assert main(["export", str(tiny_run), "--model", model_file, "--format", "tensorrt", "-o", str(out),
                 "--dynamic-batch",
                 "--max-batch", "8", "--timing-cache", str(cache), *extra[precision], "--json"]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["export"]["precision"] == precision and cache.is_file()
    assert meta["export"]["optimisation_profile"] == [1, 1, 8]
    assert (out / "model.engine").is_file() and (out / "model.onnx").is_file()
    if precision == "fp32":
        assert meta["parity"]["passed"] is True and meta["parity"]["max_abs_diff"] <= 1e-4
    else:
        assert meta["parity"]["tol"] is None and meta["parity"]["max_abs_diff"] < 0.5
    assert meta["fingerprint"]["backend"] == "tensorrt" and meta["measured"]["latency_ms"]["median_ms"] > 0
    np.save(tmp_path / "x.npy", np.zeros((3, 1, 28, 28), np.float32))
    assert main(["run", str(out), "--input", str(tmp_path / "x.npy"), "--repeat", "20", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["outputs"][0]["shape"] == [3, 10] and r["fingerprint_mismatch"] == []


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_aoti_bundle_for_cuda(model_file: str, capsys: pytest.CaptureFixture[str], tiny_run: Path,
                              tmp_path: Path) -> None:
    out = tmp_path / "aoti-cuda"
    assert main(["export", str(tiny_run), "--model", model_file, "--format", "aoti", "--device", "cuda", "-o",
                 str(out), "--json"]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["export"]["device"] == "cuda" and meta["fingerprint"]["backend"] == "aoti-cuda"
    assert meta["parity"]["max_abs_diff"] <= 1e-4
    assert main(["run", str(out), "--repeat", "20", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["latency_ms"]["median_ms"] > 0
