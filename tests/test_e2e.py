"""profile → prune → export → bench through the CLI, on tiny models (fake and ort-cpu backends)."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch

from latprune.api import load
from latprune.cli import main
from latprune.pruner.plan import PruningPlan
from tests.conftest import tiny_resnet

FAKE = ["--backend", "fake", "--threads", "1"]
TINY = ["--input", "1x1x28x28"]


def _json(capsys: pytest.CaptureFixture[str]) -> dict:
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def fake_run(model_file: str, fake_lut: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("e2e") / "run"
    assert main(["prune", model_file, *TINY, "--lut", fake_lut, "--budget", "0.75x", "-o", str(out),
                 "--data", "digits", "--epochs", "0.1", "--importance-batches", "2", "--batch-size", "32",
                 *FAKE, "--json"]) == 0
    return out


def test_run_directory_is_complete_and_meets_budget(fake_run: Path) -> None:
    assert sorted(p.name for p in fake_run.iterdir()) == ["metrics.json", "model.onnx", "model.pt", "plan.json"]
    m = json.loads((fake_run / "metrics.json").read_text())
    assert m["budget_met"] is True
    assert m["pruned"]["latency_ms"]["median_ms"] <= m["budget"]["ms"] < m["base"]["latency_ms"]["median_ms"]
    assert m["pruned"]["predicted_ms"] <= m["budget"]["ms"]
    assert m["pruned"]["macs"] < m["base"]["macs"] and m["pruned"]["params"] < m["base"]["params"]
    assert m["pruned"]["onnx_parity_max_abs_diff"] <= 1e-4
    assert 0.0 <= m["pruned"]["accuracy"] <= 1.0 and m["data"] == "digits"
    assert m["closed_loop"] and all(h["fits"] == (h["measured_ms"] <= h["target_ms"]) for h in m["closed_loop"])
    # a candidate whose first measurement fits is measured again, and judged by the mean of the two
    assert all(len(h["measurements_ms"]) == (2 if h["measurements_ms"][0] <= h["target_ms"] else 1)
               and h["measured_ms"] == pytest.approx(sum(h["measurements_ms"]) / len(h["measurements_ms"]))
               for h in m["closed_loop"])
    # no --method: the default is gator, gates trained with the LUT latency loss (BENCHMARKS.md)
    assert m["method"] == "gator" and m["config"]["method"] == "gator" and m["method_details"]["gates"]["steps"] > 0


def test_a_lucky_measurement_alone_does_not_accept_a_candidate() -> None:
    """A candidate that fits on its first measurement is measured again; the mean decides."""
    from types import SimpleNamespace

    from latprune.pruner.methods import Context

    def context(*readings: tuple[float, float]) -> SimpleNamespace:
        it = iter(readings)
        return SimpleNamespace(measure=lambda model, on_pass=None: next(it))

    # lucky first (0.8), slow second (1.3): the mean 1.05 misses the target 1.0
    assert Context.measure_checked(context((0.8, 1.0), (1.3, 1.1)), None, 1.0) == (1.05, 1.1, [0.8, 1.3])
    assert Context.measure_checked(context((0.9, 1.0), (0.96, 1.0)), None, 1.0) == (pytest.approx(0.93), 1.0,
                                                                                   [0.9, 0.96])
    # a miss is not measured again
    assert Context.measure_checked(context((1.2, 1.0)), None, 1.0) == (1.2, 1.0, [1.2])


def test_run_replays_and_matches_its_onnx(fake_run: Path) -> None:
    from latprune.runtime.ort import make_session

    run = load(fake_run, tiny_resnet())
    plan = PruningPlan.load(fake_run / "plan.json")
    widths = {g.root: g.width for g in plan.groups}
    assert run.model.get_submodule("stem.0").out_channels == widths["stem.0"]
    session = make_session(str(fake_run / "model.onnx"), threads=1)
    x = torch.randn(1, 1, 28, 28)
    with torch.no_grad():
        ref = run.model(x).numpy()
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert np.max(np.abs(ref - got)) <= 1e-4


def test_bench_reports_measured_and_predicted(model_file: str, capsys: pytest.CaptureFixture[str], fake_run: Path,
                                              fake_lut: str) -> None:
    assert main(["bench", str(fake_run), "--model", model_file, "--lut", fake_lut, *FAKE, "--json"]) == 0
    r = _json(capsys)
    # the fake device is exactly what its calibrated LUT says
    assert r["predicted_ms"] == pytest.approx(r["latency_ms"]["median_ms"], rel=1e-3)
    assert r["calibrated"] is True and r["latency_ms"]["median_ms"] <= r["budget_ms"]
    # a relative budget (0.75x) is checked against the base measured beside the artifact, as prune did
    m = json.loads((fake_run / "metrics.json").read_text())
    assert r["budget_spec"] == "0.75x" and r["budget_ms"] == pytest.approx(0.75 * r["base_beside_ms"])
    assert r["base_beside_ms"] == pytest.approx(m["pruned"]["base_beside_ms"], rel=1e-3)
    assert m["budget"]["ms_beside"] == pytest.approx(0.75 * m["pruned"]["base_beside_ms"])
    main(["bench", str(fake_run), "--model", model_file, *FAKE])
    assert "0.75x of the base, measured" in capsys.readouterr().out
    from latprune.report import prune_text

    assert "budget 0.75x of the base, measured" in prune_text(m)


def test_export_rewrites_onnx_with_parity(model_file: str, capsys: pytest.CaptureFixture[str], fake_run: Path,
                                          tmp_path: Path) -> None:
    target = tmp_path / "again.onnx"
    assert main(["export", str(fake_run), "--model", model_file, "--format", "onnx", "-o", str(target), "--json"]) == 0
    r = _json(capsys)
    assert target.is_file() and r["max_abs_diff"] <= 1e-4 and (r["exporter"], r["opset"]) == ("dynamo", 18)


def test_existing_run_directory_needs_force(capsys: pytest.CaptureFixture[str], model_file: str, fake_lut: str,
                                            fake_run: Path) -> None:
    before = (fake_run / "plan.json").read_text()
    assert main(["prune", model_file, *TINY, "--lut", fake_lut, "--budget", "0.75x", "-o", str(fake_run),
                 *FAKE]) == 2
    assert "--force" in capsys.readouterr().err
    assert (fake_run / "plan.json").read_text() == before


ORT = ["--backend", "ort-cpu", "--threads", "1"]


@pytest.fixture(scope="module")
def ort_lut(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The embedded ResNet-20 profiled on the real backend, on a coarse grid (seconds)."""
    lut = tmp_path_factory.mktemp("ort") / "ort.lut"
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["profile", "default", "--levels", "4", "--passes", "1", "--calibration-samples", "4",
                     "-o", str(lut), *ORT, "--json"]) == 0
    return lut, json.loads(out.getvalue())


def test_ort_cpu_end_to_end(capsys: pytest.CaptureFixture[str], ort_lut: tuple[Path, dict], tmp_path: Path) -> None:
    """The real backend: measured LUT, closed loop on measured latency, measured export."""
    lut, report = ort_lut
    assert report["measured"] == report["keys"] > 0 and report["fingerprint"]["backend"] == "ort-cpu"
    out = tmp_path / "run"
    rc = main(["prune", "default", "--lut", str(lut), "--budget", "0.7x", "-o", str(out),
               "--method", "halp", "--importance", "l1", "--epochs", "0", *ORT, "--json"])
    m = _json(capsys)
    assert rc == (0 if m["budget_met"] else 3)  # a miss after every retry still writes the run, and exits 3
    assert m["budget_met"] == (m["measured_ms"] <= m["budget"]["ms"])
    assert any(h["fits"] and h["measured_ms"] <= h["target_ms"] for h in m["closed_loop"])
    assert m["pruned"]["onnx_parity_max_abs_diff"] <= 1e-4
    assert m["fingerprint"]["runtime"] == "onnxruntime"
    assert main(["bench", str(out / "model.onnx"), "--lut", str(lut), *ORT, "--json"]) == 0
    b = _json(capsys)
    assert b["latency_ms"]["median_ms"] > 0 and b["predicted_ms"] > 0


def test_ort_cpu_grid_is_aligned_to_the_simd_width(ort_lut: tuple[Path, dict]) -> None:
    from latprune.latency_lut.backends import get_backend
    from latprune.latency_lut.store import Lut

    lut, report = ort_lut
    align = get_backend("ort-cpu", threads=1).preferred_align
    assert align in (8, 16) and report["align"] == align
    with Lut.open(lut) as opened:
        widths = {w for key, _ in opened.items() for w in (key.cin, key.cout)}
    # the image channel (1) and the classes (10) are fixed; every prunable width is a multiple of the block
    assert widths - {1, 10} and all(w % align == 0 for w in widths - {1, 10})


def test_force_never_replaces_a_directory_that_is_not_a_run(capsys: pytest.CaptureFixture[str], model_file: str,
                                                           fake_lut: str, tmp_path: Path) -> None:
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    assert main(["prune", model_file, *TINY, "--lut", fake_lut, "--budget", "0.75x", "-o", str(precious),
                 "--method", "halp", "--importance", "l1", "--epochs", "0", "--force", *FAKE]) == 2
    assert "not a latprune run directory" in capsys.readouterr().err
    assert (precious / "thesis.tex").read_text() == "years of work"


def test_profile_records_measured_fusion_rules(ort_lut: tuple[Path, dict]) -> None:
    from latprune.latency_lut.store import Lut

    lut, _ = ort_lut
    with Lut.open(lut) as opened:
        rules = opened.meta("fusion_rules")
    assert set(rules) >= {"conv+bn", "conv+relu", "conv+add", "probe", "conv_kernels"}
    # ONNX Runtime folds BatchNorm into the conv and fuses the activation at graph level, on any CPU
    assert rules["conv+bn"]["fused"] and rules["conv+relu"]["fused"]
    for k in ("conv+bn", "conv+relu", "conv+add"):  # fused: the runtime ran no kernel beyond the conv's own
        assert rules[k]["fused"] == (rules[k]["kernels"] == rules["conv_kernels"]) and rules[k]["alone_ms"] > 0


@pytest.mark.parametrize(("method", "importance", "extra"),
                         [("gator", "taylor", []), ("gator", "taylor", ["--gate-init", "plan"]),
                          ("halp", "taylor", []), ("halp", "measured", []), ("taylor", "taylor", []),
                          ("uniform-l1", "taylor", []), ("flops", "taylor", [])])
def test_every_method_prunes_and_replays(capsys: pytest.CaptureFixture[str], model_file: str, fake_lut: str,
                                        tmp_path: Path, method: str, importance: str, extra: list[str]) -> None:
    out = tmp_path / method
    rc = main(["prune", model_file, *TINY, "--lut", fake_lut, "--budget", "0.75x", "-o", str(out),
               "--method", method, "--data", "digits", "--epochs", "0.05", "--batch-size", "32", *FAKE, "--json",
               *extra, *([] if method in ("uniform-l1", "flops") else ["--importance", importance,
                                                                      "--importance-batches", "2"]),
               *(["--gate-epochs", "0.3"] if method == "gator" else [])])
    m = _json(capsys)
    assert m["method"] == method and PruningPlan.load(out / "plan.json").method == method
    assert rc == (0 if m["budget_met"] else 3)
    if method != "flops":  # the FLOPs baseline never looks at latency: it may miss, says so, and is not retried
        assert m["budget_met"] is True
    else:
        assert len(m["attempts"]) == 1
    assert m["budget_met"] == (m["measured_ms"] <= m["budget"]["ms"])
    assert m["pruned"]["macs"] < m["base"]["macs"]
    run = load(out, tiny_resnet())  # the plan (blocks and channels) replays on a fresh base model
    x = torch.randn(2, 1, 28, 28)
    state = torch.load(out / "model.pt", weights_only=True)
    assert run.model.state_dict().keys() == state.keys()
    with torch.no_grad():
        assert torch.isfinite(run.model(x)).all()
    if method == "gator":
        gates = m["method_details"]["gates"]
        assert gates["steps"] > 0 and gates["expected_ms"] > 0
        assert gates["start"]["init"] == ("plan" if extra else "open")
        if extra:  # the knapsack's plan on the base's scores, at the budget
            assert gates["start"]["predicted_ms"] <= m["budget"]["ms"]


def test_unknown_method_lists_the_known_ones(capsys: pytest.CaptureFixture[str], model_file: str, fake_lut: str,
                                             tmp_path: Path) -> None:
    assert main(["prune", model_file, *TINY, "--lut", fake_lut, "--budget", "0.6x", "-o", str(tmp_path / "r"),
                 "--method", "magic", *FAKE]) == 2
    err = capsys.readouterr().err
    assert "unknown method 'magic'" in err and "gator" in err and "uniform-l1" in err
    assert not (tmp_path / "r").exists()


def test_measured_importance_is_refused_outside_halp(capsys: pytest.CaptureFixture[str], model_file: str,
                                                     fake_lut: str, tmp_path: Path) -> None:
    assert main(["prune", model_file, *TINY, "--lut", fake_lut, "--budget", "0.6x", "-o", str(tmp_path / "r"),
                 "--method", "gator", "--importance", "measured", *FAKE]) == 2
    assert "GatorConfig: unknown importance 'measured'; known: taylor, taylor2, l1" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("field", ["importance", "gate_init", "gate_penalty", "gate_signal"])
def test_the_api_refuses_unknown_option_values(field: str) -> None:
    """A method config called without the CLI (whose argparse choices refuse these
    first) names the option and its known values."""
    from latprune.errors import SpecError
    from latprune.pruner.configs import GatorConfig, method_config

    with pytest.raises(SpecError, match=f"GatorConfig: unknown {field} 'bogus'; known: ") as err:
        GatorConfig(**{field: "bogus"})
    assert ", " in str(err.value).split("known: ")[1]  # every known value, not one
    with pytest.raises(SpecError, match="has no option bogus; its options: max_iters"):
        method_config("gator", bogus=1)


def test_a_slow_spell_does_not_move_the_budget(capsys: pytest.CaptureFixture[str], model_file: str, fake_lut: str,
                                               tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine is twice as slow for the first whole-model measurement (the
    base's, which resolves a relative budget) and for the first of the export's:
    both are measured again because their two passes disagree, and the faster
    kept, so the budget and the reported latency are the steady ones."""
    from latprune.latency_lut.backends.fake import FakeBackend

    steady = FakeBackend.measure_model
    calls: list[float] = []

    def spell(self: FakeBackend, model: torch.nn.Module, input_shape: tuple[int, ...]):  # noqa: ANN202
        lat = steady(self, model, input_shape)
        calls.append(lat.median_ms)
        slow = 2.0 if len(calls) == 1 else 1.0
        return type(lat)(lat.median_ms * slow, lat.p10_ms * slow, lat.p90_ms * slow, lat.repeats)

    monkeypatch.setattr(FakeBackend, "measure_model", spell)
    assert main(["prune", model_file, *TINY, "--lut", fake_lut, "--budget", "0.75x", "-o", str(tmp_path / "r"),
                 "--method", "uniform-l1", "--data", "digits", "--epochs", "0", *FAKE, "--json"]) == 0
    m = _json(capsys)
    assert calls[0] == calls[1] == calls[2]  # the base: slow pass, steady pass, a third because they disagreed
    assert m["base"]["latency_ms"]["median_ms"] == pytest.approx(calls[0], rel=1e-4)  # not twice it
    assert m["budget"]["ms"] == pytest.approx(0.75 * calls[0], rel=1e-4)


def test_a_relative_budget_is_checked_against_the_base_beside_each_candidate(
        capsys: pytest.CaptureFixture[str], model_file: str, fake_lut: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine turns 1.6x slower for good right after the base was measured:
    a relative budget compares each candidate with the base measured beside it,
    so uniform-l1's bisection lands on the same widths as on a steady machine,
    and the export holds its budget."""
    from latprune.latency_lut.backends.fake import FakeBackend

    def prune(out: Path) -> dict:
        assert main(["prune", model_file, *TINY, "--lut", fake_lut, "--budget", "0.75x", "-o", str(out),
                     "--method", "uniform-l1", "--data", "digits", "--epochs", "0", *FAKE, "--json"]) == 0
        return _json(capsys)

    steady = prune(tmp_path / "steady")
    original = FakeBackend.measure_model
    calls = [0]

    def drifting(self: FakeBackend, model: torch.nn.Module, input_shape: tuple[int, ...]):  # noqa: ANN202
        lat = original(self, model, input_shape)
        calls[0] += 1
        slow = 1.0 if calls[0] <= 2 else 1.6  # the base's two passes, then slow
        return type(lat)(lat.median_ms * slow, lat.p10_ms * slow, lat.p90_ms * slow, lat.repeats)

    monkeypatch.setattr(FakeBackend, "measure_model", drifting)
    slowed = prune(tmp_path / "slowed")
    assert slowed["base"]["latency_ms"]["median_ms"] == steady["base"]["latency_ms"]["median_ms"]
    assert slowed["budget_met"] and steady["budget_met"]
    assert slowed["pruned"]["base_beside_ms"] == pytest.approx(1.6 * steady["pruned"]["base_beside_ms"], rel=1e-3)
    widths = [[g.keep for g in PruningPlan.load(tmp_path / run / "plan.json").groups] for run in ("steady", "slowed")]
    assert widths[0] == widths[1]


def _first_export_slowed(monkeypatch: pytest.MonkeyPatch, *factors: float) -> list[int]:
    """The device measures the first fine-tuned export ``factors[0]`` times slower than
    the closed loop measured the same network a moment before (noise the margin did
    not cover), its second measurement ``factors[1]`` times (default: the same), and
    so on; the base beside it, and everything after, are measured as they are."""
    from latprune.pruner import loop

    factors = factors + (factors[0],) if len(factors) == 1 else factors
    real = loop.measure_beside_anchor
    calls: list[int] = []

    def measure(base, candidate, anchor_ms, tolerance, *rest, **options):  # noqa: ANN001, ANN202
        calls.append(1)
        if len(calls) <= len(factors):
            steady, factor = candidate, factors[len(calls) - 1]

            def candidate():  # noqa: ANN202
                lat = steady()
                return type(lat)(lat.median_ms * factor, lat.p10_ms * factor, lat.p90_ms * factor, lat.repeats)
        return real(base, candidate, anchor_ms, tolerance, *rest, **options)

    monkeypatch.setattr(loop, "measure_beside_anchor", measure)
    return calls


def test_an_export_measured_slow_once_is_measured_again_and_not_pruned_again(
        capsys: pytest.CaptureFixture[str], model_file: str, fake_lut: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing export is measured a second time and judged on the mean of the two,
    as the closed loop judges a candidate: one slow measurement makes no retry."""
    calls = _first_export_slowed(monkeypatch, 1.3, 0.7)
    out = tmp_path / "r"
    assert main(["prune", model_file, *TINY, "--lut", fake_lut, "--budget", "0.75x", "-o", str(out),
                 "--method", "uniform-l1", "--data", "digits", "--epochs", "0", *FAKE]) == 0
    err = capsys.readouterr().err
    assert "pruning again" not in err
    # each phase that measures whole models shows its progress (a log gets plain lines)
    phases = {line.split(":")[0] for line in err.splitlines()}
    assert {"measure base", "uniform-l1 bisection", "measure export"} <= phases
    m = json.loads((out / "metrics.json").read_text())
    (only,) = m["attempts"]
    first, second = only["export_measurements_ms"]
    assert len(calls) == 2 and first > m["budget"]["ms"] and first / second == pytest.approx(1.3 / 0.7, rel=1e-3)
    assert only["export_ms"] == pytest.approx((first + second) / 2)
    assert only["export_ms"] <= m["budget"]["ms"] and m["budget_met"]
    assert m["speedup_measured"] == pytest.approx(m["base"]["latency_ms"]["median_ms"] / only["export_ms"])
    from latprune.latency_lut.calibrate import FIT_METHOD

    assert m["calibration"]["fit"] == FIT_METHOD and m["calibration"]["fit_current"]  # the fixture's LUT is current


@pytest.mark.parametrize("method", ["uniform-l1", "gator"])
def test_an_export_that_misses_is_pruned_again_narrower(capsys: pytest.CaptureFixture[str], model_file: str,
                                                        fake_lut: str, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch, method: str) -> None:
    """The export misses by the device's noise: the prune starts again from the base
    (gator: its gates trained afresh, not on the first attempt's model) to a budget
    narrower by the gap between the export and its candidate, and the second export holds."""
    calls = _first_export_slowed(monkeypatch, 1.15)
    out = tmp_path / "r"
    assert main(["prune", model_file, *TINY, "--lut", fake_lut, "--budget", "0.75x", "-o", str(out),
                 "--method", method, "--data", "digits", "--epochs", "0", "--batch-size", "32", *FAKE,
                 *(["--gate-epochs", "0.2", "--importance-batches", "2"] if method == "gator" else [])]) == 0
    err = capsys.readouterr().err
    assert "pruning again from the base" in err
    assert any(line.startswith("closed loop: ") for line in err.splitlines()) == (method == "gator")
    m = json.loads((out / "metrics.json").read_text())
    assert len(calls) == 3 and [a["budget_met"] for a in m["attempts"]] == [False, True] and m["budget_met"]
    assert [len(a["export_measurements_ms"]) for a in m["attempts"]] == [2, 1]  # a miss is measured twice
    first, second = m["attempts"]
    assert first["export_ms"] == pytest.approx(1.15 * first["candidate_ms"], rel=1e-3)
    assert second["budget_ms"] == pytest.approx(first["budget_ms"] * first["candidate_ms"] / first["export_ms"],
                                                 rel=1e-6)
    assert second["candidate_ms"] <= second["target_ms"] < first["candidate_ms"]
    assert m["budget"]["ms"] == first["budget_ms"]  # the user's budget is the one checked and reported
    from latprune.report import prune_text

    text = prune_text(m)
    assert "attempt 1: pruned to" in text and ": missed" in text and "attempt 2" in text and "HELD" in text
    assert m["pruned"]["latency_ms"]["median_ms"] <= m["budget"]["ms_beside"]
    assert m["pruned"]["macs"] < m["base"]["macs"]
    run = load(out, tiny_resnet())  # the second attempt's plan is the one written, and it replays
    x = torch.randn(2, 1, 28, 28)
    state = torch.load(out / "model.pt", weights_only=True)
    run.model.load_state_dict(state)
    assert run.model(x).shape == (2, 10)


def test_without_retries_a_missed_budget_writes_the_run_and_exits_3(capsys: pytest.CaptureFixture[str],
                                                                    model_file: str, fake_lut: str, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    _first_export_slowed(monkeypatch, 1.3)
    out = tmp_path / "r"
    assert main(["prune", model_file, *TINY, "--lut", fake_lut, "--budget", "0.75x", "-o", str(out),
                 "--method", "uniform-l1", "--data", "digits", "--epochs", "0", "--retries", "0", *FAKE]) == 3
    captured = capsys.readouterr()
    assert "MISSED" in captured.out and "is written" in captured.err and "--retries" in captured.err
    m = json.loads((out / "metrics.json").read_text())
    assert m["budget_met"] is False and len(m["attempts"]) == 1
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "model.onnx", "model.pt", "plan.json"]


def test_a_retry_that_cannot_reach_its_narrower_budget_keeps_the_first_run(
        capsys: pytest.CaptureFixture[str], model_file: str, fake_lut: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A 30% gap asks the retry for a budget below the smallest model uniform-l1 can
    build: the first attempt's run is written, says it missed, and the command exits 3."""
    _first_export_slowed(monkeypatch, 1.3)
    out = tmp_path / "r"
    assert main(["prune", model_file, *TINY, "--lut", fake_lut, "--budget", "0.75x", "-o", str(out),
                 "--method", "uniform-l1", "--data", "digits", "--epochs", "0", *FAKE]) == 3
    captured = capsys.readouterr()
    assert "attempt 2 failed" in captured.err and "is written" in captured.err
    m = json.loads((out / "metrics.json").read_text())
    assert m["budget_met"] is False and [("error" in a) for a in m["attempts"]] == [False, True]
    assert m["pruned"]["latency_ms"]["median_ms"] == pytest.approx(m["attempts"][0]["export_median_ms"], rel=1e-4)
    from latprune.report import prune_text

    assert "attempt 2: to" in prune_text(m) and "MISSED" in prune_text(m)
    assert not (tmp_path / ".r.partial").exists()


def test_negative_retries_are_refused(capsys: pytest.CaptureFixture[str], model_file: str, fake_lut: str,
                                      tmp_path: Path) -> None:
    assert main(["prune", model_file, *TINY, "--lut", fake_lut, "--budget", "0.75x", "-o", str(tmp_path / "r"),
                 "--method", "uniform-l1", "--epochs", "0", "--retries", "-1", *FAKE]) == 2
    assert "retries must be 0 or more" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_a_run_pruned_from_a_file_is_loaded_with_its_base_named(capsys: pytest.CaptureFixture[str], fake_run: Path,
                                                                model_file: str, fake_lut: str,
                                                                tmp_path: Path) -> None:
    """latprune never imports code named inside a run directory: a run pruned from a
    file's model needs ``--model`` to name its base, on every command that loads it."""
    from tests.conftest import cli_fails

    cli_fails(capsys, ["export", str(fake_run), "-o", str(tmp_path / "b")], "name its base model with --model")
    cli_fails(capsys, ["bench", str(fake_run), "--lut", fake_lut, *FAKE], "(--model FILE.py:factory)")
    assert not (tmp_path / "b").exists()
    assert main(["profile", str(fake_run), "--model", model_file, "--levels", "2", "--passes", "1",
                 "--calibration-samples", "7", "-o", str(tmp_path / "slim.lut"), *FAKE, "--json"]) == 0
    assert _json(capsys)["keys"] > 0
