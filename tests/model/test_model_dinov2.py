"""DINOv2 backbone (official layout and numerics), its segmentation model, backbone modes, layer decay and weights.

Parity with Meta's code: tests/model/data/dinov2_reference.npz was written by benchmarks/record_dinov2_reference.py from
the official implementation; this file reproduces the same weights and inputs (a hash of key and shape, from that script,
which imports nothing official unless run) and compares. It never imports the official code.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mseg_semantic.errors import UnknownNameError, UserError
from mseg_semantic.model import (
    DINOV2_SPECS,
    HRNET_SPECS,
    MODEL_NAMES,
    CheckpointMismatchError,
    DinoV2Backbone,
    build_backbone,
    build_model,
    layer_decay_param_groups,
    load_weights,
    save_weights,
    set_backbone_mode,
)
from mseg_semantic.model import weights as W
from mseg_semantic.model.dinov2 import ADAPTER_KEY, adapter_parameters, check_patch_multiple, evenly_spaced_blocks, insert_lora, merge_lora
from mseg_semantic.model.loading import guess_variant, read_state_dict

REPO = Path(__file__).resolve().parents[2]
DATA = Path(__file__).resolve().parent / "data"
_spec = importlib.util.spec_from_file_location("record_dinov2_reference", REPO / "benchmarks" / "record_dinov2_reference.py")
reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reference)

OFFICIAL = [name for name, spec in DINOV2_SPECS.items() if spec.official]
TINY = "dinov2_tiny_test"


@pytest.fixture(scope="module")
def recorded():
    return dict(np.load(DATA / "dinov2_reference.npz"))


@pytest.fixture(scope="module")
def manifest():
    return json.loads((DATA / "dinov2_manifest.json").read_text())["models"]


def reference_backbone(name: str, **spec_changes) -> DinoV2Backbone:
    spec = dataclasses.replace(DINOV2_SPECS[name], **spec_changes)
    backbone = DinoV2Backbone(spec, name=name).eval()
    state = {k: torch.from_numpy(reference.reference_tensor(k, tuple(v.shape))) for k, v in backbone.state_dict().items()}
    backbone.load_state_dict(state, strict=True)
    return backbone


def relative_differences(ours: dict, recorded: dict, prefix: str) -> dict[str, float]:
    out = {}
    for key, value in ours.items():
        assert key in recorded, key
        if key.endswith("/shape"):
            assert tuple(value) == tuple(recorded[key]), key
            continue
        assert value.shape == recorded[key].shape, key
        if value.size:
            out[key] = float(np.linalg.norm(value - recorded[key]) / np.linalg.norm(recorded[key]))
    assert {k for k in recorded if k.startswith(prefix + "/")} == set(ours)  # everything recorded is compared
    return out


def tiny_model(num_classes: int = 5, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(TINY, num_classes)


# ----------------------------------------------------------------------------------------------- official layout


@pytest.mark.parametrize("name", OFFICIAL)
def test_every_official_variant_has_the_released_key_layout_and_loads_strictly(name, manifest):
    with torch.device("meta"):
        backbone = build_backbone(name)
    official = manifest[name]
    ours = {k: list(v.shape) for k, v in backbone.state_dict().items()}
    assert list(ours.items()) == list(official.items())  # same keys, same shapes, same order
    state = {k: torch.empty(shape, device="meta") for k, shape in official.items()}
    assert not backbone.load_state_dict(state, strict=True).missing_keys
    assert sum(math.prod(s) for s in official.values()) == sum(v.numel() for v in backbone.state_dict().values())


def test_variant_table_holds_the_official_hyperparameters():
    assert [DINOV2_SPECS[n].embed_dim for n in ("dinov2_vits14", "dinov2_vitb14", "dinov2_vitl14")] == [384, 768, 1024]
    registers = DINOV2_SPECS["dinov2_vitb14_reg"]
    assert (registers.num_register_tokens, registers.interpolate_antialias, registers.interpolate_offset) == (4, True, 0.0)
    plain = DINOV2_SPECS["dinov2_vitl14"]
    assert (plain.num_register_tokens, plain.interpolate_antialias, plain.interpolate_offset, plain.depth) == (0, False, 0.1, 24)
    assert not DINOV2_SPECS[TINY].official


@pytest.mark.parametrize("name", reference.MODELS)
@pytest.mark.parametrize("size", reference.SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_matches_the_official_implementation(name, size, recorded):
    prefix = f"{name}/{size[0]}x{size[1]}"
    ours = reference.record_outputs(reference_backbone(name), prefix, *size)
    differences = relative_differences(ours, recorded, prefix)
    assert len(differences) >= 12
    assert max(differences.values()) < 1e-4, differences


def test_the_record_tells_the_official_resampling_from_a_near_miss(recorded):
    # the offset form and the exact-size form differ by a fraction of a patch in sampling positions
    prefix = "dinov2_vits14/224x224"
    ours = reference.record_outputs(reference_backbone("dinov2_vits14", interpolate_offset=0.0), prefix, 224, 224)
    assert min(relative_differences(ours, recorded, prefix).values()) > 1e-3


def test_positional_embedding_is_used_unchanged_at_its_training_grid():
    backbone = build_backbone(TINY)
    side = backbone.spec.pos_grid
    assert torch.equal(backbone.positional_embedding(side, side, torch.float32), backbone.pos_embed)
    resampled = backbone.positional_embedding(side, side + 1, torch.float32)
    assert resampled.shape == (1, 1 + side * (side + 1), backbone.embed_dim)
    assert torch.equal(resampled[:, 0], backbone.pos_embed[:, 0])  # the class token's entry is never resampled


def test_intermediate_layers_and_features_agree():
    torch.manual_seed(0)
    backbone = build_backbone(TINY).eval()
    x = torch.randn(2, 3, 42, 56)
    features = backbone.forward_features(x)
    registers = backbone.num_register_tokens
    assert features["x_norm_regtokens"].shape == (2, registers, 48)
    assert features["x_norm_patchtokens"].shape == (2, 3 * 4, 48)
    (last, cls), = backbone.get_intermediate_layers(x, n=1, return_class_token=True)
    torch.testing.assert_close(last, features["x_norm_patchtokens"])
    torch.testing.assert_close(cls, features["x_norm_clstoken"])
    raw, = backbone.get_intermediate_layers(x, n=[3], norm=False)
    torch.testing.assert_close(raw, features["x_prenorm"][:, 1 + registers:])
    maps = backbone.get_intermediate_layers(x, n=2, reshape=True)
    assert [m.shape for m in maps] == [(2, 48, 3, 4)] * 2
    torch.testing.assert_close(maps[1].flatten(2).transpose(1, 2), last)
    with pytest.raises(ValueError, match="within 0..3"):
        backbone.get_intermediate_layers(x, n=[4])
    torch.testing.assert_close(backbone(x), features["x_norm_clstoken"])


def test_evenly_spaced_taps():
    assert evenly_spaced_blocks(12) == [2, 5, 8, 11]
    assert evenly_spaced_blocks(24) == [5, 11, 17, 23]
    assert evenly_spaced_blocks(4) == [0, 1, 2, 3]


# ------------------------------------------------------------------------------------------ segmentation model


@pytest.mark.parametrize("size", [(14, 14), (28, 42), (70, 98), (112, 56)])
def test_output_sizes(size):
    model = tiny_model().eval()
    height, width = size
    x = torch.randn(2, 3, height, width)
    with torch.no_grad():
        logits, emb = model(x, return_features=True)
        quarter = model(x, upsample=False)
    assert logits.shape == (2, 5, height, width) and logits.dtype == torch.float32
    assert quarter.shape == (2, 5, math.ceil(height / 4), math.ceil(width / 4))
    assert emb.shape == (2, model.embedding_dim, math.ceil(height / 4), math.ceil(width / 4))
    torch.testing.assert_close(logits, F.interpolate(quarter, size=size, mode="bilinear", align_corners=True))


def test_input_that_is_not_a_multiple_of_14_is_refused_with_the_nearest_sizes():
    model = tiny_model()
    with pytest.raises(ValueError) as caught:
        model(torch.randn(1, 3, 71, 98))
    message = str(caught.value)
    assert "71x98" in message and "70 or 84" in message and "width" not in message
    assert isinstance(caught.value, UserError) and "\n" not in message
    with pytest.raises(ValueError, match="height 10 -> 14"):
        check_patch_multiple(10, 14, 14)


def test_head_has_hrnets_key_names():
    model = tiny_model(num_classes=7)
    keys = model.state_dict()
    assert keys["head.classifier.weight"].shape == (7, model.embedding_dim, 1, 1)
    assert "head.conv.weight" in keys and "head.bn.running_mean" in keys
    assert all(k.startswith(("backbone.", "head.")) for k in keys)
    assert {k[len("backbone."):] for k in keys if k.startswith("backbone.")} == set(model.backbone.state_dict())


def _trained_params_after_a_step(model):
    model.train()
    x, target = torch.randn(2, 3, 42, 56), torch.randint(0, 5, (2, 42, 56))
    F.cross_entropy(model(x), target).backward()
    return {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def test_finetune_trains_everything_the_forward_reads():
    model = tiny_model()
    assert set_backbone_mode(model, "finetune")
    got_grads = _trained_params_after_a_step(model)
    assert got_grads == {n for n, p in model.named_parameters() if n != "backbone.mask_token"}
    assert not model.backbone.mask_token.requires_grad  # DDP needs every trainable parameter to get a gradient


def test_frozen_backbone_gets_no_gradient_and_computes_the_same_in_train_mode():
    model = tiny_model()
    trainable = set_backbone_mode(model, "frozen")
    assert {id(p) for p in trainable} == {id(p) for p in model.head.parameters()}
    got_grads = _trained_params_after_a_step(model)
    assert got_grads == {n for n, _ in model.head.named_parameters(prefix="head")}
    assert all(p.grad is None for p in model.backbone.parameters())
    x = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        in_train = model.forward_backbone(x)
        model.eval()
        in_eval = model.forward_backbone(x)
    for a, b in zip(in_train, in_eval):
        assert torch.equal(a, b)  # no BN/dropout/drop path in the ViT: train() needs no special handling


def test_adapters_train_only_adapters_and_head_and_start_equal_to_the_frozen_model():
    model = tiny_model().eval()
    x = torch.randn(1, 3, 42, 56)
    with torch.no_grad():
        before = model(x)
    set_backbone_mode(model, "adapters", lora_rank=2)
    with torch.no_grad():
        assert torch.equal(model(x), before)  # zero-initialised up-projection
    got_grads = _trained_params_after_a_step(model)
    adapters = {n for n, _ in model.named_parameters() if ADAPTER_KEY in n}
    assert len(adapters) == 2 * model.spec.depth
    ups = {n for n in adapters if n.endswith(".up")}
    # the down-projections' gradient is zero on the first step (it flows through the zero up-projection)
    assert ups <= got_grads <= adapters | {n for n, _ in model.head.named_parameters(prefix="head")}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == adapters | {n for n, _ in model.head.named_parameters(prefix="head")}
    with pytest.raises(ValueError, match="already"):
        set_backbone_mode(model, "finetune")
    with pytest.raises(ValueError, match="unknown backbone mode"):
        set_backbone_mode(model, "partial")


def test_adapters_are_under_three_percent_of_vitb14():
    with torch.device("meta"):
        model = build_model("dinov2_vitb14", 194)
    backbone_params = sum(p.numel() for p in model.backbone.parameters())
    set_backbone_mode(model, "adapters")  # rank 8
    adapters = sum(p.numel() for p in adapter_parameters(model))
    assert adapters == 12 * 8 * (768 + 3 * 768)
    assert adapters / backbone_params < 0.03
    assert all(not p.requires_grad for n, p in model.backbone.named_parameters() if ADAPTER_KEY not in "." + n)


def test_official_weights_load_strictly_before_and_after_adapters(tmp_path):
    official = build_backbone(TINY).state_dict()  # another random initialisation, the official layout
    model = tiny_model()
    insert_lora(model.backbone, rank=2)
    with torch.no_grad():
        for p in adapter_parameters(model):
            p.fill_(0.5)
    model.backbone.load_state_dict(official, strict=True)
    assert all(torch.equal(model.backbone.state_dict()[k], v) for k, v in official.items())
    assert all(torch.all(p == 0.5) for p in adapter_parameters(model))  # kept: the file has none
    with_adapters = dict(model.backbone.state_dict())
    with_adapters["blocks.0.attn.lora.up"] = torch.full_like(with_adapters["blocks.0.attn.lora.up"], 2.0)
    model.backbone.load_state_dict(with_adapters, strict=True)
    assert torch.all(model.backbone.blocks[0].attn.lora.up == 2.0)
    with pytest.raises(RuntimeError, match="Unexpected"):
        model.backbone.load_state_dict({**official, "blocks.0.attn.extra": torch.zeros(1)}, strict=True)
    plain = tiny_model()
    with pytest.raises(RuntimeError, match="lora"):  # a file with adapters needs a model with adapters
        plain.backbone.load_state_dict(with_adapters, strict=True)


def test_merging_adapters_gives_the_official_layout_and_the_same_outputs():
    model = tiny_model().eval()
    keys = list(model.state_dict())
    set_backbone_mode(model, "adapters", lora_rank=3, lora_alpha=6)
    with torch.no_grad():
        for p in adapter_parameters(model):
            p.normal_(0, 0.1)
        x = torch.randn(1, 3, 28, 42)
        adapted = model(x)
        assert merge_lora(model.backbone) == model.spec.depth
        torch.testing.assert_close(model(x), adapted, atol=1e-5, rtol=1e-4)
    assert list(model.state_dict()) == keys and not adapter_parameters(model)


# ------------------------------------------------------------------------------------------------- layer decay


def test_layer_decay_groups():
    model = tiny_model()
    depth, decay = model.spec.depth, 0.5
    groups = layer_decay_param_groups(model, base_lr=0.1, layer_decay=decay, weight_decay=1e-4)
    names = [n for g in groups for n in g["param_names"]]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(names) == sorted(trainable) and len(names) == len(set(names))
    by_name = {n: g for g in groups for n in g["param_names"]}
    for name, layer in [("backbone.patch_embed.proj.weight", 0), ("backbone.pos_embed", 0), ("backbone.cls_token", 0),
                        ("backbone.register_tokens", 0), ("backbone.blocks.0.attn.qkv.weight", 1),
                        (f"backbone.blocks.{depth - 1}.mlp.fc2.weight", depth), ("backbone.norm.weight", depth + 1),
                        ("head.classifier.weight", depth + 1)]:
        group = by_name[name]
        assert group["layer"] == layer, name
        assert group["lr_scale"] == pytest.approx(decay ** (depth + 1 - layer)) and group["lr"] == pytest.approx(0.1 * group["lr_scale"])
    no_decay = ["backbone.pos_embed", "backbone.cls_token", "backbone.register_tokens", "backbone.blocks.1.ls1.gamma",
                "backbone.blocks.1.norm2.weight", "backbone.blocks.1.attn.qkv.bias", "backbone.norm.bias", "head.bn.weight", "head.conv.bias"]
    assert all(by_name[n]["weight_decay"] == 0 for n in no_decay)
    assert all(by_name[n]["weight_decay"] == 1e-4 for n in ["backbone.blocks.1.attn.qkv.weight", "backbone.patch_embed.proj.weight", "head.conv.weight"])
    optimizer = torch.optim.SGD(groups, lr=0.1, momentum=0.9)
    assert {g["lr"] for g in optimizer.param_groups} == {0.1 * decay**k for k in range(depth + 2)}


def test_layer_decay_groups_hold_only_what_trains():
    model = tiny_model()
    set_backbone_mode(model, "frozen")
    frozen = layer_decay_param_groups(model, 0.01, 0.9, 0.0)
    assert {g["layer"] for g in frozen} == {model.spec.depth + 1}
    model = tiny_model()
    set_backbone_mode(model, "adapters", lora_rank=2)
    groups = layer_decay_param_groups(model, 0.01, 0.9, 1e-4)
    lora = {n: g for g in groups for n in g["param_names"] if ADAPTER_KEY in n}
    assert lora["backbone.blocks.2.attn.lora.up"]["layer"] == 3 and lora["backbone.blocks.2.attn.lora.up"]["weight_decay"] == 1e-4
    with pytest.raises(TypeError, match="no DINOv2 backbone"):
        layer_decay_param_groups(build_model("hrnet_tiny", 3), 0.01, 0.9, 0.0)


# ------------------------------------------------------------------------------------------------ weights files


def test_load_weights_recognises_an_official_backbone_file(tmp_path):
    torch.manual_seed(1)
    official = build_backbone(TINY).state_dict()
    path = tmp_path / "dinov2_tiny_pretrain.pth"
    torch.save(official, path)
    model = tiny_model()
    set_backbone_mode(model, "adapters", lora_rank=2)  # adapters first: the official file still loads strictly
    head_before = {k: v.clone() for k, v in model.head.state_dict().items()}
    report = load_weights(model, path, log=False)
    assert report.kind == "dinov2_backbone" and read_state_dict(path)[1] == "dinov2_backbone"
    assert sorted(report.loaded) == sorted("backbone." + k for k in official)
    assert {k for k in report.missing if k.startswith("head.")} == {"head." + k for k in head_before}
    assert {k for k in report.missing if ADAPTER_KEY in k} == {"backbone." + n for n, _ in model.backbone.named_parameters() if ADAPTER_KEY in "." + n}
    assert all(torch.equal(model.backbone.state_dict()[k], v) for k, v in official.items())
    assert all(torch.equal(model.head.state_dict()[k], v) for k, v in head_before.items())
    assert "dinov2_backbone" in report.summary()


def test_load_weights_refuses_a_backbone_file_that_does_not_fit(tmp_path):
    torch.manual_seed(1)
    path = tmp_path / "tiny.pth"
    official = build_backbone(TINY).state_dict()
    torch.save(official, path)
    with pytest.raises(CheckpointMismatchError, match="no DINOv2 backbone.*dinov2_tiny_test"):
        load_weights(build_model("hrnet_tiny", 3), path, log=False)
    incomplete = tmp_path / "incomplete.pth"
    torch.save({k: v for k, v in official.items() if k != "norm.bias"}, incomplete)
    with pytest.raises(CheckpointMismatchError, match="norm.bias"):
        load_weights(tiny_model(), incomplete, log=False)
    assert load_weights(tiny_model(), incomplete, strict=False, log=False).missing[-1] == "backbone.norm.bias"
    with torch.device("meta"):
        small = build_backbone("dinov2_vits14_reg").state_dict()
    assert guess_variant(small) == "dinov2_vits14_reg"
    assert guess_variant(tiny_model().state_dict()) == TINY


def test_project_weights_round_trip_and_adapter_checkpoints(tmp_path):
    model = tiny_model(seed=3)
    path = save_weights(model.state_dict(), {"model": TINY, "num_classes": 5}, tmp_path / "final.pth")
    fresh = tiny_model(seed=4)
    report = load_weights(fresh, path, log=False)
    assert report.kind == "project_final" and not report.missing
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in model.state_dict().items())
    # a plain checkpoint into a model with adapters: the adapters keep their initialisation
    adapted = tiny_model(seed=5)
    set_backbone_mode(adapted, "adapters", lora_rank=2)
    report = load_weights(adapted, path, log=False)
    assert len(report.missing) == 2 * adapted.spec.depth and all(ADAPTER_KEY in k for k in report.missing)
    # an adapters checkpoint into a plain model: the message says how to build the model that fits
    with_lora = save_weights(adapted.state_dict(), {"model": TINY, "num_classes": 5}, tmp_path / "lora.pth")
    with pytest.raises(CheckpointMismatchError, match="lora_rank=2"):
        load_weights(tiny_model(), with_lora, log=False)


def test_dinov2_weights_registry_entries():
    for name in OFFICIAL:
        entry = W.WEIGHTS[name]
        stem = name.removesuffix("_reg")
        file = f"{stem}_reg4_pretrain.pth" if name.endswith("_reg") else f"{stem}_pretrain.pth"
        assert entry.url == f"https://dl.fbaipublicfiles.com/dinov2/{stem}/{file}" and entry.filename == file
        assert entry.licence == "Apache-2.0" and entry.num_classes is None and entry.sha256 is None
        assert entry.model in MODEL_NAMES


# ------------------------------------------------------------------------------------------ building and export


def test_build_model_dispatches_every_architecture():
    assert set(MODEL_NAMES) == set(HRNET_SPECS) | set(DINOV2_SPECS)
    assert type(build_model("hrnet_tiny", 3)).__name__ == "HRNet"
    with pytest.raises(UnknownNameError, match="dinov2_vitb14"):
        build_model("dinov2_vitb16", 3)
    with pytest.raises(UnknownNameError, match="dinov2_vits14"):
        build_backbone("dinov2_vits16")


@pytest.mark.parametrize("name", OFFICIAL)
def test_every_official_model_builds_with_the_official_backbone_layout(name, manifest):
    with torch.device("meta"):
        model = build_model(name, 194)
    keys = {k[len("backbone."):]: list(v.shape) for k, v in model.state_dict().items() if k.startswith("backbone.")}
    assert keys == manifest[name]
    assert (model.name, model.num_classes, model.embedding_dim) == (name, 194, 256)
    assert model.taps == evenly_spaced_blocks(DINOV2_SPECS[name].depth)


def test_onnx_export_matches_eager(tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    model = tiny_model().eval()
    with torch.no_grad():  # a head far from its init, so that the logits are O(1) and a wrong graph shows
        for p in model.head.parameters():
            p.normal_(0, 0.2)
    x = torch.randn(1, 3, 70, 98)
    path = tmp_path / "tiny.onnx"
    torch.onnx.export(model, (x,), str(path), input_names=["image"], output_names=["logits"], dynamo=True, external_data=False)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    exported = session.run(None, {"image": x.numpy()})[0]
    with torch.no_grad():
        eager = model(x).numpy()
    assert np.abs(eager).mean() > 0.1
    np.testing.assert_allclose(exported, eager, atol=1e-4, rtol=1e-4)
