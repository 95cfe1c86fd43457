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


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bf16_matches_cpu():
    model = TinySegNet(num_classes=4).eval()
    image = random_image(40, 60, seed=9)
    settings = inference_settings(crop_h=32, crop_w=32, base_size=40, scales=(0.5, 1.0))
    cpu = predict_probabilities(model, [image], settings)[0]
    gpu = predict_probabilities(model.cuda(), [image], inference_settings(crop_h=32, crop_w=32, base_size=40, scales=(0.5, 1.0), precision="bf16"))[0]
    assert (cpu - gpu.cpu()).abs().max() < 0.05


# --- the prepared model: BatchNorm folded, weights cast once, channels_last, fixed batches, CUDA graphs ------------

import dataclasses

from mseg_semantic.errors import UserError
from mseg_semantic.evaluation.engine import FixedBatchRunner, cast_conv_weights, fold_batchnorm, low_res_logits
from mseg_semantic.evaluation.inference import InferenceModel, class_probabilities
from mseg_semantic.model import build_model


def trained_looking_hrnet(name="hrnet_tiny", classes=7, seed=0):
    """An HRNet whose BatchNorm layers carry non-trivial statistics and affine parameters (as after training)."""
    torch.manual_seed(seed)
    model = build_model(name, classes).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.3, 3.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
            elif isinstance(m, torch.nn.Conv2d):
                m.weight.normal_(0, 0.1)
    return model


@pytest.mark.parametrize("name", ["hrnet_tiny", "hrnet_w18_small"])  # every width is built from the same blocks
def test_folding_batchnorm_keeps_every_hrnet_output_and_leaves_no_batchnorm(name):
    model = trained_looking_hrnet(name, classes=5)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(x)
        folded = fold_batchnorm(model)
        after = model(x)
    assert folded == sum(1 for _ in build_model(name, 5).modules() if isinstance(_, torch.nn.BatchNorm2d))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    scale = before.abs().max().item()
    assert (before - after).abs().max().item() <= 1e-5 * max(scale, 1.0)  # float rounding only
    assert torch.equal(before.argmax(1), after.argmax(1))


def test_folding_needs_eval_mode():
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(build_model("hrnet_tiny", 3).train())


def test_low_res_logits_upsampled_are_the_model_output_exactly():
    model = trained_looking_hrnet()
    x = torch.randn(1, 3, 48, 40)
    with torch.no_grad():
        low = low_res_logits(model, x)
        assert tuple(low.shape[-2:]) == (12, 10)
        assert torch.equal(F.interpolate(low, size=(48, 40), mode="bilinear", align_corners=True), model(x))
    tiny = TinySegNet(num_classes=3).eval()  # another model: its output as it is
    assert torch.equal(low_res_logits(tiny, x), tiny(x))


def test_bf16_weights_cast_once_equal_autocast_casting_them_every_pass():
    model = trained_looking_hrnet()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        per_pass = model(x)
    cast_conv_weights(model, torch.bfloat16)
    assert all(m.weight.dtype == torch.bfloat16 for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert all(m.weight.dtype == torch.float32 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        once = model(x)
    assert torch.equal(per_pass, once)


def hrnet_settings(**changes):
    return inference_settings(**{"crop_h": 32, "crop_w": 32, "base_size": 40, "window_batch": 4, **changes})


def test_device_defaults_fp32_and_nchw_on_cpu_bf16_and_nhwc_on_cuda():
    unset = hrnet_settings(precision=None, channels_last=None)
    assert unset.for_device(torch.device("cpu")).precision == "fp32"
    assert unset.for_device(torch.device("cpu")).channels_last is False
    assert unset.for_device(torch.device("cuda")).precision == "bf16"
    assert unset.for_device(torch.device("cuda")).channels_last is True
    assert hrnet_settings(precision="fp32").for_device(torch.device("cuda")).precision == "fp32"  # a set value stays


def test_prepared_model_matches_the_plain_model_and_leaves_it_untouched():
    model = trained_looking_hrnet()
    model.train()
    model.bn1.eval()  # a frozen BatchNorm of a training run must stay frozen
    state = {k: v.clone() for k, v in model.state_dict().items()}
    image = random_image(45, 61, seed=3)
    plain = predict_probabilities(model, [image], hrnet_settings(fold_bn=False))[0]
    engine = InferenceModel(model, hrnet_settings(fold_bn=True, channels_last=True))
    fast = predict_probabilities(engine, [image], hrnet_settings(fold_bn=True, channels_last=True))[0]
    assert (plain - fast).abs().max() < 1e-5
    assert torch.equal(plain.argmax(0), fast.argmax(0))
    assert model.training and not model.bn1.training and model.bn2.training
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the copy was folded, not the model
    with pytest.raises(ValueError, match="fold_bn"):
        predict_probabilities(engine, [image], hrnet_settings(fold_bn=False, channels_last=True))


def test_subset_path_equals_the_full_softmax_and_projection():
    torch.manual_seed(0)
    logits = torch.randn(3, 40, 9, 11) * 4
    projection = Projection(40, [[3], [5, 17, 39], [], [0, 1]])  # 7 of 40 classes used; an output class fed by none
    full = class_probabilities(logits, (33, 41), projection, subset="full")
    exact = class_probabilities(logits, (33, 41), projection, subset="exact")
    assert exact.shape == full.shape == (3, 4, 33, 41)
    assert (full - exact).abs().max() < 1e-6
    assert torch.equal(exact[:, 2], torch.zeros_like(exact[:, 2]))
    reference = torch.einsum("kc,nchw->nkhw", projection.matrix(), torch.softmax(F.interpolate(logits, (33, 41), mode="bilinear", align_corners=True), 1))
    assert (reference - exact).abs().max() < 1e-6


def test_fast_subset_takes_the_normaliser_at_low_resolution():
    torch.manual_seed(1)
    projection = Projection(40, [[3], [5, 17, 39]])
    flat = torch.randn(2, 40, 1, 1).expand(2, 40, 9, 11).contiguous() * 4  # the same logits everywhere: no boundary
    torch.testing.assert_close(class_probabilities(flat, (33, 41), projection, subset="fast"),
                               class_probabilities(flat, (33, 41), projection, subset="exact"), atol=1e-6, rtol=0)
    logits = torch.randn(2, 40, 9, 11) * 4
    fast = class_probabilities(logits, (33, 41), projection, subset="fast")
    exact = class_probabilities(logits, (33, 41), projection, subset="exact")
    assert (fast <= exact + 1e-6).all()  # the upsampled logsumexp bounds the exact one from above (convexity)
    at_low_res_pixels = (slice(None), slice(None), slice(0, None, 4), slice(0, None, 4))  # align_corners: exact there
    torch.testing.assert_close(fast[at_low_res_pixels], exact[at_low_res_pixels], atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="subset_inference"):
        hrnet_settings(subset="sometimes")


def test_subset_inference_over_images_matches_the_full_path():
    model = trained_looking_hrnet(classes=9)
    projection = Projection(9, [[2], [4, 8]])
    image = random_image(37, 50, seed=4)
    full = predict_probabilities(model, [image], hrnet_settings(subset="full"), projection)[0]
    exact = predict_probabilities(model, [image], hrnet_settings(subset="exact"), projection)[0]
    assert (full - exact).abs().max() < 1e-6


def test_fixed_batch_runner_pads_short_batches_and_drops_the_padding():
    seen = []

    def double(x):
        seen.append(x.shape[0])
        return x * 2

    runner = FixedBatchRunner(double, batch=4)
    x = torch.arange(6.0).reshape(3, 2)
    torch.testing.assert_close(runner(x), x * 2)
    assert seen == [4]
    with pytest.raises(ValueError, match="does not fit"):
        runner(torch.zeros(5, 2))


def test_fixed_batches_give_the_same_probabilities_with_every_pass_full():
    model = trained_looking_hrnet()
    passes = []
    handle = model.conv1.register_forward_hook(lambda m, i, o: passes.append(i[0].shape[0]))
    settings = hrnet_settings(window_batch=6, fold_bn=False)  # 3 windows and their flips per pass
    image = random_image(40, 50, seed=5)  # 2 x 2 windows of 32 at base 40
    eager = predict_probabilities(InferenceModel(model, settings), [image], settings)[0]
    assert passes == [6, 2]  # the last pass holds what is left
    passes.clear()
    fixed = predict_probabilities(InferenceModel(model, settings, fixed_batches=True), [image, image], settings)
    handle.remove()
    assert passes == [6, 6, 6]  # 8 windows: the third pass padded to 3 windows (6 items)
    for p in fixed:
        assert (p - eager).abs().max() < 1e-6


def test_equal_projections_share_one_fixed_batch_runner():
    """A benchmark builds a Projection per dataset and base size: equal ones must not each get a runner (a CUDA
    graph with its own memory pool on a GPU)."""
    model = trained_looking_hrnet()
    settings = hrnet_settings(window_batch=4, fold_bn=False, subset="exact")
    engine = InferenceModel(model, settings, fixed_batches=True)
    image = random_image(40, 50, seed=5)
    first = predict_probabilities(engine, [image], settings, Projection(7, [[0, 1], [3]]))[0]
    second = predict_probabilities(engine, [image], settings, Projection(7, [[1, 0], [3]]))[0]
    assert len(engine._runners) == 1 and torch.equal(first, second)
    predict_probabilities(engine, [image], settings, Projection(7, [[2], [3]]))
    assert len(engine._runners) == 2


def test_cuda_graphs_on_a_cpu_model_are_refused_with_the_key():
    with pytest.raises(UserError, match="test_cuda_graphs"):
        InferenceModel(trained_looking_hrnet(), hrnet_settings(cuda_graphs=True))


def test_odd_window_batch_runs_whole_windows_per_pass():
    assert hrnet_settings(window_batch=5).windows_per_pass == 2
    assert hrnet_settings(window_batch=1).windows_per_pass == 1
    assert hrnet_settings(window_batch=5, flip=False).windows_per_pass == 5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (CUDA graphs)")
def test_cuda_graph_replay_equals_eager_on_the_gpu():
    model = trained_looking_hrnet().cuda()
    settings = hrnet_settings(precision="fp32", channels_last=False, window_batch=6)
    image = random_image(40, 70, seed=6)
    eager = predict_probabilities(InferenceModel(model, settings), [image], settings)[0]
    graphed_settings = dataclasses.replace(settings, cuda_graphs=True)
    engine = InferenceModel(model, graphed_settings)
    first = predict_probabilities(engine, [image], graphed_settings)[0]
    second = predict_probabilities(engine, [image, image], graphed_settings)
    runner = next(iter(engine._runners.values()))
    assert runner.replays >= 3 and len(runner._graphs) == 1
    for p in [first, *second]:
        assert (p - eager).abs().max() < 1e-5
    # a projection that reads some classes, computed for those only (its index tensors exist before the capture)
    projection = Projection(7, [[0, 1], [3], []])
    for subset in ("exact", "fast"):
        plain = dataclasses.replace(settings, subset=subset)
        expected = predict_probabilities(InferenceModel(model, plain), [image], plain, projection)[0]
        graphed = dataclasses.replace(plain, cuda_graphs=True)
        got = predict_probabilities(InferenceModel(model, graphed), [image], graphed, projection)[0]
        assert (got - expected).abs().max() < 1e-5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_default_bf16_prepared_model_stays_close_to_fp32():
    model = trained_looking_hrnet().cuda()
    image = random_image(40, 70, seed=7)
    fp32 = predict_probabilities(model, [image], hrnet_settings(precision="fp32", channels_last=False, fold_bn=False))[0]
    default = predict_probabilities(model, [image], hrnet_settings(precision=None, channels_last=None))[0]
    assert (fp32 - default).abs().max() < 0.05


# --- labels without resizing every class ---------------------------------------------------------------------------

from mseg_semantic.evaluation.inference import ImageProbabilities, predict_image_probabilities, resized_argmax


@pytest.mark.parametrize("size", [(97, 131), (40, 50), (13, 9), (25, 33)])
def test_resized_argmax_equals_the_argmax_of_every_class_resized(size):
    torch.manual_seed(2)
    # peaky, spatially varying probabilities of 60 classes (as a softmax of smooth logits), 25 x 33 pixels
    logits = F.interpolate(torch.randn(1, 60, 7, 9) * 6, size=(25, 33), mode="bilinear", align_corners=False)[0]
    probs = torch.softmax(logits, 0)
    full = F.interpolate(probs[None], size=size, mode="bilinear", align_corners=False)[0].argmax(0)
    assert torch.equal(resized_argmax(probs, size), full)
    ties = torch.zeros(5, 4, 4)
    ties[1:3] = 0.5  # two classes tied everywhere: the lower id, as argmax does
    assert torch.equal(resized_argmax(ties, (9, 9)), torch.ones(9, 9, dtype=torch.long))


def test_segment_images_resizes_only_candidates_and_keeps_the_labels():
    model = trained_looking_hrnet(classes=30)
    image = random_image(90, 120, seed=8)
    settings = hrnet_settings(base_size=32)  # inference at 32 x 43, labels at 90 x 120
    scaled = predict_image_probabilities(model, [image], settings)[0]
    assert tuple(scaled.values.shape[-2:]) == (32, 43) and scaled.size == (90, 120)
    full = predict_probabilities(model, [image], settings)[0]
    torch.testing.assert_close(scaled.full(), full)
    assert torch.equal(segment_images(model, [image], settings)[0], full.argmax(0))
    multi = inference_settings(crop_h=32, crop_w=32, base_size=32, scales=(0.75, 1.0))
    together = predict_image_probabilities(model, [image], multi)[0]
    assert tuple(together.values.shape[-2:]) == (90, 120)  # several scales average at the image's size
