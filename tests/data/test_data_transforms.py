"""The fused affine crop against MSeg's sequential float32 recipe: geometry, per-sample agreement, distribution."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from mseg_semantic.data.transforms import (
    MEAN_RGB_UINT8,
    AugmentConfig,
    AugmentParams,
    augment_crop,
    augment_crop_chw,
    crop_to_source_matrix,
    normalize_images,
    sample_augment_params,
    scaled_size,
    short_side_size,
)
from mseg_recipe import augment_config, sequential_augment

CFG = augment_config(train_h=96, train_w=96, short_size=100)
SRC_H, SRC_W = 120, 160


def scene():
    """A textured image and a 4-class label with regions of unequal size."""
    yy, xx = np.mgrid[0:SRC_H, 0:SRC_W]
    label = np.zeros((SRC_H, SRC_W), np.uint8)
    label[40:, :60] = 1
    label[40:, 60:] = 2
    label[55:95, 70:120] = 3
    palette = np.array([[200, 220, 250], [90, 90, 90], [60, 140, 50], [200, 40, 40]], np.uint8)
    image = palette[label].astype(np.int16) + ((xx + 2 * yy) % 7 - 3)[:, :, None] * 4
    return np.clip(image, 0, 255).astype(np.uint8), label


def markers(points):
    """Flat image with a 5x5 bright square of class k+1 at each point."""
    image = np.empty((SRC_H, SRC_W, 3), np.uint8)
    image[:] = MEAN_RGB_UINT8  # the padding colour, so only the marker differs from the background
    label = np.zeros((SRC_H, SRC_W), np.uint8)
    for k, (x, y) in enumerate(points):
        image[y - 2 : y + 3, x - 2 : x + 3] = 250
        label[y - 2 : y + 3, x - 2 : x + 3] = k + 1
    return image, label


def centroid(label, cls):
    ys, xs = np.nonzero(label == cls)
    return (xs.mean(), ys.mean()) if len(xs) else None


def bright_centroid(image):
    # distance from the background; the float mean MSeg pads with differs from it by ~1 in sum
    weight = np.clip(np.abs(image.astype(np.float64) - np.array(MEAN_RGB_UINT8)).sum(axis=2) - 3.0, 0.0, None)
    yy, xx = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
    return (weight * xx).sum() / weight.sum(), (weight * yy).sum() / weight.sum()


def predicted(params, point):
    matrix, _ = crop_to_source_matrix(SRC_H, SRC_W, params, CFG)
    x, y, _ = np.linalg.inv(matrix) @ np.array([point[0], point[1], 1.0])
    return x, y


def test_canvas_sizes_follow_mseg_resize_rules():
    assert short_side_size(1080, 1920, 713) == (713, int(1920 * 713 / 1080))
    assert short_side_size(1920, 1080, 713) == (int(1920 * 713 / 1080), 713)
    import cv2

    for scale in (0.5, 0.73, 1.37, 1.999):
        out = cv2.resize(np.zeros((101, 153), np.uint8), None, fx=scale, fy=scale)
        assert scaled_size(101, 153, scale) == out.shape


def test_crop_offsets_cover_the_padded_canvas_uniformly():
    rng = np.random.default_rng(0)
    tops = {"small": [], "large": []}
    for _ in range(3000):
        p = sample_augment_params(rng, SRC_H, SRC_W, CFG)
        h2, _ = scaled_size(*short_side_size(SRC_H, SRC_W, CFG.short_size), p.scale)
        if h2 < CFG.train_h:
            tops["small"].append(p.crop_top)
        else:
            assert 0 <= p.crop_top <= h2 - CFG.train_h
            tops["large"].append((p.crop_top, h2 - CFG.train_h))
    assert set(tops["small"]) == {0}  # MSeg pads to the crop size: nothing left to choose
    relative = np.array([t / m for t, m in tops["large"] if m > 0])
    assert abs(relative.mean() - 0.5) < 0.03 and relative.min() < 0.02 and relative.max() > 0.98


def test_random_choices_follow_the_configured_probabilities_and_ranges():
    cfg = augment_config(train_h=96, train_w=96, short_size=100, scale_min=0.7, scale_max=1.6, rotate_min=-4.0,
                        rotate_max=8.0, rotate_prob=0.7, blur_prob=0.3, flip_prob=0.2)
    rng = np.random.default_rng(0)
    draws = [sample_augment_params(rng, SRC_H, SRC_W, cfg) for _ in range(4000)]
    scales = np.array([p.scale for p in draws])
    angles = np.array([p.angle for p in draws if p.angle is not None])
    assert 0.7 <= scales.min() < 0.71 and 1.59 < scales.max() <= 1.6 and abs(scales.mean() - 1.15) < 0.02
    assert len(angles) / 4000 == pytest.approx(0.7, abs=0.03)
    assert -4.0 <= angles.min() < -3.9 and 7.9 < angles.max() <= 8.0 and abs(angles.mean() - 2.0) < 0.2
    assert np.mean([p.blur for p in draws]) == pytest.approx(0.3, abs=0.03)
    assert np.mean([p.flip for p in draws]) == pytest.approx(0.2, abs=0.03)
    # MSeg's recipe draws the same way: its realised parameters have the same rates
    image, label = scene()
    seq = [sequential_augment(image, label, cfg, rng=np.random.default_rng(50_000 + i))[2] for i in range(300)]
    assert np.mean([p.flip for p in seq]) == pytest.approx(0.2, abs=0.08)
    assert np.mean([p.angle is not None for p in seq]) == pytest.approx(0.7, abs=0.09)


@pytest.mark.parametrize("seed", range(40))
def test_a_marker_lands_where_the_affine_says_in_both_pipelines(seed):
    rng = np.random.default_rng(seed)
    point = (int(rng.integers(20, SRC_W - 20)), int(rng.integers(20, SRC_H - 20)))
    image, label = markers([point])
    cfg_rng = np.random.default_rng(1000 + seed)
    for _ in range(50):  # find parameters that keep the marker well inside the crop
        params = sample_augment_params(cfg_rng, SRC_H, SRC_W, CFG)
        x, y = predicted(params, point)
        if 6 <= x <= CFG.train_w - 7 and 6 <= y <= CFG.train_h - 7:
            break
    else:
        pytest.skip("no parameters kept the marker inside")
    fused_image, fused_label = augment_crop(image, label, params, CFG)
    seq_image, seq_label, _ = sequential_augment(image, label, CFG, params=params)
    for out in (fused_image, seq_image):  # both images follow the affine (to sampling error of a 5 px marker)
        cx, cy = bright_centroid(out)
        assert math.hypot(cx - x, cy - y) < 0.35, (params, (cx, cy), (x, y))
    fx, fy = centroid(fused_label, 1)
    assert math.hypot(fx - x, fy - y) < 1.0, (params, (fx, fy), (x, y))
    # MSeg's INTER_NEAREST resizes sample the label off-centre: its label sits up to ~3 px from its image here
    sx, sy = centroid(seq_label, 1)
    assert math.hypot(sx - x, sy - y) < 3.5, (params, (sx, sy), (x, y))


@pytest.mark.parametrize("angle", [-10.0, -4.0, 3.0, 10.0])
def test_rotation_turns_the_pattern_like_mseg(angle):
    image, label = markers([(50, 40), (115, 85)])
    params = AugmentParams(scale=1.0, angle=angle, blur=False, flip=False, crop_top=0, crop_left=10)
    measured = []
    for out in (augment_crop(image, label, params, CFG)[1], sequential_augment(image, label, CFG, params=params)[1]):
        (x1, y1), (x2, y2) = centroid(out, 1), centroid(out, 2)
        measured.append(math.degrees(math.atan2(y2 - y1, x2 - x1)))
    before = math.degrees(math.atan2(85 - 40, 115 - 50))
    # cv2's positive angle turns the picture counter-clockwise on screen (y down): the direction angle drops
    assert measured[0] == pytest.approx(before - angle, abs=1.0)
    assert measured[0] == pytest.approx(measured[1], abs=1.0)


def test_flip_mirrors_the_crop():
    image, label = scene()
    h2, w2 = scaled_size(*short_side_size(SRC_H, SRC_W, CFG.short_size), 1.3)
    left = 17
    flipped = AugmentParams(scale=1.3, angle=None, blur=False, flip=True, crop_top=9, crop_left=left)
    mirror = AugmentParams(scale=1.3, angle=None, blur=False, flip=False, crop_top=9, crop_left=w2 - CFG.train_w - left)
    a_img, a_lab = augment_crop(image, label, flipped, CFG)
    b_img, b_lab = augment_crop(image, label, mirror, CFG)
    assert (a_lab == b_lab[:, ::-1]).mean() > 0.999
    assert np.abs(a_img.astype(int) - b_img[:, ::-1].astype(int)).max() <= 1
    assert not np.array_equal(a_lab, b_lab)  # the scene is not symmetric, so the check above means something


@pytest.mark.parametrize("seed", range(30))
def test_same_parameters_give_nearly_the_same_crop(seed):
    image, label = scene()
    params = sample_augment_params(np.random.default_rng(seed), SRC_H, SRC_W, CFG)
    fused_img, fused_lab = augment_crop(image, label, params, CFG)
    seq_img, seq_lab, _ = sequential_augment(image, label, CFG, params=params)
    assert fused_img.dtype == np.uint8 and fused_img.shape == (96, 96, 3) and fused_lab.shape == (96, 96)
    assert abs((fused_lab == 255).mean() - (seq_lab == 255).mean()) < 0.015, params
    assert (fused_lab == seq_lab).mean() > 0.92, params  # differences: MSeg's label offset at boundaries
    assert np.abs(fused_img.astype(np.float32) - seq_img).mean() < 4.0, params


def _stats(labels):
    labels = np.stack(labels).reshape(len(labels), -1)
    return {c: (labels == c).mean(axis=1) for c in (0, 1, 2, 3, 255)}


def test_class_and_padding_distributions_match_the_sequential_recipe():
    """Independent seeds for the two pipelines: per-crop class fractions agree within 4.5 standard errors."""
    image, label = scene()
    n = 600
    fused, sequential = [], []
    for i in range(n):
        params = sample_augment_params(np.random.default_rng(i), SRC_H, SRC_W, CFG)
        fused.append(augment_crop(image, label, params, CFG)[1])
        sequential.append(sequential_augment(image, label, CFG, rng=np.random.default_rng(10_000 + i))[1])
    f, s = _stats(fused), _stats(sequential)
    for c in f:
        se = math.sqrt(f[c].var() / n + s[c].var() / n)
        assert abs(f[c].mean() - s[c].mean()) < 4.5 * se + 1e-3, (c, f[c].mean(), s[c].mean(), se)
    assert 0.05 < f[255].mean() < 0.5  # padding really occurs in this setting (scale 0.5 on a 100 px canvas)


@pytest.mark.parametrize("scale", [0.2, 0.45, 1.0, 1.9])
def test_the_fast_4_channel_warp_equals_a_plain_warp_of_the_whole_image(scale):
    import cv2

    image, label = scene()
    params = AugmentParams(scale=scale, angle=7.0, blur=False, flip=True, crop_top=2, crop_left=3)
    matrix, (top, left, bottom, right) = crop_to_source_matrix(SRC_H, SRC_W, params, CFG)
    plain = cv2.warpAffine(image, matrix[:2], (CFG.train_w, CFG.train_h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=MEAN_RGB_UINT8)
    outside = np.ones((CFG.train_h, CFG.train_w), bool)  # MSeg's Crop padding around a small canvas
    outside[max(top, 0) : max(bottom, 0), max(left, 0) : max(right, 0)] = False
    plain[outside] = MEAN_RGB_UINT8
    fused, _ = augment_crop(image, label, params, CFG)  # 0.2: the window reads > 8 crop areas: the 3-channel path
    chw, _ = augment_crop_chw(np.ascontiguousarray(image[:, :, ::-1]), label, params, CFG)
    for out in (fused, chw.transpose(1, 2, 0)):
        difference = np.abs(out.astype(int) - plain)
        # the shifted origin can round a sampling coordinate to the next 1/32 px: at most 1 grey level, rarely
        assert difference.max() <= 1 and (difference > 0).mean() < 0.002


def test_padding_uses_the_mean_and_ignore_label():
    image, label = scene()
    params = AugmentParams(scale=0.5, angle=None, blur=True, flip=False, crop_top=0, crop_left=0)
    crop, crop_label = augment_crop(image, label, params, CFG)
    padded = crop_label == 255
    assert padded.mean() > 0.3
    assert (crop[padded] == MEAN_RGB_UINT8).all()
    assert set(np.unique(crop_label[~padded])) <= {0, 1, 2, 3}


def test_blur_changes_only_the_image():
    image, label = scene()
    sharp = AugmentParams(scale=1.2, angle=5.0, blur=False, flip=False, crop_top=3, crop_left=4)
    blurred = AugmentParams(scale=1.2, angle=5.0, blur=True, flip=False, crop_top=3, crop_left=4)
    a_img, a_lab = augment_crop(image, label, sharp, CFG)
    b_img, b_lab = augment_crop(image, label, blurred, CFG)
    assert np.array_equal(a_lab, b_lab)
    assert np.abs(a_img.astype(int) - b_img.astype(int)).mean() > 1.0
    # blurring a window with a margin equals blurring the whole canvas away from canvas edges
    seq_img, _, _ = sequential_augment(image, label, CFG, params=blurred)
    inner = (slice(8, -8), slice(8, -8))
    assert np.abs(b_img[inner].astype(np.float32) - seq_img[inner]).mean() < 3.0


def test_normalize_images_uses_imagenet_statistics():
    images = torch.tensor(MEAN_RGB_UINT8, dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 4, 5).contiguous()
    out = normalize_images(images)
    assert out.dtype == torch.float32 and out.shape == (2, 3, 4, 5)
    assert out.abs().max() < 0.01
    white = normalize_images(torch.full((1, 3, 1, 1), 255, dtype=torch.uint8)).flatten()
    assert torch.allclose(white, torch.tensor([(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225]))
    with pytest.raises(ValueError, match="N x 3 x H x W"):
        normalize_images(torch.zeros(3, 4, 5, dtype=torch.uint8))


def test_bad_configs_and_inputs_are_named():
    base = augment_config(train_h=8, train_w=8, short_size=8)
    with pytest.raises(ValueError, match="scale_min"):
        dataclasses.replace(base, scale_min=2.0, scale_max=1.0)
    with pytest.raises(ValueError, match="flip_prob"):
        dataclasses.replace(base, flip_prob=1.5)
    image, label = scene()
    params = AugmentParams(1.0, None, False, False, 0, 0)
    with pytest.raises(ValueError, match="matching the image"):
        augment_crop(image, label[:-1], params, CFG)
