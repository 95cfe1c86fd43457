"""SGD + poly learning rate, MSeg's iteration counts, and the precision mapping."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import functools

from mseg_semantic.config import ConfigError, load_config
from mseg_semantic.errors import UserError
from mseg_semantic.model import autocast_context
from mseg_semantic.training.gradients import StepContext
from mseg_semantic.training.gradients.cross_entropy import ce_backward_step
from mseg_semantic.training.optim import PolyLR, build_sgd, derive_max_iters, make_grad_scaler, poly_learning_rate
from mseg_semantic.training.run import resolve_run

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config" / "train"


def test_poly_scheduler_matches_closed_form_per_iteration():
    param = torch.nn.Parameter(torch.zeros(3))
    optimizer = build_sgd([param], base_lr=0.01, momentum=0.9, weight_decay=1e-4)
    scheduler = PolyLR(optimizer, max_iters=50, power=0.9)
    seen = []
    for _ in range(50):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [0.01 * (1 - t / 50) ** 0.9 for t in range(50)]
    assert seen == pytest.approx(expected, rel=1e-12)
    assert seen[0] == 0.01 and optimizer.param_groups[0]["lr"] == 0.0
    assert optimizer.param_groups[0]["momentum"] == 0.9 and optimizer.param_groups[0]["weight_decay"] == 1e-4


def test_poly_scheduler_state_round_trip_continues_the_curve():
    param = torch.nn.Parameter(torch.zeros(1))
    opt_a = build_sgd([param], 0.02, 0.9, 0.0)
    sched_a = PolyLR(opt_a, 20)
    for _ in range(7):
        opt_a.step()
        sched_a.step()
    opt_b = build_sgd([param], 0.02, 0.9, 0.0)
    sched_b = PolyLR(opt_b, 20)
    opt_b.load_state_dict(opt_a.state_dict())
    sched_b.load_state_dict(sched_a.state_dict())
    assert opt_b.param_groups[0]["lr"] == pytest.approx(poly_learning_rate(0.02, 7, 20))
    opt_b.step()
    sched_b.step()
    assert opt_b.param_groups[0]["lr"] == pytest.approx(poly_learning_rate(0.02, 8, 20))


@pytest.mark.parametrize(
    "path, world_size, expected",
    [
        # MSeg: per-GPU batch x 1 GPU per dataset; num_examples / that
        ("1080_release/mseg-relabeled-1m.yaml", 7, 500_000),  # 1e6 / 2
        ("1080_release/mseg-relabeled-3m.yaml", 7, 600_000),  # 3e6 / 5
        ("1080_release/mseg-unrelabeled.yaml", 7, 200_000),  # 1e6 / 5
        ("1080_release/mseg-naive-baseline.yaml", 7, 250_000),  # 1e6 / 4
        ("1080_release/mseg-mgda.yaml", 7, 200_000),
        ("720_release/mseg-3m.yaml", 7, 428_571),  # floor(3e6 / 7)
        ("480_release/mseg-3m.yaml", 7, 250_000),  # 3e6 / 12
    ],
)
def test_release_configs_reproduce_mseg_iteration_counts(path, world_size, expected):
    cfg = load_config(CONFIG_DIR / path)
    plan = resolve_run(cfg, world_size)
    assert plan.max_iters == expected
    # mixing every batch on one GPU with the same global batch gives the same count
    mixed = resolve_run(load_config(CONFIG_DIR / path, ["dataset_gpu_mapping=null"]), 1)
    assert mixed.max_iters == expected
    assert plan.model_taxonomy == ("naive" if "naive" in path else "universal")
    assert plan.precision == "fp32"


def test_single_dataset_configs():
    oracle = resolve_run(load_config(CONFIG_DIR / "1080_release/single_oracle.yaml", ["dataset=camvid-11"]), 8)
    assert (oracle.model_taxonomy, oracle.datasets, oracle.dataset_gpu_mapping) == ("oracle", ["camvid-11"], None)
    assert oracle.max_iters == 1_000_000 // 32  # MSeg: num_examples / (per-GPU batch x GPUs)
    universal = resolve_run(load_config(CONFIG_DIR / "1080_release/single_universal.yaml", ["dataset=ade20k-150"]), 8)
    assert universal.model_taxonomy == "universal" and universal.batch_per_rank == 4
    mgda = resolve_run(load_config(CONFIG_DIR / "1080_release/mseg-mgda.yaml"), 7)
    assert mgda.method == "mgda"


def test_max_iters_override_and_formula():
    cfg = load_config(CONFIG_DIR / "1080_release/mseg-relabeled-1m.yaml", ["max_iters=123"])
    assert resolve_run(cfg, 7).max_iters == 123
    assert derive_max_iters(1000, 10, ["a", "b"]) == 200
    assert derive_max_iters(1000, 12, ["a", "b", "c"]) == 250
    # unequal GPU counts: the dataset with the fewest crops per iteration decides
    assert derive_max_iters(120, 6, ["a", "b"], {"a": [0, 1], "b": [2]}, world_size=3) == 60


def test_precision_mapping_and_errors():
    def precision(*overrides):
        return load_config(None, list(overrides)).TRAIN.precision

    assert precision() == precision("opt_level=O0") == "fp32"
    assert precision("opt_level=O1") == precision("opt_level=O2") == precision("opt_level=O3") == "fp16"
    with pytest.raises(ConfigError, match="'opt_level' and 'precision' both set TRAIN.precision"):
        precision("opt_level=O1", "precision=bf16")  # one place, two names for one key
    with pytest.raises(ConfigError, match="opt_level='O7'"):
        precision("opt_level=O7")
    with pytest.raises(ConfigError, match="fp8"):
        precision("precision=fp8")
    assert make_grad_scaler("fp16", "cpu") is not None
    assert make_grad_scaler("bf16", "cpu") is None and make_grad_scaler("fp32", "cpu") is None
    plan = resolve_run(load_config(CONFIG_DIR / "1080_release/mseg-relabeled-1m.yaml", ["opt_level=O2", "dataset_gpu_mapping=null"]), 1)
    assert plan.precision == "fp16"


def _tiny_segmenter(num_classes: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, num_classes, 1))


def test_bf16_cpu_step_runs_under_autocast_and_matches_fp32_closely():
    images = torch.randn(2, 3, 16, 16)
    labels = torch.randint(0, 5, (2, 16, 16))
    labels[:, :4] = 255
    dataset_index = torch.tensor([0, 1])
    results = {}
    for precision in ("fp32", "bf16"):
        model = _tiny_segmenter(5)
        seen_dtypes = []
        model[2].register_forward_hook(lambda m, i, o: seen_dtypes.append(o.dtype))
        ctx = StepContext(num_datasets=2, autocast=functools.partial(autocast_context, precision, "cpu"))
        out = ce_backward_step(model, images, labels, dataset_index, ctx)
        results[precision] = (out, model[0].weight.grad.clone(), seen_dtypes[0])
    assert results["fp32"][2] == torch.float32 and results["bf16"][2] == torch.bfloat16
    assert torch.isfinite(results["bf16"][0].loss)
    assert results["bf16"][0].loss.item() == pytest.approx(results["fp32"][0].loss.item(), rel=2e-2)
    cosine = torch.nn.functional.cosine_similarity(results["bf16"][1].flatten(), results["fp32"][1].flatten(), dim=0)
    assert cosine > 0.99


def test_ce_step_ignores_255_and_reports_per_dataset_means():
    model = _tiny_segmenter(4)
    images = torch.randn(3, 3, 8, 8)
    labels = torch.randint(0, 4, (3, 8, 8))
    labels[1] = 255  # image 1 has no valid pixel
    dataset_index = torch.tensor([0, 1, 0])
    out = ce_backward_step(model, images, labels, dataset_index, StepContext(num_datasets=3))
    with torch.no_grad():
        logits = model(images)
    expected = torch.nn.functional.cross_entropy(logits, labels, ignore_index=255)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    per_pixel = torch.nn.functional.cross_entropy(logits, labels, ignore_index=255, reduction="none")
    assert out.per_dataset_loss[0].item() == pytest.approx(per_pixel[[0, 2]].sum().item() / 128, rel=1e-5)
    assert math.isnan(out.per_dataset_loss[1].item()) and math.isnan(out.per_dataset_loss[2].item())


def test_msegs_one_dataset_per_gpu_mapping_needs_its_process_count():
    cfg = load_config(CONFIG_DIR / "1080_release/mseg-relabeled-1m.yaml")
    with pytest.raises(UserError, match=r"uses 7 GPUs .* world_size is 1: launch torchrun --nproc_per_node 7, or set dataset_gpu_mapping=null"):
        resolve_run(cfg, 1)
    unmapped = cfg.updated({"dataset_gpu_mapping": {"ade20k-150-relabeled": [0]}})
    with pytest.raises(UserError, match=r"unmapped: bdd-relabeled"):
        resolve_run(unmapped, 1)
