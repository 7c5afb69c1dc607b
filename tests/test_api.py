"""The object API on a tiny ResNet and the fake backend: modules in, objects out, files only
where the caller names them; the input model untouched; errors in the library's terms."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

import latprune
from latprune.errors import RunDirError, SpecError
from tests.conftest import TINY_INPUT, tiny_loader, tiny_resnet


@pytest.fixture(scope="module")
def lut(tiny_lut: latprune.LUT) -> latprune.LUT:
    return tiny_lut


def _loader(n: int = 64) -> DataLoader:
    return tiny_loader(n)


def test_profile_returns_a_file_backed_lut(lut: latprune.LUT) -> None:
    assert lut.path.is_file() and lut.backend == "fake" and lut.threads == 1 and len(lut) > 0
    assert lut.report is not None and lut.report.measured == 2 * lut.report.keys > 0  # two passes per key
    reopened = latprune.LUT.open(lut.path)
    assert (reopened.backend, reopened.threads, reopened.path) == ("fake", 1, lut.path)


def test_data_free_prune_leaves_the_model_alone_and_replays(lut: latprune.LUT, tmp_path: Path) -> None:
    model = tiny_resnet().train()
    before = copy.deepcopy(model.state_dict())
    result = latprune.prune(model, lut, "0.7x", example_input=torch.randn(*TINY_INPUT),
                            method=latprune.HalpConfig(importance="l1"), progress=False)
    assert model.training and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    m = result.metrics
    assert m["budget_met"] == (m["measured_ms"] <= m["budget_ms"]) and m["accuracy"] is None
    assert sum(p.numel() for p in result.model.parameters()) < sum(p.numel() for p in model.parameters())
    assert result.plan.method == "halp" and result.path is None and list(tmp_path.iterdir()) == []
    with torch.no_grad():  # the pruned model is the user's to train: it shares no tensor with theirs
        for p in result.model.parameters():
            p.add_(1.0)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())

    run = result.save(tmp_path / "run")
    assert sorted(p.name for p in run.iterdir()) == ["metrics.json", "model.onnx", "model.pt", "plan.json"]
    with pytest.raises(RunDirError, match="already exists and is not empty"):
        result.save(run)
    with pytest.raises(RunDirError, match="pass the base model"):
        latprune.load(run)  # a module of the caller's: latprune cannot build it by name
    same = latprune.load(run, tiny_resnet())
    x = torch.randn(3, *TINY_INPUT[1:])
    with torch.no_grad():
        assert torch.equal(same.model(x), result.model(x))
    assert same.metrics == result.metrics and same.path == run


def test_the_user_finetune_and_evaluate_are_called(lut: latprune.LUT) -> None:
    tuned: list[int] = []

    def finetune(model: torch.nn.Module) -> None:
        tuned.append(sum(p.numel() for p in model.parameters()))
        model.train()  # left in training mode: the prune puts it back in eval mode

    result = latprune.prune(tiny_resnet(), lut, 0.25, example_input=TINY_INPUT, method="uniform-l1",
                            finetune=finetune, evaluate=lambda model: torch.tensor(0.5), progress=False)
    assert tuned and result.metrics["accuracy"] == 0.5 and result.metrics["base"]["accuracy"] == 0.5
    assert type(result.metrics["accuracy"]) is float and not result.model.training
    assert result.metrics["budget"]["spec"] == "0.25ms" and result.metrics["budget_ms"] == 0.25
    assert result.metrics["config"]["finetune"] == "the caller's" and "total_s" in result.metrics["timings_s"]
    with pytest.raises(SpecError, match="evaluate must return a number"):
        latprune.prune(tiny_resnet(), lut, 0.25, example_input=TINY_INPUT, method="uniform-l1",
                       evaluate=lambda model: "good", progress=False)


def test_the_builtin_loops_train_on_the_loaders(lut: latprune.LUT) -> None:
    result = latprune.prune(tiny_resnet(), lut, "0.8x", example_input=TINY_INPUT,
                            method=latprune.GatorConfig(gate_epochs=0.5, importance_batches=2),
                            train_loader=_loader(), val_loader=_loader(32),
                            finetune=latprune.FinetuneConfig(epochs=0.5), progress=False)
    assert 0.0 <= result.metrics["accuracy"] <= 1.0 and result.metrics["method_details"]["gates"]["steps"] > 0


@pytest.mark.parametrize(("call", "match"), [
    (dict(budget="fast"), "budget 'fast' is not understood"),
    (dict(budget=-1.0), "budget must be milliseconds"),
    (dict(method="magic"), "unknown method 'magic'; known: gator, halp"),
    (dict(method="gator"), "method 'gator' trains or scores on data: pass train_loader="),
    (dict(method="uniform-l1", finetune="yes"), "finetune must be a callable"),
    (dict(method="uniform-l1", finetune=latprune.FinetuneConfig()), "trains on train_loader="),
    (dict(method="uniform-l1", retries=-1), "retries must be 0 or more"),
    (dict(method="uniform-l1", model="resnet"), "model must be a torch.nn.Module"),
    (dict(method="uniform-l1", example_input="1x1x28x28"), "example_input must be a tensor"),
])
def test_bad_input_is_refused_before_any_work(lut: latprune.LUT, call: dict, match: str) -> None:
    args = {"model": tiny_resnet(), "budget": "0.5x", "example_input": TINY_INPUT, **call}
    model, budget = args.pop("model"), args.pop("budget")
    with pytest.raises(SpecError, match=match):
        latprune.prune(model, lut, budget, progress=False, **args)


def test_method_configs_validate_themselves_and_register_once() -> None:
    from latprune.pruner.configs import CONFIGS, MethodConfig
    from latprune.pruner.methods import METHODS, register_method, uniform_l1

    with pytest.raises(SpecError, match="GatorConfig: gate_epochs must be positive"):
        latprune.GatorConfig(gate_epochs=0)
    with pytest.raises(SpecError, match="HalpConfig: unknown importance 'magic'; known: taylor, taylor2, l1, measured"):
        latprune.HalpConfig(importance="magic")
    assert latprune.HalpConfig(importance="measured").needs_data and not latprune.HalpConfig(importance="l1").needs_data

    class Impostor(MethodConfig):
        name = "gator"

    with pytest.raises(ValueError, match="taken by GatorConfig"):
        register_method(Impostor, uniform_l1)
    with pytest.raises(ValueError, match="GatorConfig already runs gator"):
        register_method(latprune.GatorConfig, uniform_l1)
    assert CONFIGS["gator"] is latprune.GatorConfig and Impostor not in METHODS


def test_uniform_l1_measures_the_full_model_only_where_the_base_holds_the_budget(lut: latprune.LUT) -> None:
    """The full model is the base, measured at set-up: under a budget below it the bisection
    starts at half the widths; over it, the full model is the one candidate."""
    under = latprune.prune(tiny_resnet(), lut, "0.8x", example_input=TINY_INPUT, method="uniform-l1", progress=False)
    ratios = [c["ratio"] for c in under.metrics["closed_loop"]]
    assert ratios[0] == 0.5 and 1.0 not in ratios and under.metrics["budget_met"]
    over = latprune.prune(tiny_resnet(), lut, 1000.0, example_input=TINY_INPUT, method="uniform-l1", progress=False)
    assert [c["ratio"] for c in over.metrics["closed_loop"]] == [1.0]
    assert over.metrics["speedup"] == pytest.approx(1.0, rel=0.05)


def test_export_of_an_unsaved_result_needs_a_path(lut: latprune.LUT, tmp_path: Path) -> None:
    result = latprune.prune(tiny_resnet(), lut, "0.8x", example_input=TINY_INPUT, method="uniform-l1",
                            progress=False)
    with pytest.raises(SpecError, match="export needs path="):
        latprune.export(result, "onnx")
    with pytest.raises(SpecError, match="unknown export option"):
        latprune.export(result, "onnx", tmp_path / "b", colour="red")
    result.model.train()
    before = copy.deepcopy(result.model.state_dict())
    bundle = latprune.export(result, "onnx", tmp_path / "b", exporter="torchscript")
    assert result.model.training  # the export's copy went to eval mode, and only read the weights
    assert all(torch.equal(v, before[k]) for k, v in result.model.state_dict().items())
    x = torch.randn(*TINY_INPUT)
    with torch.no_grad():
        assert abs(bundle.run(x.numpy())[0] - result.model.eval()(x).numpy()).max() <= 1e-4
    assert bundle.meta["budget"]["ms"] == result.metrics["budget_ms"] and bundle.meta["source"]["run_dir"] is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_the_cli_refuses_a_flag_the_method_does_not_take(capsys: pytest.CaptureFixture[str], lut: latprune.LUT,
                                                         model_file: str, tmp_path: Path) -> None:
    from tests.conftest import cli_fails

    cli_fails(capsys, ["prune", model_file, "--input", "1x1x28x28", "--lut", str(lut.path), "--budget", "0.5x",
                       "-o", str(tmp_path / "r"), "--method", "halp", "--gate-epochs", "1", "--backend", "fake",
                       "--threads", "1"], "--gate-epochs does not apply to --method halp")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(("device", "precision", "match"), [
    ("cpu", "fp64", "unknown precision 'fp64'; known: fp32, bf16, fp16"),
    ("tpu", "fp32", "device 'tpu' is not a device"),
    ("cpu", "fp16", "fp16 trains with a gradient scaler on CUDA only; use bf16 on the CPU"),
    pytest.param("cuda", "fp32", r"torch.cuda.is_available\(\) is False",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is here")),
])
def test_devices_and_precisions_that_cannot_run_here_are_refused(device: str, precision: str, match: str) -> None:
    from latprune.train import Compute

    with pytest.raises(SpecError, match=match):
        Compute.resolve(device, precision)


def test_bf16_training_on_the_cpu(lut: latprune.LUT) -> None:
    """Gate training, fine-tuning and evaluation under bf16 autocast; the model comes back in fp32 on the CPU."""
    result = latprune.prune(tiny_resnet(), lut, "0.8x", example_input=TINY_INPUT,
                            method=latprune.GatorConfig(gate_epochs=0.5, importance_batches=2),
                            train_loader=_loader(), val_loader=_loader(32), finetune=latprune.FinetuneConfig(0.5),
                            device="cpu", precision="bf16", progress=False)
    assert result.metrics["config"]["compute"] == {"device": "cpu", "precision": "bf16"}
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in result.model.parameters())
    assert 0.0 <= result.metrics["accuracy"] <= 1.0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_training_on_cuda(lut: latprune.LUT, precision: str) -> None:
    """Gates on the CPU, the model on the GPU: gate training, fine-tuning and evaluation run there,
    and the slimmed model comes back on the CPU for slimming, export and measurement."""
    result = latprune.prune(tiny_resnet(), lut, "0.8x", example_input=TINY_INPUT,
                            method=latprune.GatorConfig(gate_epochs=0.5, importance_batches=2),
                            train_loader=_loader(), val_loader=_loader(32), finetune=latprune.FinetuneConfig(0.5),
                            device="cuda", precision=precision, progress=False)
    assert result.metrics["config"]["compute"]["device"] == "cuda"
    assert all(p.device.type == "cpu" for p in result.model.parameters())
    assert result.metrics["method_details"]["gates"]["steps"] > 0
