"""The inference engine with a DINOv2 model (the tiny test variant): windows that are multiples of 14, BatchNorm
folded in its head, channels_last, the 1/4-resolution logits the subset paths read, whole-image padding to a
multiple of 14, and the sizes the engine and the exporter refuse."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from mseg_semantic.errors import UserError
from mseg_semantic.evaluation.engine import fold_batchnorm, low_res_logits, prepared_copy
from mseg_semantic.evaluation.export import check_exportable
from mseg_semantic.evaluation.inference import InferenceModel, InferenceSettings, predict_probabilities
from mseg_semantic.model import build_model
from mseg_semantic.taxonomy import Projection

NUM_CLASSES = 40


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    model = build_model("dinov2_tiny_test", NUM_CLASSES).eval()
    with torch.no_grad():  # BatchNorm statistics and weights far from their initial values, so that folding matters
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.normal_(1, 0.3)
                module.bias.normal_(0, 0.3)
        model.head.classifier.weight.normal_(0, 0.3)
    return model


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)


def settings(**changes) -> InferenceSettings:
    base = InferenceSettings(crop_h=28, crop_w=28, base_size=None, scales=(1.0,), flip=True, mode="sliding", window_batch=4,
                             precision="fp32", channels_last=False, fold_bn=False, cuda_graphs=False, subset="full")
    return replace(base, **changes)


def test_the_head_batchnorms_fold_and_the_transformer_is_left_alone(vit):
    folded = prepared_copy(vit, fold=True, cast_to=None, channels_last=False, inplace=False)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert fold_batchnorm(folded) == 0 and sum(isinstance(m, torch.nn.LayerNorm) for m in folded.modules()) == 4 * 2 + 1
    assert fold_batchnorm(prepared_copy(vit, fold=False, cast_to=None, channels_last=False, inplace=False)) == 5  # 4 smooth + head.bn
    x = torch.randn(2, 3, 28, 42)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), vit(x), rtol=1e-4, atol=1e-4)


def test_logits_come_at_a_quarter_of_the_window(vit):
    with torch.no_grad():
        assert tuple(low_res_logits(vit, torch.randn(1, 3, 28, 42)).shape) == (1, NUM_CLASSES, 7, 11)


@pytest.mark.parametrize("changes", [{"fold_bn": True}, {"channels_last": True}, {"fold_bn": True, "channels_last": True}])
def test_folded_and_channels_last_inference_equal_the_plain_model(vit, image, changes):
    plain = predict_probabilities(vit, [image], settings())[0]
    prepared = predict_probabilities(vit, [image], settings(**changes))[0]
    assert plain.shape == (NUM_CLASSES, 40, 50)
    torch.testing.assert_close(prepared, plain, rtol=1e-4, atol=1e-5)


def test_subset_inference_reads_the_quarter_resolution_logits(vit, image):
    projection = Projection(NUM_CLASSES, [[0, 3], [5], [7, 8, 9], [30]])
    full = predict_probabilities(vit, [image], settings(), projection)[0]
    exact = predict_probabilities(vit, [image], settings(subset="exact"), projection)[0]
    fast = predict_probabilities(vit, [image], settings(subset="fast"), projection)[0]
    torch.testing.assert_close(exact, full, rtol=1e-5, atol=1e-6)
    assert fast.shape == full.shape and float((fast - full).abs().max()) < 0.05
    assert float(full.sum(0).max()) <= 1 + 1e-5


def test_whole_images_are_padded_to_a_multiple_of_the_patch_size(vit, image):
    """40 x 50 pads to 42 x 56 (HRNet's divisor 32 would make 64 x 64); a sliding window of exactly that size is the
    same single pass."""
    whole = predict_probabilities(vit, [image], settings(mode="whole"))[0]
    one_window = predict_probabilities(vit, [image], settings(crop_h=42, crop_w=56))[0]
    assert whole.shape == (NUM_CLASSES, 40, 50)
    torch.testing.assert_close(whole, one_window, rtol=1e-5, atol=1e-6)


def test_windows_that_are_not_multiples_of_the_patch_size_are_refused(vit, image):
    with pytest.raises(UserError, match="TEST.test_h x test_w = 30 x 28: dinov2_tiny_test takes windows whose sides are multiples "
                                        "of its patch size 14; use test_h=28 test_w=28"):
        InferenceModel(vit, settings(crop_h=30))
    engine = InferenceModel(vit, settings())
    with pytest.raises(UserError, match="use test_h=714 test_w=714"):
        predict_probabilities(engine, [image], settings(crop_h=713, crop_w=713))
    InferenceModel(vit, settings(crop_h=30, mode="whole"))  # whole images are padded: no window size applies


def test_the_exporter_refuses_a_dynamic_or_misfit_vit_and_nothing_else():
    vit, hrnet = build_model("dinov2_tiny_test", 3), build_model("hrnet_tiny", 3)
    with pytest.raises(UserError, match="TEST.export_dynamic=true: dinov2_tiny_test cannot be exported with a dynamic size"):
        check_exportable(vit, 28, 28, dynamic=True)
    with pytest.raises(UserError, match="TEST.test_h x test_w = 713 x 28: .* use test_h=714 test_w=28"):
        check_exportable(vit, 713, 28, dynamic=False)
    check_exportable(vit, 714, 28, dynamic=False)
    check_exportable(hrnet, 713, 31, dynamic=True)
