"""Deployment bundles (ONNX, AOTInductor) and `latprune run`, on a tiny pruned run directory.

The run directory (conftest's ``tiny_run``) is written directly, so these tests
do not depend on the pruner. One AOTInductor compile for the whole file
(~20-30 s on a 2-core CPU).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from latprune.api import load
from latprune.cli import main
from latprune.exporters.bundle import SCHEMA, SCHEMA_VERSION, load_bundle
from tests.conftest import TINY_INPUT, tiny_resnet
from tests.conftest import TINY_RUN_BUDGET_MS as BUDGET_MS
from tests.conftest import TINY_RUN_PREDICTED_MS as PREDICTED_MS
from tests.conftest import cli_fails as _fails


def _json(capsys: pytest.CaptureFixture[str]) -> dict:
    return json.loads(capsys.readouterr().out)


def _snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="session")
def onnx_bundle(model_file: str, tiny_run: Path) -> Path:
    out = tiny_run.parent / "onnx-bundle"
    assert main(["export", str(tiny_run), "--model", model_file, "--format", "onnx", "-o", str(out), "--json"]) == 0
    return out


@pytest.fixture(scope="session")
def aoti_bundle(model_file: str, tiny_run: Path) -> Path:
    """The file's only AOTInductor compile: default location, dynamic batch."""
    assert main(["export", str(tiny_run), "--model", model_file, "--format", "aoti", "--dynamic-batch",
                 "--max-batch", "4",
                 "--json"]) == 0
    return tiny_run / "bundle-aoti"


def _check_schema(meta: dict, fmt: str, artifact: str) -> None:
    assert meta["schema"] == SCHEMA and meta["schema_version"] == SCHEMA_VERSION
    assert meta["format"] == fmt and meta["artifact"] == artifact and artifact in meta["files"]
    assert meta["input"]["dtype"] == "float32" and meta["input"]["nominal_shape"] == list(TINY_INPUT)
    assert meta["outputs"][0]["shape"][1:] == [10]
    assert meta["budget"] == {"ms": BUDGET_MS, "spec": "0.5x"}
    assert meta["prediction"]["predicted_ms"] == PREDICTED_MS and meta["prediction"]["prune_measured_ms"] == 0.3
    lat = meta["measured"]["latency_ms"]
    assert 0 < lat["p10_ms"] <= lat["median_ms"] <= lat["p90_ms"] and lat["repeats"] >= 100
    assert meta["measured"]["threads"] == 1  # the run's thread count
    assert meta["measured"]["budget_met"] is True
    parity = meta["parity"]
    assert parity["tol"] == 1e-4 and 0 <= parity["max_abs_diff"] <= 1e-4 and parity["passed"] is True
    fp = meta["fingerprint"]
    assert fp["threads"] == 1 and fp["device"] and fp["runtime_version"] and fp["precision"] == "fp32"
    assert {"latprune", "torch", "python", "onnxruntime"} <= set(meta["versions"])


def test_onnx_bundle_schema_parity_and_files(onnx_bundle: Path, tiny_run: Path) -> None:
    assert sorted(p.name for p in onnx_bundle.iterdir()) == ["README.md", "bundle.json", "model.onnx"]
    meta = load_bundle(onnx_bundle).meta
    _check_schema(meta, "onnx", "model.onnx")
    assert meta["export"]["exporter"] == "dynamo" and meta["export"]["opset"] == 18
    assert meta["fingerprint"]["backend"] == "ort-cpu" and meta["fingerprint"]["runtime"] == "onnxruntime"
    assert meta["input"]["shape"] == list(TINY_INPUT) and meta["input"]["dynamic_batch"] is False
    readme = (onnx_bundle / "README.md").read_text()
    assert "onnxruntime" in readme and "latprune run" in readme and f"{BUDGET_MS:.3f} ms" in readme
    # the ONNX file runs without latprune, and matches the slimmed PyTorch model
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(*TINY_INPUT)
    model = load(tiny_run, tiny_resnet()).model
    with torch.no_grad():
        ref = model(x).numpy()
    assert np.max(np.abs(sess.run(None, {"input": x.numpy()})[0] - ref)) <= 1e-4
    assert not list(onnx_bundle.parent.glob(".*partial*"))


def test_aoti_bundle_runs_without_latprune(aoti_bundle: Path, tiny_run: Path, tmp_path: Path) -> None:
    meta = load_bundle(aoti_bundle).meta
    _check_schema(meta, "aoti", "model.pt2")
    assert meta["input"]["shape"] == ["batch", 1, 28, 28] and meta["input"]["max_batch"] == 4
    assert meta["parity"]["batches"] == [1, 3]  # the dynamic batch is checked at another size too
    assert meta["export"]["device"] == "cpu" and meta["export"]["compiled_threads"] == 1
    assert meta["fingerprint"]["backend"] == "aoti-cpu"
    x = torch.randn(3, 1, 28, 28)
    model = load(tiny_run, tiny_resnet()).model
    with torch.no_grad():
        ref = model(x)
    torch.save(x, tmp_path / "x.pt")
    script = ("import sys, torch; sys.modules['latprune'] = None\n"  # any latprune import would fail
              f"m = torch._inductor.aoti_load_package({str(aoti_bundle / 'model.pt2')!r})\n"
              f"y = m(torch.load({str(tmp_path / 'x.pt')!r}))\n"
              f"torch.save(y, {str(tmp_path / 'y.pt')!r})\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-c", script], check=True, env=env, cwd=tmp_path, capture_output=True,
                   timeout=120)
    y = torch.load(tmp_path / "y.pt")
    assert y.shape == (3, 10) and torch.max(torch.abs(y - ref)) <= 1e-4


@pytest.mark.parametrize("fmt", ["onnx", "aoti"])
def test_run_measures_the_bundle_against_its_budget(capsys: pytest.CaptureFixture[str], onnx_bundle: Path,
                                                    aoti_bundle: Path, tiny_run: Path, tmp_path: Path,
                                                    fmt: str) -> None:
    bundle = onnx_bundle if fmt == "onnx" else aoti_bundle
    before = _snapshot(bundle)
    x = np.random.default_rng(1).standard_normal(TINY_INPUT).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert main(["run", str(bundle), "--input", str(tmp_path / "x.npy"), "--repeat", "30", "--json"]) == 0
    captured = capsys.readouterr()
    r = json.loads(captured.out)
    assert r["format"] == fmt and r["input"]["shape"] == list(TINY_INPUT)
    assert r["latency_ms"]["repeats"] == 30 and r["latency_ms"]["median_ms"] > 0
    assert r["budget_ms"] == BUDGET_MS and r["budget_met"] is True
    assert r["fingerprint_mismatch"] == [] and "warning" not in captured.err
    (out,) = r["outputs"]
    model = load(tiny_run, tiny_resnet()).model
    with torch.no_grad():
        ref = model(torch.from_numpy(x))
    assert out["shape"] == [1, 10] and out["finite"] and out["top1"] == [int(ref.argmax())]
    assert out["max"] == pytest.approx(float(ref.max()), abs=1e-4)
    assert main(["run", str(bundle), "--repeat", "5"]) == 0  # human text, random input
    text = capsys.readouterr().out
    assert "measured here" in text and "budget 50.000 ms: held here" in text
    assert _snapshot(bundle) == before  # running writes nothing


def test_run_accepts_other_batches_of_a_dynamic_bundle_only(capsys: pytest.CaptureFixture[str], aoti_bundle: Path,
                                                          onnx_bundle: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "b3.npy", np.zeros((3, 1, 28, 28), np.float32))
    assert main(["run", str(aoti_bundle), "--input", str(tmp_path / "b3.npy"), "--repeat", "3", "--json"]) == 0
    assert _json(capsys)["outputs"][0]["shape"] == [3, 10]
    _fails(capsys, ["run", str(onnx_bundle), "--input", str(tmp_path / "b3.npy")], "expects [1, 1, 28, 28]")
    np.save(tmp_path / "b9.npy", np.zeros((9, 1, 28, 28), np.float32))
    _fails(capsys, ["run", str(aoti_bundle), "--input", str(tmp_path / "b9.npy")], "1 <= N <= 4")


def test_wrong_inputs_are_refused_and_change_nothing(capsys: pytest.CaptureFixture[str], onnx_bundle: Path,
                                                     tmp_path: Path) -> None:
    before = _snapshot(onnx_bundle)
    np.save(tmp_path / "f64.npy", np.zeros(TINY_INPUT, np.float64))
    _fails(capsys, ["run", str(onnx_bundle), "--input", str(tmp_path / "f64.npy")],
           "holds float64 data; the bundle expects float32 of shape [1, 1, 28, 28]")
    np.save(tmp_path / "shape.npy", np.zeros((1, 3, 28, 28), np.float32))
    _fails(capsys, ["run", str(onnx_bundle), "--input", str(tmp_path / "shape.npy")],
           "has shape [1, 3, 28, 28]; the bundle expects [1, 1, 28, 28]")
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    _fails(capsys, ["run", str(onnx_bundle), "--input", str(tmp_path / "junk.npy")], "not a readable .npy")
    _fails(capsys, ["run", str(onnx_bundle), "--input", str(tmp_path / "absent.npy")], "does not exist")
    _fails(capsys, ["run", str(onnx_bundle), "--repeat", "0"], "--repeat must be at least 1")
    assert _snapshot(onnx_bundle) == before


def _copy(bundle: Path, tmp_path: Path) -> Path:
    target = tmp_path / bundle.name
    shutil.copytree(bundle, target)
    return target


def test_corrupt_bundles_are_refused(capsys: pytest.CaptureFixture[str], onnx_bundle: Path, tmp_path: Path) -> None:
    bad = _copy(onnx_bundle, tmp_path)
    meta = json.loads((bad / "bundle.json").read_text())
    (bad / "bundle.json").write_text("{ not json")
    before = _snapshot(bad)
    _fails(capsys, ["run", str(bad)], "bundle.json is not valid JSON")
    assert _snapshot(bad) == before
    for change, match in [({"schema_version": 99}, "schema version 99"),
                          ({"input": {**meta["input"], "shape": None, "dtype": 3}}, "input.shape"),
                          ({"measured": {"threads": 1}}, "measured.latency_ms"),
                          ({"format": "tflite"}, "format 'tflite'"),
                          ({"surprise": 1}, "unknown keys ['surprise']")]:
        (bad / "bundle.json").write_text(json.dumps({**meta, **change}))
        _fails(capsys, ["run", str(bad)], match)
    (bad / "bundle.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "parity"}))
    _fails(capsys, ["run", str(bad)], "field 'parity' is missing")
    (bad / "bundle.json").write_text(json.dumps(meta))
    data = (bad / "model.onnx").read_bytes()
    (bad / "model.onnx").write_bytes(data[:-10] + b"\x00" * 10)
    _fails(capsys, ["run", str(bad)], "does not match the size and sha256")
    (bad / "model.onnx").unlink()
    _fails(capsys, ["run", str(bad)], "model.onnx is missing from the bundle")
    (bad / "bundle.json").unlink()
    _fails(capsys, ["run", str(bad)], "bundle.json is missing")
    _fails(capsys, ["run", str(tmp_path / "nowhere")], "is not a bundle directory")


def test_bundle_for_a_missing_runtime(capsys: pytest.CaptureFixture[str], onnx_bundle: Path, tmp_path: Path) -> None:
    """A TensorRT bundle (here: its description, with a stand-in engine) on a machine without tensorrt,
    and an AOTInductor bundle for CUDA on a machine without a GPU."""
    import hashlib

    bad = _copy(onnx_bundle, tmp_path)
    meta = json.loads((bad / "bundle.json").read_text())
    engine = b"serialised engine bytes"
    (bad / "model.engine").write_bytes(engine)
    files = {**meta["files"], "model.engine": {"bytes": len(engine), "sha256": hashlib.sha256(engine).hexdigest()}}
    (bad / "bundle.json").write_text(json.dumps({**meta, "format": "tensorrt", "artifact": "model.engine",
                                                 "files": files, "export": {"precision": "fp16"}}))
    before = _snapshot(bad)
    if _has("tensorrt"):
        pytest.skip("tensorrt is installed here")
    _fails(capsys, ["run", str(bad)], "pip install 'latprune[tensorrt]'")
    if not torch.cuda.is_available():
        (bad / "bundle.json").write_text(json.dumps({**meta, "format": "aoti", "export": {"device": "cuda"}}))
        _fails(capsys, ["run", str(bad)], "needs a CUDA GPU")
    assert {k: v for k, v in _snapshot(bad).items() if k != "bundle.json"} == \
        {k: v for k, v in before.items() if k != "bundle.json"}


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def test_fingerprint_mismatch_warns(capsys: pytest.CaptureFixture[str], onnx_bundle: Path, tmp_path: Path) -> None:
    other = _copy(onnx_bundle, tmp_path)
    meta = json.loads((other / "bundle.json").read_text())
    meta["fingerprint"] = {**meta["fingerprint"], "device": "Jetson Orin (ARM Cortex-A78AE)"}
    (other / "bundle.json").write_text(json.dumps(meta))
    assert main(["run", str(other), "--repeat", "5", "--json"]) == 0
    captured = capsys.readouterr()
    r = json.loads(captured.out)
    assert r["fingerprint_mismatch"] == [{"field": "device", "bundle": "Jetson Orin (ARM Cortex-A78AE)",
                                          "here": r["fingerprint"]["device"]}]
    warnings = [ln for ln in captured.err.splitlines() if ln.startswith("latprune: warning:")]
    assert len(warnings) == 1 and "Jetson Orin" in warnings[0] and "differs" in warnings[0]
    # another thread count is another setting, too
    assert main(["run", str(onnx_bundle), "--repeat", "5", "--threads", "2", "--json"]) == 0
    r = _json(capsys)
    assert r["threads"] == 2 and [d["field"] for d in r["fingerprint_mismatch"]] == ["threads"]


def test_existing_bundle_needs_force(model_file: str, capsys: pytest.CaptureFixture[str], tiny_run: Path,
                                     onnx_bundle: Path,
                                     tmp_path: Path) -> None:
    target = _copy(onnx_bundle, tmp_path)
    before = _snapshot(target)
    _fails(capsys, ["export", str(tiny_run), "--model", model_file, "-o", str(target)], "--force")
    assert _snapshot(target) == before
    # --force replaces a bundle (here with a TorchScript-exported, dynamic-batch one) ...
    assert main(["export", str(tiny_run), "--model", model_file, "-o", str(target), "--force", "--exporter",
                 "torchscript",
                 "--dynamic-batch", "--max-batch", "8", "--json"]) == 0
    r = _json(capsys)
    assert r["export"]["exporter"] == "torchscript" and r["export"]["opset"] == 17
    assert r["input"]["shape"] == ["batch", 1, 28, 28] and r["parity"]["batches"] == [1, 3]
    assert load_bundle(target).meta["created"] and not list(tmp_path.glob(".*"))
    # ... but never a directory that is not a bundle, nor the run directory
    stranger = tmp_path / "photos"
    stranger.mkdir()
    (stranger / "cat.jpg").write_bytes(b"meow")
    _fails(capsys, ["export", str(tiny_run), "--model", model_file, "-o", str(stranger), "--force"],
                    "not a latprune bundle")
    assert (stranger / "cat.jpg").read_bytes() == b"meow"
    _fails(capsys, ["export", str(tiny_run), "--model", model_file, "-o", str(tiny_run), "--force"],
                    "would replace the run directory")


def test_failed_export_leaves_nothing(model_file: str, capsys: pytest.CaptureFixture[str], tiny_run: Path,
                                      tmp_path: Path) -> None:
    out = tmp_path / "b"
    _fails(capsys, ["export", str(tiny_run), "--model", model_file, "-o", str(out), "--threads", "0"],
                    "threads must be at least 1")
    _fails(capsys, ["export", str(tiny_run), "--model", model_file, "-o", str(out), "--fp16"],
                    "fp16 applies to format tensorrt only")
    _fails(capsys, ["export", str(tiny_run), "--model", model_file, "-o", str(out), "--format", "onnx", "--device",
                    "cuda"],
           "device applies to format aoti only")
    _fails(capsys, ["export", str(tmp_path / "norun"), "-o", str(out)], "is not a run directory")
    damaged = tmp_path / "damaged"
    shutil.copytree(tiny_run, damaged, ignore=shutil.ignore_patterns("bundle-*"))
    (damaged / "metrics.json").write_text("{")
    _fails(capsys, ["export", str(damaged), "--model", model_file, "-o", str(out)], "metrics.json is not valid JSON")
    (damaged / "metrics.json").unlink()
    (damaged / "model.pt").write_bytes(b"garbage")
    _fails(capsys, ["export", str(damaged), "--model", model_file, "-o", str(out)], "is not a readable state_dict")
    if not torch.cuda.is_available():
        _fails(capsys, ["export", str(tiny_run), "--model", model_file, "-o", str(out), "--format", "aoti",
                        "--device", "cuda"],
               "needs a CUDA GPU")
    assert not out.exists() and not list(tmp_path.glob(".b*"))


def test_export_onnx_file_alone(model_file: str, capsys: pytest.CaptureFixture[str], tiny_run: Path,
                                tmp_path: Path) -> None:
    target = tmp_path / "model.onnx"
    assert main(["export", str(tiny_run), "--model", model_file, "-o", str(target), "--exporter", "torchscript",
                 "--json"]) == 0
    r = _json(capsys)
    assert target.is_file() and r["max_abs_diff"] <= 1e-4 and r["opset"] == 17 and r["exporter"] == "torchscript"
    assert r["input_shape"] == list(TINY_INPUT) and r["output_shape"] == [1, 10]
    _fails(capsys, ["export", str(tiny_run), "--model", model_file, "-o", str(target), "--format", "aoti"],
                    "names an .onnx file")


class _DataDependent(torch.nn.Module):
    """A branch on a value: torch.export (so the dynamo ONNX exporter) refuses it; tracing takes one branch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv(x))
        if y.sum() >= 0:  # always true after a ReLU, but only known at run time
            return y * 2
        return y


def test_auto_exporter_falls_back_to_torchscript_and_says_why(tmp_path: Path) -> None:
    from latprune.errors import ExportError
    from latprune.exporters.onnx import export_onnx

    model = _DataDependent().eval()
    report = export_onnx(model, (1, 1, 8, 8), tmp_path / "m.onnx", exporter="auto")
    assert report.exporter == "torchscript" and report.opset == 17 and report.max_abs_diff <= 1e-4
    assert report.fallback_reason and "dynamo ONNX exporter failed" in report.fallback_reason
    assert "\x1b[" not in report.fallback_reason and "\n" not in report.fallback_reason
    with pytest.raises(ExportError, match="dynamo ONNX exporter failed"):
        export_onnx(model, (1, 1, 8, 8), tmp_path / "n.onnx", exporter="dynamo")
    assert not (tmp_path / "n.onnx").exists()


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_adaptive_pooling_exports_where_its_size_does_not_divide_the_map(exporter: str, tmp_path: Path) -> None:
    """VGG's and AlexNet's pooling to 7x7 and 6x6 at inputs under 224x224: ONNX has no pooling for it."""
    from torch import nn

    from latprune.exporters.onnx import export_onnx

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d((3, 7)), nn.Flatten(), nn.Linear(84, 2)).eval()
    for size in (4, 10, 11):  # 2x2, 8x8 and 9x9 maps: upsampled, overlapping bins, even bins
        report = export_onnx(model, (1, 3, size, size), tmp_path / f"m{size}.onnx", exporter=exporter)
        assert report.max_abs_diff <= 1e-5 and report.output_shape == (1, 2)
    assert "forward" not in vars(model[1])  # the model pools as it did


@pytest.fixture
def external_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every model's weights exported as external data, as a model past protobuf's 2 GiB is."""
    monkeypatch.setattr("latprune.runtime.large_onnx.INLINE_LIMIT_BYTES", 1024)


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_weights_past_the_protobuf_limit_go_beside_the_graph(external_weights: None, exporter: str,
                                                              tmp_path: Path) -> None:
    import onnxruntime as ort

    from latprune.exporters.onnx import export_onnx
    from latprune.latency_lut.backends import get_backend
    from latprune.runtime.large_onnx import DATA_LOCATION, ExternalOnnx, read_onnx, write_onnx
    from latprune.runtime.onnx import to_onnx_bytes

    model = tiny_resnet().eval()
    report = export_onnx(model, TINY_INPUT, tmp_path / "model.onnx", exporter=exporter)
    assert report.external_data == DATA_LOCATION and report.max_abs_diff <= 1e-4
    graph, data = tmp_path / "model.onnx", tmp_path / DATA_LOCATION
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", DATA_LOCATION]
    assert graph.stat().st_size < data.stat().st_size and report.size_bytes == graph.stat().st_size + data.stat().st_size
    x = torch.randn(*TINY_INPUT)
    sess = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])  # reads the data beside it
    with torch.no_grad():
        assert np.max(np.abs(sess.run(None, {"input": x.numpy()})[0] - model(x).numpy())) <= 1e-4
    in_memory = to_onnx_bytes(model, TINY_INPUT)  # what the profiler and the closed loop time
    assert isinstance(in_memory, ExternalOnnx) and len(in_memory.data) > len(in_memory)
    assert get_backend("ort-cpu", 1).measure_export(in_memory).median_ms > 0
    # under another name (a journal's attemptN-export.onnx), the data file follows it, and so does the graph
    written = write_onnx(tmp_path / "other.onnx", in_memory)
    assert [p.name for p in written] == ["other.onnx", "other.onnx.data"]
    again = read_onnx(tmp_path / "other.onnx")
    assert isinstance(again, ExternalOnnx) and again.data == in_memory.data and again.location == "other.onnx.data"
    sess = ort.InferenceSession(str(tmp_path / "other.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        assert np.max(np.abs(sess.run(None, {"input": x.numpy()})[0] - model(x).numpy())) <= 1e-4


def test_a_bundle_carries_its_external_weights(external_weights: None, model_file: str, tiny_run: Path,
                                               tmp_path: Path) -> None:
    import latprune
    from latprune.runtime.large_onnx import ExternalOnnx
    from latprune.runtime.onnx import to_onnx_bytes

    result = load(tiny_run, tiny_resnet())
    result.onnx = to_onnx_bytes(result.model, TINY_INPUT)  # as a prune of such a model holds it
    saved = result.save(tmp_path / "run")
    assert sorted(p.name for p in saved.iterdir()) == ["metrics.json", "model.onnx", "model.onnx.data", "model.pt",
                                                        "plan.json"]
    assert isinstance(load(saved, tiny_resnet()).onnx, ExternalOnnx)
    out = tmp_path / "bundle"
    bundle = latprune.export(result, "onnx", out)
    assert sorted(bundle.meta["files"]) == ["model.onnx", "model.onnx.data"]
    assert bundle.meta["parity"]["passed"] is True
    assert load_bundle(out).measure(repeat=3)["outputs"][0]["shape"] == [1, 10]  # checksums, then it runs
    (out / "model.onnx.data").write_bytes(b"damaged")
    with pytest.raises(Exception, match="model.onnx.data"):
        load_bundle(out)


def test_parity_scales_with_the_outputs_and_still_refuses_a_real_difference(tmp_path: Path) -> None:
    """A random-init Inception-v3's logits reach 1e9, where fp32 rounding alone differs by 1e3: the
    bound grows with the largest output; an offset of 2e-3 on outputs of order one is still refused."""
    from latprune.exporters.onnx import export_onnx, parity, parity_inputs

    torch.manual_seed(0)
    model = tiny_resnet().eval()
    large = torch.nn.Sequential(model, torch.nn.Linear(10, 10)).eval()
    with torch.no_grad():
        large[1].weight.mul_(1e9)
    report = export_onnx(large, TINY_INPUT, tmp_path / "large.onnx", exporter="torchscript")
    assert report.max_abs_ref > 1e8 and report.max_abs_diff <= 1e-4 + 1e-5 * report.max_abs_ref
    inputs = parity_inputs(TINY_INPUT, False, 1)
    with torch.no_grad():
        offset = parity(model, lambda x: model(torch.from_numpy(x)).numpy() + 2e-3, inputs)
        same = parity(model, lambda x: model(torch.from_numpy(x)).numpy(), inputs)
    assert not offset.within() and "2.00e-03" in offset.describe() and same.within()
