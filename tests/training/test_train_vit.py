"""mseg-train with a DINOv2 model in each backbone mode, end to end on the synthetic world: a tiny ViT
(dinov2_tiny_test, 4 blocks of width 48) at 28 x 28 crops, 4 iterations. Each run is resumed from its iteration-2
checkpoint in another directory and must end bit-exactly where the uninterrupted run ended (weights and optimizer
state: each parameter group keeps its own learning-rate scale and weight decay). The tools then read the final
files: mseg-test, mseg-demo and mseg-export (ONNX at a fixed size; a dynamic size is refused)."""

from __future__ import annotations

import pytest
import torch

from mseg_semantic.model import build_model, load_weights
from mseg_semantic.model.dinov2 import build_backbone
from mseg_semantic.tool import demo as mseg_demo
from mseg_semantic.tool import export as mseg_export
from mseg_semantic.tool import test as mseg_test
from train_helpers import REPO, assert_states_equal, final_state, make_world, run_train, write_config

TINY_VIT = {"model": "dinov2_tiny_test", "train_h": 28, "train_w": 28, "short_size": 42, "max_iters": 4, "checkpoint_every": 2}
TEST_CONFIG = REPO / "config" / "test" / "demo.yaml"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("world"))


def train_and_resume(config, tmp_path) -> tuple:
    """The run, and the same run resumed from its iteration-2 checkpoint elsewhere: both must end identically."""
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    done = run_train(config, f"output_dir={reference}")
    assert done.returncode == 0, done.stderr[-3000:]
    again = run_train(config, f"output_dir={resumed}", f"resume={reference / 'checkpoints' / 'iter_00000002.pth'}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "at iteration 2" in again.stderr
    assert_states_equal(final_state(resumed), final_state(reference))
    last = [torch.load(d / "checkpoints" / "last.pth", weights_only=True) for d in (reference, resumed)]
    groups = [[{k: v for k, v in g.items() if k != "params"} for g in state["optimizer"]["param_groups"]] for state in last]
    assert groups[0] == groups[1]
    for key, values in last[0]["optimizer"]["state"].items():
        for name, value in values.items():
            assert torch.equal(value, last[1]["optimizer"]["state"][key][name]), (key, name)
    return reference, last[0]


@pytest.mark.slow
def test_finetune_with_adamw_and_layer_decay_resumes_exactly_and_exports_at_a_fixed_size(world, tmp_path, capsys):
    config = write_config(tmp_path / "vit.yaml", world, train={**TINY_VIT, "backbone_mode": "finetune", "optimizer": "adamw",
                                                               "base_lr": 1e-3, "layer_decay": 0.8, "weight_decay": 0.05})
    reference, last = train_and_resume(config, tmp_path)
    groups = last["optimizer"]["param_groups"]
    assert sorted({g["layer"] for g in groups}) == [0, 1, 2, 3, 4, 5]  # embedding, 4 blocks, final norm + head
    for group in groups:
        assert group["lr_scale"] == pytest.approx(0.8 ** (5 - group["layer"])) and "betas" in group
        assert group["weight_decay"] == (0.05 if group["weight_decay_scale"] else 0.0)
    final = torch.load(reference / "model_final.pth", weights_only=True)
    assert final["meta"]["model"] == "dinov2_tiny_test" and final["meta"]["backbone_mode"] == "finetune"

    model_path = reference / "model_final.pth"
    args = ["--config", str(TEST_CONFIG), f"model_path={model_path}", "test_h=28", "test_w=42"]
    assert mseg_export.main(args + [f"save_folder={tmp_path / 'export'}"]) == 0
    out = capsys.readouterr().out
    assert "input (1, 3, 28, 42)" in out and (tmp_path / "export" / "model_final.onnx").is_file()
    assert mseg_export.main(args + ["export_dynamic=true", f"save_folder={tmp_path / 'dynamic'}"]) == 2
    assert "TEST.export_dynamic=true: dinov2_tiny_test cannot be exported with a dynamic size" in capsys.readouterr().err
    assert not (tmp_path / "dynamic").exists()


@pytest.mark.slow
def test_frozen_run_from_an_official_backbone_file_keeps_it_and_resumes_exactly(world, tmp_path):
    torch.manual_seed(5)
    official = build_backbone("dinov2_tiny_test").state_dict()  # a backbone-only file in Meta's layout
    torch.save(official, tmp_path / "dinov2_tiny_test_pretrain.pth")
    config = write_config(tmp_path / "vit.yaml", world, train={**TINY_VIT, "backbone_mode": "frozen", "optimizer": "sgd",
                                                               "weights": str(tmp_path / "dinov2_tiny_test_pretrain.pth")})
    reference, last = train_and_resume(config, tmp_path)
    final = final_state(reference)
    for key, value in official.items():
        assert torch.equal(final["backbone." + key], value), key  # started from the file, and nothing moved it
    assert {g["layer"] for g in last["optimizer"]["param_groups"]} == {5}  # only the head trains
    halfway = torch.load(reference / "checkpoints" / "iter_00000002.pth", weights_only=True)["model"]
    assert not torch.equal(halfway["head.classifier.weight"], final["head.classifier.weight"])


@pytest.mark.slow
def test_adapters_with_partial_label_resume_exactly_and_the_tools_load_the_merged_model(world, tmp_path, capsys):
    config = write_config(tmp_path / "vit.yaml", world, train={
        **TINY_VIT, "backbone_mode": "adapters", "lora_rank": 4, "optimizer": "adamw", "base_lr": 1e-3, "layer_decay": 0.9,
        "loss": "partial_label", "val_every": 4, "val_datasets": ["camvid-11"], "val_images": 1,
    })
    text = config.read_text() + "TEST:\n  test_h: 28\n  test_w: 28\n  base_size: 42\n"
    config.write_text(text)
    reference, last = train_and_resume(config, tmp_path)
    assert last["meta"]["loss"] == "partial_label" and last["pixel_loss"] is not None
    training = last["model"]
    adapters = [k for k in training if ".attn.lora." in k]
    assert len(adapters) == 8  # down and up on each of the 4 blocks: they trained, and the checkpoint holds them
    assert any(float(training[k].abs().sum()) > 0 for k in adapters if k.endswith(".up"))

    # model_final.pth and model_best.pth hold the plain model: LoRA merged into qkv, computing what the adapted model did
    x = torch.randn(1, 3, 28, 42, generator=torch.Generator().manual_seed(0))
    adapted = build_model("dinov2_tiny_test", 194)
    from mseg_semantic.model import set_backbone_mode

    set_backbone_mode(adapted, "adapters", lora_rank=4)
    adapted.load_state_dict(training)
    for name in ("model_final.pth", "model_best.pth"):
        saved = torch.load(reference / name, weights_only=True)
        assert not [k for k in saved["state_dict"] if ".lora." in k] and saved["meta"]["backbone_mode"] == "adapters"
        plain = build_model("dinov2_tiny_test", 194)
        load_weights(plain, reference / name, log=False)
        with torch.no_grad():
            torch.testing.assert_close(plain.eval()(x), adapted.eval()(x), rtol=1e-4, atol=1e-5)

    model_path = reference / "model_final.pth"
    common = ["--config", str(TEST_CONFIG), f"model_path={model_path}", f"data_root={world}", "generate_demo_world=false",
              "test_h=28", "test_w=28", "test_device=cpu", "save_figures=false"]
    assert mseg_test.main(common + ["benchmark_base_sizes=[42]", f"save_folder={tmp_path / 'zero_shot'}"]) == 0
    assert "CamVid" in capsys.readouterr().out and (tmp_path / "zero_shot" / "zero_shot.json").is_file()
    image = next((world / "Camvid").rglob("*.jpg"))
    assert mseg_demo.main(common + [f"input={image}", "base_size=42", f"save_folder={tmp_path / 'demo'}"]) == 0
    assert list((tmp_path / "demo").iterdir())
    # windows a ViT cannot take are refused naming the key and the sizes it can
    bad_window = [a if a != "test_h=28" else "test_h=30" for a in common]
    assert mseg_test.main(bad_window + ["benchmark_base_sizes=[42]", f"save_folder={tmp_path / 'bad'}"]) == 2
    assert "TEST.test_h x test_w = 30 x 28: dinov2_tiny_test takes windows whose sides are multiples of its patch size 14; use test_h=28" \
        in capsys.readouterr().err
