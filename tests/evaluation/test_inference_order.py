"""The reordered inference post-processing (inference.py) against MSeg's order (reference_order.py): the same labels,
the same probabilities up to float rounding, on random logits and through a tiny HRNet over whole images."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from eval_helpers import inference_settings, random_image
from mseg_semantic.evaluation.inference import (
    DEFAULT_WINDOW_BATCH,
    InferenceModel,
    predict_image_probabilities,
    predict_probabilities,
    segment_images,
    window_probabilities_nhwc,
)
from mseg_semantic.evaluation.model_space import OutputSpace
from mseg_semantic.evaluation.outputs import pixel_outputs
from mseg_semantic.evaluation.reference_order import mseg_order_image_probabilities, mseg_order_window_probabilities
from mseg_semantic.model import build_model
from mseg_semantic.taxonomy import Projection

CLASSES = 12
# 9 of the 12 model classes feed an output class (one of them two), one output class is fed by none
PROJECTION = Projection(CLASSES, [[0], [1, 2, 3], [5], [7, 8], [], [10, 11]])


def _logits(batch, h, w, seed, dtype=torch.float32, channels_last=False):
    x = (torch.randn(batch, CLASSES, h, w, generator=torch.Generator().manual_seed(seed)) * 3).to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@pytest.mark.parametrize("window", [(33, 41), (32, 40)], ids=["4k+1", "interpolate"])
@pytest.mark.parametrize("flip", [True, False])
@pytest.mark.parametrize("projection,subset", [(None, "full"), (PROJECTION, "full"), (PROJECTION, "exact"), (PROJECTION, "fast")],
                         ids=["universal", "projected", "subset_exact", "subset_fast"])
def test_window_post_processing_equals_mseg_order_on_random_logits(window, flip, projection, subset):
    windows = 3
    low = ((window[0] + 3) // 4, (window[1] + 3) // 4)
    for dtype, channels_last in ((torch.float32, False), (torch.bfloat16, True)):
        logits = _logits(2 * windows if flip else windows, *low, seed=1, dtype=dtype, channels_last=channels_last)
        new = window_probabilities_nhwc(logits, windows, window, projection, subset, flip)
        old = mseg_order_window_probabilities(logits.clone(), windows, window, projection, subset, flip)
        k = CLASSES if projection is None else projection.num_outputs
        assert new.shape == (windows, *window, k) and new.dtype == torch.float32
        if subset == "full":
            assert new.is_contiguous()  # the class dimension innermost: the canvas adds contiguous rows
        torch.testing.assert_close(new.permute(0, 3, 1, 2), old, rtol=0, atol=2e-6)
        assert torch.equal(new.argmax(-1), old.argmax(1))


def test_projecting_before_upsampling_is_not_what_is_computed():
    """The softmax of the upsampled logits is not the upsampled softmax: the cheaper order the reorder must not take."""
    import torch.nn.functional as F

    logits = _logits(1, 9, 11, seed=2)
    exact = window_probabilities_nhwc(logits, 1, (33, 41), PROJECTION, "full", flip=False)
    early = F.interpolate(PROJECTION(torch.softmax(logits, 1)), size=(33, 41), mode="bilinear", align_corners=True)
    assert float((exact.permute(0, 3, 1, 2) - early).abs().max()) > 1e-3


def trained_looking_hrnet(seed=0):
    torch.manual_seed(seed)
    model = build_model("hrnet_tiny", CLASSES).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.3, 3.0)
            elif isinstance(m, torch.nn.Conv2d):
                m.weight.normal_(0, 0.1)
    return model


LAYOUTS = {
    "one_window": dict(hw=(30, 33), base=30, crop=33, scales=(1.0,)),  # padded: the image is smaller than the crop
    "2x3_windows": dict(hw=(45, 70), base=45, crop=33, scales=(1.0,)),
    "resized_2x2": dict(hw=(70, 90), base=40, crop=33, scales=(1.0,)),  # labels resized to the image's size
    "multi_scale": dict(hw=(45, 61), base=40, crop=33, scales=(0.75, 1.0, 1.25)),
    "not_4k+1": dict(hw=(45, 61), base=45, crop=32, scales=(1.0,)),
}


def _settings(layout, **changes):
    c = LAYOUTS[layout]
    return inference_settings(**{"crop_h": c["crop"], "crop_w": c["crop"], "base_size": c["base"], "scales": c["scales"],
                                 "window_batch": 6, "fold_bn": False, **changes})


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("flip", [True, False])
def test_images_through_a_tiny_hrnet_give_mseg_order_labels_and_probabilities(layout, flip):
    model = trained_looking_hrnet()
    image = random_image(*LAYOUTS[layout]["hw"], seed=3)
    settings = _settings(layout, flip=flip)
    engine = InferenceModel(model, settings)
    for projection in (None, PROJECTION):
        new = predict_image_probabilities(engine, [image], settings, projection)[0]
        old = mseg_order_image_probabilities(engine, [image], settings, projection)[0]
        assert new.size == old.size
        torch.testing.assert_close(new.full(), old.full(), rtol=0, atol=2e-6)
        assert torch.equal(new.labels(), old.labels())
        assert torch.equal(new.labels(other=True), _labels_with_other(old))


def _labels_with_other(reference) -> torch.Tensor:
    """MSeg's labels with an 'other' class (uncovered_classes=ignore), from the reference's probabilities."""
    from mseg_semantic.evaluation.inference import resized_argmax

    values = reference.values
    return resized_argmax(torch.cat([values, (1.0 - values.sum(0, keepdim=True)).clamp_(min=0.0)]), reference.size)


@pytest.mark.parametrize("subset", ["exact", "fast"])
def test_subset_inference_modes_equal_mseg_order(subset):
    model = trained_looking_hrnet(seed=1)
    images = [random_image(45, 70, seed=4), random_image(52, 40, seed=5)]
    settings = _settings("2x3_windows", subset=subset)
    engine = InferenceModel(model, settings)
    new = predict_image_probabilities(engine, images, settings, PROJECTION)
    old = mseg_order_image_probabilities(engine, images, settings, PROJECTION)
    for a, b in zip(new, old):
        torch.testing.assert_close(a.full(), b.full(), rtol=0, atol=2e-6)
        assert torch.equal(a.labels(), b.labels())


@pytest.mark.parametrize("uncovered", ["ignore", "drop"])
def test_pixel_outputs_labels_equal_mseg_order_with_and_without_an_other_class(uncovered):
    model = trained_looking_hrnet(seed=2)
    image = random_image(45, 70, seed=6)
    settings = _settings("2x3_windows")
    space = OutputSpace("test", [f"c{i}" for i in range(PROJECTION.num_outputs)], np.zeros((PROJECTION.num_outputs, 3), np.uint8),
                        PROJECTION, uncovered=uncovered)
    engine = InferenceModel(model, settings)
    new = predict_image_probabilities(engine, [image], settings, PROJECTION)[0]
    old = mseg_order_image_probabilities(engine, [image], settings, PROJECTION)[0]
    assert new.coverage is not None and old.coverage is None  # the new canvas was never divided for the labels
    labels = pixel_outputs(new, space).label
    assert torch.equal(labels, pixel_outputs(old, space).label)
    if uncovered == "ignore":
        assert (labels == 255).any() and (labels != 255).any()  # 'other' wins somewhere: the case is exercised
    with_confidence = pixel_outputs(new, space, confidence=True, probabilities=True)
    reference = pixel_outputs(old, space, confidence=True, probabilities=True)
    assert torch.equal(with_confidence.label, labels)
    torch.testing.assert_close(with_confidence.probabilities, reference.probabilities, rtol=0, atol=2e-6)
    torch.testing.assert_close(with_confidence.entropy, reference.entropy, rtol=0, atol=2e-5)


def test_segment_images_and_predict_probabilities_keep_their_contract():
    model = trained_looking_hrnet(seed=3)
    images = [random_image(45, 61, seed=7), random_image(61, 45, seed=8)]
    settings = _settings("multi_scale")
    probs = predict_probabilities(model, images, settings)
    labels = segment_images(model, images, settings)
    for image, p, label in zip(images, probs, labels):
        assert p.shape == (CLASSES, *image.shape[:2]) and p.is_contiguous() and p.dtype == torch.float32
        torch.testing.assert_close(p.sum(0), torch.ones(image.shape[:2]), rtol=0, atol=1e-5)
        assert label.dtype == torch.int64 and torch.equal(label, p.argmax(0))


def test_window_batch_defaults_to_16_on_cuda_and_8_elsewhere():
    unset = inference_settings(window_batch=None)
    assert unset.for_device(torch.device("cuda")).window_batch == DEFAULT_WINDOW_BATCH["cuda"] == 16
    assert unset.for_device(torch.device("cpu")).window_batch == DEFAULT_WINDOW_BATCH["cpu"] == 8
    assert inference_settings(window_batch=4).for_device(torch.device("cuda")).window_batch == 4  # a set value stays
    with pytest.raises(ValueError, match="for_device"):
        unset.windows_per_pass  # noqa: B018 (the property raises)
    model = trained_looking_hrnet()
    passes = []
    model.conv1.register_forward_hook(lambda m, i, o: passes.append(i[0].shape[0]))
    segment_images(model, [random_image(45, 70, seed=9)], dataclasses.replace(_settings("2x3_windows"), window_batch=None))
    assert passes == [8, 4]  # 6 windows and their mirrors, 8 items per pass on a CPU


@pytest.mark.slow
def test_the_fused_post_processing_flag_compiles_it_and_keeps_the_numbers(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    torch._dynamo.reset()
    model = trained_looking_hrnet(seed=4)
    image = random_image(45, 70, seed=10)
    eager_settings = _settings("2x3_windows")
    fused_settings = dataclasses.replace(eager_settings, fused_postprocess=True)
    fused_engine = InferenceModel(model, fused_settings, fixed_batches=True)  # one shape: one compilation
    assert fused_engine._postprocess is not window_probabilities_nhwc
    for projection in (None, PROJECTION):
        eager = predict_image_probabilities(model, [image], eager_settings, projection)[0]
        fused = predict_image_probabilities(fused_engine, [image], fused_settings, projection)[0]
        torch.testing.assert_close(fused.full(), eager.full(), rtol=0, atol=2e-6)
        assert torch.equal(fused.labels(), eager.labels())
    with pytest.raises(ValueError, match="fused_postprocess"):
        predict_image_probabilities(fused_engine, [image], eager_settings)


# ---------------------------------------------------------------------------------------------------------- CUDA


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_cuda_reordered_inference_equals_mseg_order(precision, cuda_graphs):
    model = trained_looking_hrnet().cuda()
    images = [random_image(45, 70, seed=11), random_image(30, 33, seed=12)]
    settings = _settings("2x3_windows", precision=precision, channels_last=True, fold_bn=True, cuda_graphs=cuda_graphs)
    engine = InferenceModel(model, settings)
    for projection, subset in ((None, "full"), (PROJECTION, "full"), (PROJECTION, "exact")):
        s = dataclasses.replace(settings, subset=subset)
        new = predict_image_probabilities(engine, images, s, projection)
        old = mseg_order_image_probabilities(engine, images, s, projection)
        for a, b in zip(new, old):
            assert float((a.full() - b.full()).abs().max()) < 1e-5
            agree = float((a.labels() == b.labels()).float().mean())
            assert agree >= 0.9999, agree  # a GPU's own rounding may flip an exact near-tie
    # the window post-processing alone, on the device, at MSeg's window size (713 = 4 * 178 + 1) and 194 classes
    logits = (torch.randn(8, 194, 179, 179, device="cuda") * 3).to(torch.bfloat16 if precision == "bf16" else torch.float32)
    new = window_probabilities_nhwc(logits, 4, (713, 713), None, "full", True)
    old = mseg_order_window_probabilities(logits.clone(), 4, (713, 713), None, "full", True)
    assert float((new.permute(0, 3, 1, 2) - old).abs().max()) < 2e-6
