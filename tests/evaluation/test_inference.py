import cv2
import numpy as np
import pytest
import torch

from mseg_semantic.taxonomy import Projection
import torch.nn.functional as F

from eval_helpers import eval_data, inference_settings, TinySegNet, random_image
from mseg_semantic.evaluation.inference import (
    predict_probabilities,
    resized_hw,
    segment_images,
    window_starts,
)


def mseg_reference(model, image, base_size, crop, scales, flip=True, projection=None):
    """MSeg's per-window loop written independently: cv2 resize/pad on HWC float, one window at a time."""
    h, w = image.shape[:2]
    mean = np.array([0.485, 0.456, 0.406], dtype=np.float32) * 255  # ImageNet statistics, MSeg's normalisation
    std = np.array([0.229, 0.224, 0.225], dtype=np.float32) * 255
    total = None
    for scale in scales:
        short = round(scale * base_size)
        nh, nw = (round(short / w * h), short) if h > w else (short, round(short / h * w))
        img = cv2.resize(image.astype(np.float32), (nw, nh), interpolation=cv2.INTER_LINEAR)
        pad_h, pad_w = max(crop - nh, 0), max(crop - nw, 0)
        img = cv2.copyMakeBorder(img, pad_h // 2, pad_h - pad_h // 2, pad_w // 2, pad_w - pad_w // 2, cv2.BORDER_CONSTANT, value=mean.tolist())
        ph, pw = img.shape[:2]
        stride = int(np.ceil(crop * 2 / 3))
        acc, count = None, np.zeros((ph, pw), np.float32)
        for ih in range(int(np.ceil((ph - crop) / stride)) + 1):
            for iw in range(int(np.ceil((pw - crop) / stride)) + 1):
                e_h = min(ih * stride + crop, ph)
                e_w = min(iw * stride + crop, pw)
                s_h, s_w = e_h - crop, e_w - crop
                x = torch.from_numpy(((img[s_h:e_h, s_w:e_w] - mean) / std).transpose(2, 0, 1).copy()).unsqueeze(0)
                if flip:
                    x = torch.cat([x, x.flip(3)])
                with torch.no_grad():
                    out = model(x)
                out = F.interpolate(out, (crop, crop), mode="bilinear", align_corners=True)
                p = torch.softmax(out, 1)
                if projection is not None:
                    p = torch.einsum("kc,nchw->nkhw", projection, p)
                p = (p[0] + p[1].flip(2)) / 2 if flip else p[0]
                if acc is None:
                    acc = np.zeros((p.shape[0], ph, pw), np.float32)
                acc[:, s_h:e_h, s_w:e_w] += p.numpy()
                count[s_h:e_h, s_w:e_w] += 1
        acc /= count[None]
        acc = acc[:, pad_h // 2 : pad_h // 2 + nh, pad_w // 2 : pad_w // 2 + nw].transpose(1, 2, 0)
        acc = cv2.resize(np.ascontiguousarray(acc), (w, h), interpolation=cv2.INTER_LINEAR)
        if acc.ndim == 2:
            acc = acc[..., None]
        total = acc if total is None else total + acc
    return (total / len(scales)).transpose(2, 0, 1)


def test_window_starts_cover_and_end_at_border():
    assert window_starts(32, 32, 22) == [0]
    assert window_starts(33, 32, 22) == [0, 1]
    starts = window_starts(100, 32, 22)
    assert starts[0] == 0 and starts[-1] == 100 - 32
    assert all(b - a <= 22 for a, b in zip(starts, starts[1:]))
    with pytest.raises(ValueError):
        window_starts(10, 32, 22)


def test_resized_hw_keeps_aspect_and_sets_short_side():
    assert resized_hw(480, 640, 360, 1.0) == (360, 480)
    assert resized_hw(640, 480, 360, 0.5) == (240, 180)
    assert resized_hw(100, 300, None, 1.0) == (100, 300)


@pytest.mark.parametrize(
    "hw,base,crop,scales",
    [((37, 53), 40, 24, (1.0,)), ((45, 30), 36, 32, (0.5, 1.0, 1.25)), ((20, 20), 16, 32, (1.0,))],
)
def test_batched_equals_per_window_reference(hw, base, crop, scales):
    model = TinySegNet(num_classes=5).eval()
    image = random_image(*hw, seed=1)
    settings = inference_settings(crop_h=crop, crop_w=crop, base_size=base, scales=scales, flip=True, window_batch=5)
    ours = predict_probabilities(model, [image], settings)[0].numpy()
    ref = mseg_reference(model, image, base, crop, scales)
    assert ours.shape == (5, *hw)
    np.testing.assert_allclose(ours, ref, atol=2e-4)
    np.testing.assert_allclose(ours.sum(0), 1.0, atol=1e-4)


def test_projection_matches_reference_and_sums_classes():
    model = TinySegNet(num_classes=6).eval()
    projection = torch.tensor([[1, 1, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0], [0, 0, 0, 1, 1, 0]], dtype=torch.float32)
    image = random_image(30, 41, seed=2)
    settings = inference_settings(crop_h=24, crop_w=24, base_size=30, window_batch=3)
    ours = predict_probabilities(model, [image], settings, Projection.from_matrix(projection))[0]
    plain = predict_probabilities(model, [image], settings)[0]
    np.testing.assert_allclose(ours.numpy(), mseg_reference(model, image, 30, 24, (1.0,), projection=projection), atol=2e-4)
    # projection is linear, so projecting each window equals projecting the averaged universal probabilities
    torch.testing.assert_close(ours, torch.einsum("kc,chw->khw", projection, plain), atol=1e-5, rtol=0)


def test_batch_size_and_image_grouping_do_not_change_results():
    model = TinySegNet(num_classes=4).eval()
    images = [random_image(33, 47, seed=3), random_image(50, 26, seed=4)]
    a = inference_settings(crop_h=24, crop_w=24, base_size=30, scales=(0.75, 1.0), window_batch=1)
    b = inference_settings(crop_h=24, crop_w=24, base_size=30, scales=(0.75, 1.0), window_batch=64)
    together = predict_probabilities(model, images, b)
    for image, joint in zip(images, together):
        alone = predict_probabilities(model, [image], a)[0]
        torch.testing.assert_close(alone, joint, atol=1e-5, rtol=0)


def test_flip_averaging_makes_mirror_symmetric_prediction():
    # averaging the plain and flipped passes gives, for a mirrored input, the mirrored output
    model = TinySegNet(num_classes=3).eval()
    image = random_image(24, 40, seed=5)
    settings = inference_settings(crop_h=24, crop_w=40, base_size=24, flip=True, window_batch=4)
    p = predict_probabilities(model, [image], settings)[0]
    q = predict_probabilities(model, [np.ascontiguousarray(image[:, ::-1])], settings)[0]
    torch.testing.assert_close(p, q.flip(-1), atol=1e-5, rtol=0)
    no_flip = inference_settings(crop_h=24, crop_w=40, base_size=24, flip=False)
    p1 = predict_probabilities(model, [image], no_flip)[0]
    q1 = predict_probabilities(model, [np.ascontiguousarray(image[:, ::-1])], no_flip)[0]
    assert not torch.allclose(p1, q1.flip(-1), atol=1e-4)


def test_whole_image_mode_runs_one_forward_per_image_and_pads_to_divisor():
    shapes = []

    class Recorder(TinySegNet):
        def forward(self, x):
            shapes.append(tuple(x.shape))
            return super().forward(x)

    model = Recorder(num_classes=3).eval()
    images = [random_image(30, 50, seed=6), random_image(30, 50, seed=7)]
    settings = inference_settings(base_size=30, mode="whole", flip=True, window_batch=8, size_divisor=16)
    labels = segment_images(model, images, settings)
    assert shapes == [(4, 3, 32, 64)]  # both images and their flips in one batch, padded to multiples of 16
    assert [tuple(l.shape) for l in labels] == [(30, 50), (30, 50)]


def test_bf16_autocast_runs_on_cpu_and_stays_close():
    model = TinySegNet(num_classes=4).eval()
    image = random_image(30, 30, seed=8)
    base = inference_settings(crop_h=24, crop_w=24, base_size=30)
    bf16 = inference_settings(crop_h=24, crop_w=24, base_size=30, precision="bf16")
    p32 = predict_probabilities(model, [image], base)[0]
    p16 = predict_probabilities(model, [image], bf16)[0]
    assert p16.dtype == torch.float32
    assert not torch.equal(p32, p16)  # the forward really ran in bf16
    assert (p32 - p16).abs().max() < 0.05


def test_invalid_settings_are_rejected_with_the_value():
    with pytest.raises(ValueError, match="tiles"):
        inference_settings(mode="tiles")
    with pytest.raises(ValueError, match="fp8"):
        inference_settings(precision="fp8")
    with pytest.raises(ValueError, match="scales"):
        inference_settings(scales=())


def test_projection_with_wrong_width_is_an_error():
    model = TinySegNet(num_classes=4).eval()
    with pytest.raises(ValueError, match="the projection takes 5 classes but the model outputs 4"):
        predict_probabilities(model, [random_image(20, 20)], inference_settings(crop_h=16, crop_w=16), Projection(5, [[0, 1], [2]]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bf16_matches_cpu():
    model = TinySegNet(num_classes=4).eval()
    image = random_image(40, 60, seed=9)
    settings = inference_settings(crop_h=32, crop_w=32, base_size=40, scales=(0.5, 1.0))
    cpu = predict_probabilities(model, [image], settings)[0]
    gpu = predict_probabilities(model.cuda(), [image], inference_settings(crop_h=32, crop_w=32, base_size=40, scales=(0.5, 1.0), precision="bf16"))[0]
    assert (cpu - gpu.cpu()).abs().max() < 0.05
