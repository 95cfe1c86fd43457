"""The trainer's side of the DINOv2 models, in-process and in seconds: the refusals of resolve_run, the parameter
groups and optimizers build_stage makes, a resume that keeps each group's own learning-rate scale and weight
decay, the graphed step's state with AdamW, and which regions TRAIN.compile compiles. mseg-train end to end:
tests/training/test_train_vit.py."""

from __future__ import annotations

import pytest
import torch

from mseg_semantic.config import ConfigError, load_config
from mseg_semantic.distributed import DistInfo
from mseg_semantic.model import build_model, set_backbone_mode
from mseg_semantic.training.checkpoint import Checkpointer, TrainingParts
from mseg_semantic.training.gradients import StepContext
from mseg_semantic.training.gradients.cross_entropy import ce_backward_step
from mseg_semantic.training.optim import PolyLR, build_optimizer, parameter_groups, poly_learning_rate
from mseg_semantic.training.run import resolve_run
from mseg_semantic.training.setup import nearest_multiple
from mseg_semantic.training.speed import GraphedStep, compile_regions
from mseg_semantic.training.step import EagerStep

BASE = ["dataset=[cityscapes-19,ade20k-150]", "batch_size=4", "max_iters=10"]
VIT = BASE + ["model=dinov2_tiny_test", "train_h=28", "train_w=28"]


def _overrides(*overrides: str) -> list[str]:
    """Later ``key=value`` replace earlier ones of the same key (the command line refuses a key set twice)."""
    merged = {}
    for item in overrides:
        merged[item.split("=", 1)[0]] = item
    return list(merged.values())


def _resolve(*overrides: str):
    return resolve_run(load_config(None, _overrides(*overrides)))


def test_nearest_multiple_of_the_patch_size():
    assert [nearest_multiple(n, 14) for n in (713, 714, 720, 96, 97, 5, 7)] == [714, 714, 714, 98, 98, 14, 14]


@pytest.mark.parametrize("overrides,message", [
    (["train_h=713"], "TRAIN.train_h=713: dinov2_tiny_test takes sizes that are multiples of its patch size 14; use train_h=714"),
    (["train_w=96"], "TRAIN.train_w=96: .* use train_w=98"),
    # validation runs windows of the TEST size
    (["val_every=5", "test_h=713", "test_w=714"], "TEST.test_h=713: .* use test_h=714"),
])
def test_vit_sizes_must_be_multiples_of_the_patch_naming_the_key_and_the_nearest(overrides, message):
    with pytest.raises(ConfigError, match=message):
        _resolve(*VIT, *overrides)


def test_vit_sizes_that_fit_are_accepted():
    assert _resolve(*VIT, "val_every=5", "test_h=714", "test_w=42", "backbone_mode=adapters", "layer_decay=0.9").max_iters == 10
    # whole-image validation pads to a multiple of 14: any window size is fine there
    _resolve(*VIT, "val_every=5", "test_h=713", "inference_mode=whole")


@pytest.mark.parametrize("overrides,message", [
    (["backbone_mode=frozen"], "TRAIN.backbone_mode='frozen': hrnet_tiny trains its whole network"),
    (["backbone_mode=adapters"], "TRAIN.backbone_mode='adapters'"),
    (["layer_decay=0.9"], "TRAIN.layer_decay=0.9: layer-wise decay applies to the dinov2 models"),
])
def test_vit_only_options_are_refused_for_hrnet(overrides, message):
    with pytest.raises(ConfigError, match=message):
        _resolve(*BASE, "model=hrnet_tiny", *overrides)


@pytest.mark.parametrize("overrides,message", [
    (["betas_adamw=[0.9]"], r"TRAIN.betas_adamw=\[0.9\]: expected two numbers in \[0, 1\)"),
    (["betas_adamw=[0.9, 1.5]"], "TRAIN.betas_adamw"),
    (["layer_decay=1.5"], "TRAIN.layer_decay=1.5: must be <= 1"),
    (["optimizer=adam"], "TRAIN.optimizer='adam' is not one of sgd, adamw"),
    (["backbone_mode=lora"], "TRAIN.backbone_mode='lora' is not one of finetune, frozen, adapters"),
])
def test_bad_optimizer_and_backbone_values_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, _overrides(*VIT, *overrides))


def test_hrnet_keeps_one_group_with_weight_decay_everywhere():
    model = build_model("hrnet_tiny", 5)
    (group,) = parameter_groups(model, 0.01, 1e-4)
    assert len(group["params"]) == len(list(model.parameters()))
    assert (group["lr"], group["weight_decay"], group["lr_scale"], group["weight_decay_scale"]) == (0.01, 1e-4, 1.0, 1.0)
    with pytest.raises(ValueError, match="layer_decay"):
        parameter_groups(model, 0.01, 1e-4, layer_decay=0.9)


@pytest.mark.parametrize("weight_decay", [0.05, 0.0])
def test_vit_groups_decay_by_layer_and_spare_norms_biases_and_tokens(weight_decay):
    model = build_model("dinov2_tiny_test", 5)  # 4 blocks: layers 0 (embedding) .. 5 (final norm and head)
    groups = parameter_groups(model, 1e-3, weight_decay, layer_decay=0.5)
    names = {n for g in groups for n in g["param_names"]}
    assert names == {n for n, p in model.named_parameters() if p.requires_grad} and "backbone.mask_token" not in names
    for group in groups:
        assert group["lr_scale"] == 0.5 ** (5 - group["layer"]) and group["lr"] == 1e-3 * group["lr_scale"]
        decays = group["weight_decay_scale"] == 1.0
        # the decay kind is recorded even when weight_decay is 0, so that a resume with another value applies it right
        assert group["weight_decay_scale"] in (0.0, 1.0) and group["weight_decay"] == weight_decay * group["weight_decay_scale"]
        for name, param in zip(group["param_names"], group["params"]):
            # vectors (biases, LayerNorm, BatchNorm, LayerScale) and the learned tokens are spared
            spared = param.ndim == 1 or name.rsplit(".", 1)[-1] in ("cls_token", "pos_embed", "register_tokens")
            assert decays != spared, name
    spared_names = {n for g in groups if g["weight_decay_scale"] == 0.0 for n in g["param_names"]}
    assert {"backbone.cls_token", "backbone.pos_embed", "backbone.norm.weight", "backbone.blocks.0.ls1.gamma", "head.bn.bias"} <= spared_names
    assert {"backbone.patch_embed.proj.weight", "backbone.blocks.3.attn.qkv.weight", "head.classifier.weight"}.isdisjoint(spared_names)


def _vit_parts(mode: str, kind: str, base_lr: float, weight_decay: float, layer_decay: float, betas=(0.9, 0.999)) -> TrainingParts:
    torch.manual_seed(0)
    model = build_model("dinov2_tiny_test", 5)
    set_backbone_mode(model, mode, lora_rank=2)
    optimizer = build_optimizer(kind, parameter_groups(model, base_lr, weight_decay, layer_decay), momentum=0.9, betas=betas)
    return TrainingParts(model, optimizer, PolyLR(optimizer, 20), None, _Loader())


class _Loader:
    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def _train(parts: TrainingParts, steps: int) -> None:
    ctx = StepContext(num_datasets=1)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        parts.optimizer.zero_grad(set_to_none=True)
        ce_backward_step(parts.model, torch.randn(2, 3, 28, 28, generator=g), torch.randint(0, 5, (2, 28, 28), generator=g),
                         torch.zeros(2, dtype=torch.long), ctx)
        parts.optimizer.step()
        parts.scheduler.step()


@pytest.mark.parametrize("mode,kind", [("finetune", "adamw"), ("adapters", "sgd")])
def test_a_resume_keeps_each_groups_scale_and_decay_and_applies_the_resumed_runs_values(tmp_path, mode, kind):
    checkpointer = Checkpointer(tmp_path, DistInfo())
    parts = _vit_parts(mode, kind, base_lr=1e-3, weight_decay=0.05, layer_decay=0.5)
    _train(parts, 2)
    checkpointer.save(parts, 2)
    _, state = checkpointer.newest()

    # the same run: every group exactly as it was
    same = _vit_parts(mode, kind, base_lr=1e-3, weight_decay=0.05, layer_decay=0.5)
    assert checkpointer.restore(same, state, 20, {"base_lr": 1e-3, "power": 0.9, "momentum": 0.9, "weight_decay": 0.05}) == 2
    for restored, saved in zip(same.optimizer.param_groups, parts.optimizer.param_groups):
        assert {k: v for k, v in restored.items() if k != "params"} == {k: v for k, v in saved.items() if k != "params"}
    assert same.scheduler.base_lrs == parts.scheduler.base_lrs

    # a resume with new values: each group on its own share of them (the decay kind and the scale as this run built them)
    changed = _vit_parts(mode, kind, base_lr=2e-3, weight_decay=0.1, layer_decay=0.8, betas=(0.8, 0.99))
    checkpointer.restore(changed, state, 40, {"base_lr": 2e-3, "power": 1.0, "momentum": 0.5, "weight_decay": 0.1})
    for group in changed.optimizer.param_groups:
        scale = 0.8 ** (5 - group["layer"])
        assert group["lr_scale"] == scale and group["lr"] == poly_learning_rate(2e-3 * scale, 2, 40, 1.0)
        assert group["weight_decay"] == 0.1 * group["weight_decay_scale"]
        if kind == "adamw":
            assert group["betas"] == (0.8, 0.99)
        else:
            assert group["momentum"] == 0.5
    assert len({g["weight_decay"] for g in changed.optimizer.param_groups}) == 2  # decayed and spared groups both exist


def test_fused_adamw_state_exists_before_the_first_step():
    parts = _vit_parts("finetune", "adamw", 1e-3, 0.05, 0.9)
    optimizer = build_optimizer("adamw", parameter_groups(parts.model, 1e-3, 0.05, 0.9), fused=True)
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state[p]
            assert set(state) == {"step", "exp_avg", "exp_avg_sq"} and state["step"].dtype == torch.float32
            assert float(state["exp_avg"].abs().sum()) == 0.0


def test_the_graphed_step_trains_a_vit_with_fused_adamw_exactly_like_the_eager_step():
    """TRAIN.cuda_graphs' step on a CPU (capture=False): same static buffers, same fused update, same numbers; its
    warm-up undo pairs the optimizer's state tensors by position, so the state must exist, in one order, up front."""
    ctx = StepContext(num_datasets=1)
    g = torch.Generator().manual_seed(2)
    batches = [(torch.randn(2, 3, 28, 42, generator=g), torch.randint(0, 5, (2, 28, 42), generator=g), torch.zeros(2, dtype=torch.long))
               for _ in range(2)]
    results = []
    for graphed in (True, False):
        parts = _vit_parts("adapters", "adamw", 1e-3, 0.05, 0.9)
        optimizer = build_optimizer("adamw", parameter_groups(parts.model, 1e-3, 0.05, 0.9), fused=True, lr_on_device=torch.device("cpu"))
        if graphed:
            step = GraphedStep(parts.model, optimizer, ce_backward_step, ctx, grad_clip=1.0, capture=False)
            before = [t.shape for t in step._snapshot()]
        else:
            step = EagerStep(parts.model, optimizer, ce_backward_step, ctx, grad_clip=1.0)
        for images, labels, index in batches:
            step(images, labels, index)
            step.check_finite()
        if graphed:
            assert [t.shape for t in step._snapshot()] == before
        results.append(parts.model.state_dict())
    for key in results[0]:
        assert torch.equal(results[0][key], results[1][key]), key


def test_regional_compile_takes_every_transformer_block_and_the_head():
    """torch.compile is lazy: naming the regions costs nothing; the compiled numbers are checked on CUDA (test below)."""
    model = build_model("dinov2_tiny_test", 5)
    names = list(model.state_dict())
    assert compile_regions(model) == ["backbone.blocks.0", "backbone.blocks.1", "backbone.blocks.2", "backbone.blocks.3", "head"]
    assert list(model.state_dict()) == names  # checkpoints stay interchangeable


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mode", ["finetune", "adapters"])
def test_compiled_and_graphed_vit_steps_match_the_eager_step_on_cuda(tmp_path, monkeypatch, mode):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    ctx = StepContext(num_datasets=1)
    g = torch.Generator().manual_seed(3)
    batches = [(torch.randn(2, 3, 56, 56, generator=g).cuda(), torch.randint(0, 5, (2, 56, 56), generator=g).cuda(),
                torch.zeros(2, dtype=torch.long, device="cuda")) for _ in range(4)]
    states = {}
    for variant in ("eager", "compile", "cuda_graphs"):
        parts = _vit_parts(mode, "adamw", 1e-3, 0.05, 0.9)
        model = parts.model.cuda()
        if variant == "compile":
            compile_regions(model)
        optimizer = build_optimizer("adamw", parameter_groups(model, 1e-3, 0.05, 0.9), fused=True,
                                    lr_on_device=torch.device("cuda") if variant == "cuda_graphs" else None)
        if variant == "cuda_graphs":
            initial = [t.detach().clone() for t in model.state_dict().values()]
            step = GraphedStep(model, optimizer, ce_backward_step, ctx, None, dict(zip(("image", "label", "dataset_index"), batches[0])))
            assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), initial))  # the warm-up left no trace
        else:
            step = EagerStep(model, optimizer, ce_backward_step, ctx)
        for images, labels, index in batches:
            step(images, labels, index)
        step.check_finite()
        states[variant] = {k: v.float().cpu() for k, v in model.state_dict().items()}
    for variant in ("compile", "cuda_graphs"):
        for key, value in states["eager"].items():
            torch.testing.assert_close(states[variant][key], value, rtol=1e-3, atol=1e-4, msg=f"{variant}: {key}")


@pytest.mark.parametrize("name,world_size,iterations,mode", [
    ("mseg-relabeled-3m-vitl14.yaml", 7, 600_000, "finetune"),  # MSeg-3M's length: 3M crops x 7 datasets / 35
    ("one-gpu-vitb14-adapters.yaml", 1, 87_500, "adapters"),
    ("demo.yaml", 1, 300, "finetune"),
])
def test_the_shipped_dinov2_configs_resolve_to_their_runs(name, world_size, iterations, mode):
    from mseg_semantic.training.setup import plan_run
    from train_helpers import REPO

    cfg = load_config(REPO / "config" / "train" / "dinov2" / name)
    (setup,) = plan_run(cfg, world_size).values()
    assert setup.max_iters == iterations and setup.model_taxonomy == "universal" and cfg.TRAIN.backbone_mode == mode
    assert cfg.TRAIN.model.startswith("dinov2_") and cfg.TRAIN.optimizer == "adamw"
    assert cfg.TRAIN.train_h % 14 == 0 and cfg.TEST.test_h % 14 == 0
