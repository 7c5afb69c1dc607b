"""Every bad input: one line naming what to do, exit 2, no traceback, no file left behind."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from latprune.cli import main
from tests.conftest import cli_fails as _fails

FAKE = ["--backend", "fake", "--threads", "1"]


def test_unknown_model_spec(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "x.lut"
    _fails(capsys, ["profile", "resnet9000", "-o", str(out), *FAKE], "unknown model spec")
    _fails(capsys, ["profile", "torchvision:resnet9000", "-o", str(out), *FAKE], "torchvision has no model")
    _fails(capsys, ["profile", str(tmp_path / "no.py") + ":make", "-o", str(out), "--input", "1x1x8x8", *FAKE],
           "does not exist")
    assert not out.exists()


def test_file_model_needs_an_input_shape(capsys: pytest.CaptureFixture[str], model_file: str, tmp_path: Path) -> None:
    _fails(capsys, ["profile", model_file, "-o", str(tmp_path / "x.lut"), *FAKE], "--input")
    _fails(capsys, ["profile", model_file, "-o", str(tmp_path / "x.lut"), "--input", "1xAx3", *FAKE], "BxCxHxW")


def test_malformed_budget(capsys: pytest.CaptureFixture[str], model_file: str, fake_lut: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    _fails(capsys, ["prune", model_file, "--input", "1x1x28x28", "--lut", fake_lut, "--budget", "half",
                    "-o", str(out), *FAKE], "budget 'half' is not understood")
    assert not out.exists()


def test_budget_below_reach_says_what_is_reachable(capsys: pytest.CaptureFixture[str], model_file: str,
                                                   fake_lut: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    _fails(capsys, ["prune", model_file, "--input", "1x1x28x28", "--lut", fake_lut, "--budget", "0.0001ms",
                    "--method", "halp", "--importance", "l1", "--epochs", "0", "-o", str(out), *FAKE], "smallest reachable latency")
    assert not out.exists() and not list(tmp_path.glob(".run*"))


def test_prune_warns_of_a_calibration_fitted_by_an_older_rule(capsys: pytest.CaptureFixture[str], model_file: str,
                                                                fake_lut: str, tmp_path: Path) -> None:
    import shutil

    from latprune.latency_lut.store import Lut

    old = tmp_path / "old.lut"
    shutil.copy(fake_lut, old)
    with Lut.open(old, writable=True) as lut:
        (signature,) = [s for s in lut.calibrations()]
        lut.set_calibration(signature, lut.calibration(signature) | {"fit": "relative"})
    argv = ["prune", model_file, "--input", "1x1x28x28", "--lut", str(old), "--budget", "0.0001ms", "--method", "halp",
            "--importance", "l1", "--epochs", "0", "-o", str(tmp_path / "run"), *FAKE]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "fitted by an older rule (relative); profiling this model" in err and "smallest reachable latency" in err
    assert main([*argv, "--json"]) == 2 and "older rule" in capsys.readouterr().err  # not a progress message
    assert main([*argv[:5], fake_lut, *argv[6:]]) == 2
    err = capsys.readouterr().err
    assert "smallest reachable latency" in err and "older rule" not in err  # a current calibration: no warning


def test_profile_warns_of_too_few_calibration_samples_for_block_removal(capsys: pytest.CaptureFixture[str],
                                                                        model_file: str, tmp_path: Path) -> None:
    argv = ["profile", model_file, "--input", "1x1x28x28", "--levels", "2", "--passes", "1", *FAKE]
    assert main([*argv, "-o", str(tmp_path / "a.lut"), "--calibration-samples", "6"]) == 0
    assert "cannot fit what a removed block costs" in capsys.readouterr().err
    assert main([*argv, "-o", str(tmp_path / "b.lut"), "--calibration-samples", "7"]) == 0
    assert "removed block" not in capsys.readouterr().err


def test_lut_from_another_backend(capsys: pytest.CaptureFixture[str], model_file: str, fake_lut: str,
                                  tmp_path: Path) -> None:
    _fails(capsys, ["prune", model_file, "--input", "1x1x28x28", "--lut", fake_lut, "--budget", "0.5x",
                    "-o", str(tmp_path / "run"), "--method", "halp", "--importance", "l1", "--epochs", "0", "--backend", "torch-cpu",
                    "--threads", "1"], "measured on another device or setting")
    _fails(capsys, ["profile", model_file, "--input", "1x1x28x28", "-o", fake_lut, "--backend", "fake",
                    "--threads", "3"], "threads")


def test_corrupt_and_foreign_luts(capsys: pytest.CaptureFixture[str], model_file: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.lut"
    bad.write_bytes(b"\x00garbage" * 500)
    before = bad.read_bytes()
    _fails(capsys, ["prune", model_file, "--input", "1x1x28x28", "--lut", str(bad), "--budget", "0.5x",
                    "--method", "halp", "--importance", "l1", "--epochs", "0", "-o", str(tmp_path / "run"), *FAKE],
           "not a readable latprune LUT")
    _fails(capsys, ["lut", "show", str(bad)], "not a readable latprune LUT")
    assert bad.read_bytes() == before  # untouched
    old = tmp_path / "old.lut"
    conn = sqlite3.connect(old)
    conn.executescript("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT); CREATE TABLE entries (key TEXT);"
                       "INSERT INTO meta VALUES ('schema_version', '0'), ('fingerprint', '{}');")
    conn.close()
    _fails(capsys, ["lut", "show", str(old)], "schema version 0")


def test_run_directory_with_missing_files(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    empty = tmp_path / "run"
    empty.mkdir()
    _fails(capsys, ["export", str(empty), "--format", "onnx"], "plan.json is missing")
    _fails(capsys, ["bench", str(empty), *FAKE], "plan.json")
    _fails(capsys, ["bench", str(tmp_path / "nothing.onnx")], "neither a run directory nor")
    assert list(empty.iterdir()) == []


def test_unknown_backend(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    _fails(capsys, ["profile", "default", "-o", str(tmp_path / "x.lut"), "--backend", "tpu"], "known backends")


def test_lut_show_json(capsys: pytest.CaptureFixture[str], fake_lut: str) -> None:
    assert main(["lut", "show", fake_lut, "--json", "--limit", "3"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["schema_version"] == 2 and shown["entries"] > 3 and len(shown["shown"]) == 3
    assert shown["fingerprint"]["backend"] == "fake"


def test_model_without_default_data_needs_data(capsys: pytest.CaptureFixture[str], model_file: str,
                                              fake_lut: str, tmp_path: Path) -> None:
    _fails(capsys, ["prune", model_file, "--input", "1x1x28x28", "--lut", fake_lut, "--budget", "0.8x",
                    "-o", str(tmp_path / "run"), *FAKE], "--data")


def test_training_devices_that_cannot_run_here(capsys: pytest.CaptureFixture[str], model_file: str, fake_lut: str,
                                               tmp_path: Path) -> None:
    argv = ["prune", model_file, "--input", "1x1x28x28", "--lut", fake_lut, "--budget", "0.8x", "-o",
            str(tmp_path / "run"), "--data", "digits", *FAKE]
    _fails(capsys, [*argv, "--precision", "fp16", "--device", "cpu"], "use bf16 on the CPU")
    _fails(capsys, [*argv, "--device", "gpu0"], "device 'gpu0' is not a device")
    assert not (tmp_path / "run").exists()
