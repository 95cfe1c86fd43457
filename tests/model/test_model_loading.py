"""load_weights: every checkpoint kind (generated in its real layout), mismatches, head re-initialisation."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from mseg_semantic.model import CheckpointMismatchError, build_model, load_weights

NAME = "hrnet_tiny"
IMAGENET_ONLY_PREFIXES = ("incre_modules.", "downsamp_modules.", "final_layer.", "classifier.")


def _random_model(num_classes: int = 5, seed: int = 1, name: str = NAME) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model(name, num_classes=num_classes)
    with torch.no_grad():
        for key, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape) + 0.5 if key.endswith("running_var") else torch.randn(t.shape))
            else:
                t.fill_(seed + 3)  # num_batches_tracked
    return model


def _assert_same(model: nn.Module, state: dict, keys) -> None:
    own = model.state_dict()
    for key in keys:
        assert torch.equal(own[key], state[key]), key


def _imagenet_classification_keys(widths) -> dict[str, torch.Tensor]:
    """The classification-head tensors of an official HRNet-Image-Classification checkpoint (for this width)."""
    head = [32, 64, 128, 256]  # Bottleneck planes per branch; outputs 4x
    keys: dict[str, torch.Tensor] = {}
    for i, w in enumerate(widths):
        p = f"incre_modules.{i}.0"
        keys[f"{p}.conv1.weight"] = torch.randn(head[i], w, 1, 1)
        keys[f"{p}.conv2.weight"] = torch.randn(head[i], head[i], 3, 3)
        keys[f"{p}.conv3.weight"] = torch.randn(head[i] * 4, head[i], 1, 1)
        keys[f"{p}.downsample.0.weight"] = torch.randn(head[i] * 4, w, 1, 1)
        for bn, c in (("bn1", head[i]), ("bn2", head[i]), ("bn3", head[i] * 4), ("downsample.1", head[i] * 4)):
            keys[f"{p}.{bn}.weight"] = torch.ones(c)
            keys[f"{p}.{bn}.bias"] = torch.zeros(c)
            keys[f"{p}.{bn}.running_mean"] = torch.zeros(c)
            keys[f"{p}.{bn}.running_var"] = torch.ones(c)
    for i in range(3):
        keys[f"downsamp_modules.{i}.0.weight"] = torch.randn(head[i + 1] * 4, head[i] * 4, 3, 3)
        keys[f"downsamp_modules.{i}.0.bias"] = torch.randn(head[i + 1] * 4)
        keys[f"downsamp_modules.{i}.1.weight"] = torch.ones(head[i + 1] * 4)
    keys["final_layer.0.weight"] = torch.randn(2048, 1024, 1, 1)
    keys["final_layer.1.running_var"] = torch.ones(2048)
    keys["classifier.weight"] = torch.randn(1000, 2048)
    keys["classifier.bias"] = torch.randn(1000)
    return keys


def _mseg_key(key: str) -> str:
    """Our key as MSeg's checkpoints spell it: the head indexed by position."""
    for ours, mseg in (("head.conv.", "last_layer.0."), ("head.bn.", "last_layer.1."), ("head.classifier.", "last_layer.3.")):
        if key.startswith(ours):
            return mseg + key[len(ours):]
    return key


def test_mseg_release_with_module_prefix(tmp_path):
    """MSeg's layout (DataParallel prefix, positional head keys) loads unchanged, value for value."""
    source = _random_model(num_classes=194)
    state = source.state_dict()
    path = tmp_path / "mseg-3m.pth"
    mseg_layout = {"module." + _mseg_key(k): v for k, v in state.items()}
    assert "module.last_layer.3.weight" in mseg_layout and not any(".head." in k for k in mseg_layout)
    torch.save({"epoch": 10, "state_dict": mseg_layout}, path)

    model = build_model(NAME, num_classes=194)
    report = load_weights(model, path)
    assert report.kind == "mseg_release"
    assert sorted(report.loaded) == sorted(state)
    assert report.skipped == report.missing == report.reinitialised == []
    _assert_same(model, state, state)
    x = torch.randn(1, 3, 33, 33)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), source.eval()(x))


def test_imagenet_classification_checkpoint_loads_backbone_only(tmp_path):
    source = _random_model()
    backbone = {k: v for k, v in source.state_dict().items() if not k.startswith("head.")}
    # checkpoints from PyTorch < 0.4.1 have no num_batches_tracked: tolerated
    backbone = {k: v for k, v in backbone.items() if not k.endswith("num_batches_tracked")}
    cls_keys = _imagenet_classification_keys(source.spec.widths)
    path = tmp_path / "hrnetv2_tiny_imagenet_pretrained.pth"
    torch.save({**backbone, **cls_keys}, path)

    model = build_model(NAME, num_classes=5)
    head_before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("head.")}
    report = load_weights(model, path)
    assert report.kind == "imagenet_classification"
    assert sorted(report.loaded) == sorted(backbone)
    assert sorted(report.skipped) == sorted(cls_keys)
    assert all(k.startswith("head.") or k.endswith("num_batches_tracked") for k in report.missing)
    assert {k for k in report.missing if k.startswith("head.")} == set(head_before)
    _assert_same(model, backbone, backbone)
    _assert_same(model, head_before, head_before)  # the head keeps its initialisation
    assert f"skipped {len(cls_keys)} keys" in str(report) and len(str(report)) < 1000


def test_imagenet_checkpoint_missing_backbone_key_is_an_error(tmp_path):
    state = {k: v for k, v in _random_model().state_dict().items() if not k.startswith("head.")}
    del state["stage3.0.branches.2.0.conv1.weight"]
    path = tmp_path / "imagenet.pth"
    torch.save({**state, **_imagenet_classification_keys((8, 16, 32, 64))}, path)
    with pytest.raises(CheckpointMismatchError, match=r"stage3\.0\.branches\.2\.0\.conv1\.weight"):
        load_weights(build_model(NAME, num_classes=5), path)


def test_project_final_weights(tmp_path):
    source = _random_model(num_classes=7)
    meta = {"model": NAME, "num_classes": 7, "taxonomy": "oracle", "train_datasets": ["camvid-11"]}  # an older file
    path = tmp_path / "model_final.pth"
    torch.save({"state_dict": source.state_dict(), "meta": meta}, path)

    model = build_model(NAME, num_classes=7)
    report = load_weights(model, path)
    assert report.kind == "project_final"
    assert report.meta == {"model": NAME, "num_classes": 7, "model_taxonomy": "oracle", "train_datasets": ["camvid-11"]}
    _assert_same(model, source.state_dict(), source.state_dict())


def test_project_final_weights_of_another_model_name(tmp_path):
    path = tmp_path / "model_final.pth"
    torch.save({"state_dict": _random_model().state_dict(), "meta": {"model": "hrnet_w18", "num_classes": 5}}, path)
    with pytest.raises(CheckpointMismatchError, match=r"'hrnet_w18'.*build_model\('hrnet_w18', num_classes=5\)"):
        load_weights(build_model(NAME, num_classes=5), path)


def test_project_training_checkpoint(tmp_path):
    source = _random_model()
    path = tmp_path / "last.pth"
    checkpoint = {
        "model": {"module." + k: v for k, v in source.state_dict().items()},  # saved from a DDP-wrapped model
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.01, "params": [0, 1]}]},
        "scheduler": {"last_epoch": 12},
        "iteration": 12,
        "stage": "main",
        "config": {"TRAIN": {"arch": "hrnet"}},
        "meta": {"model": NAME, "num_classes": 5},
    }
    torch.save(checkpoint, path)
    model = build_model(NAME, num_classes=5)
    report = load_weights(model, path)
    assert report.kind == "project_training"
    _assert_same(model, source.state_dict(), source.state_dict())


def test_load_into_wrapped_model(tmp_path):
    source = _random_model()
    path = tmp_path / "w.pth"
    torch.save({"state_dict": source.state_dict()}, path)
    wrapped = nn.DataParallel(build_model(NAME, num_classes=5))
    load_weights(wrapped, path)
    _assert_same(wrapped.module, source.state_dict(), source.state_dict())


def test_class_count_mismatch_is_a_clear_error(tmp_path):
    path = tmp_path / "mseg-194.pth"
    torch.save({"state_dict": _random_model(num_classes=194).state_dict()}, path)
    model = build_model(NAME, num_classes=11)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointMismatchError) as caught:
        load_weights(model, path)
    message = str(caught.value)
    for needed in (str(path), "head.classifier.weight", "(194, 120, 1, 1)", "(11, 120, 1, 1)", "reinit_head=True", "num_classes=194"):
        assert needed in message, needed
    _assert_same(model, before, before)  # nothing was loaded


def test_reinit_head_on_mismatch(tmp_path):
    source = _random_model(num_classes=194)
    path = tmp_path / "mseg-194.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in source.state_dict().items()}}, path)
    model = build_model(NAME, num_classes=11)
    report = load_weights(model, path, reinit_head=True)
    assert sorted(report.reinitialised) == ["head.classifier.bias", "head.classifier.weight"]
    kept = [k for k in source.state_dict() if not k.startswith("head.classifier.")]
    assert sorted(report.loaded) == sorted(kept)
    _assert_same(model, source.state_dict(), kept)  # includes head.conv/bn: same shape, loaded
    assert model.head.classifier.weight.shape == (11, 120, 1, 1)
    assert model.head.classifier.weight.std().item() < 0.01  # MSeg's N(0, 0.001) init, not the file's values
    assert torch.count_nonzero(model.head.classifier.bias) == 0
    assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 11, 32, 32)


def test_reinit_head_with_matching_shapes_still_replaces_the_classifier(tmp_path):
    source = _random_model(num_classes=19)
    path = tmp_path / "kitti.pth"
    torch.save({"state_dict": source.state_dict()}, path)
    model = build_model(NAME, num_classes=19)
    report = load_weights(model, path, reinit_head=True)
    assert sorted(report.reinitialised) == ["head.classifier.bias", "head.classifier.weight"]
    assert not torch.equal(model.head.classifier.weight, source.head.classifier.weight)
    assert torch.equal(model.head.conv.weight, source.head.conv.weight)


def test_reinit_head_module_with_an_absent_tensor_takes_none_of_the_files(tmp_path):
    state = dict(_random_model().state_dict())
    del state["head.bn.weight"]  # the head's BatchNorm is incomplete in the file
    path = tmp_path / "partial_head.pth"
    torch.save({"state_dict": state}, path)
    model = build_model(NAME, num_classes=5)
    report = load_weights(model, path, reinit_head=True)
    assert not [k for k in report.loaded if k.startswith("head.bn.")]  # reported as re-initialised only
    assert {"head.bn.weight", "head.bn.running_mean"} <= set(report.reinitialised)
    assert torch.count_nonzero(model.head.bn.running_mean) == 0  # reset, not the file's values
    _assert_same(model, state, [k for k in state if k.startswith("head.conv.")])


def test_backbone_of_another_width_names_it(tmp_path):
    path = tmp_path / "tiny.pth"
    torch.save({"state_dict": _random_model().state_dict()}, path)
    with pytest.raises(CheckpointMismatchError, match=r"conv1\.weight.*looks like 'hrnet_tiny'"):
        load_weights(build_model("hrnet_w18_small", num_classes=5), path, reinit_head=True)


def test_unexpected_keys_error_unless_not_strict(tmp_path):
    state = dict(_random_model().state_dict())
    state["ocr_head.conv.weight"] = torch.randn(4, 4, 1, 1)
    path = tmp_path / "ocr.pth"
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointMismatchError, match="ocr_head.conv.weight"):
        load_weights(build_model(NAME, num_classes=5), path)
    report = load_weights(build_model(NAME, num_classes=5), path, strict=False)
    assert report.skipped == ["ocr_head.conv.weight"]


def test_missing_backbone_keys_error(tmp_path):
    state = dict(_random_model().state_dict())
    del state["transition2.2.0.0.weight"]
    path = tmp_path / "partial.pth"
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointMismatchError, match=r"transition2\.2\.0\.0\.weight"):
        load_weights(build_model(NAME, num_classes=5), path)
    report = load_weights(build_model(NAME, num_classes=5), path, strict=False)
    assert report.missing == ["transition2.2.0.0.weight"]


_TRIPPED = []


def _trip():
    _TRIPPED.append(True)
    return "tripped"


class _Tripwire:
    """Unpickling this object runs _trip(): weights_only=True must refuse it before that happens."""

    def __reduce__(self):
        return (_trip, ())


def test_pickled_code_never_runs(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": _random_model().state_dict(), "payload": _Tripwire()}, path)
    with pytest.raises(ValueError, match=r"evil.pth holds objects a weights file does not need \(test_model_loading._trip\): refused$"):
        load_weights(build_model(NAME, num_classes=5), path)
    assert _TRIPPED == []


def test_truncated_and_missing_files(tmp_path):
    path = tmp_path / "cut.pth"
    torch.save({"state_dict": _random_model().state_dict()}, path)
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(ValueError, match="cut.pth"):
        load_weights(build_model(NAME, num_classes=5), path)
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        load_weights(build_model(NAME, num_classes=5), tmp_path / "nowhere.pth")


def test_unrecognised_layout(tmp_path):
    path = tmp_path / "odd.pth"
    torch.save({"weights": [1, 2, 3], "epoch": 3}, path)
    with pytest.raises(ValueError, match=r"unrecognised checkpoint layout.*'weights'"):
        load_weights(build_model(NAME, num_classes=5), path)
